"""The supervisor's state, and what every part of the reconcile loop shares.

`SupervisorCore` holds the state of one `coproc serve` run (config, the two
slots, the hot-restart handover, the stop plan, ...) and the small helpers
all parts use: iterate slots and children, tell the gateway, describe the
instance.  The parts are mixins over it, one module each (see `supervisor.py`);
the few methods one part calls in another are declared here.
"""

from __future__ import annotations

import asyncio
import enum
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from config.gateway import GatewayConfig
from ipc.notify import Notifier
from ipc.tokens import new_instance_key
from supervisor.bundles.gate import BundleGate
from supervisor.child import ChildProcess, ChildState, Role
from supervisor.contract import ChildCommands
from supervisor.events import Event, SignalEvent
from supervisor.exits import ExitHistory
from supervisor.handover import Handover
from supervisor.policy import RestartPolicy, Verdict
from supervisor.recycle import WorkerWatch
from supervisor.reload import Reload, Waiter
from supervisor.shutdown import StopPlan
from supervisor.slot import Slot, SlotState
from supervisor.status import ServiceStatus

__all__ = ["EXIT_HISTORY", "RETIRE_MARGIN_S", "Phase", "SupervisorCore", "answer"]

#: A retiring generation gets drain_grace_ms plus this before SIGABRT/SIGKILL.
RETIRE_MARGIN_S: Final = 2.0
#: Exit reasons kept for `coproc status` (and `/hello` when FATAL).
EXIT_HISTORY: Final = 10

class Phase(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class SupervisorCore:
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
        # Bundles: one fetcher per instance; a bundle that arrives late asks for a reload.
        self._bundles = BundleGate.for_config(
            cfg, lambda _name: self._events.put_nowait(SignalEvent(signal.SIGHUP)))

    # -- provided by the other parts ------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        """What `coproc status` shows (snapshot.py)."""
        raise NotImplementedError

    def _request_stop(self, now: float, why: str, immediate: bool = False,
                      exit_code: int = 0) -> None:
        raise NotImplementedError  # stopping.py

    def _request_reload(self, now: float, reason: str, waiter: Waiter | None = None) -> None:
        raise NotImplementedError  # hot_restart.py

    def _finish_reload(self, reload: Reload, error: str = "") -> None:
        raise NotImplementedError  # hot_restart.py

    def _on_candidate_message(self, child: ChildProcess, message: dict[str, Any],
                              now: float) -> None:
        raise NotImplementedError  # hot_restart.py

    def _admit(self, child: ChildProcess) -> None:
        raise NotImplementedError  # hot_restart.py

    def _watch(self, child: ChildProcess) -> None:
        raise NotImplementedError  # lifecycle.py

    def _forget(self, child: ChildProcess) -> None:
        raise NotImplementedError  # lifecycle.py

    def _log_exit(self, name: str, reason: str, uptime: float | None,
                  verdict: Verdict) -> None:
        raise NotImplementedError  # lifecycle.py

    def _after_exit(self, slot: Slot, now: float) -> None:
        raise NotImplementedError  # lifecycle.py

    # -- shared helpers -------------------------------------------------------------

    def _slots(self) -> Iterator[Slot]:
        yield self._gateway
        if self._worker is not None:
            yield self._worker

    def _children(self) -> Iterator[ChildProcess]:
        yield from (slot.child for slot in self._slots() if slot.child is not None)
        yield from self._handover.children()

    def _slot_of(self, child: ChildProcess) -> Slot | None:
        return next((slot for slot in self._slots() if slot.child is child), None)

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


def answer(waiter: Waiter, answer: dict[str, Any]) -> None:
    if not waiter.done():  # the client may have given up (its deadline)
        waiter.set_result(answer)
