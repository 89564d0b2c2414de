"""Plugin host calls: the KV store with TTL, log and trigger_event; serving and answers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import pytest

from gateway.host_calls import KEY_PREFIX, HostCalls, HostCallServer, MemoryStore
from gateway.storage.base import StorageUnavailable
from ipc.protocol import Message, MsgType


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_store_and_get_with_the_tyk_prefix() -> None:
    store = MemoryStore()
    host = HostCalls(store)
    assert await host.host_call("api", {"op": "store_data", "key": "k", "value": b"v",
                                        "ttl": 0}) == {}
    assert await store.get(KEY_PREFIX + "k") == b"v"
    assert await host.host_call("api", {"op": "get_data", "key": "k"}) == \
        {"value": b"v", "found": True}
    assert await host.host_call("api", {"op": "get_data", "key": "nope"}) == \
        {"value": b"", "found": False}


async def test_ttl_expires_lazily_on_read() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    await store.set("k", b"v", 10)
    await store.set("forever", b"f", 0)
    clock.now += 9.9
    assert await store.get("k") == b"v"
    clock.now += 0.2
    assert await store.get("k") is None
    assert len(store) == 1
    clock.now += 1e9
    assert await store.get("forever") == b"f"


async def test_sweep_removes_expired_entries_nobody_reads() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    for i in range(100):
        await store.set(f"k{i}", b"v", 5 if i % 2 else 50)
    await store.set("k1", b"rewritten", 100)  # its old deadline is stale now
    clock.now += 6
    assert store.sweep() == 49
    assert len(store) == 51
    assert await store.get("k1") == b"rewritten"
    clock.now += 50
    assert store.sweep() == 50
    assert await store.get("k1") == b"rewritten"


async def test_full_store_evicts_the_oldest_write() -> None:
    store = MemoryStore(max_entries=3)
    for key in ("a", "b", "c"):
        await store.set(key, b"1", 0)
    await store.set("a", b"2", 0)  # a rewrite counts as the newest
    await store.set("d", b"1", 0)
    assert await store.get("b") is None
    assert [await store.get(k) for k in ("a", "c", "d")] == [b"2", b"1", b"1"]


async def test_log_and_event(caplog: pytest.LogCaptureFixture) -> None:
    host = HostCalls(MemoryStore())
    with caplog.at_level(logging.DEBUG):
        assert await host.host_call("api1", {"op": "log", "level": "warn",
                                             "message": "careful"}) is None
        assert await host.host_call("api1", {"op": "trigger_event", "name": "Quota",
                                             "payload": "{}", "api_id": "api2"}) is None
    plugin = [r for r in caplog.records if r.name == "coproc.plugin"]
    assert plugin[0].levelno == logging.WARNING and plugin[0].getMessage() == "careful"
    assert plugin[0].fields == {"api_id": "api1"}
    event = [r for r in caplog.records if "Quota" in r.getMessage()]
    assert event[0].levelno == logging.INFO and event[0].fields == {"api_id": "api2"}


class _Handler:
    """Answers get_data; store_data finds the storage down; anything else raises."""

    async def host_call(self, api_id: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        if payload["op"] == "get_data":
            return {"value": b"v", "found": True}
        if payload["op"] == "store_data":
            raise StorageUnavailable("redis is down")
        if payload["op"] == "log":
            return None
        raise RuntimeError("boom")


async def test_host_calls_are_served_and_answered_to_their_sender() -> None:
    sent: list[tuple[bytes, MsgType, int, Mapping[str, Any]]] = []
    stats = {"host_calls": 0}
    server = HostCallServer(_Handler(), lambda *message: sent.append(message), stats)
    calls = [(1, "get_data"), (2, "store_data"), (3, "trigger_event"), (4, "log"),
             (0, "get_data")]  # call_id 0: the worker wants no answer
    for call_id, op in calls:
        server.serve(b"w1", Message(MsgType.HOST_CALL, call_id, {"op": op}))
    for _ in range(100):  # bounded: each is answered within a few loop turns
        if len(sent) == 4:
            break
        await asyncio.sleep(0.01)
    assert sorted(sent, key=lambda m: m[2]) == [
        (b"w1", MsgType.HOST_REPLY, 1, {"value": b"v", "found": True}),
        (b"w1", MsgType.ERROR, 2, {"code": "unavailable", "message": "redis is down"}),
        (b"w1", MsgType.ERROR, 3, {"code": "host_call_failed", "message": "boom"}),
        (b"w1", MsgType.HOST_REPLY, 4, {}),
    ]
    assert stats["host_calls"] == 5
    server.close()


async def test_a_storage_call_is_bounded_within_the_hooks_deadline() -> None:
    """A frozen storage answers StorageUnavailable at the bound, before the hook's
    deadline, whatever the storage's own timeout (issue #11 item 14)."""
    import asyncio
    import time

    from gateway.host_calls import storage_bound_s
    from gateway.storage.base import StorageUnavailable

    class Frozen(MemoryStore):
        async def get(self, key: str) -> bytes | None:
            await asyncio.sleep(60)
            return None

    assert storage_bound_s(1000, 1000) == 0.5
    assert storage_bound_s(200, 1000) == 0.2
    host = HostCalls(Frozen(), bound_s=0.05)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="within 50 ms"):
        await host.host_call("api", {"op": "get_data", "key": "k"})
    assert time.monotonic() - started < 1.0
