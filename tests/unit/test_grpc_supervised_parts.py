"""The supervised gRPC server's parts alone: `coproc.grpc_server` settings, the
one-coprocess rule, `{listen}`, the health probe against real in-process
servers, the link's `grpc_server` message, and the client's drained callback."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from unit.waiting import until

from config.apidef import load_api_definitions
from config.gateway import GatewayConfig, GrpcServerOptions, load_gateway_config
from config.reader import ConfigError
from gateway.control import dispatch
from gateway.grpc._pb import coprocess_pb2 as pb
from gateway.grpc._pb import coprocess_pb2_grpc as pb_grpc
from gateway.grpc.client import GrpcHookClient
from ipc.control import ControlMessage, ControlType, decode_control, encode_control
from supervisor.child import ChildProcess, ChildState
from supervisor.gateway_link import GatewayLink
from supervisor.grpc_health import HEALTH_CHECK, probe, serving
from worker.sandbox.grpc_launch import command_for


def _config(tmp_path: Path, coproc: dict[str, Any], server: str = "") -> GatewayConfig:
    (tmp_path / "apps").mkdir(exist_ok=True)
    path = tmp_path / "coproc.json"
    doc: dict[str, Any] = {"coproc": {"grpc_server": coproc}}
    if server:
        doc["coprocess_options"] = {"coprocess_grpc_server": server}
    path.write_text(json.dumps(doc))
    return load_gateway_config(path)


# -- settings -------------------------------------------------------------------


def test_command_as_a_line_or_a_list(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {"command": "node 'my server.js' --listen {listen}"})
    assert cfg.grpc_server.command == ("node", "my server.js", "--listen", "{listen}")
    assert cfg.grpc_server.enabled and cfg.grpc_server.movable
    cfg = _config(tmp_path, {"command": ["./srv", "--port", "5555"]}, "tcp://127.0.0.1:5555")
    assert cfg.grpc_server.command == ("./srv", "--port", "5555")
    assert not cfg.grpc_server.movable
    assert not GrpcServerOptions().enabled  # absent: an external server, Tyk's way


@pytest.mark.parametrize(("block", "problem"), [
    ({"command": 5}, "expected a command line or a list of strings"),
    ({"command": ["ok", 1]}, "expected a command line or a list of strings"),
    ({"command": "unclosed 'quote"}, "cannot be split"),
    ({"command": "./srv --port 5555"}, "has no {listen} placeholder"),
    ({"command": "./srv {listen}", "boot_timeout_ms": 1}, "boot_timeout_ms"),
])
def test_bad_settings_name_the_field_and_fix(tmp_path: Path, block: dict[str, Any],
                                             problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        _config(tmp_path, block)
    assert info.value.field.startswith("coproc.grpc_server.")
    assert problem in str(info.value)
    assert info.value.fix


def test_listen_placeholder_is_filled_in() -> None:
    assert command_for(["srv", "--listen={listen}", "x"], "unix:///r/grpc-3.sock") == [
        "srv", "--listen=unix:///r/grpc-3.sock", "x"]


# -- one coprocess per instance ----------------------------------------------------


def _write_api(tmp_path: Path, api_id: str, middleware: dict[str, Any]) -> None:
    (tmp_path / "apps" / f"{api_id}.json").write_text(json.dumps({
        "api_id": api_id, "proxy": {"listen_path": f"/{api_id}/",
                                    "target_url": "http://127.0.0.1:1/"},
        "custom_middleware": middleware}))


def test_an_api_needing_the_worker_is_refused_beside_a_supervised_server(
        tmp_path: Path) -> None:
    cfg = _config(tmp_path, {"command": "srv {listen}"})
    _write_api(tmp_path, "g", {"driver": "grpc", "pre": [{"name": "Pre"}]})
    assert [a.api_id for a in load_api_definitions(cfg)] == ["g"]  # no address needed
    (tmp_path / "middleware").mkdir()
    (tmp_path / "middleware" / "mw.py").write_text("def Pre(r, s, spec):\n    return r, s\n")
    _write_api(tmp_path, "p", {"driver": "python", "pre": [
        {"name": "Pre", "path": str(tmp_path / "middleware" / "mw.py")}]})
    with pytest.raises(ConfigError) as info:
        load_api_definitions(cfg)
    assert info.value.field == "custom_middleware.driver"
    assert "one coprocess" in info.value.problem
    assert "coprocess_grpc_server" in info.value.fix


def test_an_external_server_may_run_beside_the_worker(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {}, "tcp://127.0.0.1:5555")
    _write_api(tmp_path, "g", {"driver": "grpc", "pre": [{"name": "Pre"}]})
    (tmp_path / "middleware").mkdir()
    (tmp_path / "middleware" / "mw.py").write_text("def Pre(r, s, spec):\n    return r, s\n")
    _write_api(tmp_path, "p", {"driver": "python", "pre": [
        {"name": "Pre", "path": str(tmp_path / "middleware" / "mw.py")}]})
    assert len(load_api_definitions(cfg)) == 2


# -- the control messages ----------------------------------------------------------


def test_grpc_messages_round_trip() -> None:
    for kind, fields in ((ControlType.GRPC_SERVER, {"address": "unix:///r/g.sock",
                                                    "generation": 2}),
                         (ControlType.GRPC_DRAINED, {"address": "unix:///r/g.sock"})):
        decoded = decode_control(encode_control({"type": kind.value, **fields}))
        assert decoded == {"type": kind.value, **fields}


class FakeGateway:
    def __init__(self) -> None:
        self.sent: list[tuple[ControlType, dict[str, Any]]] = []
        self.alive = True
        self.state = ChildState.READY

    def send(self, kind: ControlType, fields: dict[str, Any]) -> bool:
        self.sent.append((kind, dict(fields)))
        return True


def test_link_tells_every_gateway_and_a_new_one_the_server_address() -> None:
    link = GatewayLink()
    first = FakeGateway()
    link.gateway_up(cast(ChildProcess, first))
    link.grpc_server("unix:///r/grpc-1.sock", 1)
    later = FakeGateway()
    link.gateway_up(cast(ChildProcess, later))
    expected = (ControlType.GRPC_SERVER, {"address": "unix:///r/grpc-1.sock", "generation": 1})
    assert first.sent == [expected] and later.sent == [expected]
    assert link.gateways == 2


# -- the probe, against real servers -------------------------------------------------


def test_serving_reads_health_check_response() -> None:
    assert serving(b"\x08\x01")
    assert not serving(b"\x08\x02") and not serving(b"")


_NUMBERS = itertools.count()


class _Dispatcher(pb_grpc.DispatcherServicer):
    async def Dispatch(self, request: pb.Object, context: Any) -> pb.Object:
        return request


async def _server(tmp_path: Path, health: bytes | None) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    pb_grpc.add_DispatcherServicer_to_server(_Dispatcher(), server)
    if health is not None:
        async def check(_request: bytes, _context: Any) -> bytes:
            return health

        service, method = HEALTH_CHECK.strip("/").split("/")
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            service, {method: grpc.unary_unary_rpc_method_handler(check)}),))
    sock = tmp_path / f"h{next(_NUMBERS)}.sock"
    server.add_insecure_port(f"unix://{sock}")
    await server.start()
    return server, f"unix://{sock}"


@pytest.mark.parametrize(("health", "healthy"), [
    (None, True),  # no health service: a connection is enough
    (b"\x08\x01", True),  # SERVING
    (b"\x08\x02", False),  # NOT_SERVING
])
async def test_probe_uses_the_health_protocol_when_there(tmp_path: Path,
                                                         health: bytes | None,
                                                         healthy: bool) -> None:
    server, target = await _server(tmp_path, health)
    try:
        error = await asyncio.to_thread(probe, target, 2.0)
        assert (error == "") is healthy, error
    finally:
        await server.stop(None)


async def test_probe_of_nothing_says_so_within_its_bound(tmp_path: Path) -> None:
    error = await asyncio.to_thread(probe, f"unix://{tmp_path / 'none.sock'}", 0.3)
    assert "no connection" in error


# -- the gateway's side ---------------------------------------------------------------


async def test_client_follows_grpc_server_and_reports_the_old_address_drained(
        tmp_path: Path) -> None:
    first, a = await _server(tmp_path, None)
    second, b = await _server(tmp_path, None)
    cfg = GatewayConfig(Path("x"), grpc_server=GrpcServerOptions(command=("srv", "{listen}")))
    client = GrpcHookClient(cfg)
    drained: list[str] = []
    client.on_drained = drained.append
    await client.start()
    try:
        assert client.health()["ready"] is False  # not told where the server is yet
        for address, generation in ((a, 1), (b, 2)):
            dispatch(ControlMessage(ControlType.GRPC_SERVER, {"address": address,
                                                              "generation": generation}),
                     cast(Any, None), on_grpc_server=client.use)
        health = client.health()
        assert health["server"] == b and health["generation"] == 2 and health["ready"]
        await until(lambda: drained == [a], 5)
    finally:
        await client.close()
        await first.stop(None)
        await second.stop(None)


