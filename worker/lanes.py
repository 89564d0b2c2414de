"""Lanes: hook threads that own a DEALER socket each, so a plain hook skips two hops.

Without lanes a CALL for a plain (non-async) hook crosses the worker's event
loop twice: loop -> thread pool -> loop -> socket.  Each cross-thread wake-up
costs tens of microseconds, and the profile of the hook round trip
(README, Performance) showed those hand-offs, not our code, dominate.  A lane
is one thread blocked on its own socket: the gateway sends a CALL straight to
an idle lane, the lane runs the hook in place and answers on the same socket.

The event loop keeps everything else: admission of the worker, heartbeats,
DRAIN, host calls, `async def` hooks, and CALLs that arrive while every lane
is busy (the gateway sends those on the main connection, which uses the
thread pool).  A lane says HELLO with its number after the main connection
was welcomed; the gateway then treats it as another route to the same worker
generation (docs/PROTOCOL.md, "Lanes").
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import zmq

from ipc.protocol import ErrorCode, Limits, MsgType, ProtocolError, decode, encode
from worker.dispatch import Dispatcher, Outcome, error

__all__ = ["CallLedger", "Lanes"]

log = logging.getLogger("worker.lanes")

#: How often an unwelcomed lane repeats its HELLO, and how long a poll lasts
#: (the bound on noticing `stop`).
HELLO_INTERVAL_S: Final = 0.2
POLL_MS: Final = 100
#: How long `stop` waits for the lane threads to leave.
JOIN_S: Final = 1.0


class CallLedger:
    """Which CALLs this worker has answered lately, on any socket (thread-safe).

    A DRAIN lists the calls the gateway still waits for; on lanes some of them
    may arrive after the DRAIN itself (another socket), so the drain waits until
    each listed call is answered here, not merely until nothing runs.
    """

    def __init__(self, remember: int = 65536) -> None:
        self._lock = threading.Lock()
        self._answered: set[int] = set()
        self._order: collections.deque[int] = collections.deque()
        self._remember = remember

    def answered(self, call_id: int) -> None:
        with self._lock:
            self._answered.add(call_id)
            self._order.append(call_id)
            if len(self._order) > self._remember:
                self._answered.discard(self._order.popleft())

    def missing(self, call_ids: Iterable[int]) -> set[int]:
        with self._lock:
            return {c for c in call_ids if c not in self._answered}


class Lanes:
    """`count` lane threads; start them once the gateway welcomed the worker."""

    def __init__(self, endpoint: str, limits: Limits, count: int, dispatcher: Dispatcher,
                 hello: Callable[[], dict[str, Any]], ledger: CallLedger) -> None:
        self._endpoint, self._limits, self._count = endpoint, limits, count
        self._dispatcher, self._hello, self._ledger = dispatcher, hello, ledger
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._resync = [threading.Event() for _ in range(count)]
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.inflight = 0
        self.calls = 0

    @property
    def started(self) -> bool:
        return bool(self._threads)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._threads or self._count <= 0:
            return
        self._loop = loop
        self._ctx = zmq.Context()
        for index in range(self._count):
            thread = threading.Thread(target=self._run, args=(index,), daemon=True,
                                      name=f"coproc-lane-{index + 1}")
            self._threads.append(thread)
            thread.start()
        log.info("%d lane(s) started", self._count)

    def resync(self) -> None:
        """The gateway forgot us (it restarted): every lane says HELLO again."""
        for flag in self._resync:
            flag.set()

    def stop(self) -> None:
        self._stop.set()
        deadline = time.monotonic() + JOIN_S
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._ctx is not None and not any(t.is_alive() for t in self._threads):
            self._ctx.term()
        # Otherwise a lane is still inside a hook, its socket open: the process is
        # exiting (worker/main.py ends hung hook threads), so leave the context be.
        self._ctx = None

    # -- one lane -----------------------------------------------------------------------

    def _run(self, index: int) -> None:
        assert self._ctx is not None  # start() made it before the threads
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self._endpoint)
        try:
            self._serve(index, sock)
        except zmq.ZMQError as exc:
            if not self._stop.is_set():
                log.warning("lane %d stopped: %s", index + 1, exc)
        finally:
            sock.close(linger=0)

    def _serve(self, index: int, sock: zmq.Socket[bytes]) -> None:
        welcomed, next_hello = False, 0.0
        main = self._hello()
        hello = {"generation": main["generation"], "pid": main["pid"], "token": main["token"],
                 "lane": index + 1}
        while not self._stop.is_set():
            if self._resync[index].is_set():
                self._resync[index].clear()
                welcomed, next_hello = False, 0.0
            now = time.monotonic()
            if not welcomed and now >= next_hello:
                _send(sock, MsgType.HELLO, 0, hello)
                next_hello = now + HELLO_INTERVAL_S
            if not sock.poll(POLL_MS if welcomed else 20):
                continue
            try:
                message = decode(sock.recv_multipart(zmq.NOBLOCK), self._limits)
            except zmq.Again:
                continue
            except ProtocolError as exc:
                log.warning("lane %d dropped an invalid message: %s", index + 1, exc)
                continue
            if message.type is MsgType.WELCOME:
                welcomed = True
            elif message.type is MsgType.RESYNC:
                welcomed, next_hello = False, 0.0
            elif message.type is MsgType.REJECT:
                log.warning("lane %d rejected: %s", index + 1, message.payload["reason"])
                return
            elif message.type is MsgType.CALL:
                # Served even while the worker drains: the gateway sent it while
                # this worker was active, and the DRAIN's list waits for it.
                mtype, payload = self._call(message.payload)
                _send(sock, mtype, message.call_id, payload)
                self._ledger.answered(message.call_id)

    def _call(self, payload: Mapping[str, Any]) -> Outcome:
        with self._lock:
            self.inflight += 1
            self.calls += 1
        try:
            assert self._loop is not None  # set by start()
            return self._dispatcher.call_on_lane(payload, self._loop)
        except Exception as exc:  # the dispatcher turns hook errors into ERRORs already
            log.exception("a CALL failed inside lane")
            return error(ErrorCode.HOOK_FAILED, f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self.inflight -= 1


def _send(sock: zmq.Socket[bytes], mtype: MsgType, call_id: int,
          payload: Mapping[str, Any]) -> None:
    try:
        sock.send_multipart(encode(mtype, call_id, payload), zmq.DONTWAIT)
    except zmq.Again:
        log.warning("lane could not send %s: the gateway is not reading", mtype.name)
