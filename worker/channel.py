"""The worker's end of the hooks socket: a ZeroMQ DEALER driven by the event loop.

Sends never block: with `IMMEDIATE` set, a message is only queued for a
connected gateway, and one that cannot be queued (gateway gone, or not
reading) is dropped and reported as `False`.  The protocol is built for that:
HELLO is resent until answered, heartbeats are periodic, and a gateway that
lost a REPLY has already timed the call out.  Everything received goes through
`ipc.protocol.decode`; invalid messages are logged and dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, cast

import zmq
import zmq.asyncio

from ipc.protocol import DEFAULT_LIMITS, Limits, Message, MsgType, ProtocolError, decode, encode

__all__ = ["Channel"]

log = logging.getLogger("worker.channel")

#: Outgoing messages ZeroMQ may queue for a slow gateway before sends fail.
SEND_HWM = 100_000


class Channel:
    """One DEALER connected to the gateway's ROUTER; loop thread only."""

    def __init__(self, endpoint: str, limits: Limits = DEFAULT_LIMITS) -> None:
        self.endpoint = endpoint
        self.limits = limits
        # A fresh context per process: ZeroMQ contexts must not cross a fork.
        self._ctx = zmq.asyncio.Context()
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        sock.connect(endpoint)
        self._sock = sock
        self.dropped = 0
        self.invalid = 0

    def send(self, mtype: MsgType, call_id: int, payload: Mapping[str, Any]) -> bool:
        """Queue one message without waiting; False when it could not be queued."""
        try:
            frames = encode(mtype, call_id, payload)
        except (TypeError, ValueError, OverflowError) as exc:
            log.error("cannot encode %s: %s", mtype.name, exc)
            return False
        future = cast("asyncio.Future[Any]",
                      self._sock.send_multipart(frames, flags=zmq.DONTWAIT))
        if not future.done():  # only if a blocking send were queued; this class never does
            future.add_done_callback(_consume)
            return True
        # With DONTWAIT the future is already resolved; read it so no error goes unseen.
        error = future.exception()
        if error is None:
            return True
        self.dropped += 1
        if not isinstance(error, zmq.Again):
            log.warning("sending %s failed: %s", mtype.name, error)
        return False

    async def recv(self) -> Message:
        """The next valid message from the gateway (invalid ones are dropped)."""
        while True:
            frames = await self._sock.recv_multipart()
            try:
                return decode(frames, self.limits)
            except ProtocolError as exc:
                self.invalid += 1
                log.warning("dropped an invalid message from the gateway (%s): %s",
                            self.endpoint, exc)

    def close(self, linger_ms: int = 0) -> None:
        """Close; `linger_ms` lets already queued messages (DRAIN_ACK) go out first."""
        self._sock.close(linger=linger_ms)
        self._ctx.term()


def _consume(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("a queued send failed: %s", future.exception())
