"""Is a child hung?  Two questions, both answered from the supervisor's clock.

- Boot: a child that has not said `ready` within `boot_timeout_ms` is stuck
  (a worker importing plugins, or unable to reach the gateway) and never will.
- Signs of life come from the child's event loop, not from a side thread, so
  whatever blocks the loop stops them; `heartbeat_timeout_ms` of silence
  after `ready` means hung.  The worker sends `heartbeat`; a gateway process's
  `status` report (every second) counts as one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

from config.gateway import GatewayConfig

__all__ = ["GATEWAY_STATUS_S", "Deadlines", "gateway_deadlines", "hang_reason"]

#: How often a gateway process reports `status` (gateway/control.py report_status).
GATEWAY_STATUS_S: Final = 1.0


class Deadlines(Protocol):
    """What a hang check needs (`WorkerOptions` for the worker)."""

    @property
    def boot_timeout_ms(self) -> int: ...

    @property
    def heartbeat_timeout_ms(self) -> int: ...


@dataclass(frozen=True, slots=True)
class _Fixed:
    boot_timeout_ms: int
    heartbeat_timeout_ms: int


def gateway_deadlines(cfg: GatewayConfig) -> Deadlines | None:
    """A gateway process is hung when its loop has not reported for
    `coproc.gateway.hang_timeout_ms` (0: never checked); it must be serving within
    the worker's boot timeout."""
    timeout = cfg.gateway.hang_timeout_ms
    if timeout <= 0:
        return None
    return _Fixed(cfg.worker.boot_timeout_ms, max(timeout, round(2 * GATEWAY_STATUS_S * 1000)))


def hang_reason(started_at: float, silent_for: float | None, now: float,
                opts: Deadlines) -> str | None:
    """Why the worker counts as hung, or None.  `silent_for` is None before `ready`."""
    if silent_for is None:
        if now - started_at > opts.boot_timeout_ms / 1000:
            return f"not ready within {opts.boot_timeout_ms} ms"
        return None
    if silent_for > opts.heartbeat_timeout_ms / 1000:
        return f"no heartbeat for {round(silent_for * 1000)} ms"
    return None
