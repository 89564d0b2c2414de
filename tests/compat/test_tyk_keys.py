"""Issue 13 item 8: keys and sessions as Tyk stores them, so Tyk and Coproc share a Redis.

Vectors come from Tyk's hash library (github.com/TykTechnologies/murmur3's
reference table, seed 0) and Tyk's formatting (hex of the big-endian sum):
murmur32("hello") = 248bfa47; x64_128("hello") = cbd8a7b341bd9b02,
5b1e906a48ae1d19 (murmur64 is the first half).
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from typing import Any

import pytest
from integration.harness import RedisServer, api_def

from gateway.storage.keyhash import generate_token, hash_str, token_org

SECRET = "compat-secret"
ADMIN = {"X-Tyk-Authorization": SECRET}
QUICK_FOX = "The quick brown fox jumps over the lazy dog."


@pytest.mark.parametrize(("text", "function", "expected"), [
    ("hello", "", "248bfa47"),
    ("hello", "murmur32", "248bfa47"),
    ("hello, world", "murmur32", "149bbb7f"),
    (QUICK_FOX, "murmur32", "d5c48bfc"),
    ("hello", "murmur64", "cbd8a7b341bd9b02"),
    (QUICK_FOX, "murmur64", "cd99481f9ee902c9"),
    ("hello", "murmur128", "cbd8a7b341bd9b025b1e906a48ae1d19"),
    ("19 Jan 2038 at 3:14:07 AM", "murmur128", "b89e5988b737affc664fc2950231b2cb"),
    ("hello", "sha256", hashlib.sha256(b"hello").hexdigest()),
])
def test_hash_functions_match_tyks(text: str, function: str, expected: str) -> None:
    assert hash_str(text, function) == expected


def test_a_json_key_is_hashed_with_the_function_it_names() -> None:
    """Tyk's HashStr: a generated key names its function (`h`); other keys use murmur32."""
    key = generate_token("5e9d9544a1dcd60001d0ed20", "abc", "murmur128")
    assert json.loads(base64.b64decode(key)) == {
        "org": "5e9d9544a1dcd60001d0ed20", "id": "abc", "h": "murmur128"}
    assert key.startswith("ey") and token_org(key) == "5e9d9544a1dcd60001d0ed20"
    assert hash_str(key) == hash_str(key, "murmur128") and len(hash_str(key)) == 32
    assert generate_token("org1", "abc") == "org1abc"  # legacy format without a function
    assert token_org("5e9d9544a1dcd60001d0ed20" + "f" * 32) == "5e9d9544a1dcd60001d0ed20"


def _instance(factory: Any, echo: Any, redis: RedisServer, **keys: Any) -> Any:
    api = api_def("keys", "/keys/", echo.url, use_keyless=False, org_id="default")
    settings = {"secret": SECRET, **redis.settings(), "hash_keys": True,
                "hash_key_function": "murmur64", **keys}
    return factory({"keys": api}, {}, settings)


def _redis_get(redis: RedisServer, name: str) -> dict[str, Any] | None:
    reply = redis.command("GET", name)
    if reply.startswith(b"$-1"):
        return None
    value: dict[str, Any] = json.loads(reply.split(b"\r\n", 2)[1])
    return value


def test_a_session_tyk_stored_under_its_hashed_name_is_accepted(
        coproc_factory: Any, echo_upstream: Any, redis_server: RedisServer) -> None:
    """1. A session is written to Redis as Tyk writes it: apikey-<murmur32 of the key>
       (key "hello": apikey-248bfa47), Tyk's session JSON.
    2. Coproc (hash_keys on) accepts "hello" on a protected API; a wrong key is refused.
    3. GET /tyk/keys/248bfa47?hashed=true returns it; the raw name is not a key.
    """
    session = {"org_id": "default", "rate": 100, "per": 1, "quota_max": -1,
               "access_rights": {"keys": {"api_id": "keys", "api_name": "keys",
                                          "versions": ["Default"]}},
               "meta_data": {"source": "tyk"}, "last_updated": "1700000000", "expires": 0}
    assert redis_server.command("SET", "apikey-248bfa47", json.dumps(session)) == b"+OK\r\n"
    gw = _instance(coproc_factory, echo_upstream, redis_server)
    gw.expect(gw.get("/keys/x", {"Authorization": "hello"}), 200)
    gw.expect(gw.get("/keys/x", {"Authorization": "hellx"}), 403)
    got = gw.expect(gw.request("GET", "/tyk/keys/248bfa47?hashed=true", ADMIN), 200).json()
    assert got["meta_data"] == {"source": "tyk"}
    gw.expect(gw.request("GET", "/tyk/keys/248bfa47", ADMIN), 404)


def test_a_key_created_through_the_admin_api_is_stored_under_tyks_name(
        coproc_factory: Any, echo_upstream: Any, redis_server: RedisServer) -> None:
    """1. POST /tyk/keys/create: the key is Tyk's JSON key (org, id, h=murmur64) and the
       reply's key_hash is its murmur64 hash.
    2. Redis holds the session as apikey-<key_hash>, Tyk's session JSON.
    3. The key works; a custom key (POST /tyk/keys/<name>) is named as Tyk names it and
       is accepted as given; GET /tyk/keys lists hashes only when listing is enabled.
    """
    gw = _instance(coproc_factory, echo_upstream, redis_server,
                   enable_hashed_keys_listing=True)
    body = json.dumps({"org_id": "default", "rate": 10, "per": 1,
                       "access_rights": {"keys": {"api_id": "keys"}}}).encode()
    reply = gw.expect(gw.request("POST", "/tyk/keys/create", ADMIN, body), 200).json()
    key, key_hash = reply["key"], reply["key_hash"]
    assert json.loads(base64.b64decode(key))["h"] == "murmur64"
    assert key_hash == hash_str(key, "murmur64") and len(key_hash) == 16
    stored = _redis_get(redis_server, f"apikey-{key_hash}")
    assert stored is not None and stored["rate"] == 10 and stored["org_id"] == "default"
    assert _redis_get(redis_server, f"apikey-{key}") is None
    gw.expect(gw.get("/keys/x", {"Authorization": key}), 200)

    custom = f"custom{uuid.uuid4().hex[:8]}"
    reply = gw.expect(gw.request("POST", f"/tyk/keys/{custom}", ADMIN, body), 200).json()
    assert reply["key"] == generate_token("default", custom, "murmur64")
    assert _redis_get(redis_server, f"apikey-{hash_str(reply['key'])}") is not None
    gw.expect(gw.get("/keys/x", {"Authorization": custom}), 200)
    inactive = json.dumps({**json.loads(body), "is_inactive": True}).encode()
    gw.expect(gw.request("PUT", f"/tyk/keys/{custom}", ADMIN, inactive), 200)
    gw.expect(gw.get("/keys/x", {"Authorization": custom}), 403)

    listed = gw.expect(gw.request("GET", "/tyk/keys", ADMIN), 200).json()["keys"]
    assert key_hash in listed and key not in listed
    gw.expect(gw.request("DELETE", f"/tyk/keys/{key_hash}?hashed=true", ADMIN), 200)
    gw.expect(gw.get("/keys/x", {"Authorization": key}), 403)


def test_hashed_listing_is_disabled_unless_enabled(coproc_factory: Any, echo_upstream: Any,
                                                   redis_server: RedisServer) -> None:
    gw = _instance(coproc_factory, echo_upstream, redis_server)
    resp = gw.expect(gw.request("GET", "/tyk/keys/", ADMIN), 404)
    assert resp.json() == {"status": "error", "message": "Hashed key listing is disabled in "
                           "config (enable_hashed_keys_listing)"}


def test_plain_keys_are_listed_by_prefix(coproc_factory: Any, echo_upstream: Any) -> None:
    """Without hash_keys (memory storage): keys are stored and listed as given."""
    api = api_def("keys", "/keys/", echo_upstream.url, use_keyless=False)
    gw = coproc_factory({"keys": api}, {}, {"secret": SECRET})
    body = json.dumps({"access_rights": {"keys": {"api_id": "keys"}}}).encode()
    for name in ("alpha1", "alpha2", "beta1"):
        gw.expect(gw.request("POST", f"/tyk/keys/{name}", ADMIN, body), 200)
    assert gw.expect(gw.request("GET", "/tyk/keys?filter=alpha", ADMIN), 200).json() == \
        {"keys": ["alpha1", "alpha2"]}
    assert gw.request("GET", "/tyk/keys/alpha1?hashed=true", ADMIN).status == 400


NO_RIGHTS = {"status": "error", "message": "Failed to create key, keys must have at least "
             "one Access Rights record set."}


def test_a_key_without_access_rights_is_refused_and_the_detail_reads_tyks_counter(
        coproc_factory: Any, echo_upstream: Any, redis_server: RedisServer) -> None:
    """Redis, hash_keys, allow_master_keys unset (Tyk's default: off):
    1. POST /tyk/keys/create without access rights: 400 and Tyk's message; POST
       /tyk/keys/<name>: 500; Redis gets no session;
    2. a key with a quota: its detail shows the quota left from the counter a Tyk
       gateway on the same Redis wrote (quota-<hash>, INCR'd: "2" used of 5), then
       from Coproc's own use of the same counter; by hash too; no unknown field."""
    gw = _instance(coproc_factory, echo_upstream, redis_server)
    before = redis_server.command("KEYS", "apikey-*")
    body = json.dumps({"org_id": "default", "rate": 10, "per": 1}).encode()
    resp = gw.expect(gw.request("POST", "/tyk/keys/create", ADMIN, body), 400)
    assert resp.json() == NO_RIGHTS
    resp = gw.expect(gw.request("POST", "/tyk/keys/nope", ADMIN, body), 500)
    assert resp.json() == {"status": "error", "message": "Failed to create key, ensure "
                           "security settings are correct."}
    assert redis_server.command("KEYS", "apikey-*") == before

    body = json.dumps({"org_id": "default", "quota_max": 5, "quota_renewal_rate": 3600,
                       "extra": "dropped",
                       "access_rights": {"keys": {"api_id": "keys"}}}).encode()
    created = gw.expect(gw.request("POST", "/tyk/keys/create", ADMIN, body), 200).json()
    key, key_hash = created["key"], created["key_hash"]
    redis_server.command("SET", f"quota-{key_hash}", "2")  # as Tyk's limiter leaves it
    redis_server.command("EXPIRE", f"quota-{key_hash}", "3600")
    got = gw.expect(gw.request("GET", f"/tyk/keys/{key}", ADMIN), 200).json()
    assert got["quota_remaining"] == 3 and "extra" not in got and got["org_id"] == "default"
    assert got["access_rights"] == {"keys": {"api_id": "keys"}} and "date_created" in got
    gw.expect(gw.get("/keys/x", {"Authorization": key}), 200)
    got = gw.expect(gw.request("GET", f"/tyk/keys/{key_hash}?hashed=true", ADMIN), 200).json()
    assert got["quota_remaining"] == 2


def test_allow_master_keys_and_the_live_quota_with_the_store_process(
        coproc_factory: Any, echo_upstream: Any) -> None:
    """Memory storage in the store process (two gateway processes), allow_master_keys
    true in the config file: 1. /tyk/keys/create without access rights makes a key
    that opens both APIs; 2. after two uses its detail's quota_remaining is 3 of 5,
    read from the store process's counter, whichever gateway process answers."""
    apis = {name: api_def(name, f"/{name}/", echo_upstream.url, use_keyless=False)
            for name in ("keys", "more")}
    gw = coproc_factory(apis, {}, {"secret": SECRET, "allow_master_keys": True,
                                   "coproc": {"gateway": {"processes": 2}}})
    body = json.dumps({"quota_max": 5, "quota_renewal_rate": 3600}).encode()
    key = gw.expect(gw.request("POST", "/tyk/keys/create", ADMIN, body), 200).json()["key"]
    gw.expect(gw.get("/keys/x", {"Authorization": key}), 200)
    gw.expect(gw.get("/more/x", {"Authorization": key}), 200)
    for _ in range(4):  # the two processes share the port: ask several times
        got = gw.expect(gw.request("GET", f"/tyk/keys/{key}", ADMIN), 200).json()
        assert got["quota_remaining"] == 3 and "access_rights" not in got, got
