"""The event loop's watch on children: their datagrams and exits become events.

A child's control socket and pidfd are added to the loop when it is spawned
and removed when it is reaped; callbacks only enqueue (`ControlEvent`,
`ReapEvent`), so every decision is taken by the reconcile loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from supervisor.child import ChildProcess
from supervisor.events import ControlEvent, Event, ReapEvent

__all__ = ["ChildReaders"]


class ChildReaders:
    def __init__(self, post: Callable[[Event], None]) -> None:
        self._post = post
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the supervisor runs on (known only once it runs)."""
        self._loop = loop

    def watch(self, child: ChildProcess) -> None:
        assert self._loop is not None  # bound before the first spawn; not wire input
        self._loop.add_reader(child.fileno(), self._on_readable, child)
        if child.pidfd is not None:
            self._loop.add_reader(child.pidfd, self._on_pidfd, child)

    def forget(self, child: ChildProcess) -> None:
        """Stop watching a reaped child and release its fds."""
        assert self._loop is not None
        self._loop.remove_reader(child.fileno())
        if child.pidfd is not None:
            self._loop.remove_reader(child.pidfd)
        child.close()

    def _on_readable(self, child: ChildProcess) -> None:
        for message in child.read_messages():
            self._post(ControlEvent(child, message))

    def _on_pidfd(self, child: ChildProcess) -> None:
        # Level-triggered and readable until reaped: stop watching, then wake.
        assert self._loop is not None and child.pidfd is not None
        self._loop.remove_reader(child.pidfd)
        self._post(ReapEvent())
