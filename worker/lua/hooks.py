"""Lua hooks as worker hooks: load an API's Lua files, wrap each hook in Tyk's arity.

Calling conventions (Tyk's, with Coproc's two fixes, see docs/drivers/lua.md):

=============  ===============================================  ===========================
phase          Lua call                                         returns
=============  ===============================================  ===========================
pre, post,     ``f(request, session, spec)``                    ``request, session``
post_key_auth
auth_check     ``f(request, session, metadata, spec)``          ``request, session, metadata``
response       ``f(request, response, session, metadata, spec)`` ``response``
=============  ===============================================  ===========================

Tyk meant auth hooks to get `metadata` but its dispatcher never passed it (Lua
auth never worked there), and gave response hooks no response at all.  A nil
return keeps the table the hook got (with whatever it changed in place, which
is what `tyk.req.set_header` does).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from config.apidef import APIDefinition, HookDef
from ipc.coprocess import REQUEST, RESPONSE, SESSION, STR_MAP
from ipc.schema import Shape
from worker.engine_files import engine_files, phase_hooks
from worker.loader import ApiPlugins, BundleError, HookEntry
from worker.lua.engine import LuaDeadline, LuaHookError, LuaState
from worker.lua.tables import LuaValueError, from_lua, to_plain
from worker.objects import Message, MiniRequestObject, ResponseObject, SessionState

__all__ = ["LuaDeadline", "LuaHookError", "load_lua_api", "load_lua_plugins"]

log = logging.getLogger("worker.lua")

#: The Lua stop comes this long after the hook's deadline: the worker answers the
#: call at the deadline (504, as for any hook), and the stop then frees the call
#: thread; stopping first would turn a timeout into a hook error.
STOP_MARGIN_S = 0.1

#: Tyk's numeric hook types (coprocess.HookType), which the object carries.
_HOOK_TYPE_NUMBERS = {"pre": 1, "post": 2, "post_key_auth": 3, "auth_check": 4, "response": 5}


def load_lua_api(api: APIDefinition) -> ApiPlugins:
    """The Lua plugins of one API (never raises): its files, then its hooks."""
    try:
        files = engine_files(api, ".lua")
    except BundleError as exc:
        return ApiPlugins(api.api_id, source=api.custom_middleware_bundle,
                          load_error=f"BundleError: {exc}")
    return load_lua_plugins(api, files, phase_hooks(api))


def load_lua_plugins(api: APIDefinition, files: Sequence[Path],
                     hooks: Iterable[tuple[str, HookDef]]) -> ApiPlugins:
    """Load `files` into a new Lua state for `api` and wrap each (phase, hook)."""
    plugins = ApiPlugins(api.api_id, source=", ".join(str(f) for f in files))
    try:
        state = LuaState(files)
    except LuaHookError as exc:
        plugins.load_error = f"LuaError: {exc}"
        return plugins
    for phase, hook in hooks:
        if not state.has_function(hook.name):
            plugins.problems.append(f"hook {hook.name!r} is not a global Lua function in "
                                    f"{plugins.source}")
            continue
        make = _WRAPPERS[phase]
        func, arity = make(state, hook.name, hook.timeout_ms / 1000 + STOP_MARGIN_S, phase)
        plugins.hooks[hook.name] = HookEntry(hook.name, func, arity, False, False,
                                             plugins.source)
    return plugins


def _object(state: LuaState, phase: str, name: str, **parts: Any) -> Any:
    """Tyk's `object` global for the call: the same tables the hook gets."""
    return state.table({"hook_name": name, "hook_type": _HOOK_TYPE_NUMBERS[phase], **parts})


def _tables(state: LuaState, request: Any, session: Message,
            spec: Any) -> tuple[Any, Any, Any]:
    # The worker hands hooks Tyk's `request` wrapper (worker/request.py); Lua
    # gets the MiniRequestObject's fields, as Tyk's JSON object carries them.
    message = getattr(request, "object", request)
    return (state.table(to_plain(message.to_wire(), REQUEST)),
            state.table(to_plain(session.to_wire(), SESSION)),
            state.table(dict(spec)))


def _back(value: Any, fallback: Any, shape: Shape, cls: type[Message], where: str) -> Any:
    try:
        return cls.from_wire(from_lua(value if value is not None else fallback, shape, where))
    except LuaValueError as exc:
        raise LuaHookError(str(exc)) from None


def _request_hook(state: LuaState, name: str, timeout_s: float,
                  phase: str) -> tuple[Callable[..., Any], int]:
    def hook(request: Message, session: Message, spec: Any) -> Any:
        req, sess, spec_table = _tables(state, request, session, spec)
        current = _object(state, phase, name, spec=spec_table)
        current[b"request"], current[b"session"] = req, sess
        got = state.call(name, timeout_s, current, req, sess, spec_table)
        got += (None,) * (2 - len(got))
        return (_back(got[0], req, REQUEST, MiniRequestObject, "request"),
                _back(got[1], sess, SESSION, SessionState, "session"))
    return hook, 3


def _auth_hook(state: LuaState, name: str, timeout_s: float,
               phase: str) -> tuple[Callable[..., Any], int]:
    def hook(request: Message, session: Message, metadata: Any,
             spec: Any) -> Any:
        req, sess, spec_table = _tables(state, request, session, spec)
        meta = state.table(dict(metadata))
        current = _object(state, phase, name, spec=spec_table)
        current[b"request"], current[b"session"], current[b"metadata"] = req, sess, meta
        got = state.call(name, timeout_s, current, req, sess, meta, spec_table)
        got += (None,) * (3 - len(got))
        try:
            new_meta = from_lua(got[2] if got[2] is not None else meta, STR_MAP, "metadata")
        except LuaValueError as exc:
            raise LuaHookError(str(exc)) from None
        return (_back(got[0], req, REQUEST, MiniRequestObject, "request"),
                _back(got[1], sess, SESSION, SessionState, "session"), new_meta)
    return hook, 4


def _response_hook(state: LuaState, name: str, timeout_s: float,
                   phase: str) -> tuple[Callable[..., Any], int]:
    def hook(request: Message, response: Message, session: Message,
             metadata: Any, spec: Any) -> Any:
        req, sess, spec_table = _tables(state, request, session, spec)
        resp = state.table(to_plain(response.to_wire(), RESPONSE))
        meta = state.table(dict(metadata))
        current = _object(state, phase, name, spec=spec_table)
        current[b"request"], current[b"session"] = req, sess
        current[b"response"], current[b"metadata"] = resp, meta
        got = state.call(name, timeout_s, current, req, resp, sess, meta, spec_table)
        return _back(got[0] if got else None, resp, RESPONSE, ResponseObject, "response")
    return hook, 5


_WRAPPERS = {"pre": _request_hook, "post": _request_hook, "post_key_auth": _request_hook,
             "auth_check": _auth_hook, "response": _response_hook}
