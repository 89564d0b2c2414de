"""The one validating decode: round trips, refusals, and fuzzing."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipc.control import decode_control, encode_control
from ipc.notify import format_notify, parse_notify
from ipc.protocol import Limits, MsgType, ProtocolError, decode, encode
from ipc.tokens import verify_worker_token, worker_token

CALL = {
    "api_id": "a", "hook_type": "pre", "hook_name": "H", "timeout_ms": 10,
    "object": {
        "request": {"headers": {"X": "1"}, "raw_body": b"\x00\xff", "delete_headers": ["Y"],
                    "return_overrides": {"response_code": -1}},
        "session": {"rate": 1, "metadata": {"token": "t"}, "access_rights": {
            "a": {"api_id": "a", "versions": ["v1"]}}},
        "response": {"multivalue_headers": [{"key": "Set-Cookie", "values": ["a", "b"]}]},
    },
}


def test_round_trip_keeps_every_field() -> None:
    message = decode(encode(MsgType.CALL, 2**64 - 1, CALL))
    assert message.type is MsgType.CALL
    assert message.call_id == 2**64 - 1
    assert message.payload == CALL


@pytest.mark.parametrize(
    ("frames", "error"),
    [
        ([b"\x03\x04" + b"\0" * 8 + b"\x80", b""], "expected 1 frame"),
        ([b"\x03\x04", b"\0" * 8, b"\x80"], "expected 1 frame"),
        ([b"\x02\x04" + b"\0" * 8 + b"\x80"], "version 2"),
        ([b"\x03\x63" + b"\0" * 8 + b"\x80"], "unknown message type"),
        ([b"\x03\x04" + b"\0" * 7], "at least 10 bytes"),
        ([b"\x03\x07" + b"\0" * 8 + b"\xc1"], "msgpack"),
        ([b"\x03\x07" + b"\0" * 8 + msgpack.packb([1])], "expected a map"),
        ([b"\x03\x07" + b"\0" * 8 + msgpack.packb({"generation": True})], "expected int"),
        ([b"\x03\x07" + b"\0" * 8 + msgpack.packb({"generation": 1, "x": 1})],
         "unknown field"),
        ([b"\x03\x01" + b"\0" * 8 + msgpack.packb({"generation": 1})], "missing field"),
        ([b"\x03\x0b" + b"\0" * 8 + msgpack.packb({"op": "exec"})], "unknown op"),
    ],
)
def test_invalid_messages_are_refused(frames: list[bytes], error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        decode(frames)


def test_nested_object_fields_are_checked_with_their_path() -> None:
    bad = dict(CALL, object={"request": {"headers": {"X": 1}}})
    with pytest.raises(ProtocolError, match=r"CALL\.object\.request\.headers\.X"):
        decode(encode(MsgType.CALL, 1, bad))


def test_size_limit_applies_before_unpacking() -> None:
    frames = encode(MsgType.HEARTBEAT, 0, {"generation": 1})
    with pytest.raises(ProtocolError, match="exceeds"):
        decode(frames, Limits(max_message_bytes=len(frames[0]) - 10 - 1))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=6))
def test_random_frames_never_escape_as_other_errors(frames: list[bytes]) -> None:
    try:
        decode(frames)
    except ProtocolError:
        pass


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(MsgType)), st.dictionaries(st.text(max_size=12), _VALUES, max_size=5))
def test_random_payloads_either_decode_or_raise_protocol_error(mtype: MsgType,
                                                              payload: dict[str, object]) -> None:
    try:
        decode(encode(mtype, 1, payload))
    except ProtocolError:
        pass


def test_control_messages_validate() -> None:
    ready = {"type": "ready", "role": "worker", "pid": 3, "generation": 1,
             "plugins": {"a": {"ok": True, "hooks": ["H"]}}}
    assert decode_control(encode_control(ready)) == ready
    with pytest.raises(ProtocolError, match="unknown control message"):
        decode_control(encode_control({"type": "reboot"}))
    with pytest.raises(ProtocolError, match="generation"):
        decode_control(encode_control({"type": "worker_exited", "reason": "x"}))


def test_tokens_are_per_generation() -> None:
    key = b"x" * 32
    assert verify_worker_token(key, 3, worker_token(key, 3))
    assert not verify_worker_token(key, 4, worker_token(key, 3))
    assert not verify_worker_token(b"y" * 32, 3, worker_token(key, 3))


def test_notify_format_round_trip() -> None:
    assert parse_notify(format_notify(ready=1, status="Serving")) == {
        "READY": "1", "STATUS": "Serving"}


def test_the_thread_packer_is_kept_for_small_messages_and_dropped_after_a_large_one() -> None:
    """A msgpack Packer keeps its buffer at the largest message it packed: reused for
    small messages (cheaper than one per call), let go after a large inline body."""
    from ipc import protocol

    encode(MsgType.HEARTBEAT, 0, {"generation": 1})
    kept = protocol._packers.packer
    encode(MsgType.HEARTBEAT, 0, {"generation": 2})
    assert protocol._packers.packer is kept is not None
    big = {"api_id": "a", "hook_type": "pre", "hook_name": "h",
           "object": {"request": {"raw_body": b"x" * (protocol._PACKER_KEEP_BYTES + 1)}}}
    assert decode(encode(MsgType.CALL, 1, big)).payload == big
    assert protocol._packers.packer is None
