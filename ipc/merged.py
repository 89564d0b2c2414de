"""Merged hook calls: several hooks in one CALL, and the rules that keep them exact.

Hooks with no gateway work between them (docs/PROTOCOL.md, *Merged calls*)
travel in one CALL: the first hook's object, and `then`, the hooks to run
after it.  The worker runs them in order and answers one REPLY with each
hook's own result.  For that to be the same as separate calls, each hook
must get exactly the object the gateway would have built for it after
applying the previous hook's result (gateway/tyk_object.py `apply_request`
then `request_object`; `apply_response` then `response_object`).  This
module is the one home of that rule, for both ends:

* `next_request_object` / `next_response_object`: the object for the next
  hook, from the object the previous hook got and that hook's REPLY object
  (its delta, `ipc.coprocess.record_delta`);
* the small pieces the gateway's `apply_*` use too, so both ends change a
  request the same way: `canonical_header`, `valid_header`, `rewrite_path`,
  `rebuild_query`, `new_method`;
* `short_circuits`: whether a result's `return_overrides` ends the request
  (the gateway answers it instead of proxying), so later hooks do not run;
* the payload parts (`MergedHook`, `HookResult`, `HookFailure`, defined with
  the other payloads in `ipc.coprocess`) as TypedDicts; their wire shapes are
  in `ipc.protocol`.

Nothing here logs: the gateway reports a plugin's invalid header or method
when it applies the result, once, as with separate calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from ipc.coprocess import (
    MISSING,
    HookFailure,
    HookResult,
    LazyText,
    MergedHook,
    merge_reply,
    replaced,
    resolved,
)

__all__ = [
    "PATH_SAFE",
    "TOKEN",
    "HookFailure",
    "HookResult",
    "MergedHook",
    "canonical_header",
    "new_method",
    "next_request_object",
    "next_response_object",
    "params_view",
    "rebuild_query",
    "rewrite_path",
    "short_circuits",
    "split_url",
    "valid_header",
]

#: The characters of an HTTP token (header names, methods).
TOKEN: Final = frozenset("!#$%&'*+-.^_`|~0123456789"
                         "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
#: Characters a path may carry unencoded; anything else a plugin writes is percent-encoded.
PATH_SAFE: Final = "/%:@!$&'()*+,;=-._~"
_CANONICAL: dict[str, str] = {}
_CANONICAL_CACHE_MAX = 4096


# -- pieces both ends use ------------------------------------------------------------------


def canonical_header(name: str) -> str:
    """Go's canonical MIME header key: "x-foo-BAR" -> "X-Foo-Bar"."""
    cached = _CANONICAL.get(name)
    if cached is not None:
        return cached
    if name and TOKEN.issuperset(name):
        result = "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))
    else:
        result = name  # Go leaves names that are not valid tokens untouched
    if len(_CANONICAL) < _CANONICAL_CACHE_MAX:  # bounded: names come from clients
        _CANONICAL[name] = result
    return result


def valid_header(name: object, value: object) -> bool:
    """Whether a plugin's header may be set: a token name, a value without CR, LF, NUL."""
    return (isinstance(name, str) and isinstance(value, str) and bool(name)
            and TOKEN.issuperset(name)
            and "\r" not in value and "\n" not in value and "\0" not in value)


def short_circuits(overrides: Mapping[str, Any] | None) -> bool:
    """Whether `return_overrides` answers the client (a `response_code` > 0) instead of
    going on; the gateway's `overrides_reply` builds that answer."""
    code = (overrides or {}).get("response_code", -1)
    return isinstance(code, int) and code > 0


def rewrite_path(url: str) -> str:
    """The upstream path a plugin's new `url` asks for (its query is not taken)."""
    path = urlsplit(url).path
    return quote(path if path.startswith("/") else "/" + path, safe=PATH_SAFE)


def rebuild_query(query: str, deletes: Iterable[str], adds: Mapping[str, str]) -> str:
    """`query` after `delete_params`, then `add_params` (a key is replaced, not appended)."""
    removed = set(deletes) | set(adds)
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in removed]
    pairs.extend((k, v) for k, v in adds.items())
    return urlencode(pairs)


def params_view(query: str) -> dict[str, str]:
    """Tyk's `request.params`: each key's first value."""
    if not query:  # most requests: no parse (parse_qsl costs ~1 µs even on "")
        return {}
    params: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        params.setdefault(key, value)
    return params


def new_method(current: str, got: str) -> str:
    """The method after a plugin set `got` ("" or not a token: unchanged)."""
    if got and got != current and TOKEN.issuperset(got):
        return got
    return current


def split_url(url: str) -> tuple[str, str]:
    """(path, query) of a `request.url` (a path never holds a raw "?")."""
    path, _, query = url.partition("?")
    return path, query


# -- the next request-phase object ---------------------------------------------------------


def next_request_object(sent: Mapping[str, Any], reply: Mapping[str, Any],
                        hook: MergedHook) -> dict[str, Any]:
    """The object `hook` gets after the hook that got `sent` answered `reply`.

    As the gateway: `apply_request` of the merged reply to the request, the
    session and metadata taken unless the previous hook was a `pre` hook
    (it runs before there is a session), then a fresh `request_object`.
    """
    got = merge_reply(sent, reply)
    before: Mapping[str, Any] = sent.get("request") or {}
    after: Mapping[str, Any] = got.get("request") or {}
    record = _next_request_record(before, after, hook.get("raw_body_only", False))
    taken = sent.get("hook_type") != "pre"
    obj: dict[str, Any] = {"hook_type": hook["hook_type"], "hook_name": hook["hook_name"],
                           "request": record,
                           "session": got.get("session", {}) if taken else sent.get("session", {}),
                           "metadata": got.get("metadata", {}) if taken
                           else sent.get("metadata", {})}
    if "spec" in sent:
        obj["spec"] = sent["spec"]
    return obj


def _next_request_record(before: Mapping[str, Any], after: Mapping[str, Any],
                         raw_body_only: bool) -> dict[str, Any]:
    headers = _next_headers(before.get("headers") or {}, after.get("delete_headers") or (),
                            after.get("set_headers") or {})
    path, query = split_url(before.get("url", ""))
    url = replaced(after, before, "url")
    if url is not MISSING and url != before.get("url") and isinstance(url, str):
        path = rewrite_path(url)
    params = before.get("params") or {}
    deletes, adds = after.get("delete_params") or (), after.get("add_params") or {}
    if deletes or adds:
        query = rebuild_query(query, deletes, adds)
        params = params_view(query)
    raw = before.get("raw_body", b"")
    text: Any = before.get("body", "")
    changed = replaced(after, before, "raw_body")
    if isinstance(changed, bytes) and changed != raw:
        raw, text = changed, MISSING
    if raw_body_only or not raw:
        text = ""
    elif text is MISSING or not resolved(text):  # changed, or "" for a raw_body_only hook
        text = LazyText(raw)  # decoded if the plugin reads it (worker/objects.py)
    return {
        "headers": headers,
        "set_headers": {},
        "delete_headers": [],
        "url": f"{path}?{query}" if query else path,
        "params": params,
        "add_params": {},
        "extended_params": {},
        "delete_params": [],
        "return_overrides": {"response_code": -1},
        "method": new_method(before.get("method", ""), after.get("method", "")),
        "request_uri": before.get("request_uri", ""),
        "scheme": before.get("scheme", ""),
        "raw_body": raw,
        "body": text,
    }


def _next_headers(view: Mapping[str, str], deletes: Iterable[str],
                  sets: Mapping[str, str]) -> Mapping[str, str]:
    """`request.headers` after `delete_headers` then `set_headers`, as the gateway's
    case-insensitive multidict ends up (a set value keeps its name's place)."""
    if not deletes and not sets:
        return view
    out = dict(view)
    for name in deletes:
        _drop(out, name)
    for name, value in sets.items():
        if valid_header(name, value):
            out[canonical_header(name)] = value
    return out


def _drop(headers: dict[str, Any], name: str) -> None:
    lowered = name.lower()
    for key in [k for k in headers if k.lower() == lowered]:
        del headers[key]


# -- the next response object --------------------------------------------------------------


def next_response_object(sent: Mapping[str, Any], reply: Mapping[str, Any],
                         hook: MergedHook) -> dict[str, Any]:
    """The object response hook `hook` gets after the one that got `sent` answered
    `reply`: `apply_response` of its `response` record, then a fresh `response_object`
    (the request, session and metadata are the gateway's, untouched by response hooks)."""
    before: Mapping[str, Any] = sent.get("response") or {}
    after: Mapping[str, Any] = merge_reply(sent, reply).get("response") or {}
    status = before.get("status_code", 0)
    got_status = after.get("status_code", status)
    if got_status != status and isinstance(got_status, int) and 200 <= got_status <= 599:
        status = got_status
    raw = before.get("raw_body", b"")
    text: Any = before.get("body", "")
    changed = replaced(after, before, "raw_body")
    if isinstance(changed, bytes):
        raw, text = changed, MISSING
    groups = _next_response_headers(before, after)
    raw_body_only = hook.get("raw_body_only", False)
    if raw_body_only or not raw:
        text = ""
    elif text is MISSING or not resolved(text):
        text = LazyText(raw)  # decoded if the plugin reads it (worker/objects.py)
    request = dict(sent.get("request") or {})
    obj: dict[str, Any] = {
        "hook_type": hook["hook_type"], "hook_name": hook["hook_name"], "request": request,
        "response": {"status_code": status, "raw_body": raw, "body": text,
                     "headers": {key: values[0] for key, values in groups.values()},
                     "multivalue_headers": [{"key": key, "values": values}
                                            for key, values in groups.values()]},
        "session": sent.get("session", {}), "metadata": sent.get("metadata", {})}
    if "spec" in sent:
        obj["spec"] = sent["spec"]
    return obj


#: Response headers as the gateway's multidict groups them: lower-case name ->
#: (canonical name, values in order), in the order of each name's first value.
_Groups = dict[str, tuple[str, list[str]]]


def _next_response_headers(before: Mapping[str, Any], after: Mapping[str, Any]) -> _Groups:
    groups: _Groups = {}
    multi = before.get("multivalue_headers") or []
    got_multi = replaced(after, before, "multivalue_headers")
    if got_multi is not MISSING and got_multi != multi:
        multi = [{"key": e.get("key", ""), "values": [v for v in e.get("values", ())
                                                      if valid_header(e.get("key", ""), v)]}
                 for e in got_multi]
    for entry in multi:
        key = entry.get("key", "")
        for value in entry.get("values", ()):
            _add(groups, key, value)
    single = replaced(after, before, "headers")
    if single is not MISSING:
        sent_single: Mapping[str, str] = before.get("headers") or {}
        for name, value in single.items():
            if sent_single.get(name) != value and valid_header(name, value):
                _set(groups, name, value)
        for name in sent_single.keys() - single.keys():
            groups.pop(name.lower(), None)
    return groups


def _add(groups: _Groups, name: str, value: str) -> None:
    group = groups.get(name.lower())
    if group is None:
        groups[name.lower()] = (canonical_header(name), [value])
    else:
        group[1].append(value)


def _set(groups: _Groups, name: str, value: str) -> None:
    group = groups.get(name.lower())
    if group is None:
        groups[name.lower()] = (canonical_header(name), [value])
    else:
        groups[name.lower()] = (group[0], [value])  # keeps its place, as the multidict's
