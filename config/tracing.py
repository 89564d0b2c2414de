"""Tracing and request-log settings: Tyk's `opentelemetry` block, plus `coproc.access_log`.

The `opentelemetry` block is read under Tyk's names and with Tyk's defaults
(its OpenTelemetry library's `SetDefaults`): `enabled`, `exporter` (grpc or
http), `endpoint`, `headers`, `connection_timeout` (seconds), `resource_name`,
`span_processor_type` (batch or simple), `context_propagation` (tracecontext
or b3) and `sampling` {`type` AlwaysOn | AlwaysOff | TraceIDRatioBased,
`rate`, `parent_based`}.  Tyk's newer `opentelemetry.traces` sub-object, when
present and enabled, takes precedence over the root-level fields, as in Tyk.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from config.reader import Reader

__all__ = ["EXPORTERS", "PROPAGATIONS", "SAMPLERS", "SPAN_PROCESSORS", "TracingOptions",
           "parse_tracing"]

EXPORTERS = ("grpc", "http")
PROPAGATIONS = ("tracecontext", "b3")
SAMPLERS = ("AlwaysOn", "AlwaysOff", "TraceIDRatioBased")
SPAN_PROCESSORS = ("batch", "simple")


@dataclass(frozen=True, slots=True)
class TracingOptions:
    enabled: bool = False
    exporter: str = "grpc"
    endpoint: str = "localhost:4317"
    headers: dict[str, str] = field(default_factory=dict)
    connection_timeout: int = 1  # seconds
    resource_name: str = "tyk-gateway"
    span_processor_type: str = "batch"
    context_propagation: str = "tracecontext"
    sampling_type: str = "AlwaysOn"
    sampling_rate: float = 0.5
    sampling_parent_based: bool = False


def parse_tracing(r: Reader) -> TracingOptions:
    """The `opentelemetry` block (`r`); `traces` wins when it is there and enabled."""
    traces = r.child("traces")
    reader = traces if traces.get("enabled", bool, False) else r
    opts = _parse(reader)
    if opts.enabled and not _sdk_installed():
        raise reader.error("enabled", "tracing needs the OpenTelemetry SDK, which is not "
                           "installed", "install coproc[otel], or set it to false")
    return opts


def _sdk_installed() -> bool:
    # Checked when the config is read, so `coproc serve` stops with the config's exit code.
    try:
        return importlib.util.find_spec("opentelemetry.sdk.trace") is not None
    except ModuleNotFoundError:  # no `opentelemetry` package at all
        return False


def _parse(r: Reader) -> TracingOptions:
    d = TracingOptions()
    headers = r.get("headers", dict, {})  # Tyk writes `"headers": null`: none
    for name, value in headers.items():
        if not isinstance(value, str):
            raise r.error("headers", f"header {name!r} must be a string",
                          'give each header as "Name": "value"')
    sampling = r.child("sampling")
    return TracingOptions(
        enabled=r.get("enabled", bool, d.enabled),
        exporter=r.choice("exporter", EXPORTERS, d.exporter),
        endpoint=r.get("endpoint", str, d.endpoint) or d.endpoint,
        headers=dict(headers),
        connection_timeout=r.number("connection_timeout", int, d.connection_timeout, 0, 3600)
        or d.connection_timeout,
        resource_name=r.get("resource_name", str, d.resource_name) or d.resource_name,
        span_processor_type=r.choice("span_processor_type", SPAN_PROCESSORS,
                                     d.span_processor_type),
        context_propagation=r.choice("context_propagation", PROPAGATIONS,
                                     d.context_propagation),
        sampling_type=sampling.choice("type", SAMPLERS, d.sampling_type),
        sampling_rate=float(sampling.number("rate", float, d.sampling_rate, 0, 1)),
        sampling_parent_based=sampling.get("parent_based", bool, d.sampling_parent_based),
    )
