"""The coprocess object: what one hook call carries, field for field Tyk's.

Field names and types follow Tyk's `coprocess_object.proto` family so that a
plugin written for Tyk sees the same attributes.  On the wire the object is a
msgpack map; every field is optional and a missing field means the proto
default (in a CALL) or "unchanged" (in a REPLY; see docs/PROTOCOL.md).
"""

from __future__ import annotations

from typing import Any

from ipc.schema import ListOf, MapOf, Record, Shape

__all__ = [
    "HOOK_TYPES",
    "OBJECT",
    "REQUEST",
    "RESPONSE",
    "RETURN_OVERRIDES",
    "SESSION",
    "default_for",
]

#: Hook phases, named as in API definitions' `custom_middleware`.
HOOK_TYPES = frozenset(
    {"pre", "auth_check", "post_key_auth", "post", "response", "analytics", "event"}
)

STR_MAP = MapOf(str)
STR_LIST = ListOf(str)

RETURN_OVERRIDES = Record(
    {
        "response_code": int,
        "response_error": str,
        "headers": STR_MAP,
        "override_error": bool,
        "response_body": str,
    }
)

REQUEST = Record(
    {
        "headers": STR_MAP,
        "set_headers": STR_MAP,
        "delete_headers": STR_LIST,
        "body": str,
        "url": str,
        "params": STR_MAP,
        "add_params": STR_MAP,
        "extended_params": STR_MAP,
        "delete_params": STR_LIST,
        "return_overrides": RETURN_OVERRIDES,
        "method": str,
        "request_uri": str,
        "scheme": str,
        "raw_body": bytes,
    }
)

ACCESS_SPEC = Record({"url": str, "methods": STR_LIST})

ACCESS_DEFINITION = Record(
    {
        "api_name": str,
        "api_id": str,
        "versions": STR_LIST,
        "allowed_urls": ListOf(ACCESS_SPEC),
    }
)

SESSION = Record(
    {
        "last_check": int,
        "allowance": float,
        "rate": float,
        "per": float,
        "expires": int,
        "quota_max": int,
        "quota_renews": int,
        "quota_remaining": int,
        "quota_renewal_rate": int,
        "access_rights": MapOf(ACCESS_DEFINITION),
        "org_id": str,
        "oauth_client_id": str,
        "oauth_keys": STR_MAP,
        "basic_auth_data": Record({"password": str, "hash": str}),
        "jwt_data": Record({"secret": str}),
        "hmac_enabled": bool,
        "hmac_secret": str,
        "is_inactive": bool,
        "apply_policy_id": str,
        "data_expires": int,
        "monitor": Record({"trigger_limits": ListOf(float)}),
        "enable_detailed_recording": bool,
        "metadata": STR_MAP,
        "tags": STR_LIST,
        "alias": str,
        "last_updated": str,
        "id_extractor_deadline": int,
        "session_lifetime": int,
        "apply_policies": STR_LIST,
        "certificate": str,
        "max_query_depth": int,
    }
)

HEADER = Record({"key": str, "values": STR_LIST})

RESPONSE = Record(
    {
        "status_code": int,
        "raw_body": bytes,
        "body": str,
        "headers": STR_MAP,
        "multivalue_headers": ListOf(HEADER),
    }
)

OBJECT = Record(
    {
        "hook_type": str,
        "hook_name": str,
        "request": REQUEST,
        "session": SESSION,
        "metadata": STR_MAP,
        "spec": STR_MAP,
        "response": RESPONSE,
    }
)

_SCALAR_DEFAULTS: dict[type, Any] = {str: "", bytes: b"", int: 0, float: 0.0, bool: False}


def default_for(shape: Shape) -> Any:
    """The proto3 default value of a field of this shape (a fresh container)."""
    if isinstance(shape, type):
        return _SCALAR_DEFAULTS[shape]
    if isinstance(shape, ListOf):
        return []
    return {}
