"""The worker's channel: batches out as one ZeroMQ message, batches in message by message."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator

import pytest
import zmq

from ipc.protocol import MAX_BATCH, Message, MsgType, decode, encode
from worker.channel import Channel

STEP_S = 2.0


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[bytes], Channel]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    run_dir = tempfile.mkdtemp(prefix="cpch-")
    endpoint = f"ipc://{run_dir}/hooks.sock"
    router.bind(endpoint)
    channel = Channel(endpoint)
    try:
        yield router, channel
    finally:
        channel.close()
        router.close()
        ctx.term()
        shutil.rmtree(run_dir, ignore_errors=True)


def _recv(router: zmq.Socket[bytes]) -> list[bytes]:
    assert router.poll(int(STEP_S * 1000)), "nothing from the channel in time"
    return router.recv_multipart()


def _drain_until(channel: Channel, count: int) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + STEP_S
    while len(got) < count and time.monotonic() < deadline:
        got.extend(channel.drain())
        time.sleep(0.005)
    return got


def _identity(router: zmq.Socket[bytes], channel: Channel) -> bytes:
    """The channel's routing id, once it is connected (IMMEDIATE: sends fail before)."""
    deadline = time.monotonic() + STEP_S
    while not channel.send(MsgType.DRAIN_ACK, 0, {"inflight": 0}):
        assert time.monotonic() < deadline, "the channel never connected"
        time.sleep(0.005)
    return _recv(router)[0]


def test_messages_sent_together_leave_as_one_zeromq_message(
        pair: tuple[zmq.Socket[bytes], Channel]) -> None:
    router, channel = pair
    _identity(router, channel)
    sent = channel.send_many([(MsgType.REPLY, n, {"object": {}}) for n in (1, 2, 3)])
    assert sent == 3
    frames = _recv(router)
    assert len(frames) == 4  # the routing id and one frame per message
    assert [decode([f]).call_id for f in frames[1:]] == [1, 2, 3]


def test_a_batch_larger_than_the_bound_is_split(pair: tuple[zmq.Socket[bytes], Channel]) -> None:
    router, channel = pair
    _identity(router, channel)
    total = MAX_BATCH + 5
    assert channel.send_many([(MsgType.REPLY, n, {"object": {}}) for n in range(total)]) == total
    sizes = [len(_recv(router)) - 1, len(_recv(router)) - 1]
    assert sizes == [MAX_BATCH, 5]


def test_a_received_batch_is_decoded_frame_by_frame(
        pair: tuple[zmq.Socket[bytes], Channel]) -> None:
    router, channel = pair
    peer = _identity(router, channel)
    call = {"api_id": "a", "hook_type": "pre", "hook_name": "h", "object": {}}
    router.send_multipart([peer, encode(MsgType.CALL, 1, call), b"\x03garbage",
                           encode(MsgType.CALL, 2, call)])
    got = _drain_until(channel, 2)
    assert [m.call_id for m in got] == [1, 2]
    assert channel.invalid == 1


def test_a_batch_over_the_bound_is_dropped_whole(
        pair: tuple[zmq.Socket[bytes], Channel]) -> None:
    router, channel = pair
    peer = _identity(router, channel)
    call = encode(MsgType.CALL, 1, {"api_id": "a", "hook_type": "pre", "hook_name": "h",
                                    "object": {}})
    router.send_multipart([peer] + [call] * (MAX_BATCH + 1))
    router.send_multipart([peer, encode(MsgType.RESYNC, 0, {})])
    got = _drain_until(channel, 1)
    assert [m.type for m in got] == [MsgType.RESYNC]
    assert channel.invalid == 1
