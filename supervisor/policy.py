"""When to start a child again after it exited, and when to stop trying.

The policy is fed events (`started`, `ready`, `exited`) and reads its own
clock, so tests drive it with a fake clock and no processes.

- Backoff: the first restart waits `initial`, each further one doubles, up to
  `maximum`, so a crash loop does not burn a CPU or flood the log.
- Reset: a child that was ready for `stable_s` earned a fresh start; its next
  crash restarts after `initial` again.  Readiness, not spawn time, is what
  counts: a worker that spends 20 s failing to load plugins was never stable.
- Flapping: `flap_max_exits` exits within `flap_window_s` means restarting
  does not help (a broken deploy, a plugin that crashes on import): the slot
  goes FATAL and the operator is told.  FATAL is not forever: after a
  cool-off (FATAL_COOLOFF_S, doubling with each FATAL up to
  FATAL_COOLOFF_MAX_S) the child is tried again, so a transient cause (a
  dependency that was down, an operator's kill -9 spree) heals by itself
  while a broken deploy costs one attempt per cool-off.  A stable period
  resets the cool-off as it resets the backoff.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from config.gateway import SupervisorOptions

__all__ = ["FATAL_COOLOFF_MAX_S", "FATAL_COOLOFF_S", "STABLE_AFTER_S", "RestartPolicy",
           "Verdict"]

#: Ready this long without exiting and the backoff starts over.
STABLE_AFTER_S = 10.0
#: First retry of a FATAL child after this long; each further FATAL doubles it ...
FATAL_COOLOFF_S = 30.0
#: ... up to this (an operator's `coproc restart-worker` retries at once).
FATAL_COOLOFF_MAX_S = 600.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do about one exit."""

    fatal: bool
    delay_s: float  # until the next start: the backoff, or the FATAL cool-off
    recent_exits: int  # exits within the flapping window, this one included


class RestartPolicy:
    def __init__(self, initial_s: float, maximum_s: float, flap_max_exits: int,
                 flap_window_s: float, stable_s: float = STABLE_AFTER_S,
                 clock: Callable[[], float] = time.monotonic,
                 cooloff_s: float = FATAL_COOLOFF_S,
                 cooloff_max_s: float = FATAL_COOLOFF_MAX_S) -> None:
        self._initial = initial_s
        self._maximum = max(maximum_s, initial_s)
        self._flap_max = flap_max_exits
        self._flap_window = flap_window_s
        self._stable = stable_s
        self._clock = clock
        self._next_delay = initial_s
        self._cooloff, self._cooloff_max = cooloff_s, max(cooloff_max_s, cooloff_s)
        self._next_cooloff = cooloff_s
        self._ready_at: float | None = None
        self._exits: deque[float] = deque()

    @classmethod
    def from_options(cls, opts: SupervisorOptions,
                     clock: Callable[[], float] = time.monotonic) -> RestartPolicy:
        return cls(opts.restart_backoff_initial_ms / 1000, opts.restart_backoff_max_ms / 1000,
                   opts.flap_max_exits, float(opts.flap_window_s), clock=clock,
                   cooloff_s=FATAL_COOLOFF_S, cooloff_max_s=FATAL_COOLOFF_MAX_S)

    def started(self) -> None:
        self._ready_at = None

    def reset(self) -> None:
        """The operator asked for a fresh start (`coproc reload` after FATAL)."""
        self._next_delay, self._ready_at = self._initial, None
        self._next_cooloff = self._cooloff
        self._exits.clear()

    def ready(self) -> None:
        if self._ready_at is None:
            self._ready_at = self._clock()

    def exited(self, boot_failure: bool = False) -> Verdict:
        """Record one exit and decide; `boot_failure` exits never reset the backoff."""
        now = self._clock()
        if not boot_failure and self._ready_at is not None and now - self._ready_at >= self._stable:
            self._next_delay, self._next_cooloff = self._initial, self._cooloff
        self._ready_at = None
        self._exits.append(now)
        while self._exits and now - self._exits[0] > self._flap_window:
            self._exits.popleft()
        if len(self._exits) >= self._flap_max:
            return Verdict(fatal=True, delay_s=self.cooloff(), recent_exits=len(self._exits))
        delay = self._next_delay
        self._next_delay = min(delay * 2, self._maximum)
        return Verdict(fatal=False, delay_s=delay, recent_exits=len(self._exits))

    def cooloff(self) -> float:
        """How long this FATAL lasts before the next try; the one after lasts longer."""
        cooloff = self._next_cooloff
        self._next_cooloff = min(cooloff * 2, self._cooloff_max)
        return cooloff
