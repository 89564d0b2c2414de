"""The store protocol: gateway processes <-> the store process that owns `storage: memory`.

With `storage: memory` and several gateway processes, one process (the store,
gateway/storage/server.py) holds the state and every gateway process reaches
it over a unix stream socket (gateway/storage/remote.py).  This module is the
wire, both sides import it, and `decode_request` is the one validating decode
of what the store reads.

Framing: a 4-byte big-endian length, then that many bytes of msgpack.  A
frame longer than `MAX_FRAME` is refused before it is buffered.

    request  [call_id, op, *args]       call_id: int >= 0, chosen by the client
    reply    [call_id, ok, value]       ok false: value is an error string

Requests are pipelined: a client may send many before reading replies; the
store answers each connection's requests in order.  The first request of a
connection must be HELLO with the store's token (ipc/tokens.py `store_token`);
anything else first, or a wrong token, closes the connection.  Ops and their
arguments
(keys are strings; a header's bytes that are not UTF-8 travel surrogate-escaped,
as aiohttp hands them over):

    GET       key                         -> bytes | nil
    GET_MANY  [key, ...]                  -> [bytes | nil, ...]
    SET       key, value: bin, ttl: float -> nil
    DELETE    key                         -> bool
    RATE_HIT  key, limit: int, per: float -> [allowed, remaining, reset]
    QUOTA_HIT key, max: int, renewal: int -> [allowed, remaining, reset]
    SCAN      prefix                      -> [key, ...]
    PING                                  -> true
    HELLO     token                       -> true
    SET_NX    key, value: bin, ttl: float -> bool
    TTL       key                         -> int
    INCR      key, ttl: float             -> int | nil
    QUOTA_PEEK key, max: int              -> [allowed, remaining, reset] | nil

Any invalid frame is a `ProtocolError`: the store closes that connection and
keeps serving the others.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from ipc.schema import ProtocolError

__all__ = [
    "HEADER",
    "MAX_FRAME",
    "MAX_KEYS",
    "MAX_KEY_BYTES",
    "MAX_REPLY_ITEMS",
    "Op",
    "Request",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
    "frame_length",
]

#: The length prefix of every frame.
HEADER: Final = struct.Struct(">I")
#: One frame's body at most: a stored value (a session, plugin data) plus its key.
MAX_FRAME: Final = 16 * 1024 * 1024
#: A key at most: only the frame bounds it, so that any key the gateway can form
#: (from a client's header, however long the gateway allows it) is a valid request
#: and never closes the gateway's connection, which other requests share.
MAX_KEY_BYTES: Final = MAX_FRAME
#: Keys in one GET_MANY (and entries in any request array) at most.
MAX_KEYS: Final = 10_000
#: Entries in a reply's array (SCAN lists every matching key) at most.
MAX_REPLY_ITEMS: Final = 1_000_000
#: A call id fits 63 bits: the client's counter never gets near it.
_MAX_ID: Final = (1 << 63) - 1


class Op(enum.IntEnum):
    GET = 1
    GET_MANY = 2
    SET = 3
    DELETE = 4
    RATE_HIT = 5
    QUOTA_HIT = 6
    SCAN = 7
    PING = 8
    HELLO = 9
    SET_NX = 10
    TTL = 11
    INCR = 12
    QUOTA_PEEK = 13


@dataclass(frozen=True, slots=True)
class Request:
    call_id: int
    op: Op
    args: tuple[Any, ...]


# Argument kinds, checked in order: "key" (str), "keys" (list of str), "bin",
# "int" (not bool), "num" (finite int or float).
_ARGS: Final[dict[Op, tuple[str, ...]]] = {
    Op.GET: ("key",),
    Op.GET_MANY: ("keys",),
    Op.SET: ("key", "bin", "num"),
    Op.DELETE: ("key",),
    Op.RATE_HIT: ("key", "int", "num"),
    Op.QUOTA_HIT: ("key", "int", "int"),
    Op.SCAN: ("key",),
    Op.PING: (),
    Op.HELLO: ("key",),
    Op.SET_NX: ("key", "bin", "num"),
    Op.TTL: ("key",),
    Op.INCR: ("key", "num"),
    Op.QUOTA_PEEK: ("key", "int"),
}
_OPS: Final = {int(op): op for op in Op}

# Keys may carry surrogate escapes (see the module docstring): both sides
# pack and unpack strings with the same error handler, so they round-trip.
_UNICODE_ERRORS: Final = "surrogateescape"


def _packer() -> msgpack.Packer:
    return msgpack.Packer(use_bin_type=True, unicode_errors=_UNICODE_ERRORS)


_PACK = _packer()


def _frame(value: Any) -> bytes:
    body: bytes = _PACK.pack(value)
    if len(body) > MAX_FRAME:
        raise ValueError(f"a store frame is at most {MAX_FRAME} bytes, this one {len(body)}")
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes | bytearray | memoryview) -> int:
    """The body length a frame header announces; ProtocolError when too long."""
    (length,) = HEADER.unpack_from(header)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame of {length} bytes (at most {MAX_FRAME})")
    return int(length)


def encode_request(call_id: int, op: Op, *args: Any) -> bytes:
    """One request frame (ValueError if it would exceed MAX_FRAME)."""
    return _frame([call_id, int(op), *args])


def encode_reply(call_id: int, ok: bool, value: Any) -> bytes:
    return _frame([call_id, ok, value])


def _unpack(body: bytes | bytearray | memoryview, max_items: int) -> Any:
    try:
        return msgpack.unpackb(
            body, raw=False, use_list=True, strict_map_key=True,
            unicode_errors=_UNICODE_ERRORS,
            max_str_len=MAX_KEY_BYTES, max_bin_len=MAX_FRAME,
            max_array_len=max_items, max_map_len=0, max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not valid msgpack: {exc}") from None


def _call_id(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_ID:
        raise ProtocolError("the call id must be an integer >= 0")
    return value


def _key(value: Any) -> bool:
    return type(value) is str


def _keys(value: Any) -> bool:
    return type(value) is list and all(type(k) is str for k in value)


def _bin(value: Any) -> bool:
    return type(value) is bytes


def _int(value: Any) -> bool:
    return type(value) is int  # not bool


def _num(value: Any) -> bool:
    return (type(value) is float and math.isfinite(value)) or type(value) is int


_KINDS: Final = {"key": (_key, "a string key"), "keys": (_keys, "a list of string keys"),
                 "bin": (_bin, "binary"), "int": (_int, "an integer"),
                 "num": (_num, "a finite number")}
#: Per op: each argument's check and what it must be (for the error).
_CHECKS: Final = {op: tuple(_KINDS[kind] for kind in kinds) for op, kinds in _ARGS.items()}


def decode_request(body: bytes | bytearray | memoryview) -> Request:
    """Validate one request frame's body (without its header); raise ProtocolError."""
    message = _unpack(body, MAX_KEYS)
    if type(message) is not list or len(message) < 2:
        raise ProtocolError("a request is an array [call_id, op, *args]")
    call_id = _call_id(message[0])
    op = _OPS.get(message[1]) if type(message[1]) is int else None
    if op is None:
        raise ProtocolError(f"unknown op {message[1]!r:.40}")
    checks = _CHECKS[op]
    args = message[2:]
    if len(args) != len(checks):
        raise ProtocolError(f"{op.name} takes {len(checks)} arguments, got {len(args)}")
    for index, (valid, what) in enumerate(checks):
        if not valid(args[index]):
            raise ProtocolError(f"{op.name} argument {index} must be {what}")
    if op is Op.SET or op is Op.RATE_HIT:  # a TTL or window may come as an integer
        args[2] = float(args[2])
    return Request(call_id, op, tuple(args))


def decode_reply(body: bytes | bytearray | memoryview) -> tuple[int, bool, Any]:
    """(call_id, ok, value) of one reply frame's body; raise ProtocolError.

    The value's shape is checked by the caller, which knows the op it asked."""
    message = _unpack(body, MAX_REPLY_ITEMS)
    if type(message) is not list or len(message) != 3 or type(message[1]) is not bool:
        raise ProtocolError("a reply is an array [call_id, ok, value]")
    return _call_id(message[0]), message[1], message[2]
