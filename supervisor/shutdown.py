"""The schedule of a staged stop (SIGTERM, SIGINT, or a gateway that keeps failing).

    t0                 SIGTERM the gateway: it stops accepting and finishes its
                       in-flight requests, whose hooks still need the worker
    gateway gone, or   SIGTERM the worker: it finishes its calls and exits 0
      t0 + min(gateway.drain_grace_ms, 80% of the grace)
    t0 + stop_grace    SIGKILL every remaining process group
    + FINAL_REAP_S     give up on a process that survives SIGKILL (D state)

A second stop signal moves the deadline to "now".  The plan only says what is
due; the supervisor does it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from config.gateway import GatewayConfig

__all__ = ["FINAL_REAP_S", "WORKER_TERM_SHARE", "StopPlan"]

#: After the final SIGKILL, how long to wait for the kernel to finish them.
FINAL_REAP_S: Final = 2.0
#: Latest share of the grace at which the worker gets SIGTERM even while the
#: gateway still drains: the worker needs the rest to finish its own calls.
WORKER_TERM_SHARE: Final = 0.8


@dataclass(slots=True)
class StopPlan:
    worker_term_at: float
    deadline: float
    exit_code: int
    killed: bool = False

    @classmethod
    def starting_at(cls, now: float, cfg: GatewayConfig, exit_code: int = 0) -> StopPlan:
        grace = cfg.supervisor.stop_grace_ms / 1000
        worker_term = min(cfg.gateway.drain_grace_ms / 1000, grace * WORKER_TERM_SHARE)
        return cls(worker_term_at=now + worker_term, deadline=now + grace, exit_code=exit_code)

    def worker_term_due(self, now: float, gateway_alive: bool) -> bool:
        return not gateway_alive or now >= self.worker_term_at

    def kill_due(self, now: float) -> bool:
        return not self.killed and now >= self.deadline

    def give_up_due(self, now: float) -> bool:
        return self.killed and now >= self.deadline + FINAL_REAP_S

    def kill_now(self, now: float) -> None:
        self.killed, self.deadline = True, min(self.deadline, now)
