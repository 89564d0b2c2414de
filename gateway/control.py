"""The gateway's end of the supervisor control channel.

Datagrams in: `worker_state` and `worker_exited`, handed to the hook client
(a worker's death must fail its in-flight calls at once), `grpc_server` (a
supervised gRPC plugin server is healthy at an address: the gRPC client
switches to it; `grpc_drained` goes back once the old address has no call
left, see `grpc_drained_sender`), and `reload_apis`
(hot restart: re-read the API definitions, switch router when the new worker
generation becomes active, so that every request is served by one consistent
pair of routes and plugins).  Datagrams out: `ready` once HTTP is served,
`status` every second, and `reload_request` for `/tyk/reload`; with
`block=true` the supervisor's `reload_answer` settles that request, and
`reload_outcome` (every reload's end) goes to /hello.  Without
`$COPROC_CONTROL_FD` (run by hand) the channel is inert.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiohttp import web

from config import BrokenDefinition, ConfigError, load_definition_set
from config.gateway import GatewayConfig
from gateway.admin import admin_denied
from gateway.plan import ApiPlan, build_router
from gateway.router import Router
from ipc.control import ControlEndpoint, ControlMessage, ControlType

__all__ = ["ControlChannel", "ReloadWaits", "RouterSwitch", "WorkerEvents", "dispatch",
           "grpc_drained_sender", "make_reload", "report_status", "status_message"]

log = logging.getLogger("coproc.gateway.control")


class WorkerEvents(Protocol):
    """What the supervisor's news is delivered to (the hook client)."""

    stats: dict[str, int]

    def on_worker_exited(self, generation: int, reason: str) -> None: ...

    def on_worker_state(self, state: str, generation: int | None, detail: str) -> None: ...

    def health(self) -> dict[str, Any]: ...


class ControlChannel:
    """The inherited control endpoint, read by the event loop; inert when run by hand."""

    def __init__(self, sock: socket.socket | None) -> None:
        self._endpoint = ControlEndpoint(sock, "gateway control") if sock is not None else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_message: Callable[[ControlMessage], None] | None = None

    @property
    def connected(self) -> bool:
        return self._endpoint is not None

    def start(self, on_message: Callable[[ControlMessage], None]) -> None:
        if self._endpoint is None:
            return
        self._on_message = on_message
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._endpoint.fileno(), self._readable)

    def send(self, kind: ControlType, fields: Mapping[str, Any] | None = None) -> bool:
        """Send one message; False if it could not go (the supervisor is busy or gone)."""
        return self._endpoint is not None and self._endpoint.send(kind, fields)

    def close(self) -> None:
        if self._endpoint is None:
            return
        self._stop_reading()
        self._endpoint.close()
        self._endpoint = None

    def _readable(self) -> None:
        endpoint = self._endpoint
        if endpoint is None:
            return
        for message in endpoint.receive():  # bounded: a flood cannot hold the loop
            if self._on_message is not None:
                self._on_message(message)
        if endpoint.closed:
            log.warning("control channel closed by the supervisor")
            self._stop_reading()

    def _stop_reading(self) -> None:
        if self._endpoint is not None and self._loop is not None:
            self._loop.remove_reader(self._endpoint.fileno())
            self._loop = None


class RouterTarget(Protocol):
    """What holds the router requests are matched with (the chain)."""

    router: Router[ApiPlan]


class RouterSwitch:
    """Swap in a router built from re-read API definitions, in step with the worker.

    `reload_apis(N)` builds the new router at once (reading files off the
    request path), but the chain keeps the old one until worker generation N
    is active: routes and plugins change together.  N = 0 switches at once:
    the supervisor sends it when its gRPC plugin server (no worker) is
    hot-restarted, just before the new server's address.  Definitions that do not
    load are left out, and handed to `on_broken` at the switch (health names
    them); an unusable app_path keeps the old router (logged).
    """

    def __init__(self, cfg: GatewayConfig, target: RouterTarget,
                 active_generation: Callable[[], int | None],
                 on_broken: Callable[[tuple[BrokenDefinition, ...]], None] | None = None
                 ) -> None:
        self._cfg, self._target, self._active = cfg, target, active_generation
        self._on_broken = on_broken
        self._pending: tuple[int, Router[ApiPlan], tuple[BrokenDefinition, ...]] | None = None

    def on_reload_apis(self, generation: int) -> None:
        try:
            loaded = load_definition_set(self._cfg)
        except ConfigError as exc:
            log.error("reload: API definitions not reloaded, keeping the current routes: %s",
                      exc)
            return
        self._pending = (generation, build_router(self._cfg, loaded.apis), loaded.broken)
        if generation == 0:
            self.on_activated(0)
            return
        active = self._active()
        if active is not None and active >= generation:
            self.on_activated(active)

    def on_activated(self, generation: int) -> None:
        pending = self._pending
        if pending is not None and generation >= pending[0]:
            self._target.router, self._pending = pending[1], None
            if self._on_broken is not None:
                self._on_broken(pending[2])
            if generation:
                log.info("worker generation %d active: switched to the reloaded API "
                         "definitions", generation)
            else:
                log.info("switched to the reloaded API definitions")


class ReloadWaits:
    """`/tyk/reload?block=true` requests waiting for the supervisor's answer, by id."""

    #: Waiting requests at most: more answer 503 at once (each holds a connection).
    MAX_WAITING = 64

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[ControlMessage]] = {}

    def ask(self, channel: ControlChannel, reason: str
            ) -> asyncio.Future[ControlMessage] | None:
        """Send a `reload_request` with a new id: the future of its answer, or None
        if it could not go (no supervisor)."""
        request_id = next(self._ids)
        if not channel.send(ControlType.RELOAD_REQUEST, {"reason": reason, "id": request_id}):
            return None
        future: asyncio.Future[ControlMessage] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        future.add_done_callback(lambda _: self._waiting.pop(request_id, None))
        return future

    @property
    def waiting(self) -> int:
        """Requests waiting for their answer."""
        return len(self._waiting)

    @property
    def full(self) -> bool:
        return self.waiting >= self.MAX_WAITING

    def answered(self, message: ControlMessage) -> None:
        """A `reload_answer`: settle its request (gone already if it timed out)."""
        future = self._waiting.pop(message["id"], None)
        if future is not None and not future.done():
            future.set_result(message)


def make_reload(secret: str, channel: ControlChannel, waits: ReloadWaits | None = None,
                wait_s: float = 45.0) -> Callable[[web.Request], Awaitable[web.Response]]:
    """GET or POST /tyk/reload (and /tyk/reload/group): ask the supervisor for a
    hot restart, as Tyk's admin call does.

    Guarded by the config's `secret` in `X-Tyk-Authorization`, compared in
    constant time; with no secret configured the endpoint is disabled.  Without
    `block=true` the reload is queued and the answer is Tyk's at once
    (`{"status": "ok", "message": ""}`).  With it (Tyk's `block=true`), the
    answer waits for the outcome, up to `wait_s` (then 504): Tyk's ok answer
    when the new configuration serves (`message` names the APIs whose plugins
    failed to load, if any: they answer 500), else 500 with Tyk's error shape
    and the reason, as `coproc reload` prints it (the previous configuration
    serves).  One instance is its own group, so `/group` reloads this instance
    only.
    """
    waits = waits or ReloadWaits()

    async def reload(request: web.Request) -> web.Response:
        denied = admin_denied(request, secret)
        if denied is not None:
            return denied
        reason = f"{request.method} {request.path}"
        if request.query.get("block") != "true":  # as Tyk reads it
            if not channel.send(ControlType.RELOAD_REQUEST, {"reason": reason}):
                return _reload_error(503, _NO_SUPERVISOR)
            return web.json_response({"status": "ok", "message": ""})
        if waits.full:
            return _reload_error(503, f"{ReloadWaits.MAX_WAITING} reloads are waiting already")
        asked = waits.ask(channel, reason)
        if asked is None:
            return _reload_error(503, _NO_SUPERVISOR)
        try:
            answer = await asyncio.wait_for(asked, wait_s)
        except TimeoutError:
            return _reload_error(504, f"the reload did not finish within {wait_s:.0f} s; "
                                      "`coproc status` shows its outcome")
        if not answer["ok"]:
            return _reload_error(500, f"reload failed, nothing changed: "
                                      f"{answer.get('error') or 'unknown error'}")
        unserved = answer.get("unserved") or []
        message = "not served, plugins failed to load: " + "; ".join(unserved) \
            if unserved else ""
        return web.json_response({"status": "ok", "message": message})

    return reload


_NO_SUPERVISOR = "no supervisor to reload the worker"


def _reload_error(status: int, message: str) -> web.Response:
    return web.json_response({"status": "error", "message": message}, status=status)


def dispatch(message: ControlMessage, events: WorkerEvents,
             on_reload_apis: Callable[[int], None] | None = None,
             on_grpc_server: Callable[[str, int], None] | None = None,
             on_gateways: Callable[[list[dict[str, Any]]], None] | None = None, *,
             on_reload_outcome: Callable[[ControlMessage], None] | None = None,
             on_reload_answer: Callable[[ControlMessage], None] | None = None) -> None:
    """Deliver one validated supervisor message."""
    kind = message.type
    if kind is ControlType.GATEWAYS and on_gateways is not None:
        on_gateways(message["processes"])
    elif kind is ControlType.RELOAD_OUTCOME and on_reload_outcome is not None:
        on_reload_outcome(message)
    elif kind is ControlType.RELOAD_ANSWER and on_reload_answer is not None:
        on_reload_answer(message)
    elif kind is ControlType.RELOAD_APIS and on_reload_apis is not None:
        on_reload_apis(message["generation"])
    elif kind is ControlType.GRPC_SERVER and on_grpc_server is not None:
        on_grpc_server(message["address"], message["generation"])
    elif kind is ControlType.WORKER_EXITED:
        events.on_worker_exited(message["generation"], message["reason"])
    elif kind is ControlType.WORKER_STATE:
        events.on_worker_state(message["state"], message.get("generation"),
                               message.get("detail", ""))
    else:
        log.warning("ignored control message %r: not sent to a gateway", kind.value)


def grpc_drained_sender(channel: ControlChannel) -> Callable[[str], None]:
    """What the gRPC client calls when a replaced address has no call left."""
    def drained(address: str) -> None:
        channel.send(ControlType.GRPC_DRAINED, {"address": address})

    return drained


def status_message(events: WorkerEvents, *stats: Mapping[str, int]) -> dict[str, Any]:
    """The fields of one `status` message."""
    merged: dict[str, int] = {}
    for source in (events.stats, *stats):
        merged.update((k, v) for k, v in source.items()
                      if isinstance(v, int) and not isinstance(v, bool))
    message: dict[str, Any] = {"stats": merged}
    generation = events.health().get("generation")
    if isinstance(generation, int):
        message["active_generation"] = generation
    return message


async def report_status(channel: ControlChannel, events: WorkerEvents,
                        stats: Mapping[str, int], interval: float = 1.0) -> None:
    """Send `status` every `interval` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        channel.send(ControlType.STATUS, status_message(events, stats))
