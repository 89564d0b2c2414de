"""The JS driver's host calls: Tyk's TykMakeHttpRequest, TykBatchRequest, key data.

A JS plugin runs in the (sandboxed) worker; its outbound HTTP calls are made
here, by the gateway, so they work when the worker has no network.  Because
any plugin in the worker can send the same host call, every destination is
checked against `coproc.jsvm.outbound_allow` ("host", "host:port" or "*"):
unset, it is empty (all denied) under the `strict` sandbox or with
`sandbox.network: false`, and "*" otherwise (the worker could reach the
network itself there).  Redirects are not followed (a redirect could leave
the allowlist); every call has a deadline (`outbound_timeout_ms`) and a
bounded answer (`coproc.gateway.max_body_bytes`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from config.gateway import GatewayConfig
from gateway.keys import KeyStore
from gateway.storage import Storage
from ipc import jsvm_store

__all__ = ["Denied", "HostOp", "JsvmHostCalls", "OutboundPolicy", "default_allow"]

log = logging.getLogger("coproc.gateway.outbound")

#: (api_id, HOST_CALL payload) -> HOST_REPLY payload.
HostOp = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class Denied(PermissionError):
    """The destination is not in `coproc.jsvm.outbound_allow`."""


def default_allow(cfg: GatewayConfig) -> tuple[str, ...]:
    """The allowlist in force: the configured one, else the sandbox profile's."""
    if cfg.jsvm.outbound_allow is not None:
        return cfg.jsvm.outbound_allow
    no_network = cfg.sandbox.profile == "strict" or cfg.sandbox.network is False
    return () if no_network else ("*",)


class OutboundPolicy:
    """Which http(s) URLs a plugin's outbound call may reach."""

    def __init__(self, allow: tuple[str, ...]) -> None:
        self.any = "*" in allow
        self.allow = frozenset(entry.lower() for entry in allow)

    def check(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Denied(f"{url!r} is not an http(s) URL with a host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise Denied(f"{url!r} has an invalid port") from None
        host = parts.hostname.lower()
        shown = f"[{host}]" if ":" in host else host
        if self.any or host in self.allow or shown in self.allow \
                or f"{shown}:{port}" in self.allow:
            return
        raise Denied(f"{shown}:{port} is not in coproc.jsvm.outbound_allow")


class JsvmHostCalls:
    """The `jsvm_*` host call ops (ipc.protocol.JSVM_HOST_OPS)."""

    def __init__(self, cfg: GatewayConfig, store: Storage) -> None:
        self.policy = OutboundPolicy(default_allow(cfg))
        self.timeout_s = cfg.jsvm.outbound_timeout_ms / 1000
        self.max_bytes = cfg.gateway.max_body_bytes or (64 << 20)
        self.keys = KeyStore(store, cfg.keys)
        self.store = store

    def ops(self) -> dict[str, HostOp]:
        return {"jsvm_http": self.http, "jsvm_batch": self.batch,
                "jsvm_get_key": self.get_key, "jsvm_set_key": self.set_key,
                "jsvm_store": self.storage}

    async def http(self, api_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Tyk's TykJSHttpRequest in (`Method`, `Domain`, `Resource`, `Headers`,
        `Body`, `FormData`), TykJSHttpResponse out (`Code`, `Body`, `Headers` and
        their lowercase twins)."""
        spec = _go_fields(_json_object(payload.get("value", b""), "TykMakeHttpRequest"),
                          _HTTP_REQUEST_FIELDS)
        url = str(spec.get("Domain") or "") + str(spec.get("Resource") or "")
        form = spec.get("FormData") or {}
        body = str(spec.get("Body") or "")
        headers = {str(k): str(v) for k, v in (spec.get("Headers") or {}).items()}
        data: Any = body or (aiohttp.FormData({str(k): str(v) for k, v in form.items()})
                             if isinstance(form, dict) and form else None)
        try:
            code, got_headers, text = await self._fetch(
                api_id, str(spec.get("Method") or "GET"), url, headers, data)
        except (Denied, OSError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # Tyk answers undefined: `found: false` says so without an ERROR
            # (whose handler would log a traceback for an expected refusal).
            log.warning("API %s: TykMakeHttpRequest to %s failed: %s", api_id, url, exc,
                        extra={"fields": {"api_id": api_id}})
            return {"value": str(exc).encode(), "found": False}
        reply = {"Code": code, "Body": text, "Headers": got_headers,
                 "code": code, "body": text, "headers": got_headers}
        return {"value": json.dumps(reply).encode(), "found": True}

    async def batch(self, api_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Tyk's batch request structure in, a list of batch reply units out."""
        spec = _go_fields(_json_object(payload.get("value", b""), "TykBatchRequest"),
                          _BATCH_FIELDS)
        requests = spec.get("requests") or []
        if not isinstance(requests, list):
            raise ValueError("TykBatchRequest: requests must be a list")

        async def one(unit: Mapping[str, Any]) -> dict[str, Any]:
            item = _go_fields(unit, _BATCH_ITEM_FIELDS)
            url = str(item.get("relative_url") or "")
            headers = {str(k): str(v) for k, v in (item.get("headers") or {}).items()}
            try:
                code, got, text = await self._fetch(api_id, str(item.get("method") or "GET"),
                                                    url, headers, str(item.get("body") or ""))
            except (Denied, OSError, aiohttp.ClientError, TimeoutError) as exc:
                code, got, text = 0, {}, str(exc)
            return {"relative_url": url, "code": code, "headers": got, "body": text}

        items = [r for r in requests if isinstance(r, dict)]
        if spec.get("suppress_parallel_execution"):
            replies = [await one(r) for r in items]
        else:
            replies = list(await asyncio.gather(*(one(r) for r in items)))
        return {"value": json.dumps(replies).encode()}

    async def _fetch(self, api_id: str, method: str, url: str, headers: dict[str, str],
                     data: Any) -> tuple[int, dict[str, list[str]], str]:
        self.policy.check(url)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.request(
                method, url, headers=headers, data=data or None,
                allow_redirects=False) as response:
            raw = await response.content.read(self.max_bytes + 1)
            if len(raw) > self.max_bytes:
                raise ValueError(f"{url}: the answer is larger than {self.max_bytes} bytes")
            got: dict[str, list[str]] = {}
            for name, value in response.headers.items():
                got.setdefault(name, []).append(value)
            return response.status, got, raw.decode("utf-8", "replace")

    async def storage(self, api_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Tyk's goja storage functions (TykStorageGet, …): `name` is the action,
        `key` the plugin's key (stored under ipc.jsvm_store.PREFIX, so plugins
        reach nothing else), `value` and `ttl` (seconds) for the writes.  The answer's
        value is {"result": …} as JSON, or (found false) why it was refused."""
        action, key = str(payload.get("name", "")), str(payload.get("key", ""))
        value = bytes(payload.get("value", b""))
        problem = jsvm_store.store_problem(key, value)
        if problem:
            return {"value": problem.encode(), "found": False}
        full, ttl = jsvm_store.PREFIX + key, max(0, int(payload.get("ttl", 0)))
        result: Any = None
        if action == "get":
            got = await self.store.get(full)
            result = None if got is None else got.decode("utf-8", "replace")
        elif action == "set":
            await self.store.set(full, value, ttl)
        elif action == "setnx":
            result = await self.store.set_nx(full, value, ttl)
        elif action == "del":
            await self.store.delete(full)
        elif action == "ttl":
            result = await self.store.ttl(full)
        elif action == "incr":
            count = await self.store.incr(full, ttl)
            if count is None:
                return {"value": b"the stored value is not an integer", "found": False}
            result = str(count)  # as Tyk: a JS number would lose precision past 2**53
        else:
            return {"value": f"unknown storage action {action!r}".encode(), "found": False}
        return {"value": json.dumps({"result": result}).encode(), "found": True}

    async def get_key(self, api_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Tyk's TykGetKeyData: the key's session JSON ("{}" when there is none)."""
        session = await self.keys.get(str(payload.get("key", "")))
        return {"value": json.dumps(session or {}).encode(), "found": session is not None}

    async def set_key(self, api_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Tyk's TykSetKeyData: store the session JSON under the key."""
        key = str(payload.get("key", ""))
        if not key:
            raise ValueError("TykSetKeyData: the key is empty")
        session = _json_object(payload.get("value", b""), "TykSetKeyData")
        await self.keys.save(key, session)
        log.info("API %s: a JS plugin stored the session of a key", api_id,
                 extra={"fields": {"api_id": api_id}})
        return {}


# The Go structs Tyk decodes these arguments into (TykJSHttpRequest,
# BatchRequestStructure, RequestDefinition): their JSON field names.
_HTTP_REQUEST_FIELDS = ("Method", "Body", "Headers", "Domain", "Resource", "FormData")
_BATCH_FIELDS = ("requests", "suppress_parallel_execution")
_BATCH_ITEM_FIELDS = ("method", "headers", "body", "relative_url")


def _go_fields(obj: Mapping[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """`obj`'s members as Go's encoding/json assigns them to a struct with these
    field names: a key matches its field exactly or, failing that, ignoring case
    (plugins write `resource` for `Resource`), a later key overwrites an earlier
    one, and keys that match no field are dropped."""
    exact = set(fields)
    folded = {name.lower(): name for name in fields}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = key if key in exact else folded.get(key.lower())
        if name is not None:
            out[name] = value
    return out


def _json_object(raw: Any, what: str) -> dict[str, Any]:
    try:
        value = json.loads(bytes(raw))
    except ValueError:
        raise ValueError(f"{what}: the argument is not JSON text (use JSON.stringify)") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected a JSON object")
    return value
