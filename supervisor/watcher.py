"""One supervised role: its child, generations, restart policy and exit history.

A `Watcher` starts its child from a `SpawnSpec`, reaps and classifies its
exits (restart verdict from the `RestartPolicy`, or stopped), detects a hung
child (when given liveness options), and reports every change of its slot
through its `Reporter` (supervisor/gateway_link.py).  It changes only its own
fields and its `Slot`'s (through the slot's methods).  The gateway and the
worker are one watcher each; N gateway processes would be N watchers, a gRPC
plugin server one more, each with its own spec.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from ipc.control import ControlMessage, ControlType
from supervisor.child import ChildProcess, ChildState
from supervisor.exits import ExitHistory
from supervisor.gateway_link import Reporter
from supervisor.imports import ImportNotes
from supervisor.liveness import Deadlines, hang_reason
from supervisor.policy import RestartPolicy, Verdict
from supervisor.readers import ChildReaders
from supervisor.recycle import rss_bytes
from supervisor.slot import Slot, SlotState
from supervisor.spawner import SpawnSpec

__all__ = ["EXIT_HISTORY", "Watcher"]

#: Exit reasons kept for `coproc status` (and `/hello` when FATAL).
EXIT_HISTORY: Final = 10
#: Exits named in a FATAL worker_state's detail.
_FATAL_DETAIL_EXITS: Final = 3

log = logging.getLogger("coproc.supervisor.watcher")


class Watcher:
    def __init__(self, spec: SpawnSpec, policy: RestartPolicy, readers: ChildReaders,
                 reporter: Reporter, flap_window_s: int,
                 liveness: Deadlines | None = None) -> None:
        self._spec, self._readers, self._reporter = spec, readers, reporter
        self._slot = Slot(spec.role, policy)
        self._flap_window = flap_window_s
        #: Boot and heartbeat timeouts; None: the child is not checked for hangs.
        self._liveness = liveness
        self._exits = ExitHistory(EXIT_HISTORY)
        self._restarts = 0  # exits that were not asked for
        self._sandbox: dict[str, str] = {}  # the child's layers, from `loaded`/`ready`
        self._stats: dict[str, int] = {}  # the child's last `status` counters
        #: The plugin file each booting worker imports (named if it dies there).
        self.imports = ImportNotes()

    @property
    def state(self) -> SlotState:
        return self._slot.state

    @property
    def generation(self) -> int:
        return self._slot.generation

    @property
    def child(self) -> ChildProcess | None:
        return self._slot.child

    @property
    def restart_at(self) -> float | None:
        return self._slot.restart_at

    def start_if_due(self, now: float) -> None:
        slot = self._slot
        if not slot.restart_due(now):
            return
        if slot.state is SlotState.FATAL:
            log.warning("%s: FATAL cool-off over; trying again", slot.role.value)
        generation = slot.next_generation()
        try:
            child = self._spec.spawn(generation, now)
        except OSError as exc:
            # Same path as an exit: a missing interpreter must not spin.
            verdict = slot.exited(now, f"could not be started ({exc})", boot_failure=True)
            self._log_exit(f"{slot.role.value} generation {generation}", slot.last_exit, None,
                           verdict)
            self._report(now)
            return
        slot.started(child)
        self._sandbox = {}
        self._readers.watch(child)
        log.info("started %s", child.name)
        self._reporter.started(child)
        self._report(now)

    def spawn_candidate(self, now: float) -> ChildProcess:
        """The next generation, beside the current child (a hot restart); OSError if
        it cannot run.  It is not this watcher's child until `adopt`."""
        child = self._spec.spawn(self._slot.next_generation(), now)
        self._readers.watch(child)
        return child

    def on_message(self, child: ChildProcess, message: ControlMessage, now: float) -> bool:
        """`ready` or `status` from this watcher's child; True when it just became ready."""
        if message.type is ControlType.STATUS:
            self._stats = dict(message.get("stats", {}))
            return False
        if message.type is ControlType.IMPORTING:
            self.imports.note(child, message)
            return False
        if message.type is ControlType.LOADED:
            self.imports.ready(child)  # its imports are over
            return False
        if message.type is not ControlType.READY:
            return False
        if message["role"] != child.role.value:
            log.warning("%s claims role %r; ignored", child.name, message["role"])
            return False
        if not child.mark_ready(now):
            return False
        self.imports.ready(child)
        self._sandbox = dict(message.get("sandbox", {}))
        log.info("%s is ready after %.2f s", child.name, now - child.started_at)
        if self._slot.state is SlotState.STARTING:
            self._slot.ready()
            self._report(now)
        return True

    def reap(self, now: float) -> None:
        """If the child exited: classify it (stopped, or a restart verdict) and report."""
        slot, child = self._slot, self._slot.child
        status = child.reap() if child is not None else None
        if child is None or status is None:
            return
        reason = status.describe() + self.imports.exit_note(child)
        self._readers.forget(child)
        uptime = now - child.started_at
        if slot.state in (SlotState.STOPPING, SlotState.STOPPED):
            slot.stopped()
            log.info("%s %s after %.1f s (stopping)", child.name, reason, uptime)
        else:
            self.remember_exit(child, reason)
            self._restarts += 1
            verdict = slot.exited(now, reason, status.boot_failure)
            self._log_exit(child.name, reason, uptime, verdict)
        self._reporter.exited(child, reason)
        self._report(now)

    def check_liveness(self, now: float) -> None:
        """A hung child (boot timeout, heartbeats): SIGABRT now, SIGKILL later."""
        child = self._slot.child
        if self._liveness is None or child is None \
                or child.state not in (ChildState.STARTING, ChildState.READY):
            return
        reason = hang_reason(child.started_at, child.silent_for(now), now, self._liveness)
        if reason:
            log.error("%s is hung (%s): SIGABRT for a traceback, SIGKILL in 1 s",
                      child.name, reason)
            child.abort(now, reason)

    def adopt(self, child: ChildProcess, ready: ControlMessage, now: float) -> None:
        """A hot-restarted generation, already ready, takes the slot over."""
        self._slot.adopt(child)
        self._sandbox = dict(ready.get("sandbox", {}))
        self._report(now)

    def release(self) -> ChildProcess | None:
        """Hand the current child to a hot restart, which retires it."""
        return self._slot.release()

    def reinstate(self, child: ChildProcess | None, now: float, fatal: bool) -> None:
        """The hot restart failed: see `Slot.reinstate`."""
        self._slot.reinstate(child, now, fatal)
        self._report(now)

    def revive(self, now: float) -> None:
        """Clear FATAL (an operator's reload): the restart policy starts over."""
        self._slot.revive(now)
        self._report(now)

    def remember_exit(self, child: ChildProcess, reason: str) -> None:
        self._exits.remember(child.role.value, child.generation, child.pid, reason)

    def stop(self, now: float, terminate: bool) -> None:
        """No more restarts; with `terminate`, SIGTERM the child (it drains)."""
        self._slot.stop()
        child = self._slot.child
        if terminate and child is not None:
            child.terminate()
        self._report(now)

    def abandoned(self) -> None:
        """The loop is ending abnormally and the child was killed and forgotten."""
        if self._slot.child is not None:
            self._slot.stopped()

    def status(self, now: float, serving: ChildProcess | None = None) -> dict[str, Any]:
        """This role's part of `coproc status`.  `serving`: the child that serves
        while a hot restart holds the slot vacant (admitted candidate, not yet ready),
        so status never shows a serving worker as absent."""
        slot, child = self._slot, self._slot.child or serving
        silent = child.silent_for(now) if child else None
        return {
            "state": self._slot.state.value, "pid": child.pid if child else None,
            "generation": child.generation if child else None,
            "uptime_s": round(now - child.started_at, 3) if child else None,
            "rss_bytes": rss_bytes(child.pid) if child else None,
            "heartbeat_age_s": round(silent, 3) if silent is not None else None,
            "restarts": self._restarts, "sandbox": self._sandbox if child else {},
            # FATAL: when the next try comes (reported, since FATAL heals by itself).
            "retry_in_s": round(max(0.0, slot.restart_at - now), 3)
            if slot.state is SlotState.FATAL and slot.restart_at is not None else None,
            "stats": self._stats, "last_exits": self._exits.as_list(),
        }

    def _report(self, now: float) -> None:
        slot = self._slot
        detail = slot.last_exit if slot.state is SlotState.RESTARTING else ""
        if slot.state is SlotState.FATAL:
            # The operator reading /hello needs the pattern, not only the last exit.
            recent = self._exits.reasons(slot.role.value, _FATAL_DETAIL_EXITS)
            detail = "last exits: " + "; ".join(recent or [slot.last_exit])
            if slot.restart_at is not None:
                detail += f"; next try in {round(slot.restart_at - now)} s"
        self._reporter.changed(slot.state, slot.generation, detail)

    def _log_exit(self, name: str, reason: str, uptime: float | None,
                  verdict: Verdict) -> None:
        what = f"{name} {reason}" + (f" after {uptime:.1f} s" if uptime is not None else "")
        if verdict.fatal:
            log.error("%s; %d exits within %d s: FATAL, next try in %d s", what,
                      verdict.recent_exits, self._flap_window, round(verdict.delay_s))
        else:
            log.warning("%s; restarting in %d ms", what, round(verdict.delay_s * 1000))
