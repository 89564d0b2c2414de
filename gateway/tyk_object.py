"""The coprocess object: build it from a request or response, apply what a hook returned.

Pure functions over two small state records (`RequestState`, `ResponseState`)
so the Tyk semantics are testable without sockets.  The rules, as Tyk applies
them (see docs/PROTOCOL.md for the wire shape):

* `request.headers` is one value per header under Go-canonical names; changes
  are made only through `delete_headers` then `set_headers` (case-insensitive).
* Query parameters are rebuilt from the request's query: `delete_params`, then
  `add_params` (a key is replaced, not appended).  A changed `url` moves the
  request to that path; its query is always the rebuilt one.
* Only `raw_body` reaches the upstream (`body` is a text view for plugins).
  With `defer_text` the object carries a `LazyText` (ipc/coprocess.py)
  instead of that text: the hook client decodes it only for a body that
  travels inline; one that goes through shared memory is never decoded here
  (the worker does it, if the plugin reads `body`).
* A REPLY carries changed fields only (`ipc.coprocess.merge_reply`); a field
  is applied only when `ipc.coprocess.replaced` says the hook changed it.
* `return_overrides.response_code` > 0 answers the client instead of proxying.

Each hook sees the request as left by the previous one: state is updated after
every hook and the next object is built from it, never from the reply.
"""

from __future__ import annotations

import http
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from config.apidef import HookDef
from gateway.header_bytes import plugin_text
from ipc.coprocess import MISSING, LazyText, replaced, utf8_text
from ipc.merged import (
    canonical_header,
    new_method,
    params_view,
    rebuild_query,
    rewrite_path,
    short_circuits,
    valid_header,
)

__all__ = [
    "Headers",
    "Reply",
    "RequestState",
    "ResponseState",
    "apply_request",
    "apply_response",
    "apply_result",
    "canonical_header",
    "error_reply",
    "header_map",
    "multivalue_headers",
    "overrides_reply",
    "request_object",
    "request_shadow",
    "response_object",
    "utf8_text",
]

log = logging.getLogger("coproc.gateway.tyk")

Headers = CIMultiDict[str] | CIMultiDictProxy[str]


def header_map(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Canonical name -> first value, as Tyk's `request.headers` / `response.headers`."""
    out: dict[str, str] = {}
    for name, value in headers:
        key = canonical_header(name)
        if key not in out:
            # Any bytes: see gateway/header_bytes.py (ASCII, the usual case, as it is).
            out[key] = value if value.isascii() else plugin_text(value)
    return out


def multivalue_headers(headers: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """Tyk's `multivalue_headers`: [{"key": canonical name, "values": [...]}] in order."""
    return _both_maps(headers)[1]


def _both_maps(headers: Iterable[tuple[str, str]]
               ) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """`header_map` and `multivalue_headers` of the same headers, in one pass."""
    first: dict[str, str] = {}
    groups: dict[str, list[str]] = {}
    for name, value in headers:
        key = canonical_header(name)
        text = value if value.isascii() else plugin_text(value)
        values = groups.get(key)
        if values is None:
            groups[key] = [text]
            first[key] = text
        else:
            values.append(text)
    return first, [{"key": key, "values": values} for key, values in groups.items()]


# -- request -----------------------------------------------------------------


@dataclass(slots=True, eq=False)
class RequestState:
    """The request as the chain will forward it; hooks change it through `apply_request`."""

    method: str
    path: str  # raw (percent-encoded) path as the upstream will see it, before stripping
    query: str  # raw query string without '?'
    request_uri: str  # the request target as received; never changes
    scheme: str
    headers: Headers  # the client's headers until a hook changes them (copy on write)
    body: bytes | None = None  # None: not read, the proxy streams it
    body_replaced: bool = False
    host_override: str = ""  # a Host a hook set explicitly
    session: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    api_key: str = ""  # the key auth accepted (the analytics record's), "" keyless
    # Headers the gateway adds to the client's response (X-RateLimit-*), as Tyk does.
    response_headers: dict[str, str] = field(default_factory=dict)
    _header_view: dict[str, str] | None = None
    _params_view: dict[str, str] | None = None
    _text: LazyText | None = None  # of `body`: decoded once per body, whatever the hooks

    @property
    def url(self) -> str:
        """Tyk's `request.url`: path and query as the upstream would get them (unstripped)."""
        return f"{self.path}?{self.query}" if self.query else self.path

    def header_view(self) -> dict[str, str]:
        if self._header_view is None:
            self._header_view = header_map(self.headers.items())
        return self._header_view

    def params_view(self) -> dict[str, str]:
        if self._params_view is None:
            self._params_view = params_view(self.query)
        return self._params_view

    def lazy_text(self) -> LazyText:
        """`body`'s text, decoded when first read; the same object while the body stays."""
        body = self.body or b""
        text = self._text
        if text is None or text.raw is not body:
            text = self._text = LazyText(body)
        return text

    def body_text(self) -> str:
        return self.lazy_text().text()

    def writable_headers(self) -> CIMultiDict[str]:
        if not isinstance(self.headers, CIMultiDict):
            self.headers = CIMultiDict(self.headers)
        self._header_view = None
        return self.headers




def _text_field(raw: bytes, raw_body_only: bool, defer: bool,
                state: RequestState | None = None) -> str | LazyText:
    if raw_body_only or not raw:
        return ""
    if state is not None:
        return state.lazy_text() if defer else state.body_text()
    return LazyText(raw) if defer else utf8_text(raw)


def request_object(state: RequestState, spec: dict[str, str], hook_type: str,
                   hook: HookDef, *, defer_text: bool = False) -> dict[str, Any]:
    """The whole coprocess object for one request-phase hook call.

    `defer_text`: `request.body` is a `LazyText`, for a hook client that
    resolves it when it sends the object (one with a body arena, see
    gateway/bodies.py); decoding 1 MiB costs about as much as copying it.
    """
    return {
        "hook_type": hook_type,
        "hook_name": hook.name,
        "request": _request_record(state, hook.raw_body_only, with_body=True,
                                   defer_text=defer_text),
        "session": state.session,
        "metadata": state.metadata,
        "spec": spec,
    }


def request_shadow(state: RequestState) -> dict[str, Any]:
    """What `apply_result` reads of the object a hook was sent, from the state alone.

    For the later hooks of a merged call, whose objects the worker built
    (ipc/merged.py): the gateway applies their REPLYs in order and needs only
    the fields that tell a change (`url`, `raw_body`) and the session that a
    REPLY's session fields are laid over; any field left out reads as unchanged.
    """
    return {"request": {"url": state.url, "raw_body": state.body or b""},
            "session": state.session}


def _request_record(state: RequestState, raw_body_only: bool, *,
                    with_body: bool, defer_text: bool = False) -> dict[str, Any]:
    record: dict[str, Any] = {
        "headers": state.header_view(),
        "set_headers": {},
        "delete_headers": [],
        "url": state.url,
        "params": state.params_view(),
        "add_params": {},
        "extended_params": {},
        "delete_params": [],
        "return_overrides": {"response_code": -1},
        "method": state.method,
        "request_uri": state.request_uri,
        "scheme": state.scheme,
    }
    if with_body:
        raw = record["raw_body"] = state.body or b""
        record["body"] = _text_field(raw, raw_body_only, defer_text, state)
    return record


def apply_request(state: RequestState, sent: Mapping[str, Any], got: Mapping[str, Any]) -> None:
    """Apply the `request` record a hook returned (`got`) to `state`.

    `sent` is the record that was sent; `got` the reply's record, merged or
    not (`ipc.coprocess.replaced` tells what the hook changed).
    """
    _apply_headers(state, got.get("delete_headers") or (), got.get("set_headers") or {})
    url = replaced(got, sent, "url")
    if url is not MISSING and url != sent["url"] and isinstance(url, str):
        state.path = rewrite_path(url)
    _apply_params(state, got.get("delete_params") or (), got.get("add_params") or {})
    method = got.get("method", "")
    if method and method != state.method:
        state.method = new_method(state.method, method)
        if state.method != method:
            log.warning("ignoring invalid method %r set by a plugin", method)
    raw = replaced(got, sent, "raw_body")
    if isinstance(raw, bytes) and raw != sent.get("raw_body"):
        state.body, state.body_replaced = raw, True


def apply_result(state: RequestState, hook_type: str, sent: Mapping[str, Any],
                 got: Mapping[str, Any]) -> Mapping[str, Any]:
    """Apply a request-phase hook's whole result (`got`, merged over `sent`) to `state`;
    return its `request` record (its `return_overrides` may end the request).

    Pre hooks run before there is a session: their session and metadata are not taken.
    """
    request: Mapping[str, Any] = got.get("request") or {}
    apply_request(state, sent["request"], request)
    if hook_type != "pre":
        state.session = got.get("session", state.session)
        state.metadata = got.get("metadata", state.metadata)
    return request


def _apply_headers(state: RequestState, deletes: Iterable[str], sets: Mapping[str, str]) -> None:
    if not deletes and not sets:
        return
    headers = state.writable_headers()
    for name in deletes:
        headers.popall(name, None)
    for name, value in sets.items():
        if not valid_header(name, value):
            log.warning("ignoring invalid header %r set by a plugin", name)
        elif name.lower() == "host":
            state.host_override = value
            headers[name] = value
        else:
            headers[name] = value


def _apply_params(state: RequestState, deletes: Iterable[str], adds: Mapping[str, str]) -> None:
    if not deletes and not adds:
        return
    state.query = rebuild_query(state.query, deletes, adds)
    state._params_view = None


# -- replies instead of the upstream ------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """A response the gateway sends instead of proxying."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = ""


def error_reply(status: int, message: str, headers: Mapping[str, str] | None = None) -> Reply:
    """Tyk's error template: {"error": message} as JSON."""
    return Reply(status, json.dumps({"error": message}).encode(), headers or {},
                 "application/json")


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def overrides_reply(overrides: Mapping[str, Any], default_error: str = "") -> Reply | None:
    """The answer `return_overrides` asks for, or None to carry on.

    Tyk's rules: a non-empty `response_error` replaces `response_body`; a code
    >= 400 without `override_error` renders the error template; any other code
    > 0 is sent as is with the raw body.  Override headers apply in every case.
    """
    if not short_circuits(overrides):
        return None
    code: int = overrides["response_code"]
    headers = {k: v for k, v in (overrides.get("headers") or {}).items() if valid_header(k, v)}
    body: str = overrides.get("response_error") or overrides.get("response_body") or ""
    if not 200 <= code <= 599:
        # A 1xx or out-of-range code cannot end a response: the plugin is broken.
        log.warning("plugin asked for invalid response code %d", code)
        return error_reply(500, "Middleware error")
    if code >= 400 and not overrides.get("override_error"):
        # Tyk would render an empty message; the status text says more.
        return error_reply(code, body or default_error or _reason(code), headers)
    return Reply(code, body.encode(), headers)


# -- response -----------------------------------------------------------------


@dataclass(slots=True, eq=False)
class ResponseState:
    """The upstream response as it will be written; response hooks change it."""

    status: int
    headers: CIMultiDict[str]  # end-to-end headers only
    body: bytes
    #: A hook changed `headers`: they may hold hop-by-hop ones again.
    headers_changed: bool = False


def response_object(req: RequestState, resp: ResponseState, spec: dict[str, str],
                    hook: HookDef, *, defer_text: bool = False) -> dict[str, Any]:
    """The coprocess object for one response hook (the request without its body).

    `defer_text` as for `request_object`, for `response.body`.
    """
    single, multi = _both_maps(resp.headers.items())
    return {
        "hook_type": "response",
        "hook_name": hook.name,
        "request": _request_record(req, hook.raw_body_only, with_body=False),
        "response": {
            "status_code": resp.status,
            "raw_body": resp.body,
            "body": _text_field(resp.body, hook.raw_body_only, defer_text),
            "headers": single,
            "multivalue_headers": multi,
        },
        "session": req.session,
        "metadata": req.metadata,
        "spec": spec,
    }


def apply_response(resp: ResponseState, sent: Mapping[str, Any], got: Mapping[str, Any]) -> None:
    """Apply the `response` record a response hook returned."""
    status = got.get("status_code", resp.status)
    if status != resp.status:
        if isinstance(status, int) and 200 <= status <= 599:
            resp.status = status
        else:
            log.warning("ignoring invalid status code %r set by a response hook", status)
    raw = replaced(got, sent, "raw_body")
    if isinstance(raw, bytes):
        resp.body = raw
    multi = replaced(got, sent, "multivalue_headers")
    if multi is not MISSING and multi != sent["multivalue_headers"]:
        # Changed: the response carries exactly these headers.
        resp.headers_changed = True
        resp.headers.clear()
        for entry in multi:
            key = entry.get("key", "")
            for value in entry.get("values", ()):
                if valid_header(key, value):
                    resp.headers.add(key, value)
    single = replaced(got, sent, "headers")
    if single is not MISSING:
        resp.headers_changed = True
        before: Mapping[str, str] = sent["headers"]
        for name, value in single.items():
            if before.get(name) != value and valid_header(name, value):
                resp.headers[name] = value
        for name in before.keys() - single.keys():
            resp.headers.popall(name, None)
