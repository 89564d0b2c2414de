"""CALL handling: Tyk's arity convention, async hooks, deadlines, errors, REPLY deltas.

The dispatcher is driven directly (no sockets) with CALL payloads as
`ipc.protocol.decode` would deliver them, against real plugin files loaded by
the real loader; every answer is checked against the wire schema.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from config import load_api_definitions, load_gateway_config
from ipc.protocol import PAYLOADS, ErrorCode, MsgType
from ipc.schema import check
from worker.dispatch import Dispatcher
from worker.loader import load_plugins
from worker.tyk_api import install_plugin_api

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

    @Event
    def OnThing(event, spec):
        EVENTS.append((event.name, spec["APIID"]))
"""

BROKEN = "raise RuntimeError('cannot import')\n"


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Iterator[Path]:
    undo = install_plugin_api(None)
    try:
        yield tmp_path
    finally:
        undo()


@pytest.fixture
async def dispatcher(plugin_dir: Path) -> AsyncIterator[Dispatcher]:
    tmp = plugin_dir
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
    pool = ThreadPoolExecutor(4, thread_name_prefix="test-hook")
    try:
        yield Dispatcher(table, pool, default_timeout_ms=2000)
    finally:
        module = table.find("api", "SyncSlow").func.f.__globals__
        module["RELEASE"].set()  # never leave a pool thread blocked
        pool.shutdown(wait=True)


def payload(name: str, obj: dict[str, Any] | None = None, *, api_id: str = "api",
            hook_type: str = "pre", timeout_ms: int = 2000) -> dict[str, Any]:
    message = {"api_id": api_id, "hook_type": hook_type, "hook_name": name,
               "timeout_ms": timeout_ms,
               "object": {"hook_type": hook_type, "hook_name": name,
                          "spec": {"APIID": api_id, "config_data": "{}"}, **(obj or {})}}
    check(message, PAYLOADS[MsgType.CALL])
    return message


async def reply_of(dispatcher: Dispatcher, message: dict[str, Any]) -> dict[str, Any]:
    mtype, answer = await dispatcher.call(message)
    check(answer, PAYLOADS[mtype])
    assert mtype is MsgType.REPLY, answer
    reply: dict[str, Any] = answer["object"]
    return reply


async def error_of(dispatcher: Dispatcher, message: dict[str, Any]) -> dict[str, Any]:
    mtype, answer = await dispatcher.call(message)
    check(answer, PAYLOADS[mtype])
    assert mtype is MsgType.ERROR, answer
    return answer


async def test_three_args_request_helpers_and_minimal_reply(dispatcher: Dispatcher) -> None:
    body = b"B" * 50_000
    reply = await reply_of(dispatcher, payload("Three", {"request": {
        "headers": {"User-Agent": "curl", "Cookie": "c"}, "raw_body": body,
        "params": {"q": "x"}, "return_overrides": {"response_code": -1}}}))
    assert reply == {"request": {
        "set_headers": {"X-Api": "api", "X-Ua": "curl", "X-Missing": "None"},
        "delete_headers": ["Cookie"], "add_params": {"p": "1"}, "delete_params": ["q"]}}


async def test_four_args_auth_merges_metadata(dispatcher: Dispatcher) -> None:
    reply = await reply_of(dispatcher, payload("Auth", {
        "request": {"headers": {"Authorization": "Bearer good"}},
        "session": {"metadata": {"seen": "1"}}}, hook_type="auth_check"))
    assert reply["session"] == {"rate": 100.0, "per": 1.0,
                                "metadata": {"seen": "1", "token": "good"}}
    assert reply["metadata"] == {"seen": "1", "token": "good"}
    assert "request" not in reply
    denied = await reply_of(dispatcher, payload("Auth", {
        "request": {"headers": {"Authorization": "Bearer bad"},
                    "return_overrides": {"response_code": -1}}}, hook_type="auth_check"))
    assert denied == {"request": {"return_overrides": {
        "response_code": 403, "response_error": "Key not authorised"}}}
    returned = await reply_of(dispatcher, payload("AuthNewDict", hook_type="auth_check"))
    assert returned["session"]["metadata"] == {"token": "from-dict"}
    assert returned["metadata"] == {"token": "from-dict"}


async def test_five_args_response_hook(dispatcher: Dispatcher) -> None:
    reply = await reply_of(dispatcher, payload("Response", {
        "request": {"headers": {"A": "1"}, "raw_body": b"req"},
        "response": {"status_code": 200, "raw_body": b"hello", "headers": {"C": "d"}}},
        hook_type="response"))
    assert reply == {"response": {"headers": {"C": "d", "X-Stamped": "yes"},
                                  "raw_body": b"HELLO", "status_code": 201}}


async def test_five_args_in_pre_phase_gets_empty_response(dispatcher: Dispatcher) -> None:
    reply = await reply_of(dispatcher, payload("FiveAsPre", {
        "request": {"return_overrides": {"response_code": -1}}}))
    assert reply == {"request": {"return_overrides": {
        "response_code": 200, "response_body": "mocked"}}}


@pytest.mark.parametrize(("name", "header"), [("ReturnsNone", "X-None"),
                                               ("ReturnsJunk", "X-Junk")])
async def test_in_place_changes_count_whatever_is_returned(
        dispatcher: Dispatcher, name: str, header: str) -> None:
    reply = await reply_of(dispatcher, payload(name))
    assert reply == {"request": {"set_headers": {header: "kept"}}}


async def test_returned_objects_replace_the_arguments(dispatcher: Dispatcher) -> None:
    reply = await reply_of(dispatcher, payload("NewSession", {
        "session": {"org_id": "old", "rate": 5.0}}))
    # the new session replaces the old one: rate back to its default, org and metadata new
    assert reply == {"session": {"org_id": "new-org", "rate": 0.0, "metadata": {"k": "v"}}}


async def test_async_hook_runs_on_the_loop(dispatcher: Dispatcher) -> None:
    reply = await reply_of(dispatcher, payload("AsyncHook"))
    assert reply == {"request": {"set_headers": {"X-Async": "1"}}}


@pytest.mark.parametrize("name", ["AsyncSlow", "SyncSlow"])
async def test_deadline_answers_instead_of_waiting(dispatcher: Dispatcher, name: str) -> None:
    started = asyncio.get_running_loop().time()
    answer = await error_of(dispatcher, payload(name, timeout_ms=100))
    assert asyncio.get_running_loop().time() - started < 2
    assert answer["code"] == ErrorCode.DEADLINE
    assert "did not finish within 100 ms" in answer["message"]


async def test_sync_hooks_run_concurrently(dispatcher: Dispatcher) -> None:
    # Each call blocks until the other one runs: a serialising worker would time out.
    first, second = await asyncio.gather(
        dispatcher.call(payload("Rendezvous", timeout_ms=5000)),
        dispatcher.call(payload("Rendezvous", timeout_ms=5000)))
    assert first[0] is MsgType.REPLY and second[0] is MsgType.REPLY


@pytest.mark.parametrize(("name", "code", "message"), [
    ("Raises", ErrorCode.HOOK_FAILED, "ValueError: bad input"),
    ("Exits", ErrorCode.HOOK_FAILED, "SystemExit: 3"),
    ("BadValue", ErrorCode.HOOK_FAILED, "TypeError: 5 has type int"),
    ("TooMany", ErrorCode.HOOK_FAILED, "TypeError: hook TooMany takes 6"),
    ("NoSuchHook", ErrorCode.NO_SUCH_HOOK, "API 'api' has no hook 'NoSuchHook'"),
])
async def test_failures_become_errors(dispatcher: Dispatcher, name: str, code: ErrorCode,
                                      message: str) -> None:
    answer = await error_of(dispatcher, payload(name))
    assert answer["code"] == code
    assert answer["message"].startswith(message), answer["message"]


async def test_failed_plugin_answers_load_failed(dispatcher: Dispatcher) -> None:
    answer = await error_of(dispatcher, payload("X", api_id="broken"))
    assert answer["code"] == ErrorCode.LOAD_FAILED
    assert answer["message"].startswith("RuntimeError: cannot import")
    # and the other API still works
    assert await reply_of(dispatcher, payload("AsyncHook"))


async def test_event_handlers_are_called_by_name(dispatcher: Dispatcher) -> None:
    await dispatcher.event("api", "OnThing", {"name": "QuotaExceeded"}, {"APIID": "api"})
    events = dispatcher.table.find_event("api", "OnThing").f.__globals__["EVENTS"]
    assert events == [("QuotaExceeded", "api")]
    await dispatcher.event("api", "NoSuchHandler", {}, {})  # logged, not raised
