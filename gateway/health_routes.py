"""The health endpoints over `gateway.health.HealthRegistry`, and the gateway's own components.

GET /hello (liveness: always 200), GET /ready (readiness: 503 with Tyk's
`{"status": "error", "message": ...}` until ready), GET /coproc/status (full
detail; the admin secret in `X-Tyk-Authorization`, as Tyk's admin API).

The gateway reports five kinds of component here: `worker` (the plugin
worker, when coprocess is on), `storage` (the session store; required when it
is Redis), one `api:<api_id>` per API that cannot serve (its plugins are
disabled, its bundle is unusable or a plugin failed to import), one per
API definition file that does not load (`api:<api_id>`, or `apidef:<file
name>` when the id is unknown or another file's API has it): the public
reason names the file's base name and field, `/coproc/status` the full message;
and `reload` (warn) while the last reload failed: what serves is the
configuration from before it, not what the files say.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiohttp import web

from config.apidef import BrokenDefinition
from gateway.admin import admin_denied
from gateway.health import Check, HealthRegistry, Status

__all__ = [
    "STATUS_PATH",
    "BrokenDefinitions",
    "add_health_routes",
    "api_checks",
    "report_storage",
    "show_reload_outcome",
    "watch_definitions",
    "watch_gateway",
    "watch_storage",
    "worker_check",
]

log = logging.getLogger("coproc.gateway.health")

STATUS_PATH = "/coproc/status"
# How often a Redis store is pinged for /hello and /ready (Tyk checks every 10 s;
# readiness should notice a lost Redis sooner).
STORAGE_INTERVAL_S = 2.0

Handler = Callable[[web.Request], Awaitable[web.Response]]


#: Tyk's answer from /tyk/health while its health check counters are off.
HEALTH_CHECKS_OFF = "Health checks are not enabled for this node"


def add_health_routes(app: web.Application, registry: HealthRegistry, secret: str,
                      extra: Callable[[], Mapping[str, Any]] = dict) -> None:
    """GET /hello, /ready and the authenticated detail; `extra` joins the detail."""

    async def hello(request: web.Request) -> web.Response:
        return web.json_response(registry.liveness())

    async def ready(request: web.Request) -> web.Response:
        why, body = registry.readiness()
        if why:
            return web.json_response({"status": "error", "message": why}, status=503)
        return web.json_response(body)

    async def status(request: web.Request) -> web.Response:
        denied = admin_denied(request, secret)
        if denied is not None:
            return denied
        return web.json_response({**registry.detail(), **extra()})

    async def tyk_health(request: web.Request) -> web.Response:
        # Tyk's per-API health counters (health_check.enable_health_checks) are not
        # kept, so its endpoint answers as Tyk does with them off; /hello is the check.
        denied = admin_denied(request, secret)
        if denied is not None:
            return denied
        return web.json_response({"status": "error", "message": HEALTH_CHECKS_OFF},
                                 status=400)

    app.router.add_get("/hello", hello)
    app.router.add_get("/ready", ready)
    app.router.add_get(STATUS_PATH, status)
    app.router.add_get("/tyk/health", tyk_health)


def watch_gateway(registry: HealthRegistry, *, coprocess: bool,
                  worker: Callable[[], Mapping[str, Any]],
                  unserved: Callable[[], Iterable[tuple[str, str, str]]]) -> None:
    """Register the gateway's probes: `worker` (the hook client's health record) and
    one `api:<id>` per API that cannot serve (`unserved`: (api_id, public reason,
    full reason))."""
    if not coprocess:
        registry.loaded = True  # nothing to load: APIs with plugins report themselves closed

    def worker_probe() -> Check:
        check = worker_check(worker())
        if check.status is Status.PASS:
            registry.loaded = True  # a worker loaded the plugins at least once
        return check

    def apis_probe() -> dict[str, Check]:
        return api_checks(unserved(), worker().get("plugins", {}) if coprocess else {})

    if coprocess:
        registry.watch("worker", worker_probe)
    registry.watch_group("apis", apis_probe)


class BrokenDefinitions:
    """The definition files the live routes left out (replaced when a reload switches)."""

    def __init__(self, broken: Iterable[BrokenDefinition] = ()) -> None:
        self.items: tuple[BrokenDefinition, ...] = tuple(broken)

    def replace(self, broken: Iterable[BrokenDefinition]) -> None:
        self.items = tuple(broken)


#: A gateway process's slot state (supervisor) -> its /hello status.
_PROCESS_STATUS = {"running": Status.PASS, "fatal": Status.FAIL}


def show_gateway_processes(registry: HealthRegistry, processes: Iterable[Mapping[str, Any]],
                           own_index: int) -> None:
    """One `gateway:<index>` component per gateway process of the instance (the
    supervisor's `gateways` message): every process's /hello names them all.
    Public: name and status; the pid and which one answered are detail."""
    names = set()
    for process in processes:
        index, state = process["index"], process["state"]
        name = f"gateway:{index}"
        names.add(name)
        registry.set(name, _PROCESS_STATUS.get(state, Status.WARN),
                     "" if state == "running" else state, kind="system",
                     detail={"index": index, "pid": process.get("pid"), "state": state,
                             "answering": index == own_index})
    for stale in [n for n in registry.components() if n.startswith("gateway:")
                  and n not in names]:
        registry.clear(stale)


#: The `reload` component's public output while the last reload failed.
RELOAD_FAILED = "last reload failed, nothing changed"


def show_reload_outcome(registry: HealthRegistry, ok: bool, reason: str, error: str) -> None:
    """The supervisor's `reload_outcome`: `reload` warns while the last one failed
    (its error, which may name files, only in /coproc/status); a reload that
    serves clears it (APIs it left unserved are `api:<id>` components)."""
    if ok:
        registry.clear("reload")
    else:
        registry.set("reload", Status.WARN, RELOAD_FAILED, kind="system",
                     detail={"reason": reason, "error": error})


def watch_definitions(registry: HealthRegistry, broken: BrokenDefinitions) -> None:
    """One failing component per definition file that does not load."""
    def probe() -> dict[str, Check]:
        return {b.component: Check(Status.FAIL, b.reason, detail=b.summary())
                for b in broken.items}

    registry.watch_group("definitions", probe)


def report_storage(registry: HealthRegistry, up: bool, where: str) -> None:
    """The `storage` component of a shared (Redis) store: required for readiness."""
    registry.set("storage", Status.PASS if up else Status.FAIL,
                 "" if up else "storage unreachable", kind="datastore", required=True,
                 detail={"where": where})


def worker_check(health: Mapping[str, Any]) -> Check:
    """The `worker` component from the hook client's health record."""
    if health.get("ready"):
        return Check(Status.PASS, kind="system", detail=health)
    state = str(health.get("state") or "unavailable")
    # The state name only ("starting", "restarting", "fatal"): the detail may
    # carry exit reasons and paths, which only the authenticated view shows.
    return Check(Status.FAIL, f"plugin worker {state}", kind="system", detail=health)


def api_checks(broken: Iterable[tuple[str, str, str]],
               plugins: Mapping[str, Any]) -> dict[str, Check]:
    """One failing `api:<id>` per API that cannot serve.

    `broken` is (api_id, public reason, full reason) from the plans; `plugins` the
    worker's load report ({api_id: {"ok": bool, "error": traceback, ...}}).
    """
    out: dict[str, Check] = {}
    for api_id, short, why in broken:
        out[f"api:{api_id}"] = Check(Status.FAIL, short, detail={"reason": why})
    for api_id, report in plugins.items():
        if isinstance(report, Mapping) and not report.get("ok", True):
            out.setdefault(f"api:{api_id}", Check(Status.FAIL, "plugin failed to load",
                                                  detail={"error": report.get("error", "")}))
    return out


async def watch_storage(registry: HealthRegistry, ping: Callable[[], Awaitable[bool]],
                        where: str) -> None:
    """Ping a shared store forever; its component is required (sessions live there)."""
    while True:
        try:
            up = await asyncio.wait_for(ping(), STORAGE_INTERVAL_S)
        except (TimeoutError, OSError):
            up = False
        was = registry.checks().get("storage")
        report_storage(registry, up, where)
        if was is not None and (was.status is Status.PASS) != up:
            (log.info if up else log.error)("storage %s is %s", where,
                                            "reachable again" if up else "unreachable")
        await asyncio.sleep(STORAGE_INTERVAL_S)
