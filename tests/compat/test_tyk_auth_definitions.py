"""Tyk API definitions with auth, id extractor and event handler fields load unchanged.

The definitions are shaped like Tyk's own test fixtures (classic format, with
the fields Coproc ignores left in), and each is checked for what the gateway
will do with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from config.apidef import load_api_definitions
from config.gateway import GatewayConfig
from config.reader import ConfigError
from gateway.plan import AuthMode, build_plan


def _tyk_definition(**extra: Any) -> dict[str, Any]:
    definition: dict[str, Any] = {
        "name": "Tyk Test API", "api_id": "1", "org_id": "default",
        "definition": {"location": "header", "key": "version"},
        "auth": {"auth_header_name": "authorization"},
        "use_keyless": False, "enable_coprocess_auth": True,
        "version_data": {"not_versioned": True, "versions": {"v1": {"name": "v1"}}},
        "event_handlers": {"events": {"AuthFailure": [
            {"handler_name": "cp_dynamic_handler", "handler_meta": {"name": "my_handler"}}]}},
        "custom_middleware": {"driver": "python",
                              "pre": [{"name": "MyPreMiddleware", "require_session": False}],
                              "auth_check": {"name": "MyAuthCheck"}},
        "proxy": {"listen_path": "/v1", "target_url": "http://127.0.0.1:9/",
                  "strip_listen_path": False},
    }
    definition.update(extra)
    return definition


def _load(tmp_path: Path, definition: dict[str, Any]) -> Any:
    apps = tmp_path / "apps"
    apps.mkdir(exist_ok=True)
    (apps / "api.json").write_text(json.dumps(definition))
    cfg = GatewayConfig(path=tmp_path / "coproc.json", app_path=apps, middleware_path=tmp_path)
    return load_api_definitions(cfg)[0]


def test_tyk_coprocess_auth_definition(tmp_path: Path) -> None:
    api = _load(tmp_path, _tyk_definition())
    plan = build_plan(api)
    assert plan.auth is AuthMode.PLUGIN and plan.auth_hook is not None
    assert api.token_auth.header == api.auth_header_name == "authorization"
    assert api.event_handlers == {"AuthFailure": [
        {"handler_name": "cp_dynamic_handler", "handler_meta": {"name": "my_handler"}}]}


def test_id_extractor_definition(tmp_path: Path) -> None:
    mw = _tyk_definition()["custom_middleware"]
    mw["id_extractor"] = {"extract_from": "header", "extract_with": "regex",
                          "extractor_config": {"header_name": "Authorization",
                                               "regex_expression": "[0-9]+",
                                               "regex_match_index": 0}}
    plan = build_plan(_load(tmp_path, _tyk_definition(custom_middleware=mw)))
    assert plan.id_extractor is not None and plan.id_extractor.method == "regex"


@pytest.mark.parametrize(("extractor", "field"), [
    ({"extract_from": "body", "extract_with": "value"}, "extract_with"),
    ({"extract_from": "header", "extract_with": "value"}, "header_name"),
    ({"extract_from": "header", "extract_with": "regex",
      "extractor_config": {"header_name": "A", "regex_expression": "("}}, "regex_expression"),
    ({"extract_from": "cookie", "extract_with": "value"}, "extract_from"),
])
def test_unusable_id_extractor_is_refused_at_load(tmp_path: Path, extractor: Any,
                                                  field: str) -> None:
    mw = _tyk_definition()["custom_middleware"]
    mw["id_extractor"] = extractor
    with pytest.raises(ConfigError, match=field) as info:
        _load(tmp_path, _tyk_definition(custom_middleware=mw))
    assert "api.json" in str(info.value) and "Fix:" in str(info.value)


def test_empty_id_extractor_of_exported_definitions_is_off(tmp_path: Path) -> None:
    mw = _tyk_definition()["custom_middleware"]
    mw["id_extractor"] = {"extract_from": "", "extract_with": "", "extractor_config": {}}
    assert build_plan(_load(tmp_path, _tyk_definition(custom_middleware=mw))).id_extractor \
        is None


def test_standard_auth_with_plugin_and_base_identity(tmp_path: Path) -> None:
    plan = build_plan(_load(tmp_path, _tyk_definition(
        use_standard_auth=True, base_identity_provided_by="auth_token")))
    assert plan.auth is AuthMode.BOTH and plan.base_identity == "auth_token"


def test_protected_api_without_plugin_uses_key_auth(tmp_path: Path) -> None:
    plan = build_plan(_load(tmp_path, _tyk_definition(enable_coprocess_auth=False)))
    assert plan.auth is AuthMode.BUILTIN and plan.auth_hook is None


def test_plugins_disabled_closes_the_api_instead_of_key_auth(tmp_path: Path) -> None:
    """enable_coprocess false: a plugin-protected API answers 503, never key auth."""
    plan = build_plan(_load(tmp_path, _tyk_definition()), coprocess=False)
    assert plan.broken and plan.broken_status == 503
    assert plan.auth is not AuthMode.BUILTIN and plan.auth_hook is None


def test_unknown_event_handler_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="handler_name"):
        _load(tmp_path, _tyk_definition(event_handlers={"events": {"AuthFailure": [
            {"handler_name": "eh_nope", "handler_meta": {}}]}}))
