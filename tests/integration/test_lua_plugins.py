"""Lua plugins (`driver: "lua"`) through a real instance: pre, auth_check, response,
and an endless loop stopped at the hook's deadline while the worker keeps serving."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from integration.bundlekit import Keys, ServerThread
from integration.harness import Instance, api_def, coproc_command, echo_header, hook

LUA = textwrap.dedent("""
    function MyPreMiddleware(request, session, spec)
      tyk.req.set_header("customheader", "customvalue")
      return request, session
    end

    function MyAuthCheck(request, session, metadata, spec)
      if request.headers["Authorization"] == "lua-secret-token" then
        metadata.token = "lua-secret-token"
        session.rate = 1000
        session.per = 1
        session.quota_max = 100
        session.quota_renewal_rate = 3600
      else
        request.return_overrides = {response_code = 401,
                                    response_error = "Lua says no"}
      end
      return request, session, metadata
    end

    function MyResponse(request, response, session, metadata, spec)
      response.status_code = 299
      response.headers["X-Lua-Response"] = "seen " .. tostring(response.status_code)
      return response
    end

    function Spin(request, session, spec)
      while true do end
    end
""")


def lua_api(api_id: str, echo_url: str, **kw: Any) -> dict[str, Any]:
    definition = api_def(api_id, f"/{api_id}/", echo_url, **kw)
    definition["custom_middleware"]["driver"] = "lua"
    return definition


@pytest.fixture(scope="module")
def gw(module_coproc_factory: Any, echo_upstream: Any) -> Instance:
    url = echo_upstream.url
    apis = {
        "pre": lua_api("pre", url, pre=[hook("MyPreMiddleware", "lua/mw.lua")]),
        "auth": lua_api("auth", url, auth_check=hook("MyAuthCheck", "lua/mw.lua"),
                        use_keyless=False, enable_coprocess_auth=True),
        "resp": lua_api("resp", url, response=[hook("MyResponse", "lua/mw.lua")]),
        "spin": lua_api("spin", url, pre=[hook("Spin", "lua/mw.lua", timeout_ms=300)]),
    }
    return module_coproc_factory(apis, {"lua/mw.lua": LUA})


def test_pre_hook_header_reaches_the_upstream(gw: Instance) -> None:
    echo = gw.expect(gw.get("/pre/anything"), 200).json()
    assert echo_header(echo, "customheader") == "customvalue"


def test_auth_check_accepts_one_token_and_refuses_others_with_401(gw: Instance) -> None:
    echo = gw.expect(gw.get("/auth/x", {"Authorization": "lua-secret-token"}), 200).json()
    assert echo["path"].endswith("/x")
    resp = gw.expect(gw.get("/auth/x", {"Authorization": "wrong"}), 401)
    assert resp.json() == {"error": "Lua says no"}
    gw.expect(gw.get("/auth/x"), 401)


def test_response_hook_changes_the_status(gw: Instance) -> None:
    resp = gw.expect(gw.get("/resp/y"), 299)
    assert resp.headers["X-Lua-Response"] == "seen 299"


def test_endless_loop_is_a_504_and_the_next_request_is_served(gw: Instance) -> None:
    started = time.monotonic()
    gw.expect(gw.get("/spin/"), 504)
    assert time.monotonic() - started < 5
    echo = gw.expect(gw.get("/pre/after-spin"), 200).json()
    assert echo_header(echo, "customheader") == "customvalue"
    # The stopped loop freed its thread: a second endless call stops the same way.
    gw.expect(gw.get("/spin/"), 504)
    gw.expect(gw.get("/pre/again"), 200)


def test_lua_bundle_built_and_verified_by_the_cli_is_served(
        coproc_factory: Any, echo_upstream: Any, tmp_path: Path) -> None:
    """1. `coproc bundle build -k` makes a signed bundle of a Lua manifest;
    2. `coproc bundle verify --key` accepts it; 3. a bundle server serves it and an
    instance with `public_key_path` downloads, verifies and runs its Lua pre hook."""
    keys = Keys.make(tmp_path)
    source = tmp_path / "src"
    source.mkdir()
    (source / "mw.lua").write_text(LUA)
    (source / "manifest.json").write_text(json.dumps({
        "file_list": ["mw.lua"],
        "custom_middleware": {"driver": "lua", "pre": [{"name": "MyPreMiddleware"}]}}))
    bundle = tmp_path / "lua-bundle.zip"
    built = subprocess.run([*coproc_command(), "bundle", "build", "-m", "manifest.json",
                            "-o", str(bundle), "-k", str(keys.private_path)],
                           cwd=source, capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    verified = subprocess.run([*coproc_command(), "bundle", "verify", str(bundle), "--key",
                               str(keys.public_path)], capture_output=True, text=True,
                              timeout=60)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    with ServerThread() as server:
        server.publish("lua-bundle.zip", bundle.read_bytes())
        api = api_def("luab", "/luab/", echo_upstream.url,
                      custom_middleware_bundle="lua-bundle.zip")
        inst = coproc_factory({"luab": api}, {}, {
            "enable_bundle_downloader": True, "bundle_base_url": server.url,
            "public_key_path": str(keys.public_path)})
        echo = inst.expect(inst.get("/luab/z"), 200).json()
        assert echo_header(echo, "customheader") == "customvalue"
