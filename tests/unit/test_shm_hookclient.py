"""HookClient's shared-memory side against a scripted worker on a real DEALER socket.

The scripted worker maps the arena the WELCOME names, as a real worker does,
and answers by hand: forged references, late answers, vanished workers.  The
quarantine (gateway.bodies.Quarantine) is also tested alone.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import zmq.asyncio

from config.apidef import HookDef
from config.gateway import GatewayConfig, HookOptions, IpcOptions
from gateway.bodies import Quarantine, Slots
from gateway.hooks import HookClient, HookFailed, HookTimeout, WorkerLost
from ipc.protocol import MsgType
from ipc.shm import ArenaView, Slot
from tests.unit.test_gateway_hooks import KEY, FakeWorker, _Host

HOOK = HookDef(name="MyHook", timeout_ms=2000)
BIG = bytes(range(256)) * 256  # 64 KiB, binary


@pytest.fixture
async def env() -> AsyncIterator[tuple[HookClient, FakeWorker, ArenaView]]:
    run_dir = Path(tempfile.mkdtemp(prefix="cps-"))
    cfg = GatewayConfig(path=run_dir / "c.json", run_dir=run_dir,
                        hooks=HookOptions(worker_wait_ms=300),
                        ipc=IpcOptions(shm_threshold_bytes=1024, shm_arena_bytes=1 << 20))
    client = HookClient(cfg, KEY, _Host())
    await client.start()
    ctx = zmq.asyncio.Context()
    worker = FakeWorker(ctx, cfg.hooks_endpoint, 1)
    welcome = await worker.hello()
    shm = welcome.payload["shm"]
    view = ArenaView.attach(shm["name"], shm["size"])
    try:
        yield client, worker, view
    finally:
        view.close()
        await client.close()
        ctx.destroy(linger=0)
        shutil.rmtree(run_dir, ignore_errors=True)


def _obj(body: bytes = BIG) -> dict[str, Any]:
    return {"request": {"headers": {}, "raw_body": body, "body": ""}}


def _in_use(client: HookClient) -> int:
    return int(client.health()["shm"]["in_use"])


async def test_changed_body_comes_back_through_the_slot(env: Any) -> None:
    client, worker, view = env
    task = asyncio.ensure_future(client.call("x", "pre", HOOK, _obj()))
    call = await worker.recv()
    ref = call.payload["bodies"]["request"]
    assert "raw_body" not in call.payload["object"]["request"]
    assert view.read(ref["offset"], ref["length"]) == BIG and ref["text"] is False
    view.write(ref["offset"], BIG[::-1])
    await worker.send(MsgType.REPLY, call.call_id, {
        "object": {}, "bodies": {"request": {"offset": ref["offset"], "length": len(BIG)}}})
    result = await task
    assert result["request"]["raw_body"] == BIG[::-1]
    assert _in_use(client) == 0 and client.stats["shm_reply_bodies"] == 1


async def test_a_reference_to_another_slot_is_refused(env: Any) -> None:
    client, worker, _ = env
    task = asyncio.ensure_future(client.call("x", "pre", HOOK, _obj()))
    call = await worker.recv()
    ref = call.payload["bodies"]["request"]
    await worker.send(MsgType.REPLY, call.call_id, {
        "object": {}, "bodies": {"request": {"offset": ref["offset"] + ref["capacity"],
                                             "length": 10}}})
    with pytest.raises(HookFailed) as info:
        await task
    assert info.value.code == "protocol" and _in_use(client) == 0


async def test_timed_out_call_keeps_its_slot_until_the_late_answer(env: Any) -> None:
    client, worker, _ = env
    with pytest.raises(HookTimeout):
        await client.call("x", "pre", replace(HOOK, timeout_ms=100), _obj())
    call = await worker.recv()
    assert _in_use(client) > 0 and client.health()["shm"]["quarantined"] == 1
    await worker.send(MsgType.ERROR, call.call_id, {"code": "deadline", "message": "late"})
    for _ in range(100):  # bounded: the answer is handled within a few loop turns
        if _in_use(client) == 0:
            break
        await asyncio.sleep(0.01)
    assert _in_use(client) == 0 and client.health()["shm"]["quarantined"] == 0


async def test_a_dead_worker_releases_quarantined_slots(env: Any) -> None:
    client, worker, _ = env
    with pytest.raises(HookTimeout):
        await client.call("x", "pre", replace(HOOK, timeout_ms=100), _obj())
    pending = asyncio.ensure_future(client.call("x", "pre", HOOK, _obj()))
    await worker.recv()
    await worker.recv()
    assert _in_use(client) > 0
    client.on_worker_exited(1, "SIGKILL")
    with pytest.raises(WorkerLost):
        await pending
    assert _in_use(client) == 0


async def test_full_arena_sends_inline(env: Any) -> None:
    client, worker, _ = env
    huge = b"x" * (2 << 20)  # larger than the 1 MiB arena
    task = asyncio.ensure_future(client.call("x", "pre", HOOK, _obj(huge)))
    call = await worker.recv()
    assert "bodies" not in call.payload
    assert call.payload["object"]["request"]["raw_body"] == huge
    await worker.send(MsgType.REPLY, call.call_id, {"object": {}})
    assert (await task)["request"]["raw_body"] is huge
    assert client.stats["shm_fallback"] == 1


async def test_small_bodies_stay_inline(env: Any) -> None:
    client, worker, _ = env
    task = asyncio.ensure_future(client.call("x", "pre", HOOK, _obj(b"a" * 1023)))
    call = await worker.recv()
    assert "bodies" not in call.payload
    await worker.send(MsgType.REPLY, call.call_id, {"object": {}})
    await task
    assert client.stats["shm_bodies"] == 0


def test_quarantine_frees_on_a_late_answer_or_the_workers_loss_only() -> None:
    freed: list[Slots] = []
    quarantine = Quarantine(freed.append)
    one, two, three = ({"request": Slot(offset, 64)} for offset in (0, 64, 128))
    old, new = object(), object()
    quarantine.hold(old, 1, one)
    quarantine.hold(old, 2, two)
    quarantine.hold(new, 1, three)
    assert len(quarantine) == 3
    quarantine.answered(new, 2)  # not a call of `new` it holds: nothing to free
    quarantine.answered(old, 1)
    assert freed == [one] and len(quarantine) == 2
    quarantine.forget(old)
    assert freed == [one, two] and len(quarantine) == 1
    quarantine.forget(old)  # forgotten already
    assert freed == [one, two]
