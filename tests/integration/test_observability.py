"""Metrics and analytics records end to end, through real processes.

1. An instance with a hook that passes, one that raises (fail_closed), one that
   overruns its deadline, one that raises under fail_open, and an API with
   do_not_track; metrics on their own listener, records in the file sink.
2. Requests move /metrics (parsed with prometheus_client's parser): requests by
   API and status class, hook outcomes, fail-open, the latency histograms.
3. The file sink holds one record per tracked request, Tyk's JSON names, the
   gateway's own errors included, the untracked API absent.
4. A second instance writes to a real redis-server; the list's entries decode
   into Tyk Pump's record fields; /metrics on the gateway's port needs the secret.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
from integration.harness import HOST, Instance, RedisServer, api_def, free_port, hook, poll
from prometheus_client.parser import text_string_to_metric_families
from unit.test_analytics import PUMP_FIELDS

from gateway.storage.keyhash import hash_key

SECRET = "observe-secret"

PLUGIN = textwrap.dedent('''
    import time

    from tyk.decorators import *
    from gateway import TykGateway as tyk


    @Hook
    def Passes(request, session, spec):
        request.add_header("X-Passed", "yes")
        return request, session


    @Hook
    def Raises(request, session, spec):
        raise RuntimeError("this hook fails")


    @Hook
    def Overruns(request, session, spec):
        time.sleep(0.4)
        return request, session
''').lstrip()


def apis(echo_url: str) -> dict[str, dict[str, Any]]:
    mw = "obs/mw.py"
    return {
        "ok": api_def("ok", "/ok/", echo_url, pre=[hook("Passes", mw)], tags=["team-a"]),
        "err": api_def("err", "/err/", echo_url, pre=[hook("Raises", mw)]),
        "slow": api_def("slow", "/slow/", echo_url, pre=[hook("Overruns", mw, timeout_ms=100)]),
        "open": api_def("open", "/open/", echo_url,
                        pre=[hook("Raises", mw, failure_policy="fail_open")]),
        "quiet": api_def("quiet", "/quiet/", echo_url, do_not_track=True),
        "keys": api_def("keys", "/keys/", echo_url, use_keyless=False,
                        tag_headers=["X-Team"]),
    }


def analytics_settings(sink: str, **more: Any) -> dict[str, Any]:
    return {"secret": SECRET, "enable_analytics": True,
            "analytics_config": {"records_buffer_size": 1000, "pool_size": 10},
            "coproc": {"analytics": {"sink": sink, "flush_interval_ms": 50, **more}}}


def scrape(port: int, path: str = "/metrics", headers: dict[str, str] | None = None
           ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    import http.client

    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read().decode()
        assert resp.status == 200, body
    finally:
        conn.close()
    samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def gw(module_coproc_factory: Any, echo_upstream: Any, metrics_port: int) -> Instance:
    settings = analytics_settings("file")
    settings["coproc"]["metrics"] = {"listen_port": metrics_port}
    return module_coproc_factory(apis(echo_upstream.url), {"obs/mw.py": PLUGIN}, settings)


def test_requests_errors_and_timeouts_move_the_counters(gw: Instance, metrics_port: int
                                                        ) -> None:
    before = scrape(metrics_port)
    for _ in range(3):
        gw.expect(gw.get("/ok/a"), 200)
    gw.expect(gw.get("/err/a"), 500)
    gw.expect(gw.get("/slow/a"), 504)
    gw.expect(gw.get("/open/a"), 200)
    gw.expect(gw.get("/nowhere"), 404)
    after = scrape(metrics_port)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("coproc_requests_total", api_id="ok", code_class="2xx") == 3
    assert moved("coproc_requests_total", api_id="err", code_class="5xx") == 1
    assert moved("coproc_requests_total", api_id="slow", code_class="5xx") == 1
    assert moved("coproc_requests_total", api_id="", code_class="4xx") == 1
    hook_calls = "coproc_hook_calls_total"
    assert moved(hook_calls, api_id="ok", phase="pre", hook="Passes", outcome="ok") == 3
    assert moved(hook_calls, api_id="err", phase="pre", hook="Raises", outcome="error") == 1
    assert moved(hook_calls, api_id="slow", phase="pre", hook="Overruns",
                 outcome="timeout") == 1
    assert moved("coproc_hook_fail_open_total", api_id="open", phase="pre",
                 hook="Raises") == 1
    assert moved("coproc_request_duration_seconds_count", api_id="ok") == 3
    assert moved("coproc_upstream_duration_seconds_count", api_id="ok") == 3
    assert moved("coproc_upstream_duration_seconds_count", api_id="err") == 0  # never sent
    assert moved("coproc_hook_duration_seconds_count", api_id="slow", phase="pre",
                 hook="Overruns") == 1
    assert value(after, "coproc_requests_in_flight") == 0
    assert moved("coproc_gateway_events_total", event="hooks_fail_open") == 1
    # The analytics queue's counters are there and move as records are written.
    poll("analytics records written",
         lambda: value(scrape(metrics_port), "coproc_analytics_records_total",
                       fate="written") >= 6, 10)
    assert value(scrape(metrics_port), "coproc_analytics_records_total", fate="dropped") == 0


def records(gw: Instance) -> list[dict[str, Any]]:
    path: Path = gw.run_dir / "analytics.jsonl"
    try:
        return [json.loads(line) for line in path.read_text().splitlines()]
    except FileNotFoundError:
        return []


def test_the_file_sink_shows_the_records(gw: Instance) -> None:
    gw.expect(gw.request("GET", "/ok/record?x=1", {"User-Agent": "obs-test/1"}), 200)
    gw.expect(gw.get("/quiet/a"), 200)
    gw.expect(gw.get("/err/record"), 500)

    def mine() -> list[dict[str, Any]]:
        return [r for r in records(gw) if r["original_path"] in ("/ok/record", "/err/record")]

    got = poll("records in the file sink", lambda: len(mine()) == 2 and mine(), 10)
    ok = next(r for r in got if r["api_id"] == "ok")
    assert ok["method"] == "GET" and ok["response_code"] == 200
    assert ok["user_agent"] == "obs-test/1" and ok["api_name"] == "ok"
    assert ok["org_id"] == "default" and ok["listen_path"] == "/ok/"
    assert ok["path"] == "/record"  # as proxied: the listen path stripped, as Tyk records it
    assert ok["api_key"] == "00000000"  # keyless, hashed as Tyk does
    assert ok["tags"] == ["team-a", "key-00000000", "org-default", "api-ok"]
    assert ok["latency"]["total"] >= ok["latency"]["upstream"] >= 0
    assert "pre" in ok["hook_latency"] and ok["request_id"]
    assert ok["timestamp"].endswith("Z") and ok["ip_address"] == HOST
    err = next(r for r in got if r["api_id"] == "err")
    assert err["response_code"] == 500  # the gateway's own errors are recorded too
    assert not [r for r in records(gw) if r["api_id"] == "quiet"]  # do_not_track


def test_a_keyed_request_records_the_hashed_key_and_session(gw: Instance) -> None:
    key = "obs-key-0001"
    session = {"alias": "alice", "tags": ["gold"], "access_rights": {"keys": {"api_id": "keys"}}}
    gw.expect(gw.request("POST", f"/tyk/keys/{key}", {"X-Tyk-Authorization": SECRET},
                         json.dumps(session).encode()), 200)
    gw.expect(gw.get("/keys/mine", {"Authorization": key, "X-Team": "blue"}), 200)
    got = poll("the keyed record", lambda: [r for r in records(gw) if r["api_id"] == "keys"],
               10)[0]
    hashed = hash_key(key, True)
    assert got["api_key"] == hashed and len(hashed) == 8 and key not in json.dumps(got)
    assert got["alias"] == "alice"
    assert got["tags"] == ["gold", "x-team-blue", f"key-{hashed}", "org-default", "api-keys"]


# -- Redis, in Tyk's format --------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_gw(module_coproc_factory: Any, echo_upstream: Any, redis_server: RedisServer
             ) -> Instance:
    settings = analytics_settings("redis")
    settings.update(redis_server.settings())
    settings["analytics_config"]["enable_detailed_recording"] = True
    return module_coproc_factory(apis(echo_upstream.url), {"obs/mw.py": PLUGIN}, settings)


def test_redis_entries_decode_into_tyk_pumps_fields(redis_gw: Instance,
                                                    redis_server: RedisServer) -> None:
    client = redis.Redis(host=HOST, port=redis_server.port)
    key = "analytics-tyk-system-analytics"
    client.delete(key)
    for n in range(3):
        redis_gw.expect(redis_gw.get(f"/ok/pump/{n}"), 200)
    raw = poll("3 records in Redis", lambda: client.llen(key) >= 3 and client.lrange(key, 0, -1),
               10)
    assert 0 < client.ttl(key) <= 60  # storage_expiration_time (Tyk's default, 60 s)
    decoded = [msgpack.unpackb(item, raw=False) for item in raw]
    paths = sorted(d["OriginalPath"] for d in decoded)
    assert paths == ["/ok/pump/0", "/ok/pump/1", "/ok/pump/2"]
    assert sorted(d["Path"] for d in decoded) == ["/pump/0", "/pump/1", "/pump/2"]
    first = decoded[0]
    assert list(first) == PUMP_FIELDS
    assert first["Method"] == "GET" and first["ResponseCode"] == 200
    assert first["APIID"] == "ok" and first["OrgID"] == "default"
    assert first["APIKey"] == "00000000"
    assert isinstance(first["TimeStamp"], list) and len(first["TimeStamp"]) == 2
    assert set(first["Latency"]) == {"Total", "Upstream", "Gateway"}
    assert "api-ok" in first["Tags"]
    # enable_detailed_recording: the request in wire format, base64.
    import base64

    wire = base64.b64decode(first["RawRequest"])
    assert wire.startswith(b"GET /ok/pump/") and b"\r\n\r\n" in wire
    assert b"X-Passed: yes\r\n" in wire  # the request as the pre hook left it
    assert base64.b64decode(first["RawResponse"]).startswith(b"HTTP/1.1 200")
    client.close()


def test_metrics_on_the_gateway_port_need_the_secret(redis_gw: Instance) -> None:
    redis_gw.expect(redis_gw.get("/metrics"), 403)
    samples = scrape(redis_gw.port, headers={"X-Tyk-Authorization": SECRET})
    assert any(name == "coproc_requests_total" for name, _ in samples)


def test_an_unreachable_sink_never_delays_a_request(coproc_factory: Any,
                                                    echo_upstream: Any) -> None:
    """1. The Redis sink points at a port nobody listens on; 2. requests are answered
    as fast as without analytics; 3. the lost records are counted as failed."""
    settings = analytics_settings("redis")
    settings["storage"] = {"type": "memory", "port": free_port(), "timeout_ms": 300}
    gw = coproc_factory(apis(echo_upstream.url), {"obs/mw.py": PLUGIN}, settings)
    admin = {"X-Tyk-Authorization": SECRET}
    for _ in range(20):
        resp = gw.expect(gw.get("/open/fast"), 200)  # a fail_open hook: no 5xx, no worker wait
        assert resp.elapsed < 2.0
    failed = poll("failed records counted",
                  lambda: value(scrape(gw.port, headers=admin), "coproc_analytics_records_total",
                                fate="failed") >= 20, 15)
    assert failed
    assert "record(s) lost: " in gw.logs(tail=1_000_000)  # logged, once per interval
