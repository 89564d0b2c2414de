"""ipc.protocol.peek_call_id: the header's call_id of a message decode refuses."""

from __future__ import annotations

from ipc.protocol import MsgType, encode, peek_call_id


def test_peek_reads_the_call_id_of_a_message_with_a_broken_payload() -> None:
    frame = encode(MsgType.REPLY, 0x0102030405060708, {"object": {}})
    assert peek_call_id(frame) == 0x0102030405060708
    assert peek_call_id(frame[:10] + b"\xc1garbage") == 0x0102030405060708


def test_peek_gives_none_without_a_whole_header() -> None:
    frame = encode(MsgType.REPLY, 7, {"object": {}})
    assert peek_call_id(frame[:9]) is None
    assert peek_call_id(b"") is None
