"""Hot restart of the worker, and what the supervisor follows of the active generation.

`HotRestart` owns the `Handover` (candidate, outgoing and retiring
generations, the running `Reload`) and the active generation's `WorkerWatch`
(load report, heartbeat counters, recycling).  A *candidate* generation N+1
boots beside the active N (see reload.py).  If an API that serves now fails
to load in it (a regression) the reload is refused and N serves on; else it
is admitted, even when APIs that did not serve (new ones, or ones failing
already) fail in it: those answer 500 and every other API serves.  At
admission N leaves the worker slot (outgoing), the gateway re-reads the API
definitions and makes N+1 active when it says HELLO, then tells N to DRAIN.
Once N+1 is ready it takes the slot and N is retiring: its exit 0 is
expected (not a crash, no backoff).  If N+1 fails first, N goes back to the
slot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, Final

from config.gateway import GatewayConfig
from ipc.control import ControlMessage, ControlType
from supervisor.child import ChildProcess, ChildState
from supervisor.definitions import ServedDefinitions
from supervisor.exits import ExitStatus
from supervisor.gateway_link import GatewayLink
from supervisor.handover import Handover
from supervisor.liveness import hang_reason
from supervisor.readers import ChildReaders
from supervisor.recycle import WorkerWatch
from supervisor.reload import Reload, ReloadState, Waiter, regressions, unserved
from supervisor.slot import SlotState
from supervisor.status import ServiceStatus
from supervisor.watcher import Watcher

__all__ = ["RETIRE_MARGIN_S", "HotRestart", "answer"]

#: A retiring generation gets drain_grace_ms plus this before SIGABRT/SIGKILL.
RETIRE_MARGIN_S: Final = 2.0

log = logging.getLogger("coproc.supervisor.hot_restart")


def answer(waiter: Waiter, result: dict[str, Any]) -> None:
    if not waiter.done():  # the client may have given up (its deadline)
        waiter.set_result(result)


class HotRestart:
    def __init__(self, cfg: GatewayConfig, worker: Watcher, link: GatewayLink,
                 readers: ChildReaders, status: ServiceStatus, describe: Callable[[], str],
                 clock: Callable[[], float],
                 definitions: ServedDefinitions | None = None) -> None:
        self._cfg, self._worker, self._link, self._readers = cfg, worker, link, readers
        self.definitions = definitions or ServedDefinitions(cfg)
        self._status, self._describe, self._clock = status, describe, clock
        self._handover = Handover(cfg.worker.drain_grace_ms / 1000 + RETIRE_MARGIN_S)
        self._watch: WorkerWatch | None = None  # the active generation's

    def children(self) -> Iterator[ChildProcess]:
        """The generations outside the worker slot: candidate, outgoing, retiring."""
        return self._handover.children()

    @property
    def replacing(self) -> bool:
        """A candidate boots: it takes the place of a restart of the slot."""
        return self._handover.candidate is not None

    def request(self, now: float, reason: str, waiter: Waiter | None = None) -> None:
        """Start a hot restart of the worker (or queue one behind the running one)."""
        handover = self._handover
        if self._worker.state in (SlotState.STOPPING, SlotState.STOPPED):
            if waiter is not None:
                answer(waiter, {"ok": False, "error": "cannot reload: stopping"})
            return
        if handover.reload is not None:
            handover.follow(waiter)
            log.info("reload requested (%s) while one runs: it follows", reason)
            return
        reload = Reload(reason, now, waiters=[waiter] if waiter is not None else [])
        # The gateway and the new worker read the files themselves; checked here
        # first: a reload that would take a serving API out of service is refused.
        refused = self.definitions.check()
        if refused:
            self._finish(reload, refused)
            return
        revived = self._worker.state is SlotState.FATAL
        if revived:
            log.info("%s: clearing FATAL; starting the worker afresh", reason)
            self._worker.revive(now)
        self._status.reloading(reason)
        try:
            child = self._worker.spawn_candidate(now)
        except OSError as exc:
            reload.spawning(self._worker.generation, revived)
            self._finish(reload, f"worker generation {reload.generation} could not be "
                                 f"started: {exc}")
            return
        reload.spawning(child.generation, revived)
        handover.begin(reload, child)
        log.info("hot restart (%s): started %s beside the active one", reason, child.name)

    def refuse(self, now: float, reason: str, waiter: Waiter | None, error: str) -> None:
        """Record a reload refused before it began (e.g. a new bundle failed to verify)."""
        self._finish(Reload(reason, now, waiters=[waiter] if waiter is not None else []), error)

    def settled(self) -> int | None:
        """Hot restarts done, once no generation but the active one is left (no
        candidate, no outgoing or retiring generation, no reload running); else None."""
        handover = self._handover
        if handover.reload is not None or handover.candidate is not None \
                or handover.outgoing is not None or handover.retiring:
            return None
        return handover.count

    @property
    def serving(self) -> ChildProcess | None:
        """Who serves while the slot is vacant, from the candidate's admission to its
        READY: the outgoing generation until it has drained and exited, then the
        admitted candidate (the gateway switched to it before it said READY)."""
        handover = self._handover
        if handover.outgoing is not None:
            return handover.outgoing
        admitted = handover.reload is not None and handover.reload.state is ReloadState.ADMITTING
        return handover.candidate if admitted else None

    def owns(self, child: ChildProcess) -> bool:
        return child is self._handover.candidate or child is self._handover.outgoing \
            or child in self._handover.retiring

    def on_message(self, child: ChildProcess, message: ControlMessage, now: float) -> None:
        """From the candidate (outgoing and retiring generations have nothing to say)."""
        reload = self._handover.reload
        if reload is None or child is not self._handover.candidate:
            return
        if message.type is ControlType.IMPORTING:
            self._worker.imports.note(child, message)
        elif message.type is ControlType.LOADED:
            self._worker.imports.ready(child)  # imports are over: a death now is not one
            self._vet(reload, child, message.get("plugins", {}))
        elif message.type is ControlType.READY and message.get("role") == "worker" \
                and child.mark_ready(now):
            self._worker.imports.ready(child)
            self._adopt(child, message, now)
            self._finish(reload)

    def _vet(self, reload: Reload, child: ChildProcess, report: dict[str, Any]) -> None:
        """The candidate's load report: refuse a regression of an API that serves now,
        else admit it (its APIs whose plugins fail answer 500; the others serve)."""
        serving = self._watch if self._worker.child is not None else None
        worse = regressions(serving.report if serving else None, report,
                            self.definitions.served())
        if worse:
            error = "APIs that serve now would stop, their plugins failed to load: " \
                + "; ".join(worse)
            log.error("hot restart refused, generation %d killed, the active generation "
                      "keeps serving: %s", child.generation, error)
            child.kill_group("refused: plugins failed to load")
            self._finish(reload, error)
            return
        failing = unserved(report)
        if failing:
            log.warning("hot restart (%s): generation %d serves every API but these, whose "
                        "plugins failed to load and which did not serve before (they answer "
                        "500): %s", reload.reason, child.generation, "; ".join(failing))
        reload.admitting(failing)
        self._handover.hold(self._worker.release())
        self.admit(child)

    def admit(self, child: ChildProcess) -> None:
        """Let a worker that loaded its plugins say HELLO; the gateway reads the
        definitions now and switches routes when this generation is active."""
        self._link.reload_apis(child.generation)
        child.send(ControlType.ADMIT, {"generation": child.generation})

    def on_worker(self, message: ControlMessage, ready: bool, now: float) -> None:
        """A message of the worker slot's own child (`ready`: it just became ready)."""
        if ready:
            self._watch = WorkerWatch(self._cfg.worker, message.get("plugins", {}), now)
        elif message.type is ControlType.HEARTBEAT and self._watch is not None:
            self._watch.beat(message.fields)

    def check(self, now: float) -> None:
        """Hung candidate or outgoing generation; retiring ones past their deadline;
        recycling limits and watched files of the active one."""
        handover = self._handover
        for child in (handover.candidate, handover.outgoing):
            if child is None or child.state not in (ChildState.STARTING, ChildState.READY):
                continue
            reason = hang_reason(child.started_at, child.silent_for(now), now, self._cfg.worker)
            if reason:
                log.error("%s is hung (%s): SIGABRT for a traceback, SIGKILL in 1 s",
                          child.name, reason)
                child.abort(now, reason)
        for old in handover.overdue(now):
            log.error("%s did not drain within %d ms: SIGABRT, SIGKILL in 1 s",
                      old.name, self._cfg.worker.drain_grace_ms)
            old.abort(now, "did not finish draining")
        active = self._worker.child
        if active is None or active.state is not ChildState.READY or handover.reload \
                or self._watch is None:
            return
        why = self._watch.restart_reason(now, active.pid)
        if why:
            self.request(now, why)

    def reap(self) -> None:
        """Reap the generations outside the slot; a candidate's exit fails the reload."""
        handover = self._handover
        reaped = handover.reap_candidate()
        if reaped is not None:
            candidate, status = reaped
            reason = self._gone(candidate, status)
            self._worker.remember_exit(candidate, reason)
            if handover.reload is not None:
                self._finish(handover.reload, f"worker generation {candidate.generation} "
                                              f"{reason} before it was ready")
        for child, status in handover.reap_retiring():
            reason = self._gone(child, status)
            (log.info if status.clean else log.warning)("%s (retired) %s", child.name, reason)

    def abandon(self, why: str) -> None:
        """The supervisor stops: a candidate never served, so it has nothing to drain."""
        if self._handover.candidate is not None:
            self._handover.candidate.kill_group(why)
        if self._handover.reload is not None:
            self._finish(self._handover.reload, f"the supervisor is {why}")

    def abandoned(self) -> None:
        """The loop is ending abnormally; every generation was killed and forgotten."""
        self._handover.clear()

    def status(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the worker's part, the reload part) of `coproc status`."""
        handover, watch = self._handover, self._watch
        beat = watch.heartbeat if watch else {}
        worker = {
            "inflight": beat.get("inflight"), "calls": beat.get("calls"),
            "hot_restarts": handover.count,
            "candidate": handover.candidate.generation if handover.candidate else None,
            "retiring": sorted(c.generation for c in handover.retiring),
            "plugins": watch.report if watch else {},
        }
        reload = {"running": handover.reload.outcome() if handover.reload else None,
                  "last": handover.last}
        return worker, reload

    def _adopt(self, child: ChildProcess, ready: ControlMessage, now: float) -> None:
        """The candidate is active in the gateway: it takes the slot, the old one retires."""
        old = self._handover.adopted(now)
        if old is not None:
            log.info("%s is retiring: draining its in-flight calls", old.name)
        self._worker.adopt(child, ready, now)
        self._watch = WorkerWatch(self._cfg.worker, ready.get("plugins", {}), now)
        log.info("hot restart done: %s is active", child.name)

    def _finish(self, reload: Reload, error: str = "") -> None:
        if reload.finished:
            return
        handover = self._handover
        was_running = handover.reload is reload
        followers = handover.finish(reload, error)
        if was_running:  # the definitions it checked serve now, or never did
            self.definitions.settle(ok=not error)
        if error:
            log.error("reload (%s) failed: %s", reload.reason, error)
            self._worker.reinstate(handover.take_outgoing(), self._clock(), reload.revived)
        if was_running:
            self._status.reloaded(self._describe())
        if handover.last is not None:
            self._link.reload_outcome(handover.last)
        if followers is not None:
            self.request(self._clock(), "a reload asked for during the last one")
            current = handover.reload
            for waiter in followers:
                if current is not None:
                    current.wait(waiter)
                else:
                    answer(waiter, handover.last or {"ok": False, "error": "not run"})

    def _gone(self, child: ChildProcess, status: ExitStatus) -> str:
        reason = status.describe() + self._worker.imports.exit_note(child)
        self._readers.forget(child)
        self._link.worker_exited(child.generation, reason)
        return reason
