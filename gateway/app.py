"""The gateway's aiohttp application: resources, routes, serving and graceful stop.

Resources are cleanup contexts, started in order and closed in reverse after
in-flight requests finish: plugin data store -> hook client -> upstream client
session and chain -> control channel (status reports).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from config.apidef import APIDefinition, BrokenDefinition
from config.gateway import GatewayConfig
from gateway import header_bytes
from gateway.access_log import access_logged
from gateway.admin import add_key_routes, add_policy_routes
from gateway.analytics.plugins import PluginTransform
from gateway.analytics.service import Observability
from gateway.apis_admin import add_api_routes
from gateway.auth import Authenticator
from gateway.chain import Chain, HookCaller
from gateway.control import (
    ControlChannel,
    ReloadWaits,
    RouterSwitch,
    WorkerEvents,
    dispatch,
    grpc_drained_sender,
    make_reload,
    report_status,
)
from gateway.drivers import DriverRouter, grpc_apis, open_grpc
from gateway.events import EventBus
from gateway.frontdoor import (
    ConnectionGuard,
    GuardedSite,
    connection_cap,
    framing_middleware,
    handler_args,
)
from gateway.health import HealthRegistry, Phase, Status
from gateway.health_routes import (
    BrokenDefinitions,
    add_health_routes,
    report_storage,
    show_gateway_processes,
    show_reload_outcome,
    watch_definitions,
    watch_gateway,
    watch_storage,
)
from gateway.hooks import HookClient
from gateway.host_calls import HostCallHandler, HostCalls, storage_bound_s
from gateway.keys import KeyStore
from gateway.metrics import serving_families
from gateway.outbound import JsvmHostCalls
from gateway.plan import ApiPlan, api_spec, build_router
from gateway.policy import PolicyStore
from gateway.proxy import make_session
from gateway.router import Router
from gateway.storage import MemoryStorage, RemoteStorage, Storage, open_storage
from gateway.tracing import Tracing
from ipc import gctune
from ipc.contract import STORE_SOCKET_ENV
from ipc.control import ControlType
from ipc.memtune import give_back_free_memory
from ipc.tokens import store_token

__all__ = [
    "CHAIN",
    "CONFIG",
    "CONTROL",
    "HEALTH",
    "HOOKS",
    "HookService",
    "build_app",
    "serve",
]

log = logging.getLogger("coproc.gateway")


class HookService(HookCaller, WorkerEvents, Protocol):
    """Everything the application uses of the hook client (`gateway.hooks.HookClient`;
    a fake in unit tests)."""

    #: Called with each generation that becomes active (a reload's routes switch then).
    on_activate: Callable[[int], None] | None

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def send_event(self, api_id: str, handler: str, event: Mapping[str, str],
                   spec: Mapping[str, str]) -> bool: ...


HookFactory = Callable[[GatewayConfig, bytes, HostCallHandler], HookService]

CONFIG = web.AppKey("config", GatewayConfig)
ROUTER = web.AppKey("router", Router[ApiPlan])
CONTROL = web.AppKey("control", ControlChannel)
RELOADS = web.AppKey("reloads", ReloadWaits)
#: `/tyk/reload?block=true` waits for the worker's boot timeout plus this.
RELOAD_WAIT_MARGIN_S = 15.0
STORE = web.AppKey("store", Storage)
POLICIES = web.AppKey("policies", PolicyStore)
EVENTS = web.AppKey("events", EventBus)
HOOKS = web.AppKey("hooks", HookService)
UPSTREAM = web.AppKey("upstream", aiohttp.ClientSession)
CHAIN = web.AppKey("chain", Chain)
OBSERVE = web.AppKey("observe", Observability)
CALLER = web.AppKey("caller", DriverRouter)  # hook calls, by their API's driver
TRACING = web.AppKey("tracing", Tracing)  # only with opentelemetry.enabled
#: Where every part of the gateway reports its components' health (gateway/health.py).
HEALTH = web.AppKey("health", HealthRegistry)
#: The definition files the live routes left out (named by health; a reload replaces them).
BROKEN = web.AppKey("broken", BrokenDefinitions)

#: How long a booting gateway waits for the store process to answer before serving.
_STORE_BOOT_S = 5.0

# aiohttp needs a number; "no limit" (max_body_bytes 0) is one no body reaches.
_NO_LIMIT = 1 << 62


def build_app(cfg: GatewayConfig, apis: Iterable[APIDefinition], *, instance_key: bytes,
              control_sock: socket.socket | None = None,
              hook_factory: HookFactory = HookClient,
              broken: Iterable[BrokenDefinition] = ()) -> web.Application:
    opts = cfg.gateway
    header_bytes.install()  # any header byte reaches the upstream as received
    app = web.Application(
        client_max_size=opts.max_body_bytes or _NO_LIMIT,
        handler_args={"max_line_size": opts.max_header_bytes,
                      "max_field_size": opts.max_header_bytes},
        middlewares=[framing_middleware(opts.max_header_bytes)],
    )
    app[CONFIG] = cfg
    apis = list(apis)
    app[ROUTER] = build_router(cfg, apis)
    # Sessions, counters and plugin data: memory (here, or in the store process when
    # the instance runs several gateway processes), or Redis shared by instances.
    app[STORE] = open_storage(cfg.storage, os.environ.get(STORE_SOCKET_ENV, ""),
                              store_token(instance_key))
    handlers = {api.api_id: api.event_handlers for api in apis if api.active}
    app[EVENTS] = EventBus(lambda api_id: handlers.get(api_id, {}),
                           specs={api.api_id: api_spec(api) for api in apis if api.active})
    app[CONTROL] = ControlChannel(control_sock)
    app[RELOADS] = ReloadWaits()
    app[HEALTH] = health = HealthRegistry()
    # Probes read at each request; requests come only once the contexts below started.
    def coprocess_health() -> Mapping[str, Any]:
        # A supervised gRPC server is the instance's coprocess: it is the "worker" probed.
        grpc = app[CALLER].grpc
        return grpc.health() if cfg.grpc_server.enabled and grpc is not None \
            else app[HOOKS].health()

    watch_gateway(health, coprocess=cfg.enable_coprocess, worker=coprocess_health,
                  unserved=lambda: ((p.api_id, _unserved_reason(p), p.broken)  # the live router
                                    for p in app[CHAIN].router.values() if p.broken))
    app[BROKEN] = BrokenDefinitions(broken)
    watch_definitions(health, app[BROKEN])

    async def hooks_ctx(app: web.Application) -> AsyncIterator[None]:
        bound = storage_bound_s(cfg.storage.timeout_ms, cfg.hooks.timeout_ms)
        host_calls = HostCalls(app[STORE], app[EVENTS].emit, bound_s=bound,
                               extra=JsvmHostCalls(cfg, app[STORE]).ops())
        hooks = hook_factory(cfg, instance_key, host_calls)
        await hooks.start()
        app[HOOKS] = hooks
        if observe is not None and observe.metrics is not None and isinstance(hooks, HookClient):
            observe.metrics.add_source(hooks.watch.families)  # the worker, the supervisor
        grpc_ids = grpc_apis(apis)
        grpc = open_grpc(cfg, needed=bool(grpc_ids))
        if grpc is not None:
            await grpc.start()
        # Every hook call timed, its outcome counted (observation on).
        app[CALLER] = DriverRouter(hooks, grpc, grpc_ids, observer=(
            observe.hook_observer() if observe is not None else None))
        events = app[EVENTS]
        events.send_event = app[CALLER].send_event  # @Event / cp_dynamic_handler
        watched = [a for a, h in handlers.items() if h.get("WorkerRestarted")]
        async with _background(events.watch_worker(
                lambda: hooks.health().get("generation"), watched)):
            yield
        if grpc is not None:
            await grpc.close()
        await hooks.close()

    serve_api: Callable[[web.Request], Awaitable[web.StreamResponse]] = _serve_api
    # Analytics plugins run in the worker over batches (gateway/analytics/plugins.py);
    # without a worker (enable_coprocess: false) records are stored as they are.
    transform = PluginTransform(
        lambda: _hook_client(app),
        lambda: {p.api_id for p in app[CHAIN].router.values()
                 if p.api.analytics_plugin is not None}
        if CHAIN in app and cfg.enable_coprocess else ())
    observe = Observability.from_config(cfg, transform)  # None when both are off
    if observe is not None:
        observe.add_stats("coproc_analytics_plugin_events", "Analytics plugin batches, "
                          "retries, failures, timeouts", transform.stats)
    if observe is not None:
        app[OBSERVE] = observe
        app.cleanup_ctx.append(observe.ctx)  # first in, last out: flushes after requests
        observe.add_routes(app)
        serve_api = observe.handler(_serve_api)
    tracing = Tracing.from_config(cfg.tracing, str(cfg.path))  # None: no cost at all
    if tracing is not None:
        app[TRACING] = tracing
        app.cleanup_ctx.append(_tracing_ctx)
        serve_api = tracing.handler(serve_api)  # outside analytics: its record sees our headers
    if cfg.access_log:
        serve_api = access_logged(serve_api)
    app.cleanup_ctx.extend([_store_ctx, hooks_ctx, _chain_ctx, _control_ctx, _serving_ctx])
    add_health_routes(app, health, cfg.secret, lambda: {
        "gateway": {"pid": os.getpid()}, "worker": coprocess_health()})
    # `?block=true` waits as long as `coproc reload` does (supervisor/control_server).
    reload = make_reload(cfg.secret, app[CONTROL], app[RELOADS],
                         cfg.worker.boot_timeout_ms / 1000 + RELOAD_WAIT_MARGIN_S)
    for path in ("/tyk/reload", "/tyk/reload/", "/tyk/reload/group"):  # Tyk: GET; also POST
        app.router.add_get(path, reload, allow_head=False)
        app.router.add_post(path, reload)
    app[POLICIES] = PolicyStore(cfg.policies)
    add_key_routes(app, cfg.secret, KeyStore(app[STORE], cfg.keys), app[POLICIES])
    add_api_routes(app, cfg.secret, cfg)
    add_policy_routes(app, cfg.secret, app[POLICIES])
    app.router.add_route("*", "/{tail:.*}", serve_api)
    return app


def _hook_client(app: web.Application) -> HookClient | None:
    hooks = app.get(HOOKS)
    return hooks if isinstance(hooks, HookClient) else None


async def _serve_api(request: web.Request) -> web.StreamResponse:
    return await request.app[CHAIN].handle(request)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store, events, health = app[STORE], app[EVENTS], app[HEALTH]
    shared = not isinstance(store, MemoryStorage)
    if shared:
        where = getattr(store, "where", "")
        # The supervisor starts the store first; give one that is still booting a moment.
        up = await store.wait_ready(_STORE_BOOT_S) if isinstance(store, RemoteStorage) \
            else await store.ping()
        if up:
            log.info("storage: %s", where)
        else:  # not fatal: requests that need it get 503 until it answers
            log.error("storage %s is not reachable yet", where)
        report_storage(health, up, where)
    else:
        health.set("storage", Status.PASS, kind="datastore", detail={"type": "memory"})
    async with contextlib.AsyncExitStack() as stack:
        if shared:
            await stack.enter_async_context(
                _background(watch_storage(health, store.ping, where)))
        # Webhook deliveries get their own client: upstream limits must not apply.
        events.http = await stack.enter_async_context(aiohttp.ClientSession())
        await stack.enter_async_context(_background(events.run()))
        if isinstance(store, MemoryStorage):
            await stack.enter_async_context(_background(store.sweep_forever()))
        yield
    await store.close()


async def _chain_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    session = app[UPSTREAM] = make_session(cfg.gateway)
    hooks: HookCaller = app[CALLER]  # by each API's driver
    observe = app.get(OBSERVE)
    if TRACING in app:  # a span per hook call
        hooks = app[TRACING].hooks(hooks)
    if observe is not None:
        observe.add_stats("coproc_hook_client_events", "The hook client's counters",
                          lambda: getattr(app[HOOKS], "stats", {}))
    auth = Authenticator(app[STORE], hooks, app[EVENTS].emit,
                         KeyStore(app[STORE], cfg.keys), app[POLICIES],
                         quota_headers=cfg.rate_limit_headers == "quotas")
    chain = app[CHAIN] = Chain(app[ROUTER], hooks, session, cfg.gateway, auth)
    if observe is not None and observe.metrics is not None:
        observe.add_stats("coproc_gateway_events", "The chain's counters", lambda: chain.stats)
        observe.metrics.add_source(serving_families(
            lambda: _unserved_counts(chain, app[BROKEN]),
            lambda: app[HOOKS].health().get("shm", {}), lambda: auth.storage_errors))
    # Garbage cycles collected on time, and body buffers' memory back to the kernel once
    # requests stop coming (ipc/gctune.py, ipc/memtune.py).
    async with (_background(gctune.collect_young()),
                _background(give_back_free_memory(lambda: chain.stats["requests"]))):
        yield
    await session.close()


async def _tracing_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    # Last spans out once requests drained; off the loop: the exporter blocks.
    await asyncio.to_thread(app[TRACING].close)


async def _control_ctx(app: web.Application) -> AsyncIterator[None]:
    channel, hooks = app[CONTROL], app[HOOKS]
    switch = RouterSwitch(app[CONFIG], app[CHAIN], lambda: hooks.health().get("generation"),
                          app[BROKEN].replace)
    hooks.on_activate = switch.on_activated
    grpc = app[CALLER].grpc
    if grpc is not None:
        grpc.on_drained = grpc_drained_sender(channel)
    health, index = app[HEALTH], app[CONFIG].process_index
    channel.start(lambda message: dispatch(
        message, hooks, switch.on_reload_apis, grpc.use if grpc is not None else None,
        lambda processes: show_gateway_processes(health, processes, index),
        on_reload_outcome=lambda m: show_reload_outcome(health, m["ok"], m.get("reason", ""),
                                                        m.get("error", "")),
        on_reload_answer=app[RELOADS].answered))
    stats = collections.ChainMap(app[CHAIN].stats, getattr(grpc, "stats", {}))  # live views
    async with _background(report_status(channel, hooks, stats)):
        yield
    channel.close()


async def _serving_ctx(app: web.Application) -> AsyncIterator[None]:
    """Last to start: from here on the gateway is serving (readiness may pass)."""
    health = app[HEALTH]
    health.phase = Phase.SERVING
    yield
    health.phase = Phase.STOPPING


@contextlib.asynccontextmanager
async def _background(coro: Any) -> AsyncIterator[None]:
    task = asyncio.ensure_future(coro)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def serve(cfg: GatewayConfig, apis: list[APIDefinition], sock: socket.socket, *,
                instance_key: bytes, control_sock: socket.socket | None,
                broken: Iterable[BrokenDefinition] = ()) -> None:
    """Serve on `sock` until SIGTERM/SIGINT, then drain in-flight requests;
    `broken`: the definition files left out (health names them)."""
    app = build_app(cfg, apis, instance_key=instance_key, control_sock=control_sock,
                    broken=broken)
    # In-flight requests get drain_grace_ms to finish once the site stops accepting.
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=cfg.gateway.drain_grace_ms / 1000)
    await runner.setup()
    opts = cfg.gateway
    guard = ConnectionGuard(connection_cap(opts), opts.header_read_timeout_ms / 1000)
    try:
        site = GuardedSite(runner, sock, guard, handler_args(opts))
        await site.start()
        log.info("serving %d API(s) on %s (at most %d connections)",
                 sum(1 for a in apis if a.active), site.name, guard.cap)
        gctune.settle()  # start-up is over: see ipc/gctune.py
        app[CONTROL].send(ControlType.READY, {"role": "gateway", "pid": os.getpid()})
        await _stop_requested()
        app[HEALTH].phase = Phase.STOPPING  # /ready: 503 while in-flight requests drain
        log.info("stopping: draining in-flight requests (up to %d ms)",
                 cfg.gateway.drain_grace_ms)
    finally:
        await runner.cleanup()


async def _stop_requested() -> None:
    """Wait for SIGTERM or SIGINT; a second one cancels the drain (stop now)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main = asyncio.current_task()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: stopping now", signal.Signals(signum).name)
            if main is not None:
                main.cancel()
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await stop.wait()


def _unserved_reason(plan: ApiPlan) -> str:
    """The public (/hello) reason an API cannot serve: names only, no URL or path."""
    if plan.broken_status == 503:
        return "plugins disabled"
    return f"bundle {plan.api.custom_middleware_bundle} unusable"


def _unserved_counts(chain: Chain, broken: BrokenDefinitions) -> dict[str, int]:
    """How many APIs cannot serve, by reason (coproc_apis_unserved)."""
    counts = {"bundle": 0, "plugins_disabled": 0, "definition": len(broken.items)}
    for plan in chain.router.values():
        if plan.broken:
            counts["plugins_disabled" if plan.broken_status == 503 else "bundle"] += 1
    return counts
