"""Analytics plugins in the worker, and the worker's and supervisor's metrics, end to end.

1. An API with `analytics_plugin` (a .py file) that tags records and drops
   those of /drop/ paths: the file sink shows the tags and not the dropped
   ones; a record of an API without the plugin passes as it is.
2. The same plugin in Redis (Tyk's format): the entries decode into Tyk
   Pump's fields, with the plugin's tag.
3. A plugin that raises: records are stored unchanged and the failures counted.
4. A worker killed with SIGKILL, then `coproc reload`: /metrics counts the
   exits by reason, the generation moves, heartbeats and RSS are there, and
   the records sent meanwhile are all written (none lost to the restart).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import msgpack
import redis
from integration.harness import HOST, Instance, RedisServer, api_def, coproc_command, poll
from integration.test_observability import analytics_settings, scrape, value
from unit.test_analytics import PUMP_FIELDS

ANALYTICS = textwrap.dedent('''
    import time

    def tag(record):
        if record["path"].startswith("/drop"):
            return False  # Coproc's drop marker
        record["tags"].append("plugin-seen")
        record["alias"] = "from-plugin"
        time.sleep(SLEEP)


    def broken(record):
        raise ValueError("this analytics plugin fails")
''').lstrip()


def plugin_source(sleep_s: float = 0.0) -> str:
    return ANALYTICS.replace("SLEEP", repr(sleep_s))


def apis(echo_url: str) -> dict[str, dict[str, Any]]:
    return {
        "tagged": api_def("tagged", "/tagged/", echo_url, analytics_plugin={
            "enable": True, "plugin_path": "ana/analytics.py", "func_name": "tag"}),
        "plain": api_def("plain", "/plain/", echo_url),
        "broken": api_def("broken", "/broken/", echo_url, analytics_plugin={
            "enable": True, "plugin_path": "ana/analytics.py", "func_name": "broken"}),
    }


def records(gw: Instance) -> list[dict[str, Any]]:
    path: Path = gw.run_dir / "analytics.jsonl"
    try:
        return [json.loads(line) for line in path.read_text().splitlines()]
    except FileNotFoundError:
        return []


ADMIN = {"X-Tyk-Authorization": "observe-secret"}


def test_a_plugin_tags_and_drops_records_in_the_file_sink(coproc_factory: Any,
                                                          echo_upstream: Any) -> None:
    settings = analytics_settings("file")
    gw = coproc_factory(apis(echo_upstream.url), {"ana/analytics.py": plugin_source()},
                        settings)
    for n in range(3):
        gw.expect(gw.get(f"/tagged/keep/{n}"), 200)
        gw.expect(gw.get(f"/tagged/drop/{n}"), 200)
    gw.expect(gw.get("/plain/as-is"), 200)
    gw.expect(gw.get("/broken/b"), 200)

    def settled() -> list[dict[str, Any]] | None:
        got = records(gw)
        return got if len(got) >= 5 else None

    got = poll("records after the plugin", settled, 15)
    tagged = sorted((r for r in got if r["api_id"] == "tagged"), key=lambda r: r["path"])
    assert [r["path"] for r in tagged] == ["/keep/0", "/keep/1", "/keep/2"]  # drops gone
    for r in tagged:
        assert r["tags"] == ["plugin-seen", "key-00000000", "org-default", "api-tagged"]
        assert r["alias"] == "from-plugin"
    plain = next(r for r in got if r["api_id"] == "plain")
    assert "plugin-seen" not in plain["tags"] and plain["alias"] == ""
    broken = next(r for r in got if r["api_id"] == "broken")  # stored as it came
    assert broken["path"] == "/b" and "plugin-seen" not in broken["tags"]
    samples = scrape(gw.port, headers=ADMIN)
    assert value(samples, "coproc_analytics_records_total", fate="filtered") == 3
    assert value(samples, "coproc_analytics_records_total", fate="dropped") == 0
    poll("the worker's analytics counters in a heartbeat",
         lambda: value(scrape(gw.port, headers=ADMIN), "coproc_worker_events_total",
                       event="analytics_failures") == 1, 10)
    after = scrape(gw.port, headers=ADMIN)
    assert value(after, "coproc_worker_events_total", event="analytics_dropped") == 3
    assert value(after, "coproc_analytics_plugin_events_total", event="failures") == 1


def test_redis_entries_after_the_plugin_decode_into_pump_fields(
        coproc_factory: Any, echo_upstream: Any, redis_server: RedisServer) -> None:
    settings = analytics_settings("redis")
    settings.update(redis_server.settings())
    gw = coproc_factory(apis(echo_upstream.url), {"ana/analytics.py": plugin_source()},
                        settings)
    client = redis.Redis(host=HOST, port=redis_server.port)
    key = "analytics-tyk-system-analytics"
    client.delete(key)
    gw.expect(gw.get("/tagged/keep/r"), 200)
    gw.expect(gw.get("/tagged/drop/r"), 200)
    raw = poll("the record in Redis", lambda: client.llen(key) >= 1 and client.lrange(key, 0, -1),
               15)
    decoded = [msgpack.unpackb(item, raw=False) for item in raw]
    assert len(decoded) == 1
    first = decoded[0]
    assert list(first) == PUMP_FIELDS
    assert first["Path"] == "/keep/r" and first["Alias"] == "from-plugin"
    assert first["Tags"][0] == "plugin-seen" and "api-tagged" in first["Tags"]
    client.close()


def test_worker_kills_and_reloads_move_the_metrics_and_lose_no_record(
        coproc_factory: Any, echo_upstream: Any) -> None:
    """1. Records whose plugin takes 0.3 s each are queued; 2. the worker is killed
    with SIGKILL while it holds a batch; 3. a reload replaces the next generation;
    4. /metrics counts a `signal` and a `clean` exit, the generation is 3, and every
    record sent was written (the batch the killed worker held went to the next)."""
    settings = analytics_settings("file")
    gw = coproc_factory(apis(echo_upstream.url), {"ana/analytics.py": plugin_source(0.3)},
                        settings)
    first = gw.worker()
    poll("a heartbeat in /metrics",
         lambda: value(scrape(gw.port, headers=ADMIN), "coproc_worker_rss_bytes") > 0, 10)
    before = scrape(gw.port, headers=ADMIN)
    assert value(before, "coproc_worker_generation") == first["generation"]
    assert 0 <= value(before, "coproc_worker_heartbeat_age_seconds") < 5
    for n in range(6):
        gw.expect(gw.get(f"/tagged/keep/{n}"), 200)
    # The plugin holds the batch for a while: kill the worker while it does.
    poll("the batch at the worker",
         lambda: value(scrape(gw.port, headers=ADMIN), "coproc_analytics_queue_depth") == 0
         and not records(gw), 5)
    os.kill(first["pid"], signal.SIGKILL)
    second = poll("the next generation",
                  lambda: ((w := gw.worker()).get("generation") or 0) > first["generation"] and w,
                  20)
    done = subprocess.run([*coproc_command(), "reload", "--config", str(gw.config_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    poll("the reloaded generation",
         lambda: (gw.worker().get("generation") or 0) > second["generation"], 20)

    def all_written() -> list[dict[str, Any]] | None:
        got = [r for r in records(gw) if r["api_id"] == "tagged"]
        return got if len(got) >= 6 else None

    got = poll("every record written", all_written, 40)
    assert sorted(r["path"] for r in got) == [f"/keep/{n}" for n in range(6)]
    assert all("plugin-seen" in r["tags"] for r in got)  # all through the plugin
    def exits_counted() -> dict[Any, float] | None:
        samples = scrape(gw.port, headers=ADMIN)
        return samples if value(samples, "coproc_worker_exits_total", reason="clean") else None

    after = poll("the exits counted", exits_counted, 20)
    assert value(after, "coproc_worker_exits_total", reason="signal") == 1
    assert value(after, "coproc_worker_generation") >= first["generation"] + 2
    assert value(after, "coproc_worker_fatal") == 0
    assert value(after, "coproc_analytics_plugin_events_total", event="retries") >= 1
    assert value(after, "coproc_analytics_records_total", fate="failed") == 0
