"""Where a definition's hook files come from: `path`s written for Tyk's install
directory ("./middleware/x.js"), and Tyk's per-API JS folders
middleware_path/<api_id>/{pre,auth,post_auth,post}/*.js."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from integration.harness import api_def, hook

from config.apidef import APIDefinition, load_api_definition
from config.gateway import GatewayConfig
from config.reader import ConfigError

UPSTREAM = "http://127.0.0.1:9/"
JS = "var x = 1;\n"


def _tyk_layout(root: Path) -> GatewayConfig:
    """Tyk's install layout: tyk.conf, apps/ and middleware/ side by side."""
    for folder in ("apps", "middleware"):
        (root / folder).mkdir()
    return GatewayConfig(path=root / "tyk.conf", app_path=root / "apps",
                         middleware_path=root / "middleware")


def _load(cfg: GatewayConfig, definition: dict[str, Any]) -> APIDefinition:
    path = cfg.app_path / f"{definition['api_id']}.json"
    path.write_text(json.dumps(definition))
    return load_api_definition(path, cfg)


def _js_api(api_id: str, **kw: Any) -> dict[str, Any]:
    definition = api_def(api_id, f"/{api_id}/", UPSTREAM, **kw)
    definition["custom_middleware"]["driver"] = "otto"
    return definition


def _put(root: Path, relative: str, text: str = JS) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_path_relative_to_tyks_install_directory_resolves(tmp_path: Path) -> None:
    cfg = _tyk_layout(tmp_path)
    js = _put(tmp_path, "middleware/injectHeader.js")
    api = _load(cfg, _js_api("keyless", pre=[hook("injectHeader",
                                                  "./middleware/injectHeader.js")]))
    assert [h.path for h in api.custom_middleware.pre] == [str(js.resolve())]


def test_middleware_path_still_wins_over_the_install_directory(tmp_path: Path) -> None:
    cfg = _tyk_layout(tmp_path)
    _put(tmp_path, "hooks/a.js")
    preferred = _put(tmp_path, "middleware/hooks/a.js")
    api = _load(cfg, _js_api("a", pre=[hook("a", "hooks/a.js")]))
    assert api.custom_middleware.pre[0].path == str(preferred.resolve())


def test_a_missing_file_names_every_place_tried_and_the_file_kind(tmp_path: Path) -> None:
    cfg = _tyk_layout(tmp_path)
    with pytest.raises(ConfigError) as raised:
        _load(cfg, _js_api("gone", pre=[hook("gone", "./middleware/gone.js")]))
    assert raised.value.field == "custom_middleware.pre[0].path"
    assert str(tmp_path / "middleware" / "middleware" / "gone.js") in raised.value.problem
    assert str(tmp_path / "middleware" / "gone.js") in raised.value.problem
    assert "hook's .js file" in raised.value.fix
    with pytest.raises(ConfigError, match=r"hook's \.py file"):
        _load(cfg, api_def("py", "/py/", UPSTREAM, pre=[hook("gone", "gone.py")]))


def test_folder_hooks_join_each_phase_after_the_definitions_own(tmp_path: Path) -> None:
    cfg = _tyk_layout(tmp_path)
    _put(tmp_path, "middleware/own.js")
    for relative in ("pre/b.js", "pre/a.min.js", "auth/first.js", "auth/second.js",
                     "post_auth/meta_with_session.js", "post/last.js", "pre/notes.txt",
                     "response/ignored.js"):
        _put(tmp_path, f"middleware/folders/{relative}")
    api = _load(cfg, _js_api("folders", pre=[hook("own", "own.js")],
                             auth_check=hook("own", "own.js")))
    mw = api.custom_middleware
    assert [h.name for h in mw.pre] == ["own", "a", "b"]  # a.min.js is hook "a"
    assert mw.pre[1].path == str((tmp_path / "middleware/folders/pre/a.min.js").resolve())
    assert mw.auth_check is not None and mw.auth_check.name == "second"  # the last one
    assert mw.auth_check.failure_policy == "fail_closed"
    assert [(h.name, h.require_session) for h in mw.post_key_auth] == [
        ("meta_with_session", True)]
    assert [(h.name, h.require_session, h.driver) for h in mw.post] == [
        ("last", False, "otto")]
    assert mw.response == ()


def test_folder_hooks_only_for_js_apis_without_a_bundle(tmp_path: Path) -> None:
    cfg = _tyk_layout(tmp_path)
    for api_id in ("py", "../escape", "bundled"):
        _put(tmp_path, f"middleware/{api_id}/pre/x.js")
    api = _load(cfg, api_def("py", "/py/", UPSTREAM))  # driver python
    assert api.custom_middleware.pre == ()
    escape = {**_js_api("up"), "api_id": "../escape"}
    path = cfg.app_path / "escape.json"
    path.write_text(json.dumps(escape))
    assert load_api_definition(path, cfg).custom_middleware.pre == ()
    bundled = _load(cfg, _js_api("bundled", custom_middleware_bundle="b.zip"))
    assert bundled.custom_middleware.pre == () and bundled.bundle_error


def test_a_folder_file_that_cannot_name_a_hook_fails_its_api(tmp_path: Path) -> None:
    cfg = _tyk_layout(tmp_path)
    bad = _put(tmp_path, "middleware/dash/pre/my-hook.js")
    with pytest.raises(ConfigError) as raised:
        _load(cfg, _js_api("dash"))
    assert raised.value.file == str(bad) and "rename the file" in raised.value.fix


def _goja_api(api_id: str, **kw: Any) -> dict[str, Any]:
    definition = api_def(api_id, f"/{api_id}/", UPSTREAM, **kw)
    definition["custom_middleware"]["driver"] = "javascript"
    return definition


def test_inline_code_under_the_goja_driver_is_decoded(tmp_path: Path) -> None:
    """Tyk's `code`: base64 (standard, padded; Go skips line breaks); `path` is ignored."""
    cfg = _tyk_layout(tmp_path)
    source = "var inl = 1; // é\n"
    encoded = base64.b64encode(source.encode()).decode()
    api = _load(cfg, _goja_api("inl", pre=[hook("inl", "not/there.js",
                                                 code=encoded[:8] + "\n" + encoded[8:])]))
    [pre] = api.custom_middleware.pre
    assert (pre.code, pre.path) == (source, "")


def test_inline_code_that_cannot_run_is_named(tmp_path: Path) -> None:
    cfg = _tyk_layout(tmp_path)
    with pytest.raises(ConfigError) as raised:
        _load(cfg, _goja_api("bad", pre=[hook("bad", code="bm90IGJhc2U2NA")]))  # unpadded
    assert raised.value.field == "custom_middleware.pre[0].code"
    assert "base64" in raised.value.problem
    encoded = base64.b64encode(b"var x = 1;").decode()
    with pytest.raises(ConfigError) as raised:
        _load(cfg, _js_api("otto", pre=[hook("x", code=encoded)]))
    assert '"javascript"' in raised.value.fix
    # Coprocess drivers call hooks by name: Tyk never reads `code` there.
    py = _load(cfg, api_def("py", "/py/", UPSTREAM, pre=[hook("x", code="%%")]))
    assert py.custom_middleware.pre[0].code == ""


def test_a_goja_bundle_hook_keeps_its_file_in_the_bundle(tmp_path: Path) -> None:
    cfg = _tyk_layout(tmp_path)
    bundle = tmp_path / "middleware" / "bundles" / "gb-b.zip"
    _put(bundle, "hooks/a.js")
    manifest = {"file_list": ["hooks/a.js"], "custom_middleware": {
        "driver": "javascript", "pre": [{"name": "a", "path": "hooks/a.js"}, {"name": "b"}]}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    api = _load(cfg, _goja_api("gb", custom_middleware_bundle="b.zip"))
    assert not api.bundle_error
    assert [h.path for h in api.custom_middleware.pre] == [
        str((bundle / "hooks/a.js").resolve()), ""]
    manifest["custom_middleware"]["driver"] = "otto"  # otto calls bundle hooks by name
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert [h.path for h in _load(cfg, _goja_api("gb", custom_middleware_bundle="b.zip"))
            .custom_middleware.pre] == ["", ""]
