"""The Redis backend: state shared by every gateway instance using the same Redis.

redis-py's asyncio client (one server, Sentinel or Cluster: `client.py`) with
a bounded connection pool; every call runs under `storage.timeout_ms`.  The
counters are Lua scripts, so each hit is one atomic step on the server (exact
under any concurrency, across instances), and they read the server's clock,
so instances with skewed clocks agree.  A connection or timeout error becomes
`StorageUnavailable`; the pool reconnects by itself on the next call once the
server (or, after a failover, the new master) answers.

Cluster safety: every operation touches one key, except `get_many` (split
into one MGET per slot) and `scan` (run on every master).  Key names are
never given hash tags: Tyk and Tyk Pump read these keys by their plain names.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable
from typing import Any, TypeVar

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from config.storage import StorageConfig
from gateway.storage.base import Hit, StorageUnavailable
from gateway.storage.client import describe, redis_client

__all__ = ["RedisStorage"]

T = TypeVar("T")

# Sliding log: a sorted set of the allowed hits' times (microseconds).
_RATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local per = tonumber(ARGV[2])
local limit = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - per)
local n = redis.call('ZCARD', KEYS[1])
if n < limit then
  redis.call('ZADD', KEYS[1], now, now .. ':' .. ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(per / 1000) + 1)
  return {1, limit - n - 1, per}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, 0, tonumber(oldest[2]) + per - now}
"""

# Fixed quota window starting at the first use; refused uses are not counted.
_QUOTA = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local ttl = redis.call('PTTL', KEYS[1])
if used >= tonumber(ARGV[1]) then return {0, 0, ttl} end
used = redis.call('INCR', KEYS[1])
if used == 1 and tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
return {1, tonumber(ARGV[1]) - used, ttl}
"""

# The quota counter's count and time left, read together; no counter (or a key that
# is not a string): nil.  Tyk's own counter under the same name is read the same way.
_QUOTA_PEEK = """
local used = redis.pcall('GET', KEYS[1])
if type(used) ~= 'string' then return false end
return {used, redis.call('PTTL', KEYS[1])}
"""

#: How Go's strconv.Atoi reads a counter (Tyk's key detail): anything else counts 0.
_ATOI = re.compile(rb"[+-]?[0-9]+")


class RedisStorage:
    """`Storage` on Redis: one server, Sentinel or Cluster (one pool per gateway process)."""

    def __init__(self, cfg: StorageConfig) -> None:
        self.cfg = cfg
        self._timeout = cfg.timeout_ms / 1000
        self._client = redis_client(cfg)
        # Scripts name their one key in KEYS, so a cluster routes them by its slot
        # (and loads them on every master).  redis-py's stubs type register_script
        # for the single-server client only; RedisCluster has it as well.
        scripts: Any = self._client
        self._rate: AsyncScript = scripts.register_script(_RATE)
        self._quota: AsyncScript = scripts.register_script(_QUOTA)
        self._quota_peek: AsyncScript = scripts.register_script(_QUOTA_PEEK)
        self._member = os.urandom(4).hex()  # makes log members unique across instances
        self._seq = 0

    @property
    def where(self) -> str:
        return describe(self.cfg)

    async def _run(self, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self._timeout):
                return await call
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            raise StorageUnavailable(f"{self.where}: {type(exc).__name__}: {exc}") from None

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._run(self._client.get(key))
        return value

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        if isinstance(self._client, RedisCluster):
            # One MGET per slot (a cross-slot MGET is refused by a cluster).
            values: list[bytes | None] = await self._run(self._client.mget_nonatomic(keys))
        else:
            values = await self._run(self._client.mget(keys))
        return values

    async def set(self, key: str, value: bytes, ttl: float = 0) -> None:
        px = max(1, int(ttl * 1000)) if ttl > 0 else None
        await self._run(self._client.set(key, value, px=px))

    async def delete(self, key: str) -> bool:
        removed: int = await self._run(self._client.delete(key))
        return removed > 0

    async def set_nx(self, key: str, value: bytes, ttl: float = 0) -> bool:
        px = max(1, int(ttl * 1000)) if ttl > 0 else None
        return bool(await self._run(self._client.set(key, value, px=px, nx=True)))

    async def ttl(self, key: str) -> int:
        seconds: int = await self._run(self._client.ttl(key))
        return seconds

    async def incr(self, key: str, ttl: float = 0) -> int | None:
        value = await self._run(self._incr(key))
        if value == 1 and ttl > 0:  # this call created the key
            await self._run(self._client.pexpire(key, max(1, int(ttl * 1000))))
        return value

    async def _incr(self, key: str) -> int | None:
        try:
            value: int = await self._client.incr(key)
        except ResponseError:  # not an integer, out of range, or not a string key
            return None
        return value

    async def scan(self, prefix: str) -> list[str]:
        # SCAN, never KEYS: a big keyspace must not block the server.  On a cluster,
        # redis-py's scan_iter walks every master's keyspace in turn.
        pattern = prefix.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?") \
            .replace("[", "\\[") + "*"

        async def collect() -> list[str]:
            return [k.decode() if isinstance(k, bytes) else str(k)
                    async for k in self._client.scan_iter(match=pattern, count=1000)]

        return await self._run(collect())

    async def rate_hit(self, key: str, limit: int, per: float) -> Hit:
        self._seq += 1
        per_us = max(1, int(per * 1_000_000))
        got: list[Any] = await self._run(
            self._rate(keys=[key], args=[limit, per_us, f"{self._member}:{self._seq}"]))
        return Hit(bool(got[0]), int(got[1]), max(0, int(got[2])) / 1_000_000)

    async def quota_hit(self, key: str, quota_max: int, renewal_s: int) -> Hit:
        got: list[Any] = await self._run(
            self._quota(keys=[key], args=[quota_max, max(0, renewal_s) * 1000]))
        return Hit(bool(got[0]), int(got[1]), max(0, int(got[2])) / 1000)

    async def quota_peek(self, key: str, quota_max: int) -> Hit | None:
        got: list[Any] | None = await self._run(self._quota_peek(keys=[key]))
        if not got:
            return None
        used = int(got[0]) if _ATOI.fullmatch(got[0]) else 0
        return Hit(used < quota_max, max(0, quota_max - used), max(0, int(got[1])) / 1000)

    async def ping(self) -> bool:
        try:
            return bool(await self._run(self._client.ping()))
        except StorageUnavailable:
            return False

    async def close(self) -> None:
        await self._client.aclose()
