"""A hostile plugin against its own instance (issue #11 items 1-3, docs/SECURITY.md's table).

Each probe runs inside a real hook of a real `coproc serve` and answers
`blocked: <exception>` or `allowed: <what it got>`.  On this machine the worker
keeps the supervisor's uid even as root when the interpreter lives under a
private home (the uid drop is then skipped): exactly the `standard` case
without a uid drop, which the Landlock scope layer must hold on its own.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest

from ipc.grants import instance_arenas
from ipc.shm_names import shm_prefix
from tests.integration.harness import (
    Instance,
    api_def,
    hook,
    launch,
    new_base_dir,
    poll,
    remove_base,
    write_instance,
)
from worker.sandbox.landlock import abi_version

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox's layers are tested "
                                "as root (CI runs as root)")

PROBE = textwrap.dedent('''
    import ctypes, json, os, re, signal, socket

    import zmq
    from tyk.decorators import *
    from ipc.protocol import MsgType, decode, encode

    HEX64 = re.compile(rb"[0-9a-f]{64}")

    def environ(p):
        """What the plugin can read of its own, its parent's and the gateway's environment."""
        found = {}
        for who, pid in (("self", "self"), ("parent", str(os.getppid())),
                         ("gateway", p["gateway"])):
            try:
                with open("/proc/%s/environ" % pid, "rb") as f:
                    env = f.read()
            except OSError as exc:
                found[who] = "blocked: %s" % type(exc).__name__
                continue
            secret = HEX64.search(env) or b"COPROC_INSTANCE_KEY" in env \\
                or b"COPROC_WORKER_TOKEN" in env
            found[who] = "secret" if secret else "clean"
        return json.dumps(found, sort_keys=True)

    def find(p):
        """Where the plugin can find `needle`: per path, found / absent / blocked."""
        seen = {}
        for path in p["paths"].split(","):
            try:
                with open(path, "rb") as f:
                    seen[path] = "found" if p["needle"].encode() in f.read() else "absent"
            except OSError as exc:
                seen[path] = "blocked: %s" % type(exc).__name__
        return json.dumps(seen, sort_keys=True)

    def mem(p):
        """Read the first mapped page of another process: where a key would be found."""
        pid = int(p["pid"])
        with open("/proc/%d/maps" % pid) as f:
            start = int(f.readline().split("-")[0], 16)
        with open("/proc/%d/mem" % pid, "rb") as f:
            f.seek(start)
            return len(f.read(16))

    def kill(p):
        os.kill(int(p["pid"]), signal.SIGKILL)

    def ptrace(p):
        libc = ctypes.CDLL(None, use_errno=True)
        pid = int(p["pid"])
        if libc.ptrace(16, pid, None, None) != 0:  # PTRACE_ATTACH
            raise PermissionError(os.strerror(ctypes.get_errno()))
        os.waitpid(pid, 0x40000000)  # __WALL: the attach stop
        libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
        return "attached"

    def stop(p):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(p["path"])
        s.sendall(b'{"command": "stop"}\\n')
        answer = json.loads(s.makefile().readline())
        s.close()
        if not answer.get("ok"):
            raise PermissionError(answer.get("error"))
        return answer

    def hello(p):
        """Say HELLO on a DEALER of our own, with any token we could find."""
        token = "0" * 64
        for path in ("/proc/self/environ", "/proc/%d/environ" % os.getppid()):
            try:
                with open(path, "rb") as f:
                    m = HEX64.search(f.read())
            except OSError:
                continue
            if m:
                token = m.group().decode()
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 3000)
        sock.connect(p["endpoint"])
        generation = int(os.environ.get("COPROC_GENERATION", "1"))
        sock.send_multipart([encode(MsgType.HELLO, 0, {"generation": generation,
                                                      "pid": os.getpid(), "token": token})])
        try:
            answer = decode(sock.recv_multipart())
        finally:
            sock.close()
            ctx.term()
        if answer.type is not MsgType.WELCOME:
            raise PermissionError("%s %s" % (answer.type.name, answer.payload))
        return "WELCOME"

    ACTIONS = {f.__name__: f for f in (environ, find, mem, kill, ptrace, stop, hello)}

    @Hook
    def Probe(request, session, spec):
        p = request.object.params
        try:
            outcome = "allowed: %s" % (ACTIONS[p["try"]](p),)
        except Exception as exc:
            outcome = "blocked: %s: %s" % (type(exc).__name__, exc)
        request.object.return_overrides.response_code = 200
        request.object.return_overrides.response_body = outcome
        return request, session
''')

PLUGINS = {"probe/middleware.py": PROBE}


def apis(upstream: str) -> dict[str, Any]:
    return {"probe": api_def("probe", "/probe/", upstream,
                             pre=[hook("Probe", "probe/middleware.py")]),
            "plain": api_def("plain", "/plain/", upstream)}


def settings(profile: str) -> dict[str, Any]:
    return {"coproc": {"sandbox": {"profile": profile},
                       "supervisor": {"restart_backoff_initial_ms": 50}}}


def probe(inst: Instance, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return inst.expect(inst.get(f"/probe/x?{query}"), 200).text()


def gateway_pid(inst: Instance) -> int:
    for proc in inst.running("-m gateway"):
        return proc.pid
    raise AssertionError(f"no gateway among {inst.children()}\n{inst.logs()}")


def worker_pid(inst: Instance) -> int:
    for proc in inst.running("-m worker"):
        return proc.pid
    raise AssertionError(f"no worker among {inst.children()}\n{inst.logs()}")


def still_serving(inst: Instance, gateway: int, worker: int) -> None:
    """The supervisor, the gateway and the worker are the same processes and answer."""
    assert inst.proc.poll() is None, inst.logs()
    inst.expect(inst.get("/plain/get"), 200)
    assert "allowed: " in probe(inst, **{"try": "environ", "gateway": str(gateway)})
    assert gateway_pid(inst) == gateway and worker_pid(inst) == worker
    assert psutil.pid_exists(gateway)


@pytest.fixture(scope="module")
def standard(module_coproc_factory: Any, echo_upstream: Any) -> Instance:
    inst: Instance = module_coproc_factory(apis(echo_upstream.url), PLUGINS,
                                           settings("standard"))
    return inst


@pytest.fixture(scope="module")
def off(module_coproc_factory: Any, echo_upstream: Any) -> Instance:
    inst: Instance = module_coproc_factory(apis(echo_upstream.url), PLUGINS, settings("off"))
    return inst


def test_standard_worker_here_keeps_the_supervisors_uid_and_is_scoped(standard: Instance) -> None:
    """The case of the issue: no uid drop (interpreter under /root), Landlock scope active."""
    worker = psutil.Process(worker_pid(standard))
    assert worker.uids().real == os.geteuid(), "this machine dropped the uid: the no-drop " \
        "rows need an interpreter the worker's uid cannot read"
    if abi_version() >= 6:
        assert "scope" in standard.logs(40000).split("active [", 1)[1].split("]", 1)[0]


@pytest.mark.parametrize("profile", ["off", "standard"])
def test_no_token_or_key_in_any_environment_a_plugin_can_read(
        profile: str, request: pytest.FixtureRequest) -> None:
    inst: Instance = request.getfixturevalue(profile)
    found = json.loads(probe(inst, **{"try": "environ", "gateway": str(gateway_pid(inst))})
                       [len("allowed: "):])
    # Readable (Landlock does not scope PTRACE_MODE_READ /proc files), but clean.
    assert found == {"self": "clean", "parent": "clean", "gateway": "clean"}, found


@pytest.mark.parametrize("profile", ["off", "standard"])
def test_a_plugins_own_hello_is_not_admitted(profile: str,
                                             request: pytest.FixtureRequest) -> None:
    inst: Instance = request.getfixturevalue(profile)
    gateway, worker = gateway_pid(inst), worker_pid(inst)
    endpoint = f"ipc://{inst.run_dir}/hooks.sock"
    result = probe(inst, **{"try": "hello", "endpoint": endpoint})
    assert result.startswith("blocked: PermissionError: REJECT"), result
    still_serving(inst, gateway, worker)


@pytest.mark.parametrize("profile", ["off", "standard"])
def test_a_plugin_sending_stop_on_the_control_socket_is_refused(
        profile: str, request: pytest.FixtureRequest) -> None:
    inst: Instance = request.getfixturevalue(profile)
    gateway, worker = gateway_pid(inst), worker_pid(inst)
    result = probe(inst, **{"try": "stop", "path": str(inst.run_dir / "control.sock")})
    assert result.startswith("blocked: PermissionError: refused: "), result
    still_serving(inst, gateway, worker)


@pytest.mark.skipif(abi_version() < 6, reason="Landlock signal scoping needs Linux 6.12: "
                    "docs/SECURITY.md lists this row as allowed on older kernels")
@pytest.mark.parametrize("target", ["supervisor", "gateway"])
@pytest.mark.parametrize("action", ["kill", "ptrace", "mem"])
def test_standard_plugin_cannot_signal_or_ptrace_the_instance(
        standard: Instance, target: str, action: str) -> None:
    gateway, worker = gateway_pid(standard), worker_pid(standard)
    pid = standard.pid if target == "supervisor" else gateway
    result = probe(standard, **{"try": action, "pid": str(pid)})
    assert result.startswith("blocked: PermissionError"), result
    still_serving(standard, gateway, worker)


def test_a_worker_that_stays_root_hands_nothing_to_nobody(standard: Instance) -> None:
    """Item 4: the default `nobody` exists, but the worker kept uid 0: the hooks socket,
    the run dir and the body arena stay the supervisor's (nobody's daemons get nothing)."""
    assert psutil.Process(worker_pid(standard)).uids().real == os.geteuid()
    check_large_body(standard)  # the arena is in use
    sock = (standard.run_dir / "hooks.sock").stat()
    assert (sock.st_uid, sock.st_mode & 0o777) == (os.geteuid(), 0o600)
    assert standard.run_dir.stat().st_mode & 0o077 == 0
    arenas = instance_arenas(shm_prefix(standard.run_dir))
    assert arenas, "no body arena found"
    for arena in arenas:
        st = arena.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (os.geteuid(), 0o600), arena


def check_large_body(inst: Instance) -> None:
    body = b"0123456789abcdef" * 8192  # 128 KiB: above the shared-memory threshold
    resp = inst.expect(inst.request("POST", "/plain/post", body=body), 200)
    assert resp.json()["body_len"] == len(body)


def test_a_new_worker_never_opens_the_config_file(coproc_factory: Any,
                                                   echo_upstream: Any) -> None:
    """Item 5: 1. serve; 2. the config file goes away; 3. a hot restart (SIGHUP)
    starts a new worker generation, which loads and serves: the supervisor
    handed it its part of the config, it did not read the file."""
    inst: Instance = coproc_factory(apis(echo_upstream.url), PLUGINS, settings("standard"))
    first = worker_pid(inst)
    hidden = inst.config_path.with_name("hidden.json")
    inst.config_path.rename(hidden)
    try:
        os.kill(inst.pid, signal.SIGHUP)
        poll("generation 2 serving alone", lambda: workers(inst) not in ([], [first])
             and len(workers(inst)) == 1 and "generation 2" in inst.logs(200000), 30)
        assert "allowed: " in probe(inst, **{"try": "environ", "gateway": str(gateway_pid(inst))})
        assert workers(inst) != [first]
    finally:
        hidden.rename(inst.config_path)


def workers(inst: Instance) -> list[int]:
    return [p.pid for p in inst.running("-m worker")]


def _cgroups_of(supervisor: int) -> list[Path]:
    return list(Path("/sys/fs/cgroup").glob(f"**/coproc-{supervisor}-w*"))


def test_the_next_start_removes_only_its_own_killed_predecessors_leftovers(
        coproc_factory: Any, echo_upstream: Any) -> None:
    """Item 3: 1. instance A and, beside it, instance B serve (cgroups, arenas);
    2. A's supervisor is SIGKILLed: its children die, its worker cgroup and its
    arena stay; 3. A starts again on the same run dir: A's leftovers are gone,
    B's cgroups and arena are untouched and B still serves."""
    b: Instance = coproc_factory(apis(echo_upstream.url), PLUGINS, settings("standard"))
    base = new_base_dir()
    config = write_instance(base, apis(echo_upstream.url), PLUGINS, settings("standard"))
    a = launch(base, config)
    again: Instance | None = None
    try:
        children = a.children()
        old_cgroups = _cgroups_of(a.pid)
        assert old_cgroups, f"no worker cgroup although we run as root\n{a.logs()}"
        old_arenas = instance_arenas(shm_prefix(a.run_dir))
        assert old_arenas, "no body arena"
        b_cgroups, b_arenas = _cgroups_of(b.pid), instance_arenas(shm_prefix(b.run_dir))
        os.kill(a.pid, signal.SIGKILL)
        a.proc.wait(10)
        poll("A's children to die with it", lambda: not any(
            p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in children), 10)
        assert all(d.exists() for d in old_cgroups) and all(x.exists() for x in old_arenas)
        (a.run_dir / "http.port").unlink()  # stale: the harness would wait on the old port
        again = launch(base, config)
        assert not any(d.exists() for d in old_cgroups), again.logs()
        assert not any(x.exists() for x in old_arenas)
        assert all(d.exists() for d in b_cgroups) and all(x.exists() for x in b_arenas)
        again.expect(again.get("/plain/get"), 200)
        b.expect(b.get("/plain/get"), 200)
    finally:
        for inst in (a, again):
            if inst is not None:
                inst.cleanup()
        remove_base(base)


def test_strict_plugin_cannot_read_the_config_file(coproc_factory: Any,
                                                   echo_upstream: Any) -> None:
    """docs/SECURITY.md, secrets row, `strict`: the config file is outside every path
    Landlock lets the worker read, whatever its mode."""
    secret = "strict-admin-s3cret"
    inst: Instance = coproc_factory(apis(echo_upstream.url), PLUGINS,
                                    {**settings("strict"), "secret": secret})
    assert inst.config_path.stat().st_mode & 0o004  # world-readable: only Landlock stops it
    seen = json.loads(probe(inst, **{"try": "find", "needle": secret,
                                     "paths": str(inst.config_path)})[len("allowed: "):])
    assert seen[str(inst.config_path)].startswith("blocked: PermissionError"), seen
