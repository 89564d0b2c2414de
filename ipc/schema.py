"""A tiny structural validator for msgpack-decoded wire data.

Everything that arrives on a socket is checked against a `Shape` before any
other code sees it; a mismatch raises `ProtocolError` naming the path of the
offending field.  Shapes are plain Python values so the protocol tables read
like documentation:

* a Python type (`str`, `bytes`, `int`, `float`, `bool`) - a scalar;
  `float` also accepts an `int`, `int` rejects `bool`;
* `MapOf(shape)` - a map with `str` keys;
* `ListOf(shape)` - an array;
* `Record({...})` - a map with known keys, each optional, unknown keys rejected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = ["ListOf", "MapOf", "ProtocolError", "Record", "Shape", "check"]


class ProtocolError(Exception):
    """A peer sent something that is not valid Coproc protocol."""


@dataclass(frozen=True, slots=True)
class MapOf:
    value: Shape
    max_items: int = 100_000


@dataclass(frozen=True, slots=True)
class ListOf:
    item: Shape
    max_items: int = 100_000


@dataclass(frozen=True, slots=True)
class Record:
    fields: Mapping[str, Shape]
    required: frozenset[str] = frozenset()


Shape: TypeAlias = type | MapOf | ListOf | Record


def check(value: Any, shape: Shape, path: str = "$") -> None:
    """Raise `ProtocolError` unless `value` has `shape`."""
    if isinstance(shape, type):
        _check_scalar(value, shape, path)
    elif isinstance(shape, Record):
        _check_record(value, shape, path)
    elif isinstance(shape, MapOf):
        if not isinstance(value, dict):
            raise ProtocolError(f"{path}: expected a map, got {type(value).__name__}")
        if len(value) > shape.max_items:
            raise ProtocolError(f"{path}: more than {shape.max_items} entries")
        for key, item in value.items():
            if not isinstance(key, str):
                raise ProtocolError(f"{path}: map keys must be strings")
            check(item, shape.value, f"{path}.{key}")
    else:
        if not isinstance(value, list):
            raise ProtocolError(f"{path}: expected an array, got {type(value).__name__}")
        if len(value) > shape.max_items:
            raise ProtocolError(f"{path}: more than {shape.max_items} items")
        for index, item in enumerate(value):
            check(item, shape.item, f"{path}[{index}]")


def _check_scalar(value: Any, expected: type, path: str) -> None:
    if expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ProtocolError(
            f"{path}: expected {expected.__name__}, got {type(value).__name__}"
        )


def _check_record(value: Any, shape: Record, path: str) -> None:
    if not isinstance(value, dict):
        raise ProtocolError(f"{path}: expected a map, got {type(value).__name__}")
    for key, item in value.items():
        field = shape.fields.get(key) if isinstance(key, str) else None
        if field is None:
            raise ProtocolError(f"{path}: unknown field {key!r}")
        check(item, field, f"{path}.{key}")
    missing = shape.required.difference(value)
    if missing:
        raise ProtocolError(f"{path}: missing field(s) {', '.join(sorted(missing))}")
