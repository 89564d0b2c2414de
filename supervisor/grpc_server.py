"""The supervised gRPC plugin server: the instance's coprocess when it is not the worker.

`GrpcServerRole` owns one `Watcher` (spawned from `grpc_server_spec`, its own
`RestartPolicy`) plus what the watcher does not know about a server that
speaks no Coproc protocol:

* health: the server never says `ready`; it is probed instead (health.py's
  `probe`: the gRPC health protocol, or a connection when the server does not
  implement it).  Healthy -> the slot is RUNNING and the gateway is told the
  address (`GatewayLink.grpc_server` -> `GrpcHookClient.switch`).  Not
  healthy within `boot_timeout_ms`, or `health_failures` failed checks in a
  row while running -> SIGABRT/SIGKILL, and the watcher restarts it with
  backoff;
* hot restart (`coproc reload`, SIGHUP): with `{listen}` in the command, a
  candidate generation starts on a new address beside the active one; once
  healthy the gateway switches to it, the old one is retiring until the
  gateway says `grpc_drained` for its address (or `drain_grace_ms` passes),
  then gets SIGTERM.  Without `{listen}` the address cannot move: the old
  server is stopped first and the new one started after it exited; calls in
  between fail fast (503, counted in the gateway's `grpc_unavailable`).
  Either way the gateways re-read the API definitions and switch to them
  together with the new address (`reload_apis` with generation 0).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from config.gateway import GRPC_LISTEN_ENV, GatewayConfig
from ipc.contract import GENERATION_ENV, SUPERVISOR_PID_ENV, coprocess_env
from ipc.control import ControlMessage, ControlType
from supervisor.child import ChildProcess, ChildState
from supervisor.definitions import ServedDefinitions
from supervisor.gateway_link import GatewayLink
from supervisor.grpc_health import probe
from supervisor.policy import RestartPolicy
from supervisor.readers import ChildReaders
from supervisor.reload import Waiter
from supervisor.slot import SlotState
from supervisor.spawner import grpc_server_spec
from supervisor.watcher import Watcher

__all__ = ["GrpcServerRole"]

#: Between two probes of a server that is not healthy yet.
BOOT_PROBE_S: Final = 0.1
#: One probe's bound (connect + health call).
PROBE_TIMEOUT_S: Final = 1.0

log = logging.getLogger("coproc.supervisor.grpc_server")


def _answer(waiter: Waiter, result: dict[str, Any]) -> None:
    if not waiter.done():
        waiter.set_result(result)


@dataclass(slots=True)
class _Probe:
    """Health of one child: the probe in flight, when the next is due, failures."""

    task: asyncio.Future[str] | None = None
    due: float = 0.0
    failures: int = 0
    last_error: str = ""


@dataclass(slots=True)
class _Restart:
    """One hot restart: who waits for it, and the candidate (or the stopped old one)."""

    reason: str
    waiters: list[Waiter] = field(default_factory=list)
    candidate: ChildProcess | None = None
    stopping: ChildProcess | None = None  # stop-then-start: the old one, until it exits
    stop_deadline: float = 0.0  # ... which is aborted if it has not exited by then


class _Quiet:
    """The watcher's reporter: nobody is told the server's slot changes (the
    gateway hears of an address only once it is healthy); its socket goes."""

    def __init__(self, role: GrpcServerRole) -> None:
        self._role = role

    def started(self, child: ChildProcess) -> None:
        pass

    def changed(self, state: SlotState, generation: int, detail: str) -> None:
        pass

    def exited(self, child: ChildProcess, reason: str) -> None:
        self._role.gone(child, watched=False)  # the watcher forgot its reader already


class GrpcServerRole:
    def __init__(self, cfg: GatewayConfig, link: GatewayLink, readers: ChildReaders,
                 clock: Callable[[], float],
                 definitions: ServedDefinitions | None = None) -> None:
        self._cfg, self._opts, self._link, self._readers = cfg, cfg.grpc_server, link, readers
        self._clock = clock
        #: What a reload re-reads: checked before it starts, settled when it ends.
        self.definitions = definitions or ServedDefinitions(cfg)
        spec = grpc_server_spec(self._opts.command, str(cfg.path), self._env)
        self.watcher = Watcher(spec, RestartPolicy.from_options(cfg.supervisor, clock),
                               readers, _Quiet(self), cfg.supervisor.flap_window_s)
        self._probes: dict[ChildProcess, _Probe] = {}
        self._restart: _Restart | None = None
        #: Old generations after a switch: child -> (its address, SIGTERM deadline).
        self._retiring: dict[ChildProcess, tuple[str, float]] = {}
        self._drained: dict[str, int] = {}  # address -> gateways that said grpc_drained
        self._address = ""  # the one the gateway was last told
        self.hot_restarts = 0
        self.last_reload: dict[str, Any] | None = None

    # -- addresses ---------------------------------------------------------

    def address(self, generation: int) -> str:
        """Where generation `generation` listens (what `{listen}` becomes)."""
        if not self._opts.movable:
            return self._cfg.grpc.server
        return f"unix://{self._socket_path(generation)}"

    def _socket_path(self, generation: int) -> Path:
        return self._cfg.run_dir / f"grpc-{generation}.sock"

    def _env(self, generation: int) -> dict[str, str]:
        env = coprocess_env(os.environ)
        env[SUPERVISOR_PID_ENV] = str(os.getpid())
        env[GENERATION_ENV] = str(generation)
        env[GRPC_LISTEN_ENV] = self.address(generation)
        if self._opts.movable:  # a stale file would make the bind fail
            self._socket_path(generation).unlink(missing_ok=True)
        return env

    # -- the reconcile loop's steps ------------------------------------------

    @property
    def replacing(self) -> bool:
        """A hot restart runs: it, not the watcher's backoff, starts the next server
        (a crash of the active one meanwhile does not start a second new one)."""
        restart = self._restart
        return restart is not None and (restart.stopping is not None
                                        or restart.candidate is not None)

    def children(self) -> Iterator[ChildProcess]:
        """The generations outside the watcher's slot: candidate, stopping, retiring."""
        if self._restart is not None:
            yield from (c for c in (self._restart.candidate, self._restart.stopping)
                        if c is not None)
        yield from self._retiring

    def reap(self, now: float) -> None:
        restart = self._restart
        if restart is not None and restart.candidate is not None:
            status = restart.candidate.reap()
            if status is not None:
                candidate = restart.candidate
                restart.candidate = None
                self.gone(candidate)
                self.watcher.remember_exit(candidate, status.describe())
                self._finish(f"{candidate.name} {status.describe()} before it was healthy")
        if restart is not None and restart.stopping is not None:
            status = restart.stopping.reap()
            if status is not None:
                log.info("%s %s (stop-then-start)", restart.stopping.name, status.describe())
                self.gone(restart.stopping)
                restart.stopping = None
                self.watcher.reinstate(None, now, fatal=False)  # start the next one now
        for child in list(self._retiring):
            status = child.reap()
            if status is not None:
                (log.info if status.clean else log.warning)("%s (retired) %s", child.name,
                                                            status.describe())
                address, _deadline = self._retiring.pop(child)
                self._drained.pop(address, None)
                self.gone(child)

    def tick(self, now: float) -> None:
        """Probe what is due; switch to a healthy candidate; stop drained servers."""
        active = self.watcher.child
        if active is not None:
            self._check(active, now, candidate=False)
        restart = self._restart
        if restart is not None and restart.candidate is not None:
            self._check(restart.candidate, now, candidate=True)
        if restart is not None and restart.stopping is not None \
                and restart.stopping.state is ChildState.STOPPING and now >= restart.stop_deadline:
            restart.stopping.abort(now, "did not stop after SIGTERM")
        for child, (address, deadline) in list(self._retiring.items()):
            drained = self._drained.get(address, 0) >= max(1, self._link.gateways)
            if child.state in (ChildState.STARTING, ChildState.READY) \
                    and (now >= deadline or drained):
                why = "drained" if now < deadline else \
                    f"not drained within {self._opts.drain_grace_ms} ms"
                log.info("%s %s: SIGTERM", child.name, why)
                child.terminate()
                self._retiring[child] = (address, now + self._cfg.supervisor.stop_grace_ms / 1000)
            elif child.state is ChildState.STOPPING and now >= deadline:
                child.abort(now, "did not stop after SIGTERM")

    def _check(self, child: ChildProcess, now: float, candidate: bool) -> None:
        state = self._probes.setdefault(child, _Probe(due=now))
        if state.task is not None:
            if not state.task.done():
                return
            error = state.task.result() if not state.task.cancelled() else "probe cancelled"
            state.task = None
            self._probed(child, state, error, now, candidate)
        if child.state not in (ChildState.STARTING, ChildState.READY) or now < state.due:
            return
        if child.state is ChildState.STARTING \
                and now - child.started_at > self._opts.boot_timeout_ms / 1000:
            why = (f"not healthy within {self._opts.boot_timeout_ms} ms"
                   + (f" ({state.last_error})" if state.last_error else ""))
            log.error("%s is %s: killed", child.name, why)
            child.abort(now, why)
            return
        target = self.address(child.generation)
        state.task = asyncio.ensure_future(asyncio.to_thread(probe, target, PROBE_TIMEOUT_S))

    def _probed(self, child: ChildProcess, state: _Probe, error: str, now: float,
                candidate: bool) -> None:
        if child.state is ChildState.STARTING:
            state.last_error = error
            state.due = now + BOOT_PROBE_S
            if not error:
                self._healthy(child, now, candidate)
                state.due = now + self._opts.health_interval_ms / 1000
            return
        if child.state is not ChildState.READY:
            return
        state.due = now + self._opts.health_interval_ms / 1000
        if not error:
            state.failures = 0
            return
        state.failures += 1
        log.warning("%s failed a health check (%d/%d): %s", child.name, state.failures,
                    self._opts.health_failures, error)
        if state.failures >= self._opts.health_failures and not candidate:
            child.abort(now, f"failed {state.failures} health checks ({error})")

    def _healthy(self, child: ChildProcess, now: float, candidate: bool) -> None:
        ready = ControlMessage(ControlType.READY, {"role": child.role.value, "pid": child.pid,
                                                   "generation": child.generation})
        address = self.address(child.generation)
        if candidate:
            restart = self._restart
            assert restart is not None  # a candidate exists only during a restart
            child.mark_ready(now)
            old = self.watcher.release()
            self.watcher.adopt(child, ready, now)
            restart.candidate = None
            if old is not None:
                self._retiring[old] = (self.address(old.generation),
                                       now + self._opts.drain_grace_ms / 1000)
                log.info("%s is retiring: the gateway drains its calls", old.name)
        else:
            self.watcher.on_message(child, ready, now)
        log.info("%s is healthy at %s after %.2f s", child.name, address,
                 now - child.started_at)
        self._address = address
        if self._restart is not None:
            # A reload: the definitions are read again, and the gateways switch to them
            # as this server takes the calls (generation 0: no worker to wait for).
            self._link.reload_apis(0)
        self._link.grpc_server(address, child.generation)
        if self._restart is not None and self._restart.candidate is None \
                and self._restart.stopping is None:
            self.hot_restarts += 1
            self._finish()

    def on_drained(self, address: str) -> None:
        """A gateway closed its channel to `address` (it has no call left there)."""
        if any(a == address for a, _ in self._retiring.values()):
            self._drained[address] = self._drained.get(address, 0) + 1

    # -- hot restart ---------------------------------------------------------

    def request(self, now: float, reason: str, waiter: Waiter | None = None) -> None:
        """Hot-restart the server (see the module docstring)."""
        if self.watcher.state in (SlotState.STOPPING, SlotState.STOPPED):
            if waiter is not None:
                _answer(waiter, {"ok": False, "error": "cannot reload: stopping"})
            return
        if self._restart is not None:
            if waiter is not None:
                self._restart.waiters.append(waiter)
            return
        error = self.definitions.check()  # as the worker's hot restart does
        if error:
            log.error("reload (%s) failed: %s", reason, error)
            self.last_reload = {"ok": False, "generation": self.watcher.generation,
                                "reason": reason, "error": error, "state": "failed"}
            self._link.reload_outcome(self.last_reload)
            if waiter is not None:
                _answer(waiter, self.last_reload)
            return
        restart = self._restart = _Restart(reason, [waiter] if waiter is not None else [])
        if self.watcher.state is SlotState.FATAL:
            self.watcher.revive(now)
        if self.watcher.child is None or not self._opts.movable:
            old = self.watcher.release()
            if old is None:  # nothing runs: a fresh start is the restart
                self.watcher.reinstate(None, now, fatal=False)
                return
            log.info("hot restart (%s): the command has no {listen}: stopping %s first",
                     reason, old.name)
            old.terminate()
            restart.stopping = old
            restart.stop_deadline = now + self._cfg.supervisor.stop_grace_ms / 1000
            return
        try:
            restart.candidate = self.watcher.spawn_candidate(now)
        except OSError as exc:
            self._finish(f"could not start a new gRPC server: {exc}")
            return
        log.info("hot restart (%s): started %s at %s beside the active one", reason,
                 restart.candidate.name, self.address(restart.candidate.generation))

    def _finish(self, error: str = "") -> None:
        restart, self._restart = self._restart, None
        if restart is None:
            return
        generation = self.watcher.generation
        result = {"ok": not error, "generation": generation, "reason": restart.reason,
                  "error": error, "state": "failed" if error else "done"}
        self.last_reload = result
        self._link.reload_outcome(result)
        self.definitions.settle(ok=not error)
        if error:
            log.error("gRPC server hot restart (%s) failed, the active one keeps serving: %s",
                      restart.reason, error)
        for waiter in restart.waiters:
            _answer(waiter, result)

    def stopping(self) -> None:
        """The instance stops: a candidate never served; retiring ones stop now."""
        restart = self._restart
        if restart is not None and restart.candidate is not None:
            restart.candidate.kill_group("stopping")
        self._finish("the supervisor is stopping")
        for child in self._retiring:
            child.terminate()

    def gone(self, child: ChildProcess, watched: bool = True) -> None:
        """A generation exited: forget its probe (and its reader if `watched`),
        remove its socket."""
        if watched:
            self._readers.forget(child)
        probe_state = self._probes.pop(child, None)
        if probe_state is not None and probe_state.task is not None:
            probe_state.task.cancel()
        if self._opts.movable:
            self._socket_path(child.generation).unlink(missing_ok=True)

    def abandoned(self) -> None:
        self._retiring.clear()
        self._restart = None

    def status(self, now: float) -> dict[str, Any]:
        """The server's part of `coproc status`."""
        own = self.watcher.status(now)
        restart = self._restart
        return {
            **{k: own[k] for k in ("state", "generation", "pid", "uptime_s", "restarts",
                                   "retry_in_s", "last_exits")},
            "address": self._address, "movable": self._opts.movable,
            "hot_restarts": self.hot_restarts,
            "candidate": restart.candidate.generation
            if restart is not None and restart.candidate is not None else None,
            "retiring": sorted(c.generation for c in self._retiring),
            "reload": self.last_reload,
        }
