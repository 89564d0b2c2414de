"""What Tyk's Lua plugins find in LuaJIT and Lua 5.4 lacks: Lua 5.1 names and cjson.

Tyk runs Lua plugins on LuaJIT, whose library is Lua 5.1's, and its own Lua
dispatcher requires lua-cjson, so plugins call `unpack`, `loadstring`,
`math.pow` and `require "cjson"` freely.  Coproc runs Lua 5.4 (for deadlines,
see engine.py): `COMPAT` puts those names back, and `JsonCodec` serves
`cjson.encode`/`cjson.decode` from Python's json.

Not reproducible on 5.4: LuaJIT has one number type, so `10/2` prints as `5`
there and as `5.0` here (`math.floor`, `//` or `%d` give an integer on both),
and `setfenv`/`getfenv` do not exist.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

from lupa import lua54

__all__ = ["COMPAT", "JsonCodec"]

#: Run in every API's state, after the `__coproc_json_*` globals are set.
COMPAT: Final = b"""
local json_encode, json_decode = __coproc_json_encode, __coproc_json_decode
__coproc_json_encode, __coproc_json_decode = nil, nil
unpack = unpack or table.unpack
loadstring = loadstring or function(text, name) return load(text, name, "t") end
table.getn = table.getn or function(t) return #t end
table.maxn = table.maxn or function(t)
  local n = 0
  for k in pairs(t) do if type(k) == "number" and k > n then n = k end end
  return n
end
math.pow = math.pow or function(x, y) return x ^ y end
math.log10 = math.log10 or function(x) return math.log(x, 10) end
math.ldexp = math.ldexp or function(m, e) return m * 2.0 ^ e end
local cjson = {null = nil, _NAME = "cjson", _VERSION = "2.1.0"}
function cjson.encode(value)
  local ok, got = json_encode(value)
  if not ok then error(got, 2) end
  return got
end
function cjson.decode(text)
  local ok, got = json_decode(text)
  if not ok then error(got, 2) end
  return got
end
function cjson.new() return cjson end
function cjson.encode_empty_table_as_object() end
package.preload["cjson"] = function() return cjson end
package.preload["cjson.safe"] = function()
  local safe = {null = nil, new = cjson.new}
  function safe.encode(value)
    local ok, got = json_encode(value)
    if ok then return got end
    return nil, got
  end
  function safe.decode(text)
    local ok, got = json_decode(text)
    if ok then return got end
    return nil, got
  end
  return safe
end
"""

#: lua-cjson's default nesting limit.
MAX_DEPTH: Final = 1000


class JsonCodec:
    """cjson's encode and decode for one Lua state (its strings are bytes).  Both
    answer (true, value) or (false, message) and never raise: the Lua side raises
    the message as a Lua error (a Python exception would reach Lua as userdata)."""

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime

    def encode(self, value: Any) -> tuple[bool, Any]:
        try:
            return True, json.dumps(_plain(value, 0), ensure_ascii=False, allow_nan=False,
                                    separators=(",", ":")).encode()
        except (ValueError, RecursionError) as exc:
            return False, str(exc).encode()

    def decode(self, text: Any) -> tuple[bool, Any]:
        if not isinstance(text, (bytes, str)):
            kind = lua54.lua_type(text) or type(text).__name__
            return False, f"bad argument #1 to 'decode' (string expected, got {kind})".encode()
        try:
            return True, self._lua(json.loads(text))
        except (ValueError, RecursionError) as exc:
            return False, f"Expected value but found invalid JSON: {exc}".encode()

    def _lua(self, value: Any) -> Any:
        if isinstance(value, str):
            return value.encode()
        if isinstance(value, dict):
            return self._runtime.table_from({k.encode(): self._lua(v) for k, v in value.items()})
        if isinstance(value, list):
            return self._runtime.table_from([self._lua(v) for v in value])
        return value


def _plain(value: Any, depth: int) -> Any:
    """A Lua value as JSON data, as lua-cjson writes it: a table with the keys 1..n is
    an array, any other (an empty one too) an object; integral numbers without a
    fraction (LuaJIT has one number type)."""
    if depth > MAX_DEPTH:
        raise ValueError(f"Cannot serialise, excessive nesting ({MAX_DEPTH})")
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"Cannot serialise number: must not be NaN or Inf ({value})")
        return int(value) if value.is_integer() and abs(value) < 1e15 else value
    kind = lua54.lua_type(value)
    if kind != "table":
        raise ValueError(f"Cannot serialise {kind or type(value).__name__}: type not supported")
    items = list(value.items())
    keys = [k for k, _ in items]
    if keys and all(type(k) is int for k in keys) and sorted(keys) == list(range(1, len(keys) + 1)):
        return [_plain(v, depth + 1) for _, v in sorted(items, key=lambda kv: kv[0])]
    out: dict[str, Any] = {}
    for key, item in items:
        if isinstance(key, bytes):
            name = key.decode("utf-8", "replace")
        elif isinstance(key, (int, float)) and not isinstance(key, bool):
            name = str(_plain(key, depth + 1))
        else:
            raise ValueError("Cannot serialise table: table key must be a number or string")
        out[name] = _plain(item, depth + 1)
    return out
