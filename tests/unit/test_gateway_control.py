"""The gateway's control channel: supervisor news in, ready/status out."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import msgpack
import pytest

from gateway.control import ControlChannel, dispatch, report_status, status_message
from ipc.control import ControlType, decode_control, encode_control, make_control_pair


class Events:
    def __init__(self, expected: int = 0) -> None:
        self.seen: list[tuple[Any, ...]] = []
        self.expected = expected
        self.all_seen = asyncio.Event()
        self.stats = {"calls": 3, "errors": 1}
        self.generation: int | None = 7

    def on_worker_exited(self, generation: int, reason: str) -> None:
        self._saw(("exited", generation, reason))

    def on_worker_state(self, state: str, generation: int | None, detail: str) -> None:
        self._saw(("state", state, generation, detail))

    def _saw(self, event: tuple[Any, ...]) -> None:
        self.seen.append(event)
        if len(self.seen) == self.expected:
            self.all_seen.set()

    def health(self) -> dict[str, Any]:
        return {"generation": self.generation, "ready": self.generation is not None}


async def test_supervisor_messages_reach_the_hook_client() -> None:
    parent, child = make_control_pair()
    events = Events(expected=3)
    channel = ControlChannel(child)
    channel.start(lambda m: dispatch(m, events))
    try:
        parent.send(b"\xc1 not msgpack")
        parent.send(msgpack.packb({"type": "worker_exited"}))  # missing fields
        parent.send(encode_control({"type": "worker_exited", "generation": 3, "reason": "kill"}))
        parent.send(encode_control({"type": "worker_state", "state": "restarting"}))
        parent.send(encode_control({"type": "worker_state", "state": "running",
                                    "generation": 4, "detail": "ok"}))
        async with asyncio.timeout(2):
            await events.all_seen.wait()
        assert events.seen == [("exited", 3, "kill"), ("state", "restarting", None, ""),
                               ("state", "running", 4, "ok")]
    finally:
        channel.close()
        parent.close()


async def test_send_ready_and_periodic_status() -> None:
    parent, child = make_control_pair()
    events = Events()
    channel = ControlChannel(child)
    assert channel.send(ControlType.READY, {"role": "gateway", "pid": 12})
    assert decode_control(parent.recv(65536)) == {"type": "ready", "role": "gateway", "pid": 12}
    task = asyncio.ensure_future(report_status(channel, events, {"requests": 5}, interval=0.01))
    try:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(2):
            datagram = await loop.sock_recv(parent, 65536)
        status = decode_control(datagram)
        assert status == {"type": "status", "active_generation": 7,
                          "stats": {"calls": 3, "errors": 1, "requests": 5}}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        channel.close()
        parent.close()


def test_status_without_a_worker_has_no_generation() -> None:
    events = Events()
    events.generation = None
    message = status_message(events, {"flag": True, "n": 2})  # type: ignore[dict-item]
    assert message == {"stats": {"calls": 3, "errors": 1, "n": 2}}
    decode_control(encode_control({"type": "status", **message}))  # valid on the wire


async def test_run_by_hand_the_channel_is_inert() -> None:
    channel = ControlChannel(None)
    channel.start(lambda m: None)
    assert not channel.send(ControlType.READY, {"role": "gateway", "pid": 1})
    channel.close()


async def test_closed_supervisor_end_stops_reading() -> None:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    child.setblocking(False)
    channel = ControlChannel(child)
    channel.start(lambda m: None)
    parent.close()
    await asyncio.sleep(0.05)  # the reader saw EOF once and was removed: no busy loop
    assert not channel.send(ControlType.READY, {"role": "gateway", "pid": 1})
    channel.close()
