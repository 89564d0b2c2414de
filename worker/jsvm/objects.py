"""Coprocess objects to Tyk's JS objects and back (Tyk's `mw_js_plugin.go` shapes).

A JS hook sees what Tyk's JSVM hands it: the request as `MiniRequestObject`
(`Headers`, `SetHeaders`, `DeleteHeaders`, `Body`, `URL`, `Params`,
`AddParams`, `ExtendedParams`, `DeleteParams`, `ReturnOverrides`, `IgnoreBody`,
`Method`, `RequestURI`, `Scheme`), the session as Tyk's session JSON
(`meta_data`, `rate`, `quota_max`, ...), the spec as `{"APIID", "OrgID",
"config_data"}` with `config_data` an object.  Header and query maps hold lists,
as Go's `http.Header` and `url.Values` do; `Body` is the body as text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ipc.coprocess import SESSION

__all__ = ["JSValueError", "from_js_request", "from_js_response", "from_js_session",
           "js_request", "js_response", "js_session", "js_spec"]


class JSValueError(ValueError):
    """A JS hook returned a value Tyk's object cannot hold."""


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else json.dumps(value)


def _body_text(wire: Mapping[str, Any]) -> str:
    raw = wire.get("raw_body")
    if raw:
        return bytes(raw).decode("utf-8", "replace")
    return _text(wire.get("body", ""))


def js_request(wire: Mapping[str, Any]) -> dict[str, Any]:
    """Tyk's MiniRequestObject from a coprocess request (wire form)."""
    overrides = wire.get("return_overrides") or {}
    return {
        "Headers": {k: [v] for k, v in (wire.get("headers") or {}).items()},
        "SetHeaders": {}, "DeleteHeaders": [],
        "Body": _body_text(wire),
        "URL": wire.get("url", ""),
        "Params": {k: [v] for k, v in (wire.get("params") or {}).items()},
        "AddParams": {}, "ExtendedParams": {}, "DeleteParams": [],
        "ReturnOverrides": {
            "ResponseCode": overrides.get("response_code", 0),
            "ResponseError": overrides.get("response_error", ""),
            "ResponseBody": overrides.get("response_body", ""),
            "ResponseHeaders": dict(overrides.get("headers") or {}),
            "OverrideError": overrides.get("override_error", False),
        },
        "IgnoreBody": False,
        "Method": wire.get("method", ""),
        "RequestURI": wire.get("request_uri", ""),
        "Scheme": wire.get("scheme", "") or "http",
    }


def _str_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise JSValueError(f"{where}: expected an object of strings")
    return {str(k): _text(v) for k, v in value.items()}


def _str_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise JSValueError(f"{where}: expected an array of strings")
    return [_text(v) for v in value]


def _first_values(value: Any, where: str) -> dict[str, str]:
    """`{k: [v, ...]}` (Go's maps of lists) as coprocess's `{k: v}`: a list's last
    value (what `Set` left), a plain string as it is."""
    out = {}
    for key, item in _dict(value, where).items():
        if isinstance(item, list):
            out[str(key)] = _text(item[-1]) if item else ""
        else:
            out[str(key)] = _text(item)
    return out


def _dict(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise JSValueError(f"{where}: expected an object")
    return value


def from_js_request(value: Any, original: Mapping[str, Any]) -> dict[str, Any]:
    """The coprocess request (wire form) for what the hook returned as `Request`."""
    js = _dict(value, "Request")
    overrides = _dict(js.get("ReturnOverrides"), "Request.ReturnOverrides")
    code = overrides.get("ResponseCode") or 0
    if not isinstance(code, (int, float)) or isinstance(code, bool):
        raise JSValueError("Request.ReturnOverrides.ResponseCode: expected a number")
    wire = dict(original)
    extended = {k: _text(v[-1] if isinstance(v, list) and v else v)
                for k, v in _dict(js.get("ExtendedParams"), "Request.ExtendedParams").items()}
    wire.update({
        "set_headers": _str_map(js.get("SetHeaders"), "Request.SetHeaders"),
        "delete_headers": _str_list(js.get("DeleteHeaders"), "Request.DeleteHeaders"),
        "add_params": _str_map(js.get("AddParams"), "Request.AddParams"),
        "extended_params": extended,
        "delete_params": _str_list(js.get("DeleteParams"), "Request.DeleteParams"),
        "return_overrides": {
            "response_code": int(code),
            "response_error": _text(overrides.get("ResponseError") or ""),
            "response_body": _text(overrides.get("ResponseBody") or ""),
            "headers": _str_map(overrides.get("ResponseHeaders"),
                                "Request.ReturnOverrides.ResponseHeaders"),
            "override_error": bool(overrides.get("OverrideError")),
        },
    })
    if isinstance(js.get("URL"), str) and js["URL"] != original.get("url", ""):
        wire["url"] = js["URL"]
    body = js.get("Body")
    if not js.get("IgnoreBody") and isinstance(body, str) and body != _body_text(original):
        wire["raw_body"] = body.encode()
        wire["body"] = body
    return wire


# Tyk's session JSON names a few fields unlike the coprocess object does.
_SESSION_RENAMES = {"metadata": "meta_data", "hmac_secret": "hmac_string"}
_SESSION_BACK = {v: k for k, v in _SESSION_RENAMES.items()}


def js_session(wire: Mapping[str, Any]) -> dict[str, Any]:
    return {_SESSION_RENAMES.get(k, k): v for k, v in wire.items()}


def from_js_session(value: Any, where: str = "Session") -> dict[str, Any]:
    """A coprocess session (wire form) from Tyk's session JSON; unknown fields dropped."""
    js = _dict(value, where)
    wire: dict[str, Any] = {}
    for key, item in js.items():
        name = _SESSION_BACK.get(key, key)
        shape = SESSION.fields.get(name)
        if shape is None or item is None:
            continue
        if name == "metadata":
            wire[name] = _str_map(item, f"{where}.meta_data")
        elif shape in (int, float):
            if not isinstance(item, (int, float)) or isinstance(item, bool):
                raise JSValueError(f"{where}.{key}: expected a number")
            wire[name] = shape(item)
        elif shape is str:
            wire[name] = _text(item)
        elif shape is bool:
            wire[name] = bool(item)
        else:
            wire[name] = item  # containers: checked by the wire schema on the way out
    return wire


def js_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Tyk's spec object: APIID, OrgID, config_data as an object (not JSON text)."""
    out: dict[str, Any] = {"APIID": spec.get("APIID", ""), "OrgID": spec.get("OrgID", "")}
    if "config_data" in spec:
        try:
            out["config_data"] = json.loads(spec["config_data"])
        except (TypeError, ValueError):
            out["config_data"] = {}
    return out


def js_response(wire: Mapping[str, Any]) -> dict[str, Any]:
    """Tyk's MiniResponseObject from a coprocess response."""
    headers: dict[str, list[str]] = {}
    for header in wire.get("multivalue_headers") or []:
        headers[header.get("key", "")] = list(header.get("values") or [])
    if not headers:
        headers = {k: [v] for k, v in (wire.get("headers") or {}).items()}
    return {"StatusCode": wire.get("status_code", 0), "Body": _body_text(wire),
            "Headers": headers, "SetHeaders": {}, "DeleteHeaders": []}


def from_js_response(value: Any, original: Mapping[str, Any]) -> dict[str, Any]:
    """The coprocess response after Tyk's rules: delete, then set headers; the body;
    the status code when set."""
    js = _dict(value, "Response")
    headers = {k: list(v) for k, v in js_response(original)["Headers"].items()}
    lower = {k.lower(): k for k in headers}
    for name in _str_list(js.get("DeleteHeaders"), "Response.DeleteHeaders"):
        headers.pop(lower.get(name.lower(), name), None)
    for name, item in _str_map(js.get("SetHeaders"), "Response.SetHeaders").items():
        headers.pop(lower.get(name.lower(), name), None)
        headers[name] = [item]
    wire = dict(original)
    wire["multivalue_headers"] = [{"key": k, "values": v} for k, v in headers.items()]
    wire["headers"] = {k: v[0] for k, v in headers.items() if v}
    body = js.get("Body")
    if isinstance(body, str) and body != _body_text(original):
        wire["raw_body"], wire["body"] = body.encode(), body
    code = js.get("StatusCode")
    if isinstance(code, (int, float)) and not isinstance(code, bool) and code:
        wire["status_code"] = int(code)
    return wire
