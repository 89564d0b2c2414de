"""Is the worker hung?  Two questions, both answered from the supervisor's clock.

- Boot: a worker that has not said `ready` within `boot_timeout_ms` is stuck
  importing plugins (or cannot reach the gateway) and never will.
- Heartbeats come from the worker's event loop, not from a side thread, so a
  plugin that blocks the loop stops them; `heartbeat_timeout_ms` of silence
  after `ready` means hung.
"""

from __future__ import annotations

from config.gateway import WorkerOptions

__all__ = ["hang_reason"]


def hang_reason(started_at: float, silent_for: float | None, now: float,
                opts: WorkerOptions) -> str | None:
    """Why the worker counts as hung, or None.  `silent_for` is None before `ready`."""
    if silent_for is None:
        if now - started_at > opts.boot_timeout_ms / 1000:
            return f"not ready within {opts.boot_timeout_ms} ms"
        return None
    if silent_for > opts.heartbeat_timeout_ms / 1000:
        return f"no heartbeat for {round(silent_for * 1000)} ms"
    return None
