"""worker.sandbox and config.sandbox: policy resolution, config errors, each layer alone.

Layers that change the process for good (Landlock, seccomp, no_new_privs) are
applied in a child interpreter, never in the test process.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

from config import ConfigError, load_gateway_config
from config.gateway import GatewayConfig
from ipc.contract import CGROUPS_ENV
from ipc.grants import instance_arenas
from ipc.shm import arena_name
from ipc.shm_names import SHM_DIR, shm_prefix
from supervisor.cgroups import WorkerCgroup, _own_cgroups
from supervisor.exits import ExitStatus
from worker.sandbox import identity, landlock, rlimits
from worker.sandbox.launcher import LayerState, SandboxError, SandboxReport, _Run
from worker.sandbox.policy import Layer, Policy, resolve_policy

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, sandbox: dict[str, Any] | None) -> GatewayConfig:
    (tmp_path / "apps").mkdir(exist_ok=True)
    (tmp_path / "middleware").mkdir(exist_ok=True)
    data: dict[str, Any] = {"coproc": {"run_dir": str(tmp_path / "run")}}
    if sandbox is not None:
        data["coproc"]["sandbox"] = sandbox
    path = tmp_path / "coproc.json"
    path.write_text(json.dumps(data))
    return load_gateway_config(path)


def _policy(tmp_path: Path, sandbox: dict[str, Any] | None,
            env: dict[str, str] | None = None) -> Policy:
    return resolve_policy(_config(tmp_path, sandbox), (), env or {})


# -- config ---------------------------------------------------------------------------


def test_default_profile_is_standard(tmp_path: Path) -> None:
    cfg = _config(tmp_path, None)
    assert cfg.sandbox.profile == "standard"
    assert cfg.sandbox.memory_mb is None


@pytest.mark.parametrize(("sandbox", "field", "words"), [
    ({"profile": "paranoid"}, "coproc.sandbox.profile", "off, standard, strict"),
    ({"memory_mb": -1}, "coproc.sandbox.memory_mb", ">= 0"),
    ({"network": "no"}, "coproc.sandbox.network", "expected"),
    ({"writable_paths": [3]}, "coproc.sandbox.writable_paths[0]", "path string"),
    ({"user": "no-such-user-coproc"}, "coproc.sandbox.user", "useradd"),
    ({"group": "no-such-group-coproc"}, "coproc.sandbox.group", "no such group"),
])
def test_bad_sandbox_config_names_the_field_and_the_fix(
        tmp_path: Path, sandbox: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        _config(tmp_path, sandbox)
    text = str(info.value)
    assert field in text and words in text and "coproc.json" in text


def test_writable_paths_resolve_against_the_config_dir(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {"writable_paths": ["scratch"]})
    assert cfg.sandbox.writable_paths == ((tmp_path / "scratch").resolve(),)


# -- policy ---------------------------------------------------------------------------


def test_off_asks_for_nothing(tmp_path: Path) -> None:
    p = _policy(tmp_path, {"profile": "off"})
    assert (p.nnp, p.landlock, p.seccomp, p.identity, p.network) == (
        False, False, False, False, True)
    assert p.memory_mb.value == 0 and p.processes.value == 0


def test_strict_adds_network_landlock_seccomp_as_best_effort(tmp_path: Path) -> None:
    p = _policy(tmp_path, {"profile": "strict"})
    assert (p.nnp, p.landlock, p.seccomp, p.network) == (True, True, True, False)
    assert not p.network_required and not p.memory_mb.required
    # The interpreter and the plugin dirs are readable; the config dir itself is not.
    assert Path(sys.prefix).resolve() in p.read_paths
    assert (tmp_path / "middleware").resolve() in p.read_paths
    assert tmp_path.resolve() not in p.read_paths


def test_explicit_knobs_override_the_profile_and_are_required(tmp_path: Path) -> None:
    p = _policy(tmp_path, {"profile": "off", "memory_mb": 64, "network": False,
                           "open_files": 0})
    assert p.memory_mb.value == 64 and p.memory_mb.required
    assert not p.network and p.network_required
    assert p.open_files.value == 0 and not p.open_files.required


def test_every_gateway_process_hooks_socket_is_granted(tmp_path: Path) -> None:
    """One worker serves N gateway processes: each one's hooks socket is handed to
    the worker's uid, and its run dir's parent is reachable (once)."""
    (tmp_path / "apps").mkdir()
    path = tmp_path / "coproc.json"
    path.write_text(json.dumps({"coproc": {"run_dir": str(tmp_path / "run"),
                                           "gateway": {"processes": 3}}}))
    policy = resolve_policy(load_gateway_config(path), (), {})
    run = tmp_path / "run"
    assert policy.hooks_sockets == (run / "hooks.sock", run / "hooks-1.sock",
                                    run / "hooks-2.sock")
    assert policy.reach_paths == (tmp_path,)
    tcp = tmp_path / "tcp.json"
    tcp.write_text(json.dumps({"coproc": {"run_dir": str(run), "gateway": {"processes": 2},
                                          "ipc": {"endpoint": "tcp://127.0.0.1:7000"}}}))
    assert resolve_policy(load_gateway_config(tcp), (), {}).hooks_sockets == ()


def test_the_arena_grant_covers_every_gateway_process_arena(tmp_path: Path) -> None:
    """Each gateway process names its arena `<prefix>-arena-<its pid>`: the worker's
    grant (`instance_arenas` of the policy's prefix) finds all of them, and no other
    instance's."""
    prefix = shm_prefix(tmp_path / "run")
    other = shm_prefix(tmp_path / "other")
    names = [arena_name(prefix, 1001), arena_name(prefix, 1002), arena_name(other, 1003)]
    try:
        for name in names:
            (SHM_DIR / name).write_bytes(b"")
        found = {p.name for p in instance_arenas(_policy(tmp_path, None).arena_prefix)}
        assert found == set(names[:2])
    finally:
        for name in names:
            (SHM_DIR / name).unlink(missing_ok=True)


def test_cgroup_dirs_come_from_the_supervisor(tmp_path: Path) -> None:
    p = _policy(tmp_path, None, {CGROUPS_ENV: os.pathsep.join(["/a/b", "/c"])})
    assert p.cgroup_dirs == (Path("/a/b"), Path("/c"))


def test_rlimit_plan(tmp_path: Path) -> None:
    p = _policy(tmp_path, {"profile": "strict", "cpu_seconds": 30})
    plan = rlimits.planned_rlimits(p, memory_in_cgroup=False)
    assert plan[resource.RLIMIT_CPU] == (30, True)
    assert plan[resource.RLIMIT_CORE] == (0, False)
    assert plan[resource.RLIMIT_DATA][0] == 512 * 1024 * 1024  # no cgroup: the fallback
    assert resource.RLIMIT_DATA not in rlimits.planned_rlimits(p, memory_in_cgroup=True)
    if p.ids is None:  # RLIMIT_NPROC counts per uid: only for a dropped uid
        assert resource.RLIMIT_NPROC not in plan


# -- launcher bookkeeping ------------------------------------------------------------


def test_optional_layer_failure_is_skipped_and_a_required_one_stops(tmp_path: Path) -> None:
    report = SandboxReport("strict")
    run = _Run(report)

    def broken() -> str:
        raise landlock.LayerUnavailable("no kernel support")

    assert run.step(Layer.LANDLOCK, True, False, broken) is False
    assert report.layers[Layer.LANDLOCK] is LayerState.SKIPPED
    assert "skipped [landlock]" in report.describe()
    with pytest.raises(SandboxError, match="layer seccomp is required"):
        run.step(Layer.SECCOMP, True, True, broken)
    assert run.step(Layer.NETNS, False, True, broken) is False
    assert report.layers[Layer.NETNS] is LayerState.OFF


def test_unreachable_finds_a_private_parent() -> None:
    base = Path(tempfile.mkdtemp(prefix="cp-"))  # pytest's own tmp root is private
    try:
        base.chmod(0o755)
        private = base / "home"
        (private / "lib").mkdir(parents=True)
        private.chmod(0o700)
        assert identity.unreachable([private / "lib"], 65534, 65534) == private
        private.chmod(0o755)
        assert identity.unreachable([private / "lib"], 65534, 65534) is None
    finally:
        shutil.rmtree(base)


# -- supervisor side ------------------------------------------------------------------


def test_oom_exit_is_reported_as_oom() -> None:
    status = ExitStatus(-9, oom=True)
    assert status.reason == "oom"
    assert "oom" in status.describe()
    assert ExitStatus(-9).reason == "signal"
    assert ExitStatus(0).reason == "clean"


def test_own_cgroup_parsing() -> None:
    own = _own_cgroups("4:memory:/a/b\n8:pids:/\n2:cpu,cpuacct:/x\n0::/unified/c\n")
    assert own == {"memory": "/a/b", "pids": "/", "cpu": "/x", "cpuacct": "/x",
                   "": "/unified/c"}


@pytest.mark.skipif(os.geteuid() != 0, reason="making cgroups needs root")
def test_worker_cgroup_is_made_and_removed() -> None:
    cg = WorkerCgroup.create(99)
    if not cg.dirs:
        pytest.fail("running as root but no cgroup hierarchy was writable")
    assert all(d.is_dir() for d in cg.dirs)
    dirs = list(cg.dirs)
    assert CGROUPS_ENV in cg.env()
    assert cg.release() is False
    assert not any(d.exists() for d in dirs)


# -- layers in a child interpreter ------------------------------------------------------


def _child(code: str, tmp_path: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                          capture_output=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO), "T": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def _attempt_source() -> str:
    return '''
        def attempt(fn):
            try:
                fn()
                return "ok"
            except OSError as exc:
                return type(exc).__name__
    '''


@pytest.mark.skipif(landlock.abi_version() < 1, reason="the kernel has no Landlock")
def test_landlock_confines_reads_and_writes(tmp_path: Path) -> None:
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "f").write_text("x")
    (tmp_path / "rw").mkdir()
    (tmp_path / "other").write_text("secret")
    result = _child(_attempt_source() + '''
        import json, os, sys
        from pathlib import Path
        from worker.sandbox import landlock, prctl
        t = Path(os.environ["T"])
        prctl.set_no_new_privs()
        landlock.restrict([Path(sys.prefix), *map(Path, sys.path[1:]), t / "ro"], [t / "rw"])
        print(json.dumps({
            "ro": attempt(lambda: open(t / "ro" / "f").read()),
            "rw": attempt(lambda: open(t / "rw" / "new", "w").write("y")),
            "ro_write": attempt(lambda: open(t / "ro" / "g", "w").write("y")),
            "other": attempt(lambda: open(t / "other").read()),
        }))
    ''', tmp_path)
    assert result == {"ro": "ok", "rw": "ok", "ro_write": "PermissionError",
                      "other": "PermissionError"}


def test_seccomp_denies_fork_exec_and_inet_but_not_threads(tmp_path: Path) -> None:
    result = _child(_attempt_source() + '''
        import json, os, socket, subprocess, threading
        from worker.sandbox import prctl, seccomp
        prctl.set_no_new_privs()
        seccomp.install_filter()
        box = []
        t = threading.Thread(target=lambda: box.append(1)); t.start(); t.join()
        print(json.dumps({
            "thread": "ok" if box else "no",
            "fork": attempt(os.fork),
            "exec": attempt(lambda: subprocess.run(["true"])),
            "inet": attempt(lambda: socket.socket(socket.AF_INET)),
            "unix": attempt(lambda: socket.socket(socket.AF_UNIX).close()),
        }))
    ''', tmp_path)
    assert result == {"thread": "ok", "fork": "PermissionError", "exec": "PermissionError",
                      "inet": "PermissionError", "unix": "ok"}


def test_landlock_and_seccomp_refuse_when_other_threads_already_run() -> None:
    import threading

    from worker.sandbox.launcher import _single_threaded

    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, args=(10,))
    thread.start()
    try:
        with pytest.raises(landlock.LayerUnavailable, match="threads already run"):
            _single_threaded(lambda: "applied")
    finally:
        stop.set()
        thread.join(5)


def test_the_scope_layer_keeps_signals_inside_and_leaves_files_alone() -> None:
    """`standard`'s Landlock scope (ABI 6): in a child, kill(parent) fails, files still open."""
    if landlock.abi_version() < 6:
        pytest.skip("Landlock signal scoping needs Linux 6.12 (docs/SECURITY.md)")
    code = ("import os, sys; sys.path.insert(0, sys.argv[1]);"
            "from worker.sandbox import landlock, prctl;"
            "prctl.set_no_new_privs(); print(landlock.scope_only(), flush=True);"
            "open('/etc/hostname').close();"
            "os.kill(os.getppid(), 0)")
    proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parents[2])],
                          capture_output=True, text=True, timeout=60, check=False)
    assert "scope (signals, ptrace, abstract sockets)" in proc.stdout, proc.stderr
    assert "PermissionError" in proc.stderr and proc.returncode == 1
