"""The slots' children: start, watch, reap and classify, liveness, last-resort kill.

Every exit is reaped and classified here (restart verdict, `worker_exited`
to the gateway); a hung worker gets SIGABRT then SIGKILL.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from supervisor.child import ChildProcess, ChildState, Role
from supervisor.contract import gateway_env, worker_env
from supervisor.core import Phase, SupervisorCore
from supervisor.events import ControlEvent, ReapEvent
from supervisor.exits import ExitStatus
from supervisor.liveness import hang_reason
from supervisor.policy import Verdict
from supervisor.reload import ReloadState
from supervisor.slot import Slot, SlotState

__all__ = ["ABANDON_WAIT_S", "GATEWAY_FATAL_EXIT", "SlotLifecycle"]

#: On an unexpected exit from the loop, how long to wait for killed children.
ABANDON_WAIT_S: Final = 1.0
#: Exit code when the gateway flaps: without it the instance serves nothing.
GATEWAY_FATAL_EXIT: Final = 1

#: The loop's modules share one logger name: records read as they always did.
log = logging.getLogger("supervisor.supervisor")


class SlotLifecycle(SupervisorCore):
    def _start(self, slot: Slot, now: float) -> None:
        generation = slot.next_generation()
        listen_fd = self._listener.fileno()
        try:
            if slot.role is Role.GATEWAY:
                child = ChildProcess.spawn(Role.GATEWAY, generation, self._commands.gateway,
                                           gateway_env(listen_fd, self._instance_key), now,
                                           pass_fds=(listen_fd,))
            else:
                child = ChildProcess.spawn(Role.WORKER, generation, self._commands.worker,
                                           worker_env(generation, self._instance_key), now)
        except OSError as exc:
            # Same path as an exit: a missing interpreter must not spin.
            verdict = slot.exited(now, f"could not be started ({exc})", boot_failure=True)
            self._log_exit(f"{slot.role.value} generation {generation}", slot.last_exit, None,
                           verdict)
            self._after_exit(slot, now)
            return
        slot.started(child)
        self._watch(child)
        log.info("started %s", child.name)
        # To a new gateway this is a re-send: it knows nothing about the worker.
        self._send_worker_state()
        self._update_status()

    def _reap(self, now: float) -> None:
        for slot in self._slots():
            child = slot.child
            status = child.reap() if child is not None else None
            if child is None or status is None:
                continue
            self._forget(child)
            reason = status.describe()
            self._classify_exit(slot, child, status, now)
            if child.role is Role.WORKER:
                # First, so the gateway fails that generation's in-flight calls
                # now instead of letting each wait for its timeout.
                self._tell_gateway({"type": "worker_exited", "generation": child.generation,
                                    "reason": reason})
            self._after_exit(slot, now)

    def _classify_exit(self, slot: Slot, child: ChildProcess, status: ExitStatus,
                       now: float) -> None:
        """Stopping, drained by a hot restart, or a crash (restart verdict)."""
        uptime = now - child.started_at
        reason = status.describe()
        if self._phase is not Phase.RUNNING:
            slot.stopped()
            log.info("%s %s after %.1f s (stopping)", child.name, reason, uptime)
        elif slot is self._worker and status.clean and self._handover.reload is not None \
                and self._handover.reload.state is ReloadState.ADMITTING:
            # The gateway admitted the candidate and drained this one before
            # the candidate's `ready` reached us: expected, not a crash.
            slot.child = None
            log.info("%s drained and exited 0 (hot restart)", child.name)
        else:
            self._exits.remember(child.role.value, child.generation, child.pid, reason)
            if child.role is Role.WORKER:
                self._restarts += 1
            verdict = slot.exited(now, reason, status.boot_failure)
            self._log_exit(child.name, reason, uptime, verdict)

    def _log_exit(self, name: str, reason: str, uptime: float | None,
                  verdict: Verdict) -> None:
        what = f"{name} {reason}" + (f" after {uptime:.1f} s" if uptime is not None else "")
        if verdict.fatal:
            log.error("%s; %d exits within %d s: not restarting it (fatal)", what,
                      verdict.recent_exits, self._cfg.supervisor.flap_window_s)
        else:
            log.warning("%s; restarting in %d ms", what, round(verdict.delay_s * 1000))

    def _after_exit(self, slot: Slot, now: float) -> None:
        if slot is self._worker and self._phase is Phase.RUNNING:
            self._send_worker_state()
        elif slot is self._gateway and slot.state is SlotState.FATAL:
            self._request_stop(now, "the gateway keeps failing", exit_code=GATEWAY_FATAL_EXIT)
        self._update_status()

    def _check_worker(self, now: float) -> None:
        for child in (self._worker.child if self._worker else None, self._handover.candidate):
            if child is None or child.state not in (ChildState.STARTING, ChildState.READY):
                continue
            reason = hang_reason(child.started_at, child.silent_for(now), now, self._cfg.worker)
            if reason:
                log.error("%s is hung (%s): SIGABRT for a traceback, SIGKILL in 1 s",
                          child.name, reason)
                child.abort(now, reason)

    def _watch(self, child: ChildProcess) -> None:
        assert self._loop is not None
        self._loop.add_reader(child.fileno(), self._on_readable, child)
        if child.pidfd is not None:
            self._loop.add_reader(child.pidfd, self._on_pidfd, child)

    def _forget(self, child: ChildProcess) -> None:
        assert self._loop is not None
        self._loop.remove_reader(child.fileno())
        if child.pidfd is not None:
            self._loop.remove_reader(child.pidfd)
        child.close()

    def _on_readable(self, child: ChildProcess) -> None:
        for message in child.read_messages():
            self._events.put_nowait(ControlEvent(child, message))

    def _on_pidfd(self, child: ChildProcess) -> None:
        # Level-triggered and readable until reaped: stop watching, then wake.
        assert self._loop is not None and child.pidfd is not None
        self._loop.remove_reader(child.pidfd)
        self._events.put_nowait(ReapEvent())

    def _abandon_children(self) -> None:
        """Only on an unexpected exit from `run`: no child may outlive us."""
        for child in list(self._children()):
            child.kill_group("supervisor exiting")
            deadline = time.monotonic() + ABANDON_WAIT_S
            while child.reap() is None and time.monotonic() < deadline:
                time.sleep(0.01)  # exceptional path: the loop is ending anyway
            if child.alive:
                log.error("%s was killed but has not exited", child.name)
            self._forget(child)
        for slot in self._slots():
            if slot.child is not None:
                slot.stopped()
        self._handover.clear()
