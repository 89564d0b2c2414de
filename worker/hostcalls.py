"""Plugin -> gateway calls (HOST_CALL / HOST_REPLY), from any thread, with deadlines.

Every op is sent right from the hook's thread (the channel's `send` is
thread-safe), so a `log` leaves before the hook's REPLY.  Request/reply ops
(`store_data`, `get_data`) wait on a future that the call thread reading the
socket resolves when the HOST_REPLY (or an ERROR) arrives: reader to hook
thread, one hand-off, with no trip through the event loop.  Before a hook
thread blocks on a reply it calls `before_blocking`, so that another call
thread reads the socket (the reply among the rest) meanwhile.  A reply is
matched by the `call_id` this module picked; one that never comes fails the
plugin's call with `HostCallError` at the deadline instead of blocking its
thread forever.  `async def` hooks await the same future on the loop
(`arequest`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ipc.protocol import ErrorCode, MsgType

__all__ = ["DEFAULT_TIMEOUT_S", "HostCallError", "HostCalls", "SendFn"]

log = logging.getLogger("worker.hostcalls")

#: Deadline of a request/reply host call when the caller gives none.
DEFAULT_TIMEOUT_S = 2.0

#: Sends one message from any thread; False when it could not be queued.
SendFn = Callable[[MsgType, int, Mapping[str, Any]], bool]


class HostCallError(RuntimeError):
    """A host call could not be served: no gateway, no answer in time, or refused."""

    def __init__(self, message: str, code: str = ErrorCode.HOST_CALL_FAILED) -> None:
        super().__init__(message)
        self.code = code


class HostCalls:
    """The worker's side of host calls; `bind` it to the running loop first."""

    def __init__(self, send: SendFn | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._send: SendFn = send or _unconnected
        self.timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        # Written by the calling threads, read by the reading one: single dict
        # operations, atomic under the GIL.
        self._pending: dict[int, concurrent.futures.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        #: Called on the hook's thread right before it waits for a reply.
        self.before_blocking: Callable[[], None] | None = None

    def bind(self, loop: asyncio.AbstractEventLoop, send: SendFn | None = None) -> None:
        """Called on the loop thread once the channel (`send`) exists."""
        self._loop = loop
        if send is not None:
            self._send = send
        self._loop_thread = threading.get_ident()

    @property
    def available(self) -> bool:
        return self._loop is not None and not self._loop.is_closed()

    @property
    def pending(self) -> int:
        return len(self._pending)

    # --- plugin side (any thread) ------------------------------------------------------

    def notify(self, op: str, fields: Mapping[str, Any]) -> None:
        """Fire-and-forget (`call_id` 0); raises HostCallError when there is no loop."""
        self._require_loop()
        self._send_notify({"op": op, **fields})

    def request(self, op: str, fields: Mapping[str, Any],
                timeout_s: float | None = None) -> dict[str, Any]:
        """Blocking request/reply from a hook thread, bounded by the deadline."""
        self._require_loop()
        if threading.get_ident() == self._loop_thread:
            # It would hold up the whole loop (heartbeats, async hooks) meanwhile.
            raise HostCallError(
                f"{op}: a blocking host call from the event loop (an async hook?) would "
                f"stall the worker; use `await TykGateway.{op}_async(...)` in async hooks")
        timeout = self.timeout_s if timeout_s is None else timeout_s
        if self.before_blocking is not None:
            self.before_blocking()
        call_id, future = self._start(op, fields)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise HostCallError(f"{op}: no answer from the gateway within "
                                f"{timeout:.1f} s") from None
        finally:
            self._pending.pop(call_id, None)

    async def arequest(self, op: str, fields: Mapping[str, Any],
                       timeout_s: float | None = None) -> dict[str, Any]:
        """Request/reply on the loop thread (for async hooks)."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        call_id, future = self._start(op, fields)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError:
            raise HostCallError(f"{op}: no answer from the gateway within "
                                f"{timeout:.1f} s") from None
        finally:
            self._pending.pop(call_id, None)

    def _start(self, op: str, fields: Mapping[str, Any]
               ) -> tuple[int, concurrent.futures.Future[dict[str, Any]]]:
        """Send the HOST_CALL, its reply future registered first (the reply may be quick)."""
        call_id = next(self._ids)
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        self._pending[call_id] = future
        if not self._send(MsgType.HOST_CALL, call_id, {"op": op, **fields}):
            self._pending.pop(call_id, None)
            raise HostCallError(f"{op}: the gateway is not reachable")
        return call_id, future

    # --- channel side (the reading call thread) ----------------------------------------

    def resolve(self, call_id: int, payload: dict[str, Any]) -> bool:
        """A HOST_REPLY arrived; False when nobody waits for it (late or unknown)."""
        future = self._pending.get(call_id)
        if future is None:
            return False
        try:
            future.set_result(payload)
        except concurrent.futures.InvalidStateError:
            return False  # timed out (cancelled) meanwhile
        return True

    def fail(self, call_id: int, message: str, code: str = ErrorCode.HOST_CALL_FAILED) -> bool:
        """An ERROR answering one of our HOST_CALLs arrived."""
        future = self._pending.get(call_id)
        if future is None:
            return False
        try:
            future.set_exception(HostCallError(message, code))
        except concurrent.futures.InvalidStateError:
            return False
        return True

    def fail_all(self, reason: str) -> None:
        for future in list(self._pending.values()):
            try:
                future.set_exception(HostCallError(reason))
            except concurrent.futures.InvalidStateError:
                pass  # answered or timed out meanwhile

    def _send_notify(self, payload: dict[str, Any]) -> None:
        if not self._send(MsgType.HOST_CALL, 0, payload):
            log.debug("host call %s dropped: gateway not reachable", payload.get("op"))

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or loop.is_closed():
            raise HostCallError("host calls are not available yet (plugins are still "
                                "loading, or the worker is stopping)")
        return loop


def _unconnected(mtype: MsgType, call_id: int, payload: Mapping[str, Any]) -> bool:
    return False
