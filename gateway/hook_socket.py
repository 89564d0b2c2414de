"""The gateway's ZeroMQ ROUTER on the hooks endpoint: bind, read, send.

Workers connect with a DEALER.  The socket is driven from the event loop
directly (`ipc.loop_reader`: `add_reader` on ZMQ_FD, non-blocking receives
drained in a loop) instead of `zmq.asyncio`: one future per call and nothing
else, which measured markedly cheaper per round trip.  Every message read is
decoded here, frame by frame (a ZeroMQ message is a batch of protocol
messages: ipc/protocol.py), and handed on valid or not.

Every message leaves through one send path (`_send_frames`): a closed socket
or an unreachable peer becomes `WorkerLost`, and an unreachable peer is
reported to the owner, which drops it (its calls fail now).  CALLs wait for
the end of the loop turn and leave together, one batch per worker
(`queue_call`): the I/O thread is woken once per batch, not per CALL.  Any other
message first sends the CALLs queued before it, so messages leave in the
order they were made (a DRAIN never overtakes a CALL: the worker would
refuse that CALL).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import zmq

from config.gateway import GatewayConfig
from gateway.hook_errors import WorkerLost
from ipc.loop_reader import LoopReader
from ipc.protocol import MAX_BATCH, Limits, Message, MsgType, ProtocolError, decode_frame, encode
from ipc.zmqio import batch_bounds, recv_routed, send_frames

__all__ = ["HookSocket"]

log = logging.getLogger("coproc.hooks")

#: (routing id, message): a valid message from a peer.
OnMessage = Callable[[bytes, Message], None]
#: (routing id, the refused frame, or None for a whole batch, why); whether the peer is
#: still heard (False: the rest of its batch is dropped unread).
OnInvalid = Callable[[bytes, bytes | None, ProtocolError], bool]


class HookSocket:
    """The ROUTER socket; messages in go to `on_message` / `on_invalid`."""

    def __init__(self, cfg: GatewayConfig, *, on_message: OnMessage, on_invalid: OnInvalid,
                 on_unreachable: Callable[[bytes], None],
                 on_unsent: Callable[[int, WorkerLost], None]) -> None:
        """`on_unreachable(routing id)`: that peer is gone; `on_unsent(call_id, error)`:
        a queued CALL could not be sent."""
        self._cfg = cfg
        self._limits = Limits(max_message_bytes=cfg.ipc.max_message_bytes)
        self._on_message, self._on_invalid = on_message, on_invalid
        self._on_unreachable, self._on_unsent = on_unreachable, on_unsent
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._reader: LoopReader | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: CALLs of this loop turn by worker (routing id): their frames and call ids in
        #: order, sent by `_flush` (two workers only while a hot restart hands over).
        self._outbox: dict[bytes, tuple[list[bytes], list[int]]] = {}
        self._flush_scheduled = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        # Unroutable sends raise instead of vanishing: a call to a gone peer fails now.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, self._cfg.ipc.max_message_bytes + 65536)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        endpoint = self._cfg.hooks_endpoint
        path = endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None
        if path is not None:
            _remove_stale(path)
        sock.bind(endpoint)
        if path is not None:
            os.chmod(path, 0o600)
        self._sock = sock
        self._reader = LoopReader(sock, self._on_frames, recv_routed)
        self._reader.attach(loop)
        log.info("hooks socket bound on %s", endpoint)

    def close(self) -> None:
        if self._sock is not None:
            if self._reader is not None:
                self._reader.detach()
            self._sock.close(linger=0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def read_now(self) -> None:
        """Handle every message waiting right now, before what the caller does next."""
        if self._reader is not None:
            self._reader.drain_now()

    def queue_call(self, identity: bytes, call_id: int, payload: Mapping[str, Any]) -> None:
        """Send a CALL at the end of this loop turn, with the turn's other CALLs.

        Every send that finds ZeroMQ's I/O thread asleep wakes it, which costs
        more than the rest of the send; the requests one loop turn handles then
        share one wake-up.  A failed send reaches the call through `on_unsent`.
        """
        assert self._loop is not None  # bind() ran: a programming error otherwise
        queued = self._outbox.get(identity)
        if queued is None:
            queued = self._outbox[identity] = ([], [])
        queued[0].append(encode(MsgType.CALL, call_id, payload))
        queued[1].append(call_id)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def send(self, identity: bytes, mtype: MsgType, call_id: int,
             payload: Mapping[str, Any]) -> None:
        """Send one message now, after the CALLs queued before it; raise WorkerLost."""
        if self._outbox:
            self._flush()
        try:
            self._send_frames(identity, encode(mtype, call_id, payload))
        finally:
            if self._reader is not None:
                self._reader.after_send()

    def send_quietly(self, identity: bytes, mtype: MsgType, call_id: int,
                     payload: Mapping[str, Any]) -> None:
        """`send`, for a message whose loss only matters to a worker that is gone."""
        try:
            self.send(identity, mtype, call_id, payload)
        except WorkerLost as exc:
            log.debug("could not send %s: %s", mtype.name, exc)

    def _flush(self) -> None:
        self._flush_scheduled = False
        outbox, self._outbox = self._outbox, {}
        for identity, (frames, call_ids) in outbox.items():
            for start, stop in batch_bounds(frames):
                try:
                    self._send_frames(identity, *frames[start:stop])
                except WorkerLost as exc:
                    for call_id in call_ids[start:stop]:
                        self._on_unsent(call_id, exc)
        if self._reader is not None:
            self._reader.after_send()

    def _send_frames(self, identity: bytes, *frames: bytes) -> None:
        """The one send path: one ZeroMQ message of `frames` (the caller runs
        `after_send` once it is done sending)."""
        sock = self._sock
        if sock is None:
            raise WorkerLost("cannot reach the worker: the hooks socket is closed")
        try:
            send_frames(sock, identity, *frames)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                self._on_unreachable(identity)
            raise WorkerLost(f"cannot reach the worker: {exc.strerror}") from None

    def _on_frames(self, frames: list[bytes]) -> None:
        """One ZeroMQ message from a peer: each frame is a message of its own."""
        identity = frames[0]
        if len(frames) > MAX_BATCH + 1:
            self._on_invalid(identity, None, ProtocolError(
                f"a batch of more than {MAX_BATCH} messages"))
            return
        limits, on_message = self._limits, self._on_message
        for index in range(1, len(frames)):
            frame = frames[index]
            try:
                message = decode_frame(frame, limits)
            except ProtocolError as exc:
                if not self._on_invalid(identity, frame, exc):
                    return
                continue
            on_message(identity, message)


def _remove_stale(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
