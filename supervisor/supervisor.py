"""The reconcile loop: keep one gateway and one worker up; stop them in stages.

Everything that happens (a signal, a control datagram, "a child may have
exited") becomes an event on one queue; signal handlers only enqueue.  After
each batch of events, and at least every TICK_S, `_reconcile` runs:

1. reap and classify every exit (restart decisions, `worker_exited`);
2. check the worker's liveness (boot timeout, heartbeats) -> SIGABRT, SIGKILL;
3. restore the wanted state (start what is due), or advance the staged stop;
4. ping the systemd watchdog, from this loop so a stuck loop stops pinging.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

from config.gateway import GatewayConfig
from ipc.notify import Notifier
from ipc.tokens import new_instance_key
from supervisor.child import ChildProcess, ChildState, Role
from supervisor.contract import ChildCommands, gateway_env, worker_env
from supervisor.events import ControlEvent, Event, ReapEvent, SignalEvent
from supervisor.liveness import hang_reason
from supervisor.policy import RestartPolicy, Verdict
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

log = logging.getLogger(__name__)


class Phase(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Supervisor:
    def __init__(self, cfg: GatewayConfig, listener: socket.socket, commands: ChildCommands,
                 notifier: Notifier, clock: Callable[[], float] = time.monotonic) -> None:
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

    async def run(self) -> int:
        """Supervise until stopped; the exit code for `coproc serve`."""
        self._loop = asyncio.get_running_loop()
        self._install_signals(self._loop)
        try:
            while True:
                self._reconcile(self._clock())
                if self._phase is Phase.STOPPED:
                    break
                await self._handle_events(self._timeout(self._clock()))
        finally:
            self._remove_signals(self._loop)
            self._abandon_children()
        return self._stop.exit_code if self._stop else 0

    # -- events -------------------------------------------------------------------

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
            loop.add_signal_handler(signum, self._events.put_nowait, SignalEvent(signum))
        try:
            loop.add_signal_handler(signal.SIGCHLD, self._events.put_nowait, ReapEvent())
        except RuntimeError:
            pass  # uvloop keeps SIGCHLD for itself; pidfds and the tick still reap

    def _remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                       signal.SIGCHLD):
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
        # ReapEvent: nothing to do but let `_reconcile` run.

    def _on_signal(self, signum: int, now: float) -> None:
        name = signal.Signals(signum).name
        log.debug("%s received", name)
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._request_stop(now, f"{name} received")
        elif signum == signal.SIGQUIT:
            self._request_stop(now, f"{name} received", immediate=True)
        elif signum == signal.SIGHUP:
            # Hot reload is not built yet; SIGHUP must still not kill us.
            log.warning("SIGHUP received: reload is not supported yet; ignored")

    def _on_message(self, child: ChildProcess, message: dict[str, Any], now: float) -> None:
        slot = self._slot_of(child)
        if slot is None:
            return  # from a child reaped since it was queued
        kind = message["type"]
        if kind == "ready":
            if message["role"] != child.role.value:
                log.warning("%s claims role %r; ignored", child.name, message["role"])
            elif child.mark_ready(now):
                self._on_ready(slot, child)
        elif kind == "heartbeat":
            child.last_heartbeat = now
        elif kind == "status" and child.role is Role.GATEWAY:
            log.debug("gateway status: %s", message)
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
        if self._phase is Phase.RUNNING:
            self._check_worker(now)
            for slot in self._slots():
                if slot.restart_due(now):
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
            else:
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
        child = self._worker.child if self._worker else None
        if child is None or child.state not in (ChildState.STARTING, ChildState.READY):
            return
        reason = hang_reason(child.started_at, child.silent_for(now), now, self._cfg.worker)
        if reason:
            log.error("%s is hung (%s): SIGABRT for a traceback, SIGKILL in 1 s",
                      child.name, reason)
            child.abort(now, reason)

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
        return (slot.child for slot in self._slots() if slot.child is not None)

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
        for slot in self._slots():
            child = slot.child
            if child is None:
                continue
            child.kill_group("supervisor exiting")
            deadline = time.monotonic() + ABANDON_WAIT_S
            while child.reap() is None and time.monotonic() < deadline:
                time.sleep(0.01)  # exceptional path: the loop is ending anyway
            if child.alive:
                log.error("%s was killed but has not exited", child.name)
            self._forget(child)
            slot.stopped()

    def _tell_gateway(self, message: dict[str, Any]) -> None:
        gateway = self._gateway.child
        if gateway is not None and gateway.state is not ChildState.EXITED:
            gateway.send(message)

    def _send_worker_state(self) -> None:
        worker = self._worker
        if worker is None or worker.generation == 0:
            return
        state = SlotState.STOPPING if worker.state is SlotState.STOPPED else worker.state
        detail = worker.last_exit if state in (SlotState.RESTARTING, SlotState.FATAL) else ""
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
