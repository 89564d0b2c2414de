"""The worker's end of one hooks socket: a ZeroMQ DEALER shared by the worker's threads.

The worker holds one channel per gateway process (worker/uplinks.py).
ZeroMQ sockets are not thread-safe, but they may be used from several threads
one at a time; here every `send` and every `drain` of a channel happens under
its lock.  Reading is the job of exactly one thread at a time for *all* the
channels, the *reader* (the leading call thread, worker/callthreads.py): it
drains the channels that may hold messages (`pending`), and when none has
anything, it blocks in one `poll` on every channel's ZMQ_FD and on one
wake-up eventfd (`Waker`), without holding any lock (worker/inbox.py).

ZMQ_FD is edge-triggered and any socket operation can consume its edge, so
a send from a thread other than the reader marks its channel `pending` and
pokes the shared `Waker`: the reader then drains it again instead of sleeping
on an edge that already passed.
The reader's own sends need no poke, since it always drains before it blocks.

Sends never block: with `IMMEDIATE` set, a message is only queued for a
connected gateway, and one that cannot be queued (gateway gone, or not
reading) is dropped and reported as `False`.  The protocol is built for that:
HELLO is resent until answered, heartbeats are periodic, and a gateway that
lost a REPLY has already timed the call out.  Messages sent together
(`send_many`: a batch of answers) leave as one ZeroMQ message, one frame
each (ipc/protocol.py).  Every frame received goes through
`ipc.protocol.decode_frame`; invalid messages are logged and dropped.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any, Final, cast

import zmq

from ipc.memtune import tune_for_large_buffers
from ipc.protocol import (
    DEFAULT_LIMITS,
    MAX_BATCH,
    Limits,
    Message,
    MsgType,
    ProtocolError,
    decode_frame,
    encode,
)
from ipc.zmqio import batch_bounds, recv_frames, send_frames

__all__ = ["Channel", "Waker"]

log = logging.getLogger("worker.channel")

#: Outgoing messages ZeroMQ may queue for a slow gateway before sends fail.
SEND_HWM: Final = 100_000
#: Messages a drain takes off the socket, about: it stops after the batch that
#: reaches this many; the rest wait for the next drain.
MAX_DRAIN: Final = 256


class Waker:
    """The reader's wake-up eventfd and who the reader is, shared by the channels it reads."""

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        #: `threading.get_ident()` of the thread that reads now (None: nobody).
        self.reader: int | None = None
        self._closed = False

    def poke(self) -> None:
        """Wake the reader out of its `poll` (it drains every channel again)."""
        if self._closed:
            return
        try:
            os.eventfd_write(self.fd, 1)
        except OSError:
            pass  # closed: nobody reads any more

    def consume(self) -> None:
        """Reset after a `poll` (the reader drains next, whatever woke it)."""
        try:
            os.eventfd_read(self.fd)
        except (BlockingIOError, OSError):
            pass  # not poked: a socket is readable, or the poll timed out

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.fd)


class Channel:
    """One DEALER connected to the gateway's ROUTER; `send` from any thread.

    `waker`: the reader's, shared with the other channels it reads; `context`:
    the ZeroMQ context, shared by the worker's channels so that one ZeroMQ I/O
    thread serves every socket (a channel without them gets its own, closed
    with it).
    """

    def __init__(self, endpoint: str, limits: Limits = DEFAULT_LIMITS,
                 waker: Waker | None = None,
                 context: zmq.Context[zmq.Socket[bytes]] | None = None) -> None:
        self.endpoint = endpoint
        self.limits = limits
        tune_for_large_buffers()  # messages and bodies of megabytes: see ipc/memtune.py
        # A fresh context per process: ZeroMQ contexts must not cross a fork.
        self._own_ctx = context is None
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context() if context is None else context
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        sock.connect(endpoint)
        self._sock = sock
        self._lock = threading.Lock()
        self._own_waker = waker is None
        self.waker = Waker() if waker is None else waker
        #: Readable (edge-triggered) when the socket may have something to drain.
        self.zmq_fd = cast(int, sock.getsockopt(zmq.FD))
        self._closed = False
        #: Whether the socket may hold messages, so that a drain must look: set by every
        #: socket operation (each may consume ZMQ_FD's edge) and by the reader's poll
        #: seeing ZMQ_FD readable, cleared by a drain that found the socket empty.
        #: The reader of several sockets skips the others (each empty look costs a
        #: ZeroMQ command check, two syscalls and a Python exception).
        self.pending = True
        self.dropped = 0
        self.invalid = 0

    def send(self, mtype: MsgType, call_id: int, payload: Mapping[str, Any]) -> bool:
        """Queue one message without waiting; False when it could not be queued."""
        return self.send_many([(mtype, call_id, payload)]) == 1

    def send_many(self, messages: list[tuple[MsgType, int, Mapping[str, Any]]]) -> int:
        """Queue messages in order under one lock; how many were queued (a full or
        gone gateway stops the batch: the rest count as dropped)."""
        encoded: list[bytes] = []
        for mtype, call_id, payload in messages:
            try:
                encoded.append(encode(mtype, call_id, payload))
            except (TypeError, ValueError, OverflowError) as exc:
                log.error("cannot encode %s: %s", mtype.name, exc)
        sent = 0
        with self._lock:
            if self._closed:
                return 0
            self.pending = True
            # One ZeroMQ message per batch: one hand-off to the I/O thread each.
            for start, stop in batch_bounds(encoded):
                batch = encoded[start:stop]
                try:
                    send_frames(self._sock, *batch)
                except zmq.Again:
                    self.dropped += len(encoded) - sent  # the gateway is not reading
                    break
                except zmq.ZMQError as exc:
                    self.dropped += len(encoded) - sent
                    log.warning("sending %d message(s) failed: %s", len(encoded) - sent, exc)
                    break
                sent += len(batch)
        waker = self.waker
        if threading.get_ident() != waker.reader:
            waker.poke()  # the send may have consumed ZMQ_FD's edge: the reader looks again
        return sent

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, linger_ms: int = 0) -> None:
        """Close; `linger_ms` lets already queued messages (DRAIN_ACK) go out first."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._sock.close(linger=linger_ms)
        self.waker.poke()  # a reader still polling this socket's fd looks again
        if self._own_ctx:
            self._ctx.term()
        if self._own_waker:
            self.waker.close()

    def drain(self) -> list[Message]:
        """The valid messages waiting now, about MAX_DRAIN at most (the reader only)."""
        frames: list[bytes] = []
        overlong = 0
        with self._lock:
            if self._closed:
                return []
            sock = self._sock
            try:
                while len(frames) < MAX_DRAIN:
                    batch = recv_frames(sock)
                    if len(batch) > MAX_BATCH:  # not a batch the gateway sends
                        overlong += 1
                    else:
                        frames.extend(batch)
            except zmq.Again:
                self.pending = False  # until an operation or ZMQ_FD says otherwise
        if overlong:
            self.invalid += overlong
            log.warning("dropped %d batch(es) of more than %d messages from the gateway (%s)",
                        overlong, MAX_BATCH, self.endpoint)
        messages = []
        limits = self.limits
        for frame in frames:
            try:
                messages.append(decode_frame(frame, limits))
            except ProtocolError as exc:
                self.invalid += 1
                log.warning("dropped an invalid message from the gateway (%s): %s",
                            self.endpoint, exc)
        return messages
