"""One supervised role (the gateway, or the worker) and what we want of it.

A slot holds at most one child, the role's restart policy and its state as
reported to the gateway (`worker_state`) and in logs.  Generations number the
children of a slot from 1 and are never reused, so a late message or token of
a dead generation can always be told apart from its successor's.
"""

from __future__ import annotations

import enum

from supervisor.child import ChildProcess, Role
from supervisor.policy import RestartPolicy, Verdict

__all__ = ["Slot", "SlotState"]


class SlotState(enum.Enum):
    # Values are the `worker_state` strings of docs/PROTOCOL.md.
    STARTING = "starting"  # a child is booting
    RUNNING = "running"  # the child said `ready`
    RESTARTING = "restarting"  # the child exited; the next one starts at `restart_at`
    FATAL = "fatal"  # flapping: the next try only after a cool-off, at `restart_at`
    STOPPING = "stopping"  # the supervisor is stopping
    STOPPED = "stopped"  # stopping, and no child left


class Slot:
    def __init__(self, role: Role, policy: RestartPolicy) -> None:
        self.role, self.policy = role, policy
        self.state = SlotState.STARTING
        self.child: ChildProcess | None = None
        self.generation = 0
        self.restart_at: float | None = 0.0  # start at once
        self.last_exit = ""

    def restart_due(self, now: float) -> bool:
        return self.child is None and self.restart_at is not None and now >= self.restart_at

    def next_generation(self) -> int:
        # Counted before the spawn: a generation that failed to start is used up too.
        self.generation += 1
        return self.generation

    def started(self, child: ChildProcess) -> None:
        self.child, self.restart_at = child, None
        self.state = SlotState.STARTING
        self.policy.started()

    def ready(self) -> None:
        if self.state is SlotState.STARTING:
            self.state = SlotState.RUNNING
            self.policy.ready()

    def exited(self, now: float, reason: str, boot_failure: bool) -> Verdict:
        """The child is gone (or never started): decide on the next one."""
        self.child, self.last_exit = None, reason
        verdict = self.policy.exited(boot_failure)
        self.state = SlotState.FATAL if verdict.fatal else SlotState.RESTARTING
        self.restart_at = now + verdict.delay_s
        return verdict

    def adopt(self, child: ChildProcess) -> None:
        """A hot-restarted generation that is already ready takes the slot over."""
        self.started(child)
        self.ready()

    def release(self) -> ChildProcess | None:
        """Hand the child over (a hot restart retires it): vacant, no restart due."""
        child, self.child = self.child, None
        self.restart_at = None
        return child

    def reinstate(self, child: ChildProcess | None, now: float, fatal: bool) -> None:
        """A hot restart failed after `release`: the child serves on; if it left
        meanwhile, FATAL again (`fatal`, the reload was to revive it) or a fresh start."""
        if child is not None and child.alive:
            self.child = child
        elif self.child is None and self.state not in (SlotState.STOPPING, SlotState.STOPPED):
            if fatal:
                self.state = SlotState.FATAL
                self.restart_at = now + self.policy.cooloff()
            elif self.restart_at is None:
                self.restart_at = now

    def revive(self, now: float) -> None:
        """Clear FATAL (operator's request, a hot restart follows): the policy starts over."""
        self.policy.reset()
        if self.state is SlotState.FATAL:
            self.state, self.restart_at = SlotState.RESTARTING, None

    def stop(self) -> None:
        """No more restarts; STOPPED once the child (if any) is reaped."""
        self.restart_at = None
        self.state = SlotState.STOPPING if self.child is not None else SlotState.STOPPED

    def stopped(self) -> None:
        self.child, self.state = None, SlotState.STOPPED
