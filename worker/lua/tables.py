"""Coprocess objects to Lua tables and back, guided by the wire schema.

Lua tables do not tell a list from a map (an empty table is both), and the Lua
state has no text encoding (every Lua string is bytes), so the way back uses
the field shapes of `ipc.coprocess`: what a field should hold decides how a
table or string is read.  Anything a hook put in a field that cannot hold it is
an error naming the field, as protobuf would refuse it.

`raw_body` fields are base64 text on the Lua side, as in Tyk (whose Lua driver
hands hooks the JSON encoding of the object, where bytes are base64).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from lupa import lua54

from ipc.coprocess import default_for
from ipc.schema import ListOf, MapOf, Record, Shape

__all__ = ["LuaValueError", "from_lua", "to_plain"]


class LuaValueError(ValueError):
    """A Lua hook returned a value a coprocess field cannot hold."""


def to_plain(wire: Any, shape: Shape) -> Any:
    """A wire value made ready for Lua: bytes fields as base64 text."""
    if shape is bytes:
        raw = wire if isinstance(wire, (bytes, bytearray, memoryview)) else b""
        return base64.b64encode(bytes(raw)).decode()
    if isinstance(shape, Record) and isinstance(wire, dict):
        return {k: to_plain(v, shape.fields[k]) for k, v in wire.items() if k in shape.fields}
    if isinstance(shape, MapOf) and isinstance(wire, dict):
        return {k: to_plain(v, shape.value) for k, v in wire.items()}
    if isinstance(shape, ListOf) and isinstance(wire, list):
        return [to_plain(v, shape.item) for v in wire]
    return wire


def from_lua(value: Any, shape: Shape, where: str) -> Any:
    """The wire value of `value` (from Lua) for a field of `shape`; nil → the default."""
    if value is None:
        return default_for(shape)
    if isinstance(shape, type):
        return _scalar(value, shape, where)
    if lua54.lua_type(value) != "table":
        raise LuaValueError(f"{where}: expected a table, got {_lua_kind(value)}")
    if isinstance(shape, Record):
        out = {}
        for key, item in value.items():
            name = _key(key, where)
            field = shape.fields.get(name)
            if field is None:
                continue  # Tyk's JSON decoding ignores unknown fields too
            out[name] = from_lua(item, field, f"{where}.{name}")
        return out
    if isinstance(shape, MapOf):
        return {_key(k, where): from_lua(v, shape.value, f"{where}[{_key(k, where)}]")
                for k, v in value.items()}
    items = sorted(value.items(), key=lambda kv: kv[0] if isinstance(kv[0], int) else 0)
    if any(not isinstance(k, int) for k, _ in items):
        raise LuaValueError(f"{where}: expected a list (a table with keys 1..n)")
    return [from_lua(v, shape.item, f"{where}[{k}]") for k, v in items]


def _scalar(value: Any, kind: type, where: str) -> Any:
    if kind is bytes:
        text = value if isinstance(value, bytes) else str(value).encode()
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise LuaValueError(f"{where}: expected base64 text (raw_body is base64, as in "
                                "Tyk)") from None
    if isinstance(value, bool):
        if kind is bool:
            return value
    elif kind is str:
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        if isinstance(value, (int, float)):
            return _number_text(value)
    elif kind in (int, float) and isinstance(value, (int, float)):
        return kind(value)
    raise LuaValueError(f"{where}: expected {kind.__name__}, got {_lua_kind(value)}")


def _number_text(value: float) -> str:
    # Lua's integers and floats become text the way Lua's tostring writes them.
    if isinstance(value, float) and value.is_integer():
        return f"{value:.1f}"
    return str(value)


def _key(key: Any, where: str) -> str:
    if isinstance(key, bytes):
        return key.decode("utf-8", "replace")
    if isinstance(key, (int, float)) and not isinstance(key, bool):
        return str(key)
    raise LuaValueError(f"{where}: a table key must be a string, got {_lua_kind(key)}")


def _lua_kind(value: Any) -> str:
    kind = lua54.lua_type(value)
    if kind:
        return str(kind)
    return {bytes: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(value), type(value).__name__)
