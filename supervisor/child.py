"""One child process: spawn it, talk to it, signal its group, reap it.

Each child is a fresh interpreter (never a fork of the supervisor, whose
event loop, sockets and locks it must not inherit) in its own session, so
`killpg(pid)` reaches everything it started and nothing else.  Children are
only ever addressed by pid / process group, never by name.
"""

from __future__ import annotations

import enum
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from ipc.contract import CONTROL_FD_ENV, SCRATCH_DIR_ENV, SECRET_FD_ENV
from ipc.control import (
    ControlEndpoint,
    ControlMessage,
    ControlType,
    make_control_pair,
    secret_fd,
)
from supervisor.cgroups import WorkerCgroup
from supervisor.contract import scratch_dir
from supervisor.exits import ExitStatus

__all__ = ["ABORT_GRACE_S", "ChildProcess", "ChildState", "Role"]

#: Between SIGABRT (faulthandler dumps every thread's traceback) and SIGKILL.
ABORT_GRACE_S: Final = 1.0
_HAS_WAITID: Final = hasattr(os, "waitid")


class Role(enum.Enum):
    GATEWAY = "gateway"
    WORKER = "worker"
    GRPC_SERVER = "grpc_server"  # a supervised gRPC plugin server (supervisor/grpc_server.py)
    STORE = "store"  # memory storage for several gateway processes (supervisor/store_role.py)


class ChildState(enum.Enum):
    STARTING = "starting"  # spawned, has not said `ready`
    READY = "ready"  # said `ready` (worker: routable; gateway: serving)
    STOPPING = "stopping"  # sent SIGTERM: draining on our request
    ABORTING = "aborting"  # hung: sent SIGABRT, SIGKILL follows at `kill_at`
    EXITED = "exited"  # reaped


class ChildProcess:
    def __init__(self, role: Role, generation: int, popen: subprocess.Popen[bytes],
                 control: socket.socket, started_at: float) -> None:
        self.role, self.generation, self.started_at = role, generation, started_at
        self.pid = popen.pid
        self.state = ChildState.STARTING
        self.ready_at: float | None = None
        self.last_heartbeat: float | None = None
        self.kill_at: float | None = None
        self.kill_reason = ""
        self._popen = popen
        self._control = ControlEndpoint(control, f"{role.value} generation {generation} "
                                                 f"(pid {popen.pid})")
        self.pidfd = _open_pidfd(popen.pid)
        #: A worker's per-generation cgroup (supervisor/cgroups.py), if the host allows.
        self.cgroup: WorkerCgroup | None = None
        #: A worker's scratch directory (it makes it); removed when it is reaped.
        self.scratch: Path | None = None
        #: Its name among several of its role ("gateway 1"); "": the role's name.
        self.label = ""

    @classmethod
    def spawn(cls, role: Role, generation: int, argv: Sequence[str], env: Mapping[str, str],
              started_at: float, pass_fds: Sequence[int] = (),
              confined: bool = False, secret: bytes | None = None) -> ChildProcess:
        """Start `argv` with its own control socketpair; raise OSError if it cannot run.

        `confined`: the child runs plugin code, so it gets a cgroup of its own
        and a scratch directory we remove when we reap it.  `secret`: handed
        over in an inherited memfd ($COPROC_SECRET_FD), never the environment."""
        parent_end, child_end = make_control_pair()
        secret_end = secret_fd(secret) if secret is not None else None
        cgroup = WorkerCgroup.create(generation) if confined else None
        scratch = scratch_dir(generation) if confined else None
        extra = {SCRATCH_DIR_ENV: str(scratch)} if scratch is not None else {}
        if secret_end is not None:
            extra[SECRET_FD_ENV] = str(secret_end)
        fds = (child_end.fileno(), *pass_fds, *(() if secret_end is None else (secret_end,)))
        try:
            popen = subprocess.Popen(
                list(argv), env={**env, **(cgroup.env() if cgroup else {}), **extra,
                                 CONTROL_FD_ENV: str(child_end.fileno())},
                stdin=subprocess.DEVNULL, close_fds=True,
                pass_fds=fds, start_new_session=True)
        except BaseException:
            parent_end.close()
            if cgroup is not None:
                cgroup.release()
            raise
        finally:
            child_end.close()  # only the child keeps its end (and its secret)
            if secret_end is not None:
                os.close(secret_end)
        child = cls(role, generation, popen, parent_end, started_at)
        child.cgroup, child.scratch = cgroup, scratch
        return child

    @property
    def name(self) -> str:
        gen = f" generation {self.generation}" if self.role is not Role.GATEWAY else ""
        return f"{self.label or self.role.value}{gen} (pid {self.pid})"

    @property
    def alive(self) -> bool:
        return self.state is not ChildState.EXITED

    def fileno(self) -> int:
        return self._control.fileno()

    # -- control channel -------------------------------------------------

    def read_messages(self) -> list[ControlMessage]:
        """What the child sent (invalid datagrams are logged and dropped)."""
        return self._control.receive()

    def send(self, kind: ControlType, fields: Mapping[str, Any]) -> bool:
        """Best effort: a dead or stuck child is handled by the reaper, not here."""
        return self._control.send(kind, fields)

    # -- liveness ----------------------------------------------------------

    def mark_ready(self, now: float) -> bool:
        """Record `ready`; True the first time, and only while STARTING.

        A child we are already aborting or stopping does not become ready.
        """
        if self.ready_at is not None or self.state is not ChildState.STARTING:
            return False
        self.ready_at, self.state = now, ChildState.READY
        return True

    def heard(self, now: float) -> None:
        """A heartbeat arrived."""
        self.last_heartbeat = now

    def silent_for(self, now: float) -> float | None:
        """Seconds since the last sign of life after `ready`; None before `ready`."""
        if self.ready_at is None:
            return None
        return now - max(self.ready_at, self.last_heartbeat or 0.0)

    # -- signals -------------------------------------------------------------

    def terminate(self) -> None:
        """SIGTERM the child itself: it drains and exits 0 in its own time."""
        if self.state in (ChildState.STARTING, ChildState.READY):
            self.state = ChildState.STOPPING
            self._signal(signal.SIGTERM)

    def retire(self) -> None:
        """Superseded by a newer generation, which the gateway told to DRAIN:
        the exit that follows is expected.  No signal here: a SIGTERM on top
        of DRAIN would make the worker stop at once."""
        if self.state in (ChildState.STARTING, ChildState.READY):
            self.state = ChildState.STOPPING

    def abort(self, now: float, reason: str) -> None:
        """Hung: SIGABRT now for a traceback dump, SIGKILL the group at `kill_at`."""
        if self.state in (ChildState.ABORTING, ChildState.EXITED):
            return
        self.state, self.kill_reason = ChildState.ABORTING, reason
        self.kill_at = now + ABORT_GRACE_S
        self._signal(signal.SIGABRT)

    def kill_if_overdue(self, now: float) -> bool:
        """After `abort`: SIGKILL the group once `kill_at` has passed; True if it did."""
        if self.state is not ChildState.ABORTING or self.kill_at is None or now < self.kill_at:
            return False
        self.kill_at = None
        self.kill_group(self.kill_reason)
        return True

    def kill_group(self, reason: str) -> None:
        if self.state is ChildState.EXITED:
            return
        self.kill_reason = self.kill_reason or reason
        _killpg(self.pid)
        if self.cgroup is not None:  # also children that left the process group
            self.cgroup.kill()

    def _signal(self, signum: int) -> None:
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass  # already dead; the reaper will tell

    # -- exit ----------------------------------------------------------------

    def reap(self) -> ExitStatus | None:
        """The exit status if the child has exited (reaping it), else None."""
        if self.state is ChildState.EXITED:
            return None
        if _HAS_WAITID:
            if not self._exited_unreaped():
                return None
            # The unreaped zombie still holds its pid, so the group id cannot
            # have been reused: sweep whatever the child left in its group.
            _killpg(self.pid)
            returncode = self._popen.poll()
        else:
            returncode = self._popen.poll()
            if returncode is not None:
                _killpg(self.pid)
        if returncode is None:
            return None
        self.state = ChildState.EXITED
        # Read the OOM counter, kill what escaped the process group, remove the cgroup.
        oom = self.cgroup.release() if self.cgroup is not None else False
        if self.scratch is not None:
            # A killed worker cannot clean up after itself (a drained one already has).
            shutil.rmtree(self.scratch, ignore_errors=True)
        return ExitStatus(returncode, self.kill_reason, oom=oom)

    def _exited_unreaped(self) -> bool:
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True  # already reaped elsewhere: Popen.poll() copes
        return info is not None

    def close(self) -> None:
        """Release our fds; call after the loop stopped watching them."""
        self._control.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _open_pidfd(pid: int) -> int | None:
    """A pidfd turns readable when the child exits: prompt reaping on any event loop."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # group gone (PermissionError: macOS says so for a zombie-only group)
