"""Merged hook calls (ipc/merged.py) through a real gateway and a real worker.

Hooks with no gateway work between them travel in one CALL: the worker's own
call counter shows 2 -> 1 calls per request for pre+post on a keyless API
and 3 -> 2 for pre+post+response (`coproc.hooks.merge` on, then off).  Inside
a merged call: a short-circuit in the first hook stops the others (a file the
second would write is never written), a fail_open error in the middle skips
only that hook (the last one sees the first one's change), a fail_closed one
answers as today, a per-hook deadline, an `async def` hook in the middle,
large bodies through shared memory, two response hooks, and Lua and JSVM
hooks.
"""

from __future__ import annotations

import hashlib
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from integration.harness import EchoUpstream, Instance, api_def, echo_header, hook, poll

PLUGIN = textwrap.dedent('''
    import asyncio
    import time

    from tyk.decorators import *


    @Hook
    def AddA(request, session, spec):
        request.add_header("X-A", "a")
        return request, session


    @Hook
    def Stop(request, session, spec):
        request.object.return_overrides.response_code = 403
        request.object.return_overrides.response_error = "stopped by the first hook"
        return request, session


    @Hook
    def Mark(request, session, spec):
        path = request.object.headers.get("X-Mark")
        if path:
            with open(path, "w") as f:
                f.write("ran")
        request.add_header("X-Last-Saw-A", request.object.headers.get("X-A", "none"))
        request.add_header("X-Last-Saw-Async", request.object.headers.get("X-Async", "none"))
        return request, session


    @Hook
    def Boom(request, session, spec):
        raise RuntimeError("boom")


    @Hook
    def Slow(request, session, spec):
        time.sleep(1.5)
        return request, session


    @Hook
    async def AsyncMiddle(request, session, spec):
        await asyncio.sleep(0.01)
        request.add_header("X-Async", "saw " + request.object.headers.get("X-A", "none"))
        return request, session


    @Hook
    def GrowBody(request, session, spec):
        request.object.raw_body = request.object.raw_body + b"A" * 1000
        return request, session


    @Hook
    def CheckBody(request, session, spec):
        raw = request.object.raw_body
        request.add_header("X-Body-Len", str(len(raw)))
        request.add_header("X-Body-Text-Len", str(len(request.object.body)))
        request.object.raw_body = raw + b"B"
        return request, session


    @Hook
    def R1(request, response, session, metadata, spec):
        response.headers["X-R1"] = "1"
        return response


    @Hook
    def R2(request, response, session, metadata, spec):
        response.headers["X-R2-Saw"] = response.headers.get("X-R1", "none")
        response.status_code = 299
        return response
''')

LUA = textwrap.dedent("""
    function LuaPre(request, session, spec)
      tyk.req.set_header("X-Lua-Pre", "one")
      return request, session
    end

    function LuaPost(request, session, spec)
      tyk.req.set_header("X-Lua-Post", "saw " .. tostring(request.headers["X-Lua-Pre"]))
      return request, session
    end
""")

JS = """
var jsPre = new TykJS.TykMiddleware.NewMiddleware({});
jsPre.NewProcessRequest(function(request, session, spec) {
  request.SetHeaders["X-Js-Pre"] = "one";
  return jsPre.ReturnData(request, {});
});

var jsPost = new TykJS.TykMiddleware.NewMiddleware({});
jsPost.NewProcessRequest(function(request, session, spec) {
  var seen = request.Headers["X-Js-Pre"];
  request.SetHeaders["X-Js-Post"] = "saw " + (seen === undefined ? "none" : seen[0]);
  return jsPost.ReturnData(request, {});
});
"""

MW = "m/mw.py"


def _h(name: str, **options: Any) -> dict[str, Any]:
    return hook(name, MW, **options)


def _apis(url: str) -> dict[str, dict[str, Any]]:
    def api(api_id: str, **kw: Any) -> dict[str, Any]:
        return api_def(api_id, f"/{api_id}/", url, **kw)

    lua = api("lua", pre=[hook("LuaPre", "lua/mw.lua")], post=[hook("LuaPost", "lua/mw.lua")])
    lua["custom_middleware"]["driver"] = "lua"
    js = api("js", pre=[hook("jsPre", "js/mw.js")], post=[hook("jsPost", "js/mw.js")])
    js["custom_middleware"]["driver"] = "otto"
    return {
        "pp": api("pp", pre=[_h("AddA")], post=[_h("Mark")]),
        "ppr": api("ppr", pre=[_h("AddA")], post=[_h("Mark")], response=[_h("R1")]),
        "stop": api("stop", pre=[_h("Stop"), _h("Mark")]),
        "open": api("open", pre=[_h("AddA"), _h("Boom", failure_policy="fail_open")],
                    post=[_h("Mark")]),
        "closed": api("closed", pre=[_h("AddA"), _h("Boom", failure_policy="fail_closed"),
                                     _h("Mark")]),
        "late": api("late", pre=[_h("AddA"), _h("Slow", timeout_ms=300), _h("Mark")]),
        "late_open": api("late_open", pre=[_h("AddA"), _h("Slow", timeout_ms=300,
                                                          failure_policy="fail_open"),
                                           _h("Mark")]),
        "async": api("async", pre=[_h("AddA"), _h("AsyncMiddle")], post=[_h("Mark")]),
        "body": api("body", pre=[_h("GrowBody")], post=[_h("CheckBody")]),
        "resp": api("resp", response=[_h("R1"), _h("R2")]),
        "lua": lua,
        "js": js,
    }


def _start(factory: Any, echo: EchoUpstream, merge: bool) -> Instance:
    settings = {"enable_jsvm": True, "coproc": {"hooks": {"merge": merge}}}
    return factory(_apis(echo.url), {MW: PLUGIN, "lua/mw.lua": LUA, "js/mw.js": JS}, settings)


@pytest.fixture(scope="module")
def gw(module_coproc_factory: Any, echo_upstream: EchoUpstream) -> Instance:
    return _start(module_coproc_factory, echo_upstream, merge=True)


def _worker_calls(gw: Instance) -> int:
    return int(gw.worker().get("call_threads", {}).get("calls", 0))


def _calls_per_request(gw: Instance, path: str, requests: int = 10) -> float:
    """The worker's CALLs per request, from its own counter (its heartbeats)."""
    before = _settled_calls(gw)
    for _ in range(requests):
        gw.expect(gw.get(path), 200)
    return (_settled_calls(gw, above=before) - before) / requests


def _settled_calls(gw: Instance, above: int = -1) -> int:
    """The call counter once two reads a heartbeat (500 ms) apart agree and it is
    past `above`: the counter is reported by heartbeats, not asked for."""
    seen: list[int] = []

    def settled() -> bool:
        seen.append(_worker_calls(gw))
        return len(seen) >= 2 and seen[-1] == seen[-2] and seen[-1] > above

    poll("a settled worker call counter", settled, 10, interval=0.6)
    return seen[-1]


def test_merging_halves_the_round_trips(gw: Instance, module_coproc_factory: Any,
                                        echo_upstream: EchoUpstream) -> None:
    """1. With merging: pre+post is 1 CALL, pre+post+response 2.
    2. Without (`coproc.hooks.merge: false`): 2 and 3, as one CALL per hook."""
    assert _calls_per_request(gw, "/pp/x") == 1
    assert _calls_per_request(gw, "/ppr/x") == 2
    off = _start(module_coproc_factory, echo_upstream, merge=False)
    assert _calls_per_request(off, "/pp/x") == 2
    assert _calls_per_request(off, "/ppr/x") == 3
    merged_echo = gw.expect(gw.get("/ppr/x"), 200)
    plain_echo = off.expect(off.get("/ppr/x"), 200)
    assert merged_echo.headers["X-R1"] == plain_echo.headers["X-R1"] == "1"
    for name in ("X-A", "X-Last-Saw-A"):
        assert echo_header(merged_echo.json(), name) == echo_header(plain_echo.json(), name)


def test_pre_and_post_see_each_other_in_one_call(gw: Instance) -> None:
    echo = gw.expect(gw.get("/pp/x"), 200).json()
    assert echo_header(echo, "X-A") == "a"
    assert echo_header(echo, "X-Last-Saw-A") == "a"


def test_a_short_circuit_in_the_first_hook_stops_the_second(gw: Instance,
                                                             tmp_path: Path) -> None:
    mark = tmp_path / "second-ran"
    resp = gw.expect(gw.get("/stop/x", {"X-Mark": str(mark)}), 403)
    assert resp.json() == {"error": "stopped by the first hook"}
    assert not mark.exists()


def test_fail_open_in_the_middle_skips_only_that_hook(gw: Instance, tmp_path: Path) -> None:
    mark = tmp_path / "last-ran"
    echo = gw.expect(gw.get("/open/x", {"X-Mark": str(mark)}), 200).json()
    assert mark.read_text() == "ran"
    assert echo_header(echo, "X-A") == "a"
    assert echo_header(echo, "X-Last-Saw-A") == "a"  # the object after the first hook


def test_fail_closed_in_the_middle_answers_as_today(gw: Instance, tmp_path: Path) -> None:
    mark = tmp_path / "last-ran"
    resp = gw.expect(gw.get("/closed/x", {"X-Mark": str(mark)}), 500)
    assert resp.json() == {"error": "Middleware error"}
    assert not mark.exists()


def test_a_hooks_own_deadline_inside_a_merged_call(gw: Instance, tmp_path: Path) -> None:
    """The second hook's 300 ms (not the call's 2.3 s sum) ends it: fail_closed 504,
    fail_open goes on with the last hook."""
    mark = tmp_path / "last-ran"
    started = time.monotonic()
    resp = gw.expect(gw.get("/late/x", {"X-Mark": str(mark)}), 504)
    assert time.monotonic() - started < 1.4  # Slow sleeps 1.5 s
    assert resp.json() == {"error": "Hook timed out"}
    assert not mark.exists()
    echo = gw.expect(gw.get("/late_open/x", {"X-Mark": str(mark)}), 200).json()
    assert mark.read_text() == "ran"
    assert echo_header(echo, "X-Last-Saw-A") == "a"


def test_an_async_hook_in_the_middle(gw: Instance) -> None:
    echo = gw.expect(gw.get("/async/x"), 200).json()
    assert echo_header(echo, "X-Async") == "saw a"
    assert echo_header(echo, "X-Last-Saw-Async") == "saw a"


def test_large_bodies_through_shared_memory(gw: Instance) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB, not UTF-8: `body` text is ""
    text = b"t" * (1 << 20)
    before = gw.worker()["shm"]["bodies"]
    for sent, text_len in ((body, 0), (text, len(text) + 1000)):
        resp = gw.expect(gw.request("POST", "/body/x", body=sent), 200)
        echo = resp.json()
        want = sent + b"A" * 1000 + b"B"
        assert echo["body_len"] == len(want)
        assert echo["body_sha256"] == hashlib.sha256(want).hexdigest()
        assert echo_header(echo, "X-Body-Len") == str(len(sent) + 1000)
        assert echo_header(echo, "X-Body-Text-Len") == str(text_len)
    assert gw.worker()["shm"]["bodies"] - before == 2  # each request's one merged CALL


def test_response_hooks_in_one_call(gw: Instance) -> None:
    resp = gw.expect(gw.get("/resp/x"), 299)
    assert resp.headers["X-R1"] == "1"
    assert resp.headers["X-R2-Saw"] == "1"


def test_lua_hooks_in_a_merged_call(gw: Instance) -> None:
    echo = gw.expect(gw.get("/lua/x"), 200).json()
    assert echo_header(echo, "X-Lua-Pre") == "one"
    assert echo_header(echo, "X-Lua-Post") == "saw one"


def test_jsvm_hooks_in_a_merged_call(gw: Instance) -> None:
    echo = gw.expect(gw.get("/js/x"), 200).json()
    assert echo_header(echo, "X-Js-Pre") == "one"
    assert echo_header(echo, "X-Js-Post") == "saw one"
