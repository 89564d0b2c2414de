"""Running CALLs: hook lookup, thread pool or event loop, and the per-call deadline.

Plain hooks run on a bounded `ThreadPoolExecutor` (`worker.threads`) so one
slow hook does not hold up the others; `async def` hooks run on the event
loop.  Either way the call is bounded by its `timeout_ms`: past it the worker
answers ERROR and forgets the call (a queued thread-pool job is cancelled; a
running one cannot be, and finishes in the background).  The gateway applies
the same deadline on its side, so the answer is usually moot by then; what
matters is that nothing waits forever.

Bodies the gateway sent through the shared-memory arena (ipc/shm.py) are read
from it before the hook runs; a body the hook changed goes back through the
same slot when it is large and fits, else inline.  The slot is written only
here, right before the REPLY leaves: never after a deadline answered the call.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from ipc.protocol import ErrorCode, MsgType
from ipc.schema import ProtocolError
from ipc.shm import ArenaView, resolve_bodies
from worker.invoke import HookFailed, Invocation, run_async, run_sync
from worker.loader import HookEntry, HookTable, LookupFailed
from worker.objects import LazyText
from worker.tyk_api import CURRENT_API

__all__ = ["Dispatcher", "Outcome", "Ran", "error"]

log = logging.getLogger("worker.dispatch")

#: What a CALL is answered with: (REPLY or ERROR, payload).
Outcome = tuple[MsgType, dict[str, Any]]


def error(code: ErrorCode, message: str) -> Outcome:
    return MsgType.ERROR, {"code": str(code), "message": message}


@dataclass(frozen=True, slots=True)
class _Call:
    """A CALL ready to run: its hook and its object, bodies already resolved."""

    api_id: str
    entry: HookEntry
    hook_type: str
    wire: Mapping[str, Any]
    refs: Mapping[str, Any] | None
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class Ran:
    """A plain hook that returned, its REPLY not built yet (see `Dispatcher.finish`)."""

    call: _Call
    result: dict[str, Any]


class Dispatcher:
    """Answers CALL payloads; knows nothing about sockets."""

    def __init__(self, table: HookTable, pool: Executor, default_timeout_ms: int) -> None:
        self.table = table
        self.pool = pool
        self.default_timeout_ms = default_timeout_ms
        self.arena: ArenaView | None = None
        self.shm_threshold = 0

    def attach_arena(self, info: Mapping[str, Any] | None) -> None:
        """Map the arena a WELCOME names (again only when it changed: a new gateway)."""
        if info is None or (self.arena is not None and self.arena.name == info["name"]):
            return
        if self.arena is not None:
            self.arena.close()
            self.arena = None
        try:
            self.arena = ArenaView.attach(info["name"], info["size"])
        except (OSError, ValueError) as exc:
            log.error("cannot map the gateway's shared-memory arena %s: %s; calls with "
                      "large bodies will fail", info["name"], exc)
            return
        self.shm_threshold = info["threshold"]
        log.info("mapped the shared-memory arena %s (%d bytes)", info["name"], info["size"])

    def close(self) -> None:
        if self.arena is not None:
            self.arena.close()
            self.arena = None

    def _prepare(self, payload: Mapping[str, Any]) -> _Call | Outcome:
        """The hook and its object (bodies read from the arena), or an ERROR outcome."""
        api_id = payload["api_id"]
        try:
            entry = self.table.find(api_id, payload["hook_name"])
        except LookupFailed as exc:
            return error(exc.code, exc.message)
        wire = payload["object"]
        refs = payload.get("bodies")
        if refs:
            if self.arena is None:
                return error(ErrorCode.PROTOCOL, "a body is in shared memory, but this "
                                                 "worker has no arena mapped")
            try:
                # raw_body is copied out now: the slot is not ours once the call is
                # answered, and a deadline can answer it while the hook still runs.
                # `body` is decoded only if the hook reads it (LazyText).
                wire = resolve_bodies(wire, refs, self.arena, text=LazyText)
            except ProtocolError as exc:
                return error(ErrorCode.PROTOCOL, str(exc))
        return _Call(api_id, entry, payload["hook_type"], wire, refs,
                     payload.get("timeout_ms") or self.default_timeout_ms)

    def _reply(self, call: _Call, result: dict[str, Any]) -> Outcome:
        reply: dict[str, Any] = {"object": result}
        if call.refs:
            self._bodies_back(reply, call.refs)
        return MsgType.REPLY, reply

    async def call(self, payload: Mapping[str, Any]) -> Outcome:
        """Run the hook a (decoded, validated) CALL payload names."""
        call = self._prepare(payload)
        if not isinstance(call, _Call):
            return call
        name, timeout_ms = call.entry.name, call.timeout_ms
        try:
            if call.entry.is_async:
                invocation = Invocation(call.api_id, call.entry, call.hook_type, call.wire)
                result = await asyncio.wait_for(run_async(invocation), timeout_ms / 1000)
            else:
                loop = asyncio.get_running_loop()
                job = loop.run_in_executor(self.pool, _prepare_and_run, call.api_id,
                                           call.entry, call.hook_type, call.wire)
                result = await _within(job, timeout_ms / 1000)
        except HookFailed as exc:
            return error(exc.code, exc.message)
        except TimeoutError:  # hook exceptions arrive as HookFailed, so this is ours
            log.warning("API %s: hook %s did not finish within %d ms", call.api_id, name,
                        timeout_ms)
            return error(ErrorCode.DEADLINE,
                         f"hook {name} did not finish within {timeout_ms} ms")
        return self._reply(call, result)

    def run_here(self, payload: Mapping[str, Any],
                 loop: asyncio.AbstractEventLoop) -> Ran | Outcome:
        """Run a plain hook's CALL on the calling thread (worker/callthreads.py).

        No pool, no loop hop, and no deadline here (a plain hook cannot be
        interrupted; the call threads' watchdog answers a late call).  The REPLY
        is built by `finish`, which the caller runs only if the call is still
        unanswered: a changed large body is written into the call's arena slot
        there, and once a deadline answered the call the gateway may have given
        that slot to another call.  An `async def` hook (the call threads send
        those to the loop) runs on the loop with its deadline.
        """
        call = self._prepare(payload)
        if not isinstance(call, _Call):
            return call
        if call.entry.is_async:
            return asyncio.run_coroutine_threadsafe(self.call(payload), loop).result()
        try:
            result = _prepare_and_run(call.api_id, call.entry, call.hook_type, call.wire)
        except HookFailed as exc:
            return error(exc.code, exc.message)
        return Ran(call, result)

    def finish(self, ran: Ran | Outcome) -> Outcome:
        """The REPLY (or ERROR) for what `run_here` returned."""
        if isinstance(ran, Ran):
            return self._reply(ran.call, ran.result)
        return ran

    def _bodies_back(self, reply: dict[str, Any], refs: Mapping[str, Any]) -> None:
        """Send changed large bodies back through the slots they came in."""
        arena, result = self.arena, reply["object"]
        assert arena is not None  # refs were resolved through it
        for part, ref in refs.items():
            record = result.get(part)
            raw = record.get("raw_body") if record else None
            if raw is None or len(raw) < self.shm_threshold:
                continue  # unchanged (not in the reply at all), or small: inline
            if len(raw) > ref.get("capacity", ref["length"]):
                continue  # grew past its slot: inline (bounded by the message limit)
            arena.write(ref["offset"], raw)
            result[part] = {k: v for k, v in record.items() if k != "raw_body"}
            reply.setdefault("bodies", {})[part] = {"offset": ref["offset"],
                                                    "length": len(raw)}

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


async def _within(job: asyncio.Future[Any], timeout_s: float) -> Any:
    """`await job`, cancelled past `timeout_s` (TimeoutError), like `asyncio.wait_for`.

    On the hot path of every plain hook: one timer handle instead of the
    extra future, callbacks and task switch `wait_for` costs on 3.11.
    """
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        job.cancel()  # a queued pool job never starts; a running one finishes unheard

    timer = asyncio.get_running_loop().call_later(timeout_s, expire)
    try:
        return await job
    except asyncio.CancelledError:
        if expired:
            raise TimeoutError from None
        raise  # the worker is stopping
    finally:
        timer.cancel()


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
