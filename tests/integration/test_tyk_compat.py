"""Tyk-compatible plugin semantics, end to end through real processes.

One Coproc instance (module scope) carries one API per behaviour, each with
a small plugin written exactly as a Tyk user would write it. Requests go
through the gateway to the echo upstream, which answers with what it saw.
Tests that spoil their instance (a crashing worker, SIGTERM, a second
`coproc serve`) are in test_lifecycle.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import textwrap
import time
import uuid
from typing import Any

import aiohttp
import pytest
from integration.harness import Instance, api_def, echo_header, hook

MAX_BODY_BYTES = 16 * 1024


def plugin(source: str) -> str:
    return textwrap.dedent(source).lstrip()


TYK_IMPORTS = "from tyk.decorators import *\nfrom gateway import TykGateway as tyk\n"

PLUGINS: dict[str, str] = {
    # Tyk's response-override test plugin: a 5-argument hook registered as a
    # *pre* hook, reading query parameters that may be missing.
    "override/middleware.py": TYK_IMPORTS + plugin('''
        @Hook
        def MyRequestHook(request, response, session, metadata, spec):
            request.object.return_overrides.headers["X-Foo"] = "Bar"
            request.object.return_overrides.response_code = int(request.object.params["status"])
            if request.object.params["response_body"] == "true":
                request.object.return_overrides.response_body = "foobar"
            else:
                request.object.return_overrides.response_error = '{"foo": "bar"}'
            if request.object.params["override"]:
                request.object.return_overrides.override_error = True
            return request, session
    '''),
    "params/middleware.py": TYK_IMPORTS + plugin('''
        @Hook
        def CheckMissingParam(request, session, spec):
            overrides = request.object.return_overrides
            value = request.object.params["missing"]
            if value != "":
                overrides.response_code = 400
                overrides.response_error = "missing param read as %r" % (value,)
            header = request.object.headers["X-Not-Sent"]
            if header != "":
                overrides.response_code = 400
                overrides.response_error = "missing header read as %r" % (header,)
            return request, session
    '''),
    "headers/middleware.py": TYK_IMPORTS + plugin('''
        @Hook
        def EditRequest(request, session, spec):
            request.add_header("X-Added", "added-by-hook")
            request.delete_header("X-Remove-Me")
            request.add_param("added", "1")
            request.delete_param("removeme")
            if request.get_header("X-Client") != "yes":
                request.object.return_overrides.response_code = 400
                request.object.return_overrides.response_error = "get_header failed"
            return request, session
    '''),
    "response/middleware.py": TYK_IMPORTS + plugin('''
        @Hook
        def MyResponseHook(request, response, session, metadata, spec):
            response.raw_body = b"newbody"
            return response
    '''),
    # Tyk's UTF-8 / non-UTF-8 request data test plugin, plus a length check.
    "bodies/middleware.py": TYK_IMPORTS + plugin('''
        def fail(request, message):
            request.object.return_overrides.response_code = 400
            request.object.return_overrides.response_error = message

        @Hook
        def MyPreHook(request, session, metadata, spec):
            content_type = request.get_header("Content-Type")
            if "json" in content_type:
                if len(request.object.raw_body) <= 0:
                    fail(request, "Raw body field is empty")
                elif "{}" not in request.object.body:
                    fail(request, "Body field doesn't match")
            if "multipart" in content_type:
                if len(request.object.body) != 0:
                    fail(request, "Body field isn't empty")
                elif len(request.object.raw_body) <= 0:
                    fail(request, "Raw body field is empty")
            expected = request.get_header("X-Body-Len")
            if expected and len(request.object.raw_body) != int(expected):
                fail(request, "raw_body has %d bytes, expected %s"
                     % (len(request.object.raw_body), expected))
            return request, session, metadata
    '''),
    "config/middleware.py": "import json\n\n" + TYK_IMPORTS + plugin('''
        @Hook
        def ShowConfig(request, session, spec):
            if "config_data" in spec and spec["config_data"]:
                request.add_header("X-Config-Foo", json.loads(spec["config_data"])["foo"])
            else:
                request.add_header("X-Config-Foo", "<absent>")
            request.add_header("X-Api-Id", spec["APIID"])
            return request, session
    '''),
    # Tyk's post hook with url rewrite and method transform.
    "rewrite/middleware.py": TYK_IMPORTS + plugin('''
        @Hook
        def MyPostHook(request, session, spec):
            if request.object.url.split("?")[0].endswith("/test2"):
                if request.object.method != "POST":
                    request.object.return_overrides.response_code = 500
                    request.object.return_overrides.response_error = "'invalid method type'"
                    return request, session
                request.object.url = "/newpath"
                request.object.method = "GET"
            return request, session
    '''),
    "raise/middleware.py": TYK_IMPORTS + plugin('''
        @Hook
        def Explode(request, session, spec):
            raise RuntimeError("plugin bug")
    '''),
    "slow/middleware.py": "import time\n\n" + TYK_IMPORTS + plugin('''
        @Hook
        def SleepFromHeader(request, session, spec):
            ms = request.get_header("X-Sleep-Ms")
            if ms:
                time.sleep(int(ms) / 1000.0)
            request.add_header("X-Slept", ms or "0")
            return request, session
    '''),
    "failopen/middleware.py": TYK_IMPORTS + plugin('''
        @Hook
        def Broken(request, session, spec):
            raise ValueError("this hook always fails")

        @Hook
        def After(request, session, spec):
            request.add_header("X-After", "ran")
            return request, session
    '''),
    # Same file name and same function name in two directories.
    "same_a/middleware.py": TYK_IMPORTS + plugin('''
        @Hook
        def MyPreHook(request, session, spec):
            request.add_header("X-Which", "a")
            return request, session
    '''),
    "same_b/middleware.py": TYK_IMPORTS + plugin('''
        @Hook
        def MyPreHook(request, session, spec):
            request.add_header("X-Which", "b")
            return request, session
    '''),
    "sleep50/middleware.py": "import time\n\n" + TYK_IMPORTS + plugin('''
        @Hook
        def Sleep50(request, session, spec):
            time.sleep(0.05)
            return request, session
    '''),
    "kv/middleware.py": TYK_IMPORTS + plugin('''
        @Hook
        def KeyValue(request, session, spec):
            key = request.get_header("X-Kv-Key")
            if request.get_header("X-Kv-Op") == "store":
                tyk.store_data(key, request.get_header("X-Kv-Value"), 60)
                request.add_header("X-Kv-Stored", "yes")
            else:
                value = tyk.get_data(key)
                request.add_header("X-Kv-Type", type(value).__name__)
                if isinstance(value, bytes):
                    request.add_header("X-Kv-Got", value.decode() or "<empty>")
            return request, session
    '''),
    "auth/middleware.py": TYK_IMPORTS + plugin('''
        @Hook
        def MyAuthCheck(request, session, metadata, spec):
            if request.get_header("Authorization") == "let-me-in":
                session.rate = 1000.0
                session.per = 1.0
                session.quota_max = -1
                metadata["token"] = "let-me-in"
            return request, session, metadata

        @Hook
        def AfterAuth(request, session, spec):
            request.add_header("X-Post-Key-Auth", "ran")
            return request, session
    '''),
    "async_hook/middleware.py": "import asyncio\n\n" + TYK_IMPORTS + plugin('''
        @Hook
        async def AsyncPre(request, session, spec):
            await asyncio.sleep(0.01)
            request.add_header("X-Async", "yes")
            key = request.get_header("X-Kv-Key")
            if key:
                await tyk.store_data_async(key, "from-async", 60)
                value = await tyk.get_data_async(key)
                request.add_header("X-Kv-Got", value.decode())
            return request, session
    '''),
    "disabled/middleware.py": TYK_IMPORTS + plugin('''
        @Hook
        def NeverRuns(request, session, spec):
            raise RuntimeError("a disabled hook ran")

        @Hook
        def Runs(request, session, spec):
            request.add_header("X-Enabled", "ran")
            return request, session
    '''),
}


def build_apis(target: str) -> dict[str, dict[str, Any]]:
    def one(api_id: str, **kw: Any) -> dict[str, Any]:
        return api_def(api_id, f"/{api_id}/", target, **kw)

    return {
        "override": one("override", pre=[hook("MyRequestHook", "override/middleware.py")]),
        "params": one("params", pre=[hook("CheckMissingParam", "params/middleware.py")]),
        "headers": one("headers", pre=[hook("EditRequest", "headers/middleware.py")]),
        "response": one("response", response=[hook("MyResponseHook", "response/middleware.py")]),
        "bodies": one("bodies", pre=[hook("MyPreHook", "bodies/middleware.py")]),
        "config": one("config", pre=[hook("ShowConfig", "config/middleware.py")],
                      config_data={"foo": "bar"}),
        "config-off": one("config-off", pre=[hook("ShowConfig", "config/middleware.py")],
                          config_data={"foo": "bar"}, config_data_disabled=True),
        "rewrite": one("rewrite", post=[hook("MyPostHook", "rewrite/middleware.py")]),
        "raise": one("raise", pre=[hook("Explode", "raise/middleware.py")]),
        "slow-hook": one("slow-hook", pre=[hook("SleepFromHeader", "slow/middleware.py",
                                                timeout_ms=300)]),
        "slow-api": one("slow-api", pre=[hook("SleepFromHeader", "slow/middleware.py")],
                        coproc={"hook_timeout_ms": 600}),
        "slow-default": one("slow-default",
                            pre=[hook("SleepFromHeader", "slow/middleware.py")]),
        "failopen-hook": one("failopen-hook", pre=[
            hook("Broken", "failopen/middleware.py", failure_policy="fail_open"),
            hook("After", "failopen/middleware.py")]),
        "failopen-api": one("failopen-api", pre=[
            hook("SleepFromHeader", "slow/middleware.py"),
            hook("After", "failopen/middleware.py")],
            coproc={"hook_timeout_ms": 200, "failure_policy": "fail_open"}),
        "same-a": one("same-a", pre=[hook("MyPreHook", "same_a/middleware.py")]),
        "same-b": one("same-b", pre=[hook("MyPreHook", "same_b/middleware.py")]),
        "sleep50": one("sleep50", pre=[hook("Sleep50", "sleep50/middleware.py")]),
        "kv": one("kv", pre=[hook("KeyValue", "kv/middleware.py")]),
        "auth": one("auth", use_keyless=False, enable_coprocess_auth=True,
                    auth={"auth_header_name": "Authorization"},
                    auth_check=hook("MyAuthCheck", "auth/middleware.py"),
                    post_key_auth=[hook("AfterAuth", "auth/middleware.py")]),
        "async": one("async", pre=[hook("AsyncPre", "async_hook/middleware.py")]),
        "disabled": one("disabled", pre=[
            hook("NeverRuns", "disabled/middleware.py", disabled=True),
            hook("Runs", "disabled/middleware.py")]),
        "plain": one("plain"),
    }


@pytest.fixture(scope="module")
def gw(module_coproc_factory: Any, echo_upstream: Any) -> Instance:
    return module_coproc_factory(
        build_apis(echo_upstream.url), PLUGINS,
        {"coproc": {"gateway": {"max_body_bytes": MAX_BODY_BYTES}}})


def echoed(gw: Instance, method: str, path: str, headers: dict[str, str] | None = None,
           body: bytes | None = None) -> dict[str, Any]:
    """Send through the gateway, expect 200 from the echo upstream, return what it saw."""
    resp = gw.expect(gw.request(method, path, headers, body), 200)
    return resp.json()


# --------------------------------------------------------------------------- health, routing


def test_hello_reports_a_ready_worker(gw: Instance) -> None:
    body = gw.expect(gw.hello(), 200).json()
    assert body["status"] == "pass" and body["version"] and body["description"]
    assert body["details"]["worker"]["status"] == "pass"
    worker = gw.worker()
    assert worker["ready"] is True
    assert worker["generation"] >= 1
    assert worker["pid"] in {p.pid for p in gw.children()}
    assert isinstance(worker["state"], str) and worker["state"]


def test_api_without_plugins_proxies(gw: Instance) -> None:
    echo = echoed(gw, "GET", "/plain/some/path?x=1&x=2")
    assert echo["method"] == "GET"
    assert echo["path"] == "/some/path"  # strip_listen_path
    assert echo["query"] == {"x": ["1", "2"]}


def test_unknown_path_is_404(gw: Instance) -> None:
    gw.expect(gw.get("/no-such-api/anything"), 404)


def test_malformed_request_line_is_400(gw: Instance) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        data = b""
        deadline = time.monotonic() + 5
        while b"\r\n" not in data and time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    status_line = data.split(b"\r\n", 1)[0]
    assert status_line.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400")), data[:300]


def test_body_over_max_body_bytes_is_413(gw: Instance) -> None:
    body = b"x" * (MAX_BODY_BYTES * 4)
    resp = gw.request("POST", "/plain/upload", {"Content-Type": "application/octet-stream"},
                      body)
    gw.expect(resp, 413)


def test_chunked_body_over_max_body_bytes_is_413(gw: Instance) -> None:
    chunks = [b"y" * 4096] * (MAX_BODY_BYTES * 4 // 4096)
    resp = gw.request("POST", "/plain/upload", {"Content-Type": "application/octet-stream"},
                      iter(chunks), chunked=True)
    gw.expect(resp, 413)


def test_body_under_max_body_bytes_reaches_upstream(gw: Instance) -> None:
    body = bytes(range(256)) * 32  # 8 KiB, below the limit
    echo = echoed(gw, "POST", "/plain/upload", {"Content-Type": "application/octet-stream"},
                  body)
    assert echo["body_len"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


# --------------------------------------------------------------------------- return_overrides

OVERRIDE_CASES = [
    # (query, status, expected body check)
    ("status=200", 200, ("raw", '{"foo": "bar"}')),
    ("status=200&response_body=true", 200, ("raw", "foobar")),
    ("status=400", 400, ("error", '{"foo": "bar"}')),
    ("status=400&response_body=true", 400, ("error", "foobar")),
    ("status=401", 401, ("error", '{"foo": "bar"}')),
    ("status=400&override=true", 400, ("raw", '{"foo": "bar"}')),
    ("status=400&override=true&response_body=true", 400, ("raw", "foobar")),
    ("status=401&override=true", 401, ("raw", '{"foo": "bar"}')),
    ("status=401&override=true&response_body=true", 401, ("raw", "foobar")),
]


@pytest.mark.parametrize(("query", "status", "expected"), OVERRIDE_CASES,
                         ids=[c[0] for c in OVERRIDE_CASES])
def test_return_overrides_matrix(gw: Instance, query: str, status: int,
                                 expected: tuple[str, str]) -> None:
    check_override(gw, query, status, expected)


def check_override(gw: Instance, query: str, status: int, expected: tuple[str, str]) -> None:
    """One OVERRIDE_CASES row against the `/override/` API (shared by the gRPC driver's
    tests: the same outcomes whichever plugin driver answers)."""
    resp = gw.expect(gw.get(f"/override/?{query}"), status)
    assert resp.header("X-Foo") == "Bar"
    kind, text = expected
    if kind == "error":
        # Tyk's error template: {"error": "<message>"}
        assert resp.json() == {"error": text}
    else:
        assert resp.text().strip() == text
    # A short-circuit never reaches the upstream: no echo document in the body.
    assert b'"body_sha256"' not in resp.body


def test_missing_param_and_header_read_as_empty_string(gw: Instance) -> None:
    echoed(gw, "GET", "/params/")


# --------------------------------------------------------------------------- request edits


def test_header_and_param_edits_reach_upstream(gw: Instance) -> None:
    echo = echoed(gw, "GET", "/headers/path?keep=2&removeme=1",
                  {"X-Client": "yes", "X-Remove-Me": "please"})
    assert echo_header(echo, "X-Added") == "added-by-hook"
    assert echo_header(echo, "X-Remove-Me") is None
    assert echo_header(echo, "X-Client") == "yes"
    assert echo["query"].get("added") == ["1"]
    assert echo["query"].get("keep") == ["2"]
    assert "removeme" not in echo["query"]


def test_post_hook_rewrites_url_and_method(gw: Instance) -> None:
    echo = echoed(gw, "POST", "/rewrite/test2", {"Content-Type": "text/plain"}, b"data")
    assert echo["path"].endswith("/newpath"), echo["path"]
    assert echo["method"] == "GET"


def test_post_hook_leaves_other_requests_alone(gw: Instance) -> None:
    echo = echoed(gw, "POST", "/rewrite/other", {"Content-Type": "text/plain"}, b"data")
    assert echo["path"] == "/other"
    assert "newpath" not in echo["path_qs"]
    assert echo["method"] == "POST"
    assert echo["body"] == "data"


def test_post_hook_error_override(gw: Instance) -> None:
    resp = gw.expect(gw.get("/rewrite/test2"), 500)
    assert resp.json() == {"error": "'invalid method type'"}


# --------------------------------------------------------------------------- bodies


def test_response_hook_replaces_body_and_content_length(gw: Instance) -> None:
    resp = gw.expect(gw.get("/response/anything"), 200)
    assert resp.body == b"newbody"
    assert resp.header("Content-Length") == "7"


def test_json_body_gives_body_and_raw_body(gw: Instance) -> None:
    echo = echoed(gw, "POST", "/bodies/", {"Content-Type": "application/json",
                                           "X-Body-Len": "2"}, b"{}")
    assert echo["body"] == "{}"


def multipart(boundary: str, binary: bytes) -> bytes:
    return (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="test.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + binary + (
        f"\r\n--{boundary}\r\n"
        'Content-Disposition: form-data; name="testfield"\r\n\r\n'
        f"testvalue\r\n--{boundary}--\r\n"
    ).encode()


def test_binary_multipart_body_gives_empty_body_and_full_raw_body(gw: Instance) -> None:
    binary = bytes(range(256)) * 8  # not valid UTF-8
    boundary = "coproc-test-boundary"
    body = multipart(boundary, binary)
    echo = echoed(gw, "POST", "/bodies/", {
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "X-Body-Len": str(len(body))}, body)
    # The upstream still gets the exact bytes.
    assert echo["body_len"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


# --------------------------------------------------------------------------- spec


def test_config_data_is_json_text_in_spec(gw: Instance) -> None:
    echo = echoed(gw, "GET", "/config/")
    assert echo_header(echo, "X-Config-Foo") == "bar"
    assert echo_header(echo, "X-Api-Id") == "config"


def test_config_data_disabled_hides_it(gw: Instance) -> None:
    echo = echoed(gw, "GET", "/config-off/")
    assert echo_header(echo, "X-Config-Foo") == "<absent>"
    assert echo_header(echo, "X-Api-Id") == "config-off"


# --------------------------------------------------------------------------- failures


def test_plugin_exception_is_500_middleware_error(gw: Instance) -> None:
    resp = gw.expect(gw.get("/raise/"), 500)
    assert resp.json() == {"error": "Middleware error"}


@pytest.mark.parametrize(("api", "timeout_s"), [
    ("slow-hook", 0.3),     # per-hook timeout_ms
    ("slow-api", 0.6),      # per-API coproc.hook_timeout_ms
    ("slow-default", 1.0),  # coproc.hooks.timeout_ms default
])
def test_hook_deadline_is_504_and_next_request_is_served(gw: Instance, api: str,
                                                        timeout_s: float) -> None:
    resp = gw.expect(gw.get(f"/{api}/", {"X-Sleep-Ms": "3000"}), 504)
    assert timeout_s * 0.9 <= resp.elapsed < timeout_s + 1.5, resp.elapsed
    echo = echoed(gw, "GET", f"/{api}/")
    assert echo_header(echo, "X-Slept") == "0"


def test_fail_open_hook_that_raises_is_skipped(gw: Instance) -> None:
    echo = echoed(gw, "GET", "/failopen-hook/")
    assert echo_header(echo, "X-After") == "ran"


def test_fail_open_api_skips_a_timed_out_hook(gw: Instance) -> None:
    started = time.monotonic()
    echo = echoed(gw, "GET", "/failopen-api/", {"X-Sleep-Ms": "2000"})
    assert time.monotonic() - started < 1.5
    assert echo_header(echo, "X-Slept") is None  # the timed-out hook's edit is discarded
    assert echo_header(echo, "X-After") == "ran"


def test_disabled_hook_does_not_run(gw: Instance) -> None:
    echo = echoed(gw, "GET", "/disabled/")
    assert echo_header(echo, "X-Enabled") == "ran"


# --------------------------------------------------------------------------- isolation, API


def test_same_module_and_function_names_stay_separate(gw: Instance) -> None:
    for _ in range(3):
        assert echo_header(echoed(gw, "GET", "/same-a/"), "X-Which") == "a"
        assert echo_header(echoed(gw, "GET", "/same-b/"), "X-Which") == "b"


def test_store_data_get_data_round_trip(gw: Instance) -> None:
    key = f"k-{uuid.uuid4().hex}"
    echo = echoed(gw, "GET", "/kv/", {"X-Kv-Key": key, "X-Kv-Op": "store",
                                       "X-Kv-Value": "stored-value"})
    assert echo_header(echo, "X-Kv-Stored") == "yes"
    echo = echoed(gw, "GET", "/kv/", {"X-Kv-Key": key, "X-Kv-Op": "get"})
    assert echo_header(echo, "X-Kv-Type") == "bytes"
    assert echo_header(echo, "X-Kv-Got") == "stored-value"


def test_get_data_of_unknown_key_is_empty_bytes(gw: Instance) -> None:
    echo = echoed(gw, "GET", "/kv/", {"X-Kv-Key": f"nope-{uuid.uuid4().hex}", "X-Kv-Op": "get"})
    assert echo_header(echo, "X-Kv-Type") == "bytes"
    assert echo_header(echo, "X-Kv-Got") == "<empty>"


def test_auth_check_hook_admits_and_post_key_auth_runs(gw: Instance) -> None:
    echo = echoed(gw, "GET", "/auth/", {"Authorization": "let-me-in"})
    assert echo_header(echo, "X-Post-Key-Auth") == "ran"


def test_auth_check_hook_without_token_is_403(gw: Instance) -> None:
    resp = gw.expect(gw.get("/auth/", {"Authorization": "wrong"}), 403)
    assert resp.json() == {"error": "Forbidden"}  # no metadata["token"]: Tyk's status text


def test_async_def_hook(gw: Instance) -> None:
    echo = echoed(gw, "GET", "/async/")
    assert echo_header(echo, "X-Async") == "yes"


def test_async_def_hook_host_calls(gw: Instance) -> None:
    echo = echoed(gw, "GET", "/async/", {"X-Kv-Key": f"async-{uuid.uuid4().hex}"})
    assert echo_header(echo, "X-Kv-Got") == "from-async"


# --------------------------------------------------------------------------- concurrency


def test_sync_hooks_run_concurrently_on_a_thread_pool(gw: Instance) -> None:
    n, hook_s = 100, 0.05
    echoed(gw, "GET", "/sleep50/warm-up")

    async def run() -> tuple[list[int], float]:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            async def one(i: int) -> int:
                async with session.get(f"{gw.base_url}/sleep50/{i}") as resp:
                    await resp.read()
                    return resp.status

            started = time.monotonic()
            statuses = await asyncio.gather(*(one(i) for i in range(n)))
            return list(statuses), time.monotonic() - started

    statuses, elapsed = asyncio.run(run())
    assert statuses == [200] * n, sorted(set(statuses))
    # Serially this would take n * 0.05 = 5 s.
    assert elapsed < n * hook_s / 2, f"{n} requests took {elapsed:.2f}s"
    assert elapsed < 2.5


def test_instance_still_healthy_after_failures(gw: Instance) -> None:
    """The failure tests above must not have cost the worker its life."""
    assert gw.worker()["ready"] is True
    echo = echoed(gw, "GET", "/config/")
    assert echo_header(echo, "X-Config-Foo") == "bar"
