"""The hooks wire protocol between the gateway (ROUTER) and a worker (DEALER).

A message is four ZeroMQ frames (the ROUTER side sees the peer's routing id
in front of them):

    [version: 1 byte][type: 1 byte][call_id: 8 bytes, big endian][payload: msgpack map]

`encode` builds the frames, `decode` is the single validating entry point for
everything read from the socket: version, type, sizes and the payload's shape
per message type.  Anything else raises `ProtocolError`, which the receiver
treats as "this peer is broken or hostile", never as a reason to crash.
See docs/PROTOCOL.md for the conversation these messages make up.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from ipc.coprocess import OBJECT
from ipc.schema import ListOf, MapOf, ProtocolError, Record, Shape, check
from ipc.shm import BODY_REFS

__all__ = [
    "DEFAULT_LIMITS",
    "PROTOCOL_VERSION",
    "ErrorCode",
    "Limits",
    "Message",
    "MsgType",
    "ProtocolError",
    "decode",
    "encode",
]

PROTOCOL_VERSION: Final = 1
_VERSION_FRAME: Final = bytes([PROTOCOL_VERSION])
_CALL_ID = struct.Struct(">Q")


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


@dataclass(frozen=True, slots=True)
class Message:
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

PAYLOADS: Final[Mapping[MsgType, Shape]] = {
    MsgType.HELLO: Record(
        {
            "generation": int,
            "pid": int,
            "token": str,
            "plugins": PLUGIN_REPORT,
            "threads": int,
            "lane": int,
            # layer -> "active: ..." / "skipped: why" / "off" (worker/sandbox/launcher.py)
            "sandbox": MapOf(str),
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
        },
        required=frozenset({"api_id", "hook_type", "hook_name", "object"}),
    ),
    MsgType.REPLY: Record({"object": OBJECT, "bodies": BODY_REFS},
                          required=frozenset({"object"})),
    MsgType.ERROR: _ERROR,
    MsgType.HEARTBEAT: Record(
        {"generation": int, "inflight": int, "rss": int}, required=frozenset({"generation"})
    ),
    MsgType.RESYNC: Record({}),
    # calls: the CALLs sent to this worker and not answered yet when it was told to
    # drain; with lanes they may still be on their way on other sockets.
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
        },
        required=frozenset({"op"}),
    ),
    MsgType.HOST_REPLY: Record({"value": bytes, "found": bool}),
    MsgType.EVENT: Record(
        {"api_id": str, "handler": str, "event": MapOf(str), "spec": MapOf(str),
         "timeout_ms": int},
        required=frozenset({"api_id", "handler", "event"}),
    ),
}

#: Host call operations a worker may ask for.
HOST_OPS: Final = frozenset({"log", "store_data", "get_data", "trigger_event"})


def encode(mtype: MsgType, call_id: int, payload: Mapping[str, Any]) -> list[bytes]:
    """Frames for one message (without the ROUTER's routing id)."""
    return [
        _VERSION_FRAME,
        bytes((mtype,)),
        _CALL_ID.pack(call_id),
        msgpack.packb(payload, use_bin_type=True),
    ]


def decode(frames: Sequence[bytes], limits: Limits = DEFAULT_LIMITS) -> Message:
    """Validate and decode the four protocol frames; raise `ProtocolError`."""
    if len(frames) != 4:
        raise ProtocolError(f"expected 4 frames, got {len(frames)}")
    version, mtype_frame, call_id_frame, body = (bytes(f) for f in frames)
    if version != _VERSION_FRAME:
        raise ProtocolError(f"unsupported protocol version {version!r}")
    if len(mtype_frame) != 1:
        raise ProtocolError("type frame must be one byte")
    try:
        mtype = MsgType(mtype_frame[0])
    except ValueError:
        raise ProtocolError(f"unknown message type {mtype_frame[0]}") from None
    if len(call_id_frame) != _CALL_ID.size:
        raise ProtocolError("call id frame must be 8 bytes")
    if len(body) > limits.max_message_bytes:
        raise ProtocolError(f"payload of {len(body)} bytes exceeds {limits.max_message_bytes}")
    payload = _unpack(body, limits)
    check(payload, PAYLOADS[mtype], mtype.name)
    if mtype is MsgType.HOST_CALL and payload["op"] not in HOST_OPS:
        raise ProtocolError(f"HOST_CALL: unknown op {payload['op']!r}")
    return Message(mtype, _CALL_ID.unpack(call_id_frame)[0], payload)


def _unpack(body: bytes, limits: Limits) -> Any:
    try:
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
            msgpack.StackError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"payload is not valid msgpack: {exc}") from None
