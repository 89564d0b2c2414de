"""The analytics record, Tyk's Redis encoding, the sinks and the pipeline, in one process."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from unit.waiting import until

from config import ConfigError
from config.analytics import AnalyticsConfig
from config.gateway import load_gateway_config
from gateway.analytics import observer as observe
from gateway.analytics import tyk_format
from gateway.analytics.observer import Observer
from gateway.analytics.pipeline import Pipeline
from gateway.analytics.record import Exchange, RecordSpec, build, finish
from gateway.analytics.sinks import FileSink, StdoutSink
from gateway.plan import AuthMode
from gateway.storage.keyhash import hash_key, murmur3_32, murmur3_128

# Tyk Pump's analytics.AnalyticsRecord (analytics/analytics.go), exported fields in
# declaration order, as msgpack.v2 writes them: written out here from the Go source,
# independently of gateway.analytics.tyk_format's table.
PUMP_FIELDS = [
    "Method", "Host", "Path", "RawPath", "ContentLength", "UserAgent", "Day", "Month",
    "Year", "Hour", "ResponseCode", "APIKey", "TimeStamp", "APIVersion", "APIName", "APIID",
    "OrgID", "OauthID", "RequestTime", "RawRequest", "RawResponse", "IPAddress", "Geo",
    "Network", "Latency", "Tags", "Alias", "TrackPath", "ExpireAt", "ApiSchema",
    "OriginalPath", "ListenPath", "GraphQLStats", "MCPStats", "CollectionName",
]
PUMP_NESTED = {
    "Geo": ["Country", "City", "Location"],
    "Network": ["OpenConnections", "ClosedConnection", "BytesIn", "BytesOut"],
    "Latency": ["Total", "Upstream", "Gateway"],
    "GraphQLStats": ["Variables", "RootFields", "Types", "Errors", "OperationType",
                     "HasErrors", "IsGraphQL"],
    "MCPStats": ["IsMCP", "JSONRPCMethod", "PrimitiveType", "PrimitiveName"],
}

SPEC = RecordSpec(api_id="api-1", api_name="Orders", org_id="org-9", listen_path="/orders/",
                  target_host="upstream.local:8000", tags=("team-a",),
                  tag_headers=("X-Team",))
NOW = datetime(2026, 12, 4, 21, 5, 6, 789012, tzinfo=UTC).timestamp()


def exchange(**overrides: Any) -> Exchange:
    fields: dict[str, Any] = dict(
        started_ns=1_000_000_000, method="POST", path="/orders/42",
        original_path="/orders/42", user_agent="curl/8",
        content_length=11, ip="10.1.2.3", status=201, api_key="secret-key",
        session={"alias": "alice", "oauth_client_id": "client-7", "tags": ["gold"]},
        headers={"X-Team": "blue"}, upstream_ns=3_000_000, phase_ns={"pre": 1_500_000},
        request_id="rid-1")
    fields.update(overrides)
    return Exchange(**fields)


def record(**overrides: Any) -> dict[str, Any]:
    return build(SPEC, exchange(**overrides), ended_ns=1_012_345_678, now=NOW)


# -- the key hash -------------------------------------------------------------------


def test_murmur_matches_the_reference_vectors() -> None:
    assert murmur3_32(b"") == 0
    assert murmur3_32(b"hello") == 0x248BFA47
    assert murmur3_32(b"The quick brown fox jumps over the lazy dog") == 0x2E4FF723
    assert murmur3_128(b"The quick brown fox jumps over the lazy dog") == (
        0xE34BBC7BBC071B6C, 0x7A433CA9C49A9347)


def test_api_key_is_hashed_as_tyk_does() -> None:
    assert hash_key("hello", True) == "248bfa47"  # murmur32, hex, big-endian
    assert hash_key("", True) == "00000000"  # keyless APIs: Tyk hashes the empty key too
    assert hash_key("hello", False) == "hello"
    token = base64.b64encode(b'{"org":"o","id":"i","h":"sha256"}').decode()
    assert len(hash_key(token, True)) == 64
    token = base64.b64encode(b'{"org":"o","id":"i","h":"murmur64"}').decode()
    assert len(hash_key(token, True)) == 16


# -- the record ---------------------------------------------------------------------


def test_record_has_tyks_fields_and_values() -> None:
    r = record()
    assert r["method"] == "POST" and r["path"] == r["raw_path"] == "/orders/42"
    assert r["host"] == "upstream.local:8000" and r["response_code"] == 201
    assert (r["day"], r["month"], r["year"], r["hour"]) == (4, 12, 2026, 21)
    assert r["timestamp"] == "2026-12-04T21:05:06.789012Z"
    assert r["latency"] == {"total": 12, "upstream": 3, "gateway": 9}
    assert r["request_time"] == 12
    assert r["api_version"] == "Non Versioned"
    assert (r["api_id"], r["api_name"], r["org_id"]) == ("api-1", "Orders", "org-9")
    assert (r["alias"], r["oauth_id"], r["ip_address"]) == ("alice", "client-7", "10.1.2.3")
    assert r["tags"] == ["gold", "x-team-blue", "team-a"]
    assert r["listen_path"] == "/orders/" and r["raw_request"] == ""
    assert r["hook_latency"] == {"pre": 1.5}  # Coproc's addition
    assert r["expireAt"].startswith("2126-")  # expire_analytics_after 0: 100 years
    json.dumps(r)  # JSON-ready as it is


def test_path_is_as_proxied_and_original_path_as_received() -> None:
    spec = RecordSpec(api_id="a", api_name="A", org_id="", listen_path="/orders/",
                      target_host="up", strip="/orders")
    ex = exchange(path="/orders/items/a%20b", original_path="/orders/x")
    r = build(spec, ex, ended_ns=1_012_345_678, now=NOW)
    assert r["path"] == r["raw_path"] == "/items/a b"  # stripped, decoded like Go's URL.Path
    assert r["original_path"] == "/orders/x"


def test_finish_does_what_tyks_writer_does() -> None:
    r = finish(record(path="orders/42"), hash_keys=True)
    assert r["api_key"] == hash_key("secret-key", True)
    assert r["tags"][-3:] == [f"key-{r['api_key']}", "org-org-9", "api-api-1"]
    assert r["path"] == "/orders/42"


# -- Tyk's Redis bytes -----------------------------------------------------------------


def test_encoding_uses_pump_field_names_in_order() -> None:
    r = finish(record(), hash_keys=True)
    got = tyk_format.decode(tyk_format.encode(r))
    assert list(got) == PUMP_FIELDS
    for name, inner in PUMP_NESTED.items():
        assert list(got[name]) == inner, name
    assert list(got["Geo"]["City"]) == ["GeoNameID", "Names"]
    # Field by field against the JSON names.
    assert got["Method"] == "POST" and got["ResponseCode"] == 201
    assert got["APIKey"] == r["api_key"] and got["Tags"] == r["tags"]
    assert got["Latency"] == {"Total": 12, "Upstream": 3, "Gateway": 9}
    assert got["Month"] == 12 and got["TrackPath"] is False
    assert got["Geo"]["City"]["Names"] is None and got["GraphQLStats"]["RootFields"] is None
    assert got["CollectionName"] == ""
    assert "hook_latency" not in got and "HookLatency" not in got  # Pump-exact


def test_time_is_msgpack_v2s_two_element_array() -> None:
    got = tyk_format.decode(tyk_format.encode(record()))
    seconds = int(datetime(2026, 12, 4, 21, 5, 6, tzinfo=UTC).timestamp())
    assert got["TimeStamp"] == [seconds, 789012000]
    assert got["ExpireAt"][0] > seconds
    # The bytes: fixarray(2), uint32 seconds, uint32 nanoseconds (no timestamp extension).
    packed = tyk_format.encode(record())
    assert b"\xa9TimeStamp\x92\xce" + seconds.to_bytes(4, "big") + b"\xce" in packed
    assert tyk_format.encode({"timestamp": None}).count(b"\x92\xd3\xff\xff\xff\xf1") == 2


def test_list_keys() -> None:
    assert tyk_format.list_key(False) == "analytics-tyk-system-analytics"
    shards = {tyk_format.list_key(True) for _ in range(300)}
    assert shards == {f"analytics-tyk-system-analytics_{n}" for n in range(10)}


# -- config ------------------------------------------------------------------------------


def write_config(tmp_path: Path, extra: dict[str, Any]) -> Path:
    path = tmp_path / "coproc.json"
    path.write_text(json.dumps({"coproc": {"run_dir": str(tmp_path / "run")}, **extra}))
    return path


def test_config_reads_tyks_names(tmp_path: Path) -> None:
    cfg = load_gateway_config(write_config(tmp_path, {
        "enable_analytics": True,
        "analytics_config": {"enable_detailed_recording": True, "ignored_ips": ["1.2.3.4"],
                             "pool_size": 5, "records_buffer_size": 100,
                             "enable_multiple_analytics_keys": True},
        "coproc": {"run_dir": str(tmp_path / "run"), "analytics": {"sink": "redis"},
                   "metrics": {"listen_port": 0}}}))
    a = cfg.analytics
    assert a.enabled and a.enable_detailed_recording and a.ignored_ips == {"1.2.3.4"}
    assert a.batch_size == 20 and a.sink == "redis" and a.enable_multiple_analytics_keys
    assert cfg.metrics.listen_port == 0 and cfg.metrics.path == "/metrics"
    assert load_gateway_config(write_config(tmp_path, {})).analytics.file_path == (
        tmp_path / "run" / "analytics.jsonl")


def test_protobuf_serializer_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_gateway_config(write_config(tmp_path, {
            "analytics_config": {"serializer_type": "protobuf"}}))
    assert "analytics_config.serializer_type" in str(err.value)
    assert "msgpack" in str(err.value)


# -- sinks and pipeline --------------------------------------------------------------------


async def test_file_sink_rotates_by_size(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "a.jsonl", max_bytes=2048, backups=2)
    for n in range(40):
        await sink.write([{"n": n, "pad": "x" * 100}])
    await sink.close()
    check_rotated(tmp_path)


def check_rotated(tmp_path: Path) -> None:
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["a.jsonl", "a.jsonl.1", "a.jsonl.2"]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 2048
    last = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert last[-1]["n"] == 39




class ListSink:
    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.gate = gate

    async def write(self, records: list[dict[str, Any]]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.batches.append(records)

    async def close(self) -> None:
        return None


async def test_pipeline_transform_may_change_and_drop() -> None:
    sink = ListSink()

    async def transform(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for r in records:
            r["tags"].append("seen")
        return [r for r in records if r["response_code"] != 500]

    cfg = AnalyticsConfig(enabled=True, pool_size=1, records_buffer_size=4,
                          flush_interval_ms=20)
    pipeline = Pipeline(cfg, sink, transform)
    task = asyncio.create_task(pipeline.run())
    try:
        for status in (200, 500, 201):
            pipeline.submit(SPEC, exchange(status=status), 2_000_000_000)
        await until(lambda: pipeline.written + pipeline.filtered >= 3)
    finally:
        task.cancel()
        await pipeline.close()
    written = [r for batch in sink.batches for r in batch]
    assert [r["response_code"] for r in written] == [200, 201]
    assert all("seen" in r["tags"] and "api-api-1" in r["tags"] for r in written)
    assert (pipeline.filtered, pipeline.dropped) == (1, 0)


async def test_a_full_queue_drops_and_counts_never_waits() -> None:
    gate = asyncio.Event()
    sink = ListSink(gate)  # the sink is stuck until the gate opens
    cfg = AnalyticsConfig(enabled=True, pool_size=1, records_buffer_size=10,
                          flush_interval_ms=10)
    pipeline = Pipeline(cfg, sink)
    task = asyncio.create_task(pipeline.run())
    try:
        for _ in range(10):
            pipeline.submit(SPEC, exchange(), 2_000_000_000)
        assert pipeline.dropped == 0  # below the bound: nothing lost
        await until(lambda: not pipeline.depth)  # the dispatcher took them: the sink holds it
        for _ in range(30):
            pipeline.submit(SPEC, exchange(), 2_000_000_000)
        assert pipeline.dropped > 0 and pipeline.depth <= 10
        gate.set()
        await until(lambda: not pipeline.depth)
    finally:
        task.cancel()
        await pipeline.close()
    assert pipeline.written == pipeline.submitted
    assert pipeline.submitted + pipeline.dropped == 40


async def test_stdout_sink_writes_json_lines() -> None:
    stream = io.StringIO()
    await StdoutSink(stream).write([{"api_id": "a", "n": 1}, {"api_id": "b", "n": 2}])
    assert [json.loads(line)["api_id"] for line in stream.getvalue().splitlines()] == ["a", "b"]


# -- the observer: which requests are recorded ----------------------------------------------


def observed(analytics: AnalyticsConfig, api: dict[str, Any], headers: dict[str, str]
             ) -> list[Any]:
    """The exchanges an Observer queues for one request to `api`."""
    queued: list[Any] = []

    class Recorder:
        def submit(self, spec: RecordSpec, ex: Exchange, ended: int) -> None:
            queued.append((spec, ex))

    class Plan:
        api_id = "a"
        auth = AuthMode.KEYLESS
        target = type("T", (), {"origin": "http://up:80", "strip": None})()

    plan = Plan()
    plan.api = type("A", (), {"api_id": "a", "name": "A", "org_id": "o", "raw": api,
                              "proxy": type("P", (), {"listen_path": "/a/"})()})()
    obs = Observer(None, Recorder(), analytics)  # type: ignore[arg-type]
    request = make_mocked_request("GET", "/a/x", headers=headers)
    trace = obs.begin()
    observe.matched(plan, None, "rid")  # type: ignore[arg-type]
    obs.end(request, web.Response(status=200), trace)
    return queued


def test_the_observer_skips_untracked_apis_and_ignored_ips() -> None:
    on = AnalyticsConfig(enabled=True, ignored_ips=frozenset({"10.9.9.9"}))
    got = observed(on, {}, {"X-Forwarded-For": "10.1.1.1, 10.2.2.2"})
    assert len(got) == 1 and got[0][1].ip == "10.1.1.1"  # Tyk's real IP: first hop
    assert got[0][1].status == 200 and got[0][1].request_id == "rid"
    assert observed(on, {"do_not_track": True}, {}) == []
    assert observed(on, {}, {"X-Real-IP": "10.9.9.9"}) == []
