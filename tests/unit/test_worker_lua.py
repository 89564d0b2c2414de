"""The Lua driver's pieces in-process: Tyk's Lua API, the calling conventions,
table conversion, deadlines, load errors and per-API isolation."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from config.apidef import APIDefinition, HookDef, load_api_definition
from config.gateway import load_gateway_config
from worker.lua.engine import LuaDeadline, LuaHookError, LuaState
from worker.lua.hooks import load_lua_plugins
from worker.objects import MiniRequestObject, ResponseObject, SessionState

PLUGIN = textwrap.dedent("""
    function MyPreMiddleware(request, session, spec)
      tyk.req.set_header("customheader", "customvalue")
      request.add_params = {from_lua = spec.config}
      return request, session
    end

    function MyAuth(request, session, metadata, spec)
      local token = request.headers["Authorization"]
      if token == "good-token" then
        metadata.token = token
        session.rate = 10
        session.per = 1
        session.quota_max = 5
      else
        request.return_overrides = {response_code = 401, response_error = "bad token"}
      end
      return request, session, metadata
    end

    function Stamp(request, response, session, metadata, spec)
      response.status_code = 202
      response.headers["X-Lua"] = "yes"
      return response
    end

    function Spin(request, session, spec)
      while true do end
    end

    function ReturnsJunk(request, session, spec)
      return {headers = "not a map"}, session
    end

    function Counter(request, session, spec)
      calls = (calls or 0) + 1
      request.set_headers = {["X-Calls"] = tostring(calls)}
      return request, session
    end

    function Escape(request, session, spec)
      request.set_headers = {
        ["X-Python"] = tostring(python), ["X-Sethook"] = tostring(debug.sethook),
        ["X-Upvalues"] = tostring(debug.getupvalue)}
      return request, session
    end
""")


def _api(tmp_path: Path) -> APIDefinition:
    """A Lua API definition read by the real config loader."""
    (tmp_path / "coproc.json").write_text(json.dumps({"coproc": {"run_dir": "run"}}))
    definition = {"name": "lua", "api_id": "lua-api", "org_id": "default", "active": True,
                  "use_keyless": True,
                  "proxy": {"listen_path": "/lua/", "target_url": "http://127.0.0.1:1"},
                  "custom_middleware": {"driver": "lua"}}
    (tmp_path / "lua.json").write_text(json.dumps(definition))
    cfg = load_gateway_config(tmp_path / "coproc.json")
    return load_api_definition(tmp_path / "lua.json", cfg)


@pytest.fixture
def plugin_file(tmp_path: Path) -> Path:
    path = tmp_path / "middleware.lua"
    path.write_text(PLUGIN)
    return path


def _plugins(plugin_file: Path, *hooks: tuple[str, str], timeout_ms: int = 1000) -> Any:
    return load_lua_plugins(_api(plugin_file.parent), [plugin_file],
                            [(phase, HookDef(name, timeout_ms=timeout_ms))
                             for phase, name in hooks])


def _request(**fields: Any) -> Any:
    return MiniRequestObject.from_wire({"headers": {"Accept": "*/*"}, "url": "/x", **fields})


def test_pre_hook_sets_a_header_through_tyk_req(plugin_file: Path) -> None:
    plugins = _plugins(plugin_file, ("pre", "MyPreMiddleware"))
    assert plugins.ok, plugins.problems or plugins.load_error
    entry = plugins.hooks["MyPreMiddleware"]
    assert entry.arity == 3
    request, session = entry.func(_request(), SessionState(), {"config": "c1"})
    assert dict(request.set_headers) == {"customheader": "customvalue"}
    assert dict(request.add_params) == {"from_lua": "c1"}
    assert dict(request.headers) == {"Accept": "*/*"}
    assert isinstance(session, type(SessionState()))


def test_auth_hook_gets_metadata_and_returns_three_values(plugin_file: Path) -> None:
    entry = _plugins(plugin_file, ("auth_check", "MyAuth")).hooks["MyAuth"]
    assert entry.arity == 4
    request, session, metadata = entry.func(
        _request(headers={"Authorization": "good-token"}), SessionState(), {}, {})
    assert metadata == {"token": "good-token"}
    assert (session.rate, session.per, session.quota_max) == (10.0, 1.0, 5)
    request, _session, metadata = entry.func(
        _request(headers={"Authorization": "nope"}), SessionState(), {}, {})
    assert "token" not in metadata
    assert request.return_overrides.response_code == 401
    assert request.return_overrides.response_error == "bad token"


def test_response_hook_changes_the_status(plugin_file: Path) -> None:
    entry = _plugins(plugin_file, ("response", "Stamp")).hooks["Stamp"]
    assert entry.arity == 5
    response = ResponseObject.from_wire({"status_code": 200, "headers": {"A": "b"},
                                         "raw_body": b"\x00\xffbody"})
    got = entry.func(_request(), response, SessionState(), {}, {})
    assert got.status_code == 202
    assert dict(got.headers) == {"A": "b", "X-Lua": "yes"}
    assert got.raw_body == b"\x00\xffbody"  # base64 in Lua, the same bytes back


def test_endless_loop_stops_at_the_deadline(plugin_file: Path) -> None:
    entry = _plugins(plugin_file, ("pre", "Spin"), timeout_ms=200).hooks["Spin"]
    started = time.monotonic()
    with pytest.raises(LuaDeadline):
        entry.func(_request(), SessionState(), {})
    assert time.monotonic() - started < 2
    # The state is still usable after the interruption.
    state = LuaState([plugin_file])
    assert state.has_function("Spin")


def test_a_value_of_the_wrong_type_names_the_field(plugin_file: Path) -> None:
    entry = _plugins(plugin_file, ("pre", "ReturnsJunk")).hooks["ReturnsJunk"]
    with pytest.raises(LuaHookError, match=r"request\.headers"):
        entry.func(_request(), SessionState(), {})


def test_plugins_cannot_reach_python_or_clear_the_deadline_hook(plugin_file: Path) -> None:
    entry = _plugins(plugin_file, ("pre", "Escape")).hooks["Escape"]
    request, _session = entry.func(_request(), SessionState(), {})
    assert dict(request.set_headers) == {"X-Python": "nil", "X-Sethook": "nil",
                                         "X-Upvalues": "nil"}
    # A Python object that did reach Lua (a function the state was given) shows
    # no attributes: f.__self__ or __globals__ would lead out of the sandboxed state.
    state = LuaState([plugin_file])
    probe = state.runtime.eval(b"function(f) return pcall(function() return f.__self__ end) end")
    assert probe(state.table)[0] is False


def test_each_api_has_its_own_state(plugin_file: Path) -> None:
    first = _plugins(plugin_file, ("pre", "Counter")).hooks["Counter"]
    second = _plugins(plugin_file, ("pre", "Counter")).hooks["Counter"]
    for _ in range(3):
        request, _ = first.func(_request(), SessionState(), {})
    assert dict(request.set_headers) == {"X-Calls": "3"}
    request, _ = second.func(_request(), SessionState(), {})
    assert dict(request.set_headers) == {"X-Calls": "1"}


def test_syntax_error_is_a_load_error_naming_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.lua"
    bad.write_text("function Broken(request, session, spec)\n  return request session\nend\n")
    plugins = load_lua_plugins(_api(tmp_path), [bad], [("pre", HookDef("Broken"))])
    assert not plugins.ok
    assert plugins.load_error.startswith(f"LuaError: {bad}: bad.lua:2:")
    assert "stack traceback" not in plugins.load_error


def test_missing_function_is_reported(plugin_file: Path) -> None:
    plugins = _plugins(plugin_file, ("pre", "NotThere"))
    assert not plugins.ok
    assert "NotThere" in plugins.problems[0]


def test_a_hook_that_allocates_past_the_cap_fails_and_the_state_lives_on(
        tmp_path: Path) -> None:
    source = tmp_path / "hog.lua"
    source.write_text(
        "function Hog(request, session, spec)\n"
        "  local s = string.rep('x', 200 * 1024 * 1024)\n"
        "  return request, session\n"
        "end\n"
        "function Fine(request, session, spec) return request, session end\n")
    plugins = load_lua_plugins(_api(tmp_path), [source],
                               [("pre", HookDef("Hog")), ("pre", HookDef("Fine"))])
    with pytest.raises(LuaHookError, match="memory"):
        plugins.hooks["Hog"].func(_request(), SessionState(), {})
    request, _ = plugins.hooks["Fine"].func(_request(), SessionState(), {})
    assert request.url == "/x"


def test_luajit_names_and_cjson_are_there_as_in_tyk(tmp_path: Path) -> None:
    """Tyk runs Lua on LuaJIT (Lua 5.1's library) with lua-cjson: the 5.1 names 5.4
    dropped are back, and `require "cjson"` encodes and decodes as lua-cjson does."""
    plugin = tmp_path / "compat.lua"
    plugin.write_text(textwrap.dedent(r'''
        local cjson = require "cjson"
        function Probe()
          local t = cjson.decode('{"a": [1, 2.5, "x"], "e": "\\u00e9", "o": {}}')
          local ok = pcall(cjson.decode, "{bad")
          local v, err = (require "cjson.safe").decode("{bad")
          return {unpack({7, 8}), loadstring("return 1 + 2")(), math.pow(2, 10),
                  table.getn({1, 2, 3}), t.a[3], t.a[2], t.e, ok, v, type(err),
                  cjson.encode({list = {1, 2}, empty = {}, n = 10 / 2, s = "q\""})}
        end
    '''))
    state = LuaState([plugin])
    (got,) = state.call("Probe", 5.0, None)
    values = [got[i] for i in range(1, 12)]
    assert values[:10] == [7, 3, 1024.0, 3, b"x", 2.5, "é".encode(), False, None, b"string"]
    assert json.loads(values[10]) == {"list": [1, 2], "empty": {}, "n": 5, "s": 'q"'}
