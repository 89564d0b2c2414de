"""What one request did, gathered as it goes, turned into metrics and a record at the end.

The app's request handler calls `begin` before the chain and `end` once the
response has been sent; the chain reports the matched API (`matched`), the
upstream's time (`upstream`) and failed-open hooks (`failed_open`); every
hook call is timed by the driver router and reported to `HookObserver`.
The request's `Trace` travels in a context variable so the chain's and the
authenticator's signatures stay as they are: each aiohttp request runs in
its own task, so the variable is the request's own.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from config.analytics import AnalyticsConfig
from config.apidef import HookDef
from gateway.analytics.pipeline import Pipeline
from gateway.analytics.record import Exchange, RecordSpec, wire_request, wire_response
from gateway.hook_errors import outcome_of
from gateway.hook_groups import GroupReply, HookGroup, hook_times
from gateway.metrics import GatewayMetrics, counters, gauge
from gateway.plan import ApiPlan, AuthMode

if TYPE_CHECKING:  # the chain imports this module
    from gateway.tyk_object import RequestState

__all__ = ["HookObserver", "Observer", "Trace", "current", "failed_open", "matched",
           "upstream"]

_CURRENT: contextvars.ContextVar[Trace | None] = contextvars.ContextVar(
    "coproc_trace", default=None)


def current() -> Trace | None:
    """The running request's trace (None outside a request or with observation off)."""
    return _CURRENT.get()


@dataclass(slots=True)
class Trace:
    started_ns: int
    observer: Observer
    plan: ApiPlan | None = None
    state: RequestState | None = None
    request_id: str = ""
    upstream_ns: int | None = None
    phase_ns: dict[str, int] = field(default_factory=dict)


class Observer:
    """One per gateway process: feeds `GatewayMetrics` and the analytics `Pipeline`."""

    def __init__(self, metrics: GatewayMetrics | None, pipeline: Pipeline | None,
                 cfg: AnalyticsConfig) -> None:
        self.metrics = metrics
        self.pipeline = pipeline
        self.cfg = cfg
        self.in_flight = 0
        self._specs: dict[int, tuple[ApiPlan, RecordSpec]] = {}
        if metrics is not None:
            metrics.add_source(self._gauges)

    def _gauges(self) -> list[Any]:
        out: list[Any] = [gauge("coproc_requests_in_flight", "Requests being served",
                                self.in_flight)]
        pipeline = self.pipeline
        if pipeline is not None:
            out.append(gauge("coproc_analytics_queue_depth", "Analytics records waiting",
                             pipeline.depth))
            out.append(counters("coproc_analytics_records", "Analytics records by fate: "
                                "dropped (queue full), filtered (by a plugin), written, "
                                "failed (sink error)",
                                {"dropped": pipeline.dropped, "filtered": pipeline.filtered,
                                 "written": pipeline.written, "failed": pipeline.failed},
                                "fate"))
        return out

    # -- from the app's handler -------------------------------------------------

    def begin(self) -> Trace:
        trace = Trace(time.perf_counter_ns(), self)
        _CURRENT.set(trace)
        self.in_flight += 1
        return trace

    def abandon(self) -> None:
        """The handler raised (the client went away): only in-flight changes."""
        self.in_flight -= 1

    def end(self, request: web.Request, response: web.StreamResponse, trace: Trace) -> None:
        """After the response was sent: metrics, then the record (queued, not written)."""
        self.in_flight -= 1
        ended = time.perf_counter_ns()
        plan = trace.plan
        if self.metrics is not None:
            up = trace.upstream_ns
            self.metrics.observe_request(plan.api_id if plan is not None else "",
                                         response.status, (ended - trace.started_ns) / 1e9,
                                         None if up is None else up / 1e9)
        if self.pipeline is not None and plan is not None:
            self._record(request, response, trace, plan, ended)

    def note_fail_open(self, api_id: str, phase: str, hook: str) -> None:
        if self.metrics is not None:
            self.metrics.observe_fail_open(api_id, phase, hook)

    # -- the record ------------------------------------------------------------------

    def _spec(self, plan: ApiPlan) -> RecordSpec:
        known = self._specs.get(id(plan))
        if known is not None and known[0] is plan:
            return known[1]
        if len(self._specs) > 4096:  # plans of reloaded configurations
            self._specs.clear()
        spec = RecordSpec.from_api(plan.api, plan.target.origin.partition("://")[2],
                                   plan.target.strip)
        self._specs[id(plan)] = (plan, spec)
        return spec

    def _record(self, request: web.Request, response: web.StreamResponse, trace: Trace,
                plan: ApiPlan, ended: int) -> None:
        spec = self._spec(plan)
        if spec.do_not_track:
            return
        ip = real_ip(request)
        if ip in self.cfg.ignored_ips:
            return
        state = trace.state
        session = state.session if state is not None else {}
        ex = Exchange(
            trace.started_ns, method=request.method,
            path=state.path if state is not None else request.raw_path.partition("?")[0],
            original_path=request.path,
            user_agent=request.headers.get("User-Agent", ""),
            content_length=_content_length(request), ip=ip, status=response.status,
            api_key=_api_key(plan, state), session=session or {}, headers=request.headers,
            upstream_ns=trace.upstream_ns or 0, phase_ns=trace.phase_ns,
            request_id=trace.request_id)
        if (spec.detailed or self.cfg.enable_detailed_recording
                or (session and session.get("enable_detailed_recording"))):
            # As Tyk: the request as the middleware left it (hooks' changes included).
            if state is not None:
                ex.raw_request = wire_request(state.method, state.url, state.headers.items(),
                                              state.body)
            else:
                ex.raw_request = wire_request(request.method, request.raw_path,
                                              request.headers.items(), None)
            got = response.body if isinstance(response, web.Response) else None
            ex.raw_response = wire_response(response.status, response.reason,
                                            response.headers.items(),
                                            got if isinstance(got, bytes) else None)
        if self.pipeline is not None:
            self.pipeline.submit(spec, ex, ended)


# -- called by the chain (no-ops outside an observed request) ----------------------


def matched(plan: ApiPlan, state: RequestState | None, request_id: str) -> None:
    trace = _CURRENT.get()
    if trace is not None:
        trace.plan, trace.state, trace.request_id = plan, state, request_id


def upstream(elapsed_ns: int) -> None:
    """The time from sending the upstream request to its response headers."""
    trace = _CURRENT.get()
    if trace is not None:
        trace.upstream_ns = elapsed_ns


def failed_open(api_id: str, phase: str, hook: str) -> None:
    trace = _CURRENT.get()
    if trace is not None:
        trace.observer.note_fail_open(api_id, phase, hook)


def real_ip(request: web.Request) -> str:
    """Tyk's RealIP: X-Real-IP, else the first X-Forwarded-For entry, else the peer."""
    headers = request.headers
    real = headers.get("X-Real-IP")
    if real:
        return real.strip()
    forwarded = headers.get("X-Forwarded-For")
    if forwarded:
        return forwarded.split(",", 1)[0].strip()
    return request.remote or ""


def _content_length(request: web.Request) -> int:
    if request.content_length is not None:
        return request.content_length
    return -1 if request.body_exists else 0  # Go: -1 for a body of unknown length


def _api_key(plan: ApiPlan, state: RequestState | None) -> str:
    if plan.auth is AuthMode.KEYLESS or state is None or not state.session:
        return ""
    token = (state.metadata or {}).get("token")
    return str(token or state.api_key)


class HookObserver:
    """Records what each hook call did: its outcome and time in the per-hook metrics,
    its time in the request's per-phase times (the analytics record's latency).

    The driver router (gateway/drivers.py) times every call and reports here,
    so the hook path has no wrapping coroutine for observation.  Outcomes: ok,
    timeout, unavailable (no worker or no storage), error, cancelled.
    """

    def __init__(self, metrics: GatewayMetrics | None) -> None:
        self._metrics = metrics

    def one(self, api_id: str, hook_type: str, hook: HookDef, outcome: str,
            elapsed_ns: int) -> None:
        trace = _CURRENT.get()
        if trace is not None:
            phases = trace.phase_ns
            phases[hook_type] = phases.get(hook_type, 0) + elapsed_ns
        if self._metrics is not None:
            self._metrics.hook_series(api_id, hook_type, hook.name).observe(
                outcome, elapsed_ns / 1e9)

    def group(self, api_id: str, group: HookGroup, reply: GroupReply,
              elapsed_ns: int) -> None:
        """A merged call, per hook (gateway/hook_groups.py `hook_times`): those that
        ran, then the failed one."""
        ran = len(reply.results)
        for index, elapsed in enumerate(hook_times(reply, elapsed_ns)):
            step, failed = group[index], reply.error if index == ran else None
            self.one(api_id, step.hook_type, step.hook,
                     "ok" if failed is None else outcome_of(failed), elapsed)
