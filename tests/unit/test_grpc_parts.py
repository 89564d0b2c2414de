"""The grpc driver's parts alone: the contract's field numbers against Tyk's, the
dict <-> protobuf conversion, Tyk's settings, driver routing, and the client
against an in-process `grpc.aio` server on a real 127.0.0.1 port."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from multidict import CIMultiDict
from unit.waiting import until

from config.apidef import HookDef, load_api_definition
from config.gateway import GatewayConfig, GatewayOptions, GrpcOptions, load_gateway_config
from config.reader import ConfigError
from gateway.drivers import DriverRouter, open_grpc
from gateway.grpc._pb import coprocess_pb2 as pb
from gateway.grpc._pb import coprocess_pb2_grpc as pb_grpc
from gateway.grpc.client import GrpcHookClient
from gateway.grpc.convert import from_proto, to_proto
from gateway.grpc.target import channel_options, grpc_target
from gateway.hooks import HookFailed, HookTimeout, NoWorker
from gateway.tyk_object import (
    LazyText,
    RequestState,
    ResponseState,
    apply_request,
    request_object,
    response_object,
)

# -- the contract -------------------------------------------------------------

#: Field numbers of Tyk's coprocess/proto/*.proto (what a Tyk server encodes).
TYK_FIELDS = {
    "Object": {"hook_type": 1, "hook_name": 2, "request": 3, "session": 4, "metadata": 5,
               "spec": 6, "response": 7},
    "MiniRequestObject": {"headers": 1, "set_headers": 2, "delete_headers": 3, "body": 4,
                          "url": 5, "params": 6, "add_params": 7, "extended_params": 8,
                          "delete_params": 9, "return_overrides": 10, "method": 11,
                          "request_uri": 12, "scheme": 13, "raw_body": 14},
    "ReturnOverrides": {"response_code": 1, "response_error": 2, "headers": 3,
                        "override_error": 4, "response_body": 5},
    "ResponseObject": {"status_code": 1, "raw_body": 2, "body": 3, "headers": 4,
                       "multivalue_headers": 5},
    "SessionState": {"rate": 3, "per": 4, "expires": 5, "quota_max": 6, "quota_renews": 7,
                     "quota_remaining": 8, "quota_renewal_rate": 9, "access_rights": 10,
                     "metadata": 23, "id_extractor_deadline": 27, "session_lifetime": 28,
                     "key_id": 32, "post_expiry_action": 33, "post_expiry_grace_period": 34},
    "Event": {"payload": 1},
}


@pytest.mark.parametrize("message", sorted(TYK_FIELDS))
def test_field_numbers_are_tyks(message: str) -> None:
    fields = pb.DESCRIPTOR.message_types_by_name[message].fields_by_name
    assert {name: fields[name].number for name in TYK_FIELDS[message]} == TYK_FIELDS[message]


def test_service_and_hook_types_are_tyks() -> None:
    service = pb.DESCRIPTOR.services_by_name["Dispatcher"]
    assert service.full_name == "coprocess.Dispatcher"
    assert {m.name: (m.input_type.full_name, m.output_type.full_name)
            for m in service.methods} == {
        "Dispatch": ("coprocess.Object", "coprocess.Object"),
        "DispatchEvent": ("coprocess.Event", "coprocess.EventReply")}
    assert [pb.HookType.Name(n) for n in range(6)] == [
        "Unknown", "Pre", "Post", "PostKeyAuth", "CustomKeyCheck", "Response"]


# -- conversion ---------------------------------------------------------------

HOOK = HookDef("MyHook", timeout_ms=2000)


def _state(body: bytes = b'{"a": 1}') -> RequestState:
    headers = CIMultiDict({"x-client": "yes", "Content-Type": "application/json"})
    state = RequestState("POST", "/api/path", "a=1&b=2", "/api/path?a=1&b=2", "http", headers)
    state.body = body
    return state


def _wire(msg: pb.Object) -> pb.Object:
    return pb.Object.FromString(msg.SerializeToString())


def test_request_object_round_trip_changes_nothing() -> None:
    state = _state()
    obj = request_object(state, {"APIID": "a", "OrgID": "o"}, "post", HOOK)
    msg = _wire(to_proto(obj))
    assert msg.hook_type == pb.Post and msg.hook_name == "MyHook"
    assert msg.request.headers["X-Client"] == "yes"
    assert msg.request.params == {"a": "1", "b": "2"}
    assert msg.request.return_overrides.response_code == -1
    assert msg.request.raw_body == b'{"a": 1}' and msg.request.body == '{"a": 1}'
    got = from_proto(msg)
    apply_request(state, obj["request"], got["request"])
    assert (state.method, state.path, state.query, state.body_replaced) == (
        "POST", "/api/path", "a=1&b=2", False)


def test_deferred_body_text_is_resolved_for_the_wire() -> None:
    state = _state()
    obj = request_object(state, {}, "pre", HOOK, defer_text=True)
    assert isinstance(obj["request"]["body"], LazyText)
    assert to_proto(obj).request.body == '{"a": 1}'


def test_a_servers_edits_apply_as_a_workers_would() -> None:
    state = _state()
    obj = request_object(state, {}, "pre", HOOK)
    msg = _wire(to_proto(obj))
    msg.request.set_headers["X-New"] = "1"
    msg.request.delete_headers.append("X-Client")
    msg.request.add_params["c"] = "3"
    msg.request.url = "/moved"
    msg.request.raw_body = b"new"
    apply_request(state, obj["request"], from_proto(_wire(msg))["request"])
    assert state.headers["X-New"] == "1" and "X-Client" not in state.headers
    assert (state.path, state.query, state.body) == ("/moved", "a=1&b=2&c=3", b"new")


def test_written_out_records_have_every_field_of_the_proto() -> None:
    got = from_proto(pb.Object(request=pb.MiniRequestObject(), response=pb.ResponseObject()))
    assert set(got["request"]) | {"url", "method"} == set(
        pb.MiniRequestObject.DESCRIPTOR.fields_by_name)
    assert set(got["response"]) == set(pb.ResponseObject.DESCRIPTOR.fields_by_name)
    assert set(got["request"]["return_overrides"]) == set(
        pb.ReturnOverrides.DESCRIPTOR.fields_by_name)


def test_values_of_other_types_are_coerced_field_by_field() -> None:
    msg = to_proto({"hook_type": "pre", "request": {
        "headers": {"X-N": 1}, "raw_body": bytearray(b"ab"), "unknown": 1,
        "return_overrides": {"response_code": 201.0}}})
    assert msg.request.headers["X-N"] == "1" and msg.request.raw_body == b"ab"
    assert msg.request.return_overrides.response_code == 201


def test_empty_url_and_method_read_as_unchanged() -> None:
    got = from_proto(pb.Object(request=pb.MiniRequestObject(raw_body=b"x")))
    assert "url" not in got["request"] and "method" not in got["request"]
    assert got["request"]["raw_body"] == b"x"


def test_session_comes_back_only_when_returned_with_the_fields_set() -> None:
    assert "session" not in from_proto(pb.Object(hook_name="x"))
    msg = pb.Object()
    msg.session.rate = 2.0
    msg.session.metadata["token"] = "t"
    msg.session.access_rights["api"].api_id = "api"
    assert from_proto(_wire(msg))["session"] == {
        "rate": 2.0, "metadata": {"token": "t"}, "access_rights": {"api": {"api_id": "api"}}}


def test_non_string_metadata_is_json_as_tyk_sends_it() -> None:
    msg = to_proto({"hook_type": "post", "metadata": {"n": {"a": 1}, "s": "x"},
                    "session": {"metadata": {"k": "v"}, "quota_max": 5.0}})
    assert dict(msg.metadata) == {"n": '{"a":1}', "s": "x"}
    assert msg.session.quota_max == 5


def test_response_object_round_trip() -> None:
    resp = ResponseState(201, CIMultiDict([("Set-Cookie", "a"), ("Set-Cookie", "b")]), b"hi")
    obj = response_object(_state(), resp, {}, HOOK)
    got = from_proto(_wire(to_proto(obj)))
    assert got["response"]["status_code"] == 201
    assert got["response"]["multivalue_headers"] == [{"key": "Set-Cookie",
                                                      "values": ["a", "b"]}]
    assert got["response"]["raw_body"] == b"hi" and got["hook_type"] == "response"


# -- settings -----------------------------------------------------------------


def _config(tmp_path: Path, coprocess: dict[str, Any]) -> GatewayConfig:
    path = tmp_path / "coproc.json"
    (tmp_path / "apps").mkdir(exist_ok=True)
    path.write_text(json.dumps({"coprocess_options": {"enable_coprocess": True, **coprocess}}))
    return load_gateway_config(path)


def test_tyks_grpc_settings_are_read(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {"coprocess_grpc_server": "tcp://127.0.0.1:5555",
                             "grpc_recv_max_size": 100, "grpc_send_max_size": 200,
                             "grpc_authority": "plugins.local",
                             "grpc_round_robin_load_balancing": True})
    assert cfg.grpc == GrpcOptions("tcp://127.0.0.1:5555", 100, 200, "plugins.local", True)
    options = dict(channel_options(cfg))
    assert options["grpc.max_receive_message_length"] == 100
    assert options["grpc.max_send_message_length"] == 200
    assert options["grpc.default_authority"] == "plugins.local"
    assert options["grpc.lb_policy_name"] == "round_robin"


def test_message_limits_default_to_the_body_limit() -> None:
    cfg = GatewayConfig(Path("x"), gateway=GatewayOptions(max_body_bytes=1000))
    options = dict(channel_options(cfg))
    assert options["grpc.max_receive_message_length"] == 2000 + (1 << 20)
    unlimited = replace(cfg, gateway=GatewayOptions(max_body_bytes=0))
    assert dict(channel_options(unlimited))["grpc.max_send_message_length"] == -1


@pytest.mark.parametrize(("server", "target"), [
    ("tcp://127.0.0.1:5555", "127.0.0.1:5555"), ("unix:///run/p.sock", "unix:///run/p.sock"),
    ("dns:///plugins:5555", "dns:///plugins:5555")])
def test_target_strips_only_tcp(server: str, target: str) -> None:
    assert grpc_target(server) == target


def test_unsupported_server_address_names_the_field_and_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _config(tmp_path, {"coprocess_grpc_server": "http://127.0.0.1:5555"})
    assert info.value.field == "coprocess_options.coprocess_grpc_server"
    assert "tcp://" in info.value.fix


def _api(tmp_path: Path, cfg: GatewayConfig, middleware: dict[str, Any]) -> Any:
    path = tmp_path / "apps" / "a.json"
    path.write_text(json.dumps({"api_id": "a", "proxy": {"listen_path": "/a/",
                                "target_url": "http://127.0.0.1:1/"},
                                "custom_middleware": middleware}))
    return load_api_definition(path, cfg)


def test_grpc_api_needs_a_server_address(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {})
    with pytest.raises(ConfigError) as info:
        _api(tmp_path, cfg, {"driver": "grpc", "pre": [{"name": "MyPre"}]})
    assert info.value.field == "custom_middleware.driver"
    assert "coprocess_grpc_server" in info.value.fix


def test_grpc_api_runs_its_hooks_outside_the_worker(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {"coprocess_grpc_server": "tcp://127.0.0.1:5555"})
    api = _api(tmp_path, cfg, {"driver": "grpc", "pre": [{"name": "my-pre.hook"}],
                               "auth_check": {"name": "Auth"}})
    assert [h.driver for h in api.custom_middleware.all_hooks()] == ["grpc", "grpc"]
    assert api.custom_middleware.pre[0].name == "my-pre.hook"  # any name the server knows
    assert api.custom_middleware.auth_check.failure_policy == "fail_closed"
    assert not api.has_plugins  # the worker loads nothing for it


def test_missing_grpcio_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    import config.apidef

    monkeypatch.setattr(config.apidef, "_grpc_installed", lambda: False)
    cfg = _config(tmp_path, {"coprocess_grpc_server": "tcp://127.0.0.1:5555"})
    with pytest.raises(ConfigError) as info:
        _api(tmp_path, cfg, {"driver": "grpc", "pre": [{"name": "MyPre"}]})
    assert "pip install 'coproc[grpc]'" in info.value.fix


# -- routing ------------------------------------------------------------------


class FakeClient:
    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[str] = []

    async def call(self, api_id: str, hook_type: str, hook: HookDef,
                   obj: dict[str, Any]) -> dict[str, Any]:
        return {"by": self.name}

    def send_event(self, api_id: str, handler: str, event: Mapping[str, str],
                   spec: Mapping[str, str]) -> bool:
        self.events.append(api_id)
        return True

    def health(self) -> dict[str, Any]:
        return {}


async def test_router_sends_each_hook_to_its_drivers_client() -> None:
    worker, remote = FakeClient("worker"), FakeClient("grpc")
    router = DriverRouter(worker, remote, ["g"])
    assert await router.call("p", "pre", HookDef("X", driver="python"), {}) == {"by": "worker"}
    assert await router.call("g", "pre", HookDef("X", driver="grpc"), {}) == {"by": "grpc"}
    assert router.send_event("g", "H", {}, {}) and router.send_event("p", "H", {}, {})
    assert (worker.events, remote.events) == (["p"], ["g"])
    with pytest.raises(NoWorker):
        await DriverRouter(worker, None).call("g", "pre", HookDef("X", driver="grpc"), {})


def test_open_grpc_only_with_a_server_and_grpcio(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.grpc

    cfg = GatewayConfig(Path("x"), grpc=GrpcOptions("tcp://127.0.0.1:1"))
    assert open_grpc(GatewayConfig(Path("x")), needed=False) is None
    assert isinstance(open_grpc(cfg, needed=True), GrpcHookClient)
    monkeypatch.setattr(gateway.grpc, "grpc_available", lambda: False)
    assert open_grpc(cfg, needed=False) is None  # logged: no API can use it
    with pytest.raises(RuntimeError, match=r"coproc\[grpc\]"):
        open_grpc(cfg, needed=True)


# -- the client against a real server -------------------------------------------

Handler = Callable[[pb.Object], Awaitable[pb.Object]]


class Servicer(pb_grpc.DispatcherServicer):
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.events: list[str] = []

    async def Dispatch(self, request: pb.Object, context: Any) -> pb.Object:
        return await self.handler(request)

    async def DispatchEvent(self, request: pb.Event, context: Any) -> pb.EventReply:
        self.events.append(request.payload)
        return pb.EventReply()


async def _serve(handler: Handler) -> tuple[grpc.aio.Server, Servicer, int]:
    server = grpc.aio.server()
    servicer = Servicer(handler)
    pb_grpc.add_DispatcherServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, servicer, port


async def _tagging(request: pb.Object) -> pb.Object:
    if request.request.headers.get("X-Sleep"):
        await asyncio.sleep(float(request.request.headers["X-Sleep"]))
    if request.hook_name == "Raise":
        raise RuntimeError("bug")
    request.request.set_headers["X-Tag"] = "served"
    return request


@pytest.fixture
async def served() -> AsyncIterator[tuple[Servicer, int]]:
    server, servicer, port = await _serve(_tagging)
    yield servicer, port
    await server.stop(None)


def _client(port: int) -> GrpcHookClient:
    return GrpcHookClient(GatewayConfig(Path("x"), grpc=GrpcOptions(f"tcp://127.0.0.1:{port}")))


def _obj(sleep: str = "", hook: HookDef = HOOK) -> dict[str, Any]:
    state = _state()
    if sleep:
        state.headers = CIMultiDict({"X-Sleep": sleep})
    return request_object(state, {"APIID": "a"}, "pre", hook)


async def test_call_deadline_and_server_error(served: tuple[Servicer, int]) -> None:
    servicer, port = served
    client = _client(port)
    await client.start()
    try:
        got = await client.call("a", "pre", HOOK, _obj())
        assert got["request"]["set_headers"] == {"X-Tag": "served"}
        with pytest.raises(HookTimeout):
            await client.call("a", "pre", HookDef("Slow", timeout_ms=100), _obj("2"))
        with pytest.raises(HookFailed):
            await client.call("a", "pre", HookDef("Raise"), _obj(hook=HookDef("Raise")))
        with pytest.raises(HookFailed):  # a response hook must return a response
            await client.call("a", "response", HOOK, _obj())
        assert client.send_event("a", "OnX", {"event": "E"}, {"APIID": "a"})
        await until(lambda: servicer.events, 5)
        assert json.loads(servicer.events[0])["handler_name"] == "OnX"
        health = client.health()
        assert health["stats"]["grpc_calls"] == 4 and health["stats"]["grpc_timeouts"] == 1
    finally:
        await client.close()


async def test_unix_socket_address(tmp_path: Path) -> None:
    server = grpc.aio.server()
    pb_grpc.add_DispatcherServicer_to_server(Servicer(_tagging), server)
    sock = tmp_path / "p.sock"
    server.add_insecure_port(f"unix://{sock}")
    await server.start()
    client = GrpcHookClient(GatewayConfig(Path("x"), grpc=GrpcOptions(f"unix://{sock}")))
    await client.start()
    try:
        got = await client.call("a", "pre", HOOK, _obj())
        assert got["request"]["set_headers"] == {"X-Tag": "served"}
    finally:
        await client.close()
        await server.stop(None)


async def test_no_server_fails_fast() -> None:
    server, _, port = await _serve(_tagging)
    await server.stop(None)  # nothing listens on the port any more
    client = _client(port)
    await client.start()
    try:
        started = time.monotonic()
        with pytest.raises(NoWorker):
            await client.call("a", "pre", HookDef("X", timeout_ms=5000), _obj())
        assert time.monotonic() - started < 1.0
    finally:
        await client.close()


async def test_switch_routes_new_calls_and_drains_the_old_server(
        served: tuple[Servicer, int]) -> None:
    """1. a slow call runs on server A; 2. switch to B; 3. new calls reach B; 4. the
    call on A completes (A's channel drains), then A's channel closes."""
    servicer_a, port_a = served
    received = asyncio.Event()
    serve_a = servicer_a.handler

    async def on_a(request: pb.Object) -> pb.Object:
        received.set()
        return await serve_a(request)

    servicer_a.handler = on_a

    async def on_b(request: pb.Object) -> pb.Object:
        request.request.set_headers["X-Tag"] = "b"
        return request

    server_b, _, port_b = await _serve(on_b)
    client = _client(port_a)
    await client.start()
    try:
        slow = asyncio.ensure_future(client.call("a", "pre", HOOK, _obj("0.5")))
        await asyncio.wait_for(received.wait(), 5)  # in flight on A
        await client.switch(f"tcp://127.0.0.1:{port_b}", grace_s=5)
        assert await client.ready(5)  # B accepts connections: what a supervisor waits for
        got = await client.call("a", "pre", HOOK, _obj())
        assert got["request"]["set_headers"] == {"X-Tag": "b"}
        assert client.health()["draining"] == [f"tcp://127.0.0.1:{port_a}"]
        assert (await slow)["request"]["set_headers"] == {"X-Tag": "served"}
        await until(lambda: not client.health()["draining"], 5)
    finally:
        await client.close()
        await server_b.stop(None)


