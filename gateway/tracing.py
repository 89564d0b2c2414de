"""OpenTelemetry tracing: a span per request and per hook call, context to plugins and upstream.

Configured by Tyk's `opentelemetry` block (`config.tracing`); needs the
optional `coproc[otel]` extra.  When tracing is off nothing here is imported
or called: the app adds no wrapper, so requests pay nothing.

Per request, a SERVER span is started from the incoming trace context (W3C
`traceparent` or B3, by `context_propagation`), and that span's context
replaces the client's propagation headers in the request the chain forwards
(`gateway.request_id.TRACE_HEADERS`).  So:

* plugins read it in the request headers of the object they get
  (`request.object.headers["traceparent"]`, or the `b3` header), and can
  start their own spans as its children;
* the upstream gets the same headers (the proxy copies the request's headers),
  so its spans join the same trace.

Each hook call gets an INTERNAL child span named `<hook_type> <hook name>`,
with the API id and `coproc.hook.run_ms`, the worker's own time running that
hook (the REPLY's `run_ns`: per hook even when calls share a round trip).
The hooks of a merged call (gateway/hook_groups.py) get one span each too,
laid end to end over the call (`coproc.hook.merged`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web

from config.apidef import HookDef
from config.reader import ConfigError
from config.tracing import TracingOptions
from gateway.hook_groups import GroupReply, HookGroup, Step, hook_times
from gateway.request_id import REQUEST_INFO, TRACE_HEADERS, TraceHeaders
from ipc.coprocess import RUN_NS

if TYPE_CHECKING:
    from gateway.chain import HookCaller

__all__ = ["TracedHooks", "Tracing", "otlp_endpoint"]

log = logging.getLogger("coproc.gateway.tracing")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def otlp_endpoint(opts: TracingOptions) -> str:
    """The exporter's endpoint: Tyk gives `host:port`; OTLP/HTTP needs a URL with a path."""
    endpoint = opts.endpoint
    if opts.exporter == "grpc":
        return endpoint
    if "://" not in endpoint:
        endpoint = "http://" + endpoint
    if urlsplit(endpoint).path in ("", "/"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    return endpoint


class Tracing:
    """One per gateway process: the tracer provider, its exporter and the propagator."""

    def __init__(self, opts: TracingOptions, path: str = "", exporter: Any = None) -> None:
        """`exporter`: a span exporter to use instead of the configured one (tests)."""
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
        except ImportError as exc:
            raise ConfigError(path, "opentelemetry.enabled",
                              f"tracing needs the OpenTelemetry SDK ({exc})",
                              "install coproc[otel], or set it to false") from None
        self.opts = opts
        self.provider = TracerProvider(resource=Resource.create(
            {"service.name": opts.resource_name}), sampler=_sampler(opts))
        self.provider.add_span_processor(_processor(opts, exporter or _exporter(opts)))
        self.tracer = self.provider.get_tracer("coproc.gateway")
        self.propagator = _propagator(opts)

    @classmethod
    def from_config(cls, opts: TracingOptions, path: str = "") -> Tracing | None:
        return cls(opts, path) if opts.enabled else None

    def close(self) -> None:
        """Export what is still queued (bounded by the exporter's timeout), then stop."""
        self.provider.shutdown()

    def handler(self, inner: Handler) -> Handler:
        """`inner` with a SERVER span around each request (see the module docstring)."""
        from opentelemetry import context, trace

        tracer, propagator = self.tracer, self.propagator
        fields = tuple(propagator.fields)
        if self.opts.context_propagation == "b3":  # the client's other B3 forms go too
            fields += ("b3", "x-b3-parentspanid", "x-b3-flags")

        async def traced(request: web.Request) -> web.StreamResponse:
            parent = propagator.extract(request.headers)
            span = tracer.start_span(f"{request.method} request", context=parent,
                                     kind=trace.SpanKind.SERVER,
                                     attributes={"http.request.method": request.method,
                                                 "url.path": request.path})
            token = context.attach(trace.set_span_in_context(span, parent))
            try:
                carrier: dict[str, str] = {}
                propagator.inject(carrier)
                # The chain puts these in the request it forwards (the request itself is
                # left alone: its headers may hold any byte, see gateway/header_bytes.py).
                headers_token = TRACE_HEADERS.set(TraceHeaders(fields, carrier))
                try:
                    response = await inner(request)
                finally:
                    TRACE_HEADERS.reset(headers_token)
                _finish(span, response.status)
                return response
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(trace.StatusCode.ERROR, type(exc).__name__)
                raise
            finally:
                context.detach(token)
                span.end()

        return traced

    def hooks(self, inner: HookCaller) -> TracedHooks:
        return TracedHooks(inner, self.tracer)


def _finish(span: Any, status: int) -> None:
    from opentelemetry import trace

    span.set_attribute("http.response.status_code", status)
    info = REQUEST_INFO.get()
    if info is not None:
        span.set_attribute("coproc.api_id", info[0])
        span.set_attribute("coproc.request_id", info[1])
    if status >= 500:
        span.set_status(trace.StatusCode.ERROR)


class TracedHooks:
    """The hook client as the chain sees it with tracing on: a child span per call.

    Everything else (the arena, health, ...) is the wrapped client's.
    """

    def __init__(self, hooks: HookCaller, tracer: Any) -> None:
        self._hooks = hooks
        self._tracer = tracer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hooks, name)

    async def call(self, api_id: str, hook_type: str, hook: HookDef,
                   obj: dict[str, Any]) -> dict[str, Any]:
        # start_as_current_span records a raised error on the span and marks it failed.
        with self._tracer.start_as_current_span(
                f"{hook_type} {hook.name}",
                attributes={"coproc.api_id": api_id, "coproc.hook.type": hook_type,
                            "coproc.hook.name": hook.name}) as span:
            got = await self._hooks.call(api_id, hook_type, hook, obj)
            span.set_attribute("coproc.hook.run_ms", got.get(RUN_NS, 0) / 1e6)
            return got

    async def call_group(self, api_id: str, group: HookGroup,
                         obj: dict[str, Any]) -> GroupReply | None:
        """A merged call: one span per hook that ran (and the failed one), laid end to
        end over the call's time by each hook's share (`hook_times`)."""
        from opentelemetry import trace

        started = time.time_ns()
        try:
            reply = await self._hooks.call_group(api_id, group, obj)
        except Exception as exc:
            span = self._span(api_id, group[0], started)
            span.record_exception(exc)
            span.set_status(trace.StatusCode.ERROR, type(exc).__name__)
            span.end()
            raise
        if reply is None:
            return None
        at = started
        for index, elapsed in enumerate(hook_times(reply, time.time_ns() - started)):
            span = self._span(api_id, group[index], at)
            if index < len(reply.results):
                span.set_attribute("coproc.hook.run_ms",
                                   reply.results[index].get(RUN_NS, 0) / 1e6)
            elif reply.error is not None:
                span.record_exception(reply.error)
                span.set_status(trace.StatusCode.ERROR, type(reply.error).__name__)
            at += elapsed
            span.end(end_time=at)
        return reply

    def _span(self, api_id: str, step: Step, start_ns: int) -> Any:
        return self._tracer.start_span(
            f"{step.hook_type} {step.hook.name}", start_time=start_ns,
            attributes={"coproc.api_id": api_id, "coproc.hook.type": step.hook_type,
                        "coproc.hook.name": step.hook.name, "coproc.hook.merged": True})


def _sampler(opts: TracingOptions) -> Any:
    from opentelemetry.sdk.trace import sampling

    base: Any = {
        "AlwaysOn": sampling.ALWAYS_ON,
        "AlwaysOff": sampling.ALWAYS_OFF,
    }.get(opts.sampling_type) or sampling.TraceIdRatioBased(opts.sampling_rate)
    return sampling.ParentBased(base) if opts.sampling_parent_based else base


def _processor(opts: TracingOptions, exporter: Any) -> Any:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if opts.span_processor_type == "simple":
        return SimpleSpanProcessor(exporter)
    return BatchSpanProcessor(exporter)


def _exporter(opts: TracingOptions) -> Any:
    headers: Mapping[str, str] = opts.headers
    if opts.exporter == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        endpoint = opts.endpoint
        # Tyk's endpoints are host:port, sent without TLS unless a tls block says otherwise.
        insecure = not endpoint.startswith("https://")
        return OTLPSpanExporter(endpoint=endpoint, insecure=insecure,
                                headers=tuple(headers.items()),
                                timeout=opts.connection_timeout)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter(endpoint=otlp_endpoint(opts), headers=dict(headers),
                        timeout=opts.connection_timeout)


def _propagator(opts: TracingOptions) -> Any:
    if opts.context_propagation == "b3":
        from opentelemetry.propagators.b3 import B3MultiFormat

        return B3MultiFormat()
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()
