"""The worker's datagrams to the supervisor: `ready` once, then `heartbeat`s.

The control socket is one end of a SOCK_DGRAM socketpair inherited from the
supervisor (`ipc.control`).  Sends never block and never raise: a full
buffer or a supervisor that is gone loses the datagram; the next heartbeat
follows, and `die_with_parent` handles a vanished supervisor.  When the
worker is run by hand there is no control socket and nothing is sent.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import Any

from ipc.control import encode_control

__all__ = ["SupervisorLink"]

log = logging.getLogger("worker.control")


class SupervisorLink:
    def __init__(self, sock: socket.socket | None) -> None:
        self._sock = sock
        self._failing = False

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def ready(self, pid: int, generation: int, plugins: Mapping[str, Any]) -> None:
        self._send({"type": "ready", "role": "worker", "pid": pid,
                    "generation": generation, "plugins": dict(plugins)})

    def heartbeat(self, generation: int, inflight: int) -> None:
        self._send({"type": "heartbeat", "generation": generation, "inflight": inflight})

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
