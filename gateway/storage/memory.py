"""The embedded backend: dicts in the gateway process, for one instance.

The event loop is single-threaded and no method awaits between reading and
writing a counter, so the counters are exact without locks.  Expired entries
are dropped when read, and `sweep` (run periodically) removes those nobody
reads, in time proportional to what expired.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import logging
import re
import time
from collections.abc import Callable

from gateway.storage.base import Hit

__all__ = ["MemoryStorage", "MemoryStore"]

log = logging.getLogger("coproc.gateway.storage")


#: Redis counters are signed 64-bit.
_INT64_MAX = (1 << 63) - 1
_INTEGER = re.compile(rb"-?(0|[1-9][0-9]{0,18})")


def _redis_integer(value: bytes) -> int | None:
    """`value` as INCR reads it: a decimal of no sign but "-", no spaces, within int64."""
    if _INTEGER.fullmatch(value) is None or value == b"-0":
        return None
    number = int(value)
    return number if -_INT64_MAX - 1 <= number <= _INT64_MAX else None


class MemoryStore:
    """Key/value with expiry and a bound on the number of entries."""

    def __init__(self, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._data: dict[str, tuple[bytes, float]] = {}  # key -> (value, deadline or 0)
        self._deadlines: list[tuple[float, str]] = []  # heap; stale entries allowed
        self._max_entries = max_entries
        self._clock = clock

    def __len__(self) -> int:
        return len(self._data)

    async def get(self, key: str) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        value, deadline = entry
        if deadline and deadline <= self._clock():
            del self._data[key]
            return None
        return value

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [await self.get(key) for key in keys]

    async def set(self, key: str, value: bytes, ttl: float = 0) -> None:
        deadline = self._clock() + ttl if ttl > 0 else 0.0
        self._data.pop(key, None)  # re-insert: eviction order is oldest write first
        if len(self._data) >= self._max_entries:
            self.sweep()
            if len(self._data) >= self._max_entries:
                oldest = next(iter(self._data))
                del self._data[oldest]
                log.warning("memory store full (%d entries): evicted %r",
                            self._max_entries, oldest)
        self._data[key] = (value, deadline)
        if deadline:
            heapq.heappush(self._deadlines, (deadline, key))

    async def delete(self, key: str) -> bool:
        return await self.get(key) is not None and self._data.pop(key, None) is not None

    async def set_nx(self, key: str, value: bytes, ttl: float = 0) -> bool:
        if await self.get(key) is not None:
            return False
        await self.set(key, value, ttl)
        return True

    async def ttl(self, key: str) -> int:
        if await self.get(key) is None:  # drops an expired entry
            return -2
        deadline = self._data[key][1]
        if not deadline:
            return -1
        return int((deadline - self._clock()) * 1000 + 500) // 1000

    async def incr(self, key: str, ttl: float = 0) -> int | None:
        current = await self.get(key)
        if current is None:
            await self.set(key, b"1", ttl)
            return 1
        number = _redis_integer(current)
        if number is None or number == _INT64_MAX:
            return None
        # Rewritten in place: the key keeps its expiry and its place in eviction order.
        self._data[key] = (str(number + 1).encode(), self._data[key][1])
        return number + 1

    async def scan(self, prefix: str) -> list[str]:
        now = self._clock()
        return [k for k, (_, deadline) in self._data.items()
                if k.startswith(prefix) and not (deadline and deadline <= now)]

    def sweep(self) -> int:
        """Remove expired entries; return how many."""
        now, removed, heap = self._clock(), 0, self._deadlines
        while heap and heap[0][0] <= now:
            deadline, key = heapq.heappop(heap)
            entry = self._data.get(key)
            # A stale heap entry: the key was rewritten with another deadline since.
            if entry is not None and entry[1] == deadline:
                del self._data[key]
                removed += 1
        if len(heap) > 2 * len(self._data) + 1024:
            self._deadlines = [(d, k) for k, (_, d) in self._data.items() if d]
            heapq.heapify(self._deadlines)
        return removed

    async def sweep_forever(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            self.sweep()


class MemoryStorage(MemoryStore):
    """`Storage` for one instance: the key/value store plus the two counters."""

    def __init__(self, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(max_entries, clock)
        self._windows: dict[str, collections.deque[float]] = {}
        self._quotas: dict[str, tuple[int, float]] = {}  # key -> (used, renews at or 0)

    async def delete(self, key: str) -> bool:
        found = await super().delete(key)
        # Counters share the key space: deleting "quota-x" resets that quota.
        return (self._quotas.pop(key, None) is not None
                or self._windows.pop(key, None) is not None or found)

    async def rate_hit(self, key: str, limit: int, per: float) -> Hit:
        now = self._clock()
        window = self._windows.setdefault(key, collections.deque())
        while window and window[0] <= now - per:
            window.popleft()
        if len(window) < limit:
            window.append(now)
            return Hit(True, limit - len(window), per)
        return Hit(False, 0, max(0.0, window[0] + per - now))

    async def quota_hit(self, key: str, quota_max: int, renewal_s: int) -> Hit:
        now = self._clock()
        used, renews = self._quotas.get(key, (0, 0.0))
        if renews and renews <= now:
            used, renews = 0, 0.0
        if not renews and renewal_s > 0:
            renews = now + renewal_s
        reset = max(0.0, renews - now) if renews else 0.0
        if used >= quota_max:
            self._quotas[key] = (used, renews)
            return Hit(False, 0, reset)
        self._quotas[key] = (used + 1, renews)
        return Hit(True, quota_max - used - 1, reset)

    async def quota_peek(self, key: str, quota_max: int) -> Hit | None:
        now = self._clock()
        used, renews = self._quotas.get(key, (0, -1.0))
        if renews < 0 or (renews and renews <= now):  # none, or its period is over
            return None
        reset = renews - now if renews else 0.0
        return Hit(used < quota_max, max(0, quota_max - used), reset)

    def sweep(self) -> int:
        removed = super().sweep()
        now = self._clock()
        # Bounded growth: forget windows and quotas nobody has used for a while.
        if len(self._windows) > 10_000:
            self._windows = {k: w for k, w in self._windows.items() if w and w[-1] > now - 3600}
        if len(self._quotas) > 10_000:
            self._quotas = {k: q for k, q in self._quotas.items() if not q[1] or q[1] > now}
        return removed

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None
