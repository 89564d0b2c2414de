"""Proxy helpers: hop-by-hop filtering, path joining, upstream URL and headers."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from config.apidef import ProxyDef
from gateway.proxy import Target, copy_end_to_end, forwarded_for, join_path, upstream_headers
from gateway.tyk_object import RequestState


def test_hop_by_hop_headers_are_not_copied() -> None:
    src = CIMultiDict([
        ("Connection", "keep-alive, X-Private"), ("Keep-Alive", "timeout=5"),
        ("Proxy-Authorization", "secret"), ("Proxy-Connection", "x"), ("TE", "trailers"),
        ("Trailer", "X"), ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"),
        ("x-private", "named by Connection"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
        ("Content-Type", "text/plain"),
    ])
    dst: CIMultiDict[str] = CIMultiDict()
    copy_end_to_end(src, dst)
    assert list(dst.items()) == [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
                                 ("Content-Type", "text/plain")]


@pytest.mark.parametrize(("base", "sub", "joined"), [
    ("", "/x", "/x"),
    ("/", "/x", "/x"),
    ("/api", "/x", "/api/x"),
    ("/api/", "/x", "/api/x"),
    ("/api/", "x/", "/api/x/"),
    ("/api", "", "/api"),
    ("/api/", "", "/api/"),
    ("", "", "/"),
    ("/api", "/", "/api/"),
    ("", "x", "/x"),
])
def test_join_path(base: str, sub: str, joined: str) -> None:
    assert join_path(base, sub) == joined


def test_forwarded_for_appends_the_client() -> None:
    assert forwarded_for([], "10.0.0.1") == "10.0.0.1"
    assert forwarded_for(["1.1.1.1, 2.2.2.2", "3.3.3.3"], "10.0.0.1") == \
        "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.1"
    assert forwarded_for(["1.1.1.1"], None) == "1.1.1.1"


@pytest.mark.parametrize(("listen", "target", "strip", "path", "query", "url"), [
    ("/foo", "http://up:8081", False, "/foo/bar", "a=1", "http://up:8081/foo/bar?a=1"),
    ("/foo/", "http://up:8081/base/", True, "/foo/bar", "", "http://up:8081/base/bar"),
    ("/foo", "http://up:8081/base", True, "/foo", "", "http://up:8081/base"),
    ("/foo", "http://up/base?key=k", True, "/foo/x", "a=1", "http://up/base/x?key=k&a=1"),
    ("/", "https://up", True, "/x/%2F/y", "", "https://up/x/%2F/y"),
])
def test_target_url(listen: str, target: str, strip: bool, path: str, query: str,
                    url: str) -> None:
    t = Target.from_proxy(ProxyDef(listen, target, strip_listen_path=strip))
    assert str(t.url(path, query)) == url


def _state(headers: list[tuple[str, str]], body: bytes | None = None) -> RequestState:
    return RequestState("POST", "/foo", "", "/foo", "http",
                        CIMultiDictProxy(CIMultiDict(headers)), body=body)


def test_upstream_headers_forwarding_and_host() -> None:
    st = _state([("Host", "gw.example:8080"), ("X-Forwarded-For", "1.1.1.1"),
                 ("Connection", "close"), ("Content-Length", "3"), ("Expect", "100-continue"),
                 ("X-Keep", "k")])
    target = Target.from_proxy(ProxyDef("/foo", "http://up"))
    h = upstream_headers(st, target, "10.0.0.9", "rid-1")
    assert h["X-Forwarded-For"] == "1.1.1.1, 10.0.0.9"
    assert h["X-Forwarded-Proto"] == "http"
    assert h["X-Forwarded-Host"] == "gw.example:8080"
    assert h["X-Request-Id"] == "rid-1"
    assert h["Content-Length"] == "3"  # streamed: the client's length stands
    assert "Host" not in h  # the client library sets the upstream's
    assert "Connection" not in h and "Expect" not in h and h["X-Keep"] == "k"

    preserving = Target.from_proxy(ProxyDef("/foo", "http://up", preserve_host_header=True))
    assert upstream_headers(st, preserving, None, "r")["Host"] == "gw.example:8080"


def test_upstream_headers_for_a_buffered_body_drop_the_length() -> None:
    st = _state([("Content-Length", "3")], body=b"abcdef")
    h = upstream_headers(st, Target.from_proxy(ProxyDef("/", "http://up")), None, "r")
    assert "Content-Length" not in h


def test_outer_proxy_headers_are_kept() -> None:
    st = _state([("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "public.example")])
    h = upstream_headers(st, Target.from_proxy(ProxyDef("/", "http://up")), "1.2.3.4", "r")
    assert h["X-Forwarded-Proto"] == "https" and h["X-Forwarded-Host"] == "public.example"


def test_host_set_by_a_hook_wins() -> None:
    st = _state([("Host", "gw")])
    st.host_override = "virtual.example"
    target = Target.from_proxy(ProxyDef("/", "http://up", preserve_host_header=True))
    assert upstream_headers(st, target, None, "r")["Host"] == "virtual.example"
