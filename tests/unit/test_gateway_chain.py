"""The middleware chain in-process: a real echo upstream, a scripted fake hook client.

The fake stands in for `gateway.hooks.HookClient` (the real worker is exercised by
tests/integration); it merges replies with the real `merge_reply`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from unit import inprocess
from yarl import URL

from config.gateway import GatewayOptions
from gateway.app import CHAIN
from gateway.hooks import HookFailed, HookTimeout, NoWorker, WorkerLost


def hooks(*names: str, **extra: Any) -> list[dict[str, Any]]:
    return [{"name": n, **extra} for n in names]


def api(api_id: str, listen: str, target: str, **fields: Any) -> dict[str, Any]:
    proxy = {"listen_path": listen, "target_url": target, "strip_listen_path": True}
    proxy.update(fields.pop("proxy", {}))
    return {"api_id": api_id, "org_id": "org1", "use_keyless": True, "proxy": proxy,
            "config_data": {"greeting": "hi"}, **fields}


class Env(inprocess.Env):
    @property
    def stats(self) -> dict[str, int]:
        return self.client.app[CHAIN].stats  # type: ignore[index]


@pytest.fixture
async def gateway(tmp_path: Path, echo: str) -> AsyncIterator[Callable[..., Any]]:
    async def start(*apis: dict[str, Any], **opts: Any) -> Env:
        options = {"max_body_bytes": 4096, "upstream_timeout_ms": 400, **opts}
        env = await starter(*apis, gateway=GatewayOptions(**options))
        assert isinstance(env, Env)
        return env

    async with inprocess.gateway_factory(tmp_path, inprocess.FakeHooks, Env) as starter:
        yield start


# -- plain proxying -------------------------------------------------------------------

async def test_keyless_api_streams_through(gateway: Any, echo: str) -> None:
    env = await gateway(api("a", "/a/", echo + "/base"))
    body = bytes(range(256)) * 10
    status, got, _ = await env.request(
        "POST", "/a/x/y?q=1&q=2", data=body,
        headers={"X-Request-Id": "rid-42", "X-Forwarded-For": "9.9.9.9",
                 "Connection": "keep-alive, X-Private", "X-Private": "p"})
    assert status == 200
    assert got["path_qs"] == "/base/x/y?q=1&q=2"
    assert got["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert got["headers"]["X-Request-ID"] == "rid-42"
    assert got["headers"]["X-Forwarded-For"] == "9.9.9.9, 127.0.0.1"
    assert "X-Private" not in got["headers"]
    assert env.fake.calls == []


async def test_request_id_is_generated(gateway: Any, echo: str) -> None:
    env = await gateway(api("a", "/a", echo))
    _, got, _ = await env.request("GET", "/a/x")
    assert len(got["headers"]["X-Request-ID"]) == 32


async def test_large_response_streams_intact(gateway: Any, echo: str) -> None:
    env = await gateway(api("a", "/a", echo))
    status, body, headers = await env.request("GET", "/a/bytes/300000")
    assert status == 200 and len(body) == 300000 and body[:3] == b"\x00\x01\x02"
    status, body, headers = await env.request("HEAD", "/a/bytes/300000")
    assert status == 200 and body == b"" and headers["Content-Length"] == "300000"


async def test_upstream_status_passes_through(gateway: Any, echo: str) -> None:
    env = await gateway(api("a", "/a", echo))
    assert (await env.request("GET", "/a/status/418"))[0] == 418
    assert (await env.request("GET", "/a/status/204"))[0] == 204


async def test_no_route_and_dot_segments(gateway: Any, echo: str) -> None:
    env = await gateway(api("a", "/a", echo))
    assert await _status_error(env, "GET", "/nothing") == (404, "No API is listening on this path")
    # Sent as is: client libraries would resolve the dot segment themselves.
    url = URL(str(env.client.make_url("/")) + "a/%2e%2e/admin", encoded=True)
    async with env.client.session.get(url) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "Dot segments are not allowed in the path"


async def _status_error(env: Env, method: str, path: str, **kw: Any) -> tuple[int, str]:
    status, got, headers = await env.request(method, path, **kw)
    assert headers["Content-Type"] == "application/json"
    return status, got["error"]


async def test_upstream_down_is_502_and_slow_is_504(gateway: Any, echo: str) -> None:
    env = await gateway(api("down", "/down", "http://127.0.0.1:1"), api("a", "/a", echo))
    assert (await _status_error(env, "GET", "/down/x"))[0] == 502
    assert (await _status_error(env, "GET", "/a/slow/2000"))[0] == 504
    assert env.stats["upstream_errors"] == 1 and env.stats["upstream_timeouts"] == 1


async def test_body_limit_is_413_json(gateway: Any, echo: str) -> None:
    env = await gateway(api("a", "/a", echo), api("h", "/h", echo, custom_middleware={
        "pre": hooks("Pre")}))
    big = b"x" * 5000
    assert (await _status_error(env, "POST", "/a/x", data=big))[0] == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"y" * 1000

    assert (await _status_error(env, "POST", "/a/x", data=chunks()))[0] == 413
    assert (await _status_error(env, "POST", "/h/x", data=big))[0] == 413
    assert (await _status_error(env, "POST", "/h/x", data=chunks()))[0] == 413
    assert env.fake.calls == []
    status, got, _ = await env.request("POST", "/a/x", data=b"z" * 4096)
    assert status == 200 and got["body_len"] == 4096


async def test_oversized_header_is_400(gateway: Any, echo: str) -> None:
    env = await gateway(api("a", "/a", echo), max_header_bytes=1024)
    status, _, _ = await env.request("GET", "/a/x", headers={"X-Big": "b" * 2000})
    assert status == 400


# -- request hooks ----------------------------------------------------------------------

async def test_pre_hook_rewrites_the_request(gateway: Any, echo: str) -> None:
    env = await gateway(api("a", "/a", echo, custom_middleware={"pre": hooks("Pre")}))
    env.fake.behaviours["Pre"] = lambda obj: {"request": {
        "set_headers": {"X-Added": "1"}, "delete_headers": ["X-Remove"],
        "add_params": {"p": "v"}, "delete_params": ["drop"],
        "url": "/a/rewritten", "method": "PUT", "raw_body": b"new body!",
    }}
    status, got, _ = await env.request("POST", "/a/orig?keep=1&drop=2", data=b"old",
                                       headers={"X-Remove": "r"})
    assert status == 200
    assert got["method"] == "PUT"
    assert got["path_qs"] == "/rewritten?keep=1&p=v"
    assert got["headers"]["X-Added"] == "1" and "X-Remove" not in got["headers"]
    assert got["body"] == "new body!" and got["headers"]["Content-Length"] == "9"
    _, hook_type, name, obj = env.fake.calls[0]
    assert (hook_type, name) == ("pre", "Pre")
    assert obj["request"]["raw_body"] == b"old" and obj["request"]["body"] == "old"
    assert obj["request"]["url"] == "/a/orig?keep=1&drop=2"
    assert obj["spec"] == {"APIID": "a", "OrgID": "org1", "bundle_hash": "",
                           "config_data": '{"greeting": "hi"}'}


async def test_each_hook_sees_the_previous_hooks_changes(gateway: Any, echo: str) -> None:
    env = await gateway(api("a", "/a", echo, custom_middleware={
        "pre": hooks("First", "Second"), "post": hooks("Third")}))
    env.fake.behaviours["First"] = lambda obj: {"request": {"set_headers": {"X-Step": "1"}}}
    env.fake.behaviours["Second"] = lambda obj: {"request": {"set_headers": {
        "X-Step": obj["request"]["headers"]["X-Step"] + "2"}}}
    status, got, _ = await env.request("GET", "/a/x")
    assert status == 200 and got["headers"]["X-Step"] == "12"
    third = env.fake.calls[2][3]
    assert third["hook_type"] == "post" and third["request"]["headers"]["X-Step"] == "12"
    assert third["request"]["set_headers"] == {}


@pytest.mark.parametrize("merges", [True, False])
async def test_later_hooks_of_a_merged_call_apply_every_change(gateway: Any, echo: str,
                                                               merges: bool) -> None:
    """The gateway applies a merged call's later REPLYs against what it knows of the
    object the worker built (tyk_object.request_shadow): url, method, body, query,
    session and metadata changes land exactly as with one call per hook."""
    env = await gateway(api("a", "/a", echo, custom_middleware={
        "pre": hooks("First"), "post": hooks("Second", "Third")}))
    env.fake.merges = merges
    env.fake.behaviours["First"] = lambda obj: {"request": {"raw_body": b"one"}}
    env.fake.behaviours["Second"] = lambda obj: {
        "request": {"url": "/moved", "method": "PUT", "add_params": {"p": "2"},
                    "raw_body": obj["request"]["raw_body"] + b"+two"},
        "session": {"rate": 7}, "metadata": {"m": "1"}}
    env.fake.behaviours["Third"] = lambda obj: {"request": {"set_headers": {
        "X-Seen": f'{obj["request"]["url"]} {obj["session"].get("rate")} '
                  f'{obj["metadata"].get("m")}'}}}
    status, got, _ = await env.request("POST", "/a/x?q=1", data=b"zero")
    assert status == 200
    assert (got["method"], got["path_qs"], got["body"]) == ("PUT", "/moved?q=1&p=2",
                                                            "one+two")
    assert got["headers"]["X-Seen"] == "/moved?q=1&p=2 7 1"
    assert env.fake.stats["merged_calls"] == (1 if merges else 0)


async def test_return_overrides_short_circuit(gateway: Any, echo: str) -> None:
    env = await gateway(api("a", "/a", echo, custom_middleware={
        "pre": hooks("Stop"), "post": hooks("Never")}))
    env.fake.behaviours["Stop"] = lambda obj: {"request": {"return_overrides": {
        "response_code": 200, "response_body": "from plugin", "headers": {"X-Foo": "Bar"}}}}
    status, body, headers = await env.request("GET", "/a/x")
    assert (status, body) == (200, b"from plugin")
    assert headers["X-Foo"] == "Bar" and headers["Content-Type"] == "text/plain; charset=utf-8"
    assert [c[2] for c in env.fake.calls] == ["Stop"]

    env.fake.behaviours["Stop"] = lambda obj: {"request": {"return_overrides": {
        "response_code": 429, "response_error": "slow down", "headers": {"X-Foo": "Bar"}}}}
    status, got, headers = await env.request("GET", "/a/x")
    assert (status, got) == (429, {"error": "slow down"})
    assert headers["X-Foo"] == "Bar" and headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(("error", "status", "message"), [
    (HookTimeout("slow"), 504, "Hook timed out"),
    (NoWorker("none"), 503, "Plugin worker unavailable"),
    (WorkerLost("died"), 500, "Middleware error"),
    (HookFailed("hook_failed", "boom"), 500, "Middleware error"),
])
async def test_fail_closed(gateway: Any, echo: str, error: Exception, status: int,
                           message: str) -> None:
    env = await gateway(api("a", "/a", echo, custom_middleware={"pre": hooks("Pre")}))
    env.fake.behaviours["Pre"] = lambda obj: error
    got_status, got, headers = await env.request("GET", "/a/x")
    assert (got_status, got) == (status, {"error": message})
    assert headers.get("Retry-After") == ("1" if status == 503 else None)
    assert env.stats["hooks_fail_closed"] == 1


async def test_fail_open_skips_the_hook(gateway: Any, echo: str) -> None:
    env = await gateway(api("a", "/a", echo, custom_middleware={
        "pre": hooks("Broken", failure_policy="fail_open") + hooks("Fine")}))
    env.fake.behaviours["Broken"] = lambda obj: HookTimeout("slow")
    env.fake.behaviours["Fine"] = lambda obj: {"request": {"set_headers": {"X-Fine": "1"}}}
    status, got, _ = await env.request("GET", "/a/x")
    assert status == 200 and got["headers"]["X-Fine"] == "1"
    assert env.stats["hooks_fail_open"] == 1


# -- auth -------------------------------------------------------------------------------

def auth_api(echo: str) -> dict[str, Any]:
    return api("p", "/p", echo, use_keyless=False, enable_coprocess_auth=True,
               custom_middleware={"auth_check": {"name": "Auth"},
                                  "post_key_auth": hooks("AfterAuth"), "post": hooks("Post")})


async def test_auth_plugin_success_carries_the_session(gateway: Any, echo: str) -> None:
    env = await gateway(auth_api(echo))
    env.fake.behaviours["Auth"] = lambda obj: {
        "metadata": {"token": "tok"}, "session": {"rate": 10.0, "metadata": {"user": "u"}}}
    status, _, _ = await env.request("GET", "/p/x", headers={"Authorization": "secret"})
    assert status == 200
    names = [(c[1], c[2]) for c in env.fake.calls]
    assert names == [("auth_check", "Auth"), ("post_key_auth", "AfterAuth"), ("post", "Post")]
    after = env.fake.calls[1][3]
    # The object's metadata joins the session's, and Object.metadata mirrors it (Tyk).
    assert after["session"]["rate"] == 10.0
    assert after["metadata"] == after["session"]["metadata"] == {"user": "u", "token": "tok"}


@pytest.mark.parametrize(("reply", "status", "message"), [
    ({}, 403, "Forbidden"),  # no token: Tyk answers with the status text
    ({"request": {"return_overrides": {"response_error": "bad key"}}}, 403, "bad key"),
    ({"request": {"return_overrides": {"response_code": 401}}}, 401, "Key not authorised"),
    ({"request": {"return_overrides": {"response_code": 401, "response_error": "expired"}},
      "metadata": {"token": "t"}}, 401, "expired"),
    (HookTimeout("slow"), 403, "Key not authorised"),
    (NoWorker("gone"), 403, "Key not authorised"),
])
async def test_auth_plugin_refusals(gateway: Any, echo: str, reply: Any, status: int,
                                    message: str) -> None:
    env = await gateway(auth_api(echo))
    env.fake.behaviours["Auth"] = lambda obj: reply
    assert await _status_error(env, "GET", "/p/x") == (status, message)
    assert [c[2] for c in env.fake.calls] == ["Auth"]


async def test_token_in_session_metadata_is_accepted(gateway: Any, echo: str) -> None:
    env = await gateway(auth_api(echo))
    env.fake.behaviours["Auth"] = lambda obj: {"session": {"metadata": {"token": "t"}}}
    assert (await env.request("GET", "/p/x"))[0] == 200


async def test_builtin_auth_stopgap_refuses(gateway: Any, echo: str) -> None:
    env = await gateway(api("k", "/k", echo, use_keyless=False, custom_middleware={
        "post_key_auth": hooks("Never")}))
    assert await _status_error(env, "GET", "/k/x") == (401, "Authorization field missing")
    assert await _status_error(env, "GET", "/k/x", headers={"Authorization": "key"}) == \
        (403, "Access to this API has been disallowed")
    assert env.fake.calls == []


# -- response hooks -------------------------------------------------------------------------

async def test_response_hook_rewrites_the_response(gateway: Any, echo: str) -> None:
    env = await gateway(api("a", "/a", echo, custom_middleware={"response": hooks("Resp")}))

    def change(obj: dict[str, Any]) -> dict[str, Any]:
        echoed = json.loads(obj["response"]["body"])
        headers = dict(obj["response"]["headers"], **{"X-Seen": echoed["method"]})
        return {"response": {"status_code": 202, "raw_body": b"short", "headers": headers}}

    env.fake.behaviours["Resp"] = change
    status, body, headers = await env.request("GET", "/a/x")
    assert (status, body) == (202, b"short")
    assert headers["Content-Length"] == "5" and headers["X-Seen"] == "GET"
    obj = env.fake.calls[0][3]
    assert obj["hook_type"] == "response" and obj["response"]["status_code"] == 200


async def test_response_hook_failing_closed(gateway: Any, echo: str) -> None:
    env = await gateway(api("a", "/a", echo, custom_middleware={"response": hooks("Resp")}))
    env.fake.behaviours["Resp"] = lambda obj: WorkerLost("died")
    assert await _status_error(env, "GET", "/a/x") == (500, "Middleware error")


# -- health -------------------------------------------------------------------------------

async def test_hello(gateway: Any, echo: str) -> None:
    env = await gateway(api("a", "/", echo))
    status, got, _ = await env.request("GET", "/hello")
    assert status == 200 and got["status"] == "pass" and got["description"] == "Coproc GW"
    assert got["details"]["worker"]["status"] == "pass"
    assert got["details"]["storage"]["componentType"] == "datastore"
    assert "worker" not in got and "gateway" not in got  # no pids on the public probe
    assert (await env.request("GET", "/ready"))[0] == 200
    env.fake.ready = False
    status, got, _ = await env.request("GET", "/hello")
    # Liveness stays 200 (Tyk): the worker is named, with a short reason.
    assert status == 200 and got["status"] == "warn"
    assert got["details"]["worker"]["output"] == "plugin worker restarting"
    # Plugins loaded once already: still ready (keyless APIs serve).
    assert (await env.request("GET", "/ready"))[0] == 200
    # Other methods on /hello belong to the API on "/".
    assert (await env.request("POST", "/hello"))[1]["path"] == "/hello"


async def test_a_failure_on_every_request_logs_once_per_interval(
        gateway: Any, echo: str, caplog: pytest.LogCaptureFixture) -> None:
    """Issue #11 item 13: 500 requests while the worker is FATAL -> every one is a 503,
    the log gets a handful of lines (one per interval, with the count), not 500."""
    env = await gateway(api("a", "/a", echo, custom_middleware={"pre": hooks("Pre")}))
    env.fake.behaviours["Pre"] = lambda obj: NoWorker("worker is FATAL")
    with caplog.at_level("WARNING", logger="coproc.gateway.chain"):
        statuses = [(await env.request("GET", "/a/x"))[0] for _ in range(500)]
    assert statuses == [503] * 500
    lines = [r.getMessage() for r in caplog.records if r.name == "coproc.gateway.chain"]
    assert 1 <= len(lines) <= 3, lines
    assert "pre hook Pre failed: worker is FATAL" in lines[0]
    assert env.stats["hooks_fail_closed"] == 500


async def test_held_back_failures_are_counted_in_the_next_line(
        gateway: Any, echo: str, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway import chain
    from ipc.ratelog import Throttle

    now = [0.0]
    monkeypatch.setattr(chain, "Throttle", lambda s: Throttle(s, clock=lambda: now[0]))
    env = await gateway(api("a", "/a", echo, custom_middleware={"pre": hooks("Pre")}))
    env.fake.behaviours["Pre"] = lambda obj: NoWorker("down")
    with caplog.at_level("WARNING", logger="coproc.gateway.chain"):
        for _ in range(5):
            await env.request("GET", "/a/x")
        now[0] += chain.HOOK_FAILURE_LOG_S
        await env.request("GET", "/a/x")
    lines = [r.getMessage() for r in caplog.records if r.name == "coproc.gateway.chain"]
    assert len(lines) == 2, lines
    assert lines[1].endswith("(4 more like it in the last 10 s)"), lines
