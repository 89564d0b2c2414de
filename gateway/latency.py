"""A cheap latency histogram for the hook round trip (reported by /hello).

Values are whole microseconds, kept with 5 significant bits (at most ~3 %
error): a couple of integer operations and one dict increment per call, and
a bounded number of buckets (about 32 per power of two up to the largest
value seen), so it can stay on the hot path of every hook call.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Histogram"]

_KEEP_BITS = 5


class Histogram:
    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self.count = 0

    def record_ns(self, elapsed_ns: int) -> None:
        micros = elapsed_ns // 1000
        width = micros.bit_length()
        if width > _KEEP_BITS:
            shift = width - _KEEP_BITS
            micros = (micros >> shift) << shift
        counts = self._counts
        counts[micros] = counts.get(micros, 0) + 1
        self.count += 1

    def percentile(self, fraction: float) -> int:
        """The bucket value at `fraction` (0..1) of the recorded calls; 0 when empty."""
        if not self.count:
            return 0
        rank = max(1, round(fraction * self.count))
        seen = 0
        for value in sorted(self._counts):
            seen += self._counts[value]
            if seen >= rank:
                return value
        return max(self._counts)

    def reset(self) -> None:
        self._counts.clear()
        self.count = 0

    def summary(self) -> dict[str, Any]:
        return {"count": self.count, "p50": self.percentile(0.5),
                "p90": self.percentile(0.9), "p99": self.percentile(0.99)}
