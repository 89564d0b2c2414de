"""Answers to CALLs on their way out: sent now or in the leader's batch, and remembered.

Any thread may answer a call at once (`answer`): a call thread that is no
longer leading, the watchdog at a deadline, the event loop for an `async def`
hook.  The leading call thread instead holds its answers (`hold`) and sends
them together (`flush`): each send that finds the ZeroMQ I/O thread asleep
wakes it, and that wake-up cost more than a no-op hook (README, Performance),
so replies of CALLs read together leave together.

Every answered call goes into the `CallLedger`, which a drain consults.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable
from typing import Final

from worker.channel import Channel
from worker.dispatch import Outcome

__all__ = ["OUTBOX_HOLD_S", "OUTBOX_MAX", "Answers", "CallLedger"]

log = logging.getLogger("worker.calls")

#: Replies the leader holds back at most, and for how long at most.
OUTBOX_MAX: Final = 32
OUTBOX_HOLD_S: Final = 0.0005


class CallLedger:
    """Which CALLs this worker has answered lately, on any thread (thread-safe).

    A DRAIN lists the calls the gateway still waits for; the drain waits until
    each listed call is answered here, not merely until nothing runs (a listed
    call may still sit in the socket or the queue when the DRAIN is handled).
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


class Answers:
    """Sends answers; `hold`/`flush` belong to the leading call thread (under its lock)."""

    def __init__(self, channel: Channel, ledger: CallLedger) -> None:
        self._channel = channel
        self.ledger = ledger
        self._held: list[tuple[int, Outcome]] = []
        self._held_since = 0.0

    @property
    def held(self) -> int:
        return len(self._held)

    def overdue(self) -> bool:
        """Whether the oldest held answer waited OUTBOX_HOLD_S already."""
        return bool(self._held) and time.monotonic() - self._held_since > OUTBOX_HOLD_S

    def answer(self, call_id: int, outcome: Outcome) -> None:
        """Send one answer now (any thread)."""
        mtype, payload = outcome
        if not self._channel.send(mtype, call_id, payload):
            log.warning("answer to CALL %d could not be sent", call_id)
        self.ledger.answered(call_id)

    def hold(self, call_id: int, outcome: Outcome) -> int:
        """Keep an answer for the batch; how many it sent (a full batch leaves at once).

        An answer waits at most OUTBOX_HOLD_S plus one hook, or until a
        hand-off sends it.
        """
        if not self._held:
            self._held_since = time.monotonic()
        self._held.append((call_id, outcome))
        return self.flush() if len(self._held) >= OUTBOX_MAX else 0

    def flush(self) -> int:
        """Send the held answers; how many they were."""
        if not self._held:
            return 0
        batch, self._held = self._held, []
        sent = self._channel.send_many([(mtype, call_id, payload)
                                        for call_id, (mtype, payload) in batch])
        if sent < len(batch):
            log.warning("%d answer(s) could not be sent", len(batch) - sent)
        for call_id, _ in batch:
            self.ledger.answered(call_id)
        return len(batch)
