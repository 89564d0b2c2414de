"""The storage interface every backend implements, and its error.

Keys are plain strings chosen by the callers (`apikey-…`, `rate-…`,
`quota-…`, `coprocess-data:…`, `jsvm-store:…`); values are bytes.  TTLs are seconds, <= 0
meaning no expiry.  The two counters are atomic in every backend: no
read-modify-write race can let an extra request through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["Hit", "Storage", "StorageUnavailable"]


class StorageUnavailable(Exception):
    """The backend cannot be reached (or did not answer in time)."""


@dataclass(frozen=True, slots=True)
class Hit:
    """The outcome of counting one request against a limit."""

    allowed: bool
    remaining: int  # what is left after this hit (0 when refused)
    reset: float  # seconds until the window frees a slot / the quota renews (0: unknown)


class Storage(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        """The values of `keys`, in order (one round trip)."""
        ...

    async def set(self, key: str, value: bytes, ttl: float = 0) -> None: ...

    async def delete(self, key: str) -> bool:
        """Remove `key`; True when it existed."""
        ...

    async def set_nx(self, key: str, value: bytes, ttl: float = 0) -> bool:
        """`set` only when `key` has no value; True when this call set it."""
        ...

    async def ttl(self, key: str) -> int:
        """Seconds until `key` expires, rounded as Redis's TTL: -1 when it never
        does, -2 when there is no such key."""
        ...

    async def incr(self, key: str, ttl: float = 0) -> int | None:
        """Add one to the integer at `key` (0 when absent) and return it; a key this
        call created expires after `ttl` (<= 0: never), one that existed keeps its
        expiry.  None (and no change) when the value is not an integer."""
        ...

    async def rate_hit(self, key: str, limit: int, per: float) -> Hit:
        """Sliding window: allow when fewer than `limit` hits were allowed in `per` s."""
        ...

    async def quota_hit(self, key: str, quota_max: int, renewal_s: int) -> Hit:
        """Count one use of a quota of `quota_max` that renews every `renewal_s` s
        (<= 0: never); the window starts at the first use."""
        ...

    async def quota_peek(self, key: str, quota_max: int) -> Hit | None:
        """The quota counter at `key` as the next `quota_hit` would find it, without
        counting a use: the uses of `quota_max` left (never below 0) and the seconds
        until it renews (0: never).  None when there is no live counter (never used,
        reset, or renewed since); read by the admin API's key detail."""
        ...

    async def scan(self, prefix: str) -> list[str]:
        """Every key (of `set`) that starts with `prefix`; for the admin API's listings."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...
