"""The one validating decode: round trips, refusals, and fuzzing."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipc.control import decode_control, encode_control
from ipc.notify import format_notify, parse_notify
from ipc.protocol import Limits, MsgType, ProtocolError, decode, decode_frame, encode
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
    message = decode_frame(encode(MsgType.CALL, 2**64 - 1, CALL))
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
        decode_frame(encode(MsgType.CALL, 1, bad))


def test_size_limit_applies_before_unpacking() -> None:
    frame = encode(MsgType.HEARTBEAT, 0, {"generation": 1})
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_frame(frame, Limits(max_message_bytes=len(frame) - 10 - 1))


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
        decode_frame(encode(mtype, 1, payload))
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


def test_encode_writes_the_bytes_msgpack_writes() -> None:
    """Messages are standard msgpack, whichever library wrote them (docs/PROTOCOL.md)."""
    payload = {"api_id": "a", "hook_type": "pre", "hook_name": "h", "timeout_ms": 1000,
               "object": {"request": {"headers": {"A": "b"}, "raw_body": b"\x00\xff",
                                      "delete_headers": ["x"], "return_overrides":
                                      {"response_code": -1}},
                          "session": {"rate": 1.5, "expires": 2**63, "is_inactive": True}},
               "then": [{"hook_name": "p", "hook_type": "post", "raw_body_only": False}]}
    frame = encode(MsgType.CALL, 7, payload)
    assert frame[10:] == msgpack.packb(payload, use_bin_type=True)
    assert decode([frame]).payload == payload


@pytest.mark.parametrize("body", [
    msgpack.packb({"generation": msgpack.ExtType(5, b"x")}),  # an extension type
    b"\xd6\xff\x00\x00\x00\x01",  # a timestamp, not a map
    b"\x81\xa1g" + b"\x91" * 5000 + b"\xc0",  # nested deeper than a decoder goes
    b"\x81\x81\x01\x01\x01",  # a map as a map key
])
def test_values_msgpack_may_carry_but_the_protocol_does_not_are_refused(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode([b"\x03\x07" + b"\0" * 8 + body])


def test_a_payload_longer_than_the_container_limit_is_decoded_with_the_limits() -> None:
    """Past `max_container_items` bytes a payload could hold a longer container: the
    limit is then enforced while decoding, before the container is built."""
    limits = Limits(max_container_items=64)
    frame = encode(MsgType.ANALYTICS, 1, {"records": [{"api_id": "a"}] * 100})
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        decode([frame], limits)
    few = encode(MsgType.ANALYTICS, 1, {"records": [{"api_id": "a"}] * 3})
    assert len(few) - 10 <= 64  # the fast path
    assert decode([few], limits).payload == {"records": [{"api_id": "a"}] * 3}


def test_free_form_analytics_records_refuse_extension_types() -> None:
    """Analytics record values are not typed by the shape: the decoder itself refuses
    an extension type there (a timestamp would otherwise arrive as a datetime)."""
    for value in (msgpack.ExtType(5, b"x"), msgpack.Timestamp(1)):
        body = msgpack.packb({"records": [{"api_id": "a", "when": value}]})
        with pytest.raises(ProtocolError, match="not valid msgpack"):
            decode([b"\x03\x0e" + b"\0" * 8 + body])


def test_a_payload_nested_too_deeply_to_encode_is_a_value_error() -> None:
    """What the senders catch (TypeError, ValueError, OverflowError), not a RecursionError."""
    nested: dict[str, object] = {}
    inner = nested
    for _ in range(100_000):
        inner["x"] = inner = {}
    with pytest.raises(ValueError, match="nested too deeply"):
        encode(MsgType.HEARTBEAT, 0, nested)
    with pytest.raises(OverflowError):
        encode(MsgType.HEARTBEAT, 0, {"generation": 2**64})
