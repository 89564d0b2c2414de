"""Sessions: Tyk's stored JSON shape, the coprocess object's shape, and the checks.

A session is stored as Tyk's `SessionState` JSON (`meta_data`, `access_rights`,
`rate`/`per`, `quota_*`, `expires`, …) so keys written by Tyk's admin API
scripts read back unchanged.  Plugins see the coprocess shape: only the proto
fields, `metadata` as strings (other JSON values are JSON-encoded, as Tyk
does), numbers of the proto's types.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Final

from ipc.coprocess import SESSION

__all__ = [
    "from_object",
    "session_problem",
    "to_object",
]

_FLOATS: Final = frozenset({"allowance", "rate", "per"})
_INTS: Final = frozenset(k for k, v in SESSION.fields.items() if v is int)
_STRS: Final = frozenset(k for k, v in SESSION.fields.items() if v is str)
_BOOLS: Final = frozenset(k for k, v in SESSION.fields.items() if v is bool)


def _meta_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def to_object(stored: Mapping[str, Any]) -> dict[str, Any]:
    """The coprocess `session` record for a stored session (unknown fields dropped)."""
    out: dict[str, Any] = {}
    for key, value in stored.items():
        if key == "meta_data" or key == "metadata":
            if isinstance(value, Mapping):
                out["metadata"] = {str(k): _meta_text(v) for k, v in value.items()}
        elif key in _FLOATS and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
        elif key in _INTS and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = int(value)
        elif (key in _STRS and isinstance(value, str)) or (
                key in _BOOLS and isinstance(value, bool)):
            out[key] = value
        elif key == "tags" and isinstance(value, list):
            out[key] = [str(t) for t in value]
        elif key == "access_rights" and isinstance(value, Mapping):
            out[key] = {str(k): _access(v) for k, v in value.items() if isinstance(v, Mapping)}
    return out


def _access(value: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("api_name", "api_id"):
        if isinstance(value.get(key), str):
            out[key] = value[key]
    if isinstance(value.get("versions"), list):
        out["versions"] = [str(v) for v in value["versions"]]
    return out


def from_object(obj: Mapping[str, Any], previous: Mapping[str, Any] | None,
                metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The session to store from one a plugin returned (and its object `metadata`).

    The object's metadata joins the session's, as in Tyk.  `quota_remaining`
    and `quota_renews` come from the key's previous session (Tyk #2884): a
    plugin builds a fresh session on every call and would otherwise hand out
    a full quota each time.
    """
    stored = {k: v for k, v in obj.items() if k != "metadata"}
    stored["meta_data"] = {**(obj.get("metadata") or {}), **(metadata or {})}
    if previous:
        for key in ("quota_remaining", "quota_renews"):
            if key in previous:
                stored[key] = previous[key]
    return stored


def session_problem(session: Mapping[str, Any], api_id: str,
                    now: float | None = None) -> tuple[int, str] | None:
    """(status, message) when this session may not call `api_id`, else None."""
    if session.get("is_inactive"):
        return 403, "Key is inactive, please renew"
    expires = session.get("expires") or 0
    if isinstance(expires, (int, float)) and expires > 0 and expires < (now or time.time()):
        return 401, "Key has expired, please renew"
    rights = session.get("access_rights") or {}
    if rights and api_id not in rights:
        return 403, "Access to this API has been disallowed"
    return None
