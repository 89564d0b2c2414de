"""Request ids, the access log, log lines and the tracing settings, in-process.

The chain runs with the scripted fake hook client of tests/unit/inprocess.py
and a real echo upstream; traces end to end are in tests/integration/test_tracing.py.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from unit import inprocess
from unit.test_gateway_chain import api, hooks

from config.analytics import MetricsOptions
from config.gateway import load_gateway_config
from config.logs import _JsonFormatter
from config.reader import ConfigError
from config.tracing import TracingOptions
from gateway.hooks import HookFailed
from gateway.log_once import Once
from gateway.request_id import request_id
from gateway.tracing import Tracing, otlp_endpoint


@pytest.fixture
async def gateway(tmp_path: Path, echo: str) -> AsyncIterator[Callable[..., Any]]:
    async with inprocess.gateway_factory(tmp_path, inprocess.FakeHooks) as starter:
        def start(*apis: dict[str, Any], **fields: Any) -> Any:
            # No metrics listener: its fixed port may be taken by another test run.
            return starter(*apis, metrics=MetricsOptions(enabled=False), **fields)

        yield start


# -- request ids ------------------------------------------------------------------------

@pytest.mark.parametrize(("given", "kept"), [
    ("abc-123_X.y:z/+=@", True),
    ("a" * 200, True),
    ("a" * 201, False),
    ("has space", False),
    ("new\nline", False),
    ("", False),
    ("é", False),
])
def test_a_client_request_id_is_kept_only_when_safe(given: str, kept: bool) -> None:
    rid, own = request_id({"X-Request-Id": given} if given else {})  # type: ignore[arg-type]
    assert own is kept
    assert (rid == given) is kept
    if not kept:
        assert re.fullmatch("[0-9a-f]{32}", rid)


async def test_plugins_and_upstream_see_the_same_generated_id(gateway: Any, echo: str) -> None:
    env = await gateway(api("a", "/a", echo, custom_middleware={"pre": hooks("Pre")}))
    status, got, _ = await env.request("GET", "/a/x", headers={"X-Request-Id": "bad id"})
    assert status == 200
    rid = got["headers"]["X-Request-ID"]
    assert re.fullmatch("[0-9a-f]{32}", rid)
    seen = env.fake.calls[0][3]["request"]["headers"]
    assert seen["X-Request-Id"] == rid  # as a request header, Tyk's canonical name


async def test_plugins_see_the_clients_id(gateway: Any, echo: str) -> None:
    env = await gateway(api("a", "/a", echo, custom_middleware={"pre": hooks("Pre")}))
    _, got, _ = await env.request("GET", "/a/x", headers={"X-Request-Id": "client-7"})
    assert got["headers"]["X-Request-ID"] == "client-7"
    assert env.fake.calls[0][3]["request"]["headers"]["X-Request-Id"] == "client-7"


# -- the access log and hook failure lines ----------------------------------------------

async def test_access_log_line_per_request(gateway: Any, echo: str,
                                           caplog: pytest.LogCaptureFixture) -> None:
    env = await gateway(api("a", "/a", echo), access_log=True)
    caplog.set_level(logging.INFO, "coproc.access")
    await env.request("GET", "/a/x?q=1", headers={"X-Request-Id": "acc-1"})
    await env.request("GET", "/nowhere")
    lines = [r for r in caplog.records if r.name == "coproc.access"]
    assert len(lines) == 2
    first, second = (r.fields for r in lines)  # type: ignore[attr-defined]
    assert first["method"] == "GET" and first["path"] == "/a/x" and first["status"] == 200
    assert first["api_id"] == "a" and first["request_id"] == "acc-1"
    assert first["duration_ms"] >= 0
    assert second["status"] == 404 and "api_id" not in second


async def test_no_access_log_by_default(gateway: Any, echo: str,
                                        caplog: pytest.LogCaptureFixture) -> None:
    env = await gateway(api("a", "/a", echo))
    caplog.set_level(logging.INFO, "coproc.access")
    await env.request("GET", "/a/x")
    assert not [r for r in caplog.records if r.name == "coproc.access"]


async def test_a_plugin_that_failed_to_load_is_logged_once(gateway: Any, echo: str,
                                                           caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    env = await gateway(api("a", "/a", echo, custom_middleware={"pre": hooks("Pre")}))
    env.fake.behaviours["Pre"] = lambda obj: HookFailed("load_failed", "ImportError: nope")
    caplog.set_level(logging.WARNING, "coproc.gateway.chain")
    for _ in range(3):
        status, _, _ = await env.request("GET", "/a/x", headers={"X-Request-Id": "lf"})
        assert status == 500
    warned = [r for r in caplog.records if r.name == "coproc.gateway.chain"
              and r.levelno == logging.WARNING]
    assert len(warned) == 1
    assert warned[0].fields == {"api_id": "a", "hook": "Pre", "request_id": "lf"}  # type: ignore[attr-defined]
    # Another kind of failure is logged on its own; repeats of it are throttled to
    # one line per interval (issue #11 item 13), so two requests give one line.
    env.fake.behaviours["Pre"] = lambda obj: HookFailed("hook_failed", "boom")
    for _ in range(2):
        await env.request("GET", "/a/x")
    assert len([r for r in caplog.records if r.name == "coproc.gateway.chain"
                and r.levelno == logging.WARNING]) == 2


def test_once_is_bounded() -> None:
    once = Once(limit=2)
    assert once.first("a") and not once.first("a")
    assert once.first("b") and once.first("c")  # the third key starts over
    assert once.first("a")


# -- log lines ----------------------------------------------------------------------------

def test_json_lines_fold_tracebacks_and_keep_their_own_keys() -> None:
    formatter = _JsonFormatter("gateway")
    try:
        raise ValueError("first\nsecond")
    except ValueError:
        record = logging.LogRecord("coproc.x", logging.ERROR, __file__, 1, "failed:\n%s",
                                   ("two lines",), sys.exc_info())
    record.fields = {"api_id": "a", "msg": "not this", "hook": "H"}
    line = formatter.format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["msg"] == "failed:\ntwo lines"
    assert entry["api_id"] == "a" and entry["hook"] == "H"
    assert "Traceback" in entry["exc"] and "ValueError: first\nsecond" in entry["exc"]


# -- settings -------------------------------------------------------------------------------

def _config(tmp_path: Path, doc: dict[str, Any]) -> Any:
    path = tmp_path / "coproc.json"
    path.write_text(json.dumps(doc))
    return load_gateway_config(path)


def test_tracing_settings_use_tyks_names_and_defaults(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {})
    assert cfg.tracing == TracingOptions() and not cfg.tracing.enabled
    assert cfg.access_log is False
    cfg = _config(tmp_path, {
        "opentelemetry": {"enabled": True, "exporter": "http", "endpoint": "otel:4318",
                          "headers": {"X-Key": "k"}, "context_propagation": "b3",
                          "sampling": {"type": "TraceIDRatioBased", "rate": 0.25,
                                       "parent_based": True}},
        "coproc": {"access_log": True}})
    t = cfg.tracing
    assert (t.enabled, t.exporter, t.endpoint, t.headers) == (True, "http", "otel:4318",
                                                              {"X-Key": "k"})
    assert (t.context_propagation, t.sampling_type, t.sampling_rate,
            t.sampling_parent_based) == ("b3", "TraceIDRatioBased", 0.25, True)
    assert cfg.access_log is True
    # Tyk's newer layout: `opentelemetry.traces` wins when enabled.
    cfg = _config(tmp_path, {"opentelemetry": {
        "enabled": False, "headers": None,
        "traces": {"enabled": True, "endpoint": "traces:4317"}}})
    assert cfg.tracing.enabled and cfg.tracing.endpoint == "traces:4317"


@pytest.mark.parametrize(("block", "field"), [
    ({"exporter": "zipkin"}, "opentelemetry.exporter"),
    ({"context_propagation": "jaeger"}, "opentelemetry.context_propagation"),
    ({"sampling": {"type": "Sometimes"}}, "opentelemetry.sampling.type"),
    ({"sampling": {"rate": 2}}, "opentelemetry.sampling.rate"),
    ({"headers": {"X": 1}}, "opentelemetry.headers"),
])
def test_bad_tracing_settings_name_the_field(tmp_path: Path, block: dict[str, Any],
                                             field: str) -> None:
    with pytest.raises(ConfigError) as failure:
        _config(tmp_path, {"opentelemetry": block})
    assert field in str(failure.value)


def test_otlp_endpoints() -> None:
    assert otlp_endpoint(TracingOptions(exporter="grpc", endpoint="c:4317")) == "c:4317"
    assert otlp_endpoint(TracingOptions(exporter="http", endpoint="c:4318")) == \
        "http://c:4318/v1/traces"
    assert otlp_endpoint(TracingOptions(exporter="http", endpoint="https://c/otlp")) == \
        "https://c/otlp"


def test_tracing_off_builds_nothing() -> None:
    assert Tracing.from_config(TracingOptions(enabled=False)) is None
    tracing = Tracing.from_config(TracingOptions(enabled=True, exporter="http",
                                                 endpoint="127.0.0.1:9"))
    assert tracing is not None
    tracing.close()


# -- spans in-process ----------------------------------------------------------------------

async def test_request_and_hook_spans_and_the_context_forwarded(
        tmp_path: Path, echo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import gateway.tracing

    exporter = InMemorySpanExporter()  # instead of the OTLP one the settings name
    monkeypatch.setattr(gateway.tracing, "_exporter", lambda opts: exporter)
    opts = TracingOptions(enabled=True, span_processor_type="simple")
    async with inprocess.gateway_factory(tmp_path, inprocess.FakeHooks) as start:
        env = await start(api("a", "/a", echo, custom_middleware={"pre": hooks("Pre")}),
                          api("s", "/s", echo), tracing=opts,
                          metrics=MetricsOptions(enabled=False))
        parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        body = b"payload" * 1000
        # A header byte that is not UTF-8 (see gateway/header_bytes.py) must not matter.
        status, got, _ = await env.request("POST", "/a/x", data=body, headers={
            "traceparent": parent, "X-Request-Id": "sp-1", "X-Raw": "caf\udce9"})
        assert status == 200 and got["body_len"] == len(body)
        status, streamed, _ = await env.request("POST", "/s/x", data=body)  # no hooks
        assert status == 200 and streamed["body_len"] == len(body)
    spans = {s.name: s for s in exporter.get_finished_spans()
             if s.context.trace_id == 0x4bf92f3577b34da6a3ce929d0e0e4736}
    request_span, hook_span = spans["POST request"], spans["pre Pre"]
    assert request_span.parent is not None and request_span.parent.span_id == 0x00f067aa0ba902b7
    assert hook_span.parent is not None and hook_span.parent.span_id == \
        request_span.context.span_id
    ours = f"00-{request_span.context.trace_id:032x}-{request_span.context.span_id:016x}-01"
    assert got["headers"]["traceparent"] == ours  # the client's replaced, not added to
    assert env.fake.calls[0][3]["request"]["headers"]["Traceparent"] == ours
    assert request_span.attributes["coproc.request_id"] == "sp-1"
    assert request_span.attributes["http.response.status_code"] == 200
    assert hook_span.attributes["coproc.hook.name"] == "Pre"
    assert streamed["headers"]["traceparent"].split("-")[1] != ours.split("-")[1]


def test_tracing_without_the_sdk_is_refused_naming_the_field(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import config.tracing

    monkeypatch.setattr(config.tracing, "_sdk_installed", lambda: False)
    with pytest.raises(ConfigError) as failure:
        _config(tmp_path, {"opentelemetry": {"enabled": True}})
    assert "opentelemetry.enabled" in str(failure.value)
    assert "coproc[otel]" in str(failure.value)
    assert not _config(tmp_path, {"opentelemetry": {"enabled": False}}).tracing.enabled


def test_generated_request_ids_are_unique() -> None:
    ids = {request_id({})[0] for _ in range(1000)}  # type: ignore[arg-type]
    assert len(ids) == 1000
