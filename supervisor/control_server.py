"""The control socket: `coproc status|reload|restart-worker|stop` talk to us here.

A Unix stream socket `<run_dir>/control.sock`, mode 0600 in the 0700 run
directory: only the instance's own user may control it.  A plugin running with
that same uid (no uid drop) could still connect, so every connection's peer is
checked with SO_PEERCRED (`peer_refusal`): its uid must be the supervisor's or
root, and it must not be one of our own children or their descendants (the
worker and whatever a plugin started: by parent chain, by session and by the
worker's cgroup).  A refused peer gets an error line and nothing is queued.
One request per connection: a single JSON line `{"command": ...}` in, a single JSON line out,
then the connection closes.  Reading the request has a deadline; the answer
is produced by the reconcile loop (the request is queued as an event, like a
signal) and waited for with a deadline too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ipc.peercred import peer_credentials
from ipc.ratelog import Throttle

__all__ = ["COMMANDS", "CONTROL_SOCKET_NAME", "ControlRequest", "ControlServer", "peer_refusal"]

CONTROL_SOCKET_NAME: Final = "control.sock"
COMMANDS: Final = frozenset({"status", "reload", "restart-worker", "stop"})
#: A client has this long to send its request line.
READ_TIMEOUT_S: Final = 5.0
MAX_REQUEST_BYTES: Final = 4096
#: At most one log line per this many seconds about refused peers (a plugin could flood).
REFUSED_LOG_S: Final = 10.0
#: Parent links followed from a peer towards pid 1 (a chain is never longer in practice).
MAX_ANCESTRY: Final = 64

log = logging.getLogger("coproc.supervisor.control_server")


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """One command for the reconcile loop; it answers through `reply`."""

    command: str
    reply: asyncio.Future[dict[str, Any]]


class ControlServer:
    def __init__(self, path: Path, submit: Callable[[ControlRequest], None],
                 answer_timeout_s: float) -> None:
        self._path, self._submit = path, submit
        self._answer_timeout = answer_timeout_s
        self._server: asyncio.AbstractServer | None = None
        self._refused = Throttle(REFUSED_LOG_S)

    @property
    def path(self) -> Path:
        return self._path

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()  # a stale socket: we hold the run dir lock
        old_umask = os.umask(0o177)  # created 0600, never briefly wider
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self._path),
                                                           limit=MAX_REQUEST_BYTES)
        finally:
            os.umask(old_umask)
        os.chmod(self._path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            answer = await self._answer(reader, _connection_refusal(
                writer.get_extra_info("socket")))
            writer.write(json.dumps(answer).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            log.debug("control connection: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _answer(self, reader: asyncio.StreamReader,
                      refusal: str | None) -> dict[str, Any]:
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_S)
            if refusal is not None:  # read first: the client then gets the answer
                return self._refuse(refusal)
            request = json.loads(line)
        except (TimeoutError, ValueError) as exc:
            return {"ok": False, "error": f"bad request: {exc or 'no request line'}"}
        command = request.get("command") if isinstance(request, dict) else None
        if command not in COMMANDS:
            return {"ok": False, "error": f"unknown command {command!r}; "
                    f"expected one of {', '.join(sorted(COMMANDS))}"}
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._submit(ControlRequest(command, reply))
        try:
            return await asyncio.wait_for(reply, self._answer_timeout)
        except TimeoutError:
            return {"ok": False, "error": f"no answer within {self._answer_timeout:.0f} s"}

    def _refuse(self, refusal: str) -> dict[str, Any]:
        held = self._refused.due()
        if held is not None:
            log.warning("control socket: refused a connection: %s%s", refusal,
                        f" ({held} more since the last report)" if held else "")
        return {"ok": False, "error": f"refused: {refusal}"}


def _connection_refusal(sock: socket.socket | None) -> str | None:
    if sock is None:
        return "no peer credentials"
    try:
        peer = peer_credentials(sock)
    except OSError as exc:
        return f"no peer credentials ({exc.strerror})"
    return peer_refusal(peer.pid, peer.uid)


def peer_refusal(pid: int, uid: int, supervisor_pid: int | None = None,
                 supervisor_uid: int | None = None) -> str | None:
    """Why the peer `pid`/`uid` may not control this supervisor, or None if it may.

    Allowed: the supervisor's uid or root, from a process that is not ours.
    Refused: any descendant of the supervisor (the gateway, the worker, what a
    plugin forked), a member of a child's session (a plugin that left the
    process group), and anything in a worker's cgroup (a plugin that also left
    the session: a double-forked `setsid` daemon)."""
    me = os.getpid() if supervisor_pid is None else supervisor_pid
    my_uid = os.geteuid() if supervisor_uid is None else supervisor_uid
    if uid not in (0, my_uid):
        return f"uid {uid} is neither root nor the supervisor's uid {my_uid}"
    if pid <= 0:
        return "the peer's pid is unknown (another pid namespace)"
    stat = _stat(pid)
    if stat is None:
        return f"pid {pid} is gone or unreadable"
    ppid, session = stat
    current, parent = pid, ppid
    for _ in range(MAX_ANCESTRY):
        if parent == me:
            return f"pid {pid} descends from the supervisor's child {current}"
        if parent <= 1:
            break
        up = _stat(parent)
        if up is None:
            break
        current, parent = parent, up[0]
    leader = _stat(session) if session > 1 else None
    if session != pid and leader is not None and leader[0] == me:
        return f"pid {pid} is in the session of the supervisor's child {session}"
    try:
        groups = _read(f"/proc/{pid}/cgroup")
    except OSError:
        return f"pid {pid}'s cgroup is unreadable"
    if f"/coproc-{me}-w" in groups:
        return f"pid {pid} is in a worker's cgroup"
    return None


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, session id) of `pid` from /proc, or None."""
    try:
        text = _read(f"/proc/{pid}/stat")
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # after the command name, which may hold spaces
    try:
        return int(fields[1]), int(fields[3])
    except (IndexError, ValueError):
        return None


def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read(8192)
