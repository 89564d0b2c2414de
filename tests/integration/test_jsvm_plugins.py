"""JavaScript plugins (`driver: "otto"`, Tyk's JSVM API) through a real instance under
the `strict` sandbox: a pre middleware setting headers and params, an auth middleware
with ReturnAuthData, TykMakeHttpRequest to an allowed loopback server and to a denied
one (the gateway makes the call: the worker has no network), and an endless loop
stopped at jsvm_timeout while the worker keeps serving."""

from __future__ import annotations

import base64
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from integration.harness import Instance, api_def, echo_header, hook

JS = """
var samplePre = new TykJS.TykMiddleware.NewMiddleware({});
samplePre.NewProcessRequest(function(request, session, spec) {
  request.SetHeaders["X-Js-Pre"] = "set by " + spec.config_data.who;
  request.DeleteHeaders.push("X-Remove-Me");
  request.AddParams["from_js"] = "1";
  request.DeleteParams.push("drop");
  log("pre ran for " + request.URL);
  return samplePre.ReturnData(request, {});
});

var jsAuth = new TykJS.TykMiddleware.NewMiddleware({});
jsAuth.NewProcessRequest(function(request, session, spec) {
  var given = request.Headers["Authorization"];
  if (given === undefined || given[0] !== "js-secret-token") {
    request.ReturnOverrides.ResponseCode = 401;
    request.ReturnOverrides.ResponseError = "JS says no";
    return jsAuth.ReturnAuthData(request, session);
  }
  var s = {rate: 1000, per: 1, quota_max: 100, quota_renewal_rate: 3600,
           meta_data: {user: "js-user"}};
  return jsAuth.ReturnAuthData(request, s);
});

// As Tyk's own auth example: the credential is a query parameter, and the
// returned object has no AuthValue (Tyk keys such sessions by "").
var paramAuth = new TykJS.TykMiddleware.NewMiddleware({});
paramAuth.NewProcessRequest(function(request, session, spec) {
  var given = request.Params["auth"];
  if (given === undefined || given[0] !== "open-sesame") {
    request.ReturnOverrides.ResponseCode = 401;
    request.ReturnOverrides.ResponseError = "no auth param";
    return paramAuth.ReturnAuthData(request, session);
  }
  return paramAuth.ReturnAuthData(request, {rate: 1000, per: 1, meta_data: {via: "param"}});
});

var fetcher = new TykJS.TykMiddleware.NewMiddleware({});
fetcher.NewProcessRequest(function(request, session, spec) {
  var answer = TykMakeHttpRequest(JSON.stringify({
    Method: "GET", Domain: spec.config_data.target, Resource: "/fetched?via=js",
    Headers: {"X-From": "jsvm"}}));
  if (answer === undefined || answer === null) {
    request.SetHeaders["X-Fetch"] = "refused";
  } else {
    var got = JSON.parse(answer);
    var echo = JSON.parse(got.Body);
    request.SetHeaders["X-Fetch"] = got.Code + " " + echo.path + " " + echo.headers["X-From"];
  }
  return fetcher.ReturnData(request, {});
});
"""

# Its own file: an API whose JS uses a host-call function (TykMakeHttpRequest
# above) runs without QuickJS's time limit (docs/drivers/jsvm.md).
# Tyk's per-API folder hooks: middleware/<api_id>/<phase>/<name>.js, no entry
# in the definition; "_with_session" in the name gives the hook the session.
FOLDER_PRE = """
var folderPre = new TykJS.TykMiddleware.NewMiddleware({});
folderPre.NewProcessRequest(function(request, session, spec) {
  request.SetHeaders["X-Folder-Pre"] = "ran";
  return folderPre.ReturnData(request, {});
});
"""
FOLDER_POST = """
var tag_with_session = new TykJS.TykMiddleware.NewMiddleware({});
tag_with_session.NewProcessRequest(function(request, session, spec) {
  request.SetHeaders["X-Folder-Post"] = session.meta_data.via;
  return tag_with_session.ReturnData(request, session.meta_data);
});
"""

# Tyk's goja driver ("javascript"): inline base64 `code`, and a file of its own
# scope (its `var who` does not clash with the inline code's).
INLINE = """
var who = "inline";
var inlinePre = new TykJS.TykMiddleware.NewMiddleware({});
inlinePre.NewProcessRequest(function(request, session, spec) {
  request.SetHeaders["X-Inline"] = who;
  return inlinePre.ReturnData(request, {});
});
"""
SCOPED = """
var who = "file";
var scopedPost = new TykJS.TykMiddleware.NewMiddleware({});
scopedPost.NewProcessRequest(function(request, session, spec) {
  request.SetHeaders["X-Scoped"] = who;
  return scopedPost.ReturnData(request, {});
});
"""

# The goja storage functions: a counter that survives calls (in the gateway's
# storage), and a refused key that throws.
STORAGE = """
var counted = new TykJS.TykMiddleware.NewMiddleware({});
counted.NewProcessRequest(function(request, session, spec) {
  var n = TykStorageIncr("hits", 60);
  TykStorageSet("last", request.URL, 0);
  var refused = "no";
  try { TykStorageGet(""); } catch (e) { refused = e.message; }
  request.SetHeaders["X-Count"] = n + " " + TykStorageGet("last") + " " +
      TykStorageTTL("hits") + " " + refused;
  return counted.ReturnData(request, {});
});
"""

SPIN = """
var spin = new TykJS.TykMiddleware.NewMiddleware({});
spin.NewProcessRequest(function(request, session, spec) { while (true) {} });
"""


def js_api(api_id: str, echo_url: str, driver: str = "otto", **kw: Any) -> dict[str, Any]:
    definition = api_def(api_id, f"/{api_id}/", echo_url, **kw)
    definition["custom_middleware"]["driver"] = driver
    return definition


@pytest.fixture(scope="module")
def gw(module_coproc_factory: Any, echo_upstream: Any) -> Instance:
    url = echo_upstream.url.rstrip("/")
    port = urlsplit(url).port
    apis = {
        "pre": js_api("pre", url, pre=[hook("samplePre", "js/mw.js")],
                      config_data={"who": "jsvm"}),
        "auth": js_api("auth", url, auth_check=hook("jsAuth", "js/mw.js"),
                       use_keyless=False, enable_coprocess_auth=True),
        "fetch": js_api("fetch", url, pre=[hook("fetcher", "js/mw.js", timeout_ms=5000)],
                        config_data={"target": url}),
        # Allowed host, other port: not in the allowlist.
        "denied": js_api("denied", url, pre=[hook("fetcher", "js/mw.js", timeout_ms=5000)],
                         config_data={"target": f"http://127.0.0.1:{port + 1}"}),
        "spin": js_api("spin", url, pre=[hook("spin", "js/spin.js", timeout_ms=20_000)]),
        "goja": js_api("goja", url, driver="javascript",
                       pre=[hook("inlinePre", code=base64.b64encode(INLINE.encode()).decode())],
                       post=[hook("scopedPost", "js/scoped.js")]),
        "store": js_api("store", url, driver="javascript",
                        pre=[hook("counted", "js/storage.js", timeout_ms=5000)]),
        "folder": js_api("folder", url, auth_check=hook("paramAuth", "js/mw.js"),
                         use_keyless=False, enable_coprocess_auth=True),
    }
    settings = {"enable_jsvm": True, "jsvm_timeout": 1,
                "coproc": {"sandbox": {"profile": "strict"},
                           "jsvm": {"outbound_allow": [f"127.0.0.1:{port}"]}}}
    files = {"js/mw.js": JS, "js/spin.js": SPIN, "js/scoped.js": SCOPED, "js/storage.js": STORAGE,
             "folder/pre/folderPre.js": FOLDER_PRE,
             "folder/post/tag_with_session.js": FOLDER_POST}
    return module_coproc_factory(apis, files, settings)


def test_pre_middleware_headers_and_params_reach_the_upstream(gw: Instance) -> None:
    resp = gw.get("/pre/anything?drop=x&keep=y", {"X-Remove-Me": "1"})
    echo = gw.expect(resp, 200).json()
    assert echo_header(echo, "X-Js-Pre") == "set by jsvm"
    assert echo_header(echo, "X-Remove-Me") is None
    assert echo["query"] == {"keep": ["y"], "from_js": ["1"]}


def test_auth_middleware_accepts_the_token_and_refuses_others(gw: Instance) -> None:
    echo = gw.expect(gw.get("/auth/x", {"Authorization": "js-secret-token"}), 200).json()
    assert echo["path"].endswith("/x")
    resp = gw.expect(gw.get("/auth/x", {"Authorization": "wrong"}), 401)
    assert resp.json() == {"error": "JS says no"}
    gw.expect(gw.get("/auth/x"), 401)


def test_auth_by_query_parameter_without_auth_value_is_let_in(gw: Instance) -> None:
    """Tyk's JS auth takes a session with no AuthValue (its example reads `?auth=`);
    the API's folder hooks run around it, the post one with that session."""
    echo = gw.expect(gw.get("/folder/x?auth=open-sesame"), 200).json()
    assert echo_header(echo, "X-Folder-Pre") == "ran"
    assert echo_header(echo, "X-Folder-Post") == "param"
    resp = gw.expect(gw.get("/folder/x?auth=guess"), 401)
    assert resp.json() == {"error": "no auth param"}


def test_goja_inline_code_and_a_scoped_file(gw: Instance) -> None:
    echo = gw.expect(gw.get("/goja/x"), 200).json()
    assert (echo_header(echo, "X-Inline"), echo_header(echo, "X-Scoped")) == ("inline", "file")


def test_goja_storage_functions_keep_state_in_the_gateways_storage(gw: Instance) -> None:
    """Under the strict sandbox: the worker asks the gateway (host calls)."""
    first = echo_header(gw.expect(gw.get("/store/a"), 200).json(), "X-Count")
    second = echo_header(gw.expect(gw.get("/store/b"), 200).json(), "X-Count")
    assert first is not None and second is not None
    count, last, ttl, refused = second.split(" ", 3)
    assert int(count) == int(first.split(" ")[0]) + 1
    assert last.endswith("/b") and 0 < int(ttl) <= 60
    assert refused == "storage key must be 1-256 bytes"


def test_make_http_request_goes_through_the_gateway_to_an_allowed_server(
        gw: Instance) -> None:
    echo = gw.expect(gw.get("/fetch/x"), 200).json()
    assert echo_header(echo, "X-Fetch") == "200 /fetched jsvm"


def test_make_http_request_to_a_destination_off_the_allowlist_is_refused(
        gw: Instance) -> None:
    echo = gw.expect(gw.get("/denied/x"), 200).json()
    assert echo_header(echo, "X-Fetch") == "refused"


def test_endless_loop_stops_at_jsvm_timeout_and_the_next_request_is_served(
        gw: Instance) -> None:
    started = time.monotonic()
    gw.expect(gw.get("/spin/"), 504)
    # jsvm_timeout (1 s, QuickJS's clock runs late under load) stopped it, well
    # before the hook's 20 s deadline.
    assert time.monotonic() - started < 15
    echo = gw.expect(gw.get("/pre/after-spin"), 200).json()
    assert echo_header(echo, "X-Js-Pre") == "set by jsvm"
    gw.expect(gw.get("/spin/"), 504)
    gw.expect(gw.get("/pre/again"), 200)
