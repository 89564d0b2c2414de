"""Plugin API calls served by the gateway: store_data/get_data, log, trigger_event.

The worker forwards `TykGateway.store_data` & co. as HOST_CALL messages; the
hook client hands them to `HostCalls.host_call`.  Plugin data lives in the
gateway's storage (`gateway.storage`: memory, or Redis shared by every
instance) under Tyk's `coprocess-data:` key prefix.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Protocol

from gateway.storage.memory import MemoryStore

__all__ = ["KEY_PREFIX", "HostCalls", "KVStore", "MemoryStore"]

KEY_PREFIX: Final = "coprocess-data:"

log = logging.getLogger("coproc.gateway.host_calls")
plugin_log = logging.getLogger("coproc.plugin")

_LEVELS: Final = {
    "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
    "warning": logging.WARNING, "error": logging.ERROR, "fatal": logging.CRITICAL,
    "critical": logging.CRITICAL,
}
_MAX_LOGGED_CHARS: Final = 8192


class KVStore(Protocol):
    """Where plugin data lives (a `gateway.storage.Storage`); ttl in seconds, <= 0: none."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float = 0) -> None: ...


#: (api_id, event name, event metadata): queues a plugin's event (gateway.events).
EmitEvent = Callable[[str, str, dict[str, Any]], None]
#: (api_id, HOST_CALL payload) -> HOST_REPLY payload.
ExtraOp = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class HostCalls:
    """Serves HOST_CALL payloads (already validated by `ipc.protocol.decode`)."""

    def __init__(self, store: KVStore, emit: EmitEvent | None = None,
                 extra: Mapping[str, ExtraOp] | None = None) -> None:
        self._store = store
        self._emit = emit
        self._extra = dict(extra or {})  # more ops by name (gateway/outbound.py: jsvm_*)

    async def host_call(self, api_id: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        op = payload["op"]
        extra = self._extra.get(op)
        if extra is not None:
            return await extra(api_id, payload)
        if op == "get_data":
            value = await self._store.get(KEY_PREFIX + payload.get("key", ""))
            return {"value": value or b"", "found": value is not None}
        if op == "store_data":
            await self._store.set(KEY_PREFIX + payload.get("key", ""),
                                  payload.get("value", b""), payload.get("ttl", 0))
            return {}
        if op == "log":
            level = _LEVELS.get(payload.get("level", "info").lower(), logging.INFO)
            if plugin_log.isEnabledFor(level):
                plugin_log.log(level, "%s", payload.get("message", "")[:_MAX_LOGGED_CHARS],
                               extra={"fields": {"api_id": api_id}})
            return None
        if op == "trigger_event":
            name, message = payload.get("name", ""), payload.get("payload", "")
            target = payload.get("api_id") or api_id
            log.info("plugin event %s: %s", name, message[:_MAX_LOGGED_CHARS],
                     extra={"fields": {"api_id": target}})
            if self._emit is not None:
                self._emit(target, name, {"message": message})
            return None
        raise ValueError(f"unknown host call {op!r}")
