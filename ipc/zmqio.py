"""Cheap ZeroMQ sends and receives for the hooks socket (both ends).

pyzmq's `send_multipart`/`recv_multipart` cost several microseconds per frame
in Python (flag enums, per-frame option lookups); on the hook round trip
those add up on every request.  A protocol message is one frame
(ipc/protocol.py), so these helpers make one `send`/`recv` call per frame
with plain integer flags.  A batch (ipc/protocol.py) is one ZeroMQ message
of several frames: `send_frames(sock, *frames)` hands it to the I/O thread
at once.

Whether more frames follow is read from the received frame (`Frame.more`),
not with `getsockopt(RCVMORE)`: pyzmq 27 turns every option number into its
`SocketOption` enum first, about a microsecond per call, twice per message
on a ROUTER.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Final

import zmq

from ipc.protocol import MAX_BATCH

__all__ = ["BATCH_BYTES", "MAX_FRAMES", "NOBLOCK", "batch_bounds", "readable", "recv_frames",
           "recv_routed", "send_frames"]

NOBLOCK: Final = int(zmq.NOBLOCK)
_MORE: Final = int(zmq.SNDMORE) | NOBLOCK
_EVENTS: Final = int(zmq.EVENTS)
_POLLIN: Final = int(zmq.POLLIN)
#: Frames kept of one received message besides a ROUTER's routing id: a batch's
#: bound and one more.  A longer message is read to its end and returned with
#: this many; its receiver refuses it (more than MAX_BATCH: no peer of ours
#: sends that), instead of holding any number of frames at once.
MAX_FRAMES: Final = MAX_BATCH + 1


#: A batch is closed once it holds this many bytes, and a larger message travels
#: alone: next to copying a body, the wake-up a batch saves is nothing, and a batch
#: of bodies would keep several of them in memory at once on both sides.
BATCH_BYTES: Final = 64 * 1024


def batch_bounds(frames: Sequence[bytes]) -> Iterator[tuple[int, int]]:
    """(start, stop) of each ZeroMQ message `frames` go out in, in order: at most
    MAX_BATCH frames, and no more than BATCH_BYTES unless one frame alone is."""
    start = size = 0
    for index, frame in enumerate(frames):
        if index > start and (index - start >= MAX_BATCH or size + len(frame) > BATCH_BYTES):
            yield start, index
            start = index
            size = 0
        size += len(frame)
    if start < len(frames):
        yield start, len(frames)


def send_frames(sock: zmq.Socket[bytes], *frames: bytes) -> None:
    """Send one message without blocking; raises zmq.Again / zmq.ZMQError."""
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        sock.send(frame, NOBLOCK if index == last else _MORE)


def recv_frames(sock: zmq.Socket[bytes]) -> list[bytes]:
    """One whole message without blocking; raises zmq.Again when none is waiting."""
    frame = sock.recv(NOBLOCK, copy=False)
    return _to_the_end(sock, [frame.bytes], frame)


def recv_routed(sock: zmq.Socket[bytes]) -> list[bytes]:
    """`recv_frames` for a ROUTER: the routing id, then the frames the peer sent.

    A ROUTER always has a frame after the routing id, so the id is received
    as plain bytes without looking at its MORE flag.
    """
    routing_id = sock.recv(NOBLOCK)
    frame = sock.recv(NOBLOCK, copy=False)
    return _to_the_end(sock, [routing_id, frame.bytes], frame, MAX_FRAMES + 1)


def _to_the_end(sock: zmq.Socket[bytes], frames: list[bytes], last: zmq.Frame,
                keep: int = MAX_FRAMES) -> list[bytes]:
    """The message's remaining frames after `last`, up to `keep` frames in all."""
    while last.more:
        last = sock.recv(NOBLOCK, copy=False)
        if len(frames) < keep:
            frames.append(last.bytes)
    return frames


def readable(sock: zmq.Socket[bytes]) -> bool:
    """Whether a message is waiting (ZMQ_EVENTS; also re-arms the edge of ZMQ_FD)."""
    return bool(int(sock.getsockopt(_EVENTS)) & _POLLIN)
