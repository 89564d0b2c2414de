"""The supervisor as a system service: sd_notify, gateway kill -9, hangs, leaks, /tyk/reload.

Real processes, real signals, a real datagram socket standing in for systemd.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from ipc.contract import NEVER_INHERITED, SYSTEMD_ENV
from ipc.notify import parse_notify
from tests.conftest import InstanceFactory
from tests.integration.harness import (
    EchoUpstream,
    api_def,
    hook,
    http_request,
    poll,
)
from tests.integration.test_supervisor_reload import STAMP, stamp_api, status


def test_notify_socket_gets_ready_watchdog_and_stopping(
        coproc_factory: InstanceFactory, echo_upstream: EchoUpstream,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """1. Bind a datagram socket; start coproc with NOTIFY_SOCKET and WATCHDOG_USEC.
    2. READY=1 arrives once the worker is ready (after it, /ready is 200).
    3. WATCHDOG=1 arrives periodically; SIGHUP gives RELOADING=1 then READY=1.
    4. SIGTERM: STOPPING=1.
    """
    path = Path(tempfile.mkdtemp(prefix="cp-")) / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    received: list[dict[str, str]] = []

    def collect() -> list[dict[str, str]]:
        for _ in range(100):  # bounded: drain what is queued
            try:
                received.append(parse_notify(sock.recv(4096)))
            except TimeoutError:
                break
        return received

    try:
        inst = coproc_factory({"v": stamp_api(echo_upstream)}, {"v/mw.py": STAMP.format(version=1)})
        poll("READY=1", lambda: any(m.get("READY") == "1" for m in collect()), 20)
        assert inst.serving()
        ready_at = next(i for i, m in enumerate(received) if m.get("READY") == "1")
        poll("3 watchdog pings",
             lambda: sum(m.get("WATCHDOG") == "1" for m in collect()[ready_at:]) >= 3, 10)
        os.kill(inst.pid, signal.SIGHUP)
        poll("RELOADING=1", lambda: any(m.get("RELOADING") == "1" for m in collect()), 20)
        reloading = next(i for i, m in enumerate(received) if m.get("RELOADING") == "1")
        poll("READY=1 after the reload",
             lambda: any(m.get("READY") == "1" for m in collect()[reloading:]), 20)
        os.kill(inst.pid, signal.SIGTERM)
        poll("STOPPING=1", lambda: any(m.get("STOPPING") == "1" for m in collect()), 20)
        inst.proc.wait(20)
        assert inst.proc.returncode == 0
    finally:
        sock.close()
        path.unlink(missing_ok=True)
        path.parent.rmdir()


def test_gateway_sigkill_connections_wait_in_the_backlog(
        coproc_factory: InstanceFactory, echo_upstream: EchoUpstream) -> None:
    """1. SIGKILL the gateway process.
    2. At once, send requests: they wait in the supervisor's listen backlog.
    3. A new gateway serves (the poll's 10 s bound; the time is printed, about 1.5 s on
       a quiet machine) and every request gets 200: none was refused.
    """
    inst = coproc_factory({"v": stamp_api(echo_upstream)}, {"v/mw.py": STAMP.format(version=1)})
    gateway_pid = status(inst)["gateway"]["pid"]
    results: list[int | str] = []

    def one() -> None:
        try:
            results.append(http_request(inst.port, "GET", "/v/x", timeout=20).status)
        except OSError as exc:
            results.append(repr(exc))

    killed = time.monotonic()
    os.kill(gateway_pid, signal.SIGKILL)
    threads = [threading.Thread(target=one) for _ in range(10)]
    for t in threads:
        t.start()
    poll("a new gateway", lambda: status(inst)["gateway"]["pid"] not in (None, gateway_pid)
         and inst.serving(), 10, interval=0.05)
    took = time.monotonic() - killed
    for t in threads:
        t.join(30)
    print(f"\nnew gateway serving {took:.2f} s after SIGKILL")
    assert results == [200] * 10, f"{results}\n{inst.logs()}"


HANG = '''
import ctypes
from tyk.decorators import *

@Hook
def Pre(request, session, spec):
    if request.get_header("X-Hang"):
        ctypes.PyDLL(None).sleep(30)   # C call that keeps the GIL: the event loop stops
    request.add_header("X-Pid", str(__import__("os").getpid()))
    return request, session
'''


def test_hook_stuck_in_c_holding_the_gil_is_killed(coproc_factory: InstanceFactory,
                                                   echo_upstream: EchoUpstream) -> None:
    """1. A hook calls sleep(30) through ctypes.PyDLL: the GIL is held, heartbeats stop.
    2. Within the heartbeat timeout (1 s) + 1 s the worker is SIGABRTed (traceback
       of every thread in the log) and its group SIGKILLed; the hung call fails.
    3. The next requests are served by a new generation.
    """
    api = api_def("h", "/h/", echo_upstream.url, pre=[hook("Pre", "h/mw.py", timeout_ms=30000)])
    inst = coproc_factory({"h": api}, {"h/mw.py": HANG}, {"coproc": {"worker": {
        "heartbeat_interval_ms": 100, "heartbeat_timeout_ms": 1000}}})
    before = status(inst)["worker"]
    started = time.monotonic()
    hung = http_request(inst.port, "GET", "/h/x", {"X-Hang": "1"}, timeout=30)
    took = time.monotonic() - started
    assert hung.status == 500, hung.body
    print(f"\nhung call failed after {took:.2f} s (heartbeat timeout 1 s + SIGABRT grace 1 s)")
    assert took < 5.0, f"the hung call took {took:.1f} s"
    poll("a new generation", lambda: status(inst)["worker"]["generation"]
         not in (None, before["generation"]) and inst.serving(), 20)
    resp = inst.expect(inst.get("/h/x"), 200)
    assert resp.json()["headers"]["X-Pid"] != str(before["pid"])
    logs = inst.logs(20000)
    assert "Fatal Python error: Aborted" in logs or "Current thread" in logs, logs
    assert "no heartbeat" in logs
    assert not psutil.pid_exists(before["pid"]) or \
        psutil.Process(before["pid"]).status() == psutil.STATUS_ZOMBIE


LEAK = '''
import time
from tyk.decorators import *
HOARD = []
VERSION = "1"

@Hook
def Pre(request, session, spec):
    # 1 MiB per call, never freed, at most ~100 MiB/s: the recycle (checked every
    # heartbeat, then a hot restart) must win against the cgroup's 1 GiB limit even
    # when a loaded machine boots the next generation slowly.
    HOARD.append(bytearray(1024 * 1024))
    time.sleep(0.01)
    request.add_header("X-Pid", str(__import__("os").getpid()))
    return request, session
'''


def test_leaking_plugin_is_recycled_without_a_failed_request(
        coproc_factory: InstanceFactory, echo_upstream: EchoUpstream) -> None:
    """1. max_rss_mb 120; a hook that keeps 1 MiB per call.
    2. Send requests one after the other until the worker pid changes.
    3. No request failed; the log names the RSS limit as the reason.
    """
    api = api_def("l", "/l/", echo_upstream.url, pre=[hook("Pre", "l/mw.py")])
    inst = coproc_factory({"l": api}, {"l/mw.py": LEAK},
                          {"coproc": {"worker": {"max_rss_mb": 120}}})
    pids, failures = set(), []
    for _ in range(1500):  # bounded; ~100 calls reach the limit
        resp = inst.get("/l/x")
        if resp.status != 200:
            failures.append(resp.status)
            continue
        pids.add(resp.json()["headers"]["X-Pid"])
        if len(pids) > 1:
            break
    assert not failures, f"{failures}\n{inst.logs()}"
    assert len(pids) > 1, f"never recycled\n{inst.logs()}"
    assert "recycling: RSS" in inst.logs(20000)


def test_post_tyk_reload_needs_the_secret_and_hot_restarts(
        coproc_factory: InstanceFactory, echo_upstream: EchoUpstream) -> None:
    """1. POST /tyk/reload without the secret, or a wrong one: 403.
    2. Tyk's GET /tyk/reload/group with it: 200 and a new generation serves.
    """
    inst = coproc_factory({"v": stamp_api(echo_upstream)}, {"v/mw.py": STAMP.format(version=1)},
                          {"secret": "s3cret"})
    generation = status(inst)["worker"]["generation"]
    assert inst.request("POST", "/tyk/reload").status == 403
    assert inst.request("POST", "/tyk/reload", {"X-Tyk-Authorization": "nope"}).status == 403
    (inst.base / "middleware" / "v" / "mw.py").write_text(STAMP.format(version=2))
    ok = inst.request("GET", "/tyk/reload/group", {"X-Tyk-Authorization": "s3cret"})
    assert ok.status == 200 and ok.json()["status"] == "ok"
    poll("a new generation", lambda: status(inst)["worker"]["generation"] > generation, 20)
    assert inst.get("/v/x").header("X-Response-Version") == "2"



def test_reload_without_coprocess_reads_the_api_definitions_again(
        coproc_factory: InstanceFactory, echo_upstream: EchoUpstream) -> None:
    """No coprocess (nothing to hot-restart): `coproc reload` still re-reads app_path,
    as Tyk's reload does; a new API serves and a removed one is gone; a reload that
    would take a serving API out of service is refused, as with a worker."""
    inst = coproc_factory({"old": api_def("old", "/old/", echo_upstream.url)}, {},
                          {"coprocess_options": {"enable_coprocess": False}})
    assert inst.get("/old/x").status == 200
    assert inst.get("/new/x").status == 404
    apps = inst.base / "apps"
    (apps / "new.json").write_text(json.dumps(api_def("new", "/new/", echo_upstream.url)))
    (apps / "old.json").unlink()
    done = inst.ctl("reload")
    assert done.returncode == 0, (done.stdout, done.stderr, inst.logs())
    assert "API definitions re-read" in done.stdout
    poll("the new definitions served", lambda: inst.get("/new/x").status == 200, 10)
    assert inst.get("/old/x").status == 404
    (apps / "new.json").write_text("{not json")  # would take a serving API away: refused
    refused = inst.ctl("reload")
    assert refused.returncode == 1 and "new.json" in refused.stderr, refused.stderr
    assert inst.get("/new/x").status == 200


def _environ(proc: psutil.Process) -> dict[str, str]:
    raw = Path(f"/proc/{proc.pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def test_contract_variables_in_the_supervisors_environment_reach_no_child(
        coproc_factory: InstanceFactory, echo_upstream: EchoUpstream,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """1. Start `coproc serve` with every never-inherited variable of ipc/contract.py
       set in its environment (COPROC_CGROUPS pointing at a directory no cgroup is).
    2. Read /proc/<pid>/environ of the gateway and the worker: none of those values
       reached them; the only contract variables they have are those the supervisor
       set itself (different values), and systemd's are absent.
    """
    leaked = {name: f"leaked-{name}" for name in NEVER_INHERITED}
    leaked["COPROC_CGROUPS"] = str(tmp_path)  # a worker joining it would fail loudly
    leaked["NOTIFY_SOCKET"] = str(tmp_path / "no-such-notify.sock")
    # A config override read by the gateway (from a platform's secret store) must
    # never reach the worker, where plugin code could read its environment.
    override = {"TYK_GW_SECRET": "env-admin-secret"}
    for name, value in {**leaked, **override}.items():
        monkeypatch.setenv(name, value)
    inst = coproc_factory({"v": stamp_api(echo_upstream)}, {"v/mw.py": STAMP.format(version=1)})
    roles: dict[str, dict[str, str]] = {}
    for proc in inst.children():
        cmdline = " ".join(proc.cmdline())
        role = "gateway" if "-m gateway" in cmdline else "worker" if "-m worker" in cmdline else ""
        if role:
            roles[role] = _environ(proc)
    assert roles.keys() == {"gateway", "worker"}, roles.keys()
    for role, env in roles.items():
        passed = {name: env[name] for name in leaked if env.get(name) == leaked[name]}
        assert not passed, f"{role} inherited {passed}"
        assert not SYSTEMD_ENV & env.keys(), f"{role}: {SYSTEMD_ENV & env.keys()}"
        assert env["COPROC_SUPERVISOR_PID"] == str(inst.pid)
    for env in roles.values():  # secrets travel in an fd, never the environment
        assert "COPROC_INSTANCE_KEY" not in env and "COPROC_WORKER_TOKEN" not in env
    assert roles["gateway"].get("TYK_GW_SECRET") == "env-admin-secret"
    assert "TYK_GW_SECRET" not in roles["worker"]
    assert inst.hello().status == 200
