"""Authentication and session enforcement for protected APIs.

Built-in token auth (the key in `auth.auth_header_name`, its session in
storage under Tyk's key name: `gateway.keys`), the `auth_check` plugin (with
`id_extractor` session caching), or both, with `base_identity_provided_by`
choosing the session that wins.  Then the session's checks: inactive,
expired, access rights, rate limit, quota.  Auth always fails closed; a
storage outage is 503, never a free pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from config.apidef import JS_DRIVERS, HookDef
from gateway.credentials import find_key
from gateway.hooks import HookCallError
from gateway.keys import KEY_PREFIX, KeyStore
from gateway.log_once import hook_failure_level
from gateway.plan import ApiPlan, AuthMode
from gateway.policy import PolicyStore, apply_policies
from gateway.ratelimit import enforce_limits
from gateway.session import from_object, session_problem, to_object
from gateway.storage import Storage, StorageUnavailable
from gateway.tyk_object import (
    Reply,
    RequestState,
    apply_request,
    overrides_reply,
    request_object,
)

__all__ = ["KEY_PREFIX", "Authenticator", "Denied"]

log = logging.getLogger("coproc.gateway.auth")

NOT_AUTHORISED: Final = "Key not authorised"
FORBIDDEN: Final = "Forbidden"
FIELD_MISSING: Final = "Authorization field missing"
DISALLOWED: Final = "Access to this API has been disallowed"
_STORAGE_LOG_EVERY_S: Final = 5.0

#: (api_id, event name, event metadata, the API's handlers): queues an event.
EmitEvent = Callable[[str, str, dict[str, Any], Mapping[str, Any]], None]


class HookCaller(Protocol):
    async def call(self, api_id: str, hook_type: str, hook: HookDef,
                   obj: dict[str, Any]) -> dict[str, Any]: ...


class Denied(Exception):
    """The request is refused with this status, Tyk error message and headers."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None,
                 reply: Reply | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.reply = status, message, headers, reply


def strip_bearer(value: str) -> str:
    return value[7:].strip() if value[:7].lower() == "bearer " else value.strip()


class Authenticator:
    """One per gateway process; `check` runs for every request to a protected API."""

    def __init__(self, storage: Storage, hooks: HookCaller,
                 emit: EmitEvent | None = None, keys: KeyStore | None = None,
                 policies: PolicyStore | None = None, *, quota_headers: bool = True) -> None:
        self.storage = storage
        self.keys = keys or KeyStore(storage)
        self.policies = policies or PolicyStore()
        self.hooks = hooks
        # Tyk's rate_limit_response_headers: "quotas" (its default) puts the key's
        # quota in X-RateLimit-* on admitted requests only; "rate_limits" its rate
        # counts, on refusals (429) too.
        self.quota_headers = quota_headers
        self.emit: EmitEvent = emit or (lambda api_id, name, meta, handlers: None)
        self._storage_logged = 0.0
        #: Requests answered 503 for a storage outage (coproc_storage_errors_total).
        self.storage_errors = 0

    async def check(self, plan: ApiPlan, state: RequestState, rid: str) -> dict[str, str]:
        """Authenticate and enforce the session; return headers for the response.

        Raises `Denied`.  On success `state.session`/`state.metadata` carry the
        session for the later hooks.
        """
        try:
            key, session, fresh = await self._identify(plan, state, rid)
            self._apply_policies(plan, key, session)
            problem = session_problem(session, plan.api_id)
            if problem is not None:
                self._failed(plan, key, problem[1])
                raise Denied(*problem)
            # Counters are named by the key's hash when keys are hashed, as in Tyk.
            limited, headers = await enforce_limits(
                self.storage, self.keys.key_hash(key), session, plan.api_id,
                rate=not plan.api.disable_rate_limit, quota=not plan.api.disable_quota,
                quota_headers=self.quota_headers)
            if limited is not None:
                self.emit(plan.api_id, limited.event, {"message": limited.message, "key": key},
                          plan.api.event_handlers)
                raise Denied(limited.status, limited.message, limited.headers)
            state.response_headers.update(headers)
            if fresh:  # a session the plugin just made, with the quota counts
                await self.keys.save(key, session)
        except StorageUnavailable as exc:
            self._storage_down(plan, exc, rid)
            raise Denied(503, "Storage unavailable", {"Retry-After": "1"}) from None
        state.api_key = key
        state.session = to_object(session)
        # Object.metadata mirrors the session's, as Tyk builds it.
        state.metadata = dict(state.session.get("metadata") or {})
        return headers

    async def _identify(self, plan: ApiPlan, state: RequestState,
                        rid: str) -> tuple[str, dict[str, Any], bool]:
        """(key, session, whether the session is new and must be stored)."""
        if plan.auth is AuthMode.BUILTIN:
            return (*await self._token(plan, state), False)
        if plan.auth is AuthMode.PLUGIN:
            return await self._plugin(plan, state, rid)
        token = await self._token(plan, state)
        plugin = await self._plugin(plan, state, rid)
        # Both methods passed; Tyk lets the API say whose identity counts.
        return (*token, False) if plan.base_identity == "auth_token" else plugin

    async def _token(self, plan: ApiPlan, state: RequestState) -> tuple[str, dict[str, Any]]:
        key = strip_bearer(find_key(state, plan.api.token_auth))
        if not key:
            self._failed(plan, "", FIELD_MISSING)
            raise Denied(401, FIELD_MISSING)
        found = await self.keys.find(plan.api.org_id, key)
        if found is None:
            self._failed(plan, key, DISALLOWED)
            raise Denied(403, DISALLOWED)
        return found

    async def _plugin(self, plan: ApiPlan, state: RequestState,
                      rid: str) -> tuple[str, dict[str, Any], bool]:
        hook = plan.auth_hook
        assert hook is not None  # planned only with a hook
        cache_key = ""
        if plan.id_extractor is not None:
            value = plan.id_extractor.extract(state)
            if not value:
                self._failed(plan, "", FIELD_MISSING)
                raise Denied(400, FIELD_MISSING)
            cache_key = plan.id_extractor.session_id(plan.api.org_id, value)
            cached = await self.keys.get(cache_key)
            if cached is not None and (cached.get("id_extractor_deadline") or 0) > time.time():
                return cache_key, cached, False  # the plugin vouched for this credential
        state.session = {}  # the plugin starts from an empty session, as in Tyk
        obj = request_object(state, plan.spec, "auth_check", hook)
        try:
            got = await self.hooks.call(plan.api_id, "auth_check", hook, obj)
        except HookCallError as exc:
            log.log(hook_failure_level(plan.api_id, hook.name, exc),  # load_failed: once
                    "auth_check hook %s failed: %s", hook.name, exc,
                    extra={"fields": {**plan.log_fields, "hook": hook.name, "request_id": rid}})
            self._failed(plan, "", NOT_AUTHORISED)
            raise Denied(403, NOT_AUTHORISED) from None
        request = got.get("request") or {}
        apply_request(state, obj["request"], request)
        overrides = request.get("return_overrides") or {}
        reply = overrides_reply(overrides, NOT_AUTHORISED)
        if reply is not None:
            if reply.status >= 400:
                self._failed(plan, "", NOT_AUTHORISED)
            raise Denied(reply.status, "", reply=reply)  # the plugin's own answer
        if got.get("session") is None:
            # Tyk: a plugin that set up no session refuses the request (403), even
            # with a token in its metadata.  Only a gRPC server can answer so (the
            # worker's objects always carry the session they were sent).
            self._failed(plan, find_key(state, plan.api.plugin_auth), FORBIDDEN)
            raise Denied(403, FORBIDDEN)
        returned = got["session"]
        metadata = got.get("metadata") or {}
        # Tyk's Python auth plugins set metadata["token"]; accept the session's too.
        token = metadata.get("token") or (returned.get("metadata") or {}).get("token")
        # A coprocess auth plugin must name the key; Tyk's JSVM takes the plugin's
        # word without one (the key is then "", one shared by such callers), and
        # its own query-parameter example relies on that.
        if not token and hook.driver not in JS_DRIVERS:
            # Tyk's AuthFailure names the credential the request carried.
            self._failed(plan, find_key(state, plan.api.plugin_auth), FORBIDDEN)
            raise Denied(403, overrides.get("response_error") or FORBIDDEN)
        token = token or ""
        key = cache_key or token
        session = from_object(returned, await self.keys.get(key), metadata)
        return key, session, True

    def _apply_policies(self, plan: ApiPlan, key: str, session: dict[str, Any]) -> None:
        """The session's `apply_policies`, as Tyk applies them after auth (refusal: 403)."""
        problem = apply_policies(session, self.policies, plan.api.org_id)
        if problem:
            log.warning("key refused by its policies: %s", problem,
                        extra={"fields": plan.log_fields})
            message = DISALLOWED if plan.auth is AuthMode.BUILTIN else FORBIDDEN
            self._failed(plan, key, message)
            raise Denied(403, message)

    def _failed(self, plan: ApiPlan, key: str, message: str) -> None:
        self.emit(plan.api_id, "AuthFailure", {"message": message, "key": key},
                  plan.api.event_handlers)

    def _storage_down(self, plan: ApiPlan, exc: StorageUnavailable, rid: str) -> None:
        self.storage_errors += 1
        # One line per interval: an outage under load must not flood the log.
        now = time.monotonic()
        if now - self._storage_logged >= _STORAGE_LOG_EVERY_S:
            self._storage_logged = now
            log.error("storage unavailable, answering 503 to requests that need it: %s", exc,
                      extra={"fields": {**plan.log_fields, "request_id": rid}})

