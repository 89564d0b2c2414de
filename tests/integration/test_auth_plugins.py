"""Auth plugins, built-in keys and the id extractor through real processes.

Each module-scoped instance (one on memory storage, one on a real
redis-server) carries a Tyk-style `auth_check` API, a built-in key API with a
post hook, and one API per id extractor kind.  Tokens are unique per test, so
the shared Redis never carries state from one test into another.
"""

from __future__ import annotations

import json
import textwrap
import uuid
from typing import Any

import pytest
from integration.harness import Instance, api_def, echo_header, hook, poll

SECRET = "test-admin-secret"
ADMIN = {"X-Tyk-Authorization": SECRET}

PLUGIN = textwrap.dedent('''
    import time

    from tyk.decorators import *
    from gateway import TykGateway as tyk


    @Hook
    def MyAuthHook(request, session, metadata, spec):
        auth_header = request.get_header("Authorization")
        if auth_header.startswith("valid_"):
            session.rate = 1000.0
            session.per = 1.0
            session.quota_max = 1
            session.quota_renewal_rate = 60
            metadata["token"] = auth_header
        return request, session, metadata


    @Hook
    def ShowMetadata(request, session, spec):
        request.add_header("X-Testkey", session.metadata["testkey"])
        request.add_header("X-Stringkey", session.metadata["stringkey"])
        return request, session


    _calls = {}


    def _first_two(name, request, session, metadata):
        _calls[name] = _calls.get(name, 0) + 1
        if _calls[name] <= 2:
            metadata["token"] = "idx-%s-%d" % (name, _calls[name])
            session.id_extractor_deadline = int(time.time()) + 60
        request.add_header("X-Plugin-Calls", str(_calls[name]))
        return request, session, metadata


    @Hook
    def IdHeader(request, session, metadata, spec):
        return _first_two("header", request, session, metadata)


    @Hook
    def IdForm(request, session, metadata, spec):
        return _first_two("form", request, session, metadata)


    @Hook
    def IdRegex(request, session, metadata, spec):
        return _first_two("regex", request, session, metadata)


    @Event
    def OnAuthFailure(event, spec):
        # Tyk's event object: message = {Type, Meta, TimeStamp}, handler_name, spec.
        meta = event.message["Meta"]
        tyk.store_data("auth-failure-" + meta["Key"],
                       event.message["Type"] + ": " + meta["Message"], 60)


    @Hook
    def Trigger(request, session, spec):
        tyk.trigger_event("MyEvent", request.get_header("X-Event-Payload"))
        return request, session


    @Event
    def OnMyEvent(event, spec):
        tyk.store_data("my-event-" + event.message["Meta"]["Message"],
                       event.handler_name + " " + spec["APIID"], 60)


    @Hook
    def ReadKv(request, session, spec):
        value = tyk.get_data(request.get_header("X-Kv-Key")).decode()
        request.add_header("X-Kv-Got", value or "<empty>")
        return request, session
''').lstrip()


def protected(api_id: str, echo_url: str, auth_hook: str = "", *,
              extractor: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    definition = api_def(api_id, f"/{api_id}/", echo_url,
                         auth_check=hook(auth_hook, "auth/mw.py") if auth_hook else None,
                         use_keyless=False, enable_coprocess_auth=bool(auth_hook), **extra)
    if extractor is not None:
        definition["custom_middleware"]["id_extractor"] = extractor
    return definition


def dynamic(event: str, handler: str) -> dict[str, Any]:
    return {"events": {event: [
        {"handler_name": "cp_dynamic_handler", "handler_meta": {"name": handler}},
        {"handler_name": "eh_log_handler", "handler_meta": {"prefix": "test"}}]}}


def apis(echo_url: str) -> dict[str, dict[str, Any]]:
    header = {"extract_from": "header", "extract_with": "value",
              "extractor_config": {"header_name": "X-User"}}
    form = {"extract_from": "form", "extract_with": "value",
            "extractor_config": {"form_param_name": "user"}}
    regex = {"extract_from": "header", "extract_with": "regex",
             "extractor_config": {"header_name": "Authorization",
                                  "regex_expression": "[a-z]+-[0-9a-f]+",
                                  "regex_match_index": 1}}
    return {
        "plugin": protected("plugin", echo_url, "MyAuthHook"),
        "keys": protected("keys", echo_url, post=[hook("ShowMetadata", "auth/mw.py")],
                          event_handlers=dynamic("AuthFailure", "OnAuthFailure")),
        "trigger": api_def("trigger", "/trigger/", echo_url, pre=[hook("Trigger", "auth/mw.py")],
                           event_handlers=dynamic("MyEvent", "OnMyEvent")),
        "kvread": api_def("kvread", "/kvread/", echo_url, pre=[hook("ReadKv", "auth/mw.py")]),
        "idheader": protected("idheader", echo_url, "IdHeader", extractor=header),
        "idform": protected("idform", echo_url, "IdForm", extractor=form),
        "idregex": protected("idregex", echo_url, "IdRegex", extractor=regex),
    }


@pytest.fixture(scope="module", params=["memory", "redis"])
def gw(request: pytest.FixtureRequest, module_coproc_factory: Any,
       echo_upstream: Any) -> Instance:
    settings: dict[str, Any] = {"secret": SECRET}
    if request.param == "redis":
        settings.update(request.getfixturevalue("redis_server").settings())
    return module_coproc_factory(apis(echo_upstream.url), {"auth/mw.py": PLUGIN}, settings)


def test_tyk_auth_acceptance(gw: Instance) -> None:
    """1. valid token -> 200; 2. invalid -> 403; 3. valid again, quota_max 1 -> 403;
    4. DELETE /tyk/keys/<token> -> "deleted"."""
    token = f"valid_{uuid.uuid4().hex}"
    gw.expect(gw.get("/plugin/", {"Authorization": token}), 200)
    resp = gw.expect(gw.get("/plugin/", {"Authorization": "invalid"}), 403)
    assert resp.json() == {"error": "Forbidden"}
    resp = gw.expect(gw.get("/plugin/", {"Authorization": token}), 403)
    assert resp.json() == {"error": "Quota exceeded"}
    resp = gw.expect(gw.request("DELETE", f"/tyk/keys/{token}", ADMIN), 200)
    assert resp.json()["action"] == "deleted"


def test_post_hook_sees_nested_metadata_as_json(gw: Instance) -> None:
    key = f"key-{uuid.uuid4().hex}"
    session = {"meta_data": {"testkey": {"nestedkey": "nestedvalue"},
                             "stringkey": "testvalue"},
               "access_rights": {"keys": {"api_id": "keys"}}}
    gw.expect(gw.request("POST", f"/tyk/keys/{key}", ADMIN, json.dumps(session).encode()),
              200)
    echo = gw.expect(gw.get("/keys/", {"Authorization": key}), 200).json()
    assert json.loads(echo_header(echo, "X-Testkey") or "") == {"nestedkey": "nestedvalue"}
    assert echo_header(echo, "X-Stringkey") == "testvalue"


def test_keys_api_wrong_secret_changes_nothing(gw: Instance) -> None:
    key = f"key-{uuid.uuid4().hex}"
    resp = gw.request("POST", f"/tyk/keys/{key}", {"X-Tyk-Authorization": "nope"}, b"{}")
    gw.expect(resp, 403)
    gw.expect(gw.get("/keys/", {"Authorization": key}), 403)


def _id_cases() -> list[tuple[str, Any, Any]]:
    def header(value: str) -> dict[str, Any]:
        return {"headers": {"X-User": value}}

    def form(value: str) -> dict[str, Any]:
        return {"headers": {"Content-Type": "application/x-www-form-urlencoded"},
                "body": f"user={value}&other=1".encode()}

    def regex(value: str) -> dict[str, Any]:
        return {"headers": {"Authorization": f"id-00 {value}"}}

    return [("idheader", header, "header"), ("idform", form, "form"),
            ("idregex", regex, "regex")]


@pytest.mark.parametrize(("api_id", "make", "name"), _id_cases())
def test_id_extractor_caches_sessions(gw: Instance, api_id: str, make: Any,
                                      name: str) -> None:
    """The plugin accepts only its first two calls: 1. credential A three times -> 200,
    plugin called once; 2. credential B -> reaches the plugin (2nd call) -> 200;
    3. credential C -> 3rd call, refused -> 403."""
    first, second, third = (f"cred-{uuid.uuid4().hex[:12]}" for _ in range(3))
    calls = []
    for _ in range(3):
        kw = make(first)
        echo = gw.expect(gw.request("POST", f"/{api_id}/", kw["headers"], kw.get("body")),
                         200).json()
        calls.append(echo_header(echo, "X-Plugin-Calls"))
        if name == "form":  # the plugin read the form; the upstream still gets all of it
            assert echo["body"] == f"user={first}&other=1"
    # Cache hits never reach the plugin, so the header stays the first call's.
    assert calls[0] is not None and calls[1:] == [None, None]
    kw = make(second)
    gw.expect(gw.request("POST", f"/{api_id}/", kw["headers"], kw.get("body")), 200)
    kw = make(third)
    gw.expect(gw.request("POST", f"/{api_id}/", kw["headers"], kw.get("body")), 403)


def _kv(gw: Instance, key: str) -> str | None:
    return echo_header(gw.expect(gw.get("/kvread/", {"X-Kv-Key": key}), 200).json(),
                       "X-Kv-Got")


def test_events_reach_python_event_handlers(gw: Instance) -> None:
    """1. an unknown key -> 403 at once, and AuthFailure runs @Event OnAuthFailure in the
    worker (it stores what it saw); 2. a plugin's trigger_event runs @Event OnMyEvent."""
    key = f"nokey-{uuid.uuid4().hex}"
    gw.expect(gw.get("/keys/", {"Authorization": key}), 403)
    seen = poll("OnAuthFailure to store its event",
                lambda: (_kv(gw, f"auth-failure-{key}") or "<empty>") != "<empty>"
                and _kv(gw, f"auth-failure-{key}"), 15)
    assert seen == "AuthFailure: Access to this API has been disallowed"
    payload = uuid.uuid4().hex
    gw.expect(gw.get("/trigger/", {"X-Event-Payload": payload}), 200)
    got = poll("OnMyEvent to store its event",
               lambda: (_kv(gw, f"my-event-{payload}") or "<empty>") != "<empty>"
               and _kv(gw, f"my-event-{payload}"), 15)
    assert got == "OnMyEvent trigger"
