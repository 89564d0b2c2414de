"""Real-process test harness: an echo upstream, Coproc instances, HTTP helpers.

Everything here starts real processes and talks to them over real sockets.
Every wait is a poll against a deadline (never a bare sleep), and every
process started is stopped by pid at teardown, its process group killed if it
does not stop in time.

Typical use from a test (the fixtures in tests/conftest.py wrap this)::

    gw = factory(
        apis={"one": api_def("one", "/one/", echo.url, pre=[hook("MyPre", "one/mw.py")])},
        plugins={"one/mw.py": SOURCE},
    )
    resp = gw.get("/one/anything")
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "REPO_ROOT",
    "EchoUpstream",
    "Instance",
    "Response",
    "api_def",
    "coproc_command",
    "echo_header",
    "hook",
    "http_request",
    "poll",
    "start_instance",
    "write_instance",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"

#: Settings every test instance gets unless a test overrides them: short
#: grace periods so that stopping an instance never dominates the run time.
TEST_SETTINGS: dict[str, Any] = {
    "coproc": {
        "log_level": "info",
        "worker": {"threads": 32, "drain_grace_ms": 2000},
        "gateway": {"drain_grace_ms": 2000},
        "supervisor": {"stop_grace_ms": 5000},
        # On the gateway's own port: no fixed port (9464) shared by instances.
        "metrics": {"listen_port": 0},
    },
}

#: The admin secret test instances get unless a test sets its own.
TEST_SECRET = "coproc-test-secret"

START_DEADLINE_S = 30.0
STOP_DEADLINE_S = 20.0


# --------------------------------------------------------------------------- polling


def poll(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Call `check` until it returns something truthy; fail after `timeout` seconds.

    Bounded in time and in attempts; `what` names the awaited condition in the error.
    """
    deadline = time.monotonic() + timeout
    attempts = max(1, int(timeout / interval) + 1)
    last: Any = None
    for _ in range(attempts):
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what} (last: {last!r})")


# --------------------------------------------------------------------------- HTTP


@dataclass
class Response:
    status: int
    headers: Message
    body: bytes
    elapsed: float

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def json(self) -> Any:
        return json.loads(self.body)

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def http_request(port: int, method: str, path: str, headers: Mapping[str, str] | None = None,
                 body: bytes | Iterable[bytes] | None = None, timeout: float = 15.0,
                 chunked: bool = False) -> Response:
    """One request on a fresh connection; any status is returned, never raised."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    started = time.monotonic()
    try:
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}),
                         encode_chunked=chunked)
        except (BrokenPipeError, ConnectionResetError):
            # The server may answer (413) and close before reading a large body:
            # its response is still in our receive buffer.
            pass
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, resp.headers, data, time.monotonic() - started)
    finally:
        conn.close()


def echo_header(echo: Mapping[str, Any], name: str) -> str | None:
    """A header as the echo upstream saw it (header names compared case-insensitively)."""
    for key, value in echo.get("headers", {}).items():
        if key.lower() == name.lower():
            return str(value)
    return None


# --------------------------------------------------------------------------- child processes


def _stop_process(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """SIGTERM `proc` by pid, wait; SIGKILL its process group if it will not stop.

    Returns True when it stopped on SIGTERM alone.
    """
    if proc.poll() is not None:
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # started with start_new_session: pgid == pid
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)
        return False


def _kill_leftovers(procs: Iterable[psutil.Process]) -> list[int]:
    """SIGKILL any of `procs` still running (psutil guards against pid reuse)."""
    killed = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                p.kill()
                killed.append(p.pid)
    return killed


class EchoUpstream:
    """`python -m gateway.echo_upstream` on an ephemeral port (read from its stdout)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_path = log_dir / "echo-upstream.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._lines: queue.Queue[bytes] = queue.Queue()
        self._log = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def start(self, timeout: float = 20.0) -> EchoUpstream:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.echo_upstream", "--host", HOST, "--port", "0"],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=self._log, start_new_session=True)
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:  # bounded: every iteration waits on the deadline
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"echo upstream did not print ECHO_PORT within {timeout}s "
                                   f"(exit {self.proc.returncode}); stderr:\n{self._stderr()}")
            try:
                line = self._lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line.startswith(b"ECHO_PORT="):
                self.port = int(line.split(b"=", 1)[1])
                return self

    def _pump(self, stream: Any) -> None:
        # Keeps draining stdout so the upstream can never block on a full pipe.
        for line in iter(stream.readline, b""):
            self._lines.put(line.strip())
        stream.close()

    def _stderr(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc, 10)
        if self._log is not None:
            self._log.close()
            self._log = None


# --------------------------------------------------------------------------- instance files


def hook(name: str, path: str = "", **options: Any) -> dict[str, Any]:
    """One `custom_middleware` entry (Tyk field names; timeout_ms/failure_policy are Coproc's)."""
    entry: dict[str, Any] = {"name": name}
    if path:
        entry["path"] = path
    entry.update(options)
    return entry


def api_def(api_id: str, listen_path: str, target_url: str, *,
            pre: Iterable[dict[str, Any]] = (), post: Iterable[dict[str, Any]] = (),
            post_key_auth: Iterable[dict[str, Any]] = (),
            response: Iterable[dict[str, Any]] = (), auth_check: dict[str, Any] | None = None,
            strip_listen_path: bool = True, **extra: Any) -> dict[str, Any]:
    """A keyless Tyk classic API definition; `extra` adds or replaces top-level fields."""
    middleware: dict[str, Any] = {"driver": "python", "pre": list(pre), "post": list(post),
                                  "post_key_auth": list(post_key_auth), "response": list(response)}
    if auth_check is not None:
        middleware["auth_check"] = auth_check
    definition: dict[str, Any] = {
        "name": api_id,
        "api_id": api_id,
        "org_id": "default",
        "active": True,
        "use_keyless": True,
        "proxy": {"listen_path": listen_path, "target_url": target_url,
                  "strip_listen_path": strip_listen_path},
        "custom_middleware": middleware,
        "version_data": {"not_versioned": True, "versions": {"Default": {"name": "Default"}}},
    }
    definition.update(extra)
    return definition


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def write_instance(base: Path, apis: Mapping[str, Mapping[str, Any]],
                   plugins: Mapping[str, str], settings: Mapping[str, Any] | None = None,
                   raw_config: str | None = None) -> Path:
    """Write config + API defs + plugins under `base`; return the config file's path.

    `apis` maps a file stem to an API definition, `plugins` maps a path relative
    to the middleware dir to Python source, `settings` is merged into the gateway
    config, and `raw_config` (if given) is written verbatim instead of it.
    """
    apps, middleware, run_dir = base / "apps", base / "middleware", base / "run"
    for d in (apps, middleware):
        d.mkdir(parents=True, exist_ok=True)
    for stem, definition in apis.items():
        (apps / f"{stem}.json").write_text(json.dumps(definition, indent=2))
    for rel, source in plugins.items():
        target = middleware / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source)
    config = {
        "listen_address": HOST,
        "listen_port": 0,
        # The admin secret: GET /coproc/status (Instance.status) needs one.
        "secret": TEST_SECRET,
        "app_path": "apps",
        "middleware_path": "middleware",
        "coprocess_options": {"enable_coprocess": True},
        "storage": {"type": "memory"},
    }
    config = _merge(config, TEST_SETTINGS)
    config = _merge(config, {"coproc": {"run_dir": str(run_dir)}})
    config = _merge(config, settings or {})
    path = base / "coproc.json"
    path.write_text(raw_config if raw_config is not None else json.dumps(config, indent=2))
    return path


def coproc_command() -> list[str]:
    """The `coproc` console script next to this interpreter, else `python -m supervisor.cli`."""
    script = Path(sys.executable).parent / "coproc"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "supervisor.cli"]


def new_base_dir() -> Path:
    # Short on purpose: ipc:// socket paths must fit in sun_path (~100 bytes).
    return Path(tempfile.mkdtemp(prefix="cp-"))


# --------------------------------------------------------------------------- instance


@dataclass
class Instance:
    """One running `coproc serve`, with its files and logs."""

    base: Path
    config_path: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0
    _log_file: Any = None
    _seen: dict[int, psutil.Process] = field(default_factory=dict)
    stopped_gracefully: bool | None = None

    # -- files and processes

    @property
    def run_dir(self) -> Path:
        return self.base / "run"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def children(self) -> list[psutil.Process]:
        """Live descendants of the supervisor (also remembered for cleanup)."""
        try:
            kids = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []
        for p in kids:
            self._seen.setdefault(p.pid, p)
        return kids

    def running(self, marker: str) -> list[psutil.Process]:
        """Live descendants whose command line contains `marker`; one that exited and
        awaits its reaping (a zombie) or is gone already is not among them."""
        found = []
        for proc in self.children():
            try:
                if proc.status() != psutil.STATUS_ZOMBIE and marker in " ".join(proc.cmdline()):
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def seen_children(self) -> list[psutil.Process]:
        return list(self._seen.values())

    def logs(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return "<no log>"

    # -- HTTP

    def request(self, method: str, path: str, headers: Mapping[str, str] | None = None,
                body: bytes | Iterable[bytes] | None = None, timeout: float = 15.0,
                chunked: bool = False) -> Response:
        return http_request(self.port, method, path, headers, body, timeout, chunked)

    def get(self, path: str, headers: Mapping[str, str] | None = None,
            timeout: float = 15.0) -> Response:
        return self.request("GET", path, headers, timeout=timeout)

    def hello(self, timeout: float = 5.0) -> Response:
        return self.get("/hello", timeout=timeout)

    def ready(self, timeout: float = 5.0) -> Response:
        return self.get("/ready", timeout=timeout)

    def status(self, timeout: float = 5.0) -> Response:
        """GET /coproc/status with the config's admin secret: the full health detail."""
        secret = json.loads(self.config_path.read_text()).get("secret", "")
        return self.get("/coproc/status", {"X-Tyk-Authorization": secret}, timeout=timeout)

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`coproc ARGS --config <this instance's config>`."""
        return subprocess.run([*coproc_command(), *args, "--config", str(self.config_path)],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def supervisor_status(self) -> dict[str, Any]:
        """`coproc status --json`: the supervisor's view (every gateway process)."""
        done = self.ctl("status", "--json")
        assert done.returncode == 0, f"coproc status: {done.stderr}\n{self.logs()}"
        return dict(json.loads(done.stdout))

    def worker(self) -> dict[str, Any]:
        """The worker's full record (pid, plugins, sandbox, counters) from /coproc/status."""
        return dict(self.expect(self.status(), 200).json()["worker"])

    def serving(self, timeout: float = 2.0) -> bool:
        """Ready (GET /ready 200) with a routable plugin worker, when there is one."""
        try:
            if self.ready(timeout=timeout).status != 200:
                return False
            worker = self.hello(timeout=timeout).json()["details"].get("worker")
        except (OSError, ValueError):
            return False
        return worker is None or worker["status"] == "pass"

    def expect(self, resp: Response, status: int) -> Response:
        """Assert the status; the message carries the body and the instance's log tail."""
        assert resp.status == status, (
            f"expected {status}, got {resp.status}; body: {resp.body[:600]!r}\n"
            f"--- coproc log (tail) ---\n{self.logs()}")
        return resp

    # -- lifecycle

    def wait_ready(self, timeout: float = START_DEADLINE_S) -> None:
        """Wait for <run_dir>/http.port, then until `serving()` (ready, worker routable)."""
        def port_known() -> int:
            self._check_alive("http.port")
            try:
                return int((self.run_dir / "http.port").read_text().strip())
            except (OSError, ValueError):
                return 0

        started = time.monotonic()
        try:
            self.port = poll("<run_dir>/http.port", port_known, timeout)
            poll("GET /ready == 200 and a routable worker", self._serving,
                 timeout - (time.monotonic() - started))
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n--- coproc log (tail) ---\n{self.logs()}") from None
        self.children()

    def _serving(self) -> bool:
        self._check_alive("GET /ready == 200")
        return self.serving()

    def _check_alive(self, waiting_for: str) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"coproc serve exited with {self.proc.returncode} while waiting for "
                f"{waiting_for}\n--- coproc log (tail) ---\n{self.logs()}")

    def stop(self, timeout: float = STOP_DEADLINE_S) -> int:
        """SIGTERM by pid, wait; SIGKILL the group if needed. Returns the exit code."""
        self.children()
        if self.stopped_gracefully is None:
            self.stopped_gracefully = _stop_process(self.proc, timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        assert self.proc.returncode is not None
        return self.proc.returncode

    def cleanup(self) -> list[int]:
        """Stop if still running, then SIGKILL any descendant left; return their pids."""
        self.stop()
        return _kill_leftovers(self.seen_children())


def start_instance(apis: Mapping[str, Mapping[str, Any]], plugins: Mapping[str, str],
                   settings: Mapping[str, Any] | None = None, *, wait: bool = True,
                   base: Path | None = None) -> Instance:
    """Write an instance into a fresh short tmp dir and start `coproc serve` on it."""
    base = base or new_base_dir()
    config_path = write_instance(base, apis, plugins, settings)
    return launch(base, config_path, wait=wait)


def launch(base: Path, config_path: Path, *, wait: bool = True,
           command: Sequence[str] | None = None, **popen: Any) -> Instance:
    """`coproc serve` on `config_path` (`command`: another way to run it; `popen`:
    more Popen arguments, e.g. env or user)."""
    log_path = base / "coproc.log"
    log_file = open(log_path, "ab")
    proc = subprocess.Popen([*(command or coproc_command()), "serve", "--config",
                             str(config_path)],
                            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log_file,
                            stderr=subprocess.STDOUT, start_new_session=True, **popen)
    inst = Instance(base=base, config_path=config_path, proc=proc, log_path=log_path,
                    _log_file=log_file)
    if wait:
        try:
            inst.wait_ready()
        except BaseException:
            inst.cleanup()
            raise
    return inst


def remove_base(base: Path) -> None:
    if not os.environ.get("COPROC_KEEP_TMP"):
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- load


class Load:
    """Client threads sending GET `path` until stopped (`with Load(...) as load:`).

    Every 200 is kept in `results` as (time sent, what `keep` took from the
    response); anything else, a connection error included, in `failures`.
    Each request has its own connection (`http_request`), so requests spread
    over an instance's gateway processes as new clients' do.
    """

    def __init__(self, inst: Instance, path: str, threads: int = 6,
                 keep: Callable[[Response], Any] = lambda _resp: None) -> None:
        self._inst, self._path, self._keep = inst, path, keep
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.results: list[tuple[float, Any]] = []
        self.failures: list[str] = []
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self) -> None:
        for _ in range(100_000):  # bounded; stopped long before
            if self._stop.is_set():
                return
            sent = time.monotonic()
            try:
                resp = http_request(self._inst.port, "GET", self._path, timeout=15)
            except OSError as exc:
                with self._lock:
                    self.failures.append(f"connection error: {exc!r}")
                continue
            if resp.status != 200:
                with self._lock:
                    self.failures.append(f"{resp.status}: {resp.body[:200]!r}")
                continue
            kept = self._keep(resp)
            with self._lock:
                self.results.append((sent, kept))


# --------------------------------------------------------------------------- Redis


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A real `redis-server` on a free loopback port, no persistence, stopped by pid.

    `stop()` then `start()` again keeps the port: tests use it to take Redis
    away from running gateways and give it back.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH: Redis-backed features are required "
                               "and tested against a real server (apt-get install redis-server; "
                               ".ci/run installs it)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly",
             "no", "--dir", str(self.base), "--logfile", str(self.base / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        poll("redis-server PING", self.ping, timeout)
        return self

    def ping(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}: "
                               f"{(self.base / 'redis.log').read_text(errors='replace')[-2000:]}")
        return self.command("PING") == b"+PONG\r\n"

    def command(self, *args: str) -> bytes:
        """One command in RESP, its raw reply ("" when Redis is not answering)."""
        import socket

        payload = f"*{len(args)}\r\n".encode() + b"".join(
            f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)
        try:
            with socket.create_connection((HOST, self.port), timeout=2) as s:
                s.sendall(payload)
                return s.recv(65536)
        except OSError:
            return b""

    def settings(self) -> dict[str, Any]:
        """The gateway config's `storage` section for this server."""
        return {"storage": {"type": "redis", "host": HOST, "port": self.port,
                            "timeout_ms": 500}}

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc, 10)
            self.proc = None
