"""Prometheus metrics of the gateway process, and the `/metrics` endpoint that serves them.

What moves per request (requests, latency histograms, hook calls) is kept in
plain dicts keyed by the label values: an observation is a dict lookup, a
bisect and two additions, about 1 µs, with no lock, because every observation
and every scrape run on the gateway's one event-loop thread.  prometheus_client
turns them into metric families only when /metrics is scraped (its own
`Histogram.observe` takes a lock and costs several times more per request).
What the gateway already counts (the chain's and the hook client's stats, the
analytics queue) is read at scrape time too.

Other processes' metrics come in through `add_source` (a callable giving
metric families at scrape time): `WorkerWatch` turns what the gateway already
receives from the supervisor (`worker_state`, `worker_exited`) and from the
worker (HEARTBEAT) into families, so one scrape sees the instance.

`/metrics` is served on its own listener (`coproc.metrics.listen_address` and
`listen_port`, 127.0.0.1:9464 by default), or with `listen_port: 0` on the
gateway's own port, where it needs the admin secret like the admin API.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from config.analytics import MetricsOptions
from gateway.admin import admin_denied

__all__ = ["GatewayMetrics", "WorkerWatch", "add_metrics_route", "counters", "exit_class", "gauge",
           "gauges", "serving_families", "start_metrics_site"]

log = logging.getLogger("coproc.gateway.metrics")

# Seconds; from sub-millisecond hook round trips to upstream timeouts.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
           10.0, 30.0)
_LE = [str(b) for b in BUCKETS] + ["+Inf"]
_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}

Source = Callable[[], Iterable[Metric]]
Labels = tuple[str, ...]


class _Histogram:
    """Bucket counts (not cumulative) and the sum, for one label set."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le = "<=").
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.total += value


class HookSeries:
    """One hook's series (API, phase, hook): its calls by outcome and their durations.

    Looked up once per call by its three labels; the outcome is a small dict
    inside, so the hot path builds no label tuple per outcome.
    """

    __slots__ = ("calls", "duration")

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.duration = _Histogram()

    def observe(self, outcome: str, seconds: float) -> None:
        calls = self.calls
        calls[outcome] = calls.get(outcome, 0) + 1
        self.duration.observe(seconds)


class GatewayMetrics:
    """The gateway's metrics; `observe_*` are called where the outcome is known."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests: dict[Labels, int] = {}  # (api_id, code_class)
        self.fail_open: dict[Labels, int] = {}  # (api_id, phase, hook)
        self.duration: dict[Labels, _Histogram] = {}  # (api_id,)
        self.upstream: dict[Labels, _Histogram] = {}
        self.overhead: dict[Labels, _Histogram] = {}
        self.hooks: dict[Labels, HookSeries] = {}  # (api_id, phase, hook)
        self._sources: list[Source] = [self._families]
        self.registry.register(_Sources(self._sources))

    def add_source(self, source: Source) -> None:
        """Metric families computed at scrape time (counters kept elsewhere)."""
        self._sources.append(source)

    def observe_request(self, api_id: str, status: int, total_s: float,
                        upstream_s: float | None) -> None:
        key = (api_id, _CLASSES.get(status // 100, "other"))
        self.requests[key] = self.requests.get(key, 0) + 1
        if not api_id:
            return  # no API: only counted
        api = (api_id,)
        _hist(self.duration, api).observe(total_s)
        if upstream_s is not None:
            _hist(self.upstream, api).observe(upstream_s)
            _hist(self.overhead, api).observe(max(0.0, total_s - upstream_s))

    def hook_series(self, api_id: str, phase: str, hook: str) -> HookSeries:
        key = (api_id, phase, hook)
        series = self.hooks.get(key)
        if series is None:
            series = self.hooks[key] = HookSeries()
        return series

    @property
    def hook_calls(self) -> dict[Labels, int]:
        """(api_id, phase, hook, outcome) -> calls."""
        return {(*key, outcome): n for key, series in list(self.hooks.items())
                for outcome, n in list(series.calls.items())}

    @property
    def hook_duration(self) -> dict[Labels, _Histogram]:
        return {key: series.duration for key, series in list(self.hooks.items())}

    def observe_fail_open(self, api_id: str, phase: str, hook: str) -> None:
        key = (api_id, phase, hook)
        self.fail_open[key] = self.fail_open.get(key, 0) + 1

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def _families(self) -> Iterator[Metric]:
        yield _counter("coproc_requests", "API requests answered, by API and status class "
                       "(api_id \"\": no API matched)", ["api_id", "code_class"], self.requests)
        yield _histogram("coproc_request_duration_seconds",
                         "Total time from request received to response sent", ["api_id"],
                         self.duration)
        yield _histogram("coproc_upstream_duration_seconds",
                         "Time from the upstream request sent to its response headers",
                         ["api_id"], self.upstream)
        yield _histogram("coproc_gateway_duration_seconds",
                         "Time spent in the gateway (total minus upstream)", ["api_id"],
                         self.overhead)
        yield _histogram("coproc_hook_duration_seconds", "Hook call round trips, by phase",
                         ["api_id", "phase", "hook"], self.hook_duration)
        yield _counter("coproc_hook_calls", "Hook calls by outcome (ok, error, timeout, "
                       "unavailable, cancelled)", ["api_id", "phase", "hook", "outcome"],
                       self.hook_calls)
        yield _counter("coproc_hook_fail_open", "Failed hook calls skipped by a fail_open "
                       "policy", ["api_id", "phase", "hook"], self.fail_open)


def _hist(table: dict[Labels, _Histogram], key: Labels) -> _Histogram:
    hist = table.get(key)
    if hist is None:
        hist = table[key] = _Histogram()
    return hist


def _counter(name: str, help_text: str, labels: list[str], values: dict[Labels, int]
             ) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text, labels=labels)
    for key, value in list(values.items()):
        family.add_metric(list(key), value)
    return family


def _histogram(name: str, help_text: str, labels: list[str], table: dict[Labels, _Histogram]
               ) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, help_text, labels=labels)
    for key, hist in list(table.items()):
        running, buckets = 0, []
        for le, count in zip(_LE, hist.counts, strict=True):
            running += count
            buckets.append((le, running))
        family.add_metric(list(key), buckets, hist.total)
    return family


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
        body = metrics.render()
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


# -- the worker and the supervisor, as the gateway hears of them ----------------------

#: The worker's HEARTBEAT counters that only grow (the rest are gauges).
_WORKER_COUNTERS = ("calls", "handoffs", "deadlines", "analytics_batches", "analytics_records",
                    "analytics_dropped", "analytics_failures")
#: Generations whose last counters are kept apart (older ones are folded into a base).
_KEEP_GENERATIONS = 4


def exit_class(reason: str) -> str:
    """A bounded label for the supervisor's exit description (supervisor/exits.py)."""
    if "oom" in reason:
        return "oom"
    if "by the supervisor" in reason:
        return "killed_by_supervisor"
    if reason.startswith("killed"):
        return "signal"
    if reason == "exited 0":
        return "clean"
    if reason.startswith("exited"):
        return "error"
    return "other"


class WorkerWatch:
    """The supervisor's and the worker's metrics, from what the gateway already receives.

    The supervisor's `worker_state` / `worker_exited` messages (restarts by
    reason, FATAL, the generation) and each worker's HEARTBEAT (RSS, its call
    threads' and analytics counters, and its age) reach the hook client; the
    gateway serves them with its own (`GatewayMetrics.add_source(watch.families)`),
    so the other processes need no metrics endpoint of their own.  A worker's
    counters start at 0 in each generation: the totals add up the generations.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.exits: dict[str, int] = {}
        self.state_name = "starting"
        self.generation = 0
        self.rss = 0
        self.last_beat: float | None = None
        self.gauges: dict[str, int] = {}
        self._by_generation: dict[int, dict[str, int]] = {}
        self._base: dict[str, int] = dict.fromkeys(_WORKER_COUNTERS, 0)

    def exited(self, reason: str) -> None:
        kind = exit_class(reason)
        self.exits[kind] = self.exits.get(kind, 0) + 1

    def state(self, state: str, generation: int | None) -> None:
        self.state_name = state
        if generation:
            self.generation = max(self.generation, generation)

    def heartbeat(self, generation: int, payload: dict[str, Any]) -> None:
        if generation < self.generation:
            pass  # a draining generation: its counters count, its gauges do not
        else:
            self.generation = generation
            self.rss = int(payload.get("rss", 0))
            self.last_beat = self._clock()
            calls = payload.get("calls") or {}
            self.gauges = {k: v for k, v in calls.items() if k not in _WORKER_COUNTERS}
        calls = payload.get("calls") or {}
        self._by_generation[generation] = {k: calls.get(k, 0) for k in _WORKER_COUNTERS}
        while len(self._by_generation) > _KEEP_GENERATIONS:
            oldest = min(self._by_generation)
            for k, v in self._by_generation.pop(oldest).items():
                self._base[k] += v

    def totals(self) -> dict[str, int]:
        out = dict(self._base)
        for values in self._by_generation.values():
            for k, v in values.items():
                out[k] += v
        return out

    def families(self) -> list[Metric]:
        out: list[Metric] = [
            counters("coproc_worker_exits", "Worker exits reported by the supervisor, by "
                     "reason (clean: drained or stopped; error; signal; oom; "
                     "killed_by_supervisor)", self.exits, "reason"),
            gauge("coproc_worker_fatal", "1 when the supervisor gave up restarting the worker",
                  1 if self.state_name == "fatal" else 0),
            gauge("coproc_worker_generation", "The newest worker generation", self.generation),
            gauge("coproc_worker_rss_bytes", "The active worker's resident memory, as its "
                  "last heartbeat said", self.rss),
            counters("coproc_worker_events", "The worker's counters, over every generation: "
                     "calls, hand-offs, deadlines, analytics batches/records/dropped/failures",
                     self.totals(), "event"),
        ]
        if self.last_beat is not None:
            out.append(gauge("coproc_worker_heartbeat_age_seconds", "Time since the active "
                             "worker's last heartbeat", self._clock() - self.last_beat))
        for name in ("inflight", "threads"):
            if name in self.gauges:
                out.append(gauge(f"coproc_worker_{name}", f"The active worker's {name}",
                                 self.gauges[name]))
        return out


def gauges(name: str, help_text: str, values: Mapping[str, float], label: str
           ) -> GaugeMetricFamily:
    """One gauge family with a label per key of `values`."""
    family = GaugeMetricFamily(name, help_text, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


def serving_families(unserved: Callable[[], Mapping[str, int]],
                     arena: Callable[[], Mapping[str, Any]],
                     storage_errors: Callable[[], int]) -> Callable[[], list[Metric]]:
    """The gateway's own state at scrape time: APIs it cannot serve by why (a bundle
    that failed to fetch or verify, a definition that does not load, plugins
    switched off), the body arena's use and fallbacks, and storage outages met."""
    def families() -> list[Metric]:
        shm = arena()
        return [
            gauges("coproc_apis_unserved", "APIs not served, by reason (bundle: fetch or "
                   "verification failed; definition: does not load; plugins_disabled)",
                   unserved(), "reason"),
            gauges("coproc_shm_arena_bytes", "The shared-memory body arena: size and bytes in "
                   "use", {"size": shm.get("size", 0), "in_use": shm.get("in_use", 0)}, "state"),
            counters("coproc_shm_bodies", "Bodies through the arena, and the ones that went "
                     "inline because it was full", {"shm": shm.get("bodies", 0),
                                                   "fallback": shm.get("fallback", 0)}, "path"),
            CounterMetricFamily("coproc_storage_errors", "Requests answered 503 because "
                                "the shared storage (Redis) was unavailable",
                                value=storage_errors()),
        ]
    return families
