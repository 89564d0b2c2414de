"""Prometheus metrics of the gateway process, and the `/metrics` endpoint that serves them.

One registry per gateway process.  What moves per request (requests, latency
histograms, hook calls, in-flight) is a prometheus_client metric whose
labelled children are looked up once per label set and cached here, so a
request pays a dict lookup and a few locked additions.  What the gateway
already counts (the chain's and the hook client's stats, the analytics queue)
is read at scrape time by a collector: nothing per request.

Other processes add their metrics through `add_source` (a callable giving
metric families at scrape time): the supervisor and the worker will report
theirs over their existing channels and the gateway serves them together, so
one scrape sees the instance.

`/metrics` is served on its own listener (`coproc.metrics.listen_address` and
`listen_port`, 127.0.0.1:9464 by default), or with `listen_port: 0` on the
gateway's own port, where it needs the admin secret like the admin API.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from config.analytics import MetricsOptions
from gateway.admin import admin_denied

__all__ = ["GatewayMetrics", "add_metrics_route", "counters", "gauge", "start_metrics_site"]

log = logging.getLogger("coproc.gateway.metrics")

# Seconds; from sub-millisecond hook round trips to upstream timeouts.
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            10.0, 30.0)
_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}

Source = Callable[[], Iterable[Metric]]

# No `_created` series: a sample per labelled child that dashboards never use.
disable_created_metrics()  # type: ignore[no-untyped-call]


class GatewayMetrics:
    """The gateway's metrics; `observe_*` are called where the outcome is known."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=False)
        self.requests = Counter("coproc_requests", "API requests answered, by API and status "
                                "class (no_route: no API matched)", ["api_id", "code_class"],
                                registry=r)
        self.duration = Histogram("coproc_request_duration_seconds",
                                  "Total time from request to response sent",
                                  ["api_id"], buckets=_BUCKETS, registry=r)
        self.upstream = Histogram("coproc_upstream_duration_seconds",
                                  "Time waiting for the upstream's response headers",
                                  ["api_id"], buckets=_BUCKETS, registry=r)
        self.overhead = Histogram("coproc_gateway_duration_seconds",
                                  "Time spent in the gateway (total minus upstream)",
                                  ["api_id"], buckets=_BUCKETS, registry=r)
        self.hook_duration = Histogram("coproc_hook_duration_seconds",
                                       "Hook call round trips, by phase",
                                       ["api_id", "phase", "hook"], buckets=_BUCKETS,
                                       registry=r)
        self.hook_calls = Counter("coproc_hook_calls", "Hook calls by outcome (ok, error, "
                                  "timeout, unavailable)",
                                  ["api_id", "phase", "hook", "outcome"], registry=r)
        self.fail_open = Counter("coproc_hook_fail_open", "Failed hook calls skipped by a "
                                 "fail_open policy", ["api_id", "phase", "hook"], registry=r)
        self._children: dict[tuple[Any, ...], Any] = {}
        self._sources: list[Source] = []
        r.register(_Sources(self._sources))

    def add_source(self, source: Source) -> None:
        """Metric families computed at scrape time (counters kept elsewhere)."""
        self._sources.append(source)

    def _child(self, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = make()
        return child

    def observe_request(self, api_id: str, status: int, total_s: float,
                        upstream_s: float | None) -> None:
        cls = _CLASSES.get(status // 100, "other")
        self._child(("r", api_id, cls), lambda: self.requests.labels(api_id, cls)).inc()
        if not api_id:
            return  # no API: only counted
        self._child(("d", api_id), lambda: self.duration.labels(api_id)).observe(total_s)
        if upstream_s is not None:
            self._child(("u", api_id), lambda: self.upstream.labels(api_id)).observe(upstream_s)
            self._child(("o", api_id), lambda: self.overhead.labels(api_id)).observe(
                max(0.0, total_s - upstream_s))

    def observe_hook(self, api_id: str, phase: str, hook: str, outcome: str,
                     seconds: float) -> None:
        self._child(("hc", api_id, phase, hook, outcome),
                    lambda: self.hook_calls.labels(api_id, phase, hook, outcome)).inc()
        self._child(("hd", api_id, phase, hook),
                    lambda: self.hook_duration.labels(api_id, phase, hook)).observe(seconds)

    def observe_fail_open(self, api_id: str, phase: str, hook: str) -> None:
        self._child(("fo", api_id, phase, hook),
                    lambda: self.fail_open.labels(api_id, phase, hook)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Sources(Collector):
    def __init__(self, sources: list[Source]) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            try:
                yield from source()
            except Exception:  # one broken source must not hide the others
                log.exception("metrics source %r failed", source)


def counters(prefix: str, help_text: str, values: dict[str, int], label: str
             ) -> CounterMetricFamily:
    """One counter family with a label per key of `values` (e.g. the chain's stats)."""
    family = CounterMetricFamily(prefix, help_text, labels=[label])
    for name, value in values.items():
        family.add_metric([name], value)
    return family


def gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _handler(metrics: GatewayMetrics, secret: str | None
             ) -> Callable[[web.Request], Any]:
    async def serve(request: web.Request) -> web.Response:
        if secret is not None:
            denied = admin_denied(request, secret)
            if denied is not None:
                return denied
        started = time.perf_counter()
        body = metrics.render()
        log.debug("rendered /metrics in %.1f ms", (time.perf_counter() - started) * 1000)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return serve


def add_metrics_route(app: web.Application, metrics: GatewayMetrics, opts: MetricsOptions,
                      secret: str) -> None:
    """listen_port 0: serve /metrics on the gateway's port, behind the admin secret."""
    app.router.add_get(opts.path, _handler(metrics, secret), allow_head=False)


async def start_metrics_site(metrics: GatewayMetrics, opts: MetricsOptions
                             ) -> web.AppRunner | None:
    """The metrics listener; None (and an error logged) when its address is taken."""
    app = web.Application()
    app.router.add_get(opts.path, _handler(metrics, None), allow_head=False)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, opts.listen_address, opts.listen_port).start()
    except OSError as exc:
        # Metrics are not worth refusing traffic for: serve without them, say so.
        log.error("metrics: cannot listen on %s:%d (%s); /metrics is off. Fix: free the "
                  "port or set coproc.metrics.listen_port", opts.listen_address,
                  opts.listen_port, exc.strerror or exc)
        await runner.cleanup()
        return None
    log.info("metrics on http://%s:%d%s", opts.listen_address, opts.listen_port, opts.path)
    return runner
