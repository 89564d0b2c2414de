"""Cheap ZeroMQ sends and receives for the hooks socket (both ends).

pyzmq's `send_multipart`/`recv_multipart` cost several microseconds per frame
in Python (flag enums, per-frame option lookups); on the hook round trip
those add up on every request.  A protocol message is one frame
(ipc/protocol.py), so these helpers make one `send`/`recv` call per frame
with plain integer flags.
"""

from __future__ import annotations

from typing import Final

import zmq

__all__ = ["MAX_FRAMES", "NOBLOCK", "readable", "recv_frames", "send_frames"]

NOBLOCK: Final = int(zmq.NOBLOCK)
_MORE: Final = int(zmq.SNDMORE) | NOBLOCK
_RCVMORE: Final = int(zmq.RCVMORE)
_EVENTS: Final = int(zmq.EVENTS)
_POLLIN: Final = int(zmq.POLLIN)
#: Frames kept of one received message; a longer one is read to its end and
#: returned with this many (the decoder then refuses it: it is not ours).
MAX_FRAMES: Final = 4


def send_frames(sock: zmq.Socket[bytes], *frames: bytes) -> None:
    """Send one message without blocking; raises zmq.Again / zmq.ZMQError."""
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        sock.send(frame, NOBLOCK if index == last else _MORE)


def recv_frames(sock: zmq.Socket[bytes]) -> list[bytes]:
    """One whole message without blocking; raises zmq.Again when none is waiting."""
    frames = [sock.recv(NOBLOCK)]
    while sock.getsockopt(_RCVMORE):
        frame = sock.recv(NOBLOCK)
        if len(frames) < MAX_FRAMES:
            frames.append(frame)
    return frames


def readable(sock: zmq.Socket[bytes]) -> bool:
    """Whether a message is waiting (ZMQ_EVENTS; also re-arms the edge of ZMQ_FD)."""
    return bool(int(sock.getsockopt(_EVENTS)) & _POLLIN)
