"""The store protocol's one validating decode (ipc/store_protocol.py): hostile input is a
ProtocolError, never a crash or an unchecked value."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest

from ipc.schema import ProtocolError
from ipc.store_protocol import (
    HEADER,
    MAX_FRAME,
    MAX_KEY_BYTES,
    MAX_KEYS,
    Op,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    frame_length,
)


def body(frame: bytes) -> bytes:
    assert frame_length(frame[:HEADER.size]) == len(frame) - HEADER.size
    return frame[HEADER.size:]


def packed(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


@pytest.mark.parametrize(("op", "args"), [
    (Op.GET, ("apikey-abc",)),
    (Op.GET_MANY, (["a", "b"],)),
    (Op.SET, ("k", b"\x00value", 1.5)),
    (Op.SET, ("k", b"", 0)),
    (Op.DELETE, ("k",)),
    (Op.RATE_HIT, ("rate-k", 10, 1.0)),
    (Op.QUOTA_HIT, ("quota-k", 5, 3600)),
    (Op.QUOTA_PEEK, ("quota-k", 5)),
    (Op.SCAN, ("apikey-",)),
    (Op.PING, ()),
    (Op.HELLO, ("a1b2c3",)),
])
def test_every_op_round_trips(op: Op, args: tuple[Any, ...]) -> None:
    request = decode_request(body(encode_request(7, op, *args)))
    assert (request.call_id, request.op) == (7, op)
    assert request.args == tuple(float(a) if isinstance(a, int) and op is Op.SET and i == 2
                                 else a for i, a in enumerate(args))


def test_keys_with_non_utf8_header_bytes_round_trip() -> None:
    """aiohttp hands over header bytes that are not UTF-8 surrogate-escaped."""
    key = "apikey-\udcff\udc80x"
    assert decode_request(body(encode_request(1, Op.GET, key))).args == (key,)
    assert decode_reply(body(encode_reply(1, True, [key])))[2] == [key]


@pytest.mark.parametrize("message", [
    None, 1, "text", {}, {"op": 1}, [], [1],  # not [call_id, op, *args]
    [-1, 1, "k"], [True, 1, "k"], [1.0, 1, "k"], [1 << 63, 1, "k"],  # call ids
    [1, 0], [1, 99], [1, "GET", "k"], [1, True, "k"], [1, 1.0, "k"],  # ops
    [1, 1], [1, 1, "k", "extra"], [1, 8, "x"], [0, 9], [0, 9, b"token"],  # arity, types
    [1, 1, b"bytes-key"], [1, 1, 5], [1, 1, None], [1, 1, ["k"]],  # key types
    [1, 2, "k"], [1, 2, ["a", 1]], [1, 2, [b"a"]],  # GET_MANY keys
    [1, 3, "k", "str-value", 0], [1, 3, "k", b"v", "0"], [1, 3, "k", b"v", None],
    [1, 3, "k", b"v", float("nan")], [1, 3, "k", b"v", float("inf")], [1, 3, "k", b"v", True],
    [1, 5, "k", 1.5, 1], [1, 5, "k", True, 1], [1, 5, "k", 1, "1"],  # RATE_HIT
    [1, 6, "k", 1, 1.5], [1, 6, "k", 1, False],  # QUOTA_HIT: renewal is an integer
    [1, 1, {"k": 1}],  # maps are never part of the protocol
])
def test_invalid_requests_are_protocol_errors(message: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_request(packed(message))


@pytest.mark.parametrize("raw", [
    b"", b"\xc1", b"\x92\x01", b"\xd9\x05ab",  # reserved byte, truncated
    packed([1, 1, "k"]) + b"\x00",  # trailing bytes
    b"\x91" * 5000 + b"\xc0",  # nesting
    packed([1, 1, msgpack.ExtType(1, b"x")]),  # ext types
    packed([1, 1, "k" * (MAX_KEY_BYTES + 1)]),  # an oversized key
    packed([1, 2, ["k"] * (MAX_KEYS + 1)]),  # too many keys
])
def test_malformed_msgpack_is_a_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_request(raw)


def test_oversized_frames_are_refused_from_their_header() -> None:
    assert frame_length(HEADER.pack(MAX_FRAME)) == MAX_FRAME
    with pytest.raises(ProtocolError, match="at most"):
        frame_length(HEADER.pack(MAX_FRAME + 1))
    with pytest.raises(ValueError, match="at most"):
        encode_request(1, Op.SET, "k", b"x" * MAX_FRAME, 0)


@pytest.mark.parametrize("message", [[1, 1], [1, "yes", None], [-1, True, None], {}, "x"])
def test_invalid_replies_are_protocol_errors(message: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_reply(packed(message))


def test_random_bytes_never_escape_as_another_error() -> None:
    """A fuzz pass: random and mutated frames give a Request or a ProtocolError."""
    rng = random.Random(16)
    valid = body(encode_request(3, Op.RATE_HIT, "rate-k", 10, 1.0))
    for _ in range(3000):
        if rng.random() < 0.5:
            raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        else:
            mutated = bytearray(valid)
            for _ in range(rng.randrange(1, 4)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            raw = bytes(mutated)
        try:
            decode_request(raw)
        except ProtocolError:
            pass
