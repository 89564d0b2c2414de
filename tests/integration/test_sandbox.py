"""The worker sandbox against real plugins that try to misbehave (docs/SECURITY.md).

Each probe runs inside a real hook of a real `coproc serve`; the hook catches
what the kernel does to it and answers `blocked: <exception>` or `allowed: ...`.
These need root (CI runs as root): uid drop, netns, cgroups, Landlock, seccomp.
"""

from __future__ import annotations

import json
import os
import socket
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.integration.harness import api_def, hook, poll

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the strict profile is tested as root")

TYK_IMPORTS = "from tyk.decorators import *\nfrom gateway import TykGateway as tyk\n"

PROBE = TYK_IMPORTS + textwrap.dedent('''
    import json, os, signal, socket, subprocess, tempfile, time

    def tcp(p):
        socket.create_connection(("127.0.0.1", int(p["port"])), timeout=2).close()

    def read(p):
        with open(p["path"]) as f:
            return f.read(20)

    def write(p):
        with open(p["path"], "w") as f:
            f.write("x")

    def scratch(p):
        fd, path = tempfile.mkstemp()
        os.write(fd, b"ok")
        os.close(fd)
        return path

    def run_id(p):
        return subprocess.run(["id"], capture_output=True, timeout=5).stdout

    def fork(p):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        return pid

    def kill(p):
        os.kill(int(p["pid"]), signal.SIGKILL)

    def hog(p):
        chunks = []
        for _ in range(int(p["mb"]) // 16):
            chunks.append(b"x" * (16 << 20))  # touched, so charged to the cgroup
        return len(chunks)

    def bomb(p):
        started = 0
        for _ in range(int(p["max"])):
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            started += 1
        return started

    def daemon(p):
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                with open(p["path"] + ".tmp", "w") as f:
                    f.write(str(os.getpid()))
                os.rename(p["path"] + ".tmp", p["path"])
                time.sleep(600)
            os._exit(0)
        return "spawned"

    def whoami(p):
        with open("/proc/self/status") as f:
            return {"uid": os.getuid(), "nnp": f.read().count("NoNewPrivs:\\t1")}

    ACTIONS = {f.__name__: f for f in (tcp, read, write, scratch, run_id, fork, kill, hog,
                                       bomb, daemon, whoami)}

    @Hook
    def Probe(request, session, spec):
        p = request.object.params
        try:
            outcome = "allowed: %s" % (ACTIONS[p["try"]](p),)
        except BlockingIOError as exc:  # fork bomb: the pids limit
            outcome = "blocked: BlockingIOError: %s" % (exc,)
        except Exception as exc:
            outcome = "blocked: %s: %s" % (type(exc).__name__, exc)
        request.object.return_overrides.response_code = 200
        request.object.return_overrides.response_body = outcome
        return request, session
''')

HAPPY = TYK_IMPORTS + textwrap.dedent('''
    import json

    @Hook
    def HappyPre(request, session, spec):
        request.add_header("X-Sandboxed", "yes")
        tyk.store_data("sandbox-key", "stored-value", 60)
        request.add_header("X-Stored", tyk.get_data("sandbox-key").decode())
        return request, session

    @Hook
    def HappyResponse(request, response, session, metadata, spec):
        body = json.loads(response.raw_body)
        body["rewritten"] = True
        response.raw_body = json.dumps(body).encode()
        response.headers["X-Response-Hook"] = "ran"
        return response
''')


def probe_apis(upstream: str) -> dict[str, Any]:
    return {
        "probe": api_def("probe", "/probe/", upstream, pre=[hook("Probe", "probe/middleware.py")]),
        "happy": api_def("happy", "/happy/", upstream,
                         pre=[hook("HappyPre", "happy/middleware.py")],
                         response=[hook("HappyResponse", "happy/middleware.py")]),
    }


PLUGINS = {"probe/middleware.py": PROBE, "happy/middleware.py": HAPPY}


def settings(profile: str, **knobs: Any) -> dict[str, Any]:
    return {"coproc": {"sandbox": {"profile": profile, **knobs},
                       "supervisor": {"restart_backoff_initial_ms": 50}}}


def outcome(inst: Any, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    resp = inst.expect(inst.get(f"/probe/x?{query}"), 200)
    return resp.text()


def check_happy(inst: Any) -> None:
    resp = inst.expect(inst.get("/happy/get?x=1"), 200)
    body = resp.json()
    assert body["rewritten"] is True
    assert body["headers"]["X-Sandboxed"] == "yes"
    assert body["headers"]["X-Stored"] == "stored-value"
    assert resp.header("X-Response-Hook") == "ran"


@pytest.fixture(scope="module")
def listener() -> Iterator[int]:
    """A TCP listener on 127.0.0.1 that accepts (so only the sandbox can refuse)."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    thread.join(2)
    srv.close()


@pytest.fixture(scope="module")
def strict(module_coproc_factory: Any, echo_upstream: Any) -> Any:
    return module_coproc_factory(probe_apis(echo_upstream.url), PLUGINS, settings("strict"))


def test_strict_starts_with_every_layer_it_can_and_says_so(strict: Any) -> None:
    log = strict.logs(20000)
    assert "sandbox profile strict (" in log
    active = log.split("sandbox profile strict (", 1)[1].split("active [", 1)[1].split("]", 1)[0]
    for layer in ("cgroup", "netns", "rlimits", "pdeathsig", "no_new_privs", "landlock",
                  "seccomp"):
        assert layer in active, log
    # The same report travels in HELLO and shows in the gateway's /coproc/status.
    reported = strict.worker()["sandbox"]
    assert reported["seccomp"] == "active: seccomp (44 rules)"
    assert reported["landlock"].startswith("active: landlock ABI")


def test_strict_plugin_cannot_open_tcp_and_the_gateway_keeps_serving(
        strict: Any, listener: int) -> None:
    # Outside the sandbox the listener accepts: the refusal is the sandbox's.
    socket.create_connection(("127.0.0.1", listener), timeout=2).close()
    assert outcome(strict, **{"try": "tcp", "port": str(listener)}).startswith("blocked:")
    check_happy(strict)


def test_strict_plugin_cannot_read_secrets_or_files_outside_its_paths(strict: Any) -> None:
    secret = strict.base / "secret.txt"
    secret.write_text("top secret")
    assert outcome(strict, **{"try": "read", "path": "/etc/shadow"}).startswith("blocked:")
    assert outcome(strict, **{"try": "read", "path": str(secret)}).startswith("blocked:")
    # Its own plugin file is readable: the probe is not blocking everything.
    mine = strict.base / "middleware" / "probe" / "middleware.py"
    assert outcome(strict, **{"try": "read", "path": str(mine)}).startswith("allowed:")


def test_strict_plugin_writes_only_to_its_scratch_dir(strict: Any) -> None:
    target = strict.base / "written.txt"
    assert outcome(strict, **{"try": "write", "path": str(target)}).startswith("blocked:")
    assert not target.exists()
    made = outcome(strict, **{"try": "scratch"})
    assert made.startswith("allowed: ") and "coproc-scratch-" in made


def test_strict_plugin_cannot_run_programs_or_fork(strict: Any) -> None:
    assert outcome(strict, **{"try": "run_id"}).startswith("blocked: PermissionError")
    assert outcome(strict, **{"try": "fork"}).startswith("blocked: PermissionError")


def test_strict_plugin_cannot_kill_the_supervisor(strict: Any) -> None:
    result = outcome(strict, **{"try": "kill", "pid": str(strict.pid)})
    assert result.startswith("blocked: PermissionError"), result
    assert strict.proc.poll() is None
    check_happy(strict)


@pytest.mark.parametrize("profile", ["off", "standard"])
def test_happy_path_plugins_pass_under(profile: str, coproc_factory: Any,
                                       echo_upstream: Any) -> None:
    inst = coproc_factory(probe_apis(echo_upstream.url), PLUGINS, settings(profile))
    check_happy(inst)
    check_large_body(inst)
    who = json.loads(outcome(inst, **{"try": "whoami"})[len("allowed: "):].replace("'", '"'))
    assert who["nnp"] == (0 if profile == "off" else 1)


def test_happy_path_plugins_pass_under_strict(strict: Any) -> None:
    check_happy(strict)


def check_large_body(inst: Any) -> None:
    """A body above the shared-memory threshold (16 KiB) reaches the hooks and comes back."""
    body = b"0123456789abcdef" * 8192  # 128 KiB
    resp = inst.expect(inst.request("POST", "/happy/post", body=body), 200)
    echoed = resp.json()
    assert echoed["body_len"] == len(body) and echoed["rewritten"] is True


def test_large_bodies_pass_a_strict_worker(strict: Any) -> None:
    check_large_body(strict)


def test_memory_hog_kills_the_worker_which_is_replaced(coproc_factory: Any,
                                                       echo_upstream: Any) -> None:
    """1. strict with a 128 MB limit; 2. a hook allocates 1 GB; 3. the call fails;
    4. the exit is reported as oom (or MemoryError); 5. the next request is 200."""
    inst = coproc_factory(probe_apis(echo_upstream.url), PLUGINS,
                          settings("strict", memory_mb=128))
    resp = inst.get("/probe/x?try=hog&mb=1024")
    assert resp.status != 200 or "MemoryError" in resp.text(), resp.text()
    if resp.status != 200:
        poll("the OOM exit in the log", lambda: ": oom (" in inst.logs(20000), 15)
    poll("a replaced worker serving", lambda: inst.get("/happy/get").status == 200, 30)
    check_happy(inst)


def test_fork_bomb_under_standard_is_stopped_by_the_pids_limit(coproc_factory: Any,
                                                               echo_upstream: Any) -> None:
    inst = coproc_factory(probe_apis(echo_upstream.url), PLUGINS,
                          {**settings("standard", processes=40),
                           "coproc": {**settings("standard", processes=40)["coproc"],
                                      "worker": {"threads": 4}}})
    result = outcome(inst, **{"try": "bomb", "max": "500"})
    assert result.startswith("blocked: BlockingIOError"), result
    check_happy(inst)


def test_double_forked_daemon_under_off_is_gone_after_stop(coproc_factory: Any,
                                                           echo_upstream: Any) -> None:
    inst = coproc_factory(probe_apis(echo_upstream.url), PLUGINS, settings("off"))
    pid_file = inst.base / "daemon.pid"
    assert outcome(inst, **{"try": "daemon", "path": str(pid_file)}) == "allowed: spawned"
    pid = int(poll("the daemon's pid file", lambda: pid_file.exists() and pid_file.read_text(),
                   10))
    daemon = psutil.Process(pid)
    assert daemon.ppid() != inst.pid  # escaped the worker: re-parented, own session
    assert inst.stop() == 0

    def gone() -> bool:
        try:
            return daemon.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    poll("the double-forked daemon to be gone", gone, 10)


def _cgroup_dirs(pid: int) -> list[Path]:
    return [p for p in Path("/sys/fs/cgroup").glob(f"*/coproc-{pid}-w*")]


def test_worker_cgroups_are_removed_on_exit(coproc_factory: Any, echo_upstream: Any) -> None:
    inst = coproc_factory(probe_apis(echo_upstream.url), PLUGINS, settings("standard"))
    if not _cgroup_dirs(inst.pid):
        pytest.fail("no per-generation cgroup was made although we run as root\n" + inst.logs())
    inst.stop()
    assert _cgroup_dirs(inst.pid) == []
