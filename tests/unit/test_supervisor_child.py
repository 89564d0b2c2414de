"""ChildProcess with real (tiny) processes: control channel, group kill, reaping."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from collections.abc import Iterator

import psutil
import pytest

from ipc.control import ControlMessage, ControlType
from supervisor.child import ChildProcess, ChildState, Role
from supervisor.exits import ExitStatus

SENDS_READY = textwrap.dedent("""
    import os, time
    from ipc.control import encode_control, inherited_control_socket
    sock = inherited_control_socket()
    sock.send(b"not msgpack at all \\xc1")
    sock.send(encode_control({"type": "ready", "role": "worker", "pid": os.getpid(),
                              "generation": 7}))
    time.sleep(30)
""")

# These write one line to the fd named in argv[1] once they are set up.
SPAWNS_GRANDCHILD = textwrap.dedent("""
    import os, subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    os.write(int(sys.argv[1]), f"{grandchild.pid}\\n".encode())
    time.sleep(30)
""")

IGNORES_SIGABRT = textwrap.dedent("""
    import os, signal, sys, time
    signal.signal(signal.SIGABRT, signal.SIG_IGN)
    os.write(int(sys.argv[1]), b"ok\\n")
    time.sleep(30)
""")


MAKES_SCRATCH = textwrap.dedent("""
    import os, sys, time
    from worker.sandbox.launcher import _make_scratch
    scratch = _make_scratch(None)
    (scratch / "left-behind.txt").write_text("x")
    os.write(int(sys.argv[1]), f"{scratch}\\n".encode())
    time.sleep(30)
""")


@pytest.fixture
def children() -> Iterator[list[ChildProcess]]:
    made: list[ChildProcess] = []
    try:
        yield made
    finally:
        for child in made:
            child.kill_group("test over")
            wait_exit(child)
            child.close()


def spawn(children: list[ChildProcess], code: str, *args: str,
          pass_fds: tuple[int, ...] = ()) -> ChildProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = ChildProcess.spawn(Role.WORKER, 7, [sys.executable, "-c", code, *args], env,
                               time.monotonic(), pass_fds=pass_fds, confined=True)
    children.append(child)
    return child


def spawn_and_read_line(children: list[ChildProcess], code: str) -> tuple[ChildProcess, str]:
    """Spawn `code` with a pipe's write end as argv[1]; wait for its first line."""
    read_end, write_end = os.pipe()
    try:
        child = spawn(children, code, str(write_end), pass_fds=(write_end,))
        os.close(write_end)
        write_end = -1
        with os.fdopen(read_end, "r", closefd=False) as pipe:
            line = pipe.readline().strip()
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    return child, line


def wait_exit(child: ChildProcess, timeout: float = 5.0) -> ExitStatus | None:
    deadline = time.monotonic() + timeout
    while child.alive and time.monotonic() < deadline:
        status = child.reap()
        if status is not None:
            return status
        time.sleep(0.01)
    return None


def test_control_channel_drops_garbage_and_delivers_ready(children: list[ChildProcess]) -> None:
    child = spawn(children, SENDS_READY)
    deadline = time.monotonic() + 10
    messages: list[ControlMessage] = []
    while not messages and time.monotonic() < deadline:
        messages = child.read_messages()
        time.sleep(0.01)
    assert messages == [ControlMessage(ControlType.READY,
                                       {"role": "worker", "pid": child.pid, "generation": 7})]
    assert child.send(ControlType.WORKER_STATE, {"state": "running"})
    assert child.mark_ready(time.monotonic()) and not child.mark_ready(time.monotonic())
    assert child.state is ChildState.READY


def test_own_session_and_group_kill_reaches_grandchildren(children: list[ChildProcess]) -> None:
    child, line = spawn_and_read_line(children, SPAWNS_GRANDCHILD)
    grandchild = int(line)
    assert os.getsid(child.pid) == child.pid  # start_new_session
    assert os.getpgid(grandchild) == child.pid
    child.kill_group("test")
    status = wait_exit(child)
    assert status is not None and status.signal == signal.SIGKILL
    assert child.reap() is None  # reaped once only
    # Not our child: init reaps it; wait until it is gone or a zombie.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.01)
    else:
        pytest.fail("the grandchild survived the group kill")


def test_reap_classifies_a_sigkill(children: list[ChildProcess]) -> None:
    child = spawn(children, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    status = wait_exit(child)
    assert status is not None and status.describe() == "killed (SIGKILL, possibly OOM)"
    assert child.state is ChildState.EXITED


def test_abort_then_group_kill_is_attributed_to_the_supervisor(
        children: list[ChildProcess]) -> None:
    child, _ = spawn_and_read_line(children, IGNORES_SIGABRT)
    child.abort(time.monotonic(), "no heartbeat for 600 ms")
    assert child.state is ChildState.ABORTING and child.kill_at is not None
    assert wait_exit(child, timeout=0.2) is None  # SIGABRT ignored: still alive
    child.kill_group("ignored")
    status = wait_exit(child)
    assert status is not None
    assert status.describe() == "killed (SIGKILL, by the supervisor: no heartbeat for 600 ms)"


def test_terminate_is_sigterm_to_the_child(children: list[ChildProcess]) -> None:
    child = spawn(children, "import time; time.sleep(30)")
    child.terminate()
    assert child.state is ChildState.STOPPING
    status = wait_exit(child)
    assert status is not None and status.describe() == "killed (SIGTERM)"


def test_a_missing_program_raises_oserror_and_leaks_no_fd() -> None:
    fds = "/proc/self/fd"
    before = len(os.listdir(fds)) if os.path.isdir(fds) else None
    with pytest.raises(OSError):
        ChildProcess.spawn(Role.GATEWAY, 1, ["/nonexistent/coproc-gateway"], {}, 0.0)
    if before is not None:
        assert len(os.listdir(fds)) == before


def test_a_killed_workers_scratch_dir_is_removed_when_it_is_reaped(
        children: list[ChildProcess]) -> None:
    """1. A worker makes its scratch dir where the supervisor said, and writes to it.
    2. The supervisor kills its group: the worker cannot clean up.
    3. Reaping it removes the directory.
    """
    child, line = spawn_and_read_line(children, MAKES_SCRATCH)
    assert child.scratch is not None and line == str(child.scratch)
    assert (child.scratch / "left-behind.txt").exists()
    child.kill_group("hung")
    assert wait_exit(child) is not None
    assert not child.scratch.exists()
