"""The worker's end of the hooks socket: one ZeroMQ DEALER shared by the worker's threads.

ZeroMQ sockets are not thread-safe, but they may be used from several threads
one at a time; here every `send` and every receive happens under one lock.
Reading is the job of exactly one thread at a time, the *reader* (the leading
call thread, worker/callthreads.py): it drains what is waiting, and when
nothing is, it blocks in `poll` on the socket's ZMQ_FD and on a wake-up
eventfd, without holding the lock.

ZMQ_FD is edge-triggered and any socket operation can consume its edge, so
a send from a thread other than the reader pokes the eventfd: the reader then
drains again instead of sleeping on an edge that already passed.  The
reader's own sends need no poke, since it always drains before it blocks.

Sends never block: with `IMMEDIATE` set, a message is only queued for a
connected gateway, and one that cannot be queued (gateway gone, or not
reading) is dropped and reported as `False`.  The protocol is built for that:
HELLO is resent until answered, heartbeats are periodic, and a gateway that
lost a REPLY has already timed the call out.  Everything received goes through
`ipc.protocol.decode`; invalid messages are logged and dropped.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Mapping
from typing import Any, Final, cast

import zmq

from ipc.memtune import tune_for_large_buffers
from ipc.protocol import DEFAULT_LIMITS, Limits, Message, MsgType, ProtocolError, decode, encode
from ipc.zmqio import recv_frames, send_frames

__all__ = ["Channel"]

log = logging.getLogger("worker.channel")

#: Outgoing messages ZeroMQ may queue for a slow gateway before sends fail.
SEND_HWM: Final = 100_000
#: Messages taken off the socket per drain; the rest wait for the next one.
MAX_BATCH: Final = 256


class Channel:
    """One DEALER connected to the gateway's ROUTER; `send` from any thread."""

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
        self._lock = threading.Lock()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._zmq_fd = cast(int, sock.getsockopt(zmq.FD))
        # A poll object per reading thread: one may not be polled from two threads at
        # once, and the call threads' stand-in reader may overlap a call thread taking
        # the reading back for a moment (worker/callthreads.py).
        self._polls = threading.local()
        self._closed = False
        #: `threading.get_ident()` of the thread that reads now (None: nobody).
        self.reader: int | None = None
        self.dropped = 0
        self.invalid = 0

    def send(self, mtype: MsgType, call_id: int, payload: Mapping[str, Any]) -> bool:
        """Queue one message without waiting; False when it could not be queued."""
        return self.send_many([(mtype, call_id, payload)]) == 1

    def send_many(self, messages: list[tuple[MsgType, int, Mapping[str, Any]]]) -> int:
        """Queue messages in order under one lock; how many were queued (a full or
        gone gateway stops the batch: the rest count as dropped)."""
        encoded = []
        for mtype, call_id, payload in messages:
            try:
                encoded.append(encode(mtype, call_id, payload))
            except (TypeError, ValueError, OverflowError) as exc:
                log.error("cannot encode %s: %s", mtype.name, exc)
        sent = 0
        with self._lock:
            if self._closed:
                return 0
            for frames in encoded:
                try:
                    send_frames(self._sock, *frames)
                except zmq.Again:
                    self.dropped += len(encoded) - sent  # the gateway is not reading
                    break
                except zmq.ZMQError as exc:
                    self.dropped += len(encoded) - sent
                    log.warning("sending %d message(s) failed: %s", len(encoded) - sent, exc)
                    break
                sent += 1
        if threading.get_ident() != self.reader:
            self.poke()  # the send may have consumed ZMQ_FD's edge: the reader looks again
        return sent

    def receive(self, timeout_s: float) -> list[Message]:
        """Valid messages waiting now, else those arriving within `timeout_s` (reader only).

        Returns early, possibly with nothing, when poked.
        """
        messages = self._drain()
        if messages or self._closed:
            return messages
        poller: select.poll | None = getattr(self._polls, "poll", None)
        if poller is None:
            poller = self._polls.poll = select.poll()
            poller.register(self._zmq_fd, select.POLLIN)
            poller.register(self._wake, select.POLLIN)
        poller.poll(int(timeout_s * 1000))
        try:
            os.eventfd_read(self._wake)
        except BlockingIOError:
            pass  # not poked: the socket is readable, or the poll timed out
        return self._drain()

    def poke(self) -> None:
        """Wake the reader out of `receive` (it drains the socket again)."""
        if self._closed:
            return
        try:
            os.eventfd_write(self._wake, 1)
        except OSError:
            pass  # closed: nobody reads any more

    def close(self, linger_ms: int = 0) -> None:
        """Close; `linger_ms` lets already queued messages (DRAIN_ACK) go out first."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._sock.close(linger=linger_ms)
        self.poke()
        self._ctx.term()
        os.close(self._wake)

    def _drain(self) -> list[Message]:
        batch: list[list[bytes]] = []
        with self._lock:
            if self._closed:
                return []
            sock = self._sock
            try:
                while len(batch) < MAX_BATCH:
                    batch.append(recv_frames(sock))
            except zmq.Again:
                pass
        messages = []
        for frames in batch:
            try:
                messages.append(decode(frames, self.limits))
            except ProtocolError as exc:
                self.invalid += 1
                log.warning("dropped an invalid message from the gateway (%s): %s",
                            self.endpoint, exc)
        return messages
