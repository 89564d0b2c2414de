"""The gateway's metrics: names, labels and the shipped Grafana dashboard agree."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from config.analytics import AnalyticsConfig
from gateway.analytics.observer import Observer
from gateway.analytics.pipeline import Pipeline
from gateway.metrics import GatewayMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "config" / "grafana-dashboard.json"


class NullSink:
    async def write(self, records: list[dict[str, object]]) -> None:
        return None

    async def close(self) -> None:
        return None


def rendered_names() -> set[str]:
    metrics = GatewayMetrics()
    Observer(metrics, Pipeline(AnalyticsConfig(enabled=True), NullSink()), AnalyticsConfig())
    metrics.observe_request("a", 200, 0.01, 0.004)
    metrics.hook_series("a", "pre", "H").observe("ok", 0.001)
    metrics.observe_fail_open("a", "pre", "H")
    text = metrics.render().decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_names_follow_prometheus_conventions() -> None:
    names = rendered_names()
    for name in names:
        assert name.startswith("coproc_"), name
        if "duration" in name:
            assert re.search(r"_seconds(_bucket|_count|_sum)$", name), name
    assert {"coproc_requests_total", "coproc_hook_calls_total", "coproc_hook_fail_open_total",
            "coproc_requests_in_flight", "coproc_analytics_queue_depth",
            "coproc_analytics_records_total"} <= names


def test_the_dashboard_uses_only_metrics_the_gateway_serves() -> None:
    names = rendered_names()
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"]
             for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"coproc_[a-z_]+", e)}
    assert used and used <= names, used - names


def test_serving_state_families_render_their_values() -> None:
    """Unserved APIs by reason, the body arena, storage outages (issue #14 item 4)."""
    from gateway.metrics import serving_families
    metrics = GatewayMetrics()
    errors = [0]
    metrics.add_source(serving_families(
        lambda: {"bundle": 2, "definition": 1, "plugins_disabled": 0},
        lambda: {"size": 1024, "in_use": 256, "bodies": 7, "fallback": 3},
        lambda: errors[0]))
    errors[0] = 5
    text = metrics.render().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("coproc_apis_unserved", (("reason", "bundle"),))] == 2
    assert samples[("coproc_apis_unserved", (("reason", "definition"),))] == 1
    assert samples[("coproc_shm_arena_bytes", (("state", "in_use"),))] == 256
    assert samples[("coproc_shm_bodies_total", (("path", "fallback"),))] == 3
    assert samples[("coproc_storage_errors_total", ())] == 5
