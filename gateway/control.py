"""The gateway's end of the supervisor control channel.

Datagrams in: `worker_state` and `worker_exited`, handed to the hook client
(a worker's death must fail its in-flight calls at once), and `reload_apis`
(hot restart: re-read the API definitions, switch router when the new worker
generation becomes active, so that every request is served by one consistent
pair of routes and plugins).  Datagrams out: `ready` once HTTP is served,
`status` every second, and `reload_request` for `POST /tyk/reload`.  Without
`$COPROC_CONTROL_FD` (run by hand) the channel is inert.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiohttp import web

from config import ConfigError, load_api_definitions
from config.gateway import GatewayConfig
from gateway.admin import admin_denied
from gateway.plan import ApiPlan, build_router
from gateway.router import Router
from ipc.control import MAX_DATAGRAM, decode_control, encode_control
from ipc.schema import ProtocolError

__all__ = ["ControlChannel", "RouterSwitch", "WorkerEvents", "dispatch", "make_reload",
           "report_status", "status_message"]

log = logging.getLogger("coproc.gateway.control")


class WorkerEvents(Protocol):
    """What the supervisor's news is delivered to (the hook client)."""

    stats: dict[str, int]

    def on_worker_exited(self, generation: int, reason: str) -> None: ...

    def on_worker_state(self, state: str, generation: int | None, detail: str) -> None: ...

    def health(self) -> dict[str, Any]: ...


class ControlChannel:
    """Non-blocking datagram I/O on the inherited socket, driven by the event loop."""

    def __init__(self, sock: socket.socket | None) -> None:
        if sock is not None:
            sock.setblocking(False)  # a stuck supervisor must never block the event loop
        self._sock = sock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_message: Callable[[dict[str, Any]], None] | None = None

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def start(self, on_message: Callable[[dict[str, Any]], None]) -> None:
        if self._sock is None:
            return
        self._on_message = on_message
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._readable)

    def send(self, message: Mapping[str, Any]) -> bool:
        """Send one datagram; False if it could not go (the supervisor is busy or gone)."""
        if self._sock is None:
            return False
        try:
            self._sock.send(encode_control(message))
        except BlockingIOError:
            log.debug("control channel full: dropped %s", message.get("type"))
            return False
        except OSError as exc:
            log.warning("control channel send failed: %s", exc)
            return False
        return True

    def close(self) -> None:
        if self._sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None

    def _readable(self) -> None:
        sock = self._sock
        # Bounded: a flood of datagrams cannot hold the event loop.
        for _ in range(64):
            if sock is None:
                return
            try:
                datagram = sock.recv(MAX_DATAGRAM + 1)
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("control channel closed: %s", exc)
                self._stop_reading()
                return
            if not datagram:
                log.warning("control channel closed by the supervisor")
                self._stop_reading()
                return
            try:
                message = decode_control(datagram)
            except ProtocolError as exc:
                log.warning("dropped an invalid control datagram: %s", exc)
                continue
            if self._on_message is not None:
                self._on_message(message)

    def _stop_reading(self) -> None:
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())


class RouterTarget(Protocol):
    """What holds the router requests are matched with (the chain)."""

    router: Router[ApiPlan]


class RouterSwitch:
    """Swap in a router built from re-read API definitions, in step with the worker.

    `reload_apis(N)` builds the new router at once (reading files off the
    request path), but the chain keeps the old one until worker generation N
    is active: routes and plugins change together.  A definition that no
    longer loads keeps the old router (the supervisor checked the files before
    the reload, so this is a race with an editor; it is logged).
    """

    def __init__(self, cfg: GatewayConfig, target: RouterTarget,
                 active_generation: Callable[[], int | None]) -> None:
        self._cfg, self._target, self._active = cfg, target, active_generation
        self._pending: tuple[int, Router[ApiPlan]] | None = None

    def on_reload_apis(self, generation: int) -> None:
        try:
            router = build_router(self._cfg, load_api_definitions(self._cfg))
        except ConfigError as exc:
            log.error("reload: API definitions not reloaded, keeping the current routes: %s",
                      exc)
            return
        self._pending = (generation, router)
        active = self._active()
        if active is not None and active >= generation:
            self.on_activated(active)

    def on_activated(self, generation: int) -> None:
        pending = self._pending
        if pending is not None and generation >= pending[0]:
            self._target.router, self._pending = pending[1], None
            log.info("worker generation %d active: switched to the reloaded API definitions",
                     generation)


def make_reload(secret: str, channel: ControlChannel
                ) -> Callable[[web.Request], Awaitable[web.Response]]:
    """GET or POST /tyk/reload (and /tyk/reload/group): ask the supervisor for a
    hot restart, as Tyk's admin call does.

    Guarded by the config's `secret` in `X-Tyk-Authorization`, compared in
    constant time; with no secret configured the endpoint is disabled.  The
    reload is queued and the answer does not wait for its outcome (Tyk's
    `block=true` is not supported; `coproc reload` waits).  One instance is
    its own group, so `/group` reloads this instance only.
    """

    async def reload(request: web.Request) -> web.Response:
        denied = admin_denied(request, secret)
        if denied is not None:
            return denied
        if not channel.send({"type": "reload_request", "reason": "POST /tyk/reload"}):
            return web.json_response(
                {"status": "error", "message": "no supervisor to reload the worker"},
                status=503)
        return web.json_response({"status": "ok", "message": ""})

    return reload


def dispatch(message: Mapping[str, Any], events: WorkerEvents,
             on_reload_apis: Callable[[int], None] | None = None) -> None:
    """Deliver one validated supervisor message."""
    kind = message["type"]
    if kind == "reload_apis" and on_reload_apis is not None:
        on_reload_apis(message["generation"])
    elif kind == "worker_exited":
        events.on_worker_exited(message["generation"], message["reason"])
    elif kind == "worker_state":
        events.on_worker_state(message["state"], message.get("generation"),
                               message.get("detail", ""))
    else:
        log.warning("ignored control message %r: not sent to a gateway", kind)


def status_message(events: WorkerEvents, *stats: Mapping[str, int]) -> dict[str, Any]:
    merged: dict[str, int] = {}
    for source in (events.stats, *stats):
        merged.update((k, v) for k, v in source.items()
                      if isinstance(v, int) and not isinstance(v, bool))
    message: dict[str, Any] = {"type": "status", "stats": merged}
    generation = events.health().get("generation")
    if isinstance(generation, int):
        message["active_generation"] = generation
    return message


async def report_status(channel: ControlChannel, events: WorkerEvents,
                        stats: Mapping[str, int], interval: float = 1.0) -> None:
    """Send `status` every `interval` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        channel.send(status_message(events, stats))
