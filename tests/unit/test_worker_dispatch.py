"""CALL handling on the worker's one path: call threads, dispatcher, loop calls.

The worker's real objects (`Channel`, `CallThreads`, `Dispatcher`,
`LoopCalls`, `Answers`, `HostCalls`) run in this process against real plugin
files loaded by the real loader; the test plays the gateway on a real ZeroMQ
ROUTER socket, sending CALLs as the gateway does and checking every answer
against the wire schema.  Covered: Tyk's arity convention, REPLY deltas,
async hooks on the loop, deadlines, errors, concurrency through hand-offs,
one hook lookup per call, events, and host-call replies handled on the
reading thread.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import tempfile
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from config import load_api_definitions, load_gateway_config
from ipc.protocol import PAYLOADS, ErrorCode, Message, MsgType, decode, encode
from ipc.schema import check
from worker.answers import Answers, CallLedger
from worker.callthreads import CallThreads
from worker.channel import Channel
from worker.dispatch import Dispatcher
from worker.hostcalls import HostCalls
from worker.lane import Lane
from worker.loader import HookTable, load_plugins
from worker.loopcalls import LoopCalls
from worker.tyk_api import install_plugin_api

#: Bound on every wait for an answer.
STEP_S = 10.0
#: The call threads' hand-off delay here: short, so blocked hooks hand off fast.
HANDOFF_S = 0.02

PLUGIN = """
    import asyncio
    import threading

    from tyk.decorators import *
    from gateway import TykGateway as tyk

    from coprocess_session_state_pb2 import SessionState  # as Tyk plugins spell it

    BARRIER = threading.Barrier(2, timeout=5)
    RELEASE = threading.Event()
    EVENTS = []

    @Hook
    def Three(request, session, spec):
        request.add_header("X-Api", spec["APIID"])
        request.add_header("X-Ua", request.get_header("user-agent") or "none")
        request.add_header("X-Missing", repr(request.get_header("X-Nope")))
        request.delete_header("Cookie")
        request.add_param("p", "1")
        request.delete_param("q")
        return request, session

    @Hook
    def Auth(request, session, metadata, spec):
        if request.object.headers["Authorization"] == "Bearer good":
            session.rate = 100
            session.per = 1
            metadata["token"] = "good"
        else:
            request.object.return_overrides.response_code = 403
            request.object.return_overrides.response_error = "Key not authorised"
        return request, session, metadata

    @Hook
    def AuthNewDict(request, session, metadata, spec):
        return request, session, {"token": "from-dict"}

    @Hook
    def Response(request, response, session, metadata, spec):
        response.headers["X-Stamped"] = "yes"
        response.raw_body = response.raw_body.upper()
        response.status_code = 201
        return response

    @Hook
    def FiveAsPre(request, response, session, metadata, spec):
        request.object.return_overrides.response_code = 200
        request.object.return_overrides.response_body = "mocked"
        return response

    @Hook
    def ReturnsNone(request, session, spec):
        request.add_header("X-None", "kept")

    @Hook
    def ReturnsJunk(request, session, spec):
        request.add_header("X-Junk", "kept")
        return "oops"

    @Hook
    def NewSession(request, session, spec):
        fresh = SessionState(org_id="new-org")
        fresh.metadata["k"] = "v"
        return request, fresh

    @Hook
    async def AsyncHook(request, session, spec):
        await asyncio.sleep(0)
        request.add_header("X-Async", "1")
        request.add_header("X-Thread", threading.current_thread().name)
        return request, session

    @Hook
    def WhichThread(request, session, spec):
        request.add_header("X-Thread", threading.current_thread().name)
        return request, session

    @Hook
    async def AsyncSlow(request, session, spec):
        await asyncio.sleep(30)

    @Hook
    def SyncSlow(request, session, spec):
        RELEASE.wait(10)
        return request, session

    @Hook
    def Rendezvous(request, session, spec):
        BARRIER.wait()  # needs two calls running at once
        return request, session

    @Hook
    def Raises(request, session, spec):
        raise ValueError("bad input")

    @Hook
    def Exits(request, session, spec):
        raise SystemExit(3)

    @Hook
    def BadValue(request, session, spec):
        request.object.set_headers["X-N"] = 5  # TypeError, like protobuf
        return request, session

    @Hook
    def TooMany(request, session, metadata, spec, extra, more):
        return None

    @Hook
    def HostCall(request, session, spec):
        tyk.store_data("k", "v", 0)
        request.add_header("X-Got", tyk.get_data("k").decode())
        return request, session

    @Event
    def OnThing(event, spec):
        EVENTS.append((event.name, spec["APIID"], threading.current_thread().name))

    @Event
    async def OnThingAsync(event, spec):
        EVENTS.append((event.name, spec["APIID"], threading.current_thread().name))
"""

BROKEN = "raise RuntimeError('cannot import')\n"


class Gateway:
    """The test's end of the hooks socket: a ROUTER that sends CALLs and EVENTs."""

    def __init__(self, endpoint: str) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.peer = b""
        self.ids = itertools.count(1)
        self.store: dict[str, bytes] = {}
        self.host_calls = 0
        self.backlog: list[Message] = []  # the rest of the last batch received

    def send(self, mtype: MsgType, call_id: int, payload: dict[str, Any]) -> None:
        self.sock.send_multipart([self.peer, encode(mtype, call_id, payload)])

    async def receive(self) -> Message:
        """The next message from the worker; HOST_CALLs are served on the way."""
        deadline = time.monotonic() + STEP_S
        while time.monotonic() < deadline:
            if not self.backlog and self.sock.poll(0):
                peer, *frames = self.sock.recv_multipart()
                self.peer = peer
                self.backlog = [decode([frame]) for frame in frames]  # a batch
            if self.backlog:
                message = self.backlog.pop(0)
                if message.type is MsgType.HOST_CALL and message.call_id:
                    self._serve_host_call(message)
                    continue
                return message
            await asyncio.sleep(0.002)
        raise AssertionError("no message from the worker in time")

    def _serve_host_call(self, message: Message) -> None:
        self.host_calls += 1
        payload = message.payload
        if payload["op"] == "store_data":
            self.store[payload["key"]] = payload["value"]
            self.send(MsgType.HOST_REPLY, message.call_id, {})
        else:
            value = self.store.get(payload["key"])
            self.send(MsgType.HOST_REPLY, message.call_id,
                      {"value": value or b"", "found": value is not None})

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


class Harness:
    """The worker's call path, in this process, connected to `gateway`."""

    def __init__(self, table: HookTable, endpoint: str, hostcalls: HostCalls) -> None:
        self.table = table
        self.gateway = Gateway(endpoint)
        self.calls = CallThreads(hostcalls, threads_per_lane=4, handoff_s=HANDOFF_S)
        self.channel = Channel(endpoint, waker=self.calls.waker)
        self.dispatcher = Dispatcher(table, default_timeout_ms=2000)
        self.ledger = CallLedger()
        answers = Answers(self.channel, self.ledger)
        self.loop_calls = LoopCalls(self.dispatcher, answers)
        self.lane = Lane(self.channel, self.dispatcher, answers, self.loop_calls)
        self.hostcalls = hostcalls
        hostcalls.before_blocking = self.calls.before_blocking
        self.delivered: list[Message] = []  # what the call threads gave the loop

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.hostcalls.bind(loop, self.channel.send)
        # The ROUTER learns the worker's routing id from its first message.
        deadline = time.monotonic() + STEP_S
        while not self.channel.send(MsgType.HEARTBEAT, 0, {"generation": 1}):
            assert time.monotonic() < deadline, "the DEALER never connected"
            await asyncio.sleep(0.005)
        assert (await self.gateway.receive()).type is MsgType.HEARTBEAT
        self.calls.attach(self.lane, loop, self.delivered.append)

    def send_call(self, name: str, obj: dict[str, Any] | None = None, *, api_id: str = "api",
                  hook_type: str = "pre", timeout_ms: int = 2000) -> int:
        call_id = next(self.gateway.ids)
        self.gateway.send(MsgType.CALL, call_id, payload(name, obj, api_id=api_id,
                                                          hook_type=hook_type,
                                                          timeout_ms=timeout_ms))
        return call_id

    async def answers(self, count: int) -> dict[int, Message]:
        got: dict[int, Message] = {}
        while len(got) < count:
            message = await self.gateway.receive()
            assert message.type in (MsgType.REPLY, MsgType.ERROR), message
            check(message.payload, PAYLOADS[message.type])
            got[message.call_id] = message
        return got

    async def call(self, name: str, obj: dict[str, Any] | None = None,
                   **kwargs: Any) -> Message:
        call_id = self.send_call(name, obj, **kwargs)
        return (await self.answers(1))[call_id]

    async def reply_of(self, name: str, obj: dict[str, Any] | None = None,
                       **kwargs: Any) -> dict[str, Any]:
        answer = await self.call(name, obj, **kwargs)
        assert answer.type is MsgType.REPLY, answer
        reply: dict[str, Any] = answer.payload["object"]
        return reply

    async def error_of(self, name: str, obj: dict[str, Any] | None = None,
                       **kwargs: Any) -> dict[str, Any]:
        answer = await self.call(name, obj, **kwargs)
        assert answer.type is MsgType.ERROR, answer
        return answer.payload

    async def settled(self) -> None:
        """Until no call counts as in flight (the count drops right after the send)."""
        for _ in range(int(STEP_S / 0.005)):
            if self.lane.inflight == 0 and self.loop_calls.inflight == 0:
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"{self.lane.inflight} + {self.loop_calls.inflight} call(s) "
                             "still in flight")

    async def close(self) -> None:
        await self.loop_calls.cancel()
        await asyncio.to_thread(self.calls.detach, self.lane)
        await asyncio.to_thread(self.calls.stop)
        self.channel.close()
        self.gateway.close()
        self.dispatcher.close()


@pytest.fixture
def hostcalls() -> Iterator[HostCalls]:
    calls = HostCalls(timeout_s=5)
    undo = install_plugin_api(calls)
    try:
        yield calls
    finally:
        undo()


@pytest.fixture
def table(tmp_path: Path, hostcalls: HostCalls) -> Iterator[HookTable]:
    tmp = tmp_path
    (tmp / "apps").mkdir()
    (tmp / "middleware" / "p").mkdir(parents=True)
    (tmp / "middleware" / "p" / "mw.py").write_text(textwrap.dedent(PLUGIN))
    (tmp / "middleware" / "b").mkdir(parents=True)
    (tmp / "middleware" / "b" / "mw.py").write_text(BROKEN)
    for api_id, path, name in (("api", "p/mw.py", "Three"), ("broken", "b/mw.py", "X")):
        (tmp / "apps" / f"{api_id}.json").write_text(json.dumps({
            "api_id": api_id, "proxy": {"listen_path": f"/{api_id}/",
                                        "target_url": "http://127.0.0.1:9/"},
            "custom_middleware": {"pre": [{"name": name, "path": path}]}}))
    (tmp / "coproc.json").write_text(json.dumps({"coproc": {"run_dir": "run"}}))
    cfg = load_gateway_config(tmp / "coproc.json")
    table = load_plugins(cfg, load_api_definitions(cfg))
    try:
        yield table
    finally:
        plugin_globals(table)["RELEASE"].set()  # never leave a call thread blocked


@pytest.fixture
async def worker(table: HookTable, hostcalls: HostCalls) -> AsyncIterator[Harness]:
    base = Path(tempfile.mkdtemp(prefix="cpd-"))  # short: ipc:// paths must fit sun_path
    harness = Harness(table, f"ipc://{base}/h.sock", hostcalls)
    try:
        await harness.start()
        yield harness
    finally:
        plugin_globals(table)["RELEASE"].set()
        await harness.close()
        shutil.rmtree(base, ignore_errors=True)


def plugin_globals(table: HookTable) -> dict[str, Any]:
    module: dict[str, Any] = table.find("api", "SyncSlow").func.f.__globals__
    return module


def payload(name: str, obj: dict[str, Any] | None = None, *, api_id: str = "api",
            hook_type: str = "pre", timeout_ms: int = 2000) -> dict[str, Any]:
    message = {"api_id": api_id, "hook_type": hook_type, "hook_name": name,
               "timeout_ms": timeout_ms,
               "object": {"hook_type": hook_type, "hook_name": name,
                          "spec": {"APIID": api_id, "config_data": "{}"}, **(obj or {})}}
    check(message, PAYLOADS[MsgType.CALL])
    return message


async def test_three_args_request_helpers_and_minimal_reply(worker: Harness) -> None:
    body = b"B" * 50_000
    reply = await worker.reply_of("Three", {"request": {
        "headers": {"User-Agent": "curl", "Cookie": "c"}, "raw_body": body,
        "params": {"q": "x"}, "return_overrides": {"response_code": -1}}})
    assert reply == {"request": {
        "set_headers": {"X-Api": "api", "X-Ua": "curl", "X-Missing": "None"},
        "delete_headers": ["Cookie"], "add_params": {"p": "1"}, "delete_params": ["q"]}}


async def test_four_args_auth_merges_metadata(worker: Harness) -> None:
    reply = await worker.reply_of("Auth", {
        "request": {"headers": {"Authorization": "Bearer good"}},
        "session": {"metadata": {"seen": "1"}}}, hook_type="auth_check")
    assert reply["session"] == {"rate": 100.0, "per": 1.0,
                                "metadata": {"seen": "1", "token": "good"}}
    assert reply["metadata"] == {"seen": "1", "token": "good"}
    assert "request" not in reply
    denied = await worker.reply_of("Auth", {
        "request": {"headers": {"Authorization": "Bearer bad"},
                    "return_overrides": {"response_code": -1}}}, hook_type="auth_check")
    assert denied == {"request": {"return_overrides": {
        "response_code": 403, "response_error": "Key not authorised"}}}
    returned = await worker.reply_of("AuthNewDict", hook_type="auth_check")
    assert returned["session"]["metadata"] == {"token": "from-dict"}
    assert returned["metadata"] == {"token": "from-dict"}


async def test_five_args_response_hook(worker: Harness) -> None:
    reply = await worker.reply_of("Response", {
        "request": {"headers": {"A": "1"}, "raw_body": b"req"},
        "response": {"status_code": 200, "raw_body": b"hello", "headers": {"C": "d"}}},
        hook_type="response")
    assert reply == {"response": {"headers": {"C": "d", "X-Stamped": "yes"},
                                  "raw_body": b"HELLO", "status_code": 201}}


async def test_five_args_in_pre_phase_gets_empty_response(worker: Harness) -> None:
    reply = await worker.reply_of("FiveAsPre", {
        "request": {"return_overrides": {"response_code": -1}}})
    assert reply == {"request": {"return_overrides": {
        "response_code": 200, "response_body": "mocked"}}}


@pytest.mark.parametrize(("name", "header"), [("ReturnsNone", "X-None"),
                                               ("ReturnsJunk", "X-Junk")])
async def test_in_place_changes_count_whatever_is_returned(
        worker: Harness, name: str, header: str) -> None:
    reply = await worker.reply_of(name)
    assert reply == {"request": {"set_headers": {header: "kept"}}}


async def test_returned_objects_replace_the_arguments(worker: Harness) -> None:
    reply = await worker.reply_of("NewSession", {"session": {"org_id": "old", "rate": 5.0}})
    # the new session replaces the old one: rate back to its default, org and metadata new
    assert reply == {"session": {"org_id": "new-org", "rate": 0.0, "metadata": {"k": "v"}}}


async def test_plain_hooks_on_call_threads_async_hooks_on_the_loop(worker: Harness) -> None:
    plain = await worker.reply_of("WhichThread")
    assert plain["request"]["set_headers"]["X-Thread"].startswith("coproc-call-")
    on_loop = await worker.reply_of("AsyncHook")
    assert on_loop == {"request": {"set_headers": {
        "X-Async": "1", "X-Thread": threading.current_thread().name}}}
    assert not worker.delivered  # CALLs never go to the loop as messages


@pytest.mark.parametrize("name", ["AsyncSlow", "SyncSlow"])
async def test_deadline_answers_instead_of_waiting(worker: Harness, name: str) -> None:
    started = time.monotonic()
    answer = await worker.error_of(name, timeout_ms=100)
    assert time.monotonic() - started < 2
    assert answer["code"] == ErrorCode.DEADLINE
    assert "did not finish within 100 ms" in answer["message"]
    assert worker.lane.deadlines == (name == "SyncSlow")  # the watchdog's, for plain hooks
    await worker.settled()


async def test_sync_hooks_run_concurrently(worker: Harness) -> None:
    # Each call blocks until the other one runs: the leader reading both would wait
    # for ever; the hand-off lets a second call thread read and run the other one.
    first = worker.send_call("Rendezvous", timeout_ms=5000)
    second = worker.send_call("Rendezvous", timeout_ms=5000)
    answers = await worker.answers(2)
    assert answers[first].type is MsgType.REPLY and answers[second].type is MsgType.REPLY
    assert worker.calls.handoffs >= 1 and worker.calls.threads >= 2


async def test_each_call_looks_its_hook_up_once(worker: Harness,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[str] = []
    find = worker.table.find

    def counting(api_id: str, name: str) -> Any:
        lookups.append(name)
        return find(api_id, name)

    monkeypatch.setattr(worker.table, "find", counting)
    await worker.reply_of("ReturnsNone")
    await worker.reply_of("AsyncHook")
    assert lookups == ["ReturnsNone", "AsyncHook"]


@pytest.mark.parametrize(("name", "code", "message"), [
    ("Raises", ErrorCode.HOOK_FAILED, "ValueError: bad input"),
    ("Exits", ErrorCode.HOOK_FAILED, "SystemExit: 3"),
    ("BadValue", ErrorCode.HOOK_FAILED, "TypeError: 5 has type int"),
    ("TooMany", ErrorCode.HOOK_FAILED, "TypeError: hook TooMany takes 6"),
    ("NoSuchHook", ErrorCode.NO_SUCH_HOOK, "API 'api' has no hook 'NoSuchHook'"),
])
async def test_failures_become_errors(worker: Harness, name: str, code: ErrorCode,
                                      message: str) -> None:
    answer = await worker.error_of(name)
    assert answer["code"] == code
    assert answer["message"].startswith(message), answer["message"]
    await worker.settled()


async def test_failed_plugin_answers_load_failed(worker: Harness) -> None:
    answer = await worker.error_of("X", api_id="broken")
    assert answer["code"] == ErrorCode.LOAD_FAILED
    assert answer["message"].startswith("RuntimeError: cannot import")
    # and the other API still works
    assert await worker.reply_of("AsyncHook")


async def test_host_call_replies_are_handled_on_the_reading_thread(worker: Harness) -> None:
    reply = await worker.reply_of("HostCall")
    assert reply == {"request": {"set_headers": {"X-Got": "v"}}}
    assert worker.gateway.host_calls == 2
    assert not worker.delivered  # no HOST_REPLY went through the event loop
    assert worker.hostcalls.pending == 0


async def test_event_handlers_run_on_call_threads_or_the_loop(worker: Harness) -> None:
    events: list[tuple[str, str, str]] = plugin_globals(worker.table)["EVENTS"]
    for handler in ("OnThing", "NoSuchHandler", "OnThingAsync"):  # a missing one is logged
        worker.gateway.send(MsgType.EVENT, 0, {"api_id": "api", "handler": handler,
                                               "event": {"name": handler},
                                               "spec": {"APIID": "api"}})
    for _ in range(int(STEP_S / 0.005)):  # bounded: both handlers ran, or fail below
        if len(events) >= 2:
            break
        await asyncio.sleep(0.005)
    by_name = {name: thread for name, _, thread in events}
    assert by_name["OnThing"].startswith("coproc-call-")
    assert by_name["OnThingAsync"] == threading.current_thread().name
    assert {api for _, api, _ in events} == {"api"}


async def test_calls_after_a_drain_are_refused(worker: Harness) -> None:
    worker.gateway.send(MsgType.DRAIN, 0, {"grace_ms": 1000})
    answer = await worker.error_of("ReturnsNone")
    assert answer["code"] == ErrorCode.DRAINING
    await asyncio.sleep(0)  # the DRAIN was handed to this loop before the CALL was read
    assert [m.type for m in worker.delivered] == [MsgType.DRAIN]


@pytest.mark.parametrize("name", ["Three", "AsyncHook"])
async def test_each_reply_carries_its_hooks_own_run_time(worker: Harness, name: str) -> None:
    started = time.perf_counter_ns()
    answer = await worker.call(name)
    elapsed = time.perf_counter_ns() - started
    assert answer.type is MsgType.REPLY, answer
    assert 0 < answer.payload["run_ns"] <= elapsed  # the hook's time, within the round trip


async def test_one_pool_reads_two_lanes_and_detaches_one(table: HookTable,
                                                         hostcalls: HostCalls) -> None:
    """
    1. one CallThreads, two lanes, each with its own socket (two gateways);
    2. CALLs on both sockets at once: each is answered on its own socket, all
       by one thread (no hook blocks), each lane counting its own;
    3. lane 0 is detached: its socket is read no more (a CALL there gets no
       answer), while lane 1 is still served.
    """
    base = Path(tempfile.mkdtemp(prefix="cpl-"))  # short: ipc:// paths must fit sun_path
    calls = CallThreads(hostcalls, threads_per_lane=2, handoff_s=HANDOFF_S)
    gateways: list[Gateway] = []
    lanes: list[Lane] = []
    loop = asyncio.get_running_loop()
    try:
        for index in range(2):
            endpoint = f"ipc://{base}/h{index}.sock"
            gateways.append(Gateway(endpoint))
            channel = Channel(endpoint, waker=calls.waker)
            dispatcher = Dispatcher(table, default_timeout_ms=2000)
            answers = Answers(channel, CallLedger())
            lanes.append(Lane(channel, dispatcher, answers, LoopCalls(dispatcher, answers)))
            deadline = time.monotonic() + STEP_S
            while not channel.send(MsgType.HEARTBEAT, 0, {"generation": 1}):
                assert time.monotonic() < deadline, "the DEALER never connected"
                await asyncio.sleep(0.005)
            assert (await gateways[-1].receive()).type is MsgType.HEARTBEAT
            calls.attach(lanes[-1], loop, lambda message: None)
        for call_id in range(1, 11):
            for gateway in gateways:
                gateway.send(MsgType.CALL, call_id, payload("WhichThread"))
        threads = set()
        for gateway in gateways:
            answered = set()
            for _ in range(10):
                answer = await gateway.receive()
                assert answer.type is MsgType.REPLY, answer
                answered.add(answer.call_id)
                threads.add(answer.payload["object"]["request"]["set_headers"]["X-Thread"])
            assert answered == set(range(1, 11))
        assert threads == {"coproc-call-1"}
        assert [lane.calls for lane in lanes] == [10, 10] and calls.threads == 1

        await asyncio.to_thread(calls.detach, lanes[0])
        gateways[0].send(MsgType.CALL, 11, payload("WhichThread"))
        gateways[1].send(MsgType.CALL, 11, payload("WhichThread"))
        assert (await gateways[1].receive()).type is MsgType.REPLY
        assert not await asyncio.to_thread(gateways[0].sock.poll, 300)
        assert [lane.calls for lane in lanes] == [10, 11]
    finally:
        for lane in lanes:
            await asyncio.to_thread(calls.detach, lane)
        await asyncio.to_thread(calls.stop)
        for lane in lanes:
            lane.channel.close()
            lane.dispatcher.close()
        for gateway in gateways:
            gateway.close()
        shutil.rmtree(base, ignore_errors=True)
