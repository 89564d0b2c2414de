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

The parts live in their own modules, as mixins over `core.SupervisorCore`
(the state): `dispatch` (events), `lifecycle` (the slots' children),
`hot_restart`, `stopping` (the staged stop) and `snapshot` (`coproc status`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from supervisor.control_server import ControlRequest, ControlServer
from supervisor.core import Phase
from supervisor.dispatch import EventDispatch
from supervisor.events import SignalEvent
from supervisor.hot_restart import HotRestart
from supervisor.lifecycle import SlotLifecycle
from supervisor.slot import SlotState
from supervisor.snapshot import StatusSnapshot
from supervisor.stopping import StopSequence

__all__ = ["Phase", "Supervisor"]

#: Upper bound between two reconcile passes when nothing happens.
TICK_S: Final = 0.1

#: The loop's modules share one logger name: records read as they always did.
log = logging.getLogger("supervisor.supervisor")


class Supervisor(EventDispatch, SlotLifecycle, HotRestart, StopSequence, StatusSnapshot):
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
            if self._bundles is not None:
                await self._bundles.start()  # before the first gateway and worker
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
            if self._bundles is not None:
                await self._bundles.close()
        return self._stop.exit_code if self._stop else 0

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

    def _timeout(self, now: float) -> float:
        wakeups = [TICK_S]
        wakeups += [slot.restart_at - now for slot in self._slots() if slot.restart_at is not None]
        wakeups += [c.kill_at - now for c in self._children() if c.kill_at is not None]
        return max(0.0, min(wakeups))
