"""Drive a ZeroMQ socket's receive side from an asyncio event loop.

The gateway's hooks socket uses this instead of `zmq.asyncio`, which makes a
future and a reader registration per message: here one readiness callback
drains every waiting message (bounded per turn so a flood cannot starve the
loop).  ZMQ_FD is edge-triggered and a *send* may consume the edge, so the
owner calls `after_send()` after every send: it looks at ZMQ_EVENTS and, if a
message is waiting, drains on the next loop turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

import zmq

from ipc.zmqio import readable, recv_frames

__all__ = ["LoopReader"]

#: Messages handled per loop turn before yielding.
DRAIN_BATCH: Final = 1000


class LoopReader:
    """Calls `on_frames(frames)` on the loop for every message `sock` receives."""

    def __init__(self, sock: zmq.Socket[bytes], on_frames: Callable[[list[bytes]], None],
                 recv: Callable[[zmq.Socket[bytes]], list[bytes]] = recv_frames) -> None:
        """`recv`: how one whole message is read (`ipc.zmqio.recv_routed` for a ROUTER)."""
        self._sock = sock
        self._recv = recv
        self._on_frames = on_frames
        self._fd = int(sock.getsockopt(zmq.FD))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False

    @property
    def attached(self) -> bool:
        return self._loop is not None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self._fd, self._drain)
        self.poke()  # messages may have arrived before the reader existed

    def detach(self) -> None:
        """Stop reading; call before closing the socket."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._loop = None

    def poke(self) -> None:
        """Drain on the next loop turn."""
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def after_send(self) -> None:
        """A send may have consumed ZMQ_FD's edge: drain if a message is waiting."""
        if not self._scheduled and self._loop is not None and readable(self._sock):
            self.poke()

    def drain_now(self) -> None:
        """Handle every message waiting right now, before what the caller does next."""
        if self._loop is not None:
            self._drain()

    def _drain(self) -> None:
        self._scheduled = False
        sock, recv = self._sock, self._recv
        for _ in range(DRAIN_BATCH):
            if self._loop is None or sock.closed:
                return
            try:
                frames = recv(sock)
            except zmq.Again:
                return  # nothing waiting; ZMQ_FD signals the next message
            self._on_frames(frames)
        self.poke()  # more may be waiting: look again on the next loop turn
