"""Plugin API calls served by the gateway: store_data/get_data, log, trigger_event.

The worker forwards `TykGateway.store_data` & co. as HOST_CALL messages; the
hook client hands them to `HostCalls.host_call`.  Plugin data lives behind the
small `KVStore` interface under Tyk's `coprocess-data:` key prefix, so that a
Redis backend (shared by every gateway instance) can replace `MemoryStore`.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

__all__ = ["KEY_PREFIX", "HostCalls", "KVStore", "MemoryStore"]

KEY_PREFIX: Final = "coprocess-data:"

log = logging.getLogger("coproc.gateway.host_calls")
plugin_log = logging.getLogger("coproc.plugin")

_LEVELS: Final = {
    "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
    "warning": logging.WARNING, "error": logging.ERROR, "fatal": logging.CRITICAL,
    "critical": logging.CRITICAL,
}
_MAX_LOGGED_CHARS: Final = 8192


class KVStore(Protocol):
    """Where plugin data lives; ttl in seconds, <= 0 for no expiry."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...


class MemoryStore:
    """The embedded store: a dict with expiry, for one gateway instance.

    Expired entries are dropped when read, and `sweep` (run periodically)
    removes the ones nobody reads, in time proportional to what expired.
    """

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

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        deadline = self._clock() + ttl if ttl > 0 else 0.0
        self._data.pop(key, None)  # re-insert: eviction order is oldest write first
        if len(self._data) >= self._max_entries:
            self.sweep()
            if len(self._data) >= self._max_entries:
                oldest = next(iter(self._data))
                del self._data[oldest]
                log.warning("plugin data store full (%d entries): evicted %r",
                            self._max_entries, oldest)
        self._data[key] = (value, deadline)
        if deadline:
            heapq.heappush(self._deadlines, (deadline, key))

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


class HostCalls:
    """Serves HOST_CALL payloads (already validated by `ipc.protocol.decode`)."""

    def __init__(self, store: KVStore) -> None:
        self._store = store

    async def host_call(self, api_id: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        op = payload["op"]
        if op == "get_data":
            value = await self._store.get(KEY_PREFIX + payload.get("key", ""))
            return {"value": value or b"", "found": value is not None}
        if op == "store_data":
            await self._store.set(KEY_PREFIX + payload.get("key", ""),
                                  payload.get("value", b""), payload.get("ttl", 0))
            return {}
        if op == "log":
            level = _LEVELS.get(payload.get("level", "info").lower(), logging.INFO)
            if plugin_log.isEnabledFor(level):
                plugin_log.log(level, "%s", payload.get("message", "")[:_MAX_LOGGED_CHARS],
                               extra={"fields": {"api_id": api_id}})
            return None
        if op == "trigger_event":
            # Event handlers arrive in a later issue; until then an event is logged.
            log.info("plugin event %s: %s", payload.get("name", ""),
                     payload.get("payload", "")[:_MAX_LOGGED_CHARS],
                     extra={"fields": {"api_id": payload.get("api_id") or api_id}})
            return None
        raise ValueError(f"unknown host call {op!r}")
