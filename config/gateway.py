"""The gateway config file: Tyk's `tyk.conf` names where Tyk has one, `coproc` for ours.

Relative paths are resolved against the config file's directory, so the same
file works whatever the current directory of the process that reads it.

A few secrets and connection settings may also come from the environment under
Tyk's own names (`TYK_GW_SECRET`, `TYK_GW_STORAGE_PASSWORD`, ...; see
`ENV_OVERRIDES`), so that a container platform can hand them over from a secret
store instead of a file; the environment wins over the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shlex
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.analytics import AnalyticsConfig, MetricsOptions, parse_analytics, parse_metrics
from config.cpus import usable_cpus
from config.policies import PolicyOptions
from config.reader import ConfigError, Reader, load_json
from config.sandbox import SandboxOptions, parse_sandbox
from config.storage import StorageConfig, parse_storage
from config.tracing import TracingOptions, parse_tracing

__all__ = [
    "ENV_OVERRIDES",
    "FAILURE_POLICIES",
    "BundleOptions",
    "GatewayConfig",
    "GatewayOptions",
    "GrpcOptions",
    "HookOptions",
    "IpcOptions",
    "JsvmOptions",
    "KeyOptions",
    "StorageConfig",
    "SupervisorOptions",
    "WorkerOptions",
    "default_run_dir",
    "for_process",
    "load_gateway_config",
    "parse_gateway_config",
]

FAILURE_POLICIES = ("fail_closed", "fail_open")

#: Environment variable (Tyk's envconfig name) -> (path in the config file, type).
ENV_OVERRIDES: dict[str, tuple[tuple[str, ...], type]] = {
    "TYK_GW_SECRET": (("secret",), str),
    "TYK_GW_LISTENPORT": (("listen_port",), int),
    "TYK_GW_STORAGE_TYPE": (("storage", "type"), str),
    "TYK_GW_STORAGE_HOST": (("storage", "host"), str),
    "TYK_GW_STORAGE_PORT": (("storage", "port"), int),
    "TYK_GW_STORAGE_USERNAME": (("storage", "username"), str),
    "TYK_GW_STORAGE_PASSWORD": (("storage", "password"), str),
    "TYK_GW_STORAGE_DATABASE": (("storage", "database"), int),
    # Comma-separated, as Tyk's envconfig reads a []string.
    "TYK_GW_STORAGE_ADDRS": (("storage", "addrs"), list),
    "TYK_GW_STORAGE_MASTERNAME": (("storage", "master_name"), str),
    "TYK_GW_STORAGE_SENTINELPASSWORD": (("storage", "sentinel_password"), str),
    "TYK_GW_STORAGE_ENABLECLUSTER": (("storage", "enable_cluster"), bool),
    "TYK_GW_STORAGE_USESSL": (("storage", "use_ssl"), bool),
    "TYK_GW_STORAGE_TIMEOUT": (("storage", "timeout"), int),
}

# Go's strconv.ParseBool, which Tyk's envconfig uses.
_ENV_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_ENV_FALSE = ("0", "f", "F", "FALSE", "false", "False")


#: Tyk's `hash_key_function` values ("" generates legacy `<org><id>` keys).
KEY_HASH_FUNCTIONS = ("", "murmur32", "murmur64", "murmur128", "sha256")


@dataclass(frozen=True, slots=True)
class KeyOptions:
    """How keys are stored and made (tyk.conf names, Tyk's defaults)."""

    hash_keys: bool = False
    hash_key_function: str = ""
    hash_key_function_fallback: tuple[str, ...] = ()
    enable_hashed_keys_listing: bool = False
    #: Tyk's `allow_master_keys`: the admin API may create a key without access
    #: rights (it opens every API).  Off, such a key is refused, as in Tyk.
    allow_master_keys: bool = False


@dataclass(frozen=True, slots=True)
class HookOptions:
    timeout_ms: int = 1000
    failure_policy: str = "fail_closed"
    # How long a call waits for a worker while a new generation boots.
    worker_wait_ms: int = 5000
    # Hooks with no gateway work between them share one CALL (ipc/merged.py).
    merge: bool = True


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
    # The interpreter that runs the worker (`<python> -m worker`), e.g. a venv
    # holding the plugins' dependencies; "": the supervisor's own interpreter.
    python: str = ""


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
    # Gateway processes of this instance (`coproc.gateway.processes`, an integer
    # or "auto": the CPU count).  They accept on one listening socket and send
    # their hook calls to the one worker, each on its own hooks socket.
    processes: int = 1
    # How they share the listening port: "reuseport" (a socket each, SO_REUSEPORT:
    # the kernel spreads connections evenly) or "shared" (one socket for all).
    accept: str = "reuseport"
    # A gateway process whose event loop has not reported to the supervisor for
    # this long is hung: SIGABRT (a traceback), SIGKILL, restart.  0: not checked.
    hang_timeout_ms: int = 10000


@dataclass(frozen=True, slots=True)
class IpcOptions:
    # Empty: ipc://<run_dir>/hooks.sock.  tcp://127.0.0.1:PORT is for development.
    endpoint: str = ""
    max_message_bytes: int = 64 * 1024 * 1024
    shm_threshold_bytes: int = 16 * 1024
    shm_arena_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class GrpcOptions:
    """Tyk's gRPC settings in `coprocess_options` (the `grpc` plugin driver)."""

    # Tyk's `coprocess_grpc_server`: tcp://host:port, unix:///path or dns:///name:port.
    server: str = ""
    recv_max_size: int = 0  # 0: derived from max_body_bytes (see docs/drivers/grpc.md)
    send_max_size: int = 0
    authority: str = ""
    round_robin: bool = False


#: The placeholder of `coproc.grpc_server.command` for the address to bind.
LISTEN_PLACEHOLDER = "{listen}"
#: The environment variable a supervised gRPC server's launcher reads `{listen}` from.
GRPC_LISTEN_ENV = "COPROC_GRPC_LISTEN"


@dataclass(frozen=True, slots=True)
class GrpcServerOptions:
    """`coproc.grpc_server`: a gRPC plugin server Coproc starts and supervises."""

    command: tuple[str, ...] = ()  # empty: none (an external server, Tyk's way)
    boot_timeout_ms: int = 20000  # healthy within this, or it is killed and restarted
    health_interval_ms: int = 2000  # health checks of the running server
    health_failures: int = 3  # consecutive failed checks before a restart
    drain_grace_ms: int = 30000  # an old server stops at the latest this long after a switch

    @property
    def enabled(self) -> bool:
        return bool(self.command)

    @property
    def movable(self) -> bool:
        """The command binds the address it is given: hot restarts are seamless."""
        return any(LISTEN_PLACEHOLDER in arg for arg in self.command)


#: The `coprocess_grpc_server` schemes gRPC resolves (Tyk strips `tcp://`).
GRPC_SCHEMES = ("tcp://", "unix://", "unix:", "dns:", "ipv4:", "ipv6:")


@dataclass(frozen=True, slots=True)
class JsvmOptions:
    """JavaScript plugins: Tyk's `enable_jsvm`, `jsvm_timeout`, `tyk_js_path`, plus
    `coproc.jsvm` (docs/drivers/jsvm.md)."""

    enable: bool = False  # enable_jsvm (Tyk's default: off)
    timeout_s: float = 5.0  # jsvm_timeout; <= 0 means Tyk's default, 5 s
    tyk_js_path: Path | None = None  # a JS library loaded into every API's context
    # Destinations TykMakeHttpRequest/TykBatchRequest may reach through the
    # gateway: "host", "host:port" or "*".  None: the sandbox profile's default
    # (nothing under `strict` or with sandbox.network false, else "*").
    outbound_allow: tuple[str, ...] | None = None
    outbound_timeout_ms: int = 5000
    max_memory_mb: int = 64


@dataclass(frozen=True, slots=True)
class SupervisorOptions:
    restart_backoff_initial_ms: int = 100
    restart_backoff_max_ms: int = 5000
    stop_grace_ms: int = 10000
    flap_window_s: int = 60
    flap_max_exits: int = 5


@dataclass(frozen=True, slots=True)
class BundleOptions:
    """Bundle fetching and verification: Tyk's `tyk.conf` names plus `coproc.bundles`."""

    enable_downloader: bool = False  # enable_bundle_downloader
    base_url: str = ""  # bundle_base_url (http, https or file)
    insecure_skip_verify: bool = False  # bundle_insecure_skip_verify (https only)
    public_key_path: Path | None = None  # public_key_path
    skip_verify_existing: bool = False  # skip_verify_existing_plugin_bundle
    # Sent with every download (e.g. Authorization); values are never logged.
    headers: tuple[tuple[str, str], ...] = ()
    start_wait_ms: int = 10000  # how long start-up waits for downloads
    timeout_ms: int = 5000  # per attempt, as Tyk
    attempts: int = 5  # as Tyk: the first try and 4 retries
    retry_initial_ms: int = 500  # then x2, at most retry_max_ms (Tyk's backoff)
    retry_max_ms: int = 5000
    retry_interval_s: int = 30  # background retries after every attempt failed
    max_download_bytes: int = 64 * 1024 * 1024
    max_entries: int = 1000
    max_total_bytes: int = 128 * 1024 * 1024  # uncompressed
    max_ratio: int = 200  # uncompressed / compressed, for entries over 1 MiB

    @property
    def active(self) -> bool:
        return self.enable_downloader and bool(self.base_url)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    path: Path
    listen_address: str = ""
    listen_port: int = 8080
    secret: str = ""
    app_path: Path = Path("apps")
    middleware_path: Path = Path("middleware")
    enable_coprocess: bool = True
    grpc: GrpcOptions = field(default_factory=GrpcOptions)
    grpc_server: GrpcServerOptions = field(default_factory=GrpcServerOptions)
    storage: StorageConfig = field(default_factory=StorageConfig)
    keys: KeyOptions = field(default_factory=KeyOptions)
    policies: PolicyOptions = field(default_factory=PolicyOptions)
    run_dir: Path = Path()
    log_level: str = "info"
    log_format: str = "text"
    hooks: HookOptions = field(default_factory=HookOptions)
    worker: WorkerOptions = field(default_factory=WorkerOptions)
    gateway: GatewayOptions = field(default_factory=GatewayOptions)
    ipc: IpcOptions = field(default_factory=IpcOptions)
    supervisor: SupervisorOptions = field(default_factory=SupervisorOptions)
    sandbox: SandboxOptions = field(default_factory=SandboxOptions)
    bundles: BundleOptions = field(default_factory=BundleOptions)
    analytics: AnalyticsConfig = field(default_factory=AnalyticsConfig)
    metrics: MetricsOptions = field(default_factory=MetricsOptions)
    tracing: TracingOptions = field(default_factory=TracingOptions)  # Tyk: opentelemetry
    access_log: bool = False  # coproc.access_log: one line per request
    #: Tyk's `rate_limit_response_headers`: what X-RateLimit-* say, "quotas" (Tyk's
    #: default: the key's quota, on proxied answers) or "rate_limits" (its rate).
    rate_limit_headers: str = "quotas"
    #: `coproc.strict_definitions` (or `coproc serve --strict`): a definition that
    #: does not load stops the start (exit 78) and refuses a reload, instead of
    #: leaving that API unserved.
    strict_definitions: bool = False
    jsvm: JsvmOptions = field(default_factory=JsvmOptions)
    #: Which of the instance's gateway processes reads this (COPROC_GATEWAY_INDEX,
    #: set by the supervisor; `for_process`): its hooks socket and metrics port.
    process_index: int = 0
    #: The file as read (Tyk fields Coproc does not apply are reported from it).
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def hooks_endpoint(self) -> str:
        """This gateway process's hooks socket (process 0's in the worker)."""
        return self.hooks_endpoint_for(self.process_index)

    def hooks_endpoint_for(self, index: int) -> str:
        """Gateway process `index`'s hooks socket: hooks.sock, hooks-1.sock, ...;
        with a tcp:// endpoint, its port plus the index."""
        if index == 0:
            return self.ipc.endpoint or f"ipc://{self.run_dir / 'hooks.sock'}"
        if self.ipc.endpoint.startswith("tcp://"):
            host, _, port = self.ipc.endpoint.rpartition(":")
            return f"{host}:{int(port) + index}"
        if self.ipc.endpoint:
            return f"{self.ipc.endpoint.removesuffix('.sock')}-{index}.sock"
        return f"ipc://{self.run_dir / f'hooks-{index}.sock'}"

    @property
    def hooks_endpoints(self) -> tuple[str, ...]:
        """Every gateway process's hooks socket, by index: the worker connects to each."""
        return tuple(self.hooks_endpoint_for(i) for i in range(self.gateway.processes))


def for_process(cfg: GatewayConfig, index: int) -> GatewayConfig:
    """`cfg` as gateway process `index` reads it: its own hooks socket; with a
    metrics listener of its own, the configured port plus `index`; its own
    analytics file (`analytics-<index>.jsonl`: one writer per file, rotation
    included)."""
    if index == 0:
        return cfg
    metrics = cfg.metrics
    if metrics.listen_port:
        metrics = dataclasses.replace(metrics, listen_port=metrics.listen_port + index)
    path = cfg.analytics.file_path
    analytics = dataclasses.replace(
        cfg.analytics, file_path=path.with_name(f"{path.stem}-{index}{path.suffix}"))
    return dataclasses.replace(cfg, process_index=index, metrics=metrics, analytics=analytics)


def default_run_dir(config_path: Path) -> Path:
    """A short, per-config directory: /run/coproc/<h> as root, else per user."""
    digest = hashlib.sha256(str(config_path).encode()).hexdigest()[:12]
    if os.geteuid() == 0:
        return Path("/run/coproc") / digest
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and Path(base).is_dir():
        return Path(base) / "coproc" / digest
    return Path(tempfile.gettempdir()) / f"coproc-{os.geteuid()}" / digest


def load_gateway_config(path: Path | str,
                        environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read and validate the gateway config file; raise `ConfigError`."""
    path = Path(path).resolve()
    raw = _apply_env(load_json(path), path, os.environ if environ is None else environ)
    return parse_gateway_config(raw, path)


def parse_gateway_config(raw: dict[str, Any], path: Path) -> GatewayConfig:
    """Validate an already read config document; `path` names it in errors and is
    the base of relative paths (the worker gets its part from the supervisor)."""
    r = Reader(raw, path)
    base = path.parent
    coproc = r.child("coproc", strict=True)
    run_dir = (_resolve(base, coproc.get("run_dir", str, "")) if coproc.has("run_dir")
               else default_run_dir(path))
    cfg = GatewayConfig(
        path=path,
        listen_address=r.get("listen_address", str, ""),
        listen_port=r.number("listen_port", int, 8080, 0, 65535),
        secret=r.get("secret", str, ""),
        app_path=_resolve(base, r.get("app_path", str, "apps")),
        middleware_path=_resolve(base, r.get("middleware_path", str, "middleware")),
        enable_coprocess=r.child("coprocess_options").get("enable_coprocess", bool, True),
        grpc=_grpc(r.child("coprocess_options")),
        storage=parse_storage(r.child("storage"), base),
        keys=_keys(r),
        rate_limit_headers=r.choice("rate_limit_response_headers",
                                    ("quotas", "rate_limits", ""), "quotas") or "quotas",
        policies=_policies(r.child("policies"), base),
        run_dir=run_dir,
        log_level=coproc.choice("log_level", ("debug", "info", "warning", "error"), "info"),
        log_format=coproc.choice("log_format", ("text", "json"), "text"),
        hooks=_hooks(coproc.child("hooks")),
        worker=_worker(coproc.child("worker"), base),
        gateway=_gateway(coproc.child("gateway")),
        ipc=_ipc(coproc.child("ipc")),
        supervisor=_supervisor(coproc.child("supervisor")),
        grpc_server=_grpc_server(coproc.child("grpc_server"), r.child("coprocess_options")),
        sandbox=parse_sandbox(coproc.child("sandbox"), base),
        bundles=_bundles(r, coproc.child("bundles"), base),
        analytics=parse_analytics(r, coproc, base, run_dir),
        metrics=parse_metrics(coproc.child("metrics")),
        tracing=parse_tracing(r.child("opentelemetry")),
        access_log=coproc.get("access_log", bool, False),
        strict_definitions=coproc.get("strict_definitions", bool, False),
        jsvm=_jsvm(r, coproc.child("jsvm", strict=True), base),
        raw=raw,
    )
    coproc.reject_unknown()
    return cfg


def _apply_env(doc: dict[str, object], path: Path,
               environ: Mapping[str, str]) -> dict[str, object]:
    """`doc` with the fields named by set `ENV_OVERRIDES` variables replaced."""
    for name, (keys, kind) in ENV_OVERRIDES.items():
        raw = environ.get(name)
        if raw is None:
            continue
        value = _env_value(path, name, keys, kind, raw)
        node = doc
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[keys[-1]] = value
    return doc


def _env_value(path: Path, name: str, keys: tuple[str, ...], kind: type, raw: str) -> object:
    if kind is list:
        return [part.strip() for part in raw.split(",") if part.strip()]
    if kind is bool and raw in (*_ENV_TRUE, *_ENV_FALSE):
        return raw in _ENV_TRUE
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            pass
    elif kind is not bool:
        return raw
    expected = "an integer" if kind is int else "true or false"
    raise ConfigError(path, ".".join(keys), f"environment variable {name} must be {expected}, "
                      f"got {raw!r}", f"set {name} to {expected} or unset it")


def _resolve(base: Path, value: str) -> Path:
    return (base / os.path.expanduser(value)).resolve()


def _policies(r: Reader, base: Path) -> PolicyOptions:
    # Tyk's other sources (service, rpc) are reported as not applied (config/tyk_support.py).
    source = r.get("policy_source", str, "")
    path = r.get("policy_path", str, "")
    record = r.get("policy_record_name", str, "")
    return PolicyOptions(
        policy_source=source,
        policy_path=_resolve(base, path) if path else None,
        policy_record_name=_resolve(base, record) if record else None,
    )


def _keys(r: Reader) -> KeyOptions:
    fallback = r.get("hash_key_function_fallback", list, [])
    for index, item in enumerate(fallback):
        if item not in KEY_HASH_FUNCTIONS[1:]:
            raise r.error(f"hash_key_function_fallback[{index}]",
                          f"{item!r} is not a key hash function",
                          f"use one of {', '.join(KEY_HASH_FUNCTIONS[1:])}")
    return KeyOptions(
        hash_keys=r.get("hash_keys", bool, False),
        hash_key_function=r.choice("hash_key_function", KEY_HASH_FUNCTIONS, ""),
        hash_key_function_fallback=tuple(fallback),
        enable_hashed_keys_listing=r.get("enable_hashed_keys_listing", bool, False),
        allow_master_keys=r.get("allow_master_keys", bool, False),
    )


def _hooks(r: Reader) -> HookOptions:
    d = HookOptions()
    return HookOptions(
        timeout_ms=r.number("timeout_ms", int, d.timeout_ms, 1),
        failure_policy=r.choice("failure_policy", FAILURE_POLICIES, d.failure_policy),
        worker_wait_ms=r.number("worker_wait_ms", int, d.worker_wait_ms, 0),
        merge=r.get("merge", bool, d.merge),
    )


def _worker_python(r: Reader, base: Path) -> str:
    """`coproc.worker.python`: an absolute path (symlinks kept: a venv's
    bin/python is one, and resolving it would leave the venv)."""
    value = r.get("python", str, "")
    if not value:
        return ""
    found = (shutil.which(value) if "/" not in value
             else os.path.abspath(base / os.path.expanduser(value)))
    if not found or not os.path.isfile(found) or not os.access(found, os.X_OK):
        raise r.error("python", f"{value!r} is not an executable file",
                      "give the path of a Python interpreter, e.g. /opt/plugins-venv/bin/python "
                      "(a venv where coproc is installed too)")
    return found


def _worker(r: Reader, base: Path) -> WorkerOptions:
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
        python=_worker_python(r, base),
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
        processes=_processes(r),
        accept=r.choice("accept", ("reuseport", "shared"), d.accept),
        hang_timeout_ms=r.number("hang_timeout_ms", int, d.hang_timeout_ms, 0),
    )


#: More gateway processes than this is a typo, not a machine.
MAX_GATEWAY_PROCESSES = 256


def _processes(r: Reader) -> int:
    """`processes`: a positive integer, or "auto": the CPUs this process may use
    (affinity and cgroup quota, config/cpus.py)."""
    if r.has("processes") and isinstance(r.data["processes"], str):
        if r.data["processes"] != "auto":
            raise r.error("processes", f"unknown value {r.data['processes']!r}",
                          'use a number of processes (1 or more) or "auto" (one per CPU)')
        return min(MAX_GATEWAY_PROCESSES, usable_cpus())
    return r.number("processes", int, 1, 1, MAX_GATEWAY_PROCESSES)


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


def _grpc(r: Reader) -> GrpcOptions:
    server = r.get("coprocess_grpc_server", str, "")
    if server and not server.startswith(GRPC_SCHEMES):
        raise r.error("coprocess_grpc_server", f"unsupported address {server!r}",
                      "use tcp://HOST:PORT, unix:///path/to/socket or dns:///NAME:PORT")
    return GrpcOptions(
        server=server,
        recv_max_size=r.number("grpc_recv_max_size", int, 0, 0),
        send_max_size=r.number("grpc_send_max_size", int, 0, 0),
        authority=r.get("grpc_authority", str, ""),
        round_robin=r.get("grpc_round_robin_load_balancing", bool, False),
    )


def _grpc_server(r: Reader, tyk: Reader) -> GrpcServerOptions:
    d = GrpcServerOptions()
    raw: Any = r.get("command", object, "") if r.has("command") else ""
    if isinstance(raw, str):
        try:
            command = tuple(shlex.split(raw))
        except ValueError as exc:
            raise r.error("command", f"cannot be split into arguments ({exc})",
                          "quote arguments as in a shell, or give a list of strings") from None
    elif isinstance(raw, list) and all(isinstance(a, str) and a for a in raw):
        command = tuple(raw)
    else:
        raise r.error("command", f"expected a command line or a list of strings, got {raw!r}",
                      'e.g. "python3 server.py --listen {listen}"')
    if command and not any(LISTEN_PLACEHOLDER in a for a in command) \
            and not tyk.get("coprocess_grpc_server", str, ""):
        raise r.error("command", "has no {listen} placeholder and "
                      "coprocess_options.coprocess_grpc_server is not set: Coproc cannot "
                      "know where the server listens",
                      "put {listen} where the command takes its address, or set "
                      "coprocess_grpc_server to the address the command binds")
    return GrpcServerOptions(
        command=command,
        boot_timeout_ms=r.number("boot_timeout_ms", int, d.boot_timeout_ms, 100),
        health_interval_ms=r.number("health_interval_ms", int, d.health_interval_ms, 100),
        health_failures=r.number("health_failures", int, d.health_failures, 1, 100),
        drain_grace_ms=r.number("drain_grace_ms", int, d.drain_grace_ms, 0),
    )


def _jsvm(r: Reader, c: Reader, base: Path) -> JsvmOptions:
    d = JsvmOptions()
    timeout = r.number("jsvm_timeout", float, 0)
    library = r.get("tyk_js_path", str, "")
    allow: tuple[str, ...] | None = None
    if c.has("outbound_allow"):
        entries = c.get("outbound_allow", list, [])
        for i, item in enumerate(entries):
            if not isinstance(item, str) or not item or "/" in item:
                raise c.error(f"outbound_allow[{i}]", f"expected a host, host:port or *, "
                              f"got {item!r}", 'list destinations like "api.example.com", '
                              '"127.0.0.1:8081" or "*"')
        allow = tuple(entries)
    return JsvmOptions(
        enable=r.get("enable_jsvm", bool, d.enable),
        timeout_s=timeout if timeout > 0 else d.timeout_s,
        tyk_js_path=_resolve(base, library) if library else None,
        outbound_allow=allow,
        outbound_timeout_ms=c.number("outbound_timeout_ms", int, d.outbound_timeout_ms, 1),
        max_memory_mb=c.number("max_memory_mb", int, d.max_memory_mb, 1, 1 << 16),
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


_BUNDLE_SCHEMES = ("http://", "https://", "file://")


def _check_public_key(r: Reader, path: Path) -> None:
    """A readable PEM public key file (its RSA content is checked when bundles load)."""
    try:
        text = path.read_text("ascii", errors="replace")
    except OSError as exc:
        raise r.error("public_key_path", f"cannot read {path} ({exc.strerror})",
                      "point public_key_path at the PEM public key that verifies bundles"
                      ) from None
    if "-----BEGIN PUBLIC KEY-----" not in text and "-----BEGIN RSA PUBLIC KEY-----" not in text:
        raise r.error("public_key_path", f"{path} is not a PEM PUBLIC KEY or RSA PUBLIC KEY",
                      "export the public half of the signing key, e.g. openssl rsa -in "
                      "private.pem -pubout -out public.pem")


def _bundles(r: Reader, c: Reader, base: Path) -> BundleOptions:
    d = BundleOptions()
    url = r.get("bundle_base_url", str, "")
    if url and not url.startswith(_BUNDLE_SCHEMES):
        raise r.error("bundle_base_url", "must be an http://, https:// or file:// URL",
                      "set the bundle server's base URL, e.g. https://bundles.example.com/")
    key = r.get("public_key_path", str, "")
    key_path = _resolve(base, key) if key else None
    if key_path is not None:
        _check_public_key(r, key_path)
    headers = c.get("headers", dict, {})
    for name, value in headers.items():
        if not isinstance(value, str):
            raise c.error(f"headers.{name}", "expected a string",
                          "give each header a string value")
    return BundleOptions(
        enable_downloader=r.get("enable_bundle_downloader", bool, d.enable_downloader),
        base_url=url,
        insecure_skip_verify=r.get("bundle_insecure_skip_verify", bool, d.insecure_skip_verify),
        public_key_path=key_path,
        skip_verify_existing=r.get("skip_verify_existing_plugin_bundle", bool,
                                   d.skip_verify_existing),
        headers=tuple(sorted(headers.items())),
        start_wait_ms=c.number("start_wait_ms", int, d.start_wait_ms, 0),
        timeout_ms=c.number("timeout_ms", int, d.timeout_ms, 1),
        attempts=c.number("attempts", int, d.attempts, 1, 100),
        retry_initial_ms=c.number("retry_initial_ms", int, d.retry_initial_ms, 1),
        retry_max_ms=c.number("retry_max_ms", int, d.retry_max_ms, 1),
        retry_interval_s=c.number("retry_interval_s", int, d.retry_interval_s, 1),
        max_download_bytes=c.number("max_download_bytes", int, d.max_download_bytes, 1024),
        max_entries=c.number("max_entries", int, d.max_entries, 1),
        max_total_bytes=c.number("max_total_bytes", int, d.max_total_bytes, 1024),
        max_ratio=c.number("max_ratio", int, d.max_ratio, 1),
    )
