"""Metrics and analytics put together for the app: what `gateway.app` wires in.

`Observability.from_config` gives None when both are off, and the app then
serves exactly as without them.  Otherwise it owns the metrics registry, the
analytics pipeline and its sink, the observer, the request handler that
brackets the chain, and the cleanup context that runs the pipeline and the
metrics listener (flushing queued records at stop, after in-flight requests).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from config.gateway import GatewayConfig
from gateway.analytics.observer import HookObserver, Observer
from gateway.analytics.pipeline import Pipeline, Transform
from gateway.analytics.sinks import open_sink
from gateway.metrics import GatewayMetrics, add_metrics_route, counters, start_metrics_site

__all__ = ["Observability"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Observability:
    def __init__(self, cfg: GatewayConfig, metrics: GatewayMetrics | None,
                 pipeline: Pipeline | None) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.pipeline = pipeline
        self.observer = Observer(metrics, pipeline, cfg.analytics)

    @classmethod
    def from_config(cls, cfg: GatewayConfig, transform: Transform | None = None
                    ) -> Observability | None:
        metrics = GatewayMetrics() if cfg.metrics.enabled else None
        pipeline = None
        if cfg.analytics.enabled:
            pipeline = Pipeline(cfg.analytics, open_sink(cfg.analytics, cfg.storage), transform)
        if metrics is None and pipeline is None:
            return None
        return cls(cfg, metrics, pipeline)

    def add_stats(self, name: str, help_text: str, stats: Callable[[], dict[str, Any]]) -> None:
        """Expose a process's own counters dict (e.g. the chain's) as one counter family."""
        if self.metrics is not None:
            self.metrics.add_source(lambda: [counters(
                name, help_text, {k: v for k, v in stats().items() if isinstance(v, int)},
                "event")])

    def hook_observer(self) -> HookObserver:
        """What the driver router reports every hook call to (gateway/drivers.py)."""
        return HookObserver(self.metrics)

    def handler(self, inner: Handler) -> Handler:
        observer = self.observer

        async def observed(request: web.Request) -> web.StreamResponse:
            trace = observer.begin()
            try:
                response = await inner(request)
                if not response.prepared:  # send it now: the record comes after
                    await response.prepare(request)
                    await response.write_eof()
            except BaseException:
                observer.abandon()
                raise
            observer.end(request, response, trace)
            return response

        return observed

    def add_routes(self, app: web.Application) -> None:
        opts = self.cfg.metrics
        if self.metrics is not None and opts.listen_port == 0:
            add_metrics_route(app, self.metrics, opts, self.cfg.secret)

    async def ctx(self, app: web.Application) -> AsyncIterator[None]:
        """The cleanup context: pipeline task and metrics listener."""
        async with contextlib.AsyncExitStack() as stack:
            runner = None
            if self.metrics is not None and self.cfg.metrics.listen_port:
                runner = await start_metrics_site(self.metrics, self.cfg.metrics)
            if runner is not None:
                stack.push_async_callback(runner.cleanup)
            pipeline = self.pipeline
            if pipeline is not None:
                stack.push_async_callback(pipeline.close)  # after the dispatcher stops
                await stack.enter_async_context(_running(pipeline))
            yield


@contextlib.asynccontextmanager
async def _running(pipeline: Pipeline) -> AsyncIterator[None]:
    task = asyncio.create_task(pipeline.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
