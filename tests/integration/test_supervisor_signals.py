"""The real supervisor with real child processes and real signals.

The gateway and the worker are stand-ins (FAKE_CHILD below) that speak only
the control channel of docs/PROTOCOL.md, so these tests exercise the
supervisor alone: spawning with the contract environment, restarts, hang
detection, the run-directory lock, staged stop and sd_notify.  Each stand-in
appends one JSON line per event to a shared log that the tests read.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from ipc.notify import parse_notify
from ipc.tokens import worker_token

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")

FAKE_CHILD = textwrap.dedent('''
    import json, os, select, signal, sys, time
    from ipc.child import die_with_parent
    from ipc.control import (decode_control, encode_control, inherited_control_socket,
                             read_inherited_secret)

    role, log_path = sys.argv[1], sys.argv[2]
    die_with_parent()
    generation = int(os.environ.get("COPROC_GENERATION", "0"))
    stopping = False

    def record(event, **fields):
        line = json.dumps({"role": role, "pid": os.getpid(), "generation": generation,
                           "event": event, "t": round(time.time(), 4), **fields})
        with open(log_path, "a") as f:
            f.write(line + "\\n")

    def on_term(signum, frame):
        global stopping
        if os.environ.get("FAKE_IGNORE_TERM") == role:
            record("term_ignored")
        else:
            stopping = True

    hang = role == "worker" and os.environ.get("FAKE_HANG_GENERATION") == str(generation)
    signal.signal(signal.SIGTERM, on_term)
    # A hung loop would not run a Python handler; recording it shows SIGABRT came.
    signal.signal(signal.SIGABRT, lambda *_: record("sigabrt"))
    sock = inherited_control_socket()
    env = {k: v for k, v in os.environ.items() if k.startswith("COPROC_") or k == "NOTIFY_SOCKET"}
    secret = read_inherited_secret()
    record("started", env=env, secret=secret.decode() if secret else None)
    ready = {"type": "ready", "role": role, "pid": os.getpid()}
    if role == "worker":
        ready["generation"] = generation
    sock.send(encode_control(ready))
    while not stopping:
        if role == "worker" and not hang:
            sock.send(encode_control({"type": "heartbeat", "generation": generation,
                                      "inflight": 0}))
        try:
            readable, _, _ = select.select([sock], [], [], 0.05)
        except InterruptedError:
            continue
        if readable:
            record("control", message=decode_control(sock.recv(65536)))
    record("stopping")
''')

DRIVER = textwrap.dedent('''
    import faulthandler, signal, sys
    from pathlib import Path
    from supervisor.cli import serve
    from supervisor.contract import ChildCommands

    faulthandler.register(signal.SIGUSR1)  # a stuck test dumps the supervisor's stacks
    config, child, log = sys.argv[1:4]
    commands = ChildCommands(gateway=(sys.executable, child, "gateway", log),
                             worker=(sys.executable, child, "worker", log))
    sys.exit(serve(Path(config), commands))
''')


def wait_for(probe: Callable[[], T | None], timeout: float, what: str,
             diagnostics: Callable[[], str] = lambda: "") -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{diagnostics()}")
        time.sleep(0.02)


@dataclass
class Instance:
    """One `coproc serve` (with stand-in children) and its files."""

    tmp: Path
    config: Path
    proc: subprocess.Popen[bytes]
    notify: socket.socket
    notices: list[dict[str, str]] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return self.tmp / "run"

    @property
    def log_path(self) -> Path:
        return self.tmp / "children.log"

    def records(self, **match: Any) -> list[dict[str, Any]]:
        try:
            lines = self.log_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        rows = [json.loads(line) for line in lines if line]
        return [r for r in rows if all(r.get(k) == v for k, v in match.items())]

    def stderr(self) -> str:
        return (self.tmp / "supervisor.err").read_text(errors="replace")

    def diagnostics(self) -> str:
        return f"--- supervisor stderr ---\n{self.stderr()}\n--- children ---\n" + \
            "\n".join(json.dumps(r) for r in self.records())

    def wait_notice(self, key: str, timeout: float) -> dict[str, str]:
        """The first sd_notify datagram (already received or new) that sets `key`."""
        deadline = time.monotonic() + timeout
        while True:
            for notice in self.notices:
                if key in notice:
                    return notice
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no {key} on NOTIFY_SOCKET within {timeout} s: {self.notices}\n"
                            f"{self.diagnostics()}")
            self.notify.settimeout(remaining)
            try:
                self.notices.append(parse_notify(self.notify.recv(4096)))
            except TimeoutError:
                continue

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(0.5)  # let faulthandler write
            pytest.fail(f"coproc serve still running after {timeout} s\n{self.diagnostics()}")

    def child_started(self, role: str, generation: int | None = None) -> dict[str, Any] | None:
        match: dict[str, Any] = {"role": role, "event": "started"}
        if generation is not None:
            match["generation"] = generation
        rows = self.records(**match)
        return rows[-1] if rows else None

    def gateway_got(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        for row in self.records(role="gateway", event="control"):
            if predicate(row["message"]):
                return row["message"]  # type: ignore[no-any-return]
        return None

    def child_pids(self) -> set[int]:
        return {r["pid"] for r in self.records(event="started")}


@pytest.fixture
def tmp() -> Iterator[Path]:
    # Short: AF_UNIX paths (notify socket, hooks.sock) are limited to ~100 bytes.
    path = Path(tempfile.mkdtemp(prefix="cps-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_config(tmp: Path, **coproc: Any) -> Path:
    (tmp / "apps").mkdir(exist_ok=True)
    options: dict[str, Any] = {
        "run_dir": str(tmp / "run"),
        "log_level": "debug",
        "worker": {"heartbeat_interval_ms": 100, "heartbeat_timeout_ms": 500,
                   "boot_timeout_ms": 5000},
        "supervisor": {"restart_backoff_initial_ms": 100, "stop_grace_ms": 5000},
    }
    options.update(coproc)
    config = tmp / "coproc.json"
    config.write_text(json.dumps({"listen_address": "127.0.0.1", "listen_port": 0,
                                  "app_path": "apps", "coproc": options}))
    (tmp / "fake_child.py").write_text(FAKE_CHILD)
    (tmp / "driver.py").write_text(DRIVER)
    return config


def driver_argv(tmp: Path, config: Path) -> list[str]:
    return [sys.executable, str(tmp / "driver.py"), str(config), str(tmp / "fake_child.py"),
            str(tmp / "children.log")]


def driver_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp / "n.sock"), **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def start(tmp: Path) -> Iterator[Callable[..., Instance]]:
    """Start instances; whatever happens, every process they made is gone after the test."""
    started: list[Instance] = []

    def _start(env: dict[str, str] | None = None, **coproc: Any) -> Instance:
        config = write_config(tmp, **coproc)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(tmp / "n.sock"))
        with open(tmp / "supervisor.err", "wb") as err:
            proc = subprocess.Popen(driver_argv(tmp, config), env=driver_env(tmp, **(env or {})),
                                    stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        instance = Instance(tmp, config, proc, notify)
        started.append(instance)
        return instance

    try:
        yield _start
    finally:
        for instance in started:
            _kill_everything(instance)


def _kill_everything(instance: Instance) -> None:
    fake = str(instance.tmp / "fake_child.py")
    if instance.proc.poll() is None:
        instance.proc.kill()
    instance.proc.wait(10)
    for pid in instance.child_pids():
        try:
            proc = psutil.Process(pid)
            if fake in proc.cmdline():  # never a recycled pid of someone else
                proc.kill()
                proc.wait(5)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            pass
    instance.notify.close()


def gone(pid: int) -> bool:
    try:
        status: str = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return True
    return bool(status == psutil.STATUS_ZOMBIE)


# -- tests ---------------------------------------------------------------------------


def test_children_get_the_contract_environment(start: Callable[..., Instance]) -> None:
    """1. Start; wait for READY=1.  2. Check each child's COPROC_* environment."""
    inst = start()
    inst.wait_notice("READY", 10)
    gateway = wait_for(lambda: inst.child_started("gateway"), 5, "gateway", inst.diagnostics)
    worker = wait_for(lambda: inst.child_started("worker", 1), 5, "worker", inst.diagnostics)
    genv, wenv = gateway["env"], worker["env"]
    assert genv["COPROC_SUPERVISOR_PID"] == wenv["COPROC_SUPERVISOR_PID"] == str(inst.proc.pid)
    assert {"COPROC_CONTROL_FD", "COPROC_LISTEN_FD", "COPROC_SECRET_FD"} <= genv.keys()
    assert wenv["COPROC_GENERATION"] == "1"
    # Secrets come through the inherited fd, never the environment.
    key = bytes.fromhex(gateway["secret"])
    token = json.loads(worker["secret"])["token"]
    assert token == worker_token(key, 1)
    for env in (genv, wenv):
        assert not any(gateway["secret"] in v or token in v for v in env.values())
    # Systemd's socket and the listening socket stay where they belong.
    assert "COPROC_LISTEN_FD" not in wenv
    assert "NOTIFY_SOCKET" not in genv and "NOTIFY_SOCKET" not in wenv
    port = int((inst.run_dir / "http.port").read_text())
    socket.create_connection(("127.0.0.1", port), timeout=2).close()  # backlog accepts


def test_sigkilled_worker_is_replaced_by_a_new_generation(
        start: Callable[..., Instance]) -> None:
    """1. Start; wait for READY=1.  2. SIGKILL worker generation 1.
    3. Within 2 s: the gateway hears worker_exited(1), generation 2 starts and is running."""
    inst = start()
    inst.wait_notice("READY", 10)
    first = wait_for(lambda: inst.child_started("worker", 1), 5, "worker 1", inst.diagnostics)
    killed_at = time.monotonic()
    os.kill(first["pid"], signal.SIGKILL)
    running = wait_for(lambda: inst.gateway_got(
        lambda m: m["type"] == "worker_state" and m["state"] == "running"
        and m["generation"] == 2), 2.0, "generation 2 running", inst.diagnostics)
    assert time.monotonic() - killed_at < 2.0
    assert running["generation"] == 2
    exited = inst.gateway_got(lambda m: m["type"] == "worker_exited")
    assert exited == {"type": "worker_exited", "generation": 1,
                      "reason": "killed (SIGKILL, possibly OOM)"}
    second = inst.child_started("worker", 2)
    assert second is not None and second["env"]["COPROC_GENERATION"] == "2"
    assert inst.records(role="gateway", event="started").__len__() == 1  # gateway untouched


def test_hung_worker_gets_sigabrt_then_its_group_is_killed(
        start: Callable[..., Instance]) -> None:
    """1. Worker 1 says ready, then sends no heartbeat and survives SIGABRT.
    2. After heartbeat_timeout_ms: SIGABRT, 1 s later SIGKILL.  3. Generation 2 starts."""
    inst = start(env={"FAKE_HANG_GENERATION": "1"})
    wait_for(lambda: inst.child_started("worker", 2), 6, "generation 2", inst.diagnostics)
    assert inst.records(role="worker", generation=1, event="sigabrt")
    exited = inst.gateway_got(lambda m: m["type"] == "worker_exited")
    assert exited is not None and exited["generation"] == 1
    assert exited["reason"].startswith("killed (SIGKILL, by the supervisor: no heartbeat")


def test_second_instance_on_the_same_run_dir_is_refused(start: Callable[..., Instance],
                                                        tmp: Path) -> None:
    """1. Start A.  2. Run B on the same config: exit 75 naming A's pid and the run dir."""
    inst = start()
    inst.wait_notice("READY", 10)
    second = subprocess.run(driver_argv(tmp, inst.config), env=driver_env(tmp),
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    message = second.stderr.decode()
    assert second.returncode == 75, message
    assert f"pid {inst.proc.pid}" in message and str(inst.run_dir) in message
    assert inst.proc.poll() is None  # A is unaffected


def test_sigterm_stops_children_in_order_and_cleans_up(start: Callable[..., Instance]) -> None:
    """1. Start; READY=1.  2. SIGTERM the supervisor.  3. It exits 0 after the gateway,
    then the worker, stopped on SIGTERM; STOPPING=1 was sent; no process or file is left."""
    inst = start()
    inst.wait_notice("READY", 10)
    wait_for(lambda: inst.child_started("worker", 1), 5, "worker", inst.diagnostics)
    pids = inst.child_pids()
    assert (inst.run_dir / "coproc.lock").exists() and (inst.run_dir / "coproc.pid").exists()
    inst.proc.send_signal(signal.SIGTERM)
    assert inst.wait_exit(15) == 0, inst.diagnostics()
    inst.wait_notice("STOPPING", 1)
    first = next(n for n in inst.notices if "READY" in n or "STOPPING" in n)
    assert first.get("READY") == "1"  # READY=1 came before STOPPING=1
    stopped = inst.records(event="stopping")
    assert [r["role"] for r in stopped] == ["gateway", "worker"], inst.diagnostics()
    wait_for(lambda: all(gone(pid) for pid in pids), 5, "children gone", inst.diagnostics)
    assert not inst.run_dir.exists(), list(inst.run_dir.iterdir())


def test_second_sigterm_during_the_stop_kills_at_once(start: Callable[..., Instance]) -> None:
    """1. The gateway ignores SIGTERM; stop grace is 30 s.  2. SIGTERM: the stop waits.
    3. A second SIGTERM kills every group now: exit 0 within seconds, nothing left."""
    inst = start(env={"FAKE_IGNORE_TERM": "gateway"},
                 supervisor={"stop_grace_ms": 30000})
    inst.wait_notice("READY", 10)
    pids = inst.child_pids()
    inst.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: inst.records(event="term_ignored"), 5, "gateway got SIGTERM",
             inst.diagnostics)
    assert inst.proc.poll() is None
    inst.proc.send_signal(signal.SIGTERM)
    assert inst.wait_exit(5) == 0, inst.diagnostics()
    wait_for(lambda: all(gone(pid) for pid in pids), 5, "children gone", inst.diagnostics)
    assert "again while stopping" in inst.stderr()
    assert not inst.run_dir.exists()
