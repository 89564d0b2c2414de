"""Issue 13 item 7: Tyk settings Coproc does not apply are said, not ignored.

1. A tyk.conf field and API definition fields Coproc knows but does not apply:
   one warning line per field at start, naming the files;
2. an API whose hooks need a driver Coproc cannot run is refused with a clear
   error, never run as Python;
3. a Tyk OAS definition is recognised and refused, saying classic
   definitions are supported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from integration.harness import api_def, hook

from config.apidef import load_api_definitions
from config.gateway import GatewayConfig
from config.reader import ConfigError
from config.tyk_support import UNAPPLIED_API, UNAPPLIED_GATEWAY, UNSUPPORTED_DRIVERS

PLUGIN = "from tyk.decorators import *\n\n@Hook\ndef Pre(request, session, spec):\n" \
         "    raise RuntimeError('a JavaScript hook must never run as Python')\n"


def test_one_warning_line_per_unapplied_field(coproc_factory: Any, echo_upstream: Any) -> None:
    """1. tyk.conf sets health_check.enable_health_checks; two APIs set enable_jwt and one
       CORS.enable; exported defaults (CORS.enable false, not_versioned true) are set too.
    2. The log has one line per field, naming the files; the APIs still serve."""
    apis = {name: api_def(name, f"/{name}/", echo_upstream.url, enable_jwt=True,
                          CORS={"enable": name == "one"}) for name in ("one", "two")}
    gw = coproc_factory(apis, {}, {"health_check": {"enable_health_checks": True}})
    gw.expect(gw.get("/one/"), 200)
    lines = gw.logs().splitlines()
    jwt = [line for line in lines if "field enable_jwt is set" in line]
    assert len(jwt) == 1 and "one.json, two.json" in jwt[0], gw.logs()
    cors = [line for line in lines if "CORS.enable" in line]
    assert len(cors) == 1 and "one.json" in cors[0] and "two.json" not in cors[0]
    health = [line for line in lines if "health_check.enable_health_checks is set" in line]
    assert len(health) == 1 and "coproc.json" in health[0]
    assert not any("not_versioned" in line for line in lines)


def _load(tmp_path: Path, definition: dict[str, Any]) -> Any:
    apps = tmp_path / "apps"
    apps.mkdir(exist_ok=True)
    (apps / "api.json").write_text(json.dumps(definition))
    (tmp_path / "mw.py").write_text(PLUGIN)
    cfg = GatewayConfig(path=tmp_path / "coproc.json", app_path=apps, middleware_path=tmp_path)
    return load_api_definitions(cfg)


@pytest.mark.parametrize("driver", sorted(UNSUPPORTED_DRIVERS))
def test_an_api_whose_driver_coproc_cannot_run_is_refused(tmp_path: Path, driver: str) -> None:
    definition = api_def("js", "/js/", "http://127.0.0.1:9/", pre=[hook("Pre", "mw.py")])
    definition["custom_middleware"]["driver"] = driver
    with pytest.raises(ConfigError, match=r"custom_middleware\.driver.*never runs them as "
                                          r"Python") as info:
        _load(tmp_path, definition)
    assert "api.json" in str(info.value) and UNSUPPORTED_DRIVERS[driver] in str(info.value)


def test_a_driver_without_hooks_is_harmless(tmp_path: Path) -> None:
    definition = api_def("js", "/js/", "http://127.0.0.1:9/")
    definition["custom_middleware"]["driver"] = "otto"
    assert _load(tmp_path, definition)[0].api_id == "js"


@pytest.mark.parametrize("marker", [{"x-tyk-api-gateway": {"info": {"name": "oas"}}},
                                    {"openapi": "3.0.3"}, {"is_oas": True}])
def test_a_tyk_oas_definition_is_refused(tmp_path: Path, marker: dict[str, Any]) -> None:
    definition = {**api_def("oas", "/oas/", "http://127.0.0.1:9/"), **marker}
    with pytest.raises(ConfigError, match="Tyk OAS API definition; Coproc supports Tyk "
                                          "classic API definitions only"):
        _load(tmp_path, definition)


def test_the_lists_name_real_paths() -> None:
    paths = [e.path for e in (*UNAPPLIED_GATEWAY, *UNAPPLIED_API)]
    assert len(paths) == len(set(paths)) and all(p and " " not in p for p in paths)
