"""TykGateway host calls: sent from the hook's thread, answered by the reading thread.

`FakeGateway` is an in-memory stand-in for the channel: it records every
message (checked against the real protocol codec) and the thread that sent it,
and answers HOST_CALLs from a dict, or not at all, or with an ERROR, on a
thread of its own, as the call thread reading the socket would.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from ipc.protocol import Message, MsgType, decode_frame, encode
from worker.hostcalls import HostCallError, HostCalls
from worker.tyk_api import CURRENT_API, TykGateway, install_plugin_api, running


class FakeGateway:
    def __init__(self, hostcalls: HostCalls, mode: str = "answer") -> None:
        self.hostcalls = hostcalls
        self.mode = mode
        self.data: dict[str, bytes] = {}
        self.sent: list[Message] = []
        self.sender_threads: set[int] = set()
        self.answer_threads: set[int] = set()
        self.arrived = threading.Event()

    def send(self, mtype: MsgType, call_id: int, payload: Mapping[str, Any]) -> bool:
        self.sender_threads.add(threading.get_ident())
        message = decode_frame(encode(mtype, call_id, payload))  # must be valid protocol
        self.sent.append(message)
        self.arrived.set()
        if mtype is MsgType.HOST_CALL and call_id and self.mode != "silent":
            threading.Thread(target=self._answer, args=(message,)).start()
        return True

    def _answer(self, message: Message) -> None:
        self.answer_threads.add(threading.get_ident())
        if self.mode == "error":
            self.hostcalls.fail(message.call_id, "host_call_failed: storage down")
            return
        op, key = message.payload["op"], message.payload.get("key", "")
        if op == "store_data":
            self.data[key] = message.payload["value"]
            self.hostcalls.resolve(message.call_id, {})
        else:
            value = self.data.get(key)
            self.hostcalls.resolve(message.call_id, {"value": value or b"",
                                                     "found": value is not None})

    def ops(self) -> list[tuple[int, dict[str, Any]]]:
        return [(m.call_id, m.payload) for m in self.sent if m.type is MsgType.HOST_CALL]


@pytest.fixture
def hostcalls() -> Iterator[HostCalls]:
    calls = HostCalls(timeout_s=0.3)
    undo = install_plugin_api(calls)
    try:
        yield calls
    finally:
        undo()


def bind(hostcalls: HostCalls, mode: str = "answer",
         loop: asyncio.AbstractEventLoop | None = None) -> FakeGateway:
    gateway = FakeGateway(hostcalls, mode)
    hostcalls.bind(loop or asyncio.get_running_loop(), gateway.send)
    return gateway


async def test_store_and_get_from_a_hook_thread(hostcalls: HostCalls) -> None:
    gateway = bind(hostcalls)
    hook_threads: set[int] = set()

    def hook() -> bytes:
        hook_threads.add(threading.get_ident())
        TykGateway.store_data("k", "välue", 60)
        return TykGateway.get_data("k")

    assert await asyncio.to_thread(hook) == "välue".encode()
    # sent from the hook's own thread, not through the event loop
    assert gateway.sender_threads == hook_threads
    assert await asyncio.to_thread(TykGateway.get_data, "absent") == b""
    ops = gateway.ops()
    assert ops[0][1] == {"op": "store_data", "key": "k", "value": "välue".encode(), "ttl": 60}
    assert [payload["op"] for _, payload in ops] == ["store_data", "get_data", "get_data"]
    assert len({call_id for call_id, _ in ops}) == 3 and all(cid > 0 for cid, _ in ops)
    assert hostcalls.pending == 0


async def test_log_and_trigger_event_do_not_wait(hostcalls: HostCalls) -> None:
    gateway = bind(hostcalls, mode="silent")  # no answers: these must not need one

    def hook() -> None:
        CURRENT_API.set("api-7")
        TykGateway.log("hello", "warning")
        TykGateway.log_error("bad")
        TykGateway.trigger_event("MyEvent", "details")

    await asyncio.to_thread(hook)
    assert gateway.ops() == [
        (0, {"op": "log", "level": "warning", "message": "hello", "api_id": "api-7"}),
        (0, {"op": "log", "level": "error", "message": "bad", "api_id": "api-7"}),
        (0, {"op": "trigger_event", "name": "MyEvent", "payload": "details", "api_id": "api-7"}),
    ]


async def test_unanswered_call_fails_at_its_deadline(hostcalls: HostCalls) -> None:
    bind(hostcalls, mode="silent")
    started = time.monotonic()
    with pytest.raises(HostCallError, match="no answer"):
        await asyncio.to_thread(TykGateway.get_data, "k")
    assert 0.25 < time.monotonic() - started < 3
    assert hostcalls.pending == 0


async def test_gateway_error_reaches_the_plugin(hostcalls: HostCalls) -> None:
    bind(hostcalls, mode="error")
    with pytest.raises(HostCallError, match="storage down"):
        await asyncio.to_thread(TykGateway.store_data, "k", b"v", 0)


async def test_blocking_call_on_the_loop_is_refused_and_async_variant_works(
        hostcalls: HostCalls) -> None:
    bind(hostcalls)
    with pytest.raises(HostCallError, match="async"):
        TykGateway.get_data("k")  # on the loop thread: would stall it
    await TykGateway.store_data_async("k", b"v")
    assert await TykGateway.get_data_async("k") == b"v"


def test_replies_reach_the_hook_thread_without_the_event_loop(hostcalls: HostCalls) -> None:
    # The loop exists but never runs: the reading thread hands the reply straight
    # to the waiting hook thread (a trip through the loop would time out here).
    loop = asyncio.new_event_loop()
    try:
        gateway = bind(hostcalls, loop=loop)
        with concurrent.futures.ThreadPoolExecutor(1) as hook_thread:
            hook_thread.submit(TykGateway.store_data, "k", b"v", 0).result(5)
            assert hook_thread.submit(TykGateway.get_data, "k").result(5) == b"v"
        assert gateway.answer_threads and hostcalls.pending == 0
    finally:
        loop.close()


async def test_late_reply_is_ignored(hostcalls: HostCalls) -> None:
    bind(hostcalls)
    assert hostcalls.resolve(999, {"value": b"x", "found": True}) is False
    assert hostcalls.fail(999, "nope") is False


def test_before_the_loop_runs_log_is_local_and_data_calls_fail(
        hostcalls: HostCalls, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="plugin"):
        TykGateway.log("at import time", "info")
    assert "at import time" in caplog.text
    with pytest.raises(HostCallError):
        TykGateway.get_data("k")
    with pytest.raises(TypeError):
        TykGateway.store_data("k", 5, 0)


async def test_log_lines_name_the_hook_and_request(hostcalls: HostCalls) -> None:
    gateway = bind(hostcalls, mode="silent")

    def hook() -> None:
        running("api-9", "MyHook", "rid-1")
        TykGateway.log("from the hook")

    await asyncio.to_thread(hook)
    assert gateway.ops() == [(0, {"op": "log", "level": "info", "message": "from the hook",
                                  "api_id": "api-9", "hook": "MyHook", "request_id": "rid-1"})]
