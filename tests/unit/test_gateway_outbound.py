"""The JS driver's host calls on the gateway side: the outbound allowlist and its
defaults per sandbox profile, TykMakeHttpRequest against a real loopback server,
and key data through the gateway's key store."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from config.gateway import GatewayConfig, load_gateway_config
from gateway.host_calls import HostCalls
from gateway.outbound import Denied, JsvmHostCalls, OutboundPolicy, default_allow
from gateway.storage import MemoryStorage


def _cfg(tmp_path: Path, **settings: Any) -> GatewayConfig:
    path = tmp_path / "coproc.json"
    path.write_text(json.dumps({"coproc": {"run_dir": "run", **settings}}))
    return load_gateway_config(path)


def test_allowlist_matches_host_or_host_and_port() -> None:
    policy = OutboundPolicy(("api.example.com", "127.0.0.1:8081", "[::1]:9000"))
    policy.check("https://API.example.com/x")
    policy.check("http://127.0.0.1:8081/y")
    policy.check("http://[::1]:9000/")
    for url in ("http://127.0.0.1:8082/", "http://127.0.0.1/", "ftp://api.example.com/",
                "http://[::1]:9001/", "/relative"):
        with pytest.raises(Denied):
            policy.check(url)
    OutboundPolicy(("*",)).check("http://anywhere:1/")
    with pytest.raises(Denied, match="outbound_allow"):
        OutboundPolicy(()).check("http://127.0.0.1:8081/")


def test_default_allowlist_follows_the_sandbox(tmp_path: Path) -> None:
    assert default_allow(_cfg(tmp_path, sandbox={"profile": "strict"})) == ()
    assert default_allow(_cfg(tmp_path, sandbox={"network": False})) == ()
    assert default_allow(_cfg(tmp_path)) == ("*",)
    assert default_allow(_cfg(tmp_path, sandbox={"profile": "strict"},
                              jsvm={"outbound_allow": ["h:1"]})) == ("h:1",)


async def test_http_request_and_key_data(tmp_path: Path) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path, "from": request.headers.get("X-From"),
                                  "body": await request.text()}, status=201)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    try:
        cfg = _cfg(tmp_path, jsvm={"outbound_allow": [f"127.0.0.1:{port}"]})
        store = MemoryStorage()
        host = HostCalls(store, None, extra=JsvmHostCalls(cfg, store).ops())
        spec = {"Method": "POST", "Domain": f"http://127.0.0.1:{port}", "Resource": "/r",
                "Headers": {"X-From": "js"}, "Body": "payload"}
        got = await host.host_call("api", {"op": "jsvm_http",
                                           "value": json.dumps(spec).encode()})
        assert got is not None
        reply = json.loads(got["value"])
        assert reply["Code"] == reply["code"] == 201
        assert json.loads(reply["Body"]) == {"path": "/r", "from": "js", "body": "payload"}
        batch = {"requests": [{"method": "GET", "relative_url": f"http://127.0.0.1:{port}/a"},
                              {"method": "GET", "relative_url": "http://127.0.0.1:1/b"}]}
        got = await host.host_call("api", {"op": "jsvm_batch",
                                           "value": json.dumps(batch).encode()})
        assert got is not None
        units = json.loads(got["value"])
        assert [u["code"] for u in units] == [201, 0]
        assert "outbound_allow" in units[1]["body"]
        # Go's encoding/json matches field names ignoring case (the WAF example
        # sends "resource"); an exact match is not preferred over a later key.
        loose = {"method": "PUT", "DOMAIN": f"http://127.0.0.1:{port}", "resource": "/q?x=1",
                 "Body": "ignored", "body": "last wins", "Unknown": 1}
        got = await host.host_call("api", {"op": "jsvm_http",
                                           "value": json.dumps(loose).encode()})
        assert got is not None and got["found"] is True
        assert json.loads(json.loads(got["value"])["Body"]) == {
            "path": "/q", "from": None, "body": "last wins"}
        batch = {"Requests": [{"Method": "POST", "Relative_URL": f"http://127.0.0.1:{port}/c",
                               "BODY": "b"}], "Suppress_Parallel_Execution": True}
        got = await host.host_call("api", {"op": "jsvm_batch",
                                           "value": json.dumps(batch).encode()})
        assert got is not None
        [unit] = json.loads(got["value"])
        assert unit["code"] == 201 and json.loads(unit["body"])["body"] == "b"
        got = await host.host_call("api", {"op": "jsvm_http", "value": json.dumps(
            {**spec, "Domain": "http://127.0.0.1:1"}).encode()})
        assert got is not None and got["found"] is False
        assert b"outbound_allow" in got["value"]
        session = {"rate": 5, "per": 1, "meta_data": {"a": "b"}}
        await host.host_call("api", {"op": "jsvm_set_key", "key": "k1",
                                     "value": json.dumps(session).encode()})
        got = await host.host_call("api", {"op": "jsvm_get_key", "key": "k1"})
        assert got is not None and json.loads(got["value"]) == session
        got = await host.host_call("api", {"op": "jsvm_get_key", "key": "nope"})
        assert got is not None and json.loads(got["value"]) == {}
    finally:
        await runner.cleanup()


async def test_goja_storage_is_confined_to_its_prefix_and_bounds(tmp_path: Path) -> None:
    store = MemoryStorage()
    host = HostCalls(store, None, extra=JsvmHostCalls(_cfg(tmp_path), store).ops())

    async def storage(action: str, key: str, value: bytes = b"", ttl: int = 0) -> Any:
        got = await host.host_call("api", {"op": "jsvm_store", "name": action, "key": key,
                                           "value": value, "ttl": ttl})
        assert got is not None
        if got["found"] is False:
            return ("refused", got["value"].decode())
        return json.loads(got["value"])["result"]

    assert await storage("get", "k") is None
    assert await storage("set", "k", b"v1", 30) is None
    assert await store.get("jsvm-store:k") == b"v1"  # Tyk's prefix, nothing else
    assert await store.get("k") is None
    assert await storage("get", "k") == "v1"
    assert 28 <= await storage("ttl", "k") <= 30
    assert await storage("setnx", "k", b"v2") is False
    assert await storage("setnx", "fresh", b"v2") is True
    assert await storage("del", "k") is None
    assert await storage("ttl", "k") == -2
    assert [await storage("incr", "n", ttl=5) for _ in range(2)] == ["1", "2"]
    assert await storage("incr", "fresh") == ("refused", "the stored value is not an integer")
    assert await storage("get", "x" * 257) == ("refused", "storage key must be 1-256 bytes")
    assert await storage("get", "") == ("refused", "storage key must be 1-256 bytes")
    assert await storage("set", "big", b"v" * (64 * 1024 + 1)) == (
        "refused", "storage value exceeds 65536 bytes")
    assert await storage("flush", "k") == ("refused", "unknown storage action 'flush'")
