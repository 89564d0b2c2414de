"""Coproc instances on Redis Sentinel and Redis Cluster, started by the tests on loopback.

1. Sentinel (one master, one replica, three sentinels) and Cluster (three
   masters): two `coproc serve` instances configured with Tyk's `storage`
   names share one rate limit (`rate: 10, per: 1`: exactly 10 of 50
   concurrent requests over both pass) and one quota.
2. Cluster: keys land on every master, and the keys admin API's listing
   (SCAN) finds all of them; a key made on one instance works on the other;
   a multi-get over keys of every slot answers in order; analytics batches go
   to Tyk Pump's list names unchanged (no hash tags).
3. Sentinel failover (`SENTINEL FAILOVER`) under load: no restart of either
   instance; the only failures are 503 + Retry-After for requests in flight
   during the switch; every request started after it succeeds.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import redis
from integration.harness import HOST, Instance
from integration.redis_topologies import RedisClusterSet, SentinelSet
from integration.test_redis_scaleout import (
    ADMIN,
    PLUGIN,
    SECRET,
    _burst,
    add_key,
    apis,
    assert_exactly_ten,
)

from config.storage import StorageConfig
from gateway.analytics import tyk_format
from gateway.analytics.sinks import RedisSink
from gateway.storage.redis import RedisStorage

#: Concurrent clients during the failover (each has one request in flight at a time).
CLIENTS = 6


@pytest.fixture(scope="module")
def sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    topology = SentinelSet(tmp_path_factory.mktemp("sentinel")).start()
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture(scope="module")
def cluster_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterSet]:
    topology = RedisClusterSet(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield topology
    finally:
        topology.stop()


def _pair(factory: Any, echo: Any, settings: dict[str, Any]) -> tuple[Instance, Instance]:
    def one() -> Instance:
        inst: Instance = factory(apis(echo.url), {"kv/mw.py": PLUGIN},
                                 {"secret": SECRET, **settings})
        return inst
    return one(), one()


def _share_limits(a: Instance, b: Instance) -> None:
    key = add_key(a, {"rate": 10, "per": 1})
    b.expect(b.get("/keys/", {"Authorization": add_key(a, {})}), 200)
    assert_exactly_ten(*asyncio.run(_burst([a.port, b.port], key, 50)))
    quota_key = add_key(b, {"quota_max": 3, "quota_renewal_rate": 3600})
    got = [gw.get("/keys/", {"Authorization": quota_key}).status for gw in (a, b, a, b)]
    assert got == [200, 200, 200, 403]


def test_sentinel_two_instances_share_one_rate_limit(coproc_factory: Any, echo_upstream: Any,
                                                     sentinel_set: SentinelSet) -> None:
    _share_limits(*_pair(coproc_factory, echo_upstream, sentinel_set.settings()))


def test_cluster_two_instances_share_one_rate_limit(coproc_factory: Any, echo_upstream: Any,
                                                    cluster_set: RedisClusterSet) -> None:
    _share_limits(*_pair(coproc_factory, echo_upstream, cluster_set.settings()))


def test_cluster_keys_on_every_master_are_listed(coproc_factory: Any, echo_upstream: Any,
                                                 cluster_set: RedisClusterSet) -> None:
    """Keys keep Tyk's plain names (no hash tags), so they spread over the masters;
    the listing walks every master."""
    a, b = _pair(coproc_factory, echo_upstream, cluster_set.settings())
    made = {add_key(a, {}) for _ in range(24)}
    holders = [n for n in cluster_set.nodes if int(n.info("keyspace").get("db0", "keys=0")
                                                   .split(",")[0].removeprefix("keys="))]
    assert len(holders) == 3, "24 keys should land on all three masters"
    listed = b.expect(b.request("GET", "/tyk/keys", ADMIN), 200).json()["keys"]
    assert made <= set(listed)
    for key in list(made)[:3]:
        b.expect(b.get("/keys/", {"Authorization": key}), 200)


def _cluster_config(cluster: RedisClusterSet) -> StorageConfig:
    return StorageConfig(type="redis", addrs=tuple(n.addr for n in cluster.nodes),
                         enable_cluster=True, timeout_ms=2000)


async def test_cluster_multi_get_and_scan_span_every_slot(cluster_set: RedisClusterSet) -> None:
    store = RedisStorage(_cluster_config(cluster_set))
    try:
        keys = [f"apikey-mget-{n}" for n in range(40)]
        for n, key in enumerate(keys[::2]):
            await store.set(key, str(n).encode())
        got = await store.get_many(keys)  # every other key is missing
        assert got == [str(n // 2).encode() if n % 2 == 0 else None for n in range(40)]
        assert set(await store.scan("apikey-mget-")) == set(keys[::2])
    finally:
        await store.close()


async def test_cluster_analytics_lists_keep_tyk_pumps_names(cluster_set: RedisClusterSet) -> None:
    sink = RedisSink(_cluster_config(cluster_set), sharded=True, expire_s=60)
    try:
        for n in range(30):
            await sink.write([{"method": "GET", "path": f"/p/{n}"}])
    finally:
        await sink.close()
    client = redis.RedisCluster(host=HOST, port=cluster_set.nodes[0].port)
    try:
        lists = [f"{tyk_format.ANALYTICS_LIST}_{n}" for n in range(10)]
        paths = {tyk_format.decode(item)["Path"] for name in lists
                 for item in client.lrange(name, 0, -1)}
        assert paths == {f"/p/{n}" for n in range(30)}
        assert all(client.ttl(name) in (-2, *range(1, 61)) for name in lists)
        holders = {client.keyslot(name) for name in lists if client.exists(name)}
        assert len(holders) > 1  # several slots: the names were not forced together
    finally:
        client.close()


@dataclass
class Outcome:
    started: float
    ended: float
    status: int
    retry_after: str | None
    body: bytes


async def _load(ports: list[int], key: str, stop: threading.Event,
                deadline: float) -> list[Outcome]:
    """`CLIENTS` loops of one request at a time over the instances until `stop`."""
    outcomes: list[Outcome] = []
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as client:
        async def loop(n: int) -> None:
            i = n
            while not stop.is_set() and time.monotonic() < deadline:
                i += 1
                url = f"http://{HOST}:{ports[i % len(ports)]}/keys/"
                started = time.monotonic()
                async with client.get(url, headers={"Authorization": key}) as resp:
                    body = await resp.read()
                    outcomes.append(Outcome(started, time.monotonic(), resp.status,
                                            resp.headers.get("Retry-After"), body))
        await asyncio.gather(*(loop(n) for n in range(CLIENTS)))
    return outcomes


def test_sentinel_failover_under_load_recovers_without_restart(
        coproc_factory: Any, echo_upstream: Any, sentinel_set: SentinelSet) -> None:
    """1. two instances on Sentinel, a key with a (high) rate limit, so each request
    reads the session and writes the rate counter; 2. `CLIENTS` concurrent clients;
    3. after 1 s, SENTINEL FAILOVER; 4. load goes on until 3 s after the switch is
    complete (the new master announced, and the old one demoted to its replica, so a
    client left on it gets READONLY); 5. failures are 503 + Retry-After, at most the
    requests in flight during the switch, none started after it (measured: 0, since
    a broken connection is retried on the new master); no instance was restarted."""
    a, b = _pair(coproc_factory, echo_upstream, sentinel_set.settings())
    pids = (a.pid, b.pid)
    key = add_key(a, {"rate": 1_000_000, "per": 1})
    stop = threading.Event()
    switch: dict[str, float] = {}

    def fail_over() -> None:
        try:
            stop.wait(1.0)
            switch["start"] = time.monotonic()
            sentinel_set.failover()
            switch["done"] = time.monotonic()
            stop.wait(3.0)
        finally:
            stop.set()

    thread = threading.Thread(target=fail_over, daemon=True)
    thread.start()
    outcomes = asyncio.run(_load([a.port, b.port], key, stop, time.monotonic() + 60))
    thread.join(30)
    assert "done" in switch, "the failover did not complete"

    failed = [o for o in outcomes if o.status != 200]
    for o in failed:
        assert o.status == 503 and o.retry_after == "1", (o.status, o.body)
        assert json.loads(o.body) == {"error": "Storage unavailable"}
        # Started during the switch (a connection still on the old master), never after.
        assert switch["start"] <= o.ended and o.started <= switch["done"] + 1.0, o
    assert len(failed) <= CLIENTS, f"{len(failed)} failures for {CLIENTS} in flight"
    after = [o for o in outcomes if o.started > switch["done"] + 1.0]
    assert len(after) >= 20 and all(o.status == 200 for o in after)
    assert (a.pid, b.pid) == pids and a.proc.poll() is None and b.proc.poll() is None
    print(f"failover: {switch['done'] - switch['start']:.2f} s, {len(outcomes)} requests, "
          f"{len(failed)} failed (503)")
