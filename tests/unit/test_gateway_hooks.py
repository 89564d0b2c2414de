"""HookClient against a scripted worker on a real ZeroMQ DEALER socket."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from config.apidef import HookDef
from config.gateway import GatewayConfig, HookOptions
from gateway.hooks import HookClient, HookFailed, HookTimeout, NoWorker, WorkerLost
from ipc.coprocess import RUN_NS, changes_nothing, merge_reply
from ipc.protocol import MAX_BATCH, MsgType, decode, encode
from ipc.tokens import worker_token

KEY = b"k" * 32


class _Host:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def host_call(self, api_id: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        if payload["op"] == "store_data":
            self.data[payload["key"]] = payload["value"]
            return {}
        if payload["op"] == "get_data":
            value = self.data.get(payload["key"])
            return {"value": value or b"", "found": value is not None}
        return None


class FakeWorker:
    """Plays the worker side of the protocol by hand."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, generation: int) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.generation = generation
        self.backlog: list[Any] = []  # the rest of the last batch received
        self.batch_sizes: list[int] = []  # messages per ZeroMQ message received

    async def send(self, mtype: MsgType, call_id: int, payload: dict[str, Any]) -> None:
        await self.sock.send_multipart([encode(mtype, call_id, payload)])

    async def recv(self) -> Any:
        if not self.backlog:
            frames = await asyncio.wait_for(self.sock.recv_multipart(), 2.0)
            self.batch_sizes.append(len(frames))
            self.backlog = [decode([frame]) for frame in frames]
        return self.backlog.pop(0)

    async def hello(self, token: str | None = None) -> Any:
        await self.send(MsgType.HELLO, 0, {
            "generation": self.generation, "pid": 4242,
            "token": token or worker_token(KEY, self.generation), "plugins": {},
        })
        return await self.recv()


async def _admitted(env: Any) -> tuple[HookClient, FakeWorker]:
    """The hook client and a worker it admitted (generation 1)."""
    client, ctx, endpoint, _ = env
    worker = FakeWorker(ctx, endpoint, 1)
    await worker.hello()
    return client, worker


@pytest.fixture
async def env() -> AsyncIterator[tuple[HookClient, zmq.asyncio.Context, str, _Host]]:
    run_dir = Path(tempfile.mkdtemp(prefix="cph-"))
    cfg = GatewayConfig(path=run_dir / "c.json", run_dir=run_dir,
                        hooks=HookOptions(worker_wait_ms=300))
    host = _Host()
    client = HookClient(cfg, KEY, host)
    await client.start()
    ctx = zmq.asyncio.Context()
    try:
        yield client, ctx, cfg.hooks_endpoint, host
    finally:
        await client.close()
        ctx.destroy(linger=0)
        shutil.rmtree(run_dir, ignore_errors=True)


HOOK = HookDef(name="MyHook", timeout_ms=500)


async def _serve_one(worker: FakeWorker, reply: dict[str, Any]) -> Any:
    call = await worker.recv()
    assert call.type is MsgType.CALL
    await worker.send(MsgType.REPLY, call.call_id, {"object": reply})
    return call


async def test_admitted_worker_answers_and_reply_is_merged(env: Any) -> None:
    client, ctx, endpoint, _ = env
    worker = FakeWorker(ctx, endpoint, 1)
    welcome = await worker.hello()
    assert welcome.type is MsgType.WELCOME and welcome.payload["active"] is True
    sent = {"request": {"headers": {"A": "1"}, "raw_body": b"big"}, "spec": {"APIID": "x"}}
    task = asyncio.ensure_future(client.call("x", "pre", HOOK, sent))
    call = await _serve_one(worker, {"request": {"set_headers": {"B": "2"}}})
    result = await task
    assert call.payload["hook_name"] == "MyHook" and call.payload["object"] == sent
    assert result["request"] == {
        "headers": {"A": "1"}, "raw_body": b"big", "set_headers": {"B": "2"}}
    assert result["spec"] == {"APIID": "x"}
    assert client.health()["ready"] and client.health()["generation"] == 1


async def test_bad_token_is_rejected_and_not_routed(env: Any) -> None:
    client, ctx, endpoint, _ = env
    worker = FakeWorker(ctx, endpoint, 1)
    answer = await worker.hello(token="0" * 64)
    assert answer.type is MsgType.REJECT
    with pytest.raises(NoWorker):
        await client.call("x", "pre", HOOK, {})


async def test_deadline_gives_timeout(env: Any) -> None:
    client, _worker = await _admitted(env)  # admitted, and never answers
    started = time.monotonic()
    with pytest.raises(HookTimeout):
        await client.call("x", "pre", replace(HOOK, timeout_ms=100), {})
    assert time.monotonic() - started < 1.0
    assert client.stats["timeouts"] == 1


async def test_worker_exit_fails_inflight_calls_at_once(env: Any) -> None:
    client, worker = await _admitted(env)
    task = asyncio.ensure_future(client.call("x", "pre", replace(HOOK, timeout_ms=5000), {}))
    await worker.recv()  # the call arrived; the worker never answers
    started = time.monotonic()
    client.on_worker_exited(1, "killed by SIGKILL")
    with pytest.raises(WorkerLost):
        await task
    assert time.monotonic() - started < 0.5
    assert client.health()["ready"] is False


async def test_error_reply_and_hostile_garbage(env: Any) -> None:
    client, ctx, endpoint, _ = env
    worker = FakeWorker(ctx, endpoint, 1)
    await worker.hello()
    hostile = ctx.socket(zmq.DEALER)
    hostile.setsockopt(zmq.LINGER, 0)
    hostile.connect(endpoint)
    await hostile.send_multipart([b"\x01", b"\x04", b"12345678", b"\xc1garbage"])
    rejected = decode(await asyncio.wait_for(hostile.recv_multipart(), 2))
    assert rejected.type is MsgType.REJECT and "protocol error" in rejected.payload["reason"]
    hostile.close()
    task = asyncio.ensure_future(client.call("x", "pre", HOOK, {}))
    call = await worker.recv()
    await worker.send(MsgType.ERROR, call.call_id, {"code": "hook_failed", "message": "boom"})
    with pytest.raises(HookFailed) as info:
        await task
    assert info.value.code == "hook_failed"
    assert client.stats["protocol_errors"] == 1


async def test_invalid_reply_fails_its_call_fast(env: Any) -> None:
    client, worker = await _admitted(env)
    task = asyncio.ensure_future(client.call("x", "pre", replace(HOOK, timeout_ms=5000), {}))
    call = await worker.recv()
    await worker.send(MsgType.REPLY, call.call_id, {"object": {"request": {"headers": 5}}})
    with pytest.raises(HookFailed) as info:
        await asyncio.wait_for(task, 1)
    assert info.value.code == "protocol"


async def test_a_batch_of_replies_is_read_message_by_message(env: Any) -> None:
    """Three answers in one ZeroMQ message: the valid ones resolve their calls and
    the invalid one fails its own call at once; the worker stays admitted."""
    client, worker = await _admitted(env)
    slow = replace(HOOK, timeout_ms=5000)
    tasks = [asyncio.ensure_future(client.call("x", "pre", slow, {})) for _ in range(3)]
    calls = [await worker.recv() for _ in range(3)]
    assert worker.batch_sizes[-1] == 3
    await worker.sock.send_multipart([
        encode(MsgType.REPLY, calls[0].call_id, {"object": {"metadata": {"n": "0"}}}),
        encode(MsgType.REPLY, calls[1].call_id, {"object": {"request": {"headers": 5}}}),
        encode(MsgType.REPLY, calls[2].call_id, {"object": {"metadata": {"n": "2"}}}),
    ])
    done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 1)
    assert done[0]["metadata"] == {"n": "0"} and done[2]["metadata"] == {"n": "2"}
    assert isinstance(done[1], HookFailed) and done[1].code == "protocol"
    assert client.stats["protocol_errors"] == 1
    assert client.health()["generation"] == 1


async def test_a_batch_over_the_bound_is_refused_whole(env: Any) -> None:
    client, worker = await _admitted(env)
    task = asyncio.ensure_future(client.call("x", "pre", replace(HOOK, timeout_ms=300), {}))
    call = await worker.recv()
    reply = encode(MsgType.REPLY, call.call_id, {"object": {}})
    await worker.sock.send_multipart([reply] * (MAX_BATCH + 1))
    with pytest.raises(HookTimeout):  # none of it was read as an answer
        await asyncio.wait_for(task, 2)
    assert client.stats["protocol_errors"] == 1


async def test_newer_generation_takes_over_and_older_drains(env: Any) -> None:
    client, ctx, endpoint, _ = env
    old, new = FakeWorker(ctx, endpoint, 1), FakeWorker(ctx, endpoint, 2)
    await old.hello()
    assert (await new.hello()).payload["active"] is True
    drain = await old.recv()
    assert drain.type is MsgType.DRAIN
    task = asyncio.ensure_future(client.call("x", "pre", HOOK, {}))
    await _serve_one(new, {"metadata": {"gen": "2"}})
    assert (await task)["metadata"] == {"gen": "2"}
    stale = FakeWorker(ctx, endpoint, 1)
    assert (await stale.hello()).type is MsgType.REJECT


async def test_host_calls_are_answered(env: Any) -> None:
    _, ctx, endpoint, host = env
    worker = FakeWorker(ctx, endpoint, 1)
    await worker.hello()
    store = {"op": "store_data", "key": "k", "value": b"v", "ttl": 0}
    await worker.send(MsgType.HOST_CALL, 7, store)
    assert (await worker.recv()).call_id == 7
    await worker.send(MsgType.HOST_CALL, 8, {"op": "get_data", "key": "k"})
    reply = await worker.recv()
    assert reply.type is MsgType.HOST_REPLY and reply.payload == {"value": b"v", "found": True}
    assert host.data == {"k": b"v"}


async def test_unknown_peer_is_asked_to_resync(env: Any) -> None:
    _, ctx, endpoint, _ = env
    worker = FakeWorker(ctx, endpoint, 3)
    await worker.send(MsgType.HEARTBEAT, 0, {"generation": 3})
    assert (await worker.recv()).type is MsgType.RESYNC


async def test_fatal_state_fails_waiting_calls_immediately(env: Any) -> None:
    client, _, _, _ = env
    task = asyncio.ensure_future(client.call("x", "pre", HOOK, {}))
    await asyncio.sleep(0.02)
    client.on_worker_state("fatal", None, "flapping")
    with pytest.raises(NoWorker, match="fatal"):
        await asyncio.wait_for(task, 0.2)


async def test_a_reply_that_changes_nothing_gives_back_the_object_sent(env: Any) -> None:
    """The chain skips applying it (gateway/chain.py): the object is the very one sent,
    with the hook's own run time."""
    client, worker = await _admitted(env)
    sent = {"request": {"headers": {"A": "1"}}}
    task = asyncio.ensure_future(client.call("x", "pre", HOOK, sent))
    call = await worker.recv()
    await worker.send(MsgType.REPLY, call.call_id, {"object": {}, "run_ns": 1234})
    result = await task
    assert result is sent and result[RUN_NS] == 1234
    assert changes_nothing({}) and changes_nothing({RUN_NS: 5})
    assert not changes_nothing({RUN_NS: 5, "metadata": {}})


def test_merge_reply_replaces_record_fields_only() -> None:
    sent = {"request": {"a": 1, "b": 2}, "metadata": {"x": "1"}}
    assert merge_reply(sent, {"request": {"b": 3}, "metadata": {}}) == {
        "request": {"a": 1, "b": 3}, "metadata": {}}
    assert sent["request"] == {"a": 1, "b": 2}


async def test_drain_lists_the_calls_still_in_flight(env: Any) -> None:
    client, ctx, endpoint, _ = env
    old = FakeWorker(ctx, endpoint, 1)
    await old.hello()
    pending = asyncio.ensure_future(client.call("x", "pre", HOOK, {}))
    call = await old.recv()
    await FakeWorker(ctx, endpoint, 2).hello()
    drain = await old.recv()
    assert drain.type is MsgType.DRAIN and drain.payload["calls"] == [call.call_id]
    await old.send(MsgType.REPLY, call.call_id, {"object": {}})
    await pending


async def test_calls_sent_in_one_loop_turn_leave_before_any_later_message(env: Any) -> None:
    """CALLs wait for the end of the loop turn (one I/O-thread wake for the turn's calls);
    a message sent meanwhile (here an EVENT; on a hot restart, DRAIN) must not overtake
    them: the worker refuses CALLs that arrive after its DRAIN."""
    client, worker = await _admitted(env)
    calls = [asyncio.ensure_future(client.call("x", "pre", HOOK, {})) for _ in range(3)]
    await asyncio.sleep(0)  # the calls are queued, not sent yet
    assert client.send_event("x", "OnEvent", {"type": "t"}, {})
    received = [await worker.recv() for _ in range(4)]
    assert [m.type for m in received] == [MsgType.CALL] * 3 + [MsgType.EVENT]
    assert worker.batch_sizes[-2:] == [3, 1]  # the turn's CALLs as one ZeroMQ message
    for message in received[:3]:
        await worker.send(MsgType.REPLY, message.call_id, {"object": {}})
    await asyncio.gather(*calls)


async def test_answers_sent_before_the_exit_report_still_count(env: Any) -> None:
    """A worker answers its last call and exits; the supervisor's exit report (another
    channel) reaches the gateway before the answer was read: the call still succeeds,
    and no new call is routed to the gone worker."""
    client, worker = await _admitted(env)
    task = asyncio.ensure_future(client.call("x", "pre", HOOK, {}))
    call = await worker.recv()
    await worker.send(MsgType.REPLY, call.call_id, {"object": {"metadata": {"last": "1"}}})
    client.on_worker_exited(1, "exit code 0")  # before the loop read the REPLY
    assert (await task)["metadata"] == {"last": "1"}
    with pytest.raises(NoWorker):
        await client.call("x", "pre", HOOK, {})


async def test_a_disconnected_worker_is_dropped_by_the_send_that_finds_it_gone(env: Any) -> None:
    """The one send path: a CALL to a worker whose socket is gone fails at once with
    WorkerLost (not at its deadline), and the worker is no longer routed to."""
    client, worker = await _admitted(env)
    worker.sock.close()
    lost = None
    for _ in range(50):  # bounded: until the ROUTER has seen the disconnect
        try:
            await client.call("x", "pre", replace(HOOK, timeout_ms=50), {})
        except HookTimeout:
            continue  # sent before the ROUTER knew: nobody answers
        except WorkerLost as exc:
            lost = exc
            break
    assert lost is not None and "worker disconnected" in str(lost)
    assert client.health()["ready"] is False and client.stats["worker_lost"] >= 1
    assert not client.send_event("x", "OnEvent", {}, {})
