"""Plugin API calls served by the gateway: store_data/get_data, log, trigger_event.

The worker forwards `TykGateway.store_data` & co. as HOST_CALL messages; the
hook client hands each to `HostCallServer.serve`, which runs it as a task
(a storage round trip must not hold the socket's reader) through a
`HostCallHandler` and answers the worker: HOST_REPLY, or ERROR with
`unavailable` (the storage is down) or `host_call_failed`.  `HostCalls` is
that handler: plugin data lives in the gateway's storage (`gateway.storage`:
memory, or Redis shared by every instance) under Tyk's `coprocess-data:` key
prefix.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Protocol, TypeVar

from gateway.storage.base import StorageUnavailable
from gateway.storage.memory import MemoryStore
from ipc.protocol import ErrorCode, Message, MsgType

__all__ = ["KEY_PREFIX", "HostCallHandler", "HostCallServer", "HostCalls", "KVStore",
           "MemoryStore", "storage_bound_s"]

T = TypeVar("T")

KEY_PREFIX: Final = "coprocess-data:"

log = logging.getLogger("coproc.gateway.host_calls")
plugin_log = logging.getLogger("coproc.plugin")

_LEVELS: Final = {
    "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
    "warning": logging.WARNING, "error": logging.ERROR, "fatal": logging.CRITICAL,
    "critical": logging.CRITICAL,
}
_MAX_LOGGED_CHARS: Final = 8192


def storage_bound_s(storage_timeout_ms: int, hook_timeout_ms: int) -> float:
    """How long one plugin storage call may take: within the storage timeout, and
    early enough in the hook's deadline (half of it) for the plugin to fail and the
    worker to answer, so a frozen Redis is a 503 (storage) and never a 504 (hook)."""
    return min(storage_timeout_ms, hook_timeout_ms / 2) / 1000


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

    def __init__(self, store: KVStore, emit: EmitEvent | None = None, *,
                 bound_s: float | None = None,
                 extra: Mapping[str, ExtraOp] | None = None) -> None:
        self._store = store
        self._emit = emit
        self._bound_s = bound_s  # None: the storage's own timeout only
        self._extra = dict(extra or {})  # more ops by name (gateway/outbound.py: jsvm_*)

    async def _bounded(self, call: Awaitable[T]) -> T:
        if self._bound_s is None:
            return await call
        try:
            async with asyncio.timeout(self._bound_s):
                return await call
        except TimeoutError:
            raise StorageUnavailable(f"no answer from the storage within "
                                     f"{self._bound_s * 1000:.0f} ms") from None

    async def host_call(self, api_id: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        op = payload["op"]
        extra = self._extra.get(op)
        if extra is not None:
            return await extra(api_id, payload)
        if op == "get_data":
            value = await self._bounded(self._store.get(KEY_PREFIX + payload.get("key", "")))
            return {"value": value or b"", "found": value is not None}
        if op == "store_data":
            await self._bounded(self._store.set(KEY_PREFIX + payload.get("key", ""),
                                                payload.get("value", b""), payload.get("ttl", 0)))
            return {}
        if op == "log":
            level = _LEVELS.get(payload.get("level", "info").lower(), logging.INFO)
            if plugin_log.isEnabledFor(level):
                fields = {"api_id": api_id, "hook": payload.get("hook", ""),
                          "request_id": payload.get("request_id", "")}
                plugin_log.log(level, "%s", payload.get("message", "")[:_MAX_LOGGED_CHARS],
                               extra={"fields": {k: v for k, v in fields.items() if v}})
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


class HostCallHandler(Protocol):
    """Serves one HOST_CALL payload (`HostCalls`; a fake in unit tests)."""

    async def host_call(self, api_id: str, payload: dict[str, Any]) -> dict[str, Any] | None: ...


#: (routing id, message type, call_id, payload): sends one message to a worker,
#: quietly (a worker that is gone gets no answer).
SendQuietly = Callable[[bytes, MsgType, int, Mapping[str, Any]], None]


class HostCallServer:
    """Runs each HOST_CALL as a task and answers the worker that sent it."""

    def __init__(self, handler: HostCallHandler, send: SendQuietly,
                 stats: dict[str, int]) -> None:
        self._handler, self._send = handler, send
        self._stats = stats  # counts host_calls
        self._tasks: set[asyncio.Task[None]] = set()

    def serve(self, identity: bytes, message: Message) -> None:
        """Start serving a (validated) HOST_CALL from the worker at `identity`."""
        self._stats["host_calls"] += 1
        task = asyncio.ensure_future(self._serve(identity, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _serve(self, identity: bytes, message: Message) -> None:
        payload = message.payload
        try:
            result = await self._handler.host_call(payload.get("api_id", ""), payload)
        except StorageUnavailable as exc:
            # Expected while Redis is down: the storage layer already logs it.
            self._answer_error(identity, message, ErrorCode.UNAVAILABLE, str(exc))
            return
        except Exception as exc:
            log.exception("host call %s failed", payload["op"])
            self._answer_error(identity, message, ErrorCode.HOST_CALL_FAILED, str(exc))
            return
        if message.call_id:  # 0: the worker wants no answer
            self._send(identity, MsgType.HOST_REPLY, message.call_id, result or {})

    def _answer_error(self, identity: bytes, message: Message, code: str, text: str) -> None:
        if message.call_id:
            self._send(identity, MsgType.ERROR, message.call_id,
                       {"code": code, "message": text or code})
