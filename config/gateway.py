"""The gateway config file: Tyk's `tyk.conf` names where Tyk has one, `coproc` for ours.

Relative paths are resolved against the config file's directory, so the same
file works whatever the current directory of the process that reads it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from config.reader import Reader, load_json
from config.sandbox import SandboxOptions, parse_sandbox

__all__ = [
    "FAILURE_POLICIES",
    "GatewayConfig",
    "GatewayOptions",
    "HookOptions",
    "IpcOptions",
    "StorageConfig",
    "SupervisorOptions",
    "WorkerOptions",
    "default_run_dir",
    "load_gateway_config",
]

FAILURE_POLICIES = ("fail_closed", "fail_open")


@dataclass(frozen=True, slots=True)
class StorageConfig:
    type: str = "memory"
    host: str = "127.0.0.1"
    port: int = 6379
    database: int = 0
    username: str = ""
    password: str = ""
    timeout_ms: int = 1000
    max_connections: int = 64


@dataclass(frozen=True, slots=True)
class HookOptions:
    timeout_ms: int = 1000
    failure_policy: str = "fail_closed"
    # How long a call waits for a worker while a new generation boots.
    worker_wait_ms: int = 5000


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    threads: int = 32
    heartbeat_interval_ms: int = 500
    heartbeat_timeout_ms: int = 5000
    boot_timeout_ms: int = 30000
    drain_grace_ms: int = 10000
    max_requests: int = 0
    max_age_s: int = 0
    max_rss_mb: int = 0
    watch: bool = False
    # How long a plain hook may run on the thread that reads the hooks socket
    # before another thread takes over the reading (worker/callthreads.py).
    handoff_ms: int = 2


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    max_body_bytes: int = 32 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    # The front door (gateway/frontdoor.py): a complete request head must arrive
    # within header_read_timeout_ms of accept; a kept-alive connection may sit
    # idle idle_timeout_ms between requests; max_connections per gateway
    # process (0: what the fd limit leaves after upstream connections).
    header_read_timeout_ms: int = 10000
    idle_timeout_ms: int = 60000
    max_connections: int = 0
    upstream_timeout_ms: int = 30000
    upstream_connect_timeout_ms: int = 5000
    upstream_max_connections: int = 512
    drain_grace_ms: int = 10000


@dataclass(frozen=True, slots=True)
class IpcOptions:
    # Empty: ipc://<run_dir>/hooks.sock.  tcp://127.0.0.1:PORT is for development.
    endpoint: str = ""
    max_message_bytes: int = 64 * 1024 * 1024
    shm_threshold_bytes: int = 16 * 1024
    shm_arena_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SupervisorOptions:
    restart_backoff_initial_ms: int = 100
    restart_backoff_max_ms: int = 5000
    stop_grace_ms: int = 10000
    flap_window_s: int = 60
    flap_max_exits: int = 5


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    path: Path
    listen_address: str = ""
    listen_port: int = 8080
    secret: str = ""
    app_path: Path = Path("apps")
    middleware_path: Path = Path("middleware")
    enable_coprocess: bool = True
    storage: StorageConfig = field(default_factory=StorageConfig)
    run_dir: Path = Path()
    log_level: str = "info"
    log_format: str = "text"
    hooks: HookOptions = field(default_factory=HookOptions)
    worker: WorkerOptions = field(default_factory=WorkerOptions)
    gateway: GatewayOptions = field(default_factory=GatewayOptions)
    ipc: IpcOptions = field(default_factory=IpcOptions)
    supervisor: SupervisorOptions = field(default_factory=SupervisorOptions)
    sandbox: SandboxOptions = field(default_factory=SandboxOptions)

    @property
    def hooks_endpoint(self) -> str:
        return self.ipc.endpoint or f"ipc://{self.run_dir / 'hooks.sock'}"


def default_run_dir(config_path: Path) -> Path:
    """A short, per-config directory: /run/coproc/<h> as root, else per user."""
    digest = hashlib.sha256(str(config_path).encode()).hexdigest()[:12]
    if os.geteuid() == 0:
        return Path("/run/coproc") / digest
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and Path(base).is_dir():
        return Path(base) / "coproc" / digest
    return Path(tempfile.gettempdir()) / f"coproc-{os.geteuid()}" / digest


def load_gateway_config(path: Path | str) -> GatewayConfig:
    """Read and validate the gateway config file; raise `ConfigError`."""
    path = Path(path).resolve()
    r = Reader(load_json(path), path)
    base = path.parent
    coproc = r.child("coproc")
    return GatewayConfig(
        path=path,
        listen_address=r.get("listen_address", str, ""),
        listen_port=r.number("listen_port", int, 8080, 0, 65535),
        secret=r.get("secret", str, ""),
        app_path=_resolve(base, r.get("app_path", str, "apps")),
        middleware_path=_resolve(base, r.get("middleware_path", str, "middleware")),
        enable_coprocess=r.child("coprocess_options").get("enable_coprocess", bool, True),
        storage=_storage(r.child("storage")),
        run_dir=_resolve(base, coproc.get("run_dir", str, "")) if coproc.has("run_dir")
        else default_run_dir(path),
        log_level=coproc.choice("log_level", ("debug", "info", "warning", "error"), "info"),
        log_format=coproc.choice("log_format", ("text", "json"), "text"),
        hooks=_hooks(coproc.child("hooks")),
        worker=_worker(coproc.child("worker")),
        gateway=_gateway(coproc.child("gateway")),
        ipc=_ipc(coproc.child("ipc")),
        supervisor=_supervisor(coproc.child("supervisor")),
        sandbox=parse_sandbox(coproc.child("sandbox"), base),
    )


def _resolve(base: Path, value: str) -> Path:
    return (base / os.path.expanduser(value)).resolve()


def _storage(r: Reader) -> StorageConfig:
    d = StorageConfig()
    return StorageConfig(
        type=r.choice("type", ("memory", "redis"), d.type),
        host=r.get("host", str, d.host),
        port=r.number("port", int, d.port, 1, 65535),
        database=r.number("database", int, d.database, 0),
        username=r.get("username", str, d.username),
        password=r.get("password", str, d.password),
        timeout_ms=r.number("timeout_ms", int, d.timeout_ms, 1),
        max_connections=r.number("max_connections", int, d.max_connections, 1),
    )


def _hooks(r: Reader) -> HookOptions:
    d = HookOptions()
    return HookOptions(
        timeout_ms=r.number("timeout_ms", int, d.timeout_ms, 1),
        failure_policy=r.choice("failure_policy", FAILURE_POLICIES, d.failure_policy),
        worker_wait_ms=r.number("worker_wait_ms", int, d.worker_wait_ms, 0),
    )


def _worker(r: Reader) -> WorkerOptions:
    d = WorkerOptions()
    return WorkerOptions(
        threads=r.number("threads", int, d.threads, 1, 1024),
        heartbeat_interval_ms=r.number("heartbeat_interval_ms", int, d.heartbeat_interval_ms, 10),
        heartbeat_timeout_ms=r.number("heartbeat_timeout_ms", int, d.heartbeat_timeout_ms, 50),
        boot_timeout_ms=r.number("boot_timeout_ms", int, d.boot_timeout_ms, 100),
        drain_grace_ms=r.number("drain_grace_ms", int, d.drain_grace_ms, 0),
        max_requests=r.number("max_requests", int, d.max_requests, 0),
        max_age_s=r.number("max_age_s", int, d.max_age_s, 0),
        max_rss_mb=r.number("max_rss_mb", int, d.max_rss_mb, 0),
        watch=r.get("watch", bool, d.watch),
        handoff_ms=r.number("handoff_ms", int, d.handoff_ms, 1, 60_000),
    )


def _gateway(r: Reader) -> GatewayOptions:
    d = GatewayOptions()
    return GatewayOptions(
        max_body_bytes=r.number("max_body_bytes", int, d.max_body_bytes, 0),
        max_header_bytes=r.number("max_header_bytes", int, d.max_header_bytes, 1024),
        header_read_timeout_ms=r.number("header_read_timeout_ms", int,
                                        d.header_read_timeout_ms, 0),
        idle_timeout_ms=r.number("idle_timeout_ms", int, d.idle_timeout_ms, 1),
        max_connections=r.number("max_connections", int, d.max_connections, 0),
        upstream_timeout_ms=r.number("upstream_timeout_ms", int, d.upstream_timeout_ms, 1),
        upstream_connect_timeout_ms=r.number(
            "upstream_connect_timeout_ms", int, d.upstream_connect_timeout_ms, 1),
        upstream_max_connections=r.number(
            "upstream_max_connections", int, d.upstream_max_connections, 1),
        drain_grace_ms=r.number("drain_grace_ms", int, d.drain_grace_ms, 0),
    )


def _ipc(r: Reader) -> IpcOptions:
    d = IpcOptions()
    endpoint = r.get("endpoint", str, d.endpoint)
    if endpoint and not endpoint.startswith(("ipc://", "tcp://")):
        raise r.error("endpoint", f"unsupported endpoint {endpoint!r}",
                      "use ipc:///path/to/hooks.sock or tcp://127.0.0.1:PORT, or leave it empty")
    return IpcOptions(
        endpoint=endpoint,
        max_message_bytes=r.number("max_message_bytes", int, d.max_message_bytes, 64 * 1024),
        shm_threshold_bytes=r.number("shm_threshold_bytes", int, d.shm_threshold_bytes, 0),
        shm_arena_bytes=r.number("shm_arena_bytes", int, d.shm_arena_bytes, 0),
    )


def _supervisor(r: Reader) -> SupervisorOptions:
    d = SupervisorOptions()
    return SupervisorOptions(
        restart_backoff_initial_ms=r.number(
            "restart_backoff_initial_ms", int, d.restart_backoff_initial_ms, 1),
        restart_backoff_max_ms=r.number("restart_backoff_max_ms", int, d.restart_backoff_max_ms, 1),
        stop_grace_ms=r.number("stop_grace_ms", int, d.stop_grace_ms, 0),
        flap_window_s=r.number("flap_window_s", int, d.flap_window_s, 1),
        flap_max_exits=r.number("flap_max_exits", int, d.flap_max_exits, 1),
    )
