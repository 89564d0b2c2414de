"""The keys admin API, as Tyk's: /tyk/keys/{key} and /tyk/keys/create.

Guarded by the config's `secret` in `X-Tyk-Authorization` (Tyk's header, so
existing scripts work), compared in constant time.  With no secret the API is
disabled: every call gets 403 and nothing changes.  Bodies are Tyk session
JSON; keys are stored as given (not hashed).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
from typing import Any

from aiohttp import web

from gateway.auth import KEY_PREFIX, load_session, save_session
from gateway.storage import Storage, StorageUnavailable

__all__ = ["add_key_routes"]

log = logging.getLogger("coproc.gateway.admin")

_MAX_BODY = 1 << 20
_DENIED = "Attempted administrative access with invalid or missing key!"


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
    def __init__(self, secret: str, storage: Storage) -> None:
        self.secret = secret
        self.storage = storage

    async def handle(self, request: web.Request) -> web.Response:
        denied = admin_denied(request, self.secret)
        if denied is not None:
            return denied
        key = request.match_info.get("key", "")
        try:
            if request.method == "POST" and request.path.rstrip("/") == "/tyk/keys/create":
                return await self._write(request, os.urandom(16).hex(), "added")
            if not key:
                return _error(400, "the key is missing from the path")
            if request.method == "GET":
                return await self._get(key)
            if request.method == "DELETE":
                return await self._delete(key)
            return await self._write(request, key, "added" if request.method == "POST"
                                     else "modified")
        except StorageUnavailable as exc:
            log.error("keys API: storage unavailable: %s", exc)
            return _error(503, "Storage unavailable")

    async def _get(self, key: str) -> web.Response:
        session = await load_session(self.storage, key)
        if session is None:
            return _error(404, "Key not found")
        return web.json_response(session)

    async def _delete(self, key: str) -> web.Response:
        if not await self.storage.delete(KEY_PREFIX + key):
            return _error(404, "Key not found")
        await self.storage.delete(f"quota-{key}")
        return web.json_response({"key": key, "status": "ok", "action": "deleted"})

    async def _write(self, request: web.Request, key: str, action: str) -> web.Response:
        if request.content_length is not None and request.content_length > _MAX_BODY:
            return _error(413, f"a session is at most {_MAX_BODY} bytes")
        try:
            session: Any = json.loads(await request.read() or b"{}")
        except ValueError as exc:
            return _error(400, f"the body is not JSON: {exc}")
        if not isinstance(session, dict):
            return _error(400, "the body must be a JSON object (a Tyk session)")
        if request.method == "PUT" and await load_session(self.storage, key) is None:
            return _error(404, "Key not found")
        session.setdefault("last_updated", str(int(time.time())))
        await save_session(self.storage, key, session)
        # As Tyk: writing a key resets its quota unless asked not to.
        if request.query.get("suppress_reset") != "1":
            await self.storage.delete(f"quota-{key}")
        return web.json_response({"key": key, "status": "ok", "action": action})


def add_key_routes(app: web.Application, secret: str, storage: Storage) -> None:
    """Register the keys API; warn when it is disabled (no secret)."""
    if not secret:
        log.warning("no `secret` in the gateway config: the admin API (/tyk/keys) is "
                    "disabled and answers 403")
    api = KeysApi(secret, storage)
    app.router.add_post("/tyk/keys/create", api.handle)
    app.router.add_route("*", "/tyk/keys/{key}", api.handle)
    app.router.add_route("*", "/tyk/keys/", api.handle)
