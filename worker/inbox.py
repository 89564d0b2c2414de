"""One reader for every hooks socket: drain all the lanes' channels, else one `poll`.

The leading call thread (worker/callthreads.py) reads every gateway
process's channel at once, so that with N gateway processes one thread wakes
for all their messages, not N threads for 1/N each (more wake-ups, smaller
batches, and a GIL hand-off between them every time).  It drains each
channel that may hold messages (`Channel.pending`: touched since its last
empty drain, or its ZMQ_FD fired); when none had anything, it blocks in one
`poll` on every channel's ZMQ_FD and the shared `Waker`'s eventfd
(worker/channel.py), then drains again.

The set of lanes changes under the call threads' lock (`lanes` is replaced,
never changed in place); a reader polling the old set is poked and looks again.
"""

from __future__ import annotations

import select
import threading

from ipc.protocol import Message
from worker.channel import Channel, Waker
from worker.lane import Lane

__all__ = ["Inbox"]


class Inbox:
    """What the lanes' channels hold now, or what arrives within a timeout."""

    def __init__(self, waker: Waker) -> None:
        self.waker = waker
        #: The lanes read now (replaced as a whole: see the module docstring).
        self.lanes: tuple[Lane, ...] = ()
        # A poll object per reading thread: one may not be polled from two threads at
        # once, and the stand-in reader may overlap a call thread taking the reading
        # back for a moment (worker/callthreads.py).
        self._polls = threading.local()

    def set_lanes(self, lanes: tuple[Lane, ...]) -> None:
        self.lanes = lanes
        self.waker.poke()  # a reader polling the old set looks again

    def receive(self, timeout_s: float) -> list[tuple[Lane, list[Message]]]:
        """Each lane's valid messages waiting now, else those arriving within
        `timeout_s`; returns early, possibly with nothing, when poked."""
        lanes = self.lanes
        batches = _drain(lanes)
        if batches:
            return batches
        local = self._polls
        if getattr(local, "lanes", None) is not lanes:
            local.poll, local.by_fd = _poller(lanes, self.waker)
            local.lanes = lanes
        by_fd = local.by_fd
        for fd, _ in local.poll.poll(int(timeout_s * 1000)):
            channel = by_fd.get(fd)
            if channel is not None:
                channel.pending = True  # its edge: drain it (see worker/channel.py)
            else:  # poked (only then: an empty read is a syscall and an exception)
                self.waker.consume()
        return _drain(self.lanes)


def _drain(lanes: tuple[Lane, ...]) -> list[tuple[Lane, list[Message]]]:
    """The lanes' messages, from the channels that may hold some (`pending`)."""
    batches = []
    for lane in lanes:
        if lane.channel.pending:
            messages = lane.channel.drain()
            if messages:
                batches.append((lane, messages))
    return batches


def _poller(lanes: tuple[Lane, ...], waker: Waker) -> tuple[select.poll, dict[int, Channel]]:
    poller, by_fd = select.poll(), {}
    for lane in lanes:
        if not lane.channel.closed:
            poller.register(lane.channel.zmq_fd, select.POLLIN)
            by_fd[lane.channel.zmq_fd] = lane.channel
    poller.register(waker.fd, select.POLLIN)
    return poller, by_fd
