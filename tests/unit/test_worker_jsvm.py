"""The JSVM driver's pieces in-process: Tyk's TykJS prelude, the calling conventions,
object conversion, base64 helpers, time limits, load errors and per-API isolation."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from config.apidef import APIDefinition, HookDef, load_api_definition
from config.gateway import JsvmOptions, load_gateway_config
from config.reader import ConfigError
from worker.jsvm import api as jsapi
from worker.jsvm.engine import JSDeadline, JSHookError
from worker.jsvm.hooks import load_jsvm_plugins
from worker.objects import MiniRequestObject, ResponseObject, SessionState

PLUGIN = textwrap.dedent("""
    var samplePre = new TykJS.TykMiddleware.NewMiddleware({});
    samplePre.NewProcessRequest(function(request, session, spec) {
      request.SetHeaders["X-Js"] = "yes:" + spec.config_data.greeting;
      request.DeleteHeaders.push("Accept");
      request.AddParams["from_js"] = request.Params["q"][0];
      request.DeleteParams.push("drop");
      request.Body = request.Body.toUpperCase();
      return samplePre.ReturnData(request, {"seen": "1"});
    });

    var sampleAuth = new TykJS.TykMiddleware.NewMiddleware({});
    sampleAuth.NewProcessRequest(function(request, session, spec) {
      if (request.Headers["Authorization"] === undefined ||
          request.Headers["Authorization"][0] !== "good-token") {
        request.ReturnOverrides.ResponseCode = 401;
        request.ReturnOverrides.ResponseError = "bad token";
        return sampleAuth.ReturnAuthData(request, session);
      }
      var s = {rate: 10, per: 1, quota_max: 5, meta_data: {user: "u1"}};
      return sampleAuth.ReturnAuthData(request, s);
    });

    var stamp = new TykJS.TykMiddleware.NewMiddleware({});
    stamp.NewProcessResponse(function(response, request, session, spec) {
      response.StatusCode = 202;
      response.SetHeaders["X-Js"] = "resp";
      response.DeleteHeaders.push("X-Drop");
      response.Body = "new:" + response.Body;
      return stamp.ReturnResponseData(response, session.meta_data);
    });

    var spin = new TykJS.TykMiddleware.NewMiddleware({});
    spin.NewProcessRequest(function(request, session, spec) { while (true) {} });

    var counter = new TykJS.TykMiddleware.NewMiddleware({});
    counter.NewProcessRequest(function(request, session, spec) {
      globalThis.calls = (globalThis.calls || 0) + 1;
      request.SetHeaders["X-Calls"] = String(calls);
      request.SetHeaders["X-B64"] = b64enc("hi") + "," + b64dec("aGk=") + "," +
        rawb64enc("hi") + "," + rawb64dec("aGk") + "," + b64dec("aGk") + "," +
        b64dec(b64enc("h\u00e9!"));
      log("counted " + calls);
      return counter.ReturnData(request, {});
    });

    var junk = new TykJS.TykMiddleware.NewMiddleware({});
    junk.NewProcessRequest(function(request, session, spec) {
      request.SetHeaders = "not a map";
      return junk.ReturnData(request, {});
    });

    var nothing = new TykJS.TykMiddleware.NewMiddleware({});
    nothing.NewProcessRequest(function(request, session, spec) { return undefined; });
""")


def _api(tmp_path: Path, driver: str = "otto") -> APIDefinition:
    """A JS API definition read by the real config loader."""
    (tmp_path / "coproc.json").write_text(json.dumps({"coproc": {"run_dir": "run"}}))
    definition = {"name": "js", "api_id": "js-api", "org_id": "default", "active": True,
                  "use_keyless": True,
                  "proxy": {"listen_path": "/js/", "target_url": "http://127.0.0.1:1"},
                  "custom_middleware": {"driver": driver}}
    (tmp_path / "js.json").write_text(json.dumps(definition))
    cfg = load_gateway_config(tmp_path / "coproc.json")
    return load_api_definition(tmp_path / "js.json", cfg)


@pytest.fixture
def plugin_file(tmp_path: Path) -> Path:
    path = tmp_path / "middleware.js"
    path.write_text(PLUGIN)
    return path


def _plugins(plugin_file: Path, *hooks: tuple[str, str], timeout_ms: int = 1000,
             options: JsvmOptions | None = None, require_session: bool = False) -> Any:
    return load_jsvm_plugins(_api(plugin_file.parent), [plugin_file],
                             [(phase, HookDef(name, timeout_ms=timeout_ms,
                                              require_session=require_session))
                              for phase, name in hooks], options or JsvmOptions(enable=True))


def _request(**fields: Any) -> Any:
    return MiniRequestObject.from_wire({"headers": {"Accept": "*/*"}, "url": "/x", **fields})


SPEC = {"APIID": "js-api", "OrgID": "default", "config_data": json.dumps({"greeting": "hello"})}


def test_pre_hook_sets_headers_params_and_body(plugin_file: Path) -> None:
    plugins = _plugins(plugin_file, ("pre", "samplePre"))
    assert plugins.ok, plugins.problems or plugins.load_error
    entry = plugins.hooks["samplePre"]
    assert entry.arity == 3
    request, session = entry.func(_request(params={"q": "v", "drop": "x"}, raw_body=b"abc"),
                                  SessionState(), SPEC)
    assert dict(request.set_headers) == {"X-Js": "yes:hello"}
    assert list(request.delete_headers) == ["Accept"]
    assert dict(request.add_params) == {"from_js": "v"}
    assert list(request.delete_params) == ["drop"]
    assert request.raw_body == b"ABC"
    assert dict(session.metadata) == {}  # SessionMeta only with require_session (Tyk)


def test_session_meta_is_kept_with_require_session(plugin_file: Path) -> None:
    entry = _plugins(plugin_file, ("post", "samplePre"),
                     require_session=True).hooks["samplePre"]
    _request_back, session = entry.func(_request(params={"q": "v"}), SessionState(), SPEC)
    assert dict(session.metadata) == {"seen": "1"}


def test_auth_hook_accepts_and_refuses(plugin_file: Path) -> None:
    entry = _plugins(plugin_file, ("auth_check", "sampleAuth")).hooks["sampleAuth"]
    assert entry.arity == 4
    _request_back, session, metadata = entry.func(
        _request(headers={"Authorization": "good-token"}), SessionState(), {}, SPEC)
    assert metadata == {"token": "good-token"}
    assert (session.rate, session.per, session.quota_max) == (10.0, 1.0, 5)
    assert dict(session.metadata) == {"user": "u1"}
    request, _session, _metadata = entry.func(
        _request(headers={"Authorization": "nope"}), SessionState(), {}, SPEC)
    assert request.return_overrides.response_code == 401
    assert request.return_overrides.response_error == "bad token"


def test_response_hook(plugin_file: Path) -> None:
    entry = _plugins(plugin_file, ("response", "stamp")).hooks["stamp"]
    assert entry.arity == 5
    response = ResponseObject.from_wire({"status_code": 200, "raw_body": b"body",
                                         "headers": {"A": "b", "X-Drop": "1"}})
    got = entry.func(_request(), response, SessionState(), {}, SPEC)
    assert got.status_code == 202
    assert dict(got.headers) == {"A": "b", "X-Js": "resp"}
    assert got.raw_body == b"new:body"


def test_endless_loop_stops_at_jsvm_timeout_and_the_context_lives_on(
        plugin_file: Path) -> None:
    plugins = _plugins(plugin_file, ("pre", "spin"), ("pre", "counter"), timeout_ms=10_000,
                       options=JsvmOptions(enable=True, timeout_s=0.3))
    started = time.monotonic()
    with pytest.raises(JSDeadline) as info:
        plugins.hooks["spin"].func(_request(), SessionState(), SPEC)
    assert info.value.error_code == "deadline"  # answered as 504 (worker.invoke)
    assert time.monotonic() - started < 5
    request, _ = plugins.hooks["counter"].func(_request(), SessionState(), SPEC)
    assert dict(request.set_headers)["X-Calls"] == "1"


def test_helpers_and_per_api_contexts(plugin_file: Path) -> None:
    first = _plugins(plugin_file, ("pre", "counter")).hooks["counter"]
    second = _plugins(plugin_file, ("pre", "counter")).hooks["counter"]
    for _ in range(3):
        request, _ = first.func(_request(), SessionState(), SPEC)
    assert dict(request.set_headers) == {"X-Calls": "3", "X-B64": "aGk=,hi,aGk,hi,hi,h\u00e9!"}
    request, _ = second.func(_request(), SessionState(), SPEC)
    assert dict(request.set_headers)["X-Calls"] == "1"


def test_bad_values_and_missing_returns_are_hook_errors(plugin_file: Path) -> None:
    plugins = _plugins(plugin_file, ("pre", "junk"), ("pre", "nothing"))
    with pytest.raises(JSHookError, match=r"Request\.SetHeaders"):
        plugins.hooks["junk"].func(_request(), SessionState(), SPEC)
    with pytest.raises(JSHookError, match="returned no object"):
        plugins.hooks["nothing"].func(_request(), SessionState(), SPEC)


def test_syntax_error_is_a_load_error_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.js"
    bad.write_text("var x = new TykJS.TykMiddleware.NewMiddleware({};\n")
    plugins = load_jsvm_plugins(_api(tmp_path), [bad], [("pre", HookDef("x"))],
                                JsvmOptions(enable=True))
    assert not plugins.ok
    assert plugins.load_error.startswith(f"JSError: {bad}:")


def test_missing_object_is_reported(plugin_file: Path) -> None:
    plugins = _plugins(plugin_file, ("pre", "notThere"))
    assert not plugins.ok and "notThere" in plugins.problems[0]


def test_tyk_js_path_library_is_loaded_first(tmp_path: Path) -> None:
    library = tmp_path / "lib.js"
    library.write_text("var shout = function(s) { return s + '!'; };\n")
    plugin = tmp_path / "mw.js"
    plugin.write_text("var m = new TykJS.TykMiddleware.NewMiddleware({});\n"
                      "m.NewProcessRequest(function(r, s, c) {\n"
                      "  r.SetHeaders['X-Lib'] = shout('hey'); return m.ReturnData(r, {}); });\n")
    plugins = load_jsvm_plugins(_api(tmp_path), [plugin], [("pre", HookDef("m"))],
                                JsvmOptions(enable=True, tyk_js_path=library))
    request, _ = plugins.hooks["m"].func(_request(), SessionState(), SPEC)
    assert dict(request.set_headers) == {"X-Lib": "hey!"}


def test_disabled_jsvm_is_a_clear_load_error(plugin_file: Path) -> None:
    from worker.jsvm.hooks import load_jsvm_api
    plugins = load_jsvm_api(_api(plugin_file.parent), JsvmOptions())
    assert "enable_jsvm: true" in plugins.load_error


def test_host_functions_never_raise_into_js(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import tyk_api
    monkeypatch.setattr(tyk_api, "current_host", lambda: None)
    functions = jsapi.host_functions("js-api", 0.1)
    assert functions["TykMakeHttpRequest"]('{"Domain": "http://x"}') is None
    assert functions["TykGetKeyData"]("k", "a") == "{}"


def test_config_reads_tyk_and_coproc_jsvm_settings(tmp_path: Path) -> None:
    path = tmp_path / "coproc.json"
    path.write_text(json.dumps({"enable_jsvm": True, "jsvm_timeout": 2,
                                "tyk_js_path": "lib.js",
                                "coproc": {"run_dir": "run", "jsvm": {
                                    "outbound_allow": ["127.0.0.1:8081"]}}}))
    cfg = load_gateway_config(path)
    assert (cfg.jsvm.enable, cfg.jsvm.timeout_s) == (True, 2)
    assert cfg.jsvm.tyk_js_path == tmp_path / "lib.js"
    assert cfg.jsvm.outbound_allow == ("127.0.0.1:8081",)
    path.write_text(json.dumps({"coproc": {"run_dir": "run", "jsvm": {
        "outbound_allow": ["http://x/"]}}}))
    with pytest.raises(ConfigError, match=r"outbound_allow\[0\]"):
        load_gateway_config(path)


def _tagger(name: str, value: str) -> str:
    """A file with a top-level `tag` and a middleware object `name` that reports it."""
    return (f"var tag = {json.dumps(value)};\n"
            f"var {name} = new TykJS.TykMiddleware.NewMiddleware({{}});\n"
            f"{name}.NewProcessRequest(function(r, s, c) {{\n"
            f"  r.SetHeaders['X-{name}'] = tag; return {name}.ReturnData(r, {{}}); }});\n")


@pytest.mark.parametrize(("driver", "first_sees"), [("otto", "B"), ("javascript", "A")])
def test_goja_gives_each_file_its_own_scope_and_otto_shares_one(
        tmp_path: Path, driver: str, first_sees: str) -> None:
    """Tyk's otto runs every file at top level (b.js's `tag` replaces a.js's); its goja
    driver ("javascript") scopes each file, so each hook sees its own file's `tag`."""
    a, b = tmp_path / "a.js", tmp_path / "b.js"
    a.write_text(_tagger("first", "A"))
    b.write_text(_tagger("second", "B"))
    plugins = load_jsvm_plugins(
        _api(tmp_path, driver), [a, b],
        [("pre", HookDef("first", path=str(a))), ("post", HookDef("second", path=str(b)))],
        JsvmOptions(enable=True))
    assert plugins.ok, plugins.problems
    request, _ = plugins.hooks["first"].func(_request(), SessionState(), SPEC)
    assert dict(request.set_headers) == {"X-first": first_sees}
    request, _ = plugins.hooks["second"].func(_request(), SessionState(), SPEC)
    assert dict(request.set_headers) == {"X-second": "B"}


def test_goja_a_hook_named_by_a_reserved_word_is_missing_not_a_load_error(
        tmp_path: Path) -> None:
    a = tmp_path / "a.js"
    a.write_text(_tagger("fine", "A"))
    plugins = load_jsvm_plugins(_api(tmp_path, "javascript"), [a],
                                [("pre", HookDef("fine", path=str(a))),
                                 ("post", HookDef("class", path=str(a)))],
                                JsvmOptions(enable=True))
    assert not plugins.load_error and "fine" in plugins.hooks
    assert plugins.problems and "'class'" in plugins.problems[0]


def test_goja_inline_code_is_a_hook_and_must_define_its_object(tmp_path: Path) -> None:
    plugins = load_jsvm_plugins(
        _api(tmp_path, "javascript"), [],
        [("pre", HookDef("inline", code=_tagger("inline", "in code"))),
         ("post", HookDef("absent", code="var other = 1;"))],
        JsvmOptions(enable=True))
    request, _ = plugins.hooks["inline"].func(_request(), SessionState(), SPEC)
    assert dict(request.set_headers) == {"X-inline": "in code"}
    assert plugins.problems == ["hook 'absent' is not a TykJS middleware object "
                                "(NewMiddleware) in its inline code"]


def test_goja_bundle_hook_without_a_path_is_found_in_the_files(tmp_path: Path) -> None:
    """A bundle's hooks may name no file: the last file defining the name serves."""
    a, b, c = tmp_path / "a.js", tmp_path / "b.js", tmp_path / "c.js"
    a.write_text(_tagger("shared", "A"))
    b.write_text(_tagger("shared", "B"))
    c.write_text(_tagger("onlyC", "C"))
    plugins = load_jsvm_plugins(
        _api(tmp_path, "javascript"), [a, b, c],
        [("pre", HookDef("shared")), ("post", HookDef("onlyC"))], JsvmOptions(enable=True))
    request, _ = plugins.hooks["shared"].func(_request(), SessionState(), SPEC)
    assert dict(request.set_headers) == {"X-shared": "B"}
    request, _ = plugins.hooks["onlyC"].func(_request(), SessionState(), SPEC)
    assert dict(request.set_headers) == {"X-onlyC": "C"}
