"""The health registry: Tyk's /hello shape, readiness, and what stays out of public view."""

from __future__ import annotations

import json

from gateway.health import HealthRegistry, Phase, Status
from gateway.health_routes import api_checks, show_gateway_processes, worker_check


def _serving() -> HealthRegistry:
    registry = HealthRegistry()
    registry.phase, registry.loaded = Phase.SERVING, True
    return registry


def test_liveness_has_tyks_shape_and_overall_rule() -> None:
    registry = _serving()
    registry.set("storage", Status.PASS, kind="datastore")
    body = registry.liveness()
    assert set(body) == {"status", "version", "description", "details"}
    assert body["status"] == "pass"
    assert set(body["details"]["storage"]) == {"status", "componentType", "time"}
    registry.set("bundle:b", "fail", "bundle unusable")
    assert registry.liveness()["status"] == "warn"  # some failed
    registry.set("storage", Status.FAIL, "storage unreachable", kind="datastore")
    assert registry.liveness()["status"] == "fail"  # all failed
    assert registry.liveness()["details"]["bundle:b"]["output"] == "bundle unusable"
    registry.clear("bundle:b")
    assert "bundle:b" not in registry.liveness()["details"]


def test_readiness_follows_phase_load_and_required_components() -> None:
    registry = HealthRegistry()
    assert registry.readiness()[0] == "Gateway is starting"
    registry.phase = Phase.SERVING
    assert registry.readiness()[0] == "A successful plugin load did not happen"
    registry.loaded = True
    assert registry.readiness()[0] == ""
    registry.set("optional", Status.FAIL, "down")
    assert registry.readiness()[0] == ""
    registry.set("storage", Status.FAIL, "storage unreachable", required=True)
    assert registry.readiness()[0] == "Required component unavailable: storage"
    registry.set("storage", Status.PASS, required=True)
    registry.phase = Phase.STOPPING
    assert registry.readiness()[0] == "Gateway is shutting down"


def test_public_view_keeps_pids_paths_and_tracebacks_out() -> None:
    registry = _serving()
    worker = {"ready": False, "state": "fatal", "pid": 4242,
              "detail": "exited 1 importing /srv/plugins/secret_mw.py",
              "plugins": {"a": {"ok": False, "error": "Traceback ... /srv/plugins/a.py"}}}
    registry.watch("worker", lambda: worker_check(worker))
    registry.watch_group("apis", lambda: api_checks(
        [("b", "bundle b.zip unusable",
          "bundle b.zip: bad signature from https://user:pw@host/b.zip"),
         ("c", "plugins disabled", "plugins disabled")], worker["plugins"]))
    public = json.dumps(registry.liveness())
    for leak in ("4242", "/srv", "Traceback", "https://", "pw@", "signature"):
        assert leak not in public
    details = registry.liveness()["details"]
    assert details["worker"]["output"] == "plugin worker fatal"
    assert details["api:a"]["output"] == "plugin failed to load"
    assert details["api:b"]["output"] == "bundle b.zip unusable"
    assert details["api:c"]["output"] == "plugins disabled"
    # The authenticated view has all of it.
    full = registry.detail()["components"]
    assert full["worker"]["pid"] == 4242 and "Traceback" in full["api:a"]["error"]


def test_time_moves_only_when_the_status_changes() -> None:
    registry = _serving()
    registry.set("x", Status.PASS)
    first = registry.checks()["x"].since
    registry.set("x", Status.PASS, detail={"n": 1})
    assert registry.checks()["x"].since == first


def test_every_gateway_process_is_named_and_only_the_detail_has_pids() -> None:
    registry = HealthRegistry()
    registry.phase = Phase.SERVING
    show_gateway_processes(registry, [{"index": 0, "pid": 41, "state": "running"},
                                      {"index": 1, "state": "fatal"},
                                      {"index": 2, "pid": 43, "state": "restarting"}], 0)
    details = registry.liveness()["details"]
    assert {name: d["status"] for name, d in details.items()} == {
        "gateway:0": "pass", "gateway:1": "fail", "gateway:2": "warn"}
    # Structural, not a substring test: the time stamps hold digits too.
    assert all("pid" not in d for d in details.values())
    assert not [v for d in details.values() for k, v in d.items() if k != "time" and "41" in str(v)]
    zero = registry.detail()["components"]["gateway:0"]
    assert (zero["pid"], zero["answering"], zero["state"]) == (41, True, "running")
    show_gateway_processes(registry, [{"index": 0, "pid": 41, "state": "running"}], 0)
    assert set(registry.liveness()["details"]) == {"gateway:0"}  # a roster that shrank
