"""Hot restart of the worker: candidate, admission, adoption, retiring generations.

A *candidate* generation N+1 boots beside the active N (see `reload.py`,
`handover.py`); once it is ready it takes the worker slot and N is
*retiring*: the gateway told it to DRAIN, and its exit 0 is expected.
"""

from __future__ import annotations

import logging
from typing import Any

from config import ConfigError, load_api_definitions
from supervisor.child import ChildProcess, ChildState, Role
from supervisor.contract import worker_env
from supervisor.core import Phase, SupervisorCore, answer
from supervisor.exits import ExitStatus
from supervisor.recycle import WorkerWatch
from supervisor.reload import Reload, ReloadState, Waiter, regressions
from supervisor.slot import SlotState

__all__ = ["HotRestart"]

#: The loop's modules share one logger name: records read as they always did.
log = logging.getLogger("supervisor.supervisor")


class HotRestart(SupervisorCore):
    def _check_handover(self, now: float) -> None:
        """Retiring generations past their drain deadline; recycling; watched files."""
        for old in self._handover.overdue(now):
            log.error("%s did not drain within %d ms: SIGABRT, SIGKILL in 1 s",
                      old.name, self._cfg.worker.drain_grace_ms)
            old.abort(now, "did not finish draining")
        child = self._worker.child if self._worker else None
        if child is None or child.state is not ChildState.READY or self._handover.reload \
                or self._active is None:
            return
        why = self._active.restart_reason(now, child.pid)
        if why:
            self._request_reload(now, why)

    def _request_reload(self, now: float, reason: str, waiter: Waiter | None = None) -> None:
        """Start a hot restart of the worker (or queue one behind the running one)."""
        if self._phase is not Phase.RUNNING or self._worker is None:
            why = "stopping" if self._worker else "coprocess is disabled: there is no worker"
            if waiter is not None:
                answer(waiter, {"ok": False, "error": f"cannot reload: {why}"})
            return
        if self._bundles is not None:  # new bundle versions are verified first
            self._bundles.refresh_then(
                lambda: self._begin_reload(self._clock(), reason, waiter),
                lambda error: self._finish_reload(
                    Reload(reason, self._clock(), waiters=[waiter] if waiter else []), error))
            return
        self._begin_reload(now, reason, waiter)

    def _begin_reload(self, now: float, reason: str, waiter: Waiter | None) -> None:
        if self._phase is not Phase.RUNNING or self._worker is None:
            if waiter is not None:
                answer(waiter, {"ok": False, "error": "cannot reload: stopping"})
            return
        if self._handover.reload is not None:
            self._handover.follow(waiter)
            log.info("reload requested (%s) while one runs: it follows", reason)
            return
        reload = Reload(reason, now, waiters=[waiter] if waiter is not None else [])
        try:
            # The gateway and the new worker read the files themselves; checked
            # here first so that a broken definition fails the reload, not a boot.
            load_api_definitions(self._cfg)
        except ConfigError as exc:
            self._finish_reload(reload, f"API definitions not reloaded: {exc}")
            return
        if self._worker.state is SlotState.FATAL:
            log.info("%s: clearing FATAL; starting the worker afresh", reason)
            reload.revived = True
            self._worker.revive(now)
            self._send_worker_state()
        self._status.reloading(reason)
        self._start_candidate(reload, now)

    def _start_candidate(self, reload: Reload, now: float) -> None:
        assert self._worker is not None
        generation = reload.generation = self._worker.next_generation()
        log.info("hot restart (%s): starting worker generation %d beside the active one",
                 reload.reason, generation)
        try:
            child = ChildProcess.spawn(Role.WORKER, generation, self._commands.worker,
                                       worker_env(generation, self._instance_key), now)
        except OSError as exc:
            self._finish_reload(reload, f"worker generation {generation} could not be "
                                        f"started: {exc}")
            return
        self._handover.begin(reload, child)
        self._watch(child)

    def _on_candidate_message(self, child: ChildProcess, message: dict[str, Any],
                              now: float) -> None:
        reload, kind = self._handover.reload, message["type"]
        if reload is None:
            return
        if kind == "loaded":
            serving = self._active if self._worker and self._worker.child else None
            worse = regressions(serving.report if serving else None,
                                message.get("plugins", {}))
            if worse:
                error = "the new plugins failed to load: " + "; ".join(worse)
                log.error("hot restart refused, generation %d killed, the active generation "
                          "keeps serving: %s", child.generation, error)
                child.kill_group("refused: plugins failed to load")
                self._finish_reload(reload, error)
            else:
                reload.state = ReloadState.ADMITTING
                self._admit(child)
        elif kind == "ready" and message.get("role") == "worker" and child.mark_ready(now):
            self._adopt(child, message, now)
            self._finish_reload(reload)

    def _admit(self, child: ChildProcess) -> None:
        # The gateway reads the definitions now and switches routes when
        # this generation becomes active; then the worker may say HELLO.
        self._tell_gateway({"type": "reload_apis", "generation": child.generation})
        child.send({"type": "admit", "generation": child.generation})

    def _adopt(self, child: ChildProcess, ready: dict[str, Any], now: float) -> None:
        """The candidate is active in the gateway: it takes the slot, the old one retires."""
        assert self._worker is not None
        old = self._worker.child
        if old is not None:
            self._handover.retire(old, now)
            log.info("%s is retiring: draining its in-flight calls", old.name)
        self._handover.adopted()
        self._worker.adopt(child)
        self._worker.sandbox = dict(ready.get("sandbox", {}))
        self._active = WorkerWatch(self._cfg.worker, ready.get("plugins", {}), now)
        log.info("hot restart done: %s is active", child.name)
        self._send_worker_state()

    def _finish_reload(self, reload: Reload, error: str = "") -> None:
        if reload.finished:
            return
        was_running = self._handover.reload is reload
        followers = self._handover.finish(reload, error)
        if error:
            log.error("reload (%s) failed: %s", reload.reason, error)
            worker = self._worker
            if reload.revived and worker is not None and worker.child is None:
                # Nothing serves and the fix did not work: back to FATAL, not a crash loop.
                worker.state, worker.restart_at = SlotState.FATAL, None
                self._send_worker_state()
        if was_running:
            self._status.reloaded(self._describe())
        if followers is not None and self._phase is Phase.RUNNING:
            self._request_reload(self._clock(), "a reload asked for during the last one")
            current = self._handover.reload
            for waiter in followers:
                if current is not None:
                    current.waiters.append(waiter)
                else:
                    answer(waiter, self._handover.last or {"ok": False, "error": "not run"})

    def _reap_extra(self, now: float) -> None:
        """Reap the candidate and retiring generations (not in the slot)."""
        reaped = self._handover.reap_candidate()
        if reaped is not None:
            candidate, status = reaped
            reason = self._worker_gone(candidate, status)
            self._exits.remember("worker", candidate.generation, candidate.pid, reason)
            if self._handover.reload is not None:
                self._finish_reload(self._handover.reload, f"worker generation "
                                    f"{candidate.generation} {reason} before it was ready")
            worker = self._worker
            if worker is not None and worker.child is None and worker.restart_at is None \
                    and worker.state is SlotState.RUNNING:
                worker.restart_at = now  # the old one drained away meanwhile
        for child, status in self._handover.reap_retiring():
            reason = self._worker_gone(child, status)
            (log.info if status.clean else log.warning)("%s (retired) %s", child.name, reason)

    def _worker_gone(self, child: ChildProcess, status: ExitStatus) -> str:
        self._forget(child)
        reason = status.describe()
        self._tell_gateway({"type": "worker_exited", "generation": child.generation,
                            "reason": reason})
        return reason
