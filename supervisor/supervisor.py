"""The reconcile loop: keep one gateway and one worker up; stop them in stages.

Everything that happens (a signal, a control datagram, "a child may have
exited") becomes an event on one queue; signal handlers only enqueue.  After
each batch of events, and at least every TICK_S, `_reconcile` runs:

1. reap and classify every exit (restart decisions, `worker_exited`);
2. check the worker's liveness (boot timeout, heartbeats) -> SIGABRT, SIGKILL,
   and whether it is due for recycling (limits, watched files) -> hot restart;
3. restore the wanted state (start what is due), or advance the staged stop;
4. ping the systemd watchdog, from this loop so a stuck loop stops pinging.

Hot restart (SIGHUP, `coproc reload`, POST /tyk/reload, recycling, watch):
a *candidate* generation N+1 boots beside the active N (see `reload.py`);
once it is ready it takes the worker slot and N is *retiring*: the gateway
told it to DRAIN, and its exit 0 is expected (not a crash, no backoff).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from config import ConfigError, load_api_definitions
from config.gateway import GatewayConfig
from ipc.notify import Notifier
from ipc.tokens import new_instance_key
from supervisor.child import ChildProcess, ChildState, Role
from supervisor.contract import ChildCommands, gateway_env, worker_env
from supervisor.control_server import ControlRequest, ControlServer
from supervisor.events import ControlEvent, Event, ReapEvent, SignalEvent
from supervisor.exits import ExitHistory, ExitStatus
from supervisor.handover import Handover
from supervisor.liveness import hang_reason
from supervisor.policy import RestartPolicy, Verdict
from supervisor.recycle import WorkerWatch, rss_bytes
from supervisor.reload import Reload, ReloadState, Waiter, regressions
from supervisor.shutdown import FINAL_REAP_S, StopPlan
from supervisor.slot import Slot, SlotState
from supervisor.status import ServiceStatus

__all__ = ["Phase", "Supervisor"]

#: Upper bound between two reconcile passes when nothing happens.
TICK_S: Final = 0.1
#: On an unexpected exit from the loop, how long to wait for killed children.
ABANDON_WAIT_S: Final = 1.0
#: Exit code when the gateway flaps: without it the instance serves nothing.
GATEWAY_FATAL_EXIT: Final = 1
#: A retiring generation gets drain_grace_ms plus this before SIGABRT/SIGKILL.
RETIRE_MARGIN_S: Final = 2.0
#: Exit reasons kept for `coproc status` (and `/hello` when FATAL).
EXIT_HISTORY: Final = 10
_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1)

log = logging.getLogger(__name__)


class Phase(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Supervisor:
    def __init__(self, cfg: GatewayConfig, listener: socket.socket, commands: ChildCommands,
                 notifier: Notifier, clock: Callable[[], float] = time.monotonic,
                 control_path: Path | None = None) -> None:
        self._cfg, self._listener, self._commands = cfg, listener, commands
        self._status, self._clock = ServiceStatus(notifier), clock
        self._instance_key = new_instance_key()
        self._gateway = Slot(Role.GATEWAY, RestartPolicy.from_options(cfg.supervisor, clock))
        # Without coprocess there is nothing for a worker to do (and no hooks
        # socket to become routable on): run the gateway alone.
        self._worker = (Slot(Role.WORKER, RestartPolicy.from_options(cfg.supervisor, clock))
                        if cfg.enable_coprocess else None)
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._phase = Phase.RUNNING
        self._stop: StopPlan | None = None
        self._control_path = control_path
        self._started_at, self._started_wall = clock(), time.time()
        self._handover = Handover(cfg.worker.drain_grace_ms / 1000 + RETIRE_MARGIN_S)
        self._active: WorkerWatch | None = None  # the active worker generation
        self._gateway_stats: dict[str, int] = {}
        self._exits = ExitHistory(EXIT_HISTORY)
        self._restarts = 0  # worker exits that were not asked for

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def gateway_state(self) -> SlotState:
        return self._gateway.state

    @property
    def worker_state(self) -> SlotState | None:
        return self._worker.state if self._worker is not None else None

    @property
    def worker_generation(self) -> int:
        return self._worker.generation if self._worker is not None else 0

    def post_signal(self, signum: int) -> None:
        """Handle `signum` as if it had been received (the handlers' own path)."""
        self._events.put_nowait(SignalEvent(signum))

    def post_command(self, command: str) -> asyncio.Future[dict[str, Any]]:
        """Queue a control command (as the control socket does); its answer comes later."""
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._events.put_nowait(ControlRequest(command, reply))
        return reply

    async def run(self) -> int:
        """Supervise until stopped; the exit code for `coproc serve`."""
        self._loop = asyncio.get_running_loop()
        self._install_signals(self._loop)
        control = None
        if self._control_path is not None:
            control = ControlServer(self._control_path, self._events.put_nowait,
                                    self._cfg.worker.boot_timeout_ms / 1000 + 15)
            await control.start()
        try:
            while True:
                self._reconcile(self._clock())
                if self._phase is Phase.STOPPED:
                    break
                await self._handle_events(self._timeout(self._clock()))
        finally:
            self._remove_signals(self._loop)
            self._abandon_children()
            if control is not None:
                await control.close()
        return self._stop.exit_code if self._stop else 0

    # -- events -------------------------------------------------------------------

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in _SIGNALS:
            loop.add_signal_handler(signum, self._events.put_nowait, SignalEvent(signum))
        try:
            loop.add_signal_handler(signal.SIGCHLD, self._events.put_nowait, ReapEvent())
        except RuntimeError:
            pass  # uvloop keeps SIGCHLD for itself; pidfds and the tick still reap

    def _remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in (*_SIGNALS, signal.SIGCHLD):
            loop.remove_signal_handler(signum)

    async def _handle_events(self, wait_s: float) -> None:
        try:
            event: Event | None = await asyncio.wait_for(self._events.get(), wait_s)
        except TimeoutError:
            return
        while event is not None:
            self._dispatch(event, self._clock())
            event = self._events.get_nowait() if not self._events.empty() else None

    def _dispatch(self, event: Event, now: float) -> None:
        if isinstance(event, SignalEvent):
            self._on_signal(event.signum, now)
        elif isinstance(event, ControlEvent):
            self._on_message(event.child, event.message, now)
        elif isinstance(event, ControlRequest):
            self._on_command(event, now)
        # ReapEvent: nothing to do but let `_reconcile` run.

    def _on_signal(self, signum: int, now: float) -> None:
        name = signal.Signals(signum).name
        log.debug("%s received", name)
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._request_stop(now, f"{name} received")
        elif signum == signal.SIGQUIT:
            self._request_stop(now, f"{name} received", immediate=True)
        elif signum == signal.SIGHUP:
            self._request_reload(now, "SIGHUP")
        elif signum == signal.SIGUSR1:
            # Logs go to stderr (journald): nothing to reopen; say where we are instead.
            log.info("status: %s", json.dumps(self.snapshot(now), sort_keys=True))

    def _on_command(self, request: ControlRequest, now: float) -> None:
        if request.command == "status":
            _answer(request.reply, {"ok": True, "status": self.snapshot(now)})
        elif request.command in ("reload", "restart-worker"):
            self._request_reload(now, f"coproc {request.command}", request.reply)
        else:  # stop
            _answer(request.reply, {"ok": True, "pid": os.getpid()})
            self._request_stop(now, "coproc stop")

    def _on_message(self, child: ChildProcess, message: dict[str, Any], now: float) -> None:
        kind = message["type"]
        if kind == "heartbeat":
            child.last_heartbeat = now
        if child is self._handover.candidate:
            self._on_candidate_message(child, message, now)
            return
        slot = self._slot_of(child)
        if slot is None:
            return  # retiring, or reaped since it was queued
        if kind == "ready":
            if message["role"] != child.role.value:
                log.warning("%s claims role %r; ignored", child.name, message["role"])
            elif child.mark_ready(now):
                if slot is self._worker:
                    self._active = WorkerWatch(self._cfg.worker, message.get("plugins", {}), now)
                self._on_ready(slot, child)
        elif kind == "loaded" and slot is self._worker:
            self._admit(child)
        elif kind == "heartbeat":
            if slot is self._worker and self._active is not None:
                self._active.heartbeat = {k: message[k] for k in ("inflight", "calls")
                                          if k in message}
        elif kind == "status" and child.role is Role.GATEWAY:
            self._gateway_stats = dict(message.get("stats", {}))
        elif kind == "reload_request" and child.role is Role.GATEWAY:
            self._request_reload(now, message.get("reason", "the gateway asked"))
        else:
            log.warning("%s sent an unexpected %r message; ignored", child.name, kind)

    def _on_ready(self, slot: Slot, child: ChildProcess) -> None:
        log.info("%s is ready after %.2f s", child.name, (child.ready_at or 0) - child.started_at)
        if self._phase is not Phase.RUNNING:
            return
        slot.ready()
        if slot is self._worker:
            self._send_worker_state()
        if not self._status.ready_sent and all(
                s.state is SlotState.RUNNING for s in self._slots()):
            log.info("coproc is up: %s", self._describe())
            self._status.update(self._describe(), ready=True)
        self._update_status()

    # -- reconcile ----------------------------------------------------------------------

    def _reconcile(self, now: float) -> None:
        self._reap(now)
        self._reap_extra(now)
        if self._phase is Phase.RUNNING:
            self._check_worker(now)
            self._check_handover(now)
            for slot in self._slots():
                # A candidate booting for a reload takes the place of a restart.
                if slot.restart_due(now) and not (slot is self._worker
                                                  and self._handover.candidate):
                    self._start(slot, now)
        elif self._phase is Phase.STOPPING:
            self._advance_stop(now)
        for child in self._children():
            if child.kill_if_overdue(now):
                log.error("%s still alive after SIGABRT: killed its process group", child.name)
        self._status.ping(now)

    def _reap(self, now: float) -> None:
        for slot in self._slots():
            child = slot.child
            status = child.reap() if child is not None else None
            if child is None or status is None:
                continue
            self._forget(child)
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
            if child.role is Role.WORKER:
                # First, so the gateway fails that generation's in-flight calls
                # now instead of letting each wait for its timeout.
                self._tell_gateway({"type": "worker_exited", "generation": child.generation,
                                    "reason": reason})
            self._after_exit(slot, now)

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

    # -- hot restart (see handover.py) ---------------------------------------------------

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
                _answer(waiter, {"ok": False, "error": f"cannot reload: {why}"})
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
            self._adopt(child, message.get("plugins", {}), now)
            self._finish_reload(reload)

    def _admit(self, child: ChildProcess) -> None:
        # The gateway reads the definitions now and switches routes when
        # this generation becomes active; then the worker may say HELLO.
        self._tell_gateway({"type": "reload_apis", "generation": child.generation})
        child.send({"type": "admit", "generation": child.generation})

    def _adopt(self, child: ChildProcess, plugins: dict[str, Any], now: float) -> None:
        """The candidate is active in the gateway: it takes the slot, the old one retires."""
        assert self._worker is not None
        old = self._worker.child
        if old is not None:
            self._handover.retire(old, now)
            log.info("%s is retiring: draining its in-flight calls", old.name)
        self._handover.adopted()
        self._worker.adopt(child)
        self._active = WorkerWatch(self._cfg.worker, plugins, now)
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
                    _answer(waiter, self._handover.last or {"ok": False, "error": "not run"})

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

    # -- status ---------------------------------------------------------------------------

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
            },
            "reload": {"running": handover.reload.outcome() if handover.reload else None,
                       "last": handover.last},
            "last_exits": self._exits.as_list(),
        }

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

    # -- staged stop ------------------------------------------------------------------

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

    # -- helpers ------------------------------------------------------------------------

    def _slots(self) -> Iterator[Slot]:
        yield self._gateway
        if self._worker is not None:
            yield self._worker

    def _children(self) -> Iterator[ChildProcess]:
        yield from (slot.child for slot in self._slots() if slot.child is not None)
        yield from self._handover.children()

    def _slot_of(self, child: ChildProcess) -> Slot | None:
        return next((slot for slot in self._slots() if slot.child is child), None)

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

    def _tell_gateway(self, message: dict[str, Any]) -> None:
        gateway = self._gateway.child
        if gateway is not None and gateway.state is not ChildState.EXITED:
            gateway.send(message)

    def _send_worker_state(self) -> None:
        worker = self._worker
        if worker is None or worker.generation == 0:
            return
        state = SlotState.STOPPING if worker.state is SlotState.STOPPED else worker.state
        detail = worker.last_exit if state is SlotState.RESTARTING else ""
        if state is SlotState.FATAL:
            # The operator reading /hello needs the pattern, not only the last exit.
            recent = self._exits.reasons("worker", 3)
            detail = "last exits: " + "; ".join(recent or [worker.last_exit])
        self._tell_gateway({"type": "worker_state", "state": state.value,
                            "generation": worker.generation, "detail": detail})

    def _describe(self) -> str:
        parts = [f"gateway {self._gateway.state.value}"]
        if self._worker is not None:
            parts.append(f"worker generation {self._worker.generation} "
                         f"{self._worker.state.value}")
        return "; ".join(parts)

    def _update_status(self) -> None:
        self._status.update(self._describe())

    def _timeout(self, now: float) -> float:
        wakeups = [TICK_S]
        wakeups += [slot.restart_at - now for slot in self._slots() if slot.restart_at is not None]
        wakeups += [c.kill_at - now for c in self._children() if c.kill_at is not None]
        return max(0.0, min(wakeups))


def _answer(waiter: Waiter, answer: dict[str, Any]) -> None:
    if not waiter.done():  # the client may have given up (its deadline)
        waiter.set_result(answer)
