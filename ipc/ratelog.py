"""Log a repeated failure once per interval, with how many were held back.

A failure that repeats per request or per datagram (a FATAL worker, a peer
sending garbage) must not write a line each time: 200k lines a minute hide
everything else and cost a core.  `Throttle` says when the next line is due
and how many occurrences it stands for.

    throttle = Throttle(10.0)
    ...
    held = throttle.due()
    if held is not None:
        log.warning("worker unavailable (%d more in the last interval)", held)
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Throttle"]


class Throttle:
    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval, self._clock = interval_s, clock
        self._next: float | None = None  # None: the first occurrence is always logged
        self._held = 0

    def due(self) -> int | None:
        """Count one occurrence; the number held back since the last line if one is
        due now (0 for the first), else None (stay quiet)."""
        now = self._clock()
        if self._next is not None and now < self._next:
            self._held += 1
            return None
        held, self._held = self._held, 0
        self._next = now + self._interval
        return held
