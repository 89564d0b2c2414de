"""One Lua 5.4 state per API: Tyk's Lua API, the plugin files, deadline-bounded calls.

Why Lua 5.4 and not LuaJIT (both ship in lupa): a hook must stop at its
deadline, and the only way to interrupt running Lua is an instruction-count
hook, which LuaJIT does not run inside JIT-compiled loops (measured: an endless
`while true do end` under LuaJIT ignored the hook for good; under Lua 5.4 it
stopped at the deadline).  A call costs about 4 us under Lua 5.4 through lupa,
which is noise next to the hook round trip.

Tyk builds a new Lua state for every call; Coproc keeps one state per API (a
state costs about 1 ms to build and load), so a plugin's globals persist between
calls of the same API, as a Python plugin's module globals do.  Each API's state
is its own: one API's Lua code never sees another's.

lupa serialises calls into one state with its own lock, so concurrent hooks of
one API run one after another (hooks of different APIs run in parallel on the
worker's call threads).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lupa import lua54

from worker.lua.compat import COMPAT, JsonCodec

__all__ = ["LuaDeadline", "LuaHookError", "LuaState"]

#: Instructions between two deadline checks: a check is one call into Python
#: (about 0.3 us), so this costs well under 1 % of a busy loop.
CHECK_EVERY = 10_000
#: Memory one API's Lua state may use (lupa's allocator limit).
DEFAULT_MAX_MEMORY = 64 * 1024 * 1024

_DEADLINE_MARK = "coproc: the hook ran past its deadline"

# Tyk's Lua API (coprocess/lua/tyk/*.lua in Tyk): a global `tyk` whose `req`
# functions change the object of the call in progress (global `object`), and a
# `dispatch` that calls the hook named by the object.  Written here; the
# deadline wrapper keeps its own reference to debug.sethook, which plugins do
# not get (a plugin that cleared the hook could no longer be stopped).
_PRELUDE = b"""
local sethook = debug.sethook
local now = __coproc_now
local deadline_mark = __coproc_deadline_mark
__coproc_now, __coproc_deadline_mark = nil, nil
debug.sethook, debug.gethook = nil, nil
-- What reaches into other functions' variables: the deadline wrapper's upvalues
-- hold sethook and the Python clock.
debug.getupvalue, debug.setupvalue, debug.upvaluejoin, debug.upvalueid = nil, nil, nil, nil
debug.getlocal, debug.setlocal, debug.getregistry = nil, nil, nil
python = nil

object = nil

local request = {}

function request.get_headers()
  return object.request.headers
end

function request.set_header(key, value)
  local req = object.request
  req.set_headers = req.set_headers or {}
  req.set_headers[key] = value
end

function request.clear_header(key)
  local req = object.request
  req.delete_headers = req.delete_headers or {}
  table.insert(req.delete_headers, key)
end

function request.start_time()
  return nil
end

function request.http_version()
  return nil
end

tyk = {req = request, session = {}, header = nil}

function __coproc_call(deadline, name, current, ...)
  local hook = _G[name]
  if type(hook) ~= "function" then
    error("no global Lua function named '" .. name .. "'", 0)
  end
  object = current
  sethook(function()
    if now() > deadline then error(deadline_mark, 0) end
  end, "", %d)
  local results = table.pack(pcall(hook, ...))
  sethook()
  object = nil
  if not results[1] then error(results[2], 0) end
  return table.unpack(results, 2, results.n)
end
""" % CHECK_EVERY


class LuaHookError(Exception):
    """A Lua hook raised an error, or its files did not load."""


class LuaDeadline(LuaHookError):
    """A Lua hook ran past its deadline and was stopped."""


class LuaState:
    """The Lua state of one API: Tyk's `tyk` table plus that API's plugin files."""

    def __init__(self, files: Iterable[Path], max_memory: int = DEFAULT_MAX_MEMORY) -> None:
        self.runtime = lua54.LuaRuntime(encoding=None, register_eval=False,
                                        register_builtins=False, unpack_returned_tuples=True,
                                        max_memory=max_memory, attribute_filter=_no_attributes)
        self._lock = threading.Lock()  # `object` is one global: one call at a time
        self._max_memory = max_memory
        lua_globals = self.runtime.globals()
        lua_globals[b"__coproc_now"] = time.monotonic
        lua_globals[b"__coproc_deadline_mark"] = _DEADLINE_MARK.encode()
        codec = JsonCodec(self.runtime)
        lua_globals[b"__coproc_json_encode"] = codec.encode
        lua_globals[b"__coproc_json_decode"] = codec.decode
        self.runtime.execute(COMPAT)
        self.runtime.execute(_PRELUDE)
        self._call = lua_globals[b"__coproc_call"]
        loader = self.runtime.eval(
            b"function(src, name) local f, err = load(src, '@' .. name, 't') "
            b"if not f then error(err, 0) end return f() end")
        for path in files:
            try:
                # Lua cuts chunk names past 60 bytes: name the file, the
                # message below carries the whole path.
                loader(path.read_bytes(), path.name.encode())
            except lua54.LuaError as exc:
                raise LuaHookError(f"{path}: {_text(exc)}") from None
            except OSError as exc:
                raise LuaHookError(f"{path}: cannot read ({exc.strerror})") from None

    def table(self, value: Any) -> Any:
        """A Lua table (recursively) from plain dicts, lists, str, bytes and numbers."""
        return self.runtime.table_from(_to_lua(value), recursive=True)

    def has_function(self, name: str) -> bool:
        value = self.runtime.globals()[name.encode()]
        return bool(lua54.lua_type(value) == "function")

    def call(self, name: str, timeout_s: float, current: Any, *args: Any) -> tuple[Any, ...]:
        """Call the global function `name` with `current` as Tyk's `object`."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            try:
                result = self._call(deadline, name.encode(), current, *args)
            except MemoryError:  # lupa's LuaMemoryError: the state's cap was reached
                raise LuaHookError(f"Lua hook {name}: the API's Lua state ran out of "
                                   f"memory ({self._max_memory >> 20} MiB)") from None
            except lua54.LuaError as exc:
                text = _text(exc)
                if text.startswith(_DEADLINE_MARK):
                    raise LuaDeadline(f"Lua hook {name} stopped after {timeout_s:g} s "
                                      "(its deadline)") from None
                raise LuaHookError(f"Lua hook {name}: {text}") from None
        return result if isinstance(result, tuple) else (result,)


def _text(exc: BaseException) -> str:
    """The Lua error message without the traceback lupa appends (it shows lupa's frames)."""
    message = exc.args[0] if exc.args else exc
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    return text.split("\nstack traceback:", 1)[0]


def _no_attributes(obj: Any, name: Any, setting: bool) -> Any:
    """lupa's attribute filter: Lua code may call the Python functions it is given,
    never read or set their attributes (`f.__self__`, `__globals__`: the way out)."""
    raise AttributeError("Lua plugins have no access to Python attributes")


def _to_lua(value: Any) -> Any:
    """Plain data with every str as UTF-8 bytes (the state has no text encoding)."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict):
        return {_to_lua(k): _to_lua(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_lua(v) for v in value]
    return value
