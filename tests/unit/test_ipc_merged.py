"""ipc/merged.py: the object the next hook of a merged call gets equals the gateway's.

For each hook reply below (headers set and deleted, body changed, url
rewritten, params, method, return_overrides, session and metadata changed),
the gateway's way with separate calls (`apply_result` / `apply_response`, then
a fresh `request_object` / `response_object`) and the worker's way in a merged
call (`next_request_object` / `next_response_object`) must give the same object.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from config.apidef import HookDef
from gateway.tyk_object import (
    RequestState,
    ResponseState,
    apply_response,
    apply_result,
    overrides_reply,
    request_object,
    response_object,
)
from ipc.coprocess import merge_reply, resolved
from ipc.merged import MergedHook, next_request_object, next_response_object, short_circuits

SPEC = {"APIID": "api1", "OrgID": "org", "bundle_hash": "", "config_data": "{}"}

REQUEST_REPLIES: list[dict[str, Any]] = [
    {},
    {"request": {"set_headers": {"x-new": "1", "X-Custom-Thing": "changed"}}},
    {"request": {"delete_headers": ["x-custom-thing", "HOST"]}},
    {"request": {"delete_headers": ["x-a"], "set_headers": {"X-A": "again"}}},
    {"request": {"set_headers": {"bad header": "x", "X-Ok": "a\r\nb", "Host": "other"}}},
    {"request": {"raw_body": b"new body"}},
    {"request": {"raw_body": b"\xff\xfe not utf-8"}},
    {"request": {"raw_body": b""}},
    {"request": {"body": "text only: not taken"}},
    {"request": {"url": "/rewritten/p\u00e4th?ignored=1"}},
    {"request": {"url": "relative"}},
    {"request": {"add_params": {"a": "9", "z": "new"}, "delete_params": ["b"]}},
    {"request": {"delete_params": ["missing"]}},
    {"request": {"method": "POST"}},
    {"request": {"method": "BAD METHOD"}},
    {"request": {"return_overrides": {"response_code": 200, "response_body": "hi"}}},
    {"request": {"return_overrides": {"response_code": -1, "headers": {"X": "y"}}}},
    {"session": {"rate": 5.0, "metadata": {"k": "v"}}, "metadata": {"k": "v"}},
    {"metadata": {"only": "top"}},
    {"request": {"set_headers": {"X-Both": "1"}, "raw_body": b"both", "url": "/both",
                 "add_params": {"q": "1"}}, "session": {"alias": "who"}},
]


def _state(body: bytes = b'{"a": 1}') -> RequestState:
    headers = CIMultiDict([("Host", "gw.example"), ("x-custom-thing", "v1"),
                           ("X-A", "1"), ("X-Custom-Thing", "v2"), ("x-a", "2")])
    return RequestState("GET", "/api/items", "a=1&b=2&a=3", "/api/items?a=1&b=2&a=3", "http",
                        CIMultiDictProxy(headers), body=body,
                        session={"rate": 1.0, "metadata": {}}, metadata={"m": "0"})


def _hook(name: str, raw_body_only: bool) -> HookDef:
    return HookDef(name=name, raw_body_only=raw_body_only)


def _merged(hook_type: str, hook: HookDef) -> MergedHook:
    return {"hook_type": hook_type, "hook_name": hook.name, "raw_body_only": hook.raw_body_only}


def _plain(obj: dict[str, Any]) -> Any:
    """The object as the wire carries it: texts resolved, containers as plain values."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return resolved(obj)


TYPES = [("pre", "pre"), ("pre", "post"), ("post_key_auth", "post"), ("post", "post")]


@pytest.mark.parametrize(("types", "raw_only", "defer"),
                         list(itertools.product(TYPES, [(False, False), (False, True),
                                                        (True, False)], [False, True])))
@pytest.mark.parametrize("index", range(len(REQUEST_REPLIES)))
def test_next_request_object_is_the_gateways(index: int, types: tuple[str, str],
                                             raw_only: tuple[bool, bool], defer: bool) -> None:
    reply = REQUEST_REPLIES[index]
    first, second = _hook("first", raw_only[0]), _hook("second", raw_only[1])
    state = _state()
    sent = request_object(state, SPEC, types[0], first, defer_text=defer)
    worker_next = next_request_object(sent, reply, _merged(types[1], second))
    apply_result(state, types[0], sent, merge_reply(sent, reply))
    gateway_next = request_object(state, SPEC, types[1], second, defer_text=defer)
    assert _plain(worker_next) == _plain(gateway_next)
    assert list(worker_next["request"]["headers"]) == list(gateway_next["request"]["headers"])


def test_a_chain_of_many_replies_stays_equal() -> None:
    """Every reply in turn on one request: the objects agree at every step."""
    state = _state()
    hooks = [_hook(f"h{i}", i % 3 == 2) for i in range(len(REQUEST_REPLIES) + 1)]
    types = ["pre"] * 5 + ["post"] * (len(hooks) - 5)
    sent = request_object(state, SPEC, types[0], hooks[0])
    for i, reply in enumerate(REQUEST_REPLIES):
        worker_next = next_request_object(sent, reply, _merged(types[i + 1], hooks[i + 1]))
        apply_result(state, types[i], sent, merge_reply(sent, reply))
        sent = request_object(state, SPEC, types[i + 1], hooks[i + 1])
        assert _plain(worker_next) == _plain(sent), f"after reply {i}: {reply}"


RESPONSE_REPLIES: list[dict[str, Any]] = [
    {},
    {"response": {"status_code": 201}},
    {"response": {"status_code": 99}},
    {"response": {"raw_body": b"replaced"}},
    {"response": {"raw_body": b""}},
    {"response": {"body": "text only"}},
    {"response": {"headers": {"Content-Type": "text/plain", "X-New": "n",
                              "X-Multi": "one"}}},
    {"response": {"headers": {}}},
    {"response": {"headers": {"Bad Name": "x", "X-Ok": "a\nb"}}},
    {"response": {"multivalue_headers": [{"key": "x-multi", "values": ["c"]},
                                         {"key": "X-Added", "values": ["1", "2"]},
                                         {"key": "bad name", "values": ["x"]}]}},
    {"response": {"multivalue_headers": [{"key": "X-M", "values": ["1"]}],
                  "headers": {"X-Other": "o"}}},
    {"request": {"set_headers": {"X-Ignored": "1"}}, "session": {"rate": 9.0}},
]


def _response() -> ResponseState:
    headers = CIMultiDict([("Content-Type", "application/json"), ("X-Multi", "a"),
                           ("x-other", "o"), ("x-multi", "b")])
    return ResponseState(200, headers, b'{"ok": true}')


@pytest.mark.parametrize("raw_only", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("index", range(len(RESPONSE_REPLIES)))
def test_next_response_object_is_the_gateways(index: int, raw_only: tuple[bool, bool]) -> None:
    reply = RESPONSE_REPLIES[index]
    first, second = _hook("first", raw_only[0]), _hook("second", raw_only[1])
    state, resp = _state(), _response()
    sent = response_object(state, resp, SPEC, first)
    worker_next = next_response_object(sent, reply, _merged("response", second))
    apply_response(resp, sent["response"], merge_reply(sent, reply).get("response") or {})
    gateway_next = response_object(state, resp, SPEC, second)
    assert _plain(worker_next) == _plain(gateway_next)
    assert [h["key"] for h in worker_next["response"]["multivalue_headers"]] == \
        [h["key"] for h in gateway_next["response"]["multivalue_headers"]]


def test_a_response_chain_of_many_replies_stays_equal() -> None:
    state, resp = _state(), _response()
    hooks = [_hook(f"h{i}", False) for i in range(len(RESPONSE_REPLIES) + 1)]
    sent = response_object(state, resp, SPEC, hooks[0])
    for i, reply in enumerate(RESPONSE_REPLIES):
        worker_next = next_response_object(sent, reply, _merged("response", hooks[i + 1]))
        apply_response(resp, sent["response"], merge_reply(sent, reply).get("response") or {})
        sent = response_object(state, resp, SPEC, hooks[i + 1])
        assert _plain(worker_next) == _plain(sent), f"after reply {i}: {reply}"


@pytest.mark.parametrize("overrides", [
    {}, {"response_code": -1}, {"response_code": 0}, {"response_code": 200},
    {"response_code": 403, "response_error": "no"}, {"response_code": 100},
    {"response_code": 700}, {"headers": {"X": "y"}},
])
def test_short_circuits_is_when_the_gateway_answers(overrides: dict[str, Any]) -> None:
    assert short_circuits(overrides) == (overrides_reply(overrides) is not None)
