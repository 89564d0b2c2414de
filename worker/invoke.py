"""Calling one hook with Tyk's arity convention, and what goes back in REPLY.

The number of positional parameters decides the call (as in Tyk):

==========  ==================================================  ============================
parameters  call                                                returns
==========  ==================================================  ============================
3           ``f(request, session, spec)``                       ``(request, session)``
4           ``f(request, session, metadata, spec)``             ``(request, session, metadata)``
5           ``f(request, response, session, metadata, spec)``  ``response``
2           ``f(request, session)`` (Tyk's first binding)       ``(request, session)``
==========  ==================================================  ============================

`metadata` is `session.metadata`; metadata a 4-parameter hook returns is
merged into it.  Hooks usually mutate their arguments in place, and in-place
changes are what counts: returned objects of the right type replace the
arguments, while `None` or anything else keeps the (mutated) arguments; junk
is logged once per hook.  A 5-parameter hook may run in any phase: outside
the response phase it gets an empty response and its request changes count.

The REPLY object carries only what changed (`ipc.coprocess.record_delta`,
docs/PROTOCOL.md): `request`, `session` and `response` with their changed
fields, an unchanged `raw_body` never, `spec`, `hook_type` and `hook_name`
never.  After a 4-parameter hook
the merged metadata is also sent as the top-level `metadata`, so the gateway
finds an auth hook's `metadata["token"]` wherever it looks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, cast

from ipc.coprocess import OBJECT
from ipc.protocol import ErrorCode
from ipc.schema import ProtocolError, check
from worker.hostcalls import HostCallError
from worker.loader import HookEntry
from worker.objects import (
    Message,
    MiniRequestObject,
    Object,
    ResponseObject,
    SessionState,
    changed_fields,
)
from worker.request import HookRequest
from worker.tyk_api import CURRENT_API, CURRENT_HOOK, running

__all__ = ["HookFailed", "Invocation", "effective_arity", "run_async", "run_sync"]

log = logging.getLogger("worker.invoke")

_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


class HookFailed(Exception):
    """The call failed; `code` and `message` become the ERROR payload."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def effective_arity(entry: HookEntry, hook_type: str) -> int:
    """How to call `entry`: its positional parameter count, or a guess for `*args`."""
    if entry.arity in (2, 3, 4, 5):
        return entry.arity
    if entry.varargs and entry.arity < 3:
        return {"response": 5, "auth_check": 4}.get(hook_type, 3)
    raise HookFailed(ErrorCode.HOOK_FAILED,
                     f"TypeError: hook {entry.name} takes {entry.arity} positional "
                     f"parameter(s); Tyk hooks take 3, 4 or 5")


class Invocation:
    """One CALL: the objects handed to the hook, and the REPLY object built after it."""

    def __init__(self, api_id: str, entry: HookEntry, hook_type: str,
                 wire: Mapping[str, Any]) -> None:
        self.api_id, self.entry, self.hook_type = api_id, entry, hook_type
        self.wire = wire
        self.arity = effective_arity(entry, hook_type)
        # Generated classes: their fields are descriptors mypy cannot see.
        self.obj: Any = cast(Any, Object.from_wire(wire))
        self.request = HookRequest(self.obj.request)
        self.run_ns = 0  # how long the hook function ran (the REPLY's `run_ns`)

    @property
    def request_id(self) -> str:
        """The X-Request-Id the gateway put in the request headers ("" without one)."""
        headers = (self.wire.get("request") or {}).get("headers") or {}
        return str(headers.get("X-Request-Id") or headers.get("x-request-id") or "")

    def arguments(self) -> tuple[Any, ...]:
        obj, request = self.obj, self.request
        if self.arity == 2:
            return request, obj.session
        if self.arity == 3:
            return request, obj.session, obj.spec
        if self.arity == 4:
            return request, obj.session, obj.session.metadata, obj.spec
        return request, obj.response, obj.session, obj.session.metadata, obj.spec

    def absorb(self, result: Any) -> None:
        """Take what the hook returned into account (see the module docstring)."""
        if result is None:
            return
        if self.arity == 5:
            if isinstance(result, ResponseObject):
                self.obj.response = result
            elif not isinstance(result, HookRequest):  # `return request` is harmless
                self._junk(result)
            return
        expected = 3 if self.arity == 4 else 2
        if not isinstance(result, (tuple, list)) or len(result) != expected:
            self._junk(result)
            return
        self._take_request(result[0])
        if isinstance(result[1], SessionState):
            self.obj.session = result[1]
        elif result[1] is not None:
            self._junk(result[1])
        if expected == 3:
            self._take_metadata(result[2])

    def reply(self) -> dict[str, Any]:
        """The REPLY object: changed parts only, validated against the wire schema."""
        try:
            self.obj.request = self.request.object
        except TypeError as exc:
            raise HookFailed(ErrorCode.BAD_OBJECT, f"request.object: {exc}") from None
        out: dict[str, Any] = {}
        values = self.obj._values
        for name in ("request", "session", "response"):
            value = values.get(name)
            if isinstance(value, Message):  # a raw dict was never touched
                delta = changed_fields(value, self.wire.get(name) or {})
                if delta:
                    out[name] = delta
        if self.arity == 4 and "metadata" in out.get("session", {}):
            sent = self.wire.get("metadata") or {}
            merged = {**sent, **out["session"]["metadata"]}
            if merged != sent:
                out["metadata"] = merged
        try:
            check(out, OBJECT, "reply")
        except ProtocolError as exc:
            raise HookFailed(ErrorCode.BAD_OBJECT, f"the hook left an invalid object: {exc}") \
                from None
        return out

    def _take_request(self, value: Any) -> None:
        if isinstance(value, HookRequest):
            self.request.object = value.object
        elif isinstance(value, MiniRequestObject):
            self.request.object = value
        elif value is not None:
            self._junk(value)

    def _take_metadata(self, value: Any) -> None:
        metadata = self.obj.session.metadata
        if value is None or value is metadata:
            return
        if not isinstance(value, Mapping):
            self._junk(value)
            return
        try:
            metadata.update(value)
        except (TypeError, ValueError) as exc:
            raise HookFailed(ErrorCode.BAD_OBJECT, f"returned metadata: {exc}") from None

    def _junk(self, value: Any) -> None:
        key = (self.api_id, self.entry.name)
        with _warned_lock:
            if key in _warned:
                return
            _warned.add(key)
        log.warning("API %s: hook %s returned %s, not what a %d-parameter hook returns; "
                    "its in-place changes are used (logged once)", self.api_id,
                    self.entry.name, type(value).__name__, self.arity)


def run_sync(invocation: Invocation) -> dict[str, Any]:
    """Run a plain hook (on a call thread) and return the REPLY object."""
    api_token, hook_token = running(invocation.api_id, invocation.entry.name,
                                    invocation.request_id)
    started = time.perf_counter_ns()
    try:
        try:
            result = invocation.entry.func(*invocation.arguments())
        except BaseException as exc:  # SystemExit in a hook must not end the worker
            raise _hook_failed(invocation, exc) from None
        finally:
            invocation.run_ns = time.perf_counter_ns() - started
        return _finish(invocation, result)
    finally:
        CURRENT_HOOK.reset(hook_token)
        CURRENT_API.reset(api_token)


async def run_async(invocation: Invocation) -> dict[str, Any]:
    """Run an `async def` hook on the loop (the caller bounds it with a deadline)."""
    running(invocation.api_id, invocation.entry.name,  # this task's own context copy
            invocation.request_id)
    started = time.perf_counter_ns()
    try:
        result = await invocation.entry.func(*invocation.arguments())
    except asyncio.CancelledError:
        raise  # the deadline, or the worker stopping
    except BaseException as exc:  # SystemExit in a hook must not stop the loop
        raise _hook_failed(invocation, exc) from None
    finally:
        invocation.run_ns = time.perf_counter_ns() - started
    return _finish(invocation, result)


def _finish(invocation: Invocation, result: Any) -> dict[str, Any]:
    try:
        invocation.absorb(result)
        return invocation.reply()
    except HookFailed:
        raise
    except (TypeError, ValueError) as exc:
        raise HookFailed(ErrorCode.BAD_OBJECT, f"{type(exc).__name__}: {exc}") from None


def _hook_failed(invocation: Invocation, exc: BaseException) -> HookFailed:
    if getattr(exc, "error_code", None) == ErrorCode.DEADLINE:
        # An engine stopped the hook at its own time limit (the JS driver's
        # jsvm_timeout): a timeout like the call deadline's, so 504, not 500.
        log.warning("API %s: hook %s: %s", invocation.api_id, invocation.entry.name, exc)
        return HookFailed(ErrorCode.DEADLINE, str(exc))
    if _caused_by_unavailable_backend(exc):
        # Not the plugin's fault: the gateway answers 503 as for any request that
        # needs the storage while it is down.
        log.warning("API %s: hook %s failed: %s", invocation.api_id, invocation.entry.name, exc)
        return HookFailed(ErrorCode.UNAVAILABLE, f"{type(exc).__name__}: {exc}")
    log.error("API %s: hook %s raised", invocation.api_id, invocation.entry.name,
              exc_info=(type(exc), exc, exc.__traceback__),
              extra={"fields": {"api_id": invocation.api_id, "hook": invocation.entry.name}})
    return HookFailed(ErrorCode.HOOK_FAILED, f"{type(exc).__name__}: {exc}")


def _caused_by_unavailable_backend(exc: BaseException | None) -> bool:
    """True when a host call failed because the gateway's storage is down."""
    for _ in range(8):  # the plugin may have wrapped it; follow a bounded chain
        if exc is None:
            return False
        if isinstance(exc, HostCallError) and exc.code == ErrorCode.UNAVAILABLE:
            return True
        exc = exc.__cause__ or exc.__context__
    return False
