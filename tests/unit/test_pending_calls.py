"""PendingCalls' deadlines: one queue and one timer per timeout length, not one per call."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from config.apidef import HookDef
from gateway.hook_errors import HookTimeout
from gateway.pending import _COMPACT_MIN, PendingCalls

PEER: Any = object()


def _stats() -> dict[str, int]:
    return dict.fromkeys(("late_replies", "replies", "errors", "worker_lost"), 0)


async def test_each_call_expires_at_its_own_deadline_whatever_the_others() -> None:
    loop = asyncio.get_running_loop()
    calls = PendingCalls(_stats())
    slow = calls.open(loop, PEER, HookDef("Slow", timeout_ms=300))
    fast = calls.open(loop, PEER, HookDef("Fast", timeout_ms=50))
    later_fast = calls.open(loop, PEER, HookDef("Fast", timeout_ms=50))
    started = time.monotonic()
    with pytest.raises(HookTimeout, match="hook Fast exceeded 50 ms"):
        await fast.future
    assert 0.04 <= time.monotonic() - started < 0.25  # its queue's timer, not the slow one's
    with pytest.raises(HookTimeout):
        await later_fast.future
    assert not slow.future.done()
    with pytest.raises(HookTimeout, match="hook Slow exceeded 300 ms"):
        await asyncio.wait_for(slow.future, 2.0)
    assert time.monotonic() - started >= 0.29


async def test_an_answered_call_never_expires_and_the_next_one_still_does() -> None:
    loop = asyncio.get_running_loop()
    calls = PendingCalls(_stats())
    hook = HookDef("H", timeout_ms=60)
    first = calls.open(loop, PEER, hook)
    await asyncio.sleep(0.03)
    second = calls.open(loop, PEER, hook)
    assert calls.resolve(PEER, first.call_id, {"object": {}}, None)
    calls.close(first)
    assert await first.future == {"object": {}}
    started = time.monotonic()
    with pytest.raises(HookTimeout):  # the timer armed for the first one re-arms for it
        await asyncio.wait_for(second.future, 2.0)
    assert time.monotonic() - started >= 0.02
    calls.close(second)
    assert len(calls) == 0


async def test_a_long_timeout_under_load_keeps_no_more_than_the_open_calls() -> None:
    """Closed calls leave the queue when it is compacted, long before their deadline."""
    loop = asyncio.get_running_loop()
    calls = PendingCalls(_stats())
    hook = HookDef("Long", timeout_ms=60_000)
    held = [calls.open(loop, PEER, hook) for _ in range(10)]
    for _ in range(20 * _COMPACT_MIN):  # answered at once, as nearly every call is
        calls.close(calls.open(loop, PEER, hook))
    queue = calls._deadlines._queues[60.0]
    assert len(queue._entries) < _COMPACT_MIN
    for pending in held:
        calls.close(pending)
    calls.fail_all("done")


async def test_an_analytics_batch_times_out_with_its_own_message() -> None:
    loop = asyncio.get_running_loop()
    calls = PendingCalls(_stats())
    batch = calls.open_analytics(loop, PEER, 0.05)
    with pytest.raises(HookTimeout, match=r"analytics batch unanswered after 0\.05 s"):
        await asyncio.wait_for(batch.future, 2.0)
    calls.close(batch)
