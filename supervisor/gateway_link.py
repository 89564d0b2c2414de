"""What the gateway processes are told about the worker, from one place.

`GatewayLink` is the only sender of `worker_state`, `worker_exited`,
`reload_apis`, `grpc_server`, `gateways`, `reload_outcome` and
`reload_answer` (docs/PROTOCOL.md).  It keeps the gateway processes that are
up (`coproc.gateway.processes`), the last `worker_state` and the last reload's
outcome, which a gateway that (re)starts gets at once: a new gateway knows
nothing about the worker.  With several processes it also keeps each
one's state, which every gateway shows in its /hello.

A `Watcher` reports through a `Reporter`: `GatewayReporter` registers its
gateway children with the link, `WorkerReporter` turns the worker slot's
changes and exits into messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from ipc.control import MAX_NAME_CHARS, MAX_NAMES, ControlType
from supervisor.child import ChildProcess
from supervisor.slot import SlotState

__all__ = ["GatewayLink", "GatewayReporter", "Reporter", "WorkerReporter", "reload_fields"]

#: The longest reload error sent to a gateway (the rest is in `coproc status`).
MAX_RELOAD_ERROR: Final = 8 * 1024


def reload_fields(outcome: Mapping[str, Any]) -> dict[str, Any]:
    """A reload's outcome (`Reload.outcome()` and the like) as control-message fields."""
    error = str(outcome.get("error") or "")
    if len(error) > MAX_RELOAD_ERROR:
        error = error[:MAX_RELOAD_ERROR] + " [truncated]"
    names = [str(n)[:MAX_NAME_CHARS] for n in outcome.get("unserved") or ()][:MAX_NAMES]
    return {"ok": bool(outcome.get("ok")), "error": error, "unserved": names}


class GatewayLink:
    def __init__(self, processes: int = 1) -> None:
        self._gateways: list[ChildProcess] = []
        self._last_state: dict[str, Any] | None = None
        self._last_grpc: dict[str, Any] | None = None
        self._last_reload: dict[str, Any] | None = None
        #: With several gateway processes: each one's pid and slot state, by index.
        self._roster: dict[int, dict[str, Any]] = {}
        self._processes = processes

    def gateway_up(self, child: ChildProcess, index: int = 0) -> None:
        self._gateways.append(child)
        if self._last_state is not None:
            child.send(ControlType.WORKER_STATE, self._last_state)
        if self._last_grpc is not None:
            child.send(ControlType.GRPC_SERVER, self._last_grpc)
        if self._last_reload is not None:
            child.send(ControlType.RELOAD_OUTCOME, self._last_reload)
        if self._processes > 1:
            self._roster[index] = {"index": index, "pid": child.pid,
                                   "state": SlotState.STARTING.value}
            self._send_roster()

    def gateway_state(self, index: int, state: SlotState) -> None:
        """Gateway process `index`'s slot changed: every gateway hears (several only)."""
        if self._processes <= 1:
            return
        entry = self._roster.setdefault(index, {"index": index})
        if entry.get("state") != state.value:
            entry["state"] = state.value
            if state is not SlotState.RUNNING and state is not SlotState.STARTING:
                entry.pop("pid", None)  # its process is gone
            self._send_roster()

    def _send_roster(self) -> None:
        self._broadcast(ControlType.GATEWAYS,
                        {"processes": [self._roster[i] for i in sorted(self._roster)]})

    @property
    def gateways(self) -> int:
        """How many gateways are up (each says `grpc_drained` for itself)."""
        return sum(1 for g in self._gateways if g.alive)

    def grpc_server(self, address: str, generation: int) -> None:
        """The supervised gRPC server of `generation` is healthy at `address`."""
        self._last_grpc = {"address": address, "generation": generation}
        self._broadcast(ControlType.GRPC_SERVER, self._last_grpc)

    def gateway_down(self, child: ChildProcess) -> None:
        if child in self._gateways:
            self._gateways.remove(child)

    def worker_state(self, state: SlotState, generation: int, detail: str) -> None:
        # A stopped worker slot is "stopping" to the gateway: the instance is.
        if state is SlotState.STOPPED:
            state = SlotState.STOPPING
        fields = {"state": state.value, "generation": generation, "detail": detail}
        if fields != self._last_state:
            self._last_state = fields
            self._broadcast(ControlType.WORKER_STATE, fields)

    def worker_exited(self, generation: int, reason: str) -> None:
        """Sent first on any worker exit: the gateway fails that generation's
        in-flight calls now instead of letting each wait for its timeout."""
        self._broadcast(ControlType.WORKER_EXITED, {"generation": generation, "reason": reason})

    def reload_apis(self, generation: int) -> None:
        """Re-read the API definitions; switch routes when `generation` is active."""
        self._broadcast(ControlType.RELOAD_APIS, {"generation": generation})

    def reload_outcome(self, outcome: Mapping[str, Any]) -> None:
        """A reload ended (hot restart, definitions only, gRPC server): every gateway's
        /hello says so while the last one failed."""
        self._last_reload = {**reload_fields(outcome), "reason": str(outcome.get("reason", ""))}
        self._broadcast(ControlType.RELOAD_OUTCOME, self._last_reload)

    @staticmethod
    def answer_reload(gateway: ChildProcess, request_id: int,
                      outcome: Mapping[str, Any]) -> None:
        """The outcome of the reload `gateway` asked for with `request_id` (`block=true`)."""
        if gateway.alive:
            gateway.send(ControlType.RELOAD_ANSWER, {"id": request_id,
                                                     **reload_fields(outcome)})

    def _broadcast(self, kind: ControlType, fields: dict[str, Any]) -> None:
        for gateway in self._gateways:
            if gateway.alive:
                gateway.send(kind, fields)


class Reporter(Protocol):
    """Who hears of a watcher's children and state changes."""

    def started(self, child: ChildProcess) -> None: ...

    def changed(self, state: SlotState, generation: int, detail: str) -> None: ...

    def exited(self, child: ChildProcess, reason: str) -> None: ...


class GatewayReporter:
    def __init__(self, link: GatewayLink, index: int = 0) -> None:
        self._link, self._index = link, index

    def started(self, child: ChildProcess) -> None:
        self._link.gateway_up(child, self._index)

    def changed(self, state: SlotState, generation: int, detail: str) -> None:
        self._link.gateway_state(self._index, state)  # the other processes' /hello

    def exited(self, child: ChildProcess, reason: str) -> None:
        self._link.gateway_down(child)


class WorkerReporter:
    def __init__(self, link: GatewayLink) -> None:
        self._link = link

    def started(self, child: ChildProcess) -> None:
        pass  # `changed` (STARTING) follows

    def changed(self, state: SlotState, generation: int, detail: str) -> None:
        if generation:  # generation 0: no worker was ever started
            self._link.worker_state(state, generation, detail)

    def exited(self, child: ChildProcess, reason: str) -> None:
        self._link.worker_exited(child.generation, reason)
