"""API matching by listen path (segment prefixes, longest wins) and domain."""

from __future__ import annotations

import pytest

from gateway.router import Router, has_dot_segment, host_without_port, strip_prefix

ROUTES = [
    ("", "/foo", "foo"),
    ("", "/foo/bar/", "foobar"),
    ("", "/", "root"),
    ("api.example.com", "/foo", "domain-foo"),
    ("API.example.com:8080", "/only-here", "domain-only"),
]


@pytest.mark.parametrize(("host", "path", "expected"), [
    ("x", "/foo", "foo"),
    ("x", "/foo/", "foo"),
    ("x", "/foo/baz", "foo"),
    ("x", "/foobar", "root"),  # not a segment match
    ("x", "/foo/bar", "foobar"),
    ("x", "/foo/bar/", "foobar"),
    ("x", "/foo/bar/x/y", "foobar"),
    ("x", "/foo/barx", "foo"),
    ("x", "/", "root"),
    ("x", "/other", "root"),
    ("api.example.com", "/foo/x", "domain-foo"),  # the domain's API wins
    ("API.EXAMPLE.COM:443", "/foo", "domain-foo"),  # port and case do not matter
    ("api.example.com", "/foo/bar/x", "domain-foo"),  # ...even over a longer domainless path
    ("api.example.com", "/only-here/1", "domain-only"),
    ("elsewhere", "/only-here/1", "root"),
    ("api.example.com", "/nothing", "root"),  # falls back to domainless APIs
])
def test_match(host: str, path: str, expected: str) -> None:
    assert Router(ROUTES).match(host, path) == expected


def test_no_match_without_root() -> None:
    router = Router([("", "/foo/", "foo")])
    assert router.match("", "/foo") == "foo"
    assert router.match("", "/fo") is None
    assert router.match("", "/") is None
    assert not router.uses_domains


def test_duplicate_listen_paths_keep_the_first() -> None:
    router = Router([("", "/foo", "first"), ("", "/foo/", "second")])
    assert router.match("", "/foo/x") == "first"


@pytest.mark.parametrize(("host", "name"), [
    ("Example.com:8080", "example.com"),
    ("example.com", "example.com"),
    ("[::1]:8080", "[::1]"),
    ("[::1]", "[::1]"),
    ("a:b", "a:b"),
])
def test_host_without_port(host: str, name: str) -> None:
    assert host_without_port(host) == name


@pytest.mark.parametrize(("prefix", "path", "rest"), [
    ("/foo", "/foo/bar", "/bar"),
    ("/foo", "/foo", ""),
    ("/foo", "/foo/", "/"),
    ("/foo", "/foobar", "/foobar"),
    ("", "/x", "/x"),
    ("/foo", "/v2/other", "/v2/other"),  # rewritten elsewhere by a hook: kept
])
def test_strip_prefix(prefix: str, path: str, rest: str) -> None:
    assert strip_prefix(prefix, path) == rest


@pytest.mark.parametrize(("path", "dotted"), [
    ("/a/b", False),
    ("/a/../b", True),
    ("/a/./b", True),
    ("/a/..", True),
    ("/a/%2e%2E/b", True),
    ("/a/%2e/b", True),
    ("/a/.hidden/b", False),
    ("/a/..b/c", False),
    ("/a%20b/c", False),
    ("/v1.2/x", False),
])
def test_dot_segments(path: str, dotted: bool) -> None:
    assert has_dot_segment(path) is dotted
