"""What the reconcile loop reacts to; everything reaches it through one queue.

Signal handlers, the control-socket readers, the control server (`coproc
status|reload|...`, as `ControlRequest`) and the pidfd readers only build
one of these and enqueue it: no decision is taken outside the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeAlias

from ipc.control import ControlMessage
from supervisor.child import ChildProcess
from supervisor.control_server import ControlRequest

__all__ = ["SIGNALS", "ControlEvent", "ControlRequest", "Event", "ReapEvent", "SignalEvent",
           "install_signals", "remove_signals"]

#: The signals the supervisor handles (docs/OPERATIONS.md has the table).
SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1)


@dataclass(frozen=True, slots=True)
class SignalEvent:
    signum: int


@dataclass(frozen=True, slots=True)
class ControlEvent:
    """One valid control message, from the child whose socket it came on."""

    child: ChildProcess
    message: ControlMessage


@dataclass(frozen=True, slots=True)
class ReapEvent:
    """Some child may have exited (pidfd readable, SIGCHLD): reconcile now."""


Event: TypeAlias = SignalEvent | ControlEvent | ReapEvent | ControlRequest


def install_signals(loop: asyncio.AbstractEventLoop, post: Callable[[Event], None]) -> None:
    """Handlers that only enqueue."""
    for signum in SIGNALS:
        loop.add_signal_handler(signum, post, SignalEvent(signum))
    # uvloop keeps SIGCHLD for itself; pidfds and the tick still reap.
    with contextlib.suppress(RuntimeError):
        loop.add_signal_handler(signal.SIGCHLD, post, ReapEvent())


def remove_signals(loop: asyncio.AbstractEventLoop) -> None:
    for signum in (*SIGNALS, signal.SIGCHLD):
        loop.remove_signal_handler(signum)
