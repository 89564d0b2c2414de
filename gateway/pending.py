"""Hook calls waiting for their answer: call ids, deadlines, and matching answers.

Each call gets an id, a future and a deadline.  A REPLY or ERROR resolves
the call of its id if it came from the worker the call was sent to; any
other answer is late (after the deadline) or forged, and nobody waits for
it.  A worker's loss fails its calls at once, not at their deadlines.

Deadlines are kept in one queue per timeout length (`Deadlines`), not one
loop timer per call: calls with the same timeout expire in the order they
were made, so each queue needs one timer, armed for its oldest call.  A
timer per call (create, then cancel: nearly every call is answered) was a
measurable part of a hook round trip.

`PendingCalls` is the only writer of the table; the hook client opens and
closes each call around its round trip (gateway/hooks.py).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
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
    hook: str  # the hook's name ("": an analytics batch)
    timeout_ms: int
    answered: bool = False  # the worker sent REPLY or ERROR: it no longer touches the slots
    #: An ANALYTICS batch, not a hook call: not in the hook counters, and not a call
    #: a draining worker waits to answer (the gateway sends it to the next one).
    analytics: bool = False

    def timed_out(self) -> HookTimeout:
        """What it fails with at its deadline (made only then, not on every call's path)."""
        if self.analytics:
            return HookTimeout(f"analytics batch unanswered after {self.timeout_ms / 1000:g} s")
        return HookTimeout(f"hook {self.hook} exceeded {self.timeout_ms} ms")


class Deadlines:
    """Open calls' deadlines: a queue per timeout length, each with one timer.

    Calls of one queue are appended in the order they were made, so their
    deadlines only grow: the timer is armed for the oldest, and when it fires
    the calls closed meanwhile are dropped and the overdue ones expire.  A
    queue holds (deadline, call id) only, never the call: a closed call is
    freed at once, and its entry leaves when the timer passes it or when the
    queue is compacted (it holds many more entries than calls are open).
    """

    def __init__(self, table: dict[int, Pending]) -> None:
        self._table = table  # the open calls (PendingCalls owns it)
        self._queues: dict[float, _Queue] = {}

    def add(self, loop: asyncio.AbstractEventLoop, call_id: int, seconds: float) -> None:
        """Call `call_id` expires `seconds` from now unless it is closed first."""
        queue = self._queues.get(seconds)
        if queue is None:
            queue = self._queues[seconds] = _Queue(loop, self._table)
        queue.add(loop.time() + seconds, call_id)

    def clear(self) -> None:
        for queue in self._queues.values():
            queue.clear()
        self._queues.clear()


#: A queue is compacted (entries of closed calls dropped) once it holds this many, or
#: twice as many as it kept at its last compaction: a linear pass every so many calls.
_COMPACT_MIN = 256


class _Queue:
    __slots__ = ("_compact_at", "_entries", "_loop", "_table", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, table: dict[int, Pending]) -> None:
        self._loop = loop
        self._table = table
        self._entries: deque[tuple[float, int]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._compact_at = _COMPACT_MIN

    def add(self, deadline: float, call_id: int) -> None:
        entries = self._entries
        entries.append((deadline, call_id))
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._fire)
        elif len(entries) >= self._compact_at:
            table = self._table
            kept = self._entries = deque(e for e in entries if e[1] in table)
            self._compact_at = max(_COMPACT_MIN, 2 * len(kept))

    def _fire(self) -> None:
        self._timer = None
        entries, table, now = self._entries, self._table, self._loop.time()
        while entries:
            deadline, call_id = entries[0]
            pending = table.get(call_id)
            if pending is not None:
                if deadline > now:
                    self._timer = self._loop.call_at(deadline, self._fire)
                    return
                _fail(pending.future, pending.timed_out())
            entries.popleft()

    def clear(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._entries.clear()


class PendingCalls:
    """Calls sent and not closed yet, by call id."""

    def __init__(self, stats: dict[str, int]) -> None:
        self._stats = stats  # counts replies, errors, late_replies, worker_lost
        self._pending: dict[int, Pending] = {}
        self._ids = itertools.count(1)
        self._deadlines = Deadlines(self._pending)

    def __len__(self) -> int:
        return len(self._pending)

    def open(self, loop: asyncio.AbstractEventLoop, peer: Peer, hook: HookDef,
             timeout_ms: int | None = None) -> Pending:
        """A new call to `peer`, failing with HookTimeout after the hook's timeout
        (`timeout_ms`: a merged call's, the sum of its hooks')."""
        call_id = next(self._ids)
        ms = hook.timeout_ms if timeout_ms is None else timeout_ms
        pending = self._pending[call_id] = Pending(call_id, loop.create_future(), peer,
                                                   hook.name, ms)
        self._deadlines.add(loop, call_id, ms / 1000)
        return pending

    def open_analytics(self, loop: asyncio.AbstractEventLoop, peer: Peer,
                       timeout_s: float) -> Pending:
        """A new ANALYTICS batch to `peer`, failing with HookTimeout after `timeout_s`."""
        call_id = next(self._ids)
        pending = self._pending[call_id] = Pending(call_id, loop.create_future(), peer, "",
                                                   round(timeout_s * 1000), analytics=True)
        self._deadlines.add(loop, call_id, timeout_s)
        return pending

    def close(self, pending: Pending) -> None:
        """The caller is done with the call (answered, failed or given up)."""
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
        self._deadlines.clear()

    def has_calls(self, peer: Peer) -> bool:
        return any(pending.peer is peer for pending in self._pending.values())

    def call_ids(self, peer: Peer) -> list[int]:
        """The ids of `peer`'s open calls, in the order they were made."""
        return sorted(call_id for call_id, pending in self._pending.items()
                      if pending.peer is peer and not pending.analytics)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
