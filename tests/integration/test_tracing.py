"""Traces, request ids and log lines end to end, through real processes.

1. A local OTLP/HTTP receiver (an aiohttp app on a loopback port, in a thread)
   decodes what it gets with opentelemetry-proto.
2. An instance exports there (`opentelemetry`, exporter http, simple processor),
   with the access log on and JSON logs; its API has a pre hook that copies the
   `traceparent` and `X-Request-Id` it sees into headers, and logs a line.
3. A request with a client trace context and request id: the receiver gets the
   request span and the hook span in the client's trace, the hook span a child of
   the request span; the upstream and the plugin saw that trace id and that id.
4. A request without an id gets a generated one, which the upstream, the plugin
   and the log lines share; an unsafe id is replaced.
5. The log lines: one access line per request, plugin lines with api_id, hook
   and request_id.
"""

from __future__ import annotations

import asyncio
import json
import re
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from integration.harness import HOST, Instance, api_def, echo_header, hook, poll
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

PLUGIN = textwrap.dedent('''
    from tyk.decorators import *
    from gateway import TykGateway as tyk


    @Hook
    def SeeTrace(request, session, spec):
        headers = request.object.headers
        request.add_header("X-Plugin-Traceparent", headers.get("Traceparent", ""))
        request.add_header("X-Plugin-Request-Id", headers.get("X-Request-Id", ""))
        tyk.log("saw the request", "info")
        return request, session
''').lstrip()

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = "00f067aa0ba902b7"


class Receiver:
    """POST /v1/traces: OTLP/HTTP protobuf, decoded into (trace id, span id, parent, name)."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Receiver:
        self._thread.start()
        assert self._ready.wait(10), "the OTLP receiver did not start"
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, HOST, 0)
        self._loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        self._ready.set()
        self._loop.run_forever()

    async def _traces(self, request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        for resource in message.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    self.spans.append({
                        "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                        "parent": span.parent_span_id.hex(), "name": span.name,
                        "kind": span.kind, "start": span.start_time_unix_nano,
                        "end": span.end_time_unix_nano,
                        "attributes": {a.key: _value(a.value) for a in span.attributes}})
        return web.Response(body=b"", content_type="application/x-protobuf")

    def in_trace(self, trace_id: str) -> list[dict[str, Any]]:
        return [s for s in list(self.spans) if s["trace_id"] == trace_id]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    recv = Receiver().start()
    try:
        yield recv
    finally:
        recv.stop()


@pytest.fixture(scope="module")
def gw(module_coproc_factory: Any, echo_upstream: Any, receiver: Receiver) -> Instance:
    apis = {"traced": api_def("traced", "/traced/", echo_upstream.url,
                              pre=[hook("SeeTrace", "tr/mw.py")]),
            # pre and post share one round trip (coproc.hooks.merge)
            "merged": api_def("merged", "/merged/", echo_upstream.url,
                              pre=[hook("SeeTrace", "tr/mw.py")],
                              post=[hook("SeeTrace", "tr/mw.py")])}
    settings = {
        "opentelemetry": {"enabled": True, "exporter": "http",
                          "endpoint": f"{HOST}:{receiver.port}",
                          "span_processor_type": "simple",
                          "sampling": {"type": "AlwaysOn"}},
        "coproc": {"access_log": True, "log_format": "json"},
    }
    return module_coproc_factory(apis, {"tr/mw.py": PLUGIN}, settings)


def _trace_id(traceparent: str | None) -> str:
    assert traceparent, "no traceparent"
    match = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}", traceparent)
    assert match, traceparent
    return match.group(1)


def test_request_and_hook_spans_share_the_clients_trace(gw: Instance,
                                                        receiver: Receiver) -> None:
    resp = gw.expect(gw.get("/traced/a", {
        "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01", "X-Request-Id": "rid-trace-1"}),
        200)
    echo = resp.json()
    assert _trace_id(echo_header(echo, "traceparent")) == CLIENT_TRACE  # the upstream's
    assert _trace_id(echo_header(echo, "X-Plugin-Traceparent")) == CLIENT_TRACE  # plugin's
    assert echo_header(echo, "X-Request-Id") == "rid-trace-1"
    assert echo_header(echo, "X-Plugin-Request-Id") == "rid-trace-1"

    spans = poll("the request's spans exported",
                 lambda: (lambda got: got if len(got) >= 2 else None)(
                     receiver.in_trace(CLIENT_TRACE)), 10)
    by_name = {s["name"]: s for s in spans}
    request_span = by_name["GET request"]
    hook_span = by_name["pre SeeTrace"]
    assert request_span["parent"] == CLIENT_PARENT  # continues the client's trace
    assert hook_span["parent"] == request_span["span_id"]
    assert request_span["attributes"]["coproc.api_id"] == "traced"
    assert request_span["attributes"]["coproc.request_id"] == "rid-trace-1"
    assert request_span["attributes"]["http.response.status_code"] == 200
    assert hook_span["attributes"]["coproc.hook.name"] == "SeeTrace"
    assert hook_span["attributes"]["coproc.hook.run_ms"] > 0  # the worker's own timing
    # The upstream's parent is the gateway's request span.
    assert echo_header(echo, "traceparent").split("-")[2] == request_span["span_id"]


def test_a_new_trace_and_request_id_when_the_client_has_none(gw: Instance,
                                                             receiver: Receiver) -> None:
    echo = gw.expect(gw.get("/traced/b", {"X-Request-Id": "bad id\twith spaces"}), 200).json()
    trace_id = _trace_id(echo_header(echo, "traceparent"))
    assert trace_id != CLIENT_TRACE
    rid = echo_header(echo, "X-Request-Id")
    assert rid is not None and re.fullmatch("[0-9a-f]{32}", rid)  # the unsafe one replaced
    assert echo_header(echo, "X-Plugin-Request-Id") == rid
    poll("the new trace exported", lambda: len(receiver.in_trace(trace_id)) >= 2, 10)

    def lines() -> list[dict[str, Any]]:
        out = []
        for line in gw.logs(tail=200_000).splitlines():
            if line.startswith("{"):
                entry = json.loads(line)  # one event, one line, valid JSON
                if entry.get("request_id") == rid:
                    out.append(entry)
        return out

    got = poll("the request's log lines", lambda: (lambda ls: ls if len(ls) >= 2 else None)(
        lines()), 10)
    access = [e for e in got if e["logger"] == "coproc.access"]
    assert len(access) == 1
    assert access[0]["status"] == 200 and access[0]["api_id"] == "traced"
    assert access[0]["path"] == "/traced/b" and access[0]["method"] == "GET"
    plugin = [e for e in got if e["msg"] == "saw the request"]
    assert plugin and plugin[0]["api_id"] == "traced" and plugin[0]["hook"] == "SeeTrace"


def test_hooks_sharing_a_round_trip_get_a_span_each(gw: Instance, receiver: Receiver) -> None:
    trace = "5bf92f3577b34da6a3ce929d0e0e4737"
    gw.expect(gw.get("/merged/a", {"traceparent": f"00-{trace}-{CLIENT_PARENT}-01"}), 200)
    spans = poll("the merged call's spans exported",
                 lambda: (lambda got: got if len(got) >= 3 else None)(receiver.in_trace(trace)),
                 10)
    by_name = {s["name"]: s for s in spans}
    request_span, pre, post = by_name["GET request"], by_name["pre SeeTrace"], \
        by_name["post SeeTrace"]
    for span in (pre, post):
        assert span["parent"] == request_span["span_id"]
        assert span["attributes"]["coproc.hook.merged"] is True
        assert span["attributes"]["coproc.hook.run_ms"] > 0
    assert pre["start"] < pre["end"] <= post["start"] < post["end"]  # end to end, in order
