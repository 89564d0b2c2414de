"""Tyk's `SessionState` struct: a stored session read and written back as Tyk's Go does.

Tyk's `GET /tyk/keys/{key}` decodes the stored JSON into its Go struct
(user/session.go) and answers with the struct encoded by encoding/json.  So
the answer has the struct's fields in the struct's order, map keys sorted,
no unknown fields, and numbers as Go writes them (a float64 of integral
value without a fraction: `100`, not `100.0`).  Since Tyk 5.12 every field
is `omitzero` or `omitempty` (Tyk commit 6468f139d, "support omitzero for
compact JSON"): a field whose value is zero or empty is left out, and a
struct is left out when its `IsZero` says so.  A few nested fields have no
such tag (an allowed URL's `methods`, the smoothing settings) and are always
written.

`decode` gives the Go value of a stored session (every field present, zero
values where the JSON had none or had a value of another type: Go refuses
such a session, Coproc reads the rest of it); `encode` writes it as Tyk's
encoder does.  The admin API edits the decoded value in between (policies,
live quota counts).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["ACCESS_DEFINITION", "API_LIMIT", "SESSION", "decode", "encode", "go_number"]

#: Go's zero time, as its JSON encoder writes it (pre-5.12 Tyk stored it for "unset").
_ZERO_TIME: Final = "0001-01-01T00:00:00Z"


def go_number(value: float) -> int | float:
    """A float64 as Go's encoder writes it: without a fraction when it is integral
    (strconv 'f' format below 1e21)."""
    return int(value) if value.is_integer() and abs(value) < 1e21 else value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


class _Kind:
    """One Go type: its zero value, its JSON decoding and encoding, and its emptiness."""

    zero: Any = None

    def decode(self, value: Any) -> Any:
        raise NotImplementedError

    def encode(self, value: Any) -> Any:
        return value

    def is_zero(self, value: Any) -> bool:
        """`omitzero`'s test (the type's IsZero, else the Go zero value)."""
        return bool(value == self.zero)

    def is_empty(self, value: Any) -> bool:
        """`omitempty`'s test (false, 0, "", nil, an empty slice or map)."""
        return self.is_zero(value)

    def blank(self, value: Any) -> bool:
        """Zero as the IsZero/IsEmpty methods of Tyk's structs test a field (a slice
        by its length)."""
        return self.is_zero(value)


class _Int(_Kind):
    zero = 0

    def decode(self, value: Any) -> Any:
        return int(value) if _number(value) and float(value).is_integer() else 0


class _Float(_Kind):
    zero = 0

    def decode(self, value: Any) -> Any:
        return go_number(float(value)) if _number(value) else 0


class _Str(_Kind):
    zero = ""

    def decode(self, value: Any) -> Any:
        return value if isinstance(value, str) else ""


class _Time(_Str):
    """time.Time: RFC 3339 text; Go's zero time is zero."""

    def is_zero(self, value: Any) -> bool:
        return value in ("", _ZERO_TIME)


class _Bool(_Kind):
    zero = False

    def decode(self, value: Any) -> Any:
        return value if isinstance(value, bool) else False


class _Any(_Kind):
    """interface{} (meta_data's values): any JSON, numbers as float64."""

    def decode(self, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): self.decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.decode(v) for v in value]
        if _number(value) and isinstance(value, float):
            return go_number(value)
        return value

    def encode(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self.encode(value[k]) for k in sorted(value)}
        if isinstance(value, list):
            return [self.encode(v) for v in value]
        return value


@dataclass(frozen=True)
class _Slice(_Kind):
    """A Go slice: None is nil (JSON null), a list may be empty."""

    item: _Kind

    def decode(self, value: Any) -> Any:
        return [self.item.decode(v) for v in value] if isinstance(value, list) else None

    def encode(self, value: Any) -> Any:
        return None if value is None else [self.item.encode(v) for v in value]

    def is_zero(self, value: Any) -> bool:
        return value is None

    def is_empty(self, value: Any) -> bool:
        return not value

    blank = is_empty


@dataclass(frozen=True)
class _Map(_Kind):
    """map[string]T: the encoder sorts the keys."""

    item: _Kind

    def decode(self, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return None
        return {str(k): self.item.decode(value[k]) for k in sorted(value, key=str)}

    def encode(self, value: Any) -> Any:
        return None if value is None else {k: self.item.encode(value[k]) for k in sorted(value)}

    def is_zero(self, value: Any) -> bool:
        return not value

    blank = is_empty = is_zero


#: The struct tag's omission: "zero" (omitzero), "empty" (omitempty), "" (none).
_ZERO, _EMPTY, _ALWAYS = "zero", "empty", ""


@dataclass(frozen=True)
class _Struct(_Kind):
    """A Go struct: (json name, kind, omission) in declaration order.  `unchecked`:
    fields its IsZero method does not look at."""

    fields: tuple[tuple[str, _Kind, str], ...]
    unchecked: frozenset[str] = frozenset()

    def decode(self, value: Any) -> Any:
        given = value if isinstance(value, Mapping) else {}
        return {name: kind.decode(given.get(name)) for name, kind, _ in self.fields}

    def encode(self, value: Any) -> Any:
        out = {}
        for name, kind, omit in self.fields:
            field = value.get(name, kind.zero)
            if (omit == _ZERO and kind.is_zero(field)) or \
                    (omit == _EMPTY and kind.is_empty(field)):
                continue
            out[name] = kind.encode(field)
        return out

    def is_zero(self, value: Any) -> bool:
        return all(kind.blank(value.get(name, kind.zero)) for name, kind, _ in self.fields
                   if name not in self.unchecked)

    def is_empty(self, value: Any) -> bool:
        return False  # omitempty never leaves a struct out

    def blank(self, value: Any) -> bool:
        return self.is_zero(value)


@dataclass(frozen=True)
class _Pointer(_Kind):
    """*T: nil (None, JSON null) or the struct."""

    target: _Struct

    def decode(self, value: Any) -> Any:
        return self.target.decode(value) if isinstance(value, Mapping) else None

    def encode(self, value: Any) -> Any:
        return None if value is None else self.target.encode(value)

    def is_zero(self, value: Any) -> bool:
        return value is None

    blank = is_empty = is_zero


INT, FLOAT, STR, BOOL, TIME, ANY = _Int(), _Float(), _Str(), _Bool(), _Time(), _Any()

# apidef.RateLimitSmoothing: no omission tags.
_SMOOTHING: Final = _Pointer(_Struct((
    ("enabled", BOOL, _ALWAYS), ("threshold", INT, _ALWAYS), ("trigger", FLOAT, _ALWAYS),
    ("step", INT, _ALWAYS), ("delay", INT, _ALWAYS))))
_RATE_LIMIT_FIELDS: Final = (("rate", FLOAT, _ZERO), ("per", FLOAT, _ZERO),
                             ("smoothing", _SMOOTHING, _ZERO))
_RATE_LIMIT: Final = _Struct(_RATE_LIMIT_FIELDS)
#: user.APILimit (RateLimit embedded, so inline); its IsEmpty ignores the smoothing.
API_LIMIT: Final = _Struct((
    *_RATE_LIMIT_FIELDS,
    ("throttle_interval", FLOAT, _ZERO), ("throttle_retry_limit", INT, _ZERO),
    ("max_query_depth", INT, _ZERO), ("quota_max", INT, _ZERO),
    ("quota_renews", INT, _ZERO), ("quota_remaining", INT, _ZERO),
    ("quota_renewal_rate", INT, _ZERO)), unchecked=frozenset({"smoothing"}))
_ACCESS_SPEC: Final = _Struct((("url", STR, _ALWAYS), ("methods", _Slice(STR), _ALWAYS)))
_GRAPHQL_TYPE: Final = _Struct((("name", STR, _ALWAYS), ("fields", _Slice(STR), _ALWAYS)))
_FIELD_ACCESS: Final = _Struct((
    ("type_name", STR, _ZERO), ("field_name", STR, _ZERO),
    ("limits", _Struct((("max_query_depth", INT, _ZERO),)), _ZERO)))
_ENDPOINT: Final = _Struct((
    ("path", STR, _EMPTY),
    ("methods", _Slice(_Struct((("name", STR, _EMPTY), ("limit", _RATE_LIMIT, _EMPTY)))),
     _EMPTY)))
_RULES: Final = _Struct((("allowed", _Slice(STR), _EMPTY), ("blocked", _Slice(STR), _EMPTY)))
_JSON_RPC_METHOD: Final = _Struct((("name", STR, _ALWAYS), ("limit", _RATE_LIMIT, _ZERO)))
_MCP_PRIMITIVE: Final = _Struct((("type", STR, _ALWAYS), ("name", STR, _ALWAYS),
                                 ("limit", _RATE_LIMIT, _ZERO)))
_MCP_RIGHTS: Final = _Struct((("tools", _RULES, _ZERO), ("resources", _RULES, _ZERO),
                              ("prompts", _RULES, _ZERO)))
#: user.AccessDefinition (one API of `access_rights`).
ACCESS_DEFINITION: Final = _Struct((
    ("api_name", STR, _ZERO), ("api_id", STR, _ZERO), ("versions", _Slice(STR), _EMPTY),
    ("allowed_urls", _Slice(_ACCESS_SPEC), _EMPTY),
    ("restricted_types", _Slice(_GRAPHQL_TYPE), _EMPTY),
    ("allowed_types", _Slice(_GRAPHQL_TYPE), _EMPTY),
    ("limit", API_LIMIT, _ZERO),
    ("field_access_rights", _Slice(_FIELD_ACCESS), _EMPTY),
    ("disable_introspection", BOOL, _ZERO), ("allowance_scope", STR, _ZERO),
    ("endpoints", _Slice(_ENDPOINT), _ZERO),
    ("json_rpc_methods", _Slice(_JSON_RPC_METHOD), _EMPTY),
    ("json_rpc_methods_access_rights", _RULES, _ZERO),
    ("mcp_primitives", _Slice(_MCP_PRIMITIVE), _EMPTY),
    ("mcp_access_rights", _MCP_RIGHTS, _ZERO)))
#: user.SessionState; KeyID (`json:"-"`) and the unexported fields are never written.
SESSION: Final = _Struct((
    ("last_check", INT, _ZERO), ("allowance", FLOAT, _ZERO), ("rate", FLOAT, _ZERO),
    ("per", FLOAT, _ZERO), ("throttle_interval", FLOAT, _ZERO),
    ("throttle_retry_limit", INT, _ZERO), ("max_query_depth", INT, _ZERO),
    ("date_created", TIME, _ZERO), ("expires", INT, _ZERO), ("quota_max", INT, _ZERO),
    ("quota_renews", INT, _ZERO), ("quota_remaining", INT, _ZERO),
    ("quota_renewal_rate", INT, _ZERO),
    ("access_rights", _Map(ACCESS_DEFINITION), _EMPTY),
    ("org_id", STR, _ZERO), ("oauth_client_id", STR, _ZERO),
    ("oauth_keys", _Map(STR), _EMPTY), ("certificate", STR, _ZERO),
    ("mtls_static_certificate_bindings", _Slice(STR), _EMPTY),
    ("basic_auth_data", _Struct((("password", STR, _ZERO), ("hash_type", STR, _ZERO))),
     _ZERO),
    ("jwt_data", _Struct((("secret", STR, _ZERO),)), _ZERO),
    ("hmac_enabled", BOOL, _ZERO), ("enable_http_signature_validation", BOOL, _ZERO),
    ("hmac_string", STR, _ZERO), ("rsa_certificate_id", STR, _ZERO),
    ("is_inactive", BOOL, _ZERO), ("apply_policy_id", STR, _ZERO),
    ("apply_policies", _Slice(STR), _EMPTY), ("data_expires", INT, _ZERO),
    ("monitor", _Struct((("trigger_limits", _Slice(FLOAT), _EMPTY),)), _ZERO),
    ("enable_detail_recording", BOOL, _ZERO), ("enable_detailed_recording", BOOL, _ZERO),
    ("meta_data", _Map(ANY), _EMPTY), ("tags", _Slice(STR), _EMPTY),
    ("alias", STR, _ZERO), ("last_updated", STR, _ZERO),
    ("id_extractor_deadline", INT, _ZERO), ("session_lifetime", INT, _ZERO),
    ("post_expiry_action", STR, _ZERO), ("post_expiry_grace_period", INT, _ZERO),
    ("smoothing", _SMOOTHING, _ZERO)))


def decode(stored: Mapping[str, Any]) -> dict[str, Any]:
    """The Go value of a stored session: every field, zero where it had none."""
    value: dict[str, Any] = SESSION.decode(stored)
    return value


def encode(session: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON object Tyk's encoder writes for a decoded session."""
    value: dict[str, Any] = SESSION.encode(session)
    return value
