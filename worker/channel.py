"""The worker's end of the hooks socket: a ZeroMQ DEALER driven by the event loop.

Sends never block: with `IMMEDIATE` set, a message is only queued for a
connected gateway, and one that cannot be queued (gateway gone, or not
reading) is dropped and reported as `False`.  The protocol is built for that:
HELLO is resent until answered, heartbeats are periodic, and a gateway that
lost a REPLY has already timed the call out.  Everything received goes through
`ipc.protocol.decode`; invalid messages are logged and dropped.

The socket is driven from the event loop directly, as the gateway's is, by
`ipc.loop_reader.LoopReader`; each valid message goes to the `listen` callback.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Mapping
from typing import Any

import zmq

from ipc.loop_reader import LoopReader
from ipc.memtune import tune_for_large_buffers
from ipc.protocol import DEFAULT_LIMITS, Limits, Message, MsgType, ProtocolError, decode, encode

__all__ = ["Channel"]

log = logging.getLogger("worker.channel")

#: Outgoing messages ZeroMQ may queue for a slow gateway before sends fail.
SEND_HWM = 100_000

Handler = Callable[[Message], None]


class Channel:
    """One DEALER connected to the gateway's ROUTER; loop thread only."""

    def __init__(self, endpoint: str, limits: Limits = DEFAULT_LIMITS) -> None:
        self.endpoint = endpoint
        self.limits = limits
        tune_for_large_buffers()  # messages and bodies of megabytes: see ipc/memtune.py
        # A fresh context per process: ZeroMQ contexts must not cross a fork.
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        sock.connect(endpoint)
        self._sock = sock
        self._reader = LoopReader(sock, self._on_frames)
        self._handler: Handler | None = None
        self._queue: collections.deque[Message] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self.dropped = 0
        self.invalid = 0

    def listen(self, handler: Handler) -> None:
        """Hand every valid message to `handler` on the loop (instead of `recv`)."""
        self._handler = handler
        self._attach()
        while self._queue:  # anything `recv` buffered before
            handler(self._queue.popleft())

    def send(self, mtype: MsgType, call_id: int, payload: Mapping[str, Any]) -> bool:
        """Queue one message without waiting; False when it could not be queued."""
        try:
            frames = encode(mtype, call_id, payload)
        except (TypeError, ValueError, OverflowError) as exc:
            log.error("cannot encode %s: %s", mtype.name, exc)
            return False
        try:
            self._sock.send_multipart(frames, zmq.DONTWAIT)
        except zmq.Again:
            self.dropped += 1
            return False
        except zmq.ZMQError as exc:
            self.dropped += 1
            log.warning("sending %s failed: %s", mtype.name, exc)
            return False
        finally:
            self._reader.poke()  # a send can consume ZMQ_FD's edge
        return True

    async def recv(self) -> Message:
        """The next valid message from the gateway (invalid ones are dropped)."""
        loop = self._attach()
        while not self._queue:  # each wake-up either queued a message or is spurious
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    def close(self, linger_ms: int = 0) -> None:
        """Close; `linger_ms` lets already queued messages (DRAIN_ACK) go out first."""
        self._reader.detach()
        self._sock.close(linger=linger_ms)
        self._ctx.term()

    # -- event-loop plumbing ------------------------------------------------------------

    def _attach(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if not self._reader.attached:
            self._reader.attach(loop)
        return loop

    def _on_frames(self, frames: list[bytes]) -> None:
        try:
            message = decode(frames, self.limits)
        except ProtocolError as exc:
            self.invalid += 1
            log.warning("dropped an invalid message from the gateway (%s): %s",
                        self.endpoint, exc)
            return
        self._deliver(message)

    def _deliver(self, message: Message) -> None:
        handler = self._handler
        if handler is None:
            self._queue.append(message)
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)
            return
        try:
            handler(message)
        except Exception:  # one bad message must not stop the reader
            log.exception("handling %s failed", message.type.name)
