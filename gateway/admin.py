"""The keys admin API, as Tyk's: /tyk/keys/{key} and /tyk/keys/create.

Guarded by the config's `secret` in `X-Tyk-Authorization` (Tyk's header, so
existing scripts work), compared in constant time.  With no secret the API is
disabled: every call gets 403 and nothing changes.  Bodies are Tyk session
JSON.  As in Tyk: keys are stored under Tyk's names (hashed with `hash_keys`,
`gateway.keys`); a created key, custom or generated, is named by
`hash_key_function` (with the org id); `?hashed=true` addresses a key by its
hash; `GET /tyk/keys` lists keys (hashes with `hash_keys`, and only with
`enable_hashed_keys_listing`), `?filter=` by prefix, `?api_id=` by access.

A key without access rights opens every API (Tyk's "master key", and the
request-time rule in `gateway.session`), so, as in Tyk, the admin API writes
one only with `allow_master_keys`; a policy's access rights count.
`GET /tyk/keys/{key}` answers as Tyk's handleGetDetail: the session with its
policies applied and its quota counts read from the live counters, written
as Tyk's Go struct (`gateway.session_state`).
"""

from __future__ import annotations

import copy
import hmac
import json
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from gateway import session_state
from gateway.keys import KeyStore
from gateway.policy import PolicyStore, apply_policies
from gateway.storage import StorageUnavailable

__all__ = ["add_key_routes", "add_policy_routes"]

log = logging.getLogger("coproc.gateway.admin")

_MAX_BODY = 1 << 20
_DENIED = "Attempted administrative access with invalid or missing key!"
#: Tyk's answers to a key without access rights when master keys are not allowed:
#: createKeyHandler's (400) and handleAddOrUpdate's (500) (gateway/api.go).
NO_ACCESS_RIGHTS: Final = \
    "Failed to create key, keys must have at least one Access Rights record set."
NOT_ADDED: Final = "Failed to create key, ensure security settings are correct."


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"status": "error", "message": message}, status=status)


def admin_denied(request: web.Request, secret: str) -> web.Response | None:
    """Tyk's 403 unless `X-Tyk-Authorization` is the configured secret (constant time).

    With no secret configured every admin endpoint is refused.
    """
    # Any bytes (a non-UTF-8 one arrives as a surrogate escape): never a 500.
    given = request.headers.get("X-Tyk-Authorization", "").encode("utf-8", "surrogateescape")
    if secret and hmac.compare_digest(given, secret.encode()):
        return None
    return _error(403, _DENIED)


class KeysApi:
    """Tyk's keys endpoints over a `KeyStore` (Tyk's names, hashing and lookup)."""

    def __init__(self, secret: str, keys: KeyStore, policies: PolicyStore | None = None) -> None:
        self.secret = secret
        self.keys = keys
        self.policies = policies or PolicyStore()

    async def handle(self, request: web.Request) -> web.Response:
        denied = admin_denied(request, self.secret)
        if denied is not None:
            return denied
        key = request.match_info.get("key", "")
        hashed = request.query.get("hashed", "") != ""
        try:
            if request.method == "POST" and request.path.rstrip("/") == "/tyk/keys/create":
                return await self._generate(request)
            if request.method == "GET" and not key:
                return await self._list(request)
            if request.method == "POST":
                return await self._add(request, key)
            if not key:
                return _error(400, "the key is missing from the path")
            if hashed and not self.keys.hashing:
                return _error(400, "Key requested by hash but key hashing is not enabled")
            if request.method == "GET":
                return await self._get(request, key, hashed)
            if request.method == "DELETE":
                return await self._delete(request, key, hashed)
            if request.method == "PUT":
                return await self._update(request, key, hashed)
            return _error(405, f"{request.method} is not supported on /tyk/keys")
        except StorageUnavailable as exc:
            log.error("keys API: storage unavailable: %s", exc)
            return _error(503, "Storage unavailable")

    async def _locate(self, request: web.Request, key: str, hashed: bool,
                      org_id: str | None = None) -> tuple[str, dict[str, Any]] | None:
        """(stored name, session) of the key in the path, or of the hash with ?hashed;
        the org is the query's `org_id` (for a PUT, the body's, as in Tyk)."""
        if hashed:
            session = await self.keys.get_hashed(key)
            return (key, session) if session is not None else None
        org = request.query.get("org_id", "") if org_id is None else org_id
        found = await self.keys.find(org, key)
        return (self.keys.key_hash(found[0]), found[1]) if found is not None else None

    async def _list(self, request: web.Request) -> web.Response:
        if self.keys.hashing and not self.keys.options.enable_hashed_keys_listing:
            return _error(404, "Hashed key listing is disabled in config "
                               "(enable_hashed_keys_listing)")
        api_id = request.query.get("api_id", "")
        prefix = "" if self.keys.hashing else request.query.get("filter", "")
        if api_id and not prefix and not self.keys.hashing:
            return _error(400, "The 'filter' parameter (Org ID) is required when filtering "
                               "by 'api_id' in legacy mode")
        names = [n for n in await self.keys.names() if n.startswith(prefix)]
        if api_id:
            names = [n for n in names if self._has_access(await self.keys.get_hashed(n), api_id)]
        return web.json_response({"keys": names})

    def _has_access(self, session: dict[str, Any] | None, api_id: str) -> bool:
        """Tyk's keyHasAccess: the API is in the stored access rights, or there are
        none and master keys are allowed."""
        if session is None:
            return False
        rights = session.get("access_rights")
        if isinstance(rights, Mapping) and rights:
            return api_id in rights
        return self.keys.options.allow_master_keys

    async def _get(self, request: web.Request, key: str, hashed: bool) -> web.Response:
        found = await self._locate(request, key, hashed)
        if found is None:
            return _error(404, "Key not found")
        return web.json_response(await self._detail(*found))

    async def _detail(self, name: str, stored: dict[str, Any]) -> dict[str, Any]:
        """Tyk's handleGetDetail: the session with its policies applied (no API: no org
        check, a policy error leaves what was applied), every quota from its live
        counter (`quota-<name>`, an API limit's `quota-<allowance_scope>-<name>`),
        the basic auth password blanked, written as Tyk's struct."""
        session = copy.deepcopy(stored)
        apply_policies(session, self.policies)
        state = session_state.decode(session)
        if state["quota_max"] != -1:
            await self._live_quota(state, f"quota-{name}", keep=True)
        for right in (state["access_rights"] or {}).values():
            limit = right["limit"]
            if session_state.API_LIMIT.is_zero(limit) or limit["quota_max"] in (-1, 0):
                continue
            scope = f"{right['allowance_scope']}-" if right["allowance_scope"] else ""
            await self._live_quota(limit, f"quota-{scope}{name}", keep=False)
        state["basic_auth_data"]["password"] = ""
        return session_state.encode(state)

    async def _live_quota(self, limits: dict[str, Any], counter: str, keep: bool) -> None:
        """`quota_remaining` (and `quota_renews`, which Tyk's sessions carry from the
        counter) of `limits` from the counter; without one, Tyk keeps the session's
        count (`keep`) or, for an API limit, counts the whole quota as left."""
        peeked = await self.keys.storage.quota_peek(counter, limits["quota_max"])
        if peeked is None:
            if not keep:
                limits["quota_remaining"] = limits["quota_max"]
            return
        limits["quota_remaining"] = peeked.remaining
        if peeked.reset > 0:
            limits["quota_renews"] = int(time.time() + peeked.reset)

    async def _delete(self, request: web.Request, key: str, hashed: bool) -> web.Response:
        found = await self._locate(request, key, hashed)
        if found is None or not await self.keys.delete_hashed(found[0]):
            return _error(404, "There is no such key found")
        return web.json_response({"key": key, "status": "ok", "action": "deleted"})

    def _master_key_refused(self, applied: Mapping[str, Any]) -> bool:
        """True (logged) for a key without access rights (once its policies are
        applied) when `allow_master_keys` is off."""
        rights = applied.get("access_rights")
        if isinstance(rights, Mapping) and rights:
            return False
        if not self.keys.options.allow_master_keys:
            log.error("Master keys disallowed in configuration, key not added.")
            return True
        log.warning("No API Access Rights set on key session, adding key to all APIs.")
        return False

    async def _generate(self, request: web.Request) -> web.Response:
        """POST /tyk/keys/create (Tyk's createKeyHandler): a policy error is 500, no
        access rights 400."""
        session = await _session_body(request)
        if isinstance(session, web.Response):
            return session
        applied = copy.deepcopy(session)
        problem = apply_policies(applied, self.policies)
        if problem:
            return _error(500, f"Failed to create key - {problem}")
        if self._master_key_refused(applied):
            return _error(400, NO_ACCESS_RIGHTS)
        return await self._create(request, session)

    async def _add(self, request: web.Request, key_id: str) -> web.Response:
        """POST /tyk/keys[/{key}] (Tyk's handleAddOrUpdate): policy errors are ignored,
        no access rights is 500."""
        session = await _session_body(request)
        if isinstance(session, web.Response):
            return session
        applied = copy.deepcopy(session)
        apply_policies(applied, self.policies)
        if self._master_key_refused(applied):
            return _error(500, NOT_ADDED)
        return await self._create(request, session, key_id)

    async def _create(self, request: web.Request, session: dict[str, Any],
                      key_id: str = "") -> web.Response:
        org_id = session.get("org_id") if isinstance(session.get("org_id"), str) else ""
        key = self.keys.make_key(str(org_id), key_id)  # Tyk names custom keys this way too
        session.setdefault("last_updated", str(int(time.time())))
        session["date_created"] = _go_now()
        await self.keys.save(key, session)
        await self._reset_quota(request, self.keys.key_hash(key))
        reply = {"key": key, "status": "ok", "action": "added"}
        if self.keys.hashing:
            reply["key_hash"] = self.keys.key_hash(key)
        return web.json_response(reply)

    async def _update(self, request: web.Request, key: str, hashed: bool) -> web.Response:
        session = await _session_body(request)
        if isinstance(session, web.Response):
            return session
        applied = copy.deepcopy(session)
        apply_policies(applied, self.policies)
        org_id = session.get("org_id")
        found = await self._locate(request, key, hashed,
                                   org_id if isinstance(org_id, str) else "")
        if found is None:
            return _error(404, "Key is not found")
        if self._master_key_refused(applied):
            return _error(500, NOT_ADDED)
        session.setdefault("last_updated", str(int(time.time())))
        # Tyk keeps the creation date.
        session.pop("date_created", None)
        if found[1].get("date_created"):
            session["date_created"] = found[1]["date_created"]
        await self.keys.save_hashed(found[0], session)
        await self._reset_quota(request, found[0])
        return web.json_response({"key": key, "status": "ok", "action": "modified"})

    async def _reset_quota(self, request: web.Request, name: str) -> None:
        # As Tyk: writing a key resets its quota unless asked not to.
        if request.query.get("suppress_reset") != "1":
            await self.keys.storage.delete(f"quota-{name}")


def _go_now() -> str:
    """Now as Go's encoder writes a time.Time (RFC 3339, trailing zeros of the
    fraction dropped), in UTC."""
    text = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


async def _session_body(request: web.Request) -> dict[str, Any] | web.Response:
    if request.content_length is not None and request.content_length > _MAX_BODY:
        return _error(413, f"a session is at most {_MAX_BODY} bytes")
    try:
        session: Any = json.loads(await request.read() or b"{}")
    except ValueError as exc:
        return _error(400, f"the body is not JSON: {exc}")
    if not isinstance(session, dict):
        return _error(400, "the body must be a JSON object (a Tyk session)")
    return session


def add_key_routes(app: web.Application, secret: str, keys: KeyStore,
                   policies: PolicyStore | None = None) -> None:
    """Register the keys API; warn when it is disabled (no secret)."""
    if not secret:
        log.warning("no `secret` in the gateway config: the admin API (/tyk/keys) is "
                    "disabled and answers 403")
    api = KeysApi(secret, keys, policies)
    app.router.add_post("/tyk/keys/create", api.handle)
    app.router.add_route("*", "/tyk/keys/{key}", api.handle)
    app.router.add_route("*", "/tyk/keys/", api.handle)
    app.router.add_route("*", "/tyk/keys", api.handle)


def add_policy_routes(app: web.Application, secret: str, policies: PolicyStore) -> None:
    """GET /tyk/policies and /tyk/policies/{id}: the policies loaded from files, as Tyk's."""

    async def handle(request: web.Request) -> web.Response:
        denied = admin_denied(request, secret)
        if denied is not None:
            return denied
        if request.method != "GET":
            return _error(405, "policies are read from files here: edit policies.policy_path "
                               "(they are re-read when they change)")
        policy_id = request.match_info.get("policy_id", "")
        policies.refresh()
        if not policy_id:
            return web.json_response(list(policies.policies.values()))
        policy = policies.get(policy_id)
        return web.json_response(policy) if policy else _error(404, "Policy not found")

    for path in ("/tyk/policies", "/tyk/policies/", "/tyk/policies/{policy_id}"):
        app.router.add_route("*", path, handle)
