"""Issue 13 item 9 (policies): Tyk policy files applied to sessions as Tyk applies them.

The unit cases follow Tyk's policy service (internal/policy/apply.go): what a
policy clears and sets, partitions, several policies, and the refusals.  The
scenario runs a real instance with `policies.policy_path`, a key naming a
policy, and a Tyk-style auth plugin that sets `session.apply_policies`.
"""

from __future__ import annotations

import json
import textwrap
import uuid
from typing import Any

import pytest
from integration.harness import api_def, hook

from gateway.policy import PolicyStore, apply_policies

GOLD = {"id": "gold", "org_id": "org1", "rate": 100, "per": 1, "quota_max": 1000,
        "quota_renewal_rate": 3600, "tags": ["gold"], "meta_data": {"tier": "gold"},
        "access_rights": {"a": {"api_id": "a", "api_name": "A", "versions": ["Default"]}}}


def _store(*policies: dict[str, Any]) -> PolicyStore:
    return PolicyStore.of({p["id"]: p for p in policies})


def test_a_policy_replaces_the_sessions_limits_and_rights() -> None:
    session = {"apply_policies": ["gold"], "rate": 1, "per": 60, "quota_max": 5,
               "access_rights": {"other": {"api_id": "other"}}, "tags": ["mine"],
               "meta_data": {"user": "u"}}
    assert apply_policies(session, _store(GOLD), "org1") == ""
    assert (session["rate"], session["per"]) == (100, 1)
    assert (session["quota_max"], session["quota_renewal_rate"]) == (1000, 3600)
    assert list(session["access_rights"]) == ["a"]
    assert session["access_rights"]["a"]["versions"] == ["Default"]
    assert session["tags"] == ["gold", "mine"] and session["is_inactive"] is False
    assert session["meta_data"] == {"user": "u", "tier": "gold"}


def test_partitions_take_each_part_from_its_policy() -> None:
    acl = {"id": "acl", "org_id": "org1", "partitions": {"acl": True}, "rate": 1, "per": 1,
           "access_rights": {"a": {"versions": ["v1"]}, "b": {"versions": ["v2"]}}}
    rate = {"id": "rl", "org_id": "org1", "partitions": {"rate_limit": True}, "rate": 50,
            "per": 10, "access_rights": {"a": {}, "b": {}}}
    quota = {"id": "q", "org_id": "org1", "partitions": {"quota": True}, "quota_max": 7,
             "quota_renewal_rate": 60, "access_rights": {"a": {}, "b": {}}}
    session: dict[str, Any] = {"apply_policies": ["acl", "rl", "q"], "quota_max": 99}
    assert apply_policies(session, _store(acl, rate, quota), "org1") == ""
    assert sorted(session["access_rights"]) == ["a", "b"]
    assert (session["rate"], session["per"], session["quota_max"]) == (50, 10, 7)
    assert session["access_rights"]["b"]["limit"]["quota_max"] == 7


def test_several_policies_the_larger_allowance_wins() -> None:
    small = {**GOLD, "id": "small", "rate": 10, "per": 1, "quota_max": 10}
    unlimited = {**GOLD, "id": "big", "rate": 10, "per": 10, "quota_max": -1}
    session: dict[str, Any] = {"apply_policies": ["small", "big"]}
    assert apply_policies(session, _store(small, unlimited), "org1") == ""
    assert (session["rate"], session["per"], session["quota_max"]) == (10, 1, -1)


@pytest.mark.parametrize(("policies", "ids", "org", "reason"), [
    ([GOLD], ["missing"], "org1", 'policy not found: "missing"'),
    ([GOLD], ["gold"], "org2", "policy from different organisation"),
    ([{**GOLD, "partitions": {"per_api": True, "quota": True}}], ["gold"], "org1",
     "cannot apply policy gold which has per_api and any of partitions set"),
    ([{**GOLD, "access_rights": {}}], ["gold"], "org1", "no valid policies"),
    ([{**GOLD, "partitions": {"per_api": True}}, {**GOLD, "id": "p2", "partitions":
      {"acl": True}}], ["gold", "p2"], "org1", "per_api set and some are partitioned"),
])
def test_refusals(policies: list[dict[str, Any]], ids: list[str], org: str,
                  reason: str) -> None:
    session = {"apply_policies": ids}
    assert reason in apply_policies(session, _store(*policies), org)


def test_without_policies_an_api_limit_is_scoped_to_its_api() -> None:
    """Tyk's Apply with no policy ids: an access right with a limit of its own counts
    under its API's scope (its quota counter is quota-<api_id>-<key>); the rest stays."""
    session: dict[str, Any] = {"rate": 5, "per": 1, "access_rights": {
        "a": {"api_id": "a", "limit": {"quota_max": 5}}, "b": {"api_id": "b"},
        "c": {"api_id": "c", "limit": {"rate": 0, "per": 0}}}}
    assert apply_policies(session, _store(GOLD), "org1") == ""
    rights = session["access_rights"]
    assert rights["a"]["allowance_scope"] == "a"
    assert "allowance_scope" not in rights["b"] and "allowance_scope" not in rights["c"]
    assert (session["rate"], session["per"]) == (5, 1)


def test_acls_from_several_policies_scope_each_api_by_its_policy() -> None:
    """Tyk's SetBy: with the ACLs from more than one policy, an API's counters are
    scoped by the policy that set its ACL; with one policy, they are not scoped."""
    silver = {**GOLD, "id": "silver", "quota_max": 10,
              "access_rights": {"b": {"api_id": "b", "versions": ["Default"]}}}
    session: dict[str, Any] = {"apply_policies": ["gold", "silver"]}
    assert apply_policies(session, _store(GOLD, silver), "org1") == ""
    rights = session["access_rights"]
    assert (rights["a"]["allowance_scope"], rights["b"]["allowance_scope"]) == ("gold", "silver")
    assert (rights["a"]["limit"]["quota_max"], rights["b"]["limit"]["quota_max"]) == (1000, 10)
    both = {**GOLD, "access_rights": {"a": {"api_id": "a"}, "b": {"api_id": "b"}}}
    alone: dict[str, Any] = {"apply_policies": ["gold"]}
    assert apply_policies(alone, _store(both), "org1") == ""
    assert not any(r.get("allowance_scope") for r in alone["access_rights"].values())


def test_an_inactive_policy_makes_the_key_inactive_and_legacy_id_works() -> None:
    session: dict[str, Any] = {"apply_policy_id": "gold"}
    assert apply_policies(session, _store({**GOLD, "is_inactive": True}), "org1") == ""
    assert session["is_inactive"] is True


AUTH_PLUGIN = textwrap.dedent('''
    from tyk.decorators import *
    from gateway import TykGateway as tyk

    @Hook
    def PolicyAuth(request, session, metadata, spec):
        token = request.get_header("Authorization")
        if token and token.startswith("user-"):
            session.apply_policies.append("one-per-hour")
            metadata["token"] = token
        return request, session, metadata
''')

SECRET = "policy-secret"
ADMIN = {"X-Tyk-Authorization": SECRET}


def test_policies_from_files_limit_keys_and_plugin_sessions(coproc_factory: Any,
                                                            echo_upstream: Any) -> None:
    """1. policy_path holds "two-per-minute" (rate 2/60 s on API keys) and
       "one-per-hour" (quota 1 on API plugin); GET /tyk/policies lists both.
    2. A key naming "two-per-minute" passes twice, then 429; on API other
       (not in the policy's access rights) it is refused.
    3. A plugin session that sets apply_policies gets the quota: 200, then 403.
    """
    two = {"id": "two-per-minute", "org_id": "org1", "rate": 2, "per": 60, "quota_max": -1,
           "access_rights": {"keys": {"api_id": "keys", "versions": ["Default"]}}}
    one = {"id": "one-per-hour", "org_id": "org1", "quota_max": 1, "quota_renewal_rate": 3600,
           "rate": 100, "per": 1, "access_rights": {"plugin": {"api_id": "plugin"}}}
    apis = {
        "keys": api_def("keys", "/keys/", echo_upstream.url, use_keyless=False, org_id="org1"),
        "other": api_def("other", "/other/", echo_upstream.url, use_keyless=False,
                         org_id="org1"),
        "plugin": api_def("plugin", "/plugin/", echo_upstream.url, use_keyless=False,
                          org_id="org1", enable_coprocess_auth=True,
                          auth_check=hook("PolicyAuth", "pol/mw.py")),
    }
    plugins = {"pol/mw.py": AUTH_PLUGIN, "../policies/two.json": json.dumps(two),
               "../policies/one.json": json.dumps(one)}
    gw = coproc_factory(apis, plugins, {"secret": SECRET,
                                        "policies": {"policy_source": "file",
                                                     "policy_path": "policies"}})
    listed = gw.expect(gw.request("GET", "/tyk/policies", ADMIN), 200).json()
    assert sorted(p["id"] for p in listed) == ["one-per-hour", "two-per-minute"]
    gw.expect(gw.request("GET", "/tyk/policies/nope", ADMIN), 404)

    key = f"k{uuid.uuid4().hex}"
    body = json.dumps({"org_id": "org1", "apply_policies": ["two-per-minute"]}).encode()
    gw.expect(gw.request("POST", f"/tyk/keys/{key}", ADMIN, body), 200)
    auth = {"Authorization": key}
    assert [gw.get("/keys/x", auth).status for _ in range(3)] == [200, 200, 429]
    gw.expect(gw.get("/other/x", auth), 403)

    user = {"Authorization": f"user-{uuid.uuid4().hex}"}
    gw.expect(gw.get("/plugin/x", user), 200)
    assert gw.get("/plugin/x", user).json() == {"error": "Quota exceeded"}


def test_per_api_limits_are_enforced_each_in_its_own_scope(coproc_factory: Any,
                                                          echo_upstream: Any) -> None:
    """A per_api policy: API tight allows 1 request a minute and 2 in all, API loose 100
    a second.  tight is refused at its own rate (the session has none) and counts its
    own quota (GET /tyk/keys shows it); loose is untouched by either."""
    per_api = {"id": "per-api", "org_id": "org1", "partitions": {"per_api": True},
               "access_rights": {
                   "tight": {"api_id": "tight", "versions": ["Default"],
                             "limit": {"rate": 1, "per": 60, "quota_max": 2,
                                       "quota_renewal_rate": 3600}},
                   "loose": {"api_id": "loose", "versions": ["Default"],
                             "limit": {"rate": 100, "per": 1, "quota_max": -1}}}}
    apis = {name: api_def(name, f"/{name}/", echo_upstream.url, use_keyless=False,
                          org_id="org1") for name in ("tight", "loose")}
    gw = coproc_factory(apis, {"../policies/per-api.json": json.dumps(per_api)},
                        {"secret": SECRET, "policies": {"policy_source": "file",
                                                        "policy_path": "policies"}})
    key = f"k{uuid.uuid4().hex}"
    body = json.dumps({"org_id": "org1", "apply_policies": ["per-api"]}).encode()
    stored = gw.expect(gw.request("POST", f"/tyk/keys/{key}", ADMIN, body), 200).json()["key"]
    auth = {"Authorization": key}
    first = gw.expect(gw.get("/tight/x", auth), 200)
    # Tyk's default X-RateLimit-*: the API's own quota (2), one used.
    assert (first.headers["X-RateLimit-Limit"], first.headers["X-RateLimit-Remaining"]) == \
        ("2", "1")
    gw.expect(gw.get("/tight/x", auth), 429)  # its own rate, not the session's (none)
    assert [gw.get("/loose/x", auth).status for _ in range(5)] == [200] * 5
    detail = gw.expect(gw.request("GET", f"/tyk/keys/{stored}", ADMIN), 200).json()
    assert detail["access_rights"]["tight"]["limit"]["quota_remaining"] == 1
