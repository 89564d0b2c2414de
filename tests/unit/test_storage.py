"""Storage backends behind one interface: memory, a real store process, a real redis-server.

Every behaviour runs against both; the counters are hammered concurrently to
show they are exact (no read-modify-write race).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from integration.harness import free_port
from integration.store_process import StoreProcess

from config.gateway import StorageConfig
from gateway.storage import (
    Hit,
    MemoryStorage,
    RemoteStorage,
    Storage,
    StorageUnavailable,
    open_storage,
)
from gateway.storage.redis import RedisStorage


@pytest.fixture(scope="module")
def store_process() -> Iterator[StoreProcess]:
    """One store process for the module (tests use keys of their own)."""
    store = StoreProcess().start()
    try:
        yield store
    finally:
        store.close()


@pytest.fixture(params=["memory", "remote", "redis"])
async def storage(request: pytest.FixtureRequest) -> AsyncIterator[Storage]:
    if request.param == "memory":
        yield MemoryStorage()
        return
    if request.param == "remote":  # the memory storage in the store process
        process = request.getfixturevalue("store_process")
        remote = open_storage(StorageConfig(timeout_ms=2000), str(process.socket),
                              process.token)
        assert isinstance(remote, RemoteStorage)
        try:
            yield remote
        finally:
            await remote.close()
        return
    server = request.getfixturevalue("redis_server")
    store = open_storage(StorageConfig(type="redis", port=server.port, timeout_ms=2000))
    assert isinstance(store, RedisStorage)
    try:
        yield store
    finally:
        await store.close()


def key() -> str:
    return f"t-{uuid.uuid4().hex}"


async def test_get_set_delete(storage: Storage) -> None:
    k = key()
    assert await storage.get(k) is None
    await storage.set(k, b"v1")
    assert await storage.get(k) == b"v1"
    assert await storage.delete(k) is True
    assert await storage.delete(k) is False
    assert await storage.get(k) is None


async def test_ttl_expires(storage: Storage) -> None:
    k = key()
    await storage.set(k, b"short", ttl=0.05)
    await storage.set(k + "x", b"long", ttl=60)
    await asyncio.sleep(0.15)  # the TTL under test, not a readiness wait
    assert await storage.get(k) is None
    assert await storage.get(k + "x") == b"long"


async def test_rate_limit_is_exact_under_concurrency(storage: Storage) -> None:
    k = key()
    hits = await asyncio.gather(*(storage.rate_hit(k, 10, 60) for _ in range(50)))
    assert sum(h.allowed for h in hits) == 10
    assert sorted(h.remaining for h in hits if h.allowed) == list(range(10))
    refused = [h for h in hits if not h.allowed]
    assert all(h.remaining == 0 and 0 < h.reset <= 60.001 for h in refused)


async def test_rate_limit_window_slides(storage: Storage) -> None:
    k = key()
    assert [(await storage.rate_hit(k, 2, 0.2)).allowed for _ in range(3)] == \
        [True, True, False]
    await asyncio.sleep(0.3)  # let the window pass
    assert (await storage.rate_hit(k, 2, 0.2)).allowed


async def test_quota_is_exact_under_concurrency(storage: Storage) -> None:
    k = key()
    hits = await asyncio.gather(*(storage.quota_hit(k, 7, 3600) for _ in range(30)))
    assert sum(h.allowed for h in hits) == 7
    assert all(0 < h.reset <= 3600.001 for h in hits)  # float arithmetic on the clock
    assert await storage.delete(k)  # deleting the counter resets the quota
    assert (await storage.quota_hit(k, 7, 3600)).remaining == 6


async def test_quota_renews() -> None:
    now = [1000.0]
    store = MemoryStorage(clock=lambda: now[0])
    assert (await store.quota_hit("q", 1, 60)).allowed
    assert not (await store.quota_hit("q", 1, 60)).allowed
    now[0] += 61
    assert (await store.quota_hit("q", 1, 60)).allowed


async def test_redis_quota_renews(redis_server: Any) -> None:
    store = RedisStorage(StorageConfig(type="redis", port=redis_server.port))
    try:
        k = key()
        assert (await store.quota_hit(k, 1, 1)).allowed
        assert not (await store.quota_hit(k, 1, 1)).allowed
        await asyncio.sleep(1.1)  # the renewal period under test
        assert (await store.quota_hit(k, 1, 1)).allowed
    finally:
        await store.close()


async def test_quota_peek_reads_the_counter_without_counting(storage: Storage) -> None:
    """The admin API's key detail: what is left of a quota, and when it renews, read
    without using it; no counter (never used, or reset) is None."""
    k = key()
    assert await storage.quota_peek(k, 5) is None
    for _ in range(3):
        await storage.quota_hit(k, 5, 3600)
    for _ in range(2):  # a peek does not count
        peeked = await storage.quota_peek(k, 5)
        assert peeked is not None and (peeked.allowed, peeked.remaining) == (True, 2)
        assert 3590 < peeked.reset <= 3600.001
    assert (await storage.quota_hit(k, 5, 3600)).remaining == 1
    peeked = await storage.quota_peek(k, 2)  # another quota_max: never below 0
    assert peeked is not None and (peeked.allowed, peeked.remaining) == (False, 0)
    assert await storage.delete(k)
    assert await storage.quota_peek(k, 5) is None
    await storage.quota_hit(k, 5, 0)  # never renews: no reset time
    peeked = await storage.quota_peek(k, 5)
    assert peeked is not None and (peeked.remaining, peeked.reset) == (4, 0)


async def test_quota_peek_after_renewal_is_none() -> None:
    now = [1000.0]
    store = MemoryStorage(clock=lambda: now[0])
    await store.quota_hit("q", 3, 60)
    assert (await store.quota_peek("q", 3)) is not None
    now[0] += 61
    assert await store.quota_peek("q", 3) is None


async def test_redis_quota_peek_reads_a_counter_as_tyk_does(redis_server: Any) -> None:
    """Tyk's own quota counter (INCR on quota-<key>) reads the same; a value that is
    not an integer counts 0 (Go's Atoi, as Tyk's handleGetDetail), a key of another
    type is no counter."""
    store = RedisStorage(StorageConfig(type="redis", port=redis_server.port))
    try:
        k = key()
        redis_server.command("SET", k, "4")
        redis_server.command("PEXPIRE", k, "60000")
        peeked = await store.quota_peek(k, 10)
        assert peeked is not None and peeked.remaining == 6 and 59 < peeked.reset <= 60
        redis_server.command("SET", k, "many")
        assert (await store.quota_peek(k, 10)) == Hit(True, 10, 0)
        redis_server.command("DEL", k)
        redis_server.command("LPUSH", k, "x")
        assert await store.quota_peek(k, 10) is None
    finally:
        await store.close()


async def test_unreachable_redis_is_storage_unavailable() -> None:
    store = RedisStorage(StorageConfig(type="redis", port=free_port(), timeout_ms=300))
    try:
        with pytest.raises(StorageUnavailable, match=r"redis://127\.0\.0\.1"):
            await store.get("k")
        with pytest.raises(StorageUnavailable):
            await store.rate_hit("k", 1, 1)
        assert await store.ping() is False
    finally:
        await store.close()


def test_memory_is_the_default() -> None:
    assert isinstance(open_storage(StorageConfig()), MemoryStorage)


async def test_get_many_and_scan(storage: Storage) -> None:
    """The keys admin API's reads: several values in one call, names by prefix."""
    prefix = key()
    await storage.set(f"{prefix}a", b"1")
    await storage.set(f"{prefix}b*", b"2")
    await storage.set(f"{prefix}gone", b"3", ttl=0.05)
    await asyncio.sleep(0.2)  # the TTL under test, not a readiness wait
    assert await storage.get_many([f"{prefix}a", f"{prefix}x", f"{prefix}b*"]) == \
        [b"1", None, b"2"]
    assert sorted(await storage.scan(prefix)) == [f"{prefix}a", f"{prefix}b*"]
    assert await storage.scan(f"{prefix}b*") == [f"{prefix}b*"]


async def test_a_long_key_and_a_long_multi_get(storage: Storage) -> None:
    """A client's oversized credential is just a key (no backend refuses it), and a
    multi-get longer than one store request holds is split, in order."""
    long_key = key() + "x" * 100_000
    await storage.set(long_key, b"v")
    assert await storage.get(long_key) == b"v"
    many = [key() for _ in range(10_050)]
    await storage.set(many[-1], b"last")
    got = await storage.get_many(many)
    assert len(got) == len(many) and got[-1] == b"last" and got[:-1] == [None] * 10_049


async def test_set_nx_sets_only_an_absent_key(storage: Storage) -> None:
    k = key()
    assert await storage.set_nx(k, b"first", ttl=60) is True
    assert await storage.set_nx(k, b"second") is False
    assert await storage.get(k) == b"first"
    assert 58 <= await storage.ttl(k) <= 60
    await storage.set(k + "x", b"gone", ttl=0.05)
    await asyncio.sleep(0.2)
    assert await storage.set_nx(k + "x", b"again") is True  # an expired key is absent


async def test_ttl_follows_redis(storage: Storage) -> None:
    k = key()
    assert await storage.ttl(k) == -2
    await storage.set(k, b"v")
    assert await storage.ttl(k) == -1
    await storage.set(k, b"v", ttl=10.4)
    assert await storage.ttl(k) == 10


async def test_incr_counts_and_expires_only_what_it_created(storage: Storage) -> None:
    k = key()
    assert [await storage.incr(k, ttl=30) for _ in range(3)] == [1, 2, 3]
    assert await storage.get(k) == b"3"
    assert 28 <= await storage.ttl(k) <= 30
    await storage.set(k + "n", b"41")
    assert await storage.incr(k + "n", ttl=30) == 42
    assert await storage.ttl(k + "n") == -1  # it existed: no expiry added
    await storage.set(k + "m", b"-7")
    assert await storage.incr(k + "m") == -6
    for text in (b"x", b"1.5", b" 1", b"", str(2**63 - 1).encode()):
        await storage.set(k + "bad", text)
        assert await storage.incr(k + "bad") is None, text
        assert await storage.get(k + "bad") == text


async def test_incr_is_exact_under_concurrency(storage: Storage) -> None:
    k = key()
    got = await asyncio.gather(*(storage.incr(k) for _ in range(50)))
    assert sorted(v for v in got if v is not None) == list(range(1, 51))
