"""The reconcile loop: keep the gateway processes and the one worker up; stop in stages.

Everything that happens (a signal, a control datagram, "a child may have
exited", a `coproc` command) becomes an event on one queue; signal handlers
only enqueue.  The `Arbiter` owns that queue and the instance's phase, routes
each child's messages to the object that owns the child, and after each batch
of events, and at least every TICK_S, reconciles:

1. each owner reaps and classifies its exits (restart verdicts, `worker_exited`);
2. liveness (boot timeout, heartbeats -> SIGABRT, SIGKILL), drain deadlines and
   recycling (-> hot restart);
3. restore the wanted state (start what is due), or advance the staged stop;
4. tell systemd (STATUS, READY once, WATCHDOG from this loop so a stuck loop
   stops pinging).

The owners (docs/ARCHITECTURE.md): a `Watcher` per role (watcher.py),
`HotRestart` (hot_restart.py), `Shutdown` (stopping.py) and the `GatewayLink`
(gateway_link.py), the only sender of worker news to the gateway.
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from config.gateway import GatewayConfig
from ipc.control import ControlMessage, ControlType
from ipc.notify import Notifier
from ipc.tokens import new_instance_key
from supervisor.bundles.gate import BundleGate
from supervisor.child import ChildProcess, Role
from supervisor.contract import ChildCommands, worker_config
from supervisor.control_server import ControlRequest, ControlServer
from supervisor.definitions import ServedDefinitions
from supervisor.events import ControlEvent, Event, SignalEvent, install_signals, remove_signals
from supervisor.gateway_link import GatewayLink, GatewayReporter, WorkerReporter
from supervisor.grpc_server import GrpcServerRole
from supervisor.hot_restart import HotRestart, answer
from supervisor.liveness import gateway_deadlines
from supervisor.policy import RestartPolicy
from supervisor.readers import ChildReaders
from supervisor.reload import Waiter
from supervisor.slot import SlotState
from supervisor.spawner import gateway_spec, worker_spec
from supervisor.status import ServiceStatus
from supervisor.stopping import Shutdown
from supervisor.store_role import StoreRole
from supervisor.watcher import EXIT_HISTORY, Watcher

__all__ = ["GATEWAY_FATAL_EXIT", "TICK_S", "Arbiter", "Phase"]

#: Upper bound between two reconcile passes when nothing happens.
TICK_S: Final = 0.1
#: Exit code when every gateway process flaps: without them the instance serves nothing.
GATEWAY_FATAL_EXIT: Final = 1
#: On an unexpected exit from the loop, how long to wait for killed children.
ABANDON_WAIT_S: Final = 1.0
#: What each role may send; anything else is logged and ignored.
_EXPECTED: Final = {
    Role.GATEWAY: frozenset({ControlType.READY, ControlType.STATUS, ControlType.RELOAD_REQUEST,
                             ControlType.GRPC_DRAINED}),
    Role.WORKER: frozenset({ControlType.READY, ControlType.LOADED, ControlType.HEARTBEAT,
                            ControlType.IMPORTING}),
    Role.GRPC_SERVER: frozenset(),  # it speaks gRPC only: it is probed (grpc_server.py)
    Role.STORE: frozenset({ControlType.READY}),
}

log = logging.getLogger("coproc.supervisor.arbiter")


class Phase(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Arbiter:
    def __init__(self, cfg: GatewayConfig, listeners: Sequence[socket.socket],
                 commands: ChildCommands,
                 notifier: Notifier, clock: Callable[[], float] = time.monotonic,
                 control_path: Path | None = None) -> None:
        self._cfg, self._clock, self._control_path = cfg, clock, control_path
        self._status = ServiceStatus(notifier)
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._phase = Phase.RUNNING
        self._started_at, self._started_wall = clock(), time.time()
        self._readers = ChildReaders(self._events.put_nowait)
        # N gateway processes (`coproc.gateway.processes`) on the one listening socket,
        # one watcher each: each restarts, backs off and turns FATAL on its own.
        # Process i accepts on listener i (SO_REUSEPORT), or all on the one listener.
        processes = cfg.gateway.processes
        self._link = GatewayLink(processes)
        key, window = new_instance_key(), cfg.supervisor.flap_window_s
        # Memory storage shared by several gateway processes lives in the store process.
        self._store = StoreRole(cfg, key, self._readers, clock) if StoreRole.wanted(cfg) \
            else None
        store_env = self._store.gateway_env() if self._store is not None else None
        self._gateways = tuple(
            Watcher(gateway_spec(commands, listeners[index % len(listeners)].fileno(), key,
                                 index, processes, store_env),
                    RestartPolicy.from_options(cfg.supervisor, clock), self._readers,
                    GatewayReporter(self._link, index), window,
                    liveness=gateway_deadlines(cfg))
            for index in range(processes))
        # Without coprocess there is nothing for a worker to do (and no hooks
        # socket to become routable on): run the gateway alone.  A supervised
        # gRPC plugin server is the instance's one coprocess instead of the worker.
        #: Which API definitions serve and which are broken (`coproc status`).
        self._definitions = ServedDefinitions(cfg)
        self._grpc = GrpcServerRole(cfg, self._link, self._readers, clock, self._definitions) \
            if cfg.enable_coprocess and cfg.grpc_server.enabled else None
        self._worker = Watcher(worker_spec(commands, key, worker_config(cfg)),
                               RestartPolicy.from_options(cfg.supervisor, clock), self._readers,
                               WorkerReporter(self._link), window, liveness=cfg.worker) \
            if cfg.enable_coprocess and self._grpc is None else None
        #: Every role's watcher: the store's (if any), the gateways', the coprocess's.
        coprocess = self._grpc.watcher if self._grpc is not None else self._worker
        self._roles = self._gateways if coprocess is None else (*self._gateways, coprocess)
        if self._store is not None:  # first: started before the gateways, in each pass
            self._roles = (self._store.watcher, *self._roles)
        self._hot = HotRestart(cfg, self._worker, self._link, self._readers, self._status,
                               self._describe, clock, self._definitions) \
            if self._worker is not None else None
        self._shutdown = Shutdown(cfg, self._status, self._gateways, coprocess, self._hot,
                                  self._children,
                                  self._store.watcher if self._store is not None else None)
        # Bundles: one fetcher per instance; a bundle that arrives late asks for a
        # reload through the same event a SIGHUP makes.
        self._bundles = BundleGate.for_config(
            cfg, lambda _name: self._events.put_nowait(SignalEvent(signal.SIGHUP)))
        self._bundles_released = 0  # hot restarts whose old bundle versions are gone

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def gateway_state(self) -> SlotState:
        """Gateway process 0's state (`gateway_states` has every one's)."""
        return self._gateways[0].state

    @property
    def gateway_states(self) -> tuple[SlotState, ...]:
        return tuple(g.state for g in self._gateways)

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
        loop = asyncio.get_running_loop()
        self._readers.bind(loop)
        install_signals(loop, self._events.put_nowait)
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
                await self._handle_events(_next_wakeup(self._clock(), self._roles,
                                                       self._children()))
        finally:
            remove_signals(loop)
            self._abandon()
            if control is not None:
                await control.close()
            if self._bundles is not None:
                await self._bundles.close()
        return self._shutdown.exit_code

    def status(self, now: float) -> dict[str, Any]:
        """What `coproc status` shows (JSON-ready), composed from each owner's part."""
        gateways = [g.status(now) for g in self._gateways]
        serving = self._hot.serving if self._hot is not None else None
        worker = self._worker.status(now, serving) if self._worker is not None else _NO_WORKER
        hot, reload = self._hot.status() if self._hot is not None else (_NO_HOT, _NO_RELOAD)
        own = self._grpc.watcher.status(now)["last_exits"] if self._grpc is not None else []
        own += self._store.watcher.status(now)["last_exits"] if self._store is not None else []
        exits = sorted([*(e for g in gateways for e in g["last_exits"]),
                        *worker["last_exits"], *own], key=lambda e: e["time"])
        return {
            "pid": os.getpid(), "phase": self._phase.value,
            "uptime_s": round(now - self._started_at, 3), "started_at": self._started_wall,
            # Process 0 as before; "gateways" lists every process (index = position).
            "gateway": {k: gateways[0][k] for k in ("state", "pid", "stats")},
            "gateways": [{"index": index, **{k: g[k] for k in _GATEWAY_KEYS}}
                         for index, g in enumerate(gateways)],
            "worker": {**{k: worker[k] for k in _WORKER_KEYS}, **hot},
            "reload": reload, "last_exits": exits[-EXIT_HISTORY:],
            "bundles": self._bundles.status() if self._bundles is not None else [],
            "definitions": self._definitions.status(),
            **({"grpc_server": self._grpc.status(now)} if self._grpc is not None else {}),
            **({"store": self._store.status(now)} if self._store is not None else {}),
        }

    def _release_bundles(self, hot_restarts: int | None) -> None:
        """Once the generations before a hot restart have exited, the bundle versions
        only they used leave the cache (a refresh keeps them for a draining worker)."""
        if self._bundles is None or hot_restarts is None \
                or hot_restarts <= self._bundles_released:
            return
        removed = self._bundles.release()
        if removed is None:
            return  # a refresh runs: the next tick asks again
        self._bundles_released = hot_restarts
        if removed:
            log.info("bundle cache: removed %d version(s) no worker uses any more",
                     len(removed))

    def _reconcile(self, now: float) -> None:
        for watcher in self._roles:
            watcher.reap(now)
        if self._hot is not None:
            self._hot.reap()
            self._release_bundles(self._hot.settled())
        if self._grpc is not None:
            self._grpc.reap(now)
        # One FATAL gateway process of several: the others serve while it cools off.
        if self._phase is Phase.RUNNING and all(g.state is SlotState.FATAL
                                                for g in self._gateways):
            self._stop(now, "the gateway keeps failing", exit_code=GATEWAY_FATAL_EXIT)
        if self._phase is Phase.RUNNING:
            for watcher in self._roles:
                watcher.check_liveness(now)
            if self._hot is not None:
                self._hot.check(now)
            for watcher in self._roles:
                # A candidate booting for a reload takes the place of a restart.
                if self._grpc is not None and watcher is self._grpc.watcher \
                        and self._grpc.replacing:
                    continue
                if watcher is not self._worker or self._hot is None or not self._hot.replacing:
                    watcher.start_if_due(now)
            if self._grpc is not None:
                self._grpc.tick(now)
        elif self._phase is Phase.STOPPING and self._shutdown.advance(now):
            self._phase = Phase.STOPPED
        for child in self._children():
            if child.kill_if_overdue(now):
                log.error("%s still alive after SIGABRT: killed its process group", child.name)
        self._notify(now)

    async def _handle_events(self, wait_s: float) -> None:
        try:
            event: Event | None = await asyncio.wait_for(self._events.get(), wait_s)
        except TimeoutError:
            return
        while event is not None:
            now = self._clock()
            if isinstance(event, SignalEvent):
                self._on_signal(event.signum, now)
            elif isinstance(event, ControlEvent):
                self._route(event.child, event.message, now)
            elif isinstance(event, ControlRequest):
                self._on_command(event, now)
            # ReapEvent: nothing to do but let `_reconcile` run.
            event = self._events.get_nowait() if not self._events.empty() else None

    def _on_signal(self, signum: int, now: float) -> None:
        name = signal.Signals(signum).name
        log.debug("%s received", name)
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stop(now, f"{name} received")
        elif signum == signal.SIGQUIT:
            self._stop(now, f"{name} received", immediate=True)
        elif signum == signal.SIGHUP:
            self._reload(now, "SIGHUP")
        elif signum == signal.SIGUSR1:
            # Logs go to stderr (journald): nothing to reopen; say where we are instead.
            log.info("status: %s", json.dumps(self.status(now), sort_keys=True))

    def _on_command(self, request: ControlRequest, now: float) -> None:
        if request.command == "status":
            answer(request.reply, {"ok": True, "status": self.status(now)})
        elif request.command in ("reload", "restart-worker"):
            self._reload(now, f"coproc {request.command}", request.reply)
        else:  # stop
            answer(request.reply, {"ok": True, "pid": os.getpid()})
            self._stop(now, "coproc stop")

    def _route(self, child: ChildProcess, message: ControlMessage, now: float) -> None:
        """A child's message to the owner of that child."""
        kind = message.type
        # A gateway's `status` comes from its event loop every second: its heartbeat.
        if kind is ControlType.HEARTBEAT or kind is ControlType.STATUS:
            child.heard(now)
        if self._hot is not None and self._hot.owns(child):
            self._hot.on_message(child, message, now)
            return
        watcher = next((w for w in self._roles if w.child is child), None)
        if watcher is None:
            return  # reaped since it was queued
        if kind not in _EXPECTED[child.role]:
            log.warning("%s sent an unexpected %r message; ignored", child.name, kind.value)
        elif kind is ControlType.RELOAD_REQUEST:
            self._reload(now, message.get("reason", "the gateway asked"),
                         self._answer_to(child, message.get("id")))
        elif kind is ControlType.GRPC_DRAINED:
            if self._grpc is not None:
                self._grpc.on_drained(message["address"])
        else:
            ready = watcher.on_message(child, message, now)
            if watcher is self._worker and self._hot is not None:
                if kind is ControlType.LOADED:
                    self._hot.admit(child)
                else:
                    self._hot.on_worker(message, ready, now)

    def _answer_to(self, gateway: ChildProcess, request_id: int | None) -> Waiter | None:
        """A waiter whose outcome goes back to `gateway` (`/tyk/reload?block=true`
        sent `request_id`); None when the gateway does not wait."""
        if request_id is None:
            return None
        waiter: Waiter = asyncio.get_running_loop().create_future()
        waiter.add_done_callback(lambda done: self._link.answer_reload(
            gateway, request_id, done.result()) if not done.cancelled() else None)
        return waiter

    def _reload(self, now: float, reason: str, waiter: Waiter | None = None,
                bundles_checked: bool = False) -> None:
        if self._grpc is not None and self._phase is Phase.RUNNING:
            self._grpc.request(now, reason, waiter)
            return
        if self._phase is not Phase.RUNNING:
            if waiter is not None:
                answer(waiter, {"ok": False, "error": "cannot reload: stopping"})
            return
        if self._hot is None:
            self._reload_definitions(reason, waiter)
            return
        if self._bundles is not None and not bundles_checked:
            # New bundle versions are fetched and verified before the worker restarts
            # onto them; a version that fails keeps the serving one, and the reload
            # is refused with the reason.
            hot = self._hot
            self._bundles.refresh_then(
                lambda: self._reload(self._clock(), reason, waiter, bundles_checked=True),
                lambda error: hot.refuse(self._clock(), reason, waiter, error))
            return
        self._hot.request(now, reason, waiter)

    def _reload_definitions(self, reason: str, waiter: Waiter | None) -> None:
        """No coprocess: nothing restarts, but a reload still re-reads the API definitions,
        as Tyk's does (generation 0: the gateways switch at once), under the same rule
        as a hot restart: never take a serving API out of service."""
        error = self._definitions.check()
        if error:
            log.error("reload (%s) failed: %s", reason, error)
            outcome = {"ok": False, "reason": reason, "error": error}
        else:
            log.info("reload (%s): no coprocess to restart; the gateways re-read the API "
                     "definitions", reason)
            self._link.reload_apis(0)
            self._definitions.settle(ok=True)
            outcome = {"ok": True, "generation": None, "reason": reason, "error": ""}
        self._link.reload_outcome(outcome)
        if waiter is not None:
            answer(waiter, outcome)

    def _stop(self, now: float, why: str, immediate: bool = False, exit_code: int = 0) -> None:
        if not self._shutdown.started:
            if self._grpc is not None:
                self._grpc.stopping()
            self._shutdown.begin(now, why, exit_code)
            self._phase = Phase.STOPPING
        elif not immediate:
            why, immediate = f"{why} again while stopping", True
        if immediate:
            self._shutdown.kill_now(now, f"{why}: stopping now")

    def _notify(self, now: float) -> None:
        """STATUS when the line changes (not over a reload's or a stop's own line),
        READY=1 once every role runs, and the watchdog."""
        line = self._describe()
        if self._phase is Phase.RUNNING and not (self._hot is not None and self._hot.replacing):
            up = all(w.state is SlotState.RUNNING for w in self._roles)
            if up and not self._status.ready_sent:
                log.info("coproc is up: %s", line)
            self._status.update(line, ready=up)
        self._status.ping(now)

    def _describe(self) -> str:
        states = [g.state for g in self._gateways]
        if len(states) == 1:
            parts = [f"gateway {states[0].value}"]
        else:
            up = sum(1 for state in states if state is SlotState.RUNNING)
            parts = [f"gateways {up}/{len(states)} running"]
        if self._worker is not None:
            parts.append(f"worker generation {self._worker.generation} "
                         f"{self._worker.state.value}")
        if self._grpc is not None:
            parts.append(f"gRPC server generation {self._grpc.watcher.generation} "
                         f"{self._grpc.watcher.state.value}")
        if self._store is not None:
            parts.append(f"store {self._store.watcher.state.value}")
        return "; ".join(parts)

    def _children(self) -> Iterator[ChildProcess]:
        yield from (w.child for w in self._roles if w.child is not None)
        if self._hot is not None:
            yield from self._hot.children()
        if self._grpc is not None:
            yield from self._grpc.children()

    def _abandon(self) -> None:
        """Only on an unexpected exit from `run`: no child may outlive us."""
        for child in list(self._children()):
            child.kill_group("supervisor exiting")
            deadline = time.monotonic() + ABANDON_WAIT_S
            while child.reap() is None and time.monotonic() < deadline:
                time.sleep(0.01)  # exceptional path: the loop is ending anyway
            if child.alive:
                log.error("%s was killed but has not exited", child.name)
            self._readers.forget(child)
        for watcher in self._roles:
            watcher.abandoned()
        if self._hot is not None:
            self._hot.abandoned()
        if self._grpc is not None:
            self._grpc.abandoned()


def _next_wakeup(now: float, watchers: Iterable[Watcher], children: Iterable[ChildProcess]
                 ) -> float:
    wakeups = [TICK_S]
    wakeups += [w.restart_at - now for w in watchers if w.restart_at is not None]
    wakeups += [c.kill_at - now for c in children if c.kill_at is not None]
    return max(0.0, min(wakeups))


_GATEWAY_KEYS: Final = ("state", "pid", "uptime_s", "rss_bytes", "restarts", "retry_in_s",
                        "stats")
_WORKER_KEYS: Final = ("state", "generation", "pid", "uptime_s", "rss_bytes",
                       "heartbeat_age_s", "restarts", "retry_in_s", "sandbox")
_NO_WORKER: Final[dict[str, Any]] = {
    "state": "disabled", "generation": None, "pid": None, "uptime_s": None,
    "rss_bytes": None, "heartbeat_age_s": None, "restarts": 0, "retry_in_s": None,
    "sandbox": {},
    "last_exits": [],
}
_NO_HOT: Final[dict[str, Any]] = {"inflight": None, "calls": None, "hot_restarts": 0,
                                  "candidate": None, "retiring": [], "plugins": {}}
_NO_RELOAD: Final[dict[str, Any]] = {"running": None, "last": None}
