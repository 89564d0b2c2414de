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
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

from ipc.contract import ADMIT_GATE_ENV
from ipc.control import MAX_DATAGRAM, decode_control, encode_control
from ipc.schema import ProtocolError

__all__ = ["SupervisorLink"]

log = logging.getLogger("worker.control")


class SupervisorLink:
    def __init__(self, sock: socket.socket | None, gated: bool | None = None,
                 sandbox: Mapping[str, str] | None = None) -> None:
        self._sock = sock
        # Sent with `loaded` and `ready` so that `coproc status` lists the layers.
        self._sandbox = dict(sandbox or {})
        self._failing = False
        if gated is None:
            gated = os.environ.get(ADMIT_GATE_ENV) == "1"
        self.gated = gated and sock is not None

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def ready(self, pid: int, generation: int, plugins: Mapping[str, Any]) -> None:
        self._send({"type": "ready", "role": "worker", "pid": pid,
                    "generation": generation, "plugins": dict(plugins),
                    "sandbox": self._sandbox})

    def heartbeat(self, generation: int, inflight: int, calls: int = 0) -> None:
        self._send({"type": "heartbeat", "generation": generation, "inflight": inflight,
                    "calls": calls})

    async def wait_admitted(self, pid: int, generation: int,
                            plugins: Mapping[str, Any], timeout_s: float) -> bool:
        """Send `loaded`, then wait for `admit`; True at once when not gated.

        False when no `admit` came within `timeout_s` (the supervisor kills a
        worker it refuses, so this is only a backstop).
        """
        sock = self._sock
        if not self.gated or sock is None:
            return True
        self._send({"type": "loaded", "pid": pid, "generation": generation,
                    "plugins": dict(plugins), "sandbox": self._sandbox})
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                while True:  # bounded by the timeout
                    datagram = await loop.sock_recv(sock, MAX_DATAGRAM + 1)
                    if not datagram:
                        return False
                    try:
                        message = decode_control(datagram)
                    except ProtocolError as exc:
                        log.warning("dropped a control datagram: %s", exc)
                        continue
                    if message["type"] == "admit" and message["generation"] == generation:
                        return True
        except TimeoutError:
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, message: dict[str, Any]) -> None:
        if self._sock is None:
            return
        try:
            self._sock.send(encode_control(message))
        except OSError as exc:  # BlockingIOError, ConnectionRefused, EPIPE, EMSGSIZE
            if not self._failing:
                log.warning("control datagram %s not sent: %s", message["type"], exc)
            self._failing = True
        else:
            self._failing = False
