"""The coprocess object: building it and applying hook results, per Tyk's rules."""

from __future__ import annotations

import json
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from config.apidef import HookDef
from gateway.tyk_object import (
    Reply,
    RequestState,
    ResponseState,
    apply_request,
    apply_response,
    canonical_header,
    header_map,
    multivalue_headers,
    overrides_reply,
    request_object,
    response_object,
)
from ipc.coprocess import merge_reply

HOOK = HookDef(name="MyHook")
RAW_ONLY = HookDef(name="MyHook", raw_body_only=True)
SPEC = {"APIID": "api1", "OrgID": "org", "bundle_hash": "", "config_data": "{}"}


def state(query: str = "a=1&b=2&a=3", body: bytes | None = b"", **headers: str) -> RequestState:
    hdrs = CIMultiDict(headers or {"Host": "gw.example", "x-custom-thing": "v1"})
    hdrs.add("X-Custom-Thing", "v2")
    path = "/api/items"
    uri = f"{path}?{query}" if query else path
    return RequestState("GET", path, query, uri, "http", CIMultiDictProxy(hdrs), body=body)


def run_hook(st: RequestState, reply_request: dict[str, Any], hook: HookDef = HOOK
             ) -> dict[str, Any]:
    """Build the object, merge a REPLY as the hook client does, apply it; return the sent obj."""
    obj = request_object(st, SPEC, "pre", hook)
    merged = merge_reply(obj, {"request": reply_request})
    apply_request(st, obj["request"], merged["request"])
    return obj


# -- header names --------------------------------------------------------------

@pytest.mark.parametrize(("name", "canonical"), [
    ("content-type", "Content-Type"),
    ("X-FOO-bar", "X-Foo-Bar"),
    ("x", "X"),
    ("x--y", "X--Y"),
    ("1abc-def", "1abc-Def"),
    ("ABC_DEF", "Abc_def"),
    ("www-authenticate", "Www-Authenticate"),
    ("bad header", "bad header"),  # not a token: Go leaves it as is
    ("", ""),
])
def test_canonical_header(name: str, canonical: str) -> None:
    assert canonical_header(name) == canonical


def test_header_map_keeps_the_first_value_under_the_canonical_name() -> None:
    items = [("x-a", "1"), ("X-A", "2"), ("content-type", "text/plain")]
    assert header_map(items) == {"X-A": "1", "Content-Type": "text/plain"}
    assert multivalue_headers(items) == [
        {"key": "X-A", "values": ["1", "2"]},
        {"key": "Content-Type", "values": ["text/plain"]},
    ]


# -- building the request object -------------------------------------------------

def test_request_object_fields() -> None:
    obj = request_object(state(), SPEC, "pre", HOOK)
    req = obj["request"]
    assert obj["hook_type"] == "pre" and obj["hook_name"] == "MyHook"
    assert obj["spec"] is SPEC and obj["session"] == {} and obj["metadata"] == {}
    assert req["headers"] == {"Host": "gw.example", "X-Custom-Thing": "v1"}
    assert req["params"] == {"a": "1", "b": "2"}
    assert req["url"] == "/api/items?a=1&b=2&a=3"
    assert req["request_uri"] == "/api/items?a=1&b=2&a=3"
    assert req["method"] == "GET" and req["scheme"] == "http"
    assert req["return_overrides"] == {"response_code": -1}
    assert req["set_headers"] == {} and req["delete_headers"] == []
    assert req["add_params"] == {} and req["delete_params"] == []


def test_url_without_query_has_no_question_mark() -> None:
    assert request_object(state(query=""), SPEC, "pre", HOOK)["request"]["url"] == "/api/items"


@pytest.mark.parametrize(("body", "hook", "text"), [
    (b'{"k": "v\xc3\xa9"}', HOOK, '{"k": "vé"}'),  # JSON: the text view is filled
    (b"\x89PNG\r\n\x1a\n\xff\x00", HOOK, ""),  # binary: only raw_body
    (b'{"k": 1}', RAW_ONLY, ""),  # raw_body_only: no text view at all
])
def test_body_is_a_text_view_of_raw_body(body: bytes, hook: HookDef, text: str) -> None:
    req = request_object(state(body=body), SPEC, "pre", hook)["request"]
    assert req["raw_body"] is body
    assert req["body"] == text


# -- applying a request reply ------------------------------------------------------

def test_headers_delete_then_set_case_insensitively() -> None:
    st = state()
    run_hook(st, {"delete_headers": ["x-custom-thing", "X-Absent"],
                  "set_headers": {"x-new": "n", "HOST": "other.example"}})
    assert st.headers.getall("X-Custom-Thing", []) == []
    assert st.headers["X-New"] == "n"
    assert st.host_override == "other.example"
    # The next hook sees the result under canonical names.
    assert request_object(st, SPEC, "pre", HOOK)["request"]["headers"] == {
        "Host": "other.example", "X-New": "n"}


def test_set_header_replaces_every_value() -> None:
    st = state()
    run_hook(st, {"set_headers": {"X-Custom-Thing": "only"}})
    assert st.headers.getall("X-Custom-Thing") == ["only"]


def test_invalid_headers_from_a_plugin_are_ignored() -> None:
    st = state()
    run_hook(st, {"set_headers": {"X-Evil": "a\r\nInjected: 1", "bad name": "x", "X-Ok": "1"}})
    assert "X-Evil" not in st.headers and "bad name" not in st.headers
    assert st.headers["X-Ok"] == "1"


def test_changing_the_headers_view_alone_does_nothing() -> None:
    st = state()
    run_hook(st, {"headers": {"X-Sneaky": "1"}})
    assert "X-Sneaky" not in st.headers
    assert isinstance(st.headers, CIMultiDictProxy)  # never copied


def test_params_are_rebuilt_delete_then_add_with_set_semantics() -> None:
    st = state(query="a=1&b=2&a=3&c=x+y")
    run_hook(st, {"delete_params": ["b", "zz"], "add_params": {"a": "9", "d": "new value"}})
    assert st.query == "c=x+y&a=9&d=new+value"
    assert request_object(st, SPEC, "pre", HOOK)["request"]["params"] == {
        "c": "x y", "a": "9", "d": "new value"}


def test_untouched_query_is_kept_byte_for_byte() -> None:
    st = state(query="b=%7E&a=1&a=2")
    run_hook(st, {"set_headers": {"X": "1"}})
    assert st.query == "b=%7E&a=1&a=2"


def test_params_view_edits_are_ignored() -> None:
    st = state()
    run_hook(st, {"params": {"zzz": "1"}})
    assert st.query == "a=1&b=2&a=3"


def test_url_rewrite_takes_the_path_and_keeps_the_rebuilt_query() -> None:
    st = state(query="a=1")
    run_hook(st, {"url": "/v2/things?ignored=1", "add_params": {"b": "2"}})
    assert st.path == "/v2/things"
    assert st.query == "a=1&b=2"
    assert st.url == "/v2/things?a=1&b=2"


def test_url_rewrite_without_leading_slash_or_with_unsafe_characters() -> None:
    st = state(query="")
    run_hook(st, {"url": "new path/ü"})
    assert st.path == "/new%20path/%C3%BC"


def test_unchanged_url_keeps_the_path() -> None:
    st = state()
    run_hook(st, {"url": "/api/items?a=1&b=2&a=3"})
    assert st.path == "/api/items"


def test_method_rewrite() -> None:
    st = state()
    run_hook(st, {"method": "POST"})
    assert st.method == "POST"
    run_hook(st, {"method": "BAD METHOD"})
    assert st.method == "POST"


def test_only_raw_body_is_applied() -> None:
    st = state(body=b"original")
    run_hook(st, {"body": "changed text"})
    assert st.body == b"original" and not st.body_replaced
    run_hook(st, {"raw_body": b"new bytes"})
    assert st.body == b"new bytes" and st.body_replaced
    assert request_object(st, SPEC, "pre", HOOK)["request"]["body"] == "new bytes"


def test_raw_body_sent_back_unchanged_is_not_a_change() -> None:
    st = state(body=b"same")
    run_hook(st, {"raw_body": b"".join([b"sa", b"me"])})  # equal, not identical
    assert not st.body_replaced


# -- return_overrides -------------------------------------------------------------

def _overrides(code: int, override_error: bool, body: str) -> dict[str, Any]:
    return {"response_code": code, "override_error": override_error,
            "response_body": body, "headers": {"X-Foo": "Bar"}}


@pytest.mark.parametrize(("code", "override_error", "body", "expected"), [
    (200, False, "hello", Reply(200, b"hello", {"X-Foo": "Bar"})),
    (200, False, "", Reply(200, b"", {"X-Foo": "Bar"})),
    (200, True, "hello", Reply(200, b"hello", {"X-Foo": "Bar"})),
    (200, True, "", Reply(200, b"", {"X-Foo": "Bar"})),
    (400, False, "bad input",
     Reply(400, b'{"error": "bad input"}', {"X-Foo": "Bar"}, "application/json")),
    (400, False, "", Reply(400, b'{"error": "Bad Request"}', {"X-Foo": "Bar"}, "application/json")),
    (400, True, "bad input", Reply(400, b"bad input", {"X-Foo": "Bar"})),
    (400, True, "", Reply(400, b"", {"X-Foo": "Bar"})),
    (401, False, "who?", Reply(401, b'{"error": "who?"}', {"X-Foo": "Bar"}, "application/json")),
    (401, False, "", Reply(401, b'{"error": "Unauthorized"}', {"X-Foo": "Bar"},
                           "application/json")),
    (401, True, '{"custom": true}', Reply(401, b'{"custom": true}', {"X-Foo": "Bar"})),
    (401, True, "", Reply(401, b"", {"X-Foo": "Bar"})),
])
def test_return_overrides_matrix(code: int, override_error: bool, body: str,
                                 expected: Reply) -> None:
    assert overrides_reply(_overrides(code, override_error, body)) == expected


def test_response_error_wins_over_response_body() -> None:
    ro = {**_overrides(403, False, "body text"), "response_error": "error text"}
    reply = overrides_reply(ro)
    assert reply is not None and json.loads(reply.body) == {"error": "error text"}
    ro = {**_overrides(200, False, "body text"), "response_error": "error text"}
    reply = overrides_reply(ro)
    assert reply is not None and reply.body == b"error text"


def test_default_error_message_is_the_callers() -> None:
    reply = overrides_reply(_overrides(401, False, ""), "Key not authorised")
    assert reply is not None and json.loads(reply.body) == {"error": "Key not authorised"}


@pytest.mark.parametrize("code", [-1, 0, -5])
def test_no_override_carries_on(code: int) -> None:
    assert overrides_reply({"response_code": code, "response_body": "x"}) is None
    assert overrides_reply({}) is None


@pytest.mark.parametrize("code", [100, 199, 600, 1000])
def test_impossible_codes_are_a_middleware_error(code: int) -> None:
    reply = overrides_reply({"response_code": code})
    assert reply is not None and reply.status == 500
    assert json.loads(reply.body) == {"error": "Middleware error"}


def test_override_headers_with_line_breaks_are_dropped() -> None:
    reply = overrides_reply({"response_code": 200, "headers": {"X-A": "1\r\nX-B: 2", "X-C": "3"}})
    assert reply is not None and reply.headers == {"X-C": "3"}


# -- response objects --------------------------------------------------------------

def resp_state() -> ResponseState:
    headers = CIMultiDict([("content-type", "application/json"), ("Set-Cookie", "a=1"),
                           ("Set-Cookie", "b=2"), ("X-Up", "u")])
    return ResponseState(200, headers, b'{"ok": true}')


def run_response_hook(resp: ResponseState, reply: dict[str, Any]) -> dict[str, Any]:
    obj = response_object(state(), resp, SPEC, HOOK)
    merged = merge_reply(obj, {"response": reply})
    apply_response(resp, obj["response"], merged["response"])
    return obj


def test_response_object_fields() -> None:
    obj = response_object(state(body=b"req body"), resp_state(), SPEC, HOOK)
    r = obj["response"]
    assert obj["hook_type"] == "response"
    assert r["status_code"] == 200 and r["raw_body"] == b'{"ok": true}'
    assert r["body"] == '{"ok": true}'
    assert r["headers"] == {"Content-Type": "application/json", "Set-Cookie": "a=1", "X-Up": "u"}
    assert r["multivalue_headers"][1] == {"key": "Set-Cookie", "values": ["a=1", "b=2"]}
    assert "raw_body" not in obj["request"]  # the request body is not sent twice


def test_response_binary_body_has_no_text_view() -> None:
    resp = ResponseState(200, CIMultiDict(), b"\xff\xfe")
    assert response_object(state(), resp, SPEC, HOOK)["response"]["body"] == ""


def test_unchanged_response_reply_changes_nothing() -> None:
    resp = resp_state()
    before = list(resp.headers.items())
    run_response_hook(resp, {})
    assert list(resp.headers.items()) == before and resp.status == 200


def test_response_status_body_and_single_headers() -> None:
    resp = resp_state()
    run_response_hook(resp, {
        "status_code": 201, "raw_body": b"new",
        "headers": {"Content-Type": "text/plain", "Set-Cookie": "a=1", "X-Added": "yes"},
    })
    assert resp.status == 201 and resp.body == b"new"
    assert resp.headers["Content-Type"] == "text/plain"
    assert resp.headers["X-Added"] == "yes"
    assert "X-Up" not in resp.headers  # removed from the map: removed
    assert resp.headers.getall("Set-Cookie") == ["a=1", "b=2"]  # unchanged: untouched


def test_response_multivalue_headers_are_set_exactly() -> None:
    resp = resp_state()
    run_response_hook(resp, {"multivalue_headers": [
        {"key": "Set-Cookie", "values": ["c=3", "d=4"]}, {"key": "X-Up", "values": ["u"]}]})
    assert list(resp.headers.items()) == [("Set-Cookie", "c=3"), ("Set-Cookie", "d=4"),
                                          ("X-Up", "u")]


def test_invalid_response_status_is_ignored() -> None:
    resp = resp_state()
    run_response_hook(resp, {"status_code": 42})
    assert resp.status == 200
