"""Running CALLs: hook lookup, thread pool or event loop, and the per-call deadline.

Plain hooks run on a bounded `ThreadPoolExecutor` (`worker.threads`) so one
slow hook does not hold up the others; `async def` hooks run on the event
loop.  Either way the call is bounded by its `timeout_ms`: past it the worker
answers ERROR and forgets the call (a queued thread-pool job is cancelled; a
running one cannot be, and finishes in the background).  The gateway applies
the same deadline on its side, so the answer is usually moot by then; what
matters is that nothing waits forever.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

from ipc.protocol import ErrorCode, MsgType
from worker.invoke import HookFailed, Invocation, run_async, run_sync
from worker.loader import HookTable, LookupFailed
from worker.tyk_api import CURRENT_API

__all__ = ["Dispatcher", "Outcome", "error"]

log = logging.getLogger("worker.dispatch")

#: What a CALL is answered with: (REPLY or ERROR, payload).
Outcome = tuple[MsgType, dict[str, Any]]


def error(code: ErrorCode, message: str) -> Outcome:
    return MsgType.ERROR, {"code": str(code), "message": message}


class Dispatcher:
    """Answers CALL payloads; knows nothing about sockets."""

    def __init__(self, table: HookTable, pool: Executor, default_timeout_ms: int) -> None:
        self.table = table
        self.pool = pool
        self.default_timeout_ms = default_timeout_ms

    async def call(self, payload: Mapping[str, Any]) -> Outcome:
        """Run the hook a (decoded, validated) CALL payload names."""
        api_id, name = payload["api_id"], payload["hook_name"]
        hook_type = payload["hook_type"]
        try:
            entry = self.table.find(api_id, name)
        except LookupFailed as exc:
            return error(exc.code, exc.message)
        timeout_ms = payload.get("timeout_ms") or self.default_timeout_ms
        wire = payload["object"]
        try:
            if entry.is_async:
                invocation = Invocation(api_id, entry, hook_type, wire)
                result = await asyncio.wait_for(run_async(invocation), timeout_ms / 1000)
            else:
                loop = asyncio.get_running_loop()
                job = loop.run_in_executor(self.pool, _prepare_and_run,
                                           api_id, entry, hook_type, wire)
                result = await asyncio.wait_for(job, timeout_ms / 1000)
        except HookFailed as exc:
            return error(exc.code, exc.message)
        except TimeoutError:  # hook exceptions arrive as HookFailed, so this is ours
            log.warning("API %s: hook %s did not finish within %d ms", api_id, name, timeout_ms)
            return error(ErrorCode.DEADLINE,
                         f"hook {name} did not finish within {timeout_ms} ms")
        return MsgType.REPLY, {"object": result}

    async def event(self, api_id: str, name: str, event: Mapping[str, Any],
                    spec: Mapping[str, str], timeout_ms: int | None = None) -> None:
        """Call an `@Event` handler as `f(event, spec)`; failures are logged, not raised.

        The event reaches the handler as an object whose attributes are the
        event's fields (Tyk builds it from the event's JSON the same way).
        """
        try:
            handler = self.table.find_event(api_id, name)
        except LookupFailed as exc:
            log.warning("event %s: %s", name, exc.message)
            return
        timeout = (timeout_ms or self.default_timeout_ms) / 1000
        subject = types.SimpleNamespace(**event)
        spec_map = dict(spec)
        try:
            if handler.is_async:
                CURRENT_API.set(api_id)
                await asyncio.wait_for(handler.f(subject, spec_map), timeout)
            else:
                loop = asyncio.get_running_loop()
                job = loop.run_in_executor(self.pool, _run_event, api_id, handler.f,
                                           subject, spec_map)
                await asyncio.wait_for(job, timeout)
        except asyncio.CancelledError:
            raise
        except BaseException:  # a handler's SystemExit must not stop the worker either
            log.exception("API %s: event handler %s failed", api_id, name)


def _prepare_and_run(api_id: str, entry: Any, hook_type: str,
                     wire: Mapping[str, Any]) -> dict[str, Any]:
    # Wrapping the object happens here, on the pool thread, not on the event loop.
    return run_sync(Invocation(api_id, entry, hook_type, wire))


def _run_event(api_id: str, func: Any, event: Any, spec: Mapping[str, str]) -> None:
    token = CURRENT_API.set(api_id)
    try:
        func(event, spec)
    except BaseException as exc:
        raise RuntimeError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        CURRENT_API.reset(token)
