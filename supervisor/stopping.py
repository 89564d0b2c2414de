"""The staged stop: the gateway drains first, then the worker; KILL at the deadline.

A second stop request (or SIGQUIT) means now; see `shutdown.StopPlan` for
the schedule.
"""

from __future__ import annotations

import logging

from supervisor.core import Phase, SupervisorCore
from supervisor.shutdown import FINAL_REAP_S, StopPlan

__all__ = ["StopSequence"]

#: The loop's modules share one logger name: records read as they always did.
log = logging.getLogger("supervisor.supervisor")


class StopSequence(SupervisorCore):
    def _request_stop(self, now: float, why: str, immediate: bool = False,
                      exit_code: int = 0) -> None:
        if self._stop is None:
            self._begin_stop(now, why, exit_code)
        elif not immediate:
            why, immediate = f"{why} again while stopping", True
        if immediate and self._stop is not None and not self._stop.killed:
            self._kill_all(now, f"{why}: stopping now")

    def _begin_stop(self, now: float, why: str, exit_code: int) -> None:
        self._stop = StopPlan.starting_at(now, self._cfg, exit_code)
        self._phase = Phase.STOPPING
        self._status.stopping(why)
        log.info("stopping (%s): gateway drains first, then the worker; grace %d ms",
                 why, self._cfg.supervisor.stop_grace_ms)
        for slot in self._slots():
            slot.stop()
        if self._handover.candidate is not None:
            # A generation that never served has nothing to drain.
            self._handover.candidate.kill_group("stopping")
        if self._handover.reload is not None:
            self._finish_reload(self._handover.reload, "the supervisor is stopping")
        self._send_worker_state()
        if self._gateway.child is not None:
            # The worker stays up meanwhile: draining requests still run hooks.
            self._gateway.child.terminate()

    def _advance_stop(self, now: float) -> None:
        plan = self._stop
        assert plan is not None  # STOPPING implies a plan; not wire input
        worker = self._worker.child if self._worker else None
        if worker is not None and plan.worker_term_due(now, self._gateway.child is not None):
            worker.terminate()
        alive = list(self._children())
        if not alive:
            self._phase = Phase.STOPPED
        elif plan.kill_due(now):
            self._kill_all(now, f"stop grace of {self._cfg.supervisor.stop_grace_ms} ms is over")
        elif plan.give_up_due(now):
            log.error("%s survived SIGKILL for %.0f s; giving up on it",
                      ", ".join(c.name for c in alive), FINAL_REAP_S)
            self._phase = Phase.STOPPED

    def _kill_all(self, now: float, why: str) -> None:
        assert self._stop is not None
        self._stop.kill_now(now)
        for child in self._children():
            log.warning("%s: killing the process group of %s", why, child.name)
            child.kill_group(why)
