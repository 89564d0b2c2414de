"""The staged stop: the gateway processes drain first, then the worker (and the store
process once every gateway process is gone); KILL at the deadline.

`Shutdown` carries out a `StopPlan` (shutdown.py has the schedule) on the
watchers and the hot restart's generations.  A second stop request (or
SIGQUIT) means now.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

from config.gateway import GatewayConfig
from supervisor.child import ChildProcess, ChildState
from supervisor.hot_restart import HotRestart
from supervisor.shutdown import FINAL_REAP_S, StopPlan
from supervisor.status import ServiceStatus
from supervisor.watcher import Watcher

__all__ = ["Shutdown"]

log = logging.getLogger("coproc.supervisor.stopping")


class Shutdown:
    def __init__(self, cfg: GatewayConfig, status: ServiceStatus, gateways: Sequence[Watcher],
                 worker: Watcher | None, hot: HotRestart | None,
                 children: Callable[[], Iterable[ChildProcess]],
                 store: Watcher | None = None) -> None:
        self._cfg, self._status = cfg, status
        self._store = store  # the store process: the gateways need it until they are gone
        self._gateways, self._worker, self._hot = tuple(gateways), worker, hot
        self._children = children
        self._plan: StopPlan | None = None

    @property
    def started(self) -> bool:
        return self._plan is not None

    @property
    def exit_code(self) -> int:
        return self._plan.exit_code if self._plan is not None else 0

    def begin(self, now: float, why: str, exit_code: int) -> None:
        self._plan = StopPlan.starting_at(now, self._cfg, exit_code)
        # The worker stays up meanwhile: draining requests still run hooks.
        if self._worker is not None:
            self._worker.stop(now, terminate=False)
        if self._store is not None:
            self._store.stop(now, terminate=False)  # draining requests still use storage
        if self._hot is not None:
            self._hot.abandon("stopping")
        self._status.stopping(why)
        log.info("stopping (%s): gateway drains first, then the worker; grace %d ms",
                 why, self._cfg.supervisor.stop_grace_ms)
        for gateway in self._gateways:
            gateway.stop(now, terminate=True)

    def advance(self, now: float) -> bool:
        """Do what is due; True once nothing is left to wait for."""
        plan = self._plan
        assert plan is not None  # begun before the first advance; not wire input
        if self._worker is not None and plan.worker_term_due(
                now, any(g.child is not None for g in self._gateways)):
            self._worker.stop(now, terminate=True)
        store = self._store.child if self._store is not None else None
        if store is not None and all(g.child is None for g in self._gateways) \
                and store.state in (ChildState.STARTING, ChildState.READY):
            store.terminate()
        alive = list(self._children())
        if not alive:
            return True
        if plan.kill_due(now):
            self.kill_now(now, f"stop grace of {self._cfg.supervisor.stop_grace_ms} ms is over")
        elif plan.give_up_due(now):
            log.error("%s survived SIGKILL for %.0f s; giving up on it",
                      ", ".join(c.name for c in alive), FINAL_REAP_S)
            return True
        return False

    def kill_now(self, now: float, why: str) -> None:
        plan = self._plan
        if plan is None or plan.killed:
            return
        plan.kill_now(now)
        for child in self._children():
            log.warning("%s: killing the process group of %s", why, child.name)
            child.kill_group(why)
