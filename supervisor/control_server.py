"""The control socket: `coproc status|reload|restart-worker|stop` talk to us here.

A Unix stream socket `<run_dir>/control.sock`, mode 0600 in the 0700 run
directory: only the instance's own user may control it.  One request per
connection: a single JSON line `{"command": ...}` in, a single JSON line out,
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = ["COMMANDS", "CONTROL_SOCKET_NAME", "ControlRequest", "ControlServer"]

CONTROL_SOCKET_NAME: Final = "control.sock"
COMMANDS: Final = frozenset({"status", "reload", "restart-worker", "stop"})
#: A client has this long to send its request line.
READ_TIMEOUT_S: Final = 5.0
MAX_REQUEST_BYTES: Final = 4096

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
            answer = await self._answer(reader)
            writer.write(json.dumps(answer).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            log.debug("control connection: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _answer(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_S)
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
