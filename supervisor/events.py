"""What the reconcile loop reacts to; everything reaches it through one queue.

Signal handlers, the control-socket readers, the control server (`coproc
status|reload|...`, as `ControlRequest`) and the pidfd readers only build
one of these and enqueue it: no decision is taken outside the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from supervisor.child import ChildProcess
from supervisor.control_server import ControlRequest

__all__ = ["ControlEvent", "ControlRequest", "Event", "ReapEvent", "SignalEvent"]


@dataclass(frozen=True, slots=True)
class SignalEvent:
    signum: int


@dataclass(frozen=True, slots=True)
class ControlEvent:
    """One valid control message, from the child whose socket it came on."""

    child: ChildProcess
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ReapEvent:
    """Some child may have exited (pidfd readable, SIGCHLD): reconcile now."""


Event: TypeAlias = SignalEvent | ControlEvent | ReapEvent | ControlRequest
