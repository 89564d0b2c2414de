"""Auth, sessions, limits, the keys API and events, in-process over real HTTP.

The gateway app runs on a loopback port with a scripted fake hook client (the
real worker is exercised by tests/integration/test_auth*.py) and an echo
upstream; storage is the memory backend unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from integration.harness import free_port
from unit import inprocess

from config.gateway import KeyOptions, StorageConfig
from config.policies import PolicyOptions
from config.reader import ConfigError
from gateway.app import CHAIN, EVENTS, STORE
from gateway.hooks import HookTimeout
from gateway.storage.keyhash import hash_key

SECRET = "admin-secret"
ADMIN = {"X-Tyk-Authorization": SECRET}


class Env(inprocess.Env):
    #: The started APIs: a key put without access rights gets access to them (the
    #: admin API refuses a key without any, as Tyk does without allow_master_keys).
    api_ids: tuple[str, ...] = ()

    async def put_key(self, key: str, session: dict[str, Any]) -> None:
        rights = {api_id: {"api_id": api_id} for api_id in self.api_ids}
        status, body, _ = await self.request("POST", f"/tyk/keys/{key}",
                                             json={"access_rights": rights, **session},
                                             headers=ADMIN)
        assert status == 200 and body["action"] == "added", body

    def calls(self, name: str) -> int:
        return sum(1 for c in self.fake.calls if c[2] == name)


def api(api_id: str, listen: str, target: str, **fields: Any) -> dict[str, Any]:
    return {"api_id": api_id, "org_id": "org1", "use_keyless": False,
            "proxy": {"listen_path": listen, "target_url": target, "strip_listen_path": True},
            **fields}


def plugin_api(api_id: str, listen: str, target: str, **fields: Any) -> dict[str, Any]:
    mw = {"auth_check": {"name": "Auth"}, "post": [{"name": "Post"}],
          **fields.pop("custom_middleware", {})}
    return api(api_id, listen, target, enable_coprocess_auth=True, custom_middleware=mw,
               **fields)


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    async def start(*apis: dict[str, Any], secret: str = SECRET,
                    storage: StorageConfig | None = None, **fields: Any) -> Env:
        env = await starter(*apis, secret=secret, storage=storage or StorageConfig(), **fields)
        assert isinstance(env, Env)
        env.api_ids = tuple(a["api_id"] for a in apis)
        return env

    async with inprocess.gateway_factory(tmp_path, inprocess.FakeHooks, Env) as starter:
        yield start


# -- built-in token auth and the keys API -------------------------------------------------

async def test_token_auth_and_keys_api(gateway: Any, echo: str) -> None:
    """1. no key: 401; 2. unknown key: 403; 3. the admin API adds it: 200;
    4. GET returns it; 5. DELETE answers "deleted"; 6. the key is refused again."""
    env = await gateway(api("k", "/k", echo))
    assert (await env.request("GET", "/k/x"))[:2] == \
        (401, {"error": "Authorization field missing"})
    assert (await env.request("GET", "/k/x", headers={"Authorization": "abc"}))[:2] == \
        (403, {"error": "Access to this API has been disallowed"})
    await env.put_key("abc", {"rate": 100, "per": 1, "meta_data": {"user": "u1"}})
    status, body, _ = await env.request("GET", "/k/x", headers={"Authorization": "Bearer abc"})
    assert status == 200 and body["path"] == "/x"
    status, body, _ = await env.request("GET", "/tyk/keys/abc", headers=ADMIN)
    assert status == 200 and body["meta_data"] == {"user": "u1"}
    status, body, _ = await env.request("DELETE", "/tyk/keys/abc", headers=ADMIN)
    assert status == 200 and body["action"] == "deleted" and body["key"] == "abc"
    assert (await env.request("GET", "/k/x", headers={"Authorization": "abc"}))[0] == 403
    assert (await env.request("DELETE", "/tyk/keys/abc", headers=ADMIN))[0] == 404


async def test_configurable_auth_header(gateway: Any, echo: str) -> None:
    env = await gateway(api("k", "/k", echo, auth={"auth_header_name": "X-Api-Key"}))
    await env.put_key("key1", {})
    assert (await env.request("GET", "/k/", headers={"Authorization": "key1"}))[0] == 401
    assert (await env.request("GET", "/k/", headers={"X-Api-Key": "key1"}))[0] == 200


@pytest.mark.parametrize("headers", [{}, {"X-Tyk-Authorization": "wrong"},
                                     {"X-Tyk-Authorization": SECRET + "x"}])
async def test_keys_api_refuses_a_wrong_secret(gateway: Any, echo: str,
                                               headers: dict[str, str]) -> None:
    env = await gateway(api("k", "/k", echo))
    await env.put_key("kept", {})
    for method, path in [("POST", "/tyk/keys/new"), ("DELETE", "/tyk/keys/kept"),
                         ("GET", "/tyk/keys/kept"), ("POST", "/tyk/keys/create")]:
        assert (await env.request(method, path, json={}, headers=headers))[0] == 403
    assert (await env.request("GET", "/k/", headers={"Authorization": "kept"}))[0] == 200
    assert (await env.request("GET", "/k/", headers={"Authorization": "new"}))[0] == 403


async def test_keys_api_disabled_without_secret(gateway: Any, echo: str) -> None:
    env = await gateway(api("k", "/k", echo), secret="")
    status, _, _ = await env.request("POST", "/tyk/keys/x", json={},
                                     headers={"X-Tyk-Authorization": ""})
    assert status == 403


async def test_create_generates_a_key(gateway: Any, echo: str) -> None:
    env = await gateway(api("k", "/k", echo))
    status, body, _ = await env.request("POST", "/tyk/keys/create", headers=ADMIN,
                                        json={"access_rights": {"k": {"api_id": "k"}}})
    assert status == 200 and body["action"] == "added" and len(body["key"]) >= 16
    assert (await env.request("GET", "/k/", headers={"Authorization": body["key"]}))[0] == 200


async def test_put_needs_an_existing_key(gateway: Any, echo: str) -> None:
    env = await gateway(api("k", "/k", echo))
    assert (await env.request("PUT", "/tyk/keys/nope", json={}, headers=ADMIN))[0] == 404
    await env.put_key("yes", {})
    status, body, _ = await env.request("PUT", "/tyk/keys/yes", headers=ADMIN, json={
        "is_inactive": True, "access_rights": {"k": {"api_id": "k"}}})
    assert status == 200 and body["action"] == "modified"
    assert (await env.request("GET", "/k/", headers={"Authorization": "yes"}))[0] == 403


# -- keys without access rights (Tyk's master keys) --------------------------------------

NO_RIGHTS_400 = {"status": "error", "message": "Failed to create key, keys must have at "
                 "least one Access Rights record set."}
NO_RIGHTS_500 = {"status": "error",
                 "message": "Failed to create key, ensure security settings are correct."}


def policy_files(tmp_path: Path, *policies: dict[str, Any]) -> PolicyOptions:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    for policy in policies:
        (folder / f"{policy['id']}.json").write_text(json.dumps(policy))
    return PolicyOptions(policy_source="file", policy_path=folder)


@pytest.mark.parametrize("rights", [{}, {"access_rights": {}}, {"access_rights": None},
                                    {"access_rights": []}])
async def test_a_key_without_access_rights_is_refused(gateway: Any, echo: str,
                                                      rights: dict[str, Any]) -> None:
    """allow_master_keys off (Tyk's default): 1. /tyk/keys/create answers 400 (Tyk's
    createKeyHandler); 2. POST /tyk/keys/{key} and POST /tyk/keys answer 500, and a
    PUT of an existing key 500 (handleAddOrUpdate -> doAddOrUpdate), after the PUT's
    404 for an unknown key; 3. nothing was written: the old key still works, no key
    was added, and the refused names open nothing."""
    env = await gateway(api("k", "/k", echo), api("j", "/j", echo))
    await env.put_key("kept", {"access_rights": {"k": {"api_id": "k"}}})
    body = {"rate": 5, "per": 1, **rights}
    assert (await env.request("POST", "/tyk/keys/create", json=body, headers=ADMIN))[:2] == \
        (400, NO_RIGHTS_400)
    for method, path in [("POST", "/tyk/keys/master"), ("POST", "/tyk/keys"),
                         ("PUT", "/tyk/keys/kept")]:
        assert (await env.request(method, path, json=body, headers=ADMIN))[:2] == \
            (500, NO_RIGHTS_500), (method, path)
    assert (await env.request("PUT", "/tyk/keys/nope", json=body, headers=ADMIN))[:2] == \
        (404, {"status": "error", "message": "Key is not found"})
    assert (await env.request("GET", "/tyk/keys", headers=ADMIN))[1] == {"keys": ["kept"]}
    assert (await env.request("GET", "/k/", headers={"Authorization": "kept"}))[0] == 200
    assert (await env.request("GET", "/j/", headers={"Authorization": "kept"}))[0] == 403
    assert (await env.request("GET", "/j/", headers={"Authorization": "master"}))[0] == 403


async def test_access_rights_from_policies_count(gateway: Any, echo: str,
                                                 tmp_path: Path) -> None:
    """1. A key whose policy grants access rights is created by both paths, and
    opens only the policy's API; 2. /tyk/keys/create with a policy that does not
    exist: 500 "Failed to create key - <Tyk's policy error>"; 3. POST /tyk/keys/{key}
    ignores the policy error (as Tyk's handleAddOrUpdate): own access rights pass,
    none is 500."""
    gold = {"id": "gold", "org_id": "org1", "rate": 100, "per": 1,
            "access_rights": {"k": {"api_id": "k", "versions": ["Default"]}}}
    env = await gateway(api("k", "/k", echo), api("j", "/j", echo),
                        policies=policy_files(tmp_path, gold))
    created = await env.request("POST", "/tyk/keys/create", headers=ADMIN,
                                json={"org_id": "org1", "apply_policies": ["gold"]})
    assert created[0] == 200, created
    assert (await env.request("POST", "/tyk/keys/custom", headers=ADMIN,
                              json={"apply_policy_id": "gold"}))[0] == 200
    for key in (created[1]["key"], "custom"):
        assert (await env.request("GET", "/k/", headers={"Authorization": key}))[0] == 200
        assert (await env.request("GET", "/j/", headers={"Authorization": key}))[0] == 403
    missing = {"apply_policies": ["missing"]}
    assert (await env.request("POST", "/tyk/keys/create", json=missing, headers=ADMIN))[:2] \
        == (500, {"status": "error",
                  "message": 'Failed to create key - policy not found: "missing"'})
    assert (await env.request("POST", "/tyk/keys/nope", json=missing, headers=ADMIN))[:2] \
        == (500, NO_RIGHTS_500)
    own = {**missing, "access_rights": {"j": {"api_id": "j"}}}
    assert (await env.request("POST", "/tyk/keys/own", json=own, headers=ADMIN))[0] == 200


async def test_allow_master_keys_creates_keys_for_every_api(gateway: Any, echo: str) -> None:
    """allow_master_keys: true: 1. every path writes a key without access rights;
    2. it opens every API; 3. `?api_id=` lists it for any API (Tyk's keyHasAccess),
    which it does not with the default."""
    env = await gateway(api("k", "/k", echo), api("j", "/j", echo),
                        keys=KeyOptions(allow_master_keys=True))
    created = await env.request("POST", "/tyk/keys/create", json={"org_id": "org1"},
                                headers=ADMIN)
    assert created[0] == 200 and created[1]["key"].startswith("org1"), created
    assert (await env.request("POST", "/tyk/keys/master", json={"org_id": "org1"},
                              headers=ADMIN))[0] == 200
    await env.put_key("org1only-j", {"org_id": "org1", "access_rights": {"j": {}}})
    for key in (created[1]["key"], "org1master"):
        for path in ("/k/", "/j/"):
            assert (await env.request("GET", path, headers={"Authorization": key}))[0] == 200
    listed = (await env.request("GET", "/tyk/keys?api_id=k&filter=org1", headers=ADMIN))[1]
    assert sorted(listed["keys"]) == sorted([created[1]["key"], "org1master"])

    plain = await gateway(api("k", "/k", echo))
    await plain.client.app[STORE].set("apikey-org1old", b"{}")
    assert (await plain.request("GET", "/tyk/keys?api_id=k&filter=org1",
                                headers=ADMIN))[1] == {"keys": []}


@pytest.mark.parametrize("stored", [b"{}", b'{"access_rights": {}}',
                                    b'{"access_rights": null, "rate": 5, "per": 1}'])
async def test_a_stored_key_without_access_rights_opens_every_api(gateway: Any, echo: str,
                                                                  stored: bytes) -> None:
    """A session without access rights already in storage (written earlier, or by
    another gateway) is a master key at request time, as Tyk's AccessRightsCheck lets
    it through whatever allow_master_keys says; only writing one is refused."""
    env = await gateway(api("k", "/k", echo), api("j", "/j", echo))
    await env.client.app[STORE].set("apikey-old", stored)
    for path in ("/k/", "/j/"):
        assert (await env.request("GET", path, headers={"Authorization": "old"}))[0] == 200


# -- GET /tyk/keys/{key}: Tyk's SessionState --------------------------------------------

SESSION_ORDER = ["rate", "per", "date_created", "quota_max", "quota_renews",
                 "quota_remaining", "quota_renewal_rate", "access_rights", "meta_data",
                 "last_updated"]


async def test_key_detail_is_tyks_session_state_with_the_live_quota(gateway: Any,
                                                                    echo: str) -> None:
    """1. GET answers the session as Tyk's Go struct: its fields in order, zero ones
    left out (Tyk >= 5.12 tags them omitzero), unknown ones dropped, floats without
    a fraction, map keys sorted, `date_created` set when the key was written;
    2. before any use the stored `quota_remaining` shows (no counter yet, as in Tyk);
    3. after two uses it is the live counter's (and `quota_renews` its renewal);
    4. an exhausted quota (0) is left out; 5. writing the key again resets it."""
    env = await gateway(api("k", "/k", echo))
    session = {"rate": 10.0, "per": 60, "quota_max": 5, "quota_renewal_rate": 3600,
               "quota_remaining": 5, "is_inactive": False, "expires": 0, "unknown": 1,
               "tags": [], "meta_data": {"b": 1, "a": 2.0},
               "access_rights": {"k": {"api_id": "k", "api_name": "K",
                                       "versions": ["Default"], "limit": None}}}
    await env.put_key("q", session)
    status, got, _ = await env.request("GET", "/tyk/keys/q", headers=ADMIN)
    assert status == 200
    order = [f for f in SESSION_ORDER if f != "quota_renews"]
    assert list(got) == order, got
    assert got == {**got, "rate": 10, "per": 60, "quota_max": 5, "quota_remaining": 5,
                   "quota_renewal_rate": 3600, "meta_data": {"a": 2, "b": 1},
                   "access_rights": {"k": {"api_name": "K", "api_id": "k",
                                           "versions": ["Default"]}}}
    assert list(got["meta_data"]) == ["a", "b"] and isinstance(got["rate"], int)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", got["date_created"])

    for _ in range(2):
        assert (await env.request("GET", "/k/", headers={"Authorization": "q"}))[0] == 200
    got = (await env.request("GET", "/tyk/keys/q", headers=ADMIN))[1]
    assert list(got) == SESSION_ORDER and got["quota_remaining"] == 3
    assert time.time() + 3590 < got["quota_renews"] <= time.time() + 3600

    statuses = [(await env.request("GET", "/k/", headers={"Authorization": "q"}))[0]
                for _ in range(4)]
    assert statuses == [200, 200, 200, 403]
    got = (await env.request("GET", "/tyk/keys/q", headers=ADMIN))[1]
    assert "quota_remaining" not in got and got["quota_max"] == 5

    await env.put_key("q", session)  # resets the quota (no counter): the stored count
    assert (await env.request("GET", "/tyk/keys/q", headers=ADMIN))[1]["quota_remaining"] == 5


async def test_key_detail_applies_policies_and_reads_api_limit_counters(
        gateway: Any, echo: str, tmp_path: Path) -> None:
    """1. A key of a per-API policy shows the policy's access rights and limits, the
    API's `limit.quota_remaining` read from `quota-<allowance_scope>-<key>` (the whole
    quota without a counter), as Tyk's handleGetDetail; 2. by hash (`?hashed=true`,
    hash_keys on) the same; 3. a basic auth password is never shown."""
    per_api = {"id": "per-api", "org_id": "org1", "partitions": {"per_api": True},
               "access_rights": {"k": {"api_id": "k", "versions": ["Default"],
                                       "limit": {"rate": 7, "per": 1, "quota_max": 10,
                                                 "quota_renewal_rate": 60}}}}
    env = await gateway(api("k", "/k", echo), policies=policy_files(tmp_path, per_api),
                        keys=KeyOptions(hash_keys=True))
    await env.put_key("pk", {"apply_policies": ["per-api"], "access_rights": {},
                             "basic_auth_data": {"password": "secret", "hash_type": "bcrypt"}})
    name = hash_key("pk", True)
    got = (await env.request("GET", "/tyk/keys/pk", headers=ADMIN))[1]
    limit = {"rate": 7, "per": 1, "quota_max": 10, "quota_remaining": 10,
             "quota_renewal_rate": 60}
    assert got["access_rights"] == {"k": {"api_id": "k", "versions": ["Default"],
                                          "limit": limit, "allowance_scope": "k"}}
    assert got["apply_policies"] == ["per-api"] and got["rate"] == 7
    assert got["basic_auth_data"] == {"hash_type": "bcrypt"}

    store = env.client.app[STORE]
    for _ in range(3):  # a Tyk gateway on the same storage counted three uses
        await store.quota_hit(f"quota-k-{name}", 10, 60)
    for path in ("/tyk/keys/pk", f"/tyk/keys/{name}?hashed=true"):
        got = (await env.request("GET", path, headers=ADMIN))[1]
        assert got["access_rights"]["k"]["limit"]["quota_remaining"] == 7, path


# -- session checks ---------------------------------------------------------------------

@pytest.mark.parametrize(("session", "status", "message"), [
    ({"expires": 1}, 401, "Key has expired, please renew"),
    ({"is_inactive": True}, 403, "Key is inactive, please renew"),
    ({"access_rights": {"other": {"api_id": "other"}}}, 403,
     "Access to this API has been disallowed"),
])
async def test_session_checks_refuse(gateway: Any, echo: str, session: dict[str, Any],
                                     status: int, message: str) -> None:
    env = await gateway(api("k", "/k", echo))
    await env.put_key("s", session)
    assert (await env.request("GET", "/k/", headers={"Authorization": "s"}))[:2] == \
        (status, {"error": message})


async def test_session_checks_pass(gateway: Any, echo: str) -> None:
    env = await gateway(api("k", "/k", echo))
    await env.put_key("s", {"expires": int(time.time()) + 3600,
                            "access_rights": {"k": {"api_id": "k", "versions": ["Default"]}}})
    assert (await env.request("GET", "/k/", headers={"Authorization": "s"}))[0] == 200


async def test_quota_headers_by_default(gateway: Any, echo: str) -> None:
    """Tyk's default rate_limit_response_headers ("quotas"): X-RateLimit-* carry the
    key's quota after the request, on admitted answers only."""
    env = await gateway(api("k", "/k", echo))
    await env.put_key("q", {"rate": 2, "per": 60, "quota_max": 5, "quota_renewal_rate": 60})
    got = [await env.request("GET", "/k/", headers={"Authorization": "q"}) for _ in range(3)]
    assert [g[0] for g in got] == [200, 200, 429]
    assert [(g[2]["X-RateLimit-Limit"], g[2]["X-RateLimit-Remaining"]) for g in got[:2]] == \
        [("5", "4"), ("5", "3")]
    assert time.time() < int(got[0][2]["X-RateLimit-Reset"]) <= time.time() + 61
    assert "X-RateLimit-Limit" not in got[2][2]


async def test_rate_limit_429_with_headers(gateway: Any, echo: str) -> None:
    """Tyk's rate_limit_response_headers "rate_limits": the rate counts, on 429 too."""
    env = await gateway(api("k", "/k", echo), rate_limit_headers="rate_limits")
    await env.put_key("r", {"rate": 3, "per": 60})
    got = [await env.request("GET", "/k/", headers={"Authorization": "r"}) for _ in range(4)]
    assert [g[0] for g in got] == [200, 200, 200, 429]
    assert got[3][1] == {"error": "Rate Limit Exceeded"}
    headers = got[3][2]
    assert headers["X-RateLimit-Limit"] == "3" and headers["X-RateLimit-Remaining"] == "0"
    assert int(headers["X-RateLimit-Reset"]) > time.time()
    # Admitted responses carry the counts too (Tyk's behaviour), counting down.
    assert [g[2]["X-RateLimit-Remaining"] for g in got[:3]] == ["2", "1", "0"]
    assert all(g[2]["X-RateLimit-Limit"] == "3" for g in got[:3])


async def test_rate_limit_exact_under_concurrency(gateway: Any, echo: str) -> None:
    env = await gateway(api("k", "/k", echo))
    await env.put_key("c", {"rate": 10, "per": 60})
    got = await asyncio.gather(*(env.request("GET", "/k/", headers={"Authorization": "c"})
                                 for _ in range(50)))
    assert sorted(g[0] for g in got) == [200] * 10 + [429] * 40


async def test_quota_403_and_admin_reset(gateway: Any, echo: str) -> None:
    env = await gateway(api("k", "/k", echo))
    await env.put_key("q", {"quota_max": 2, "quota_renewal_rate": 3600})
    got = [await env.request("GET", "/k/", headers={"Authorization": "q"}) for _ in range(3)]
    assert [g[0] for g in got] == [200, 200, 403]
    assert got[2][1] == {"error": "Quota exceeded"}
    await env.put_key("q", {"quota_max": 2, "quota_renewal_rate": 3600})  # resets the quota
    assert (await env.request("GET", "/k/", headers={"Authorization": "q"}))[0] == 200


# -- the auth_check plugin ---------------------------------------------------------------

def valid_token_plugin(obj: dict[str, Any]) -> dict[str, Any]:
    """Tyk's acceptance plugin: valid_token gets a session with quota_max 1."""
    if obj["request"]["headers"].get("Authorization") != "valid_token":
        return {}
    return {"session": {"rate": 1000.0, "per": 1.0, "quota_max": 1,
                        "quota_renewal_rate": 60},
            "metadata": {"token": "valid_token"}}


async def test_plugin_auth_acceptance(gateway: Any, echo: str) -> None:
    """valid -> 200, invalid -> 403, valid again with quota_max 1 -> 403 (the quota
    is carried over although the plugin returns a fresh session), DELETE -> deleted."""
    env = await gateway(plugin_api("p", "/p", echo))
    env.fake.behaviours["Auth"] = valid_token_plugin
    assert (await env.request("GET", "/p/", headers={"Authorization": "valid_token"}))[0] == 200
    post = next(c for c in env.fake.calls if c[2] == "Post")[3]
    assert post["metadata"] == post["session"]["metadata"] == {"token": "valid_token"}
    assert post["session"]["quota_remaining"] == 0
    assert (await env.request("GET", "/p/", headers={"Authorization": "bad"}))[:2] == \
        (403, {"error": "Forbidden"})
    assert (await env.request("GET", "/p/", headers={"Authorization": "valid_token"}))[:2] == \
        (403, {"error": "Quota exceeded"})
    status, body, _ = await env.request("DELETE", "/tyk/keys/valid_token", headers=ADMIN)
    assert status == 200 and body["action"] == "deleted"
    assert (await env.request("GET", "/p/", headers={"Authorization": "valid_token"}))[0] == 200


async def test_plugin_gets_an_empty_session_and_errors_fail_closed(gateway: Any,
                                                                   echo: str) -> None:
    env = await gateway(plugin_api("p", "/p", echo))
    env.fake.behaviours["Auth"] = lambda obj: HookTimeout("slow")
    assert (await env.request("GET", "/p/"))[:2] == (403, {"error": "Key not authorised"})
    assert env.fake.calls[0][3]["session"] == {}
    assert env.calls("Post") == 0


async def test_nested_metadata_reaches_post_hook_as_json(gateway: Any, echo: str) -> None:
    env = await gateway(api("k", "/k", echo, custom_middleware={"post": [{"name": "Post"}]}))
    await env.put_key("m", {"meta_data": {"testkey": {"nestedkey": "nestedvalue"},
                                          "stringkey": "testvalue"}})
    assert (await env.request("GET", "/k/", headers={"Authorization": "m"}))[0] == 200
    obj = next(c for c in env.fake.calls if c[2] == "Post")[3]
    meta = obj["session"]["metadata"]
    assert json.loads(meta["testkey"]) == {"nestedkey": "nestedvalue"}
    assert meta["stringkey"] == "testvalue"
    assert obj["metadata"] == meta


@pytest.mark.parametrize(("base", "winner"), [("auth_token", "token-user"),
                                              ("custom_auth", "plugin-user")])
async def test_base_identity_provided_by(gateway: Any, echo: str, base: str,
                                         winner: str) -> None:
    env = await gateway(plugin_api("b", "/b", echo, use_standard_auth=True,
                                   base_identity_provided_by=base))
    env.fake.behaviours["Auth"] = lambda obj: {"metadata": {"token": "ptok",
                                                            "user": "plugin-user"}}
    await env.put_key("tkey", {"meta_data": {"user": "token-user"}})
    assert (await env.request("GET", "/b/"))[0] == 401  # key auth runs too
    assert (await env.request("GET", "/b/", headers={"Authorization": "tkey"}))[0] == 200
    post = next(c for c in env.fake.calls if c[2] == "Post")[3]
    assert post["session"]["metadata"]["user"] == winner


# -- id extractor ------------------------------------------------------------------------

def first_two_plugin() -> Callable[[dict[str, Any]], dict[str, Any]]:
    seen = {"n": 0}

    def auth(obj: dict[str, Any]) -> dict[str, Any]:
        seen["n"] += 1
        if seen["n"] > 2:
            return {}
        return {"session": {"id_extractor_deadline": int(time.time()) + 60},
                "metadata": {"token": f"t{seen['n']}"}}
    return auth


@pytest.mark.parametrize(("extractor", "request_kw", "other_kw"), [
    ({"extract_from": "header", "extract_with": "value",
      "extractor_config": {"header_name": "Authorization"}},
     {"headers": {"Authorization": "cred-a"}}, {"headers": {"Authorization": "cred-b"}}),
    ({"extract_from": "form", "extract_with": "value",
      "extractor_config": {"form_param_name": "user"}},
     {"data": {"user": "alice", "x": "1"}}, {"data": {"user": "bob"}}),
    ({"extract_from": "header", "extract_with": "regex",
      "extractor_config": {"header_name": "Authorization", "regex_expression": "[0-9]+",
                           "regex_match_index": 1}},
     {"headers": {"Authorization": "id 12 key 34"}},
     {"headers": {"Authorization": "id 12 key 56"}}),
])
async def test_id_extractor_caches_the_session(gateway: Any, echo: str, extractor: Any,
                                              request_kw: Any, other_kw: Any) -> None:
    env = await gateway(plugin_api("i", "/i", echo,
                                   custom_middleware={"id_extractor": extractor}))
    env.fake.behaviours["Auth"] = first_two_plugin()
    for _ in range(3):
        status, body, _ = await env.request("POST", "/i/", **request_kw)
        assert status == 200, body
    assert env.calls("Auth") == 1
    if "data" in request_kw:  # the form is still whole for the plugin and the upstream
        assert "user=alice" in env.fake.calls[0][3]["request"]["body"]
        assert "x=1" in body["body"]
    assert (await env.request("POST", "/i/", **other_kw))[0] == 200
    assert env.calls("Auth") == 2


async def test_id_extractor_missing_credential_is_400(gateway: Any, echo: str) -> None:
    env = await gateway(plugin_api("i", "/i", echo, custom_middleware={"id_extractor": {
        "extract_from": "header", "extract_with": "value",
        "extractor_config": {"header_name": "X-Id"}}}))
    assert (await env.request("GET", "/i/"))[:2] == \
        (400, {"error": "Authorization field missing"})
    assert env.calls("Auth") == 0


async def test_id_extractor_value_with_body_is_refused_at_load(gateway: Any,
                                                               echo: str) -> None:
    with pytest.raises(ConfigError, match="extract_with"):
        await gateway(plugin_api("i", "/i", echo, custom_middleware={"id_extractor": {
            "extract_from": "body", "extract_with": "value"}}))


# -- storage down, events ------------------------------------------------------------------

async def test_redis_down_is_503(gateway: Any, echo: str) -> None:
    env = await gateway(api("k", "/k", echo), storage=StorageConfig(
        type="redis", port=free_port(), timeout_ms=200))
    status, body, headers = await env.request("GET", "/k/", headers={"Authorization": "x"})
    assert (status, body) == (503, {"error": "Storage unavailable"})
    assert headers["Retry-After"] == "1"
    status, body, _ = await env.request("GET", "/tyk/keys/x", headers=ADMIN)
    assert status == 503


async def test_events_reach_webhook_without_delaying_requests(gateway: Any,
                                                              echo: str) -> None:
    received: list[dict[str, Any]] = []
    arrived = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        arrived.set()
        return web.Response(text="ok")

    sink_app = web.Application()
    sink_app.router.add_post("/events", hook)
    sink = TestServer(sink_app)
    await sink.start_server()
    try:
        handlers = {"events": {"AuthFailure": [
            {"handler_name": "eh_web_hook_handler",
             "handler_meta": {"target_path": str(sink.make_url("/events")), "method": "POST"}},
            {"handler_name": "eh_log_handler", "handler_meta": {"prefix": "audit"}}]}}
        env = await gateway(api("k", "/k", echo, event_handlers=handlers))
        assert (await env.request("GET", "/k/", headers={"Authorization": "nope"}))[0] == 403
        await asyncio.wait_for(arrived.wait(), 10)
        assert received[0]["event"] == "AuthFailure" and received[0]["api_id"] == "k"
        assert received[0]["message"] == "Access to this API has been disallowed"
        events = env.client.app[EVENTS]  # type: ignore[index]
        assert events.stats["dropped"] == 0
    finally:
        await sink.close()


async def test_auth_denials_are_counted(gateway: Any, echo: str) -> None:
    env = await gateway(api("k", "/k", echo))
    await env.request("GET", "/k/")
    assert env.client.app[CHAIN].stats["auth_denied"] == 1  # type: ignore[index]


async def test_worker_restarted_event_and_full_queue() -> None:
    from gateway.events import EventBus

    handlers = {"WorkerRestarted": [{"handler_name": "cp_dynamic_handler",
                                     "handler_meta": {"name": "OnRestart"}}]}
    bus = EventBus(lambda api_id: handlers, max_queued=2, specs={"a": {"APIID": "a"}})
    sent: list[tuple[str, str, Any, Any]] = []
    bus.send_event = lambda *args: sent.append(args) or True
    generation = [1]
    runner = asyncio.ensure_future(bus.run())
    watcher = asyncio.ensure_future(bus.watch_worker(lambda: generation[0], ["a"], 0.01))
    try:
        await asyncio.sleep(0.05)  # let the watcher read generation 1 first
        generation[0] = 2
        for _ in range(200):  # bounded wait for the delivery task
            if sent:
                break
            await asyncio.sleep(0.01)
        api_id, name, event, spec = sent[0]
        assert (api_id, name, spec) == ("a", "OnRestart", {"APIID": "a"})
        assert event["event"] == "WorkerRestarted" and event["generation"] == "2"
    finally:
        watcher.cancel()
        runner.cancel()
    for _ in range(5):  # nothing delivers now: the queue holds 2, the rest are dropped
        bus.emit("a", "WorkerRestarted", {})
    assert bus.stats["dropped"] == 3
