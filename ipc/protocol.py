"""The hooks wire protocol between the gateway (ROUTER) and a worker (DEALER).

A protocol message is one ZeroMQ frame (the ROUTER side sees the peer's
routing id in a frame in front of it):

    [version: 1 byte][type: 1 byte][call_id: 8 bytes, big endian][payload: msgpack map]

One frame, not four: with pyzmq every frame costs a Python-level send and
receive, and on the hook round trip those were a measurable share of the
gateway's time (README, Performance).

A ZeroMQ message carries a batch: one protocol message per frame, at most
MAX_BATCH.  The messages a side has ready at once (the CALLs of one gateway
loop turn, the answers a worker holds) leave as one ZeroMQ message, so each
side's I/O thread is handed, and wakes the other side for, one message per
batch instead of one per call: waking a sleeping thread costs more CPU than
the rest of a small send.

`encode` builds one message's frame; `decode_frame` is the single validating
entry point for every frame read from the socket: version, type, sizes and
the payload's shape per message type.  Anything else raises `ProtocolError`,
which the receiver treats as "this peer is broken or hostile" (for that
frame: the batch's other messages stand on their own), never as a reason to
crash.  See docs/PROTOCOL.md for the conversation these messages make up.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import msgpack
import msgspec

from ipc.coprocess import OBJECT
from ipc.schema import ListOf, MapOf, ProtocolError, Record, Shape, check
from ipc.shm import BODY_REFS

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_BATCH",
    "MAX_MERGED",
    "PROTOCOL_VERSION",
    "ErrorCode",
    "Limits",
    "Message",
    "MsgType",
    "ProtocolError",
    "decode",
    "decode_frame",
    "encode",
    "peek_call_id",
]

#: 3: a ZeroMQ message may carry a batch of messages (2 sent exactly one).
PROTOCOL_VERSION: Final = 3
#: Most protocol messages (frames) one ZeroMQ message carries.
MAX_BATCH: Final = 256
#: version, type, call_id
_HEADER: Final = struct.Struct(">BBQ")


class MsgType(enum.IntEnum):
    """Message types; the comment says who sends it."""

    HELLO = 1  # worker -> gateway: I am generation N, here is my token and load report
    WELCOME = 2  # gateway -> worker: you are accepted (active or standby)
    REJECT = 3  # gateway -> worker: you are not accepted (bad token, stale generation)
    CALL = 4  # gateway -> worker: run one hook on this object
    REPLY = 5  # worker -> gateway: the object after the hook (changed fields only)
    ERROR = 6  # either way: a call failed, or a message was refused
    HEARTBEAT = 7  # worker -> gateway: still alive, from the worker's event loop
    RESYNC = 8  # gateway -> worker: I do not know you (I restarted): send HELLO again
    DRAIN = 9  # gateway -> worker: finish in-flight calls, take no new ones, then exit
    DRAIN_ACK = 10  # worker -> gateway: drained, exiting
    HOST_CALL = 11  # worker -> gateway: a plugin API call (store_data, get_data, ...)
    HOST_REPLY = 12  # gateway -> worker: the answer to a HOST_CALL
    EVENT = 13  # gateway -> worker: run an @Event handler (no answer)
    ANALYTICS = 14  # gateway -> worker: run the analytics plugins over a batch of records
    ANALYTICS_DONE = 15  # worker -> gateway: the batch after its plugins (dropped ones gone)


class ErrorCode(enum.StrEnum):
    """Values of ERROR's `code` field."""

    HOOK_FAILED = "hook_failed"  # the plugin raised
    NO_SUCH_HOOK = "no_such_hook"  # the API has no loaded hook of that name
    LOAD_FAILED = "load_failed"  # the API's plugin failed to import
    BAD_OBJECT = "bad_object"  # the hook returned something unusable
    DRAINING = "draining"  # the worker is draining and refuses new calls
    OVERLOADED = "overloaded"  # the worker's call queue is full
    DEADLINE = "deadline"  # the hook did not finish within the call's timeout_ms
    UNAVAILABLE = "unavailable"  # a backend the call needed (storage) is down
    PROTOCOL = "protocol"  # the message received was invalid
    HOST_CALL_FAILED = "host_call_failed"  # a host call could not be served


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds applied by `decode` before a payload is trusted."""

    max_message_bytes: int = 64 * 1024 * 1024
    max_string_bytes: int = 64 * 1024 * 1024
    max_container_items: int = 100_000


DEFAULT_LIMITS: Final = Limits()


class Message(NamedTuple):
    """One decoded, validated protocol message (a tuple: made once per frame read)."""

    type: MsgType
    call_id: int
    payload: dict[str, Any]


PLUGIN_REPORT = MapOf(
    Record(
        {"ok": bool, "hooks": ListOf(str), "error": str, "source": str,
         "async": ListOf(str)},
        required=frozenset({"ok"}),
    )
)

#: WELCOME `shm`: the gateway's body arena the worker should map (ipc/shm.py).
_ARENA = Record({"name": str, "size": int, "threshold": int},
                required=frozenset({"name", "size", "threshold"}))

_ERROR = Record({"code": str, "message": str}, required=frozenset({"code", "message"}))

#: Most hooks one merged CALL runs (its own and those in `then`).
MAX_MERGED: Final = 64
_THEN = ListOf(Record({"hook_name": str, "hook_type": str, "timeout_ms": int,
                       "raw_body_only": bool},
                      required=frozenset({"hook_name", "hook_type"})), MAX_MERGED - 1)
_RESULT = Record({"object": OBJECT, "bodies": BODY_REFS, "run_ns": int},
                 required=frozenset({"object"}))
_FAILED = Record({"index": int, "code": str, "message": str},
                 required=frozenset({"index", "code", "message"}))

#: Analytics records: Tyk's JSON names (gateway/analytics/record.py), any values.
_ANALYTICS_RECORDS = ListOf(MapOf(object))

PAYLOADS: Final[Mapping[MsgType, Shape]] = {
    MsgType.HELLO: Record(
        {
            "generation": int,
            "pid": int,
            "token": str,
            "plugins": PLUGIN_REPORT,
            "threads": int,
            # layer -> "active: ..." / "skipped: why" / "off" (worker/sandbox/launcher.py)
            "sandbox": MapOf(str),
            # true: it runs merged CALLs (`then`); without it each hook gets its own CALL
            "merge": bool,
        },
        required=frozenset({"generation", "pid", "token"}),
    ),
    MsgType.WELCOME: Record(
        {"generation": int, "active": bool, "shm": _ARENA}, required=frozenset({"generation"})
    ),
    MsgType.REJECT: Record({"reason": str}, required=frozenset({"reason"})),
    MsgType.CALL: Record(
        {
            "api_id": str,
            "hook_type": str,
            "hook_name": str,
            "timeout_ms": int,
            "object": OBJECT,
            "bodies": BODY_REFS,
            # A merged call (ipc/merged.py): the hooks to run after this one, in order.
            "then": _THEN,
        },
        required=frozenset({"api_id", "hook_type", "hook_name", "object"}),
    ),
    # run_ns: how long the hook itself ran in the worker (its own timing, per hook).
    # A merged call's REPLY has `results` (one per hook run) instead of `object`, and
    # `failed` when a hook failed (the hooks after it did not run): see `decode`.
    MsgType.REPLY: Record({"object": OBJECT, "bodies": BODY_REFS, "run_ns": int,
                           "results": ListOf(_RESULT, MAX_MERGED), "failed": _FAILED}),
    MsgType.ERROR: _ERROR,
    MsgType.HEARTBEAT: Record(
        # calls: the call threads' counters (worker/callthreads.py `CallThreads.counters`)
        {"generation": int, "inflight": int, "rss": int, "calls": MapOf(int)},
        required=frozenset({"generation"}),
    ),
    MsgType.RESYNC: Record({}),
    # calls: the CALLs sent to this worker and not answered yet when it was told to
    # drain; the worker acknowledges once it answered each of them (or the grace ends).
    MsgType.DRAIN: Record({"grace_ms": int, "calls": ListOf(int)}),
    MsgType.DRAIN_ACK: Record({"inflight": int}),
    MsgType.HOST_CALL: Record(
        {
            "op": str,
            "key": str,
            "value": bytes,
            "ttl": int,
            "level": str,
            "message": str,
            "name": str,
            "payload": str,
            "api_id": str,
            # log: the hook and request the plugin logged from (worker/tyk_api.py)
            "hook": str,
            "request_id": str,
        },
        required=frozenset({"op"}),
    ),
    MsgType.HOST_REPLY: Record({"value": bytes, "found": bool}),
    MsgType.EVENT: Record(
        {"api_id": str, "handler": str, "event": MapOf(str), "spec": MapOf(str),
         "timeout_ms": int},
        required=frozenset({"api_id", "handler", "event"}),
    ),
    # records: one batch, in order; a record of an API without an analytics plugin
    # comes back as it went (docs/PROTOCOL.md, Analytics).
    MsgType.ANALYTICS: Record({"records": _ANALYTICS_RECORDS}, required=frozenset({"records"})),
    # records: those kept (changed or not), in order; failed: records whose plugin
    # raised or returned something unusable (kept as they were).
    MsgType.ANALYTICS_DONE: Record({"records": _ANALYTICS_RECORDS, "failed": int},
                                   required=frozenset({"records"})),
}

#: Host call operations a worker may ask for.  The `jsvm_*` ones serve the JS
#: driver's Tyk functions (worker/jsvm/api.py): `value` carries Tyk's JSON text
#: (the request or session), `key` the API key, `name` the target API id, `level`
#: TykSetKeyData's suppress_reset ("1"); the HOST_REPLY's `value` is Tyk's JSON
#: answer.  `jsvm_store` (the goja storage functions): `name` the action, `key`,
#: `value` and `ttl` (seconds).  The gateway checks every outbound destination
#: (gateway/outbound.py).
JSVM_HOST_OPS: Final = frozenset({"jsvm_http", "jsvm_batch", "jsvm_get_key", "jsvm_set_key",
                                  "jsvm_store"})
HOST_OPS: Final = frozenset({"log", "store_data", "get_data", "trigger_event"}) | JSVM_HOST_OPS


def encode(mtype: MsgType, call_id: int, payload: Mapping[str, Any]) -> bytes:
    """One message's frame (without the ROUTER's routing id).

    Raises TypeError (a value msgpack cannot carry), OverflowError (an int
    wider than 64 bits) or ValueError (nesting too deep to encode).
    """
    try:
        body = _encoder.encode(payload)
    except RecursionError:
        raise ValueError("the payload is nested too deeply to encode") from None
    return _HEADER.pack(PROTOCOL_VERSION, mtype, call_id) + body


#: msgspec writes standard msgpack (the bytes `msgpack.packb(..., use_bin_type=True)`
#: writes) at about twice its speed.  An Encoder keeps its working state per call and
#: holds the GIL throughout, so the worker's call threads share one; it keeps no buffer
#: between calls, so a large inline body leaves nothing behind.
_encoder: Final = msgspec.msgpack.Encoder()
#: The fast decoder (`_unpack`), shared the same way.
_decoder: Final = msgspec.msgpack.Decoder()


def decode(frames: Sequence[bytes], limits: Limits = DEFAULT_LIMITS) -> Message:
    """`decode_frame` for a ZeroMQ message that must hold exactly one protocol message."""
    if len(frames) != 1:
        raise ProtocolError(f"expected 1 frame, got {len(frames)}")
    return decode_frame(frames[0], limits)


def decode_frame(frame: bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Validate and decode one protocol message (one frame); raise `ProtocolError`."""
    if len(frame) < _HEADER_SIZE:
        raise ProtocolError(f"a message is at least {_HEADER_SIZE} bytes, got {len(frame)}")
    version, type_code, call_id = _unpack_header(frame)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version}")
    mtype = _TYPES.get(type_code)
    if mtype is None:
        raise ProtocolError(f"unknown message type {type_code}")
    if len(frame) - _HEADER_SIZE > limits.max_message_bytes:
        raise ProtocolError(f"payload of {len(frame) - _HEADER_SIZE} bytes exceeds "
                            f"{limits.max_message_bytes}")
    payload = _unpack(memoryview(frame)[_HEADER_SIZE:], limits, mtype not in _FREE_FORM)
    check(payload, PAYLOADS[mtype], _NAMES[mtype])
    if mtype is _REPLY:
        if ("object" in payload) == ("results" in payload):
            raise ProtocolError("REPLY: needs either object (one hook) or results "
                                "(a merged call)")
    elif mtype is _HOST_CALL and payload["op"] not in HOST_OPS:
        raise ProtocolError(f"HOST_CALL: unknown op {payload['op']!r}")
    return Message(mtype, call_id, payload)


def peek_call_id(frame: bytes) -> int | None:
    """The call_id in a message's header, the rest unchecked; None without a header.

    For a frame `decode_frame` refused: the receiver fails the call it was meant
    to answer at once instead of letting that call run into its deadline.
    """
    if len(frame) < _HEADER_SIZE:
        return None
    call_id: int = _unpack_header(frame)[2]
    return call_id


_TYPES: Final = {int(t): t for t in MsgType}
# Looked up on every frame: module constants, not enum attribute lookups.
_REPLY: Final = MsgType.REPLY
_HOST_CALL: Final = MsgType.HOST_CALL
_HEADER_SIZE: Final = _HEADER.size
_unpack_header: Final = _HEADER.unpack_from
#: Types whose payload shape has values of any type (`object`): decoded by msgpack, which
#: refuses extension types, not by msgspec, which would let them through (`_unpack`).
_FREE_FORM: Final = frozenset({MsgType.ANALYTICS, MsgType.ANALYTICS_DONE})
#: Each type's name: an enum's `.name` is a Python property, slow on every message.
_NAMES: Final = {t: t.name for t in MsgType}


def _unpack(body: bytes | memoryview, limits: Limits, fast: bool) -> Any:
    """The payload's value, before validation.

    A payload no longer than `limits.max_container_items` bytes cannot hold a
    longer container (each item takes a byte at least), nor a string longer
    than itself: such a payload, nearly every one, goes to msgspec's faster
    decoder, which has no such limits.  A longer one (an inline body) goes to
    msgpack's, which refuses an oversized container before building it, and
    any extension type.  msgspec decodes an extension type as an `Ext` or a
    datetime, which only a shape with a concrete type at every value refuses:
    `fast` is False for the types whose shape has free-form values.
    """
    try:
        if fast and len(body) <= limits.max_container_items \
                and len(body) <= limits.max_string_bytes:
            return _decoder.decode(body)
        return msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=limits.max_string_bytes,
            max_bin_len=limits.max_string_bytes,
            max_array_len=limits.max_container_items,
            max_map_len=limits.max_container_items,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, UnicodeDecodeError, RecursionError) as exc:
        # msgspec.DecodeError is a ValueError; RecursionError: msgspec, nested too deep.
        raise ProtocolError(f"payload is not valid msgpack: {exc}") from None
