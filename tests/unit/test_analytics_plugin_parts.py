"""Analytics plugins in one process: the definition fields, the worker's batch runner,
the gateway's transform (retry on a lost worker, back-pressure), the worker metrics."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from unit.test_analytics import SPEC, ListSink, exchange, until

from config import ConfigError
from config.analytics import AnalyticsConfig
from config.apidef import APIDefinition, load_api_definition
from config.gateway import load_gateway_config
from gateway.analytics.pipeline import Pipeline
from gateway.analytics.plugins import PluginTransform
from gateway.hook_errors import HookTimeout, WorkerLost
from gateway.metrics import WorkerWatch, exit_class
from worker.analytics import load_analytics, run_batch

PLUGIN = """
def tag(record):
    record["tags"].append("seen")

async def later(record):
    return record
"""


def _api(tmp_path: Path, **extra: Any) -> APIDefinition:
    (tmp_path / "coproc.json").write_text(json.dumps({"coproc": {"run_dir": "run"}}))
    (tmp_path / "ana.py").write_text(PLUGIN)
    definition = {"name": "a", "api_id": "a", "org_id": "o", "active": True,
                  "use_keyless": True,
                  "proxy": {"listen_path": "/a/", "target_url": "http://127.0.0.1:1"},
                  **extra}
    (tmp_path / "a.json").write_text(json.dumps(definition))
    return load_api_definition(tmp_path / "a.json", load_gateway_config(tmp_path / "coproc.json"))


def test_analytics_plugin_is_read_with_tyks_names(tmp_path: Path) -> None:
    api = _api(tmp_path, analytics_plugin={"enable": True, "plugin_path": "ana.py",
                                           "func_name": "tag"})
    assert api.analytics_plugin is not None
    assert api.analytics_plugin.path == str((tmp_path / "ana.py").resolve())
    assert api.analytics_plugin.func_name == "tag"
    assert _api(tmp_path, analytics_plugin={"enable": False, "plugin_path": "x.so",
                                            "func_name": "F"}).analytics_plugin is None


@pytest.mark.parametrize(("plugin", "field", "says"), [
    ({"plugin_path": "ana.so", "func_name": "tag"}, "analytics_plugin.plugin_path", ".py"),
    ({"plugin_path": "missing.py", "func_name": "tag"}, "analytics_plugin.plugin_path",
     "no such file"),
    ({"plugin_path": "ana.py", "func_name": "not a name"}, "analytics_plugin.func_name",
     "not a Python function name"),
])
def test_a_bad_analytics_plugin_names_the_field(tmp_path: Path, plugin: dict[str, Any],
                                                field: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        _api(tmp_path, analytics_plugin={"enable": True, **plugin})
    assert field in str(err.value) and says in str(err.value)


def test_load_refuses_async_functions_and_keeps_the_others(tmp_path: Path) -> None:
    good = _api(tmp_path, analytics_plugin={"enable": True, "plugin_path": "ana.py",
                                            "func_name": "tag"})
    bad = _api(tmp_path, api_id="b", analytics_plugin={"enable": True, "plugin_path": "ana.py",
                                                       "func_name": "later"})
    funcs = load_analytics([good, bad])
    assert set(funcs) == {"a"}  # `later` is async def: logged, not loaded


def test_run_batch_changes_drops_and_counts_failures() -> None:
    def plugin(record: dict[str, Any]) -> Any:
        kind = record["path"]
        if kind == "/drop":
            return False
        if kind == "/new":
            return {**record, "alias": "new"}
        if kind == "/raise":
            record["tags"].append("half-done")
            raise RuntimeError("boom")
        if kind == "/bad":
            return 42
        record["tags"].append("seen")
        return None

    records = [{"api_id": "a", "path": p, "tags": []}
               for p in ("/keep", "/drop", "/new", "/raise", "/bad")]
    records.append({"api_id": "other", "path": "/x", "tags": []})
    kept, failed = run_batch({"a": plugin}, records)
    assert failed == 2
    assert [r["path"] for r in kept] == ["/keep", "/new", "/raise", "/bad", "/x"]
    assert kept[0]["tags"] == ["seen"] and kept[1]["alias"] == "new"
    assert kept[2]["tags"] == []  # a failing plugin's half-made change is not kept
    assert kept[4] == {"api_id": "other", "path": "/x", "tags": []}


class FakeCaller:
    """The hook client's `analytics`: scripted outcomes, then the plugin's answer."""

    def __init__(self, outcomes: list[BaseException | None], delay_s: float = 0.0) -> None:
        self.outcomes = outcomes
        self.delay_s = delay_s
        self.sent: list[list[dict[str, Any]]] = []

    async def analytics(self, records: list[dict[str, Any]], timeout_s: float
                        ) -> tuple[list[dict[str, Any]], int]:
        self.sent.append(records)
        await asyncio.sleep(self.delay_s)
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome
        return [dict(r, alias="plugin") for r in records if r["path"] != "/drop"], 0


async def test_a_lost_worker_keeps_the_batch_for_the_next() -> None:
    caller = FakeCaller([WorkerLost("worker generation 1 exited: killed (SIGKILL)")])
    transform = PluginTransform(lambda: caller, lambda: {"a"})
    records = [{"api_id": "a", "path": "/x"}, {"api_id": "a", "path": "/drop"},
               {"api_id": "b", "path": "/y"}]
    got = await transform(records)
    assert len(caller.sent) == 2 and caller.sent[0] == caller.sent[1]  # sent again, whole
    assert caller.sent[0] == records[:2]  # only the APIs with a plugin go to the worker
    assert sorted(r["path"] for r in got) == ["/x", "/y"]
    assert next(r for r in got if r["path"] == "/x")["alias"] == "plugin"
    assert transform.stats() == {"batches": 1, "retries": 1, "failures": 0, "timeouts": 0}


async def test_an_unanswered_batch_is_stored_unchanged_and_counted() -> None:
    caller = FakeCaller([HookTimeout("analytics batch unanswered after 30 s")])
    transform = PluginTransform(lambda: caller, lambda: {"a"})
    records = [{"api_id": "a", "path": "/x"}, {"api_id": "a", "path": "/drop"}]
    assert await transform(records) == records
    assert transform.stats()["failures"] == 2 and transform.stats()["timeouts"] == 1


async def test_no_plugin_no_round_trip() -> None:
    caller = FakeCaller([])
    transform = PluginTransform(lambda: caller, lambda: ())
    records = [{"api_id": "a", "path": "/x"}]
    assert await transform(records) is records and not caller.sent


async def test_a_slow_plugin_drops_only_when_the_queue_is_full() -> None:
    """1. A plugin that takes 50 ms per batch; submissions below the queue's bound
    are all written, none dropped; 2. a burst beyond the bound drops the excess only."""
    caller = FakeCaller([], delay_s=0.05)
    transform = PluginTransform(lambda: caller, lambda: {"api-1"})
    sink = ListSink()
    cfg = AnalyticsConfig(enabled=True, pool_size=2, records_buffer_size=20,
                          flush_interval_ms=10)
    pipeline = Pipeline(cfg, sink, transform)
    task = asyncio.create_task(pipeline.run())
    try:
        for _ in range(20):
            pipeline.submit(SPEC, exchange(), 2_000_000_000)
        await until(lambda: pipeline.written == 20)
        assert pipeline.dropped == 0
        for _ in range(200):  # far faster than 50 ms per batch drains
            pipeline.submit(SPEC, exchange(), 2_000_000_000)
        assert pipeline.dropped > 0
        assert pipeline.submitted + pipeline.dropped == 220
        await until(lambda: not pipeline.depth)
    finally:
        task.cancel()
        await pipeline.close()
    assert pipeline.written == pipeline.submitted  # everything queued was written
    assert all(r["alias"] == "plugin" for batch in sink.batches for r in batch)


def test_exit_reasons_become_bounded_labels() -> None:
    assert exit_class("exited 0") == "clean"
    assert exit_class("exited 4 (plugins failed)") == "error"
    assert exit_class("killed (SIGKILL): the kernel's OOM killer, or kill -9") == "signal"
    assert exit_class("killed (SIGABRT, by the supervisor: hung)") == "killed_by_supervisor"
    assert exit_class("exited 137: oom (the memory limit of its cgroup was exceeded)") == "oom"


def test_worker_counters_add_up_over_generations() -> None:
    now = [100.0]
    watch = WorkerWatch(clock=lambda: now[0])
    watch.heartbeat(1, {"generation": 1, "rss": 1000, "calls": {"calls": 5, "inflight": 2}})
    watch.heartbeat(1, {"generation": 1, "rss": 1100, "calls": {"calls": 7, "inflight": 1}})
    watch.exited("killed (SIGKILL)")
    watch.state("restarting", 1)
    watch.heartbeat(2, {"generation": 2, "rss": 900, "calls": {"calls": 3}})
    now[0] = 101.5
    assert watch.totals()["calls"] == 10  # 7 from generation 1, 3 from generation 2
    families = {f.name: f for f in watch.families()}
    assert families["coproc_worker_rss_bytes"].samples[0].value == 900
    assert families["coproc_worker_generation"].samples[0].value == 2
    assert families["coproc_worker_heartbeat_age_seconds"].samples[0].value == 1.5
    assert families["coproc_worker_fatal"].samples[0].value == 0
    exits = {s.labels["reason"]: s.value for s in families["coproc_worker_exits"].samples}
    assert exits == {"signal": 1}
    watch.state("fatal", 2)
    assert {f.name: f for f in watch.families()}["coproc_worker_fatal"].samples[0].value == 1
    for generation in range(3, 9):  # old generations fold into the base: still counted
        watch.heartbeat(generation, {"generation": generation, "calls": {"calls": 1}})
    assert watch.totals()["calls"] == 16


def test_a_manifests_traffic_logs_names_the_bundles_function(tmp_path: Path) -> None:
    from config.apidef import _traffic_logs
    from config.reader import Reader

    (tmp_path / "middleware.py").write_text(PLUGIN)
    manifest = tmp_path / "manifest.json"

    def read(traffic_logs: dict[str, Any]) -> Any:
        return _traffic_logs(Reader({"custom_middleware": {"traffic_logs": traffic_logs}},
                                    manifest), tmp_path)

    got = read({"name": "tag", "path": ""})
    assert got is not None and got.func_name == "tag"
    assert got.path == str((tmp_path / "middleware.py").resolve())
    assert read({"name": "tag", "disabled": True}) is None
    assert read({"name": ""}) is None  # Tyk: no name, no plugin
    with pytest.raises(ConfigError) as err:
        read({"name": "tag", "path": "../outside.py"})
    assert "custom_middleware.traffic_logs.path" in str(err.value)
