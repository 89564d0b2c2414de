"""The status snapshot: what `coproc status` (and SIGUSR1's log line) shows."""

from __future__ import annotations

import os
from typing import Any

from supervisor.core import SupervisorCore
from supervisor.recycle import rss_bytes

__all__ = ["StatusSnapshot"]


class StatusSnapshot(SupervisorCore):
    def snapshot(self, now: float) -> dict[str, Any]:
        """What `coproc status` shows (JSON-ready)."""
        gateway, worker = self._gateway.child, self._worker.child if self._worker else None
        active, handover = self._active, self._handover
        beat = active.heartbeat if active else {}
        silent = worker.silent_for(now) if worker else None
        return {
            "pid": os.getpid(), "phase": self._phase.value,
            "uptime_s": round(now - self._started_at, 3), "started_at": self._started_wall,
            "gateway": {"state": self._gateway.state.value,
                        "pid": gateway.pid if gateway else None,
                        "stats": self._gateway_stats},
            "worker": {
                "state": self._worker.state.value if self._worker else "disabled",
                "generation": worker.generation if worker else None,
                "pid": worker.pid if worker else None,
                "uptime_s": round(now - worker.started_at, 3) if worker else None,
                "rss_bytes": rss_bytes(worker.pid) if worker else None,
                "inflight": beat.get("inflight"), "calls": beat.get("calls"),
                "heartbeat_age_s": round(silent, 3) if silent is not None else None,
                "restarts": self._restarts, "hot_restarts": handover.count,
                "candidate": handover.candidate.generation if handover.candidate else None,
                "retiring": sorted(c.generation for c in handover.retiring),
                "plugins": active.report if active else {},
                "sandbox": self._worker.sandbox if self._worker and worker else {},
            },
            "reload": {"running": handover.reload.outcome() if handover.reload else None,
                       "last": handover.last},
            "last_exits": self._exits.as_list(),
            "bundles": self._bundles.status() if self._bundles is not None else [],
        }
