"""The coprocess object: what one hook call carries, and the rules both ends share.

Field names and types follow Tyk's `coprocess_object.proto` family so that a
plugin written for Tyk sees the same attributes.  On the wire the object is a
msgpack map; every field is optional and a missing field means the proto
default (in a CALL) or "unchanged" (in a REPLY; see docs/PROTOCOL.md).

This module is the one home of those rules, for the gateway and the worker:

* the shapes (`OBJECT` and its records), checked by `ipc.protocol.decode`,
  and `CallPayload` / `ReplyPayload`, the same payloads as TypedDicts;
* the REPLY delta: the worker sends a record's changed fields only
  (`record_delta`), the gateway lays them over what it sent (`merge_reply`)
  and tells a changed field by `replaced`;
* `body` text decoded only when someone reads it (`LazyText`, `utf8_text`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, NotRequired, TypedDict

from ipc.schema import ListOf, MapOf, Record, Shape

__all__ = [
    "HOOK_TYPES",
    "MERGED_RECORDS",
    "MISSING",
    "OBJECT",
    "REQUEST",
    "RESPONSE",
    "RETURN_OVERRIDES",
    "RUN_NS",
    "SESSION",
    "BodyRefPayload",
    "CallPayload",
    "CoprocessObject",
    "HookFailure",
    "HookResult",
    "LazyText",
    "MergedHook",
    "ReplyPayload",
    "changes_nothing",
    "default_for",
    "merge_reply",
    "record_delta",
    "replaced",
    "resolved",
    "utf8_text",
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


# -- payloads ------------------------------------------------------------------------------


class CoprocessObject(TypedDict, total=False):
    """`OBJECT` as a type.  In a REPLY each record holds its changed fields only."""

    hook_type: str
    hook_name: str
    request: dict[str, Any]
    session: dict[str, Any]
    metadata: dict[str, str]
    spec: dict[str, str]
    response: dict[str, Any]


class BodyRefPayload(TypedDict):
    """`ipc.shm.BODY_REF`: a `raw_body` in the shared-memory arena."""

    offset: int
    length: int
    capacity: NotRequired[int]
    text: NotRequired[bool]


class CallPayload(TypedDict):
    """A CALL's payload (`ipc.protocol.PAYLOADS[MsgType.CALL]`)."""

    api_id: str
    hook_type: str
    hook_name: str
    object: CoprocessObject
    timeout_ms: NotRequired[int]
    bodies: NotRequired[dict[str, BodyRefPayload]]
    then: NotRequired[list[MergedHook]]  # a merged call: the hooks after this one


class MergedHook(TypedDict):
    """One entry of a CALL's `then`: a hook to run after the previous one."""

    hook_name: str
    hook_type: str
    timeout_ms: NotRequired[int]
    raw_body_only: NotRequired[bool]  # its object's `body` text is "" (Tyk's raw_body_only)


class HookResult(TypedDict):
    """One entry of a merged REPLY's `results`: one hook's REPLY, in call order."""

    object: dict[str, Any]
    run_ns: NotRequired[int]
    bodies: NotRequired[dict[str, Any]]


class HookFailure(TypedDict):
    """A merged REPLY's `failed`: hook `index` (0: the CALL's own hook) failed so."""

    index: int
    code: str
    message: str


class ReplyPayload(TypedDict):
    """A REPLY's payload: the changed fields only (`record_delta`); a merged call's
    has `results` and maybe `failed` instead of `object` (ipc/merged.py)."""

    object: NotRequired[CoprocessObject]
    bodies: NotRequired[dict[str, BodyRefPayload]]
    run_ns: NotRequired[int]  # the hook's own run time in the worker
    results: NotRequired[list[HookResult]]
    failed: NotRequired[HookFailure]


#: The key under which the gateway's hook client hands the REPLY's `run_ns` on with
#: the merged object (`gateway.hooks`); tracing and metrics read it from there.
RUN_NS: Final = "run_ns"


# -- the REPLY delta -----------------------------------------------------------------------

#: Records a REPLY changes field by field; any other key replaces what was sent.
MERGED_RECORDS: Final = frozenset({"request", "session", "response"})


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: A field a record does not hold (in a REPLY: one the hook left unchanged).
MISSING: Final[Any] = _Missing()


def changes_nothing(reply: Mapping[str, Any]) -> bool:
    """Whether a REPLY object (with the `RUN_NS` the hook client adds) changes no
    field: merged and applied, it would leave the request or response as it was."""
    return not reply or (len(reply) == 1 and RUN_NS in reply)


def merge_reply(sent: Mapping[str, Any], reply: Mapping[str, Any]) -> dict[str, Any]:
    """The object after the hook: the REPLY object laid over the object that was sent.

    A field the reply leaves out is the very object that was sent, so
    `replaced` tells a changed field by identity, without comparing.
    """
    merged = dict(sent)
    for key, value in reply.items():
        if key in MERGED_RECORDS:
            record = dict(sent.get(key) or {})
            record.update(value)
            merged[key] = record
        else:
            merged[key] = value
    return merged


def replaced(got: Mapping[str, Any], sent: Mapping[str, Any], name: str) -> Any:
    """The value a reply record gives `name`, or MISSING when the hook left it unchanged.

    `got` is a REPLY record or a merged one (`merge_reply`): a field absent
    from it, or still the very object `sent` held, is unchanged.
    """
    value = got.get(name, MISSING)
    if value is MISSING or value is sent.get(name, MISSING):
        return MISSING
    return value


def record_delta(now: Mapping[str, Any], sent: Mapping[str, Any],
                 wire: Callable[[str, Any], Any]) -> dict[str, Any]:
    """The REPLY record: the fields of `now` whose wire value differs from `sent`'s.

    `now` holds the record's values after the hook, `sent` the record as the
    CALL carried it; `wire(name, value)` is a value's wire form (MISSING: the
    field's default).  A field the hook never touched is still the very object
    that came off the wire and is skipped without converting or comparing, so
    an untouched `raw_body` costs nothing; a `LazyText` counts as its text.
    """
    out = {}
    for name in now.keys() | sent.keys():
        value = now.get(name, MISSING)
        before = sent.get(name, MISSING)
        if value is before:
            continue
        if type(value) is LazyText or type(before) is LazyText:
            value, before = resolved(value), resolved(before)
            if value is before:  # read, so replaced by its (cached) text: unchanged
                continue
        new = wire(name, value)
        if new != wire(name, before):
            out[name] = new
    return out


# -- body text -----------------------------------------------------------------------------


def utf8_text(data: bytes) -> str:
    """Tyk's `body`: the UTF-8 text of the bytes, or "" when they are not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return ""


class LazyText:
    """A `body` not decoded yet: `utf8_text(raw)`, decoded on first use.

    Decoding a large body costs about as much as copying it, and most hooks
    never read `body`.  On the gateway an object may carry one until it is
    sent (gateway/bodies.py decodes it for a body sent inline, and sends none
    for a body in the arena); on the worker a body read from the arena gets
    one, and the plugin's first read of `body` replaces it with the text
    (worker/objects.py).  It is never sent as such: msgpack refuses it.
    """

    __slots__ = ("_text", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._text: str | None = None

    def text(self) -> str:
        """The text (the same `str` object every time)."""
        text = self._text
        if text is None:
            # Two threads racing here both store an equal text.
            text = self._text = utf8_text(self.raw)
        return text

    def __repr__(self) -> str:
        return f"LazyText({len(self.raw)} bytes)"


def resolved(value: Any) -> Any:
    """A wire value with a `LazyText` turned into its text."""
    return value.text() if type(value) is LazyText else value
