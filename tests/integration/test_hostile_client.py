"""A hostile client against a real gateway over loopback (issue 11, items 7-11).

Raw sockets where the attack is below what an HTTP library will send: HTTP/0.9,
non-UTF-8 header bytes, oversized heads, slow heads, encoded dot segments.
"""

from __future__ import annotations

import contextlib
import json
import socket
import textwrap
import threading
import time
from typing import Any

import psutil
import pytest
from integration.harness import HOST, Instance, api_def, echo_header, hook, poll

SECRET = "hostile-client-secret"
ADMIN = {"X-Tyk-Authorization": SECRET}

PLUGIN = textwrap.dedent('''
    from tyk.decorators import *


    @Hook
    def SeeBytes(request, session, spec):
        # A value that is not UTF-8 arrives as latin-1 text: one character per byte.
        value = request.get_header("X-Bin")
        request.add_header("X-Seen-Bytes", value.encode("latin-1").hex())
        return request, session


    @Hook
    def Auth(request, session, metadata, spec):
        token = request.get_header("Authorization")
        if token.startswith("valid_"):
            session.rate, session.per = 1000.0, 1.0
            metadata["token"] = token.encode("latin-1").hex()
        return request, session, metadata
''')

LIMITS = {"max_header_bytes": 4096, "header_read_timeout_ms": 1000, "idle_timeout_ms": 1000}


def _apis(echo_url: str) -> dict[str, dict[str, Any]]:
    return {
        "plain": api_def("plain", "/plain/", echo_url),
        "hooked": api_def("hooked", "/hooked/", echo_url, pre=[hook("SeeBytes", "h/mw.py")]),
        "auth": api_def("auth", "/auth/", echo_url, use_keyless=False,
                        enable_coprocess_auth=True, auth_check=hook("Auth", "h/mw.py")),
        "keys": api_def("keys", "/keys/", echo_url, use_keyless=False),
    }


@pytest.fixture(scope="module")
def gw(module_coproc_factory: Any, echo_upstream: Any) -> Instance:
    return module_coproc_factory(_apis(echo_upstream.url), {"h/mw.py": PLUGIN},
                                 {"secret": SECRET, "coproc": {"gateway": LIMITS}})


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data` on a fresh connection; everything received until close or `timeout`."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(data)
        for _ in range(10_000):  # bounded; ends on close or at the deadline
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def parsed(answer: bytes) -> tuple[int, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else None


def get(path: bytes, *headers: bytes) -> bytes:
    return (b"GET " + path + b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
            + b"".join(h + b"\r\n" for h in headers) + b"\r\n")


# -- item 8: header bytes -----------------------------------------------------------------


def test_non_utf8_header_bytes_reach_plugin_and_upstream_unchanged(gw: Instance) -> None:
    """1. X-Bin: a 0xFF 0xFE b, to a keyless and a hooked API: 200, and the upstream
       got exactly those bytes (the echo shows them surrogate-escaped).
    2. The plugin saw them as latin-1 text (one character per byte)."""
    for path in (b"/plain/x", b"/hooked/x"):
        status, echo = parsed(raw(gw.port, get(path, b"X-Bin: a\xff\xfeb")))
        assert status == 200, (path, echo, gw.logs())
        assert echo_header(echo, "X-Bin") == "a\udcff\udcfeb"
    assert echo_header(echo, "X-Seen-Bytes") == "61fffe62"


def test_non_utf8_bytes_in_auth_headers_never_give_500(gw: Instance) -> None:
    """An auth plugin, built-in key auth and the admin API get bytes that are not
    UTF-8 in their credentials: 200 or 403 as the credential deserves, never 500,
    and no traceback in the log."""
    status, _ = parsed(raw(gw.port, get(b"/auth/x", b"Authorization: valid_\xff")))
    assert status == 200, gw.logs()
    assert parsed(raw(gw.port, get(b"/auth/x", b"Authorization: \xff\xfe")))[0] == 403
    assert parsed(raw(gw.port, get(b"/keys/x", b"Authorization: \xff\xfe")))[0] == 403
    status, body = parsed(raw(gw.port, get(b"/tyk/keys/k", b"X-Tyk-Authorization: \xff")))
    assert status == 403 and body["status"] == "error"
    status, _ = parsed(raw(gw.port, get(b"/coproc/status", b"X-Tyk-Authorization: \xff")))
    assert status == 403
    assert "Traceback" not in gw.logs(50_000)


# -- item 10: oversized heads ---------------------------------------------------------------


@pytest.mark.parametrize("head", [
    get(b"/plain/x", b"X-Big: " + b"SECRET" * 1000),  # one line over the limit
    get(b"/plain/x", *[b"X-Many-%d: %s" % (i, b"SECRET" * 60) for i in range(20)]),  # in all
    get(b"/plain/" + b"SECRET" * 1000),  # the request line
], ids=["one-header", "many-headers", "request-line"])
def test_head_over_max_header_bytes_is_431_json_without_echo(gw: Instance,
                                                             head: bytes) -> None:
    answer = raw(gw.port, head)
    status, body = parsed(answer)
    assert status == 431 and body == {"error": "Request header fields too large"}
    assert b"SECRET" not in answer
    assert b"application/json" in answer.split(b"\r\n\r\n")[0]
    assert "Traceback" not in gw.logs(50_000)


def test_malformed_head_is_400_json_without_echo(gw: Instance) -> None:
    answer = raw(gw.port, b"GET /plain/x HTTP/1.1\r\nHost: gw\r\nSECRET line\r\n\r\n")
    assert parsed(answer) == (400, {"error": "Bad request"})
    assert b"SECRET" not in answer and "Traceback" not in gw.logs(50_000)


# -- item 11: HTTP/0.9 and dot segments -------------------------------------------------------


def test_http09_is_refused(gw: Instance) -> None:
    for request in (b"GET /plain/x\r\n\r\n", b"GET /plain/x HTTP/0.9\r\n\r\n"):
        answer = raw(gw.port, request)
        assert b" 400 " in answer.split(b"\r\n")[0], answer
        assert b'{"error": "HTTP/0.9 is not supported"}' in answer
        assert b'"path"' not in answer  # never reached the upstream


@pytest.mark.parametrize("path", [
    b"/plain/..%2f..%2fetc/passwd", b"/plain/%2E%2E%2Fetc", b"/plain/..\\etc",
    b"/plain/%2e%2e/x", b"/plain/..%5cetc", b"/plain/..;/etc", b"/plain/a%2f..%2f..%2fb",
])
def test_encoded_dot_segments_are_refused(gw: Instance, path: bytes) -> None:
    status, body = parsed(raw(gw.port, get(path)))
    assert (status, body) == (400, {"error": "Dot segments are not allowed in the path"})


def test_dots_inside_names_still_pass(gw: Instance) -> None:
    for path in (b"/plain/a..b", b"/plain/.well-known/x", b"/plain/file.json"):
        status, echo = parsed(raw(gw.port, get(path)))
        assert status == 200 and echo["path"].endswith(path.decode()[len("/plain"):])


# -- item 9: slow and idle connections -------------------------------------------------------


def test_slow_head_is_closed_at_the_header_timeout(gw: Instance) -> None:
    started = time.monotonic()
    answer = raw(gw.port, b"GET /plain/x HTTP/1.1\r\nHost: gw\r\n", timeout=10)
    took = time.monotonic() - started
    assert answer == b"" and 0.8 <= took < 5, (answer, took)


def test_idle_keepalive_connection_is_closed_at_the_idle_timeout(gw: Instance) -> None:
    started = time.monotonic()
    answer = raw(gw.port, b"GET /plain/x HTTP/1.1\r\nHost: gw\r\n\r\n", timeout=10)
    took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 200") and 0.8 <= took < 5, (answer[:40], took)


def test_many_slow_connections_keep_fds_bounded_and_serve_a_real_client(
        module_coproc_factory: Any, echo_upstream: Any) -> None:
    """1. An instance capped at 40 connections, header timeout 30 s.
    2. 200 slowloris connections (each sent half a head) are opened.
    3. The gateway's open fds stay within the cap (plus its own fixed set),
       a real client is served 200, and the cap is logged once, not per connection."""
    cap = 40
    inst = module_coproc_factory({"plain": api_def("plain", "/plain/", echo_upstream.url)}, {},
                                 {"coproc": {"gateway": {"max_connections": cap,
                                                         "header_read_timeout_ms": 30000}}})
    gateway = psutil.Process(inst.expect(inst.status(), 200).json()["gateway"]["pid"])
    baseline = gateway.num_fds()
    slow: list[socket.socket] = []
    try:
        for _ in range(200):
            sock = socket.create_connection((HOST, inst.port), timeout=5)
            sock.sendall(b"GET /plain/x HTTP/1.1\r\nHost: gw\r\n")
            slow.append(sock)
        poll("the gateway to settle at the cap",
             lambda: gateway.num_fds() <= baseline + cap + 5, 10)
        inst.expect(inst.get("/plain/x", timeout=10), 200)
        assert gateway.num_fds() <= baseline + cap + 5
    finally:
        for sock in slow:
            sock.close()
    assert inst.logs(50_000).count("connection cap reached") <= 2, inst.logs()


# -- item 7: plugins switched off ----------------------------------------------------------------


def test_coprocess_disabled_closes_plugin_apis_instead_of_key_auth(
        module_coproc_factory: Any, echo_upstream: Any) -> None:
    """1. enable_coprocess false; an API protected by an auth_check plugin (and
       standard auth) and a keyless API without plugins.
    2. A key created through the admin API would pass built-in key auth.
    3. The plugin API answers 503 to it and to anyone; the plain API serves;
       /hello is 200 and names the closed API; /ready is 200."""
    apis = _apis(echo_upstream.url)
    apis["auth"]["use_standard_auth"] = True
    inst = module_coproc_factory({"auth": apis["auth"], "plain": apis["plain"]},
                                 {"h/mw.py": PLUGIN},
                                 {"secret": SECRET,
                                  "coprocess_options": {"enable_coprocess": False}})
    body = json.dumps({"access_rights": {"auth": {"api_id": "auth"}}}).encode()
    created = inst.expect(inst.request("POST", "/tyk/keys/create", ADMIN, body), 200).json()
    for headers in ({"Authorization": created["key"]}, {}):
        resp = inst.expect(inst.get("/auth/x", headers), 503)
        assert resp.json() == {"error": "Plugins unavailable"}
    inst.expect(inst.get("/plain/x"), 200)
    hello = inst.expect(inst.hello(), 200).json()
    assert hello["details"]["api:auth"] == {**hello["details"]["api:auth"],
                                            "status": "fail", "output": "plugins disabled"}
    assert "worker" not in hello["details"]
    inst.expect(inst.ready(), 200)


def test_non_utf8_key_with_redis_storage_is_403_not_500(module_coproc_factory: Any,
                                                        echo_upstream: Any,
                                                        redis_server: Any) -> None:
    """Built-in key auth and the id-extractor cache look keys up in Redis: a key with
    bytes that are not UTF-8 is an unknown key (403), never a 500."""
    apis = _apis(echo_upstream.url)
    inst = module_coproc_factory({"keys": apis["keys"], "auth": apis["auth"]},
                                 {"h/mw.py": PLUGIN}, {"secret": SECRET, **redis_server.settings()})
    assert parsed(raw(inst.port, get(b"/keys/x", b"Authorization: \xff\xfe")))[0] == 403
    assert parsed(raw(inst.port, get(b"/auth/x", b"Authorization: valid_\xff")))[0] == 200
    status, _ = parsed(raw(inst.port, get(b"/tyk/keys/\xff", b"X-Tyk-Authorization: "
                                          + SECRET.encode())))
    assert status in (200, 400, 404)
    assert "Traceback" not in inst.logs(50_000)


# -- item 12: readiness before the first plugin load ----------------------------------------

SLOW_IMPORT = textwrap.dedent('''
    import time

    from tyk.decorators import *

    time.sleep(6)  # a plugin whose import is slow: the instance is up, not yet ready


    @Hook
    def Tag(request, session, spec):
        request.add_header("X-Tag", "loaded")
        return request, session
''')


def test_ready_waits_for_the_first_plugin_load(coproc_factory: Any,
                                               echo_upstream: Any) -> None:
    """1. A plugin takes 6 s to import.
    2. Meanwhile /hello answers 200 naming the worker as not passing (no pid, no
       path), and /ready answers 503.
    3. Once the plugin loaded: /ready 200, /hello pass, the hook runs."""
    inst = coproc_factory({"slow": api_def("slow", "/slow/", echo_upstream.url,
                                           pre=[hook("Tag", "slow/mw.py")])},
                          {"slow/mw.py": SLOW_IMPORT}, wait=False)

    def port() -> int:
        try:
            return int((inst.run_dir / "http.port").read_text().strip())
        except (OSError, ValueError):
            return 0

    inst.port = poll("http.port", port, 20)

    def hello_up() -> dict[str, Any] | None:
        try:
            return dict(inst.hello(timeout=2).json())
        except (OSError, ValueError):
            return None

    early = poll("GET /hello from the gateway", hello_up, 20)
    assert early["details"]["worker"]["status"] == "fail", early
    assert early["details"]["worker"]["output"].startswith("plugin worker ")
    assert "mw.py" not in json.dumps(early)
    not_ready = inst.ready()
    assert not_ready.status == 503, (not_ready.status, not_ready.body)
    assert not_ready.json()["status"] == "error"
    poll("GET /ready == 200", lambda: inst.ready().status == 200, 30)
    assert inst.hello().json()["status"] == "pass"
    assert echo_header(inst.expect(inst.get("/slow/x"), 200).json(), "X-Tag") == "loaded"


def test_upstream_header_bytes_reach_the_client_unchanged(module_coproc_factory: Any) -> None:
    """1. An upstream answers with a header holding 0xFF 0xFE (not UTF-8).
    2. Through the gateway, with and without a response hook, the client gets the same
       bytes; the response hook saw them as latin-1 text."""
    listener = socket.create_server((HOST, 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    answer = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n"
              b"X-Up: a\xff\xfeb\r\n\r\nok")

    def serve() -> None:
        while not stop.is_set():  # bounded by the test: stop is set in `finally`
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                    conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    upstream = f"http://{HOST}:{listener.getsockname()[1]}"
    response_hook = textwrap.dedent('''
        from tyk.decorators import *


        @Hook
        def SeeUp(request, response, session, metadata, spec):
            value = response.headers["X-Up"]
            response.headers["X-Up-Seen"] = value.encode("latin-1").hex()
            return response
    ''')
    try:
        inst = module_coproc_factory(
            {"up": api_def("up", "/up/", upstream),
             "uphook": api_def("uphook", "/uphook/", upstream,
                               response=[hook("SeeUp", "r/mw.py")])},
            {"r/mw.py": response_hook})
        for path in (b"/up/x", b"/uphook/x"):
            got = raw(inst.port, get(path))
            assert got.startswith(b"HTTP/1.1 200"), got
            assert b"\r\nX-Up: a\xff\xfeb\r\n" in got, got
        assert b"\r\nX-Up-Seen: 61fffe62\r\n" in got, got
    finally:
        stop.set()
        thread.join(5)
        listener.close()
