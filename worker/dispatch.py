"""Running one CALL or EVENT: one hook lookup, the bodies, the hook, the REPLY.

The call thread that reads a CALL (worker/callthreads.py) looks its hook up
once, here (`prepare`), and the entry says where it runs:

* a plain hook runs right on that thread (`run_here`); it cannot be
  interrupted, so its deadline is the call threads' watchdog, which answers
  ERROR `deadline` for it;
* an `async def` hook runs on the event loop (`run_async`, started by
  worker/loopcalls.py), bounded by its `timeout_ms` with `asyncio.wait_for`.

`@Event` handlers take the same two roads (`prepare_event`, `run_event`,
`run_event_async`); they are never answered, so a failure is only logged.

Bodies the gateway sent through the shared-memory arena (ipc/shm.py) are read
from it in `prepare`; a body the hook changed goes back through the same slot
when it is large and fits, else inline.  The slot is written only in `finish`
and `run_async`, right before the REPLY leaves: never after a deadline
answered the call.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ipc.coprocess import CallPayload, LazyText
from ipc.protocol import ErrorCode, MsgType
from ipc.schema import ProtocolError
from ipc.shm import ArenaView, resolve_bodies
from ipc.tyk_event import tyk_event
from worker.decorators import Event
from worker.invoke import HookFailed, Invocation, run_async, run_sync
from worker.loader import HookEntry, HookTable, LookupFailed
from worker.tyk_api import CURRENT_API

__all__ = ["Call", "Dispatcher", "EventCall", "Outcome", "Ran", "error"]

log = logging.getLogger("worker.dispatch")

#: What a CALL is answered with: (REPLY or ERROR, payload).
Outcome = tuple[MsgType, dict[str, Any]]


def error(code: ErrorCode, message: str) -> Outcome:
    return MsgType.ERROR, {"code": str(code), "message": message}


@dataclass(frozen=True, slots=True)
class Call:
    """A CALL ready to run: its hook and its object, bodies already resolved."""

    api_id: str
    entry: HookEntry
    hook_type: str
    wire: Mapping[str, Any]
    refs: Mapping[str, Any] | None
    timeout_ms: int

    def deadline_error(self) -> Outcome:
        name, timeout_ms = self.entry.name, self.timeout_ms
        log.warning("API %s: hook %s did not finish within %d ms", self.api_id, name,
                    timeout_ms)
        return error(ErrorCode.DEADLINE, f"hook {name} did not finish within {timeout_ms} ms")


@dataclass(frozen=True, slots=True)
class Ran:
    """A plain hook that returned, its REPLY not built yet (see `Dispatcher.finish`)."""

    call: Call
    result: dict[str, Any]  # the REPLY object (`ipc.coprocess.record_delta`)
    run_ns: int = 0  # how long the hook ran


@dataclass(frozen=True, slots=True)
class EventCall:
    """An EVENT ready to run: its handler, `f(event, spec)`, and the arguments."""

    api_id: str
    handler: Event
    event: Mapping[str, Any]
    spec: Mapping[str, str]
    timeout_ms: int


class Dispatcher:
    """Prepares and runs CALLs and EVENTs; knows nothing about sockets or threads."""

    def __init__(self, table: HookTable, default_timeout_ms: int) -> None:
        self.table = table
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

    # -- CALL ---------------------------------------------------------------------------

    def prepare(self, payload: CallPayload) -> Call | Outcome:
        """The hook and its object (bodies read from the arena), or an ERROR outcome."""
        api_id = payload["api_id"]
        try:
            entry = self.table.find(api_id, payload["hook_name"])
        except LookupFailed as exc:
            return error(exc.code, exc.message)
        wire: Mapping[str, Any] = payload["object"]
        refs = payload.get("bodies")
        if refs:
            if self.arena is None:
                return error(ErrorCode.PROTOCOL, "a body is in shared memory, but this "
                                                 "worker has no arena mapped")
            try:
                # raw_body is copied out now: the slot is not ours once the call is
                # answered, and a deadline can answer it while the hook still runs.
                # `body` is decoded only if the hook reads it (LazyText).
                wire = resolve_bodies(payload["object"], refs, self.arena,  # type: ignore[arg-type]
                                      text=LazyText)
            except ProtocolError as exc:
                return error(ErrorCode.PROTOCOL, str(exc))
        return Call(api_id, entry, payload["hook_type"], wire, refs,
                    payload.get("timeout_ms") or self.default_timeout_ms)

    def run_here(self, call: Call) -> Ran | Outcome:
        """Run a plain hook on the calling thread (a call thread).

        No deadline here: a plain hook cannot be interrupted, and the call
        threads' watchdog answers a late call.  The REPLY is built by `finish`,
        which the caller runs only if the call is still unanswered: a changed
        large body is written into the call's arena slot there, and once a
        deadline answered the call the gateway may have given that slot away.
        """
        try:
            invocation = Invocation(call.api_id, call.entry, call.hook_type, call.wire)
            return Ran(call, run_sync(invocation), invocation.run_ns)
        except HookFailed as exc:
            return error(exc.code, exc.message)

    def finish(self, ran: Ran | Outcome) -> Outcome:
        """The REPLY (or ERROR) for what `run_here` returned."""
        if isinstance(ran, Ran):
            return self._reply(ran.call, ran.result, ran.run_ns)
        return ran

    async def run_async(self, call: Call) -> Outcome:
        """Run an `async def` hook on the event loop, bounded by its deadline."""
        return self.finish(await self.run_async_ran(call))

    async def run_async_ran(self, call: Call) -> Ran | Outcome:
        """`run_async` without building the REPLY (a merged call's hook, worker/merged.py)."""
        invocation = Invocation(call.api_id, call.entry, call.hook_type, call.wire)
        try:
            result = await asyncio.wait_for(run_async(invocation), call.timeout_ms / 1000)
        except HookFailed as exc:
            return error(exc.code, exc.message)
        except TimeoutError:  # hook exceptions arrive as HookFailed, so this is ours
            return call.deadline_error()
        return Ran(call, result, invocation.run_ns)

    def _reply(self, call: Call, result: dict[str, Any], run_ns: int) -> Outcome:
        # an `ipc.coprocess.ReplyPayload`; run_ns: per hook, even if calls are batched
        reply: dict[str, Any] = {"object": result, "run_ns": run_ns}
        for part, ref in (call.refs or {}).items():
            self.body_back(reply, part, ref)
        return MsgType.REPLY, reply

    def body_back(self, reply: dict[str, Any], part: str, ref: Mapping[str, Any]) -> bool:
        """Send a changed large body of `reply` back through the slot it came in;
        False when it stays inline (unchanged, small, or grown past its slot)."""
        arena, result = self.arena, reply["object"]
        assert arena is not None  # refs were resolved through it
        record = result.get(part)
        raw = record.get("raw_body") if record else None
        if raw is None or len(raw) < self.shm_threshold:
            return False  # unchanged (not in the reply at all), or small: inline
        if len(raw) > ref.get("capacity", ref["length"]):
            return False  # grew past its slot: inline (bounded by the message limit)
        arena.write(ref["offset"], raw)
        result[part] = {k: v for k, v in record.items() if k != "raw_body"}
        reply.setdefault("bodies", {})[part] = {"offset": ref["offset"], "length": len(raw)}
        return True

    # -- EVENT --------------------------------------------------------------------------

    def prepare_event(self, payload: Mapping[str, Any]) -> EventCall | None:
        """The `@Event` handler an EVENT names, or None (logged) when there is none."""
        api_id, name = payload["api_id"], payload["handler"]
        try:
            handler = self.table.find_event(api_id, name)
        except LookupFailed as exc:
            log.warning("event %s: %s", name, exc.message)
            return None
        return EventCall(api_id, handler, payload["event"], payload.get("spec", {}),
                         payload.get("timeout_ms") or self.default_timeout_ms)

    def run_event(self, event: EventCall) -> None:
        """Call a plain handler as `f(event, spec)` on this thread; failures are logged.

        The event reaches the handler as Tyk's: an object whose attributes are
        Tyk's event wrapper (`message` with `Type`, `Meta`, `TimeStamp`;
        `handler_name`; `spec`), plus Coproc's flat fields (`event`, `api_id`,
        `timestamp`, `key`).
        """
        token = CURRENT_API.set(event.api_id)
        try:
            event.handler.f(_subject(event), dict(event.spec))
        except BaseException:  # a handler's SystemExit must not stop the worker either
            log.exception("API %s: event handler %s failed", event.api_id, event.handler.name)
        finally:
            CURRENT_API.reset(token)

    async def run_event_async(self, event: EventCall) -> None:
        """Await an `async def` handler on the loop, bounded by the event's deadline."""
        CURRENT_API.set(event.api_id)  # this task's own context copy
        subject = _subject(event)
        try:
            await asyncio.wait_for(event.handler.f(subject, dict(event.spec)),
                                   event.timeout_ms / 1000)
        except asyncio.CancelledError:
            raise
        except BaseException:  # a handler's SystemExit must not stop the worker either
            log.exception("API %s: event handler %s failed", event.api_id, event.handler.name)


def _subject(event: EventCall) -> types.SimpleNamespace:
    """The `event` argument of an @Event handler (see `Dispatcher.run_event`)."""
    flat = {k: v for k, v in event.event.items() if k != "message"}
    return types.SimpleNamespace(**{**flat, **tyk_event(event.event, event.handler.name,
                                                         event.spec)})
