"""Bookkeeping of hot restarts: the candidate, the retiring generations, the reloads.

At most one reload runs.  Its *candidate* (generation N+1) boots beside the
active worker.  When the candidate is admitted, the active generation leaves
the worker slot and is *outgoing*: it serves on until the gateway makes N+1
active and tells it to DRAIN, so its exit 0 from then on is expected.  When
the candidate is ready it takes the slot and the outgoing generation is
*retiring*: it has until its deadline to exit 0.  Reloads asked for while
one runs are folded into one follow-up.  This class only keeps state and
answers questions; `HotRestart` spawns, signals and talks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from supervisor.child import ChildProcess, ChildState
from supervisor.exits import ExitStatus
from supervisor.reload import Reload, Waiter

__all__ = ["Handover"]


class Handover:
    def __init__(self, retire_grace_s: float) -> None:
        self._retire_grace = retire_grace_s
        self.candidate: ChildProcess | None = None
        #: The previous generation, out of the slot since the candidate's admission.
        self.outgoing: ChildProcess | None = None
        self.retiring: dict[ChildProcess, float] = {}  # -> drain deadline
        self.reload: Reload | None = None
        self.last: dict[str, Any] | None = None
        self._followers: list[Waiter] | None = None
        self.count = 0  # hot restarts done

    def children(self) -> Iterator[ChildProcess]:
        if self.candidate is not None:
            yield self.candidate
        if self.outgoing is not None:
            yield self.outgoing
        yield from list(self.retiring)

    def follow(self, waiter: Waiter | None) -> None:
        """Another reload was asked for while one runs: it runs after it."""
        self._followers = self._followers or []
        if waiter is not None:
            self._followers.append(waiter)

    def begin(self, reload: Reload, candidate: ChildProcess) -> None:
        self.reload, self.candidate = reload, candidate

    def hold(self, old: ChildProcess | None) -> None:
        """The candidate is admitted: `old` leaves the slot (it serves on meanwhile)."""
        self.outgoing = old

    def take_outgoing(self) -> ChildProcess | None:
        """The reload failed: the outgoing generation goes back to the slot."""
        old, self.outgoing = self.outgoing, None
        return old

    def adopted(self, now: float) -> ChildProcess | None:
        """The candidate is active: the outgoing generation (if any) retires."""
        old, self.candidate, self.outgoing = self.outgoing, None, None
        if old is not None:
            old.retire()
            self.retiring[old] = now + self._retire_grace
        self.count += 1
        return old

    def overdue(self, now: float) -> list[ChildProcess]:
        """Retiring generations still draining past their deadline."""
        return [c for c, deadline in self.retiring.items()
                if now >= deadline and c.state is ChildState.STOPPING]

    def finish(self, reload: Reload, error: str = "") -> list[Waiter] | None:
        """Record the outcome; the waiters of a follow-up reload, if one is due."""
        reload.finish(error)
        self.last = reload.outcome()
        if self.reload is not reload:
            return None
        self.reload = None
        followers, self._followers = self._followers, None
        return followers

    def reap_candidate(self) -> tuple[ChildProcess, ExitStatus] | None:
        candidate = self.candidate
        status = candidate.reap() if candidate is not None else None
        if candidate is None or status is None:
            return None
        self.candidate = None
        return candidate, status

    def reap_retiring(self) -> list[tuple[ChildProcess, ExitStatus]]:
        """Retiring and outgoing generations that exited."""
        done = []
        outgoing = self.outgoing
        status = outgoing.reap() if outgoing is not None else None
        if outgoing is not None and status is not None:
            self.outgoing = None
            done.append((outgoing, status))
        for child in list(self.retiring):
            status = child.reap()
            if status is not None:
                del self.retiring[child]
                done.append((child, status))
        return done

    def clear(self) -> None:
        self.candidate = self.outgoing = None
        self.retiring.clear()
