"""Issue 13 item 6, the parts: one loader returning good and broken definitions, the
reload rule (never break what serves), the supervisor's view, health and status."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from integration.harness import api_def

from config.apidef import DefinitionSet, load_api_definitions, load_definition_set
from config.gateway import GatewayConfig, load_gateway_config
from config.reader import ConfigError
from gateway.health import HealthRegistry
from gateway.health_routes import BrokenDefinitions, watch_definitions
from supervisor import cli, ctl
from supervisor.definitions import ServedDefinitions

UPSTREAM = "http://127.0.0.1:9/"


def _config(tmp_path: Path, **options: Any) -> GatewayConfig:
    (tmp_path / "apps").mkdir(exist_ok=True)
    return GatewayConfig(path=tmp_path / "coproc.json", app_path=tmp_path / "apps",
                         middleware_path=tmp_path, **options)


def _write(cfg: GatewayConfig, name: str, definition: dict[str, Any] | str) -> Path:
    path = cfg.app_path / f"{name}.json"
    path.write_text(definition if isinstance(definition, str) else json.dumps(definition))
    return path


def _good(api_id: str, listen_path: str = "") -> dict[str, Any]:
    return api_def(api_id, listen_path or f"/{api_id}/", UPSTREAM)


def test_broken_files_are_left_out_and_named(tmp_path: Path) -> None:
    """1. Two good files, one with a bad field, one that is not JSON.
    2. The good ones load; each broken one is listed with its file, api_id (when the
       file says), the error naming file and field, and its health component.
    3. The public reason has the file's base name and field, never a path.
    """
    cfg = _config(tmp_path)
    _write(cfg, "a", _good("a"))
    bad = _write(cfg, "b", _good("b", "no-slash"))
    _write(cfg, "c", _good("c"))
    junk = _write(cfg, "d", "{ not json")
    loaded = load_definition_set(cfg)
    assert [api.api_id for api in loaded.apis] == ["a", "c"]
    by_file = {b.file: b for b in loaded.broken}
    assert set(by_file) == {bad, junk}
    assert by_file[bad].api_id == "b" and by_file[bad].component == "api:b"
    assert by_file[bad].error.field == "proxy.listen_path"
    assert str(bad) in str(by_file[bad].error) and "Fix:" in str(by_file[bad].error)
    assert by_file[junk].api_id == "" and by_file[junk].component == "apidef:d.json"
    assert "invalid JSON" in str(by_file[junk].error)
    assert by_file[bad].reason == "definition b.json not served: field 'proxy.listen_path' invalid"
    assert "/" not in by_file[junk].reason.replace("b.json", "")
    assert by_file[bad].summary()["file"] == str(bad)


def test_strict_raises_the_first_error(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    _write(cfg, "a", _good("a"))
    _write(cfg, "b", _good("b", "no-slash"))
    with pytest.raises(ConfigError, match=r"b\.json.*proxy\.listen_path"):
        load_api_definitions(cfg)
    with pytest.raises(ConfigError, match=r"b\.json"):
        load_definition_set(cfg).strict()


def test_an_unusable_app_path_still_fails(tmp_path: Path) -> None:
    cfg = GatewayConfig(path=tmp_path / "coproc.json", app_path=tmp_path / "missing")
    with pytest.raises(ConfigError, match="app_path"):
        load_definition_set(cfg)


@pytest.mark.parametrize(("second", "field"), [
    (_good("a", "/other/"), "api_id"),  # the same api_id
    (_good("z", "/a/"), "proxy.listen_path"),  # the same listen path
])
def test_of_two_clashing_apis_the_first_file_is_served(tmp_path: Path, second: dict[str, Any],
                                                        field: str) -> None:
    """Tyk renames a clashing listen path; Coproc serves the first file by name and
    names the later one (never an API at a path nobody wrote)."""
    cfg = _config(tmp_path)
    first = _write(cfg, "1-first", _good("a"))
    later = _write(cfg, "2-later", second)
    loaded = load_definition_set(cfg)
    assert [api.source for api in loaded.apis] == [first]
    [broken] = loaded.broken
    assert broken.file == later and broken.error.field == field
    assert broken.component == "apidef:2-later.json"  # api:a serves: not that one
    assert str(first) in str(broken.error)


def test_inactive_apis_do_not_clash(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    _write(cfg, "a", _good("a"))
    _write(cfg, "b", {**_good("b", "/a/"), "active": False})
    assert not load_definition_set(cfg).broken


def test_overrides_replace_or_add_a_file(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    path = _write(cfg, "a", _good("a"))
    loaded = load_definition_set(cfg, {path: _good("a", "/moved/"),
                                       cfg.app_path / "n.json": _good("n")})
    assert {api.api_id: api.proxy.listen_path for api in loaded.apis} == {
        "a": "/moved/", "n": "/n/"}


def _changed(cfg: GatewayConfig, change: dict[str, dict[str, Any] | str | None]) -> list[str]:
    """The files whose serving API the change would break (None deletes a file)."""
    serving = load_definition_set(cfg)
    for name, content in change.items():
        if content is None:
            (cfg.app_path / f"{name}.json").unlink()
        else:
            _write(cfg, name, content)
    return [b.file.name for b in load_definition_set(cfg).breaks(serving)]


@pytest.mark.parametrize(("change", "broken"), [
    ({"b": _good("b", "no-slash")}, ["b.json"]),  # a serving API edited into an error
    ({"b": "{"}, ["b.json"]),  # ... into invalid JSON
    ({"0": _good("zero", "/b/")}, ["b.json"]),  # an earlier file takes its listen path
    ({"b": None}, []),  # deleted: a removal, not breakage
    ({"b": {**_good("b"), "active": False}}, []),  # switched off on purpose
    ({"b": _good("renamed")}, []),  # its api_id changed: a removal and an addition
    ({"z": _good("z", "no-slash")}, []),  # a new broken file breaks nothing serving
    ({"z": _good("z", "/b/")}, []),  # a later file clashing: it is the one left out
    ({"x": _good("x")}, []),  # the broken one fixed
])
def test_breaks_names_only_serving_apis_that_would_stop(
        tmp_path: Path, change: dict[str, Any], broken: list[str]) -> None:
    cfg = _config(tmp_path)
    for name in ("a", "b"):
        _write(cfg, name, _good(name))
    _write(cfg, "x", _good("x", "already-broken"))
    assert _changed(cfg, change) == broken


def test_served_definitions_check_and_settle(tmp_path: Path) -> None:
    """1. One broken file at start: status lists it; a reload may go ahead.
    2. A serving API edited into an error: the reload is refused naming file and field;
       the current set is unchanged.
    3. The broken one fixed: allowed; status changes only once the reload succeeded.
    4. strict_definitions: any broken file refuses the reload.
    """
    cfg = _config(tmp_path)
    _write(cfg, "a", _good("a"))
    _write(cfg, "b", _good("b", "no-slash"))
    served = ServedDefinitions(cfg)
    status = served.status()
    assert status["served"] == 1 and [b["component"] for b in status["broken"]] == ["api:b"]
    assert served.check() == ""
    served.settle(ok=True)

    _write(cfg, "a", _good("a", "oops"))
    refused = served.check()
    assert "a.json" in refused and "proxy.listen_path" in refused and "serving now" in refused
    _write(cfg, "a", _good("a"))

    _write(cfg, "b", _good("b"))
    assert served.check() == ""
    assert served.status()["broken"]  # not yet: the reload has not finished
    served.settle(ok=False)
    assert served.status()["broken"]
    assert served.check() == ""
    served.settle(ok=True)
    assert served.status() == {"served": 2, "broken": [], "strict": False}

    strict = ServedDefinitions(dataclasses.replace(cfg, strict_definitions=True))
    _write(cfg, "new", _good("new", "bad"))
    assert "strict_definitions" in strict.check()


def test_health_names_each_broken_definition(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    _write(cfg, "a", _good("a"))
    _write(cfg, "b", _good("b", "no-slash"))
    _write(cfg, "c", "[]")
    registry = HealthRegistry()
    holder = BrokenDefinitions(load_definition_set(cfg).broken)
    watch_definitions(registry, holder)
    details = registry.liveness()["details"]
    assert details["api:b"]["status"] == "fail"
    assert details["api:b"]["output"] == "definition b.json not served: field " \
                                         "'proxy.listen_path' invalid"
    assert details["apidef:c.json"]["status"] == "fail"
    assert str(tmp_path) not in json.dumps(registry.liveness())  # no path in public
    full = registry.detail()["components"]["api:b"]
    assert str(cfg.app_path / "b.json") in full["error"] and "Fix:" in full["error"]
    holder.replace(())
    assert "api:b" not in registry.liveness()["details"]


def test_status_lists_broken_definitions() -> None:
    text = ctl.format_status({"definitions": {"served": 1, "strict": False, "broken": [
        {"file": "/x/b.json", "api_id": "b", "component": "api:b",
         "error": "/x/b.json: field 'proxy.listen_path': must start with '/'"}]}})
    assert "API definition api:b not served: /x/b.json: field 'proxy.listen_path'" in text


def test_strict_switch_in_the_config(tmp_path: Path) -> None:
    config = tmp_path / "coproc.json"
    config.write_text(json.dumps({"coproc": {"strict_definitions": True}}))
    assert load_gateway_config(config).strict_definitions is True
    config.write_text(json.dumps({"coproc": {"strict_definitions": "yes"}}))
    with pytest.raises(ConfigError, match=r"coproc\.strict_definitions"):
        load_gateway_config(config)


@pytest.mark.parametrize("how", ["flag", "config"])
def test_strict_serve_exits_78_naming_file_and_field(tmp_path: Path, how: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path)
    _write(cfg, "good", _good("good"))
    _write(cfg, "bad", _good("bad", "no-slash"))
    config = tmp_path / "coproc.json"
    config.write_text(json.dumps({"app_path": "apps", "coproc": {
        "run_dir": str(tmp_path / "run"), "strict_definitions": how == "config"}}))
    argv = ["serve", "--config", str(config)] + (["--strict"] if how == "flag" else [])
    assert cli.main(argv) == 78
    err = capsys.readouterr().err
    assert "bad.json" in err and "proxy.listen_path" in err and "Fix:" in err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_an_empty_set_is_a_set() -> None:
    assert DefinitionSet(()).strict() == []
