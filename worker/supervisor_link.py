"""The worker's datagrams to the supervisor: `ready` once, then `heartbeat`s.

The control socket is one end of a SOCK_DGRAM socketpair inherited from the
supervisor (`ipc.control`).  Sends never block and never raise: a full
buffer or a supervisor that is gone loses the datagram; the next heartbeat
follows, and `die_with_parent` handles a vanished supervisor.  When the
worker is run by hand there is no control socket and nothing is sent.

Admission gate: when the supervisor sets `$COPROC_ADMIT_GATE=1`, the worker
first sends `loaded` (its plugin load report) and waits for `admit` before
it says HELLO to the gateway, so that a hot restart whose new plugins fail to
load is refused before the gateway ever routes to it (docs/PROTOCOL.md).

While plugins load (before the link exists), `ImportAnnouncer` says
`importing <file>` before each import: a plugin that kills the worker at
import time (`os._exit`, a segfault) is then named by the supervisor.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ipc.contract import ADMIT_GATE_ENV, CONTROL_FD_ENV
from ipc.control import ControlEndpoint, ControlType

__all__ = ["ImportAnnouncer", "SupervisorLink"]


class ImportAnnouncer:
    """Says `importing` on a duplicate of the inherited control socket (the
    original is adopted by `SupervisorLink` later); a no-op when run by hand."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        raw = (os.environ if environ is None else environ).get(CONTROL_FD_ENV, "")
        self._endpoint: ControlEndpoint | None = None
        if raw.isdigit():
            try:
                sock = socket.socket(fileno=os.dup(int(raw)))
            except OSError:
                return  # no such descriptor: nothing to announce to
            sock.setblocking(False)
            self._endpoint = ControlEndpoint(sock, "worker control (imports)")

    def importing(self, api_id: str, path: Path) -> None:
        if self._endpoint is not None:
            self._endpoint.send(ControlType.IMPORTING, {"api_id": api_id, "file": str(path)})

    def close(self) -> None:
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None


class SupervisorLink:
    def __init__(self, sock: socket.socket | None, gated: bool | None = None,
                 sandbox: Mapping[str, str] | None = None) -> None:
        self._endpoint = ControlEndpoint(sock, "worker control") if sock is not None else None
        # Sent with `loaded` and `ready` so that `coproc status` lists the layers.
        self._sandbox = dict(sandbox or {})
        if gated is None:
            gated = os.environ.get(ADMIT_GATE_ENV) == "1"
        self.gated = gated and sock is not None

    @property
    def connected(self) -> bool:
        return self._endpoint is not None

    def ready(self, pid: int, generation: int, plugins: Mapping[str, Any]) -> None:
        self._send(ControlType.READY, {"role": "worker", "pid": pid, "generation": generation,
                                       "plugins": dict(plugins), "sandbox": self._sandbox})

    def heartbeat(self, beat: Mapping[str, Any]) -> None:
        """The same payload as the hooks protocol's HEARTBEAT (one shape, two channels)."""
        self._send(ControlType.HEARTBEAT, beat)

    async def wait_admitted(self, pid: int, generation: int,
                            plugins: Mapping[str, Any], timeout_s: float) -> bool:
        """Send `loaded`, then wait for `admit`; True at once when not gated.

        False when no `admit` came within `timeout_s` (the supervisor kills a
        worker it refuses, so this is only a backstop).
        """
        endpoint = self._endpoint
        if not self.gated or endpoint is None:
            return True
        self._send(ControlType.LOADED, {"pid": pid, "generation": generation,
                                        "plugins": dict(plugins), "sandbox": self._sandbox})
        try:
            async with asyncio.timeout(timeout_s):
                while True:  # bounded by the timeout
                    message = await endpoint.receive_one()
                    if message is None:
                        return False
                    if message.type is ControlType.ADMIT and message["generation"] == generation:
                        return True
        except TimeoutError:
            return False

    def close(self) -> None:
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None

    def _send(self, kind: ControlType, fields: Mapping[str, Any]) -> None:
        if self._endpoint is not None:
            self._endpoint.send(kind, fields)
