"""Hook calls waiting for their answer: call ids, deadlines, and matching answers.

Each call gets an id, a future and a deadline timer.  A REPLY or ERROR
resolves the call of its id if it came from the worker the call was sent to;
any other answer is late (after the deadline) or forged, and nobody waits for
it.  A worker's loss fails its calls at once, not at their deadlines.

`PendingCalls` is the only writer of the table; the hook client opens and
closes each call around its round trip (gateway/hooks.py).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

from config.apidef import HookDef
from gateway.hook_errors import HookCallError, HookTimeout, WorkerLost
from gateway.peers import Peer

__all__ = ["Pending", "PendingCalls"]


@dataclass(slots=True)
class Pending:
    call_id: int
    future: asyncio.Future[dict[str, Any]]  # resolves to the REPLY payload
    peer: Peer
    timer: asyncio.TimerHandle
    answered: bool = False  # the worker sent REPLY or ERROR: it no longer touches the slots
    #: An ANALYTICS batch, not a hook call: not in the hook counters, and not a call
    #: a draining worker waits to answer (the gateway sends it to the next one).
    analytics: bool = False


class PendingCalls:
    """Calls sent and not closed yet, by call id."""

    def __init__(self, stats: dict[str, int]) -> None:
        self._stats = stats  # counts replies, errors, late_replies, worker_lost
        self._pending: dict[int, Pending] = {}
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._pending)

    def open(self, loop: asyncio.AbstractEventLoop, peer: Peer, hook: HookDef,
             timeout_ms: int | None = None) -> Pending:
        """A new call to `peer`, failing with HookTimeout after the hook's timeout
        (`timeout_ms`: a merged call's, the sum of its hooks')."""
        call_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        ms = hook.timeout_ms if timeout_ms is None else timeout_ms
        timer = loop.call_later(ms / 1000, _expire, future, hook, ms)
        pending = self._pending[call_id] = Pending(call_id, future, peer, timer)
        return pending

    def open_analytics(self, loop: asyncio.AbstractEventLoop, peer: Peer,
                       timeout_s: float) -> Pending:
        """A new ANALYTICS batch to `peer`, failing with HookTimeout after `timeout_s`."""
        call_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        timer = loop.call_later(timeout_s, _fail_later, future, HookTimeout,
                                f"analytics batch unanswered after {timeout_s:g} s")
        pending = self._pending[call_id] = Pending(call_id, future, peer, timer, analytics=True)
        return pending

    def close(self, pending: Pending) -> None:
        """The caller is done with the call (answered, failed or given up)."""
        pending.timer.cancel()
        self._pending.pop(pending.call_id, None)

    def resolve(self, peer: Peer, call_id: int, obj: dict[str, Any] | None,
                error: HookCallError | None) -> bool:
        """An answer from `peer`; False when no open call of `peer` has that id."""
        pending = self._pending.get(call_id)
        if pending is None or pending.peer is not peer:
            self._stats["late_replies"] += 1
            return False
        pending.answered = True
        if pending.future.done():
            return True
        if error is None:
            assert obj is not None  # a REPLY's payload
            if not pending.analytics:
                self._stats["replies"] += 1
            pending.future.set_result(obj)
        else:
            if not isinstance(error, HookTimeout) and not pending.analytics:
                self._stats["errors"] += 1
            pending.future.set_exception(error)
        return True

    def fail(self, call_id: int, error: WorkerLost) -> None:
        """The call could not be sent."""
        pending = self._pending.get(call_id)
        if pending is not None and not pending.future.done():
            self._stats["worker_lost"] += 1
            pending.future.set_exception(error)

    def fail_peer(self, peer: Peer, reason: str) -> None:
        """`peer` is gone: its open calls fail now."""
        for pending in list(self._pending.values()):
            if pending.peer is peer and not pending.future.done():
                self._stats["worker_lost"] += 1
                pending.future.set_exception(WorkerLost(reason))

    def fail_all(self, reason: str) -> None:
        """The gateway is closing: every open call fails (not counted as a lost worker)."""
        for pending in list(self._pending.values()):
            _fail(pending.future, WorkerLost(reason))
        self._pending.clear()

    def has_calls(self, peer: Peer) -> bool:
        return any(pending.peer is peer for pending in self._pending.values())

    def call_ids(self, peer: Peer) -> list[int]:
        """The ids of `peer`'s open calls, in the order they were made."""
        return sorted(call_id for call_id, pending in self._pending.items()
                      if pending.peer is peer and not pending.analytics)


def _expire(future: asyncio.Future[Any], hook: HookDef, timeout_ms: int) -> None:
    # The error is built only when a call does time out: not on every call's path.
    _fail(future, HookTimeout(f"hook {hook.name} exceeded {timeout_ms} ms"))


def _fail_later(future: asyncio.Future[Any], kind: type[Exception], text: str) -> None:
    _fail(future, kind(text))


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
