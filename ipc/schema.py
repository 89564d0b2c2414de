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

`check` runs on every message, so it is two-speed.  The first time a shape is
checked it is compiled into one generated Python function (nested shapes
inlined, nothing allocated on success) that only answers "valid or not"; only
when it says "not" does `_explain` walk the value again, the plain recursive
way, to raise the error naming the offending path.  The two must agree on every
value: tests/unit/test_schema_compiled.py compares them.  Shapes must not be
changed once used (the compiled function is cached on the shape).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

__all__ = ["ListOf", "MapOf", "ProtocolError", "Record", "Shape", "check"]


class ProtocolError(Exception):
    """A peer sent something that is not valid Coproc protocol."""


Validator: TypeAlias = Callable[[Any], None]


@dataclass(frozen=True, slots=True)
class MapOf:
    value: Shape
    max_items: int = 100_000
    _validator: Validator | None = field(default=None, init=False, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class ListOf:
    item: Shape
    max_items: int = 100_000
    _validator: Validator | None = field(default=None, init=False, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Record:
    fields: Mapping[str, Shape]
    required: frozenset[str] = frozenset()
    _validator: Validator | None = field(default=None, init=False, repr=False, compare=False)


Shape: TypeAlias = type | MapOf | ListOf | Record


def check(value: Any, shape: Shape, path: str = "$") -> None:
    """Raise `ProtocolError` unless `value` has `shape`."""
    try:
        _compiled(shape)(value)
    except _Invalid:
        _explain(value, shape, path)
        raise ProtocolError(f"{path}: invalid value") from None  # only if the two disagree


# -- the fast path ------------------------------------------------------------------------------


class _Invalid(Exception):
    """Raised by compiled validators; carries nothing (`_explain` finds the details)."""


_SCALARS: dict[type, Validator] = {}
#: Shapes nested deeper than this in one generated function are checked by a call instead
#: (CPython allows 20 nested loops and 100 indents); so is a shape that contains itself.
_MAX_LOOPS, _MAX_INDENT = 8, 40
_NUMBER = (int, float)


def _compiled(shape: Shape) -> Validator:
    if isinstance(shape, type):
        validator = _SCALARS.get(shape)
        if validator is None:
            validator = _SCALARS[shape] = _Source(shape).function()
        return validator
    validator = shape._validator
    if validator is None:
        validator = _Source(shape).function()
        object.__setattr__(shape, "_validator", validator)
    return validator


def _ref(value: Any, shape: Shape) -> None:
    """The reference rules as a validator (for dict subclasses given as records)."""
    try:
        _explain(value, shape, "")
    except ProtocolError:
        raise _Invalid from None


def _deferred(shape: Shape) -> Validator:
    def validate(value: Any) -> None:
        _compiled(shape)(value)
    return validate


class _Source:
    """The source of one shape's validator, `def validate(value)`, raising `_Invalid`.

    Only names made here, `repr`s of `str` field names and `int` bounds go into the
    text; types and helpers are passed in as the function's globals.  Each scalar
    check decides the common case, the exact expected type, by one `type(x) is T`.
    """

    def __init__(self, shape: Shape) -> None:
        self.lines = ["def validate(value):"]
        self.names: dict[str, Any] = {"_Invalid": _Invalid, "_ref": _ref}
        self.ids: dict[int, str] = {}
        self.active: set[int] = set()
        self.locals = 0
        self.emit(shape, "value", 1, 0)

    def function(self) -> Validator:
        code = compile("\n".join(self.lines) + "\n", "<ipc.schema>", "exec")
        exec(code, self.names)  # noqa: S102 (text made by _Source from the shape alone)
        validator: Validator = self.names["validate"]
        return validator

    def name(self, obj: Any) -> str:
        """A global name for `obj` in the generated function."""
        key = self.ids.get(id(obj))
        if key is None:
            key = self.ids[id(obj)] = f"_g{len(self.ids)}"
            self.names[key] = obj
        return key

    def var(self, prefix: str) -> str:
        """A fresh local name."""
        self.locals += 1
        return f"{prefix}{self.locals}"

    def out(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def emit(self, shape: Shape, v: str, indent: int, loops: int) -> None:
        """Lines that raise `_Invalid` unless local `v` has `shape`."""
        if isinstance(shape, type):
            t = self.name(shape)
            if shape is int:
                rest = f"(type({v}) is bool or not isinstance({v}, {t}))"
            elif shape is float:
                rest = f"(type({v}) is bool or not isinstance({v}, {self.name(_NUMBER)}))"
            else:
                rest = f"not isinstance({v}, {t})"
            self.out(indent, f"if type({v}) is not {t} and {rest}: raise _Invalid")
        elif id(shape) in self.active or loops >= _MAX_LOOPS or indent >= _MAX_INDENT:
            self.out(indent, f"{self.name(_deferred(shape))}({v})")
        else:
            self.active.add(id(shape))
            if isinstance(shape, Record):
                self.record(shape, v, indent, loops)
            else:
                self.container(shape, v, indent, loops)
            self.active.discard(id(shape))

    def container(self, shape: MapOf | ListOf, v: str, indent: int, loops: int) -> None:
        if type(shape.max_items) is not int:
            raise TypeError(f"max_items must be an int, not {shape.max_items!r}")
        kind = "dict" if isinstance(shape, MapOf) else "list"
        self.out(indent, f"if type({v}) is not {kind} and not isinstance({v}, {kind}) "
                         f"or len({v}) > {shape.max_items}: raise _Invalid")
        self.out(indent, f"elif {v}:")  # most maps and arrays on the wire are empty
        item = self.var("i")
        if isinstance(shape, MapOf):
            key = self.var("k")
            self.out(indent + 1, f"for {key}, {item} in {v}.items():")
            self.out(indent + 2, f"if type({key}) is not str and not isinstance({key}, str): "
                                 "raise _Invalid")
            self.emit(shape.value, item, indent + 2, loops + 1)
        else:
            self.out(indent + 1, f"for {item} in {v}:")
            self.emit(shape.item, item, indent + 2, loops + 1)

    def record(self, shape: Record, v: str, indent: int, loops: int) -> None:
        # A dict subclass may answer `in` and `[]` otherwise than iteration: it gets the
        # reference rules.  A plain dict: each known field looked up, the present ones
        # counted; any other key leaves the count short of len().
        self.out(indent, f"if type({v}) is not dict: _ref({v}, {self.name(shape)})")
        if not shape.required.issubset(shape.fields):
            self.out(indent, "else: raise _Invalid")
            return
        if not shape.fields:
            self.out(indent, f"elif {v}: raise _Invalid")
            return
        self.out(indent, "else:" if shape.required else f"elif {v}:")
        count = self.var("n")
        self.out(indent + 1, f"{count} = {len(shape.required)}")
        for name, sub in shape.fields.items():
            if type(name) is not str:
                raise TypeError(f"Record field names must be str, not {name!r}")
            item, inner = self.var("f"), indent + 1
            if name in shape.required:
                self.out(inner, f"if {name!r} not in {v}: raise _Invalid")
            else:
                self.out(inner, f"if {name!r} in {v}:")
                inner += 1
                self.out(inner, f"{count} += 1")
            self.out(inner, f"{item} = {v}[{name!r}]")
            self.emit(sub, item, inner, loops)
        self.out(indent + 1, f"if {count} != len({v}): raise _Invalid")


# -- the slow path: find the first problem and say where it is ---------------------------------


def _explain(value: Any, shape: Shape, path: str) -> None:
    if isinstance(shape, type):
        _explain_scalar(value, shape, path)
    elif isinstance(shape, Record):
        _explain_record(value, shape, path)
    elif isinstance(shape, MapOf):
        if not isinstance(value, dict):
            raise ProtocolError(f"{path}: expected a map, got {type(value).__name__}")
        if len(value) > shape.max_items:
            raise ProtocolError(f"{path}: more than {shape.max_items} entries")
        for key, item in value.items():
            if not isinstance(key, str):
                raise ProtocolError(f"{path}: map keys must be strings")
            _explain(item, shape.value, f"{path}.{key}")
    else:
        if not isinstance(value, list):
            raise ProtocolError(f"{path}: expected an array, got {type(value).__name__}")
        if len(value) > shape.max_items:
            raise ProtocolError(f"{path}: more than {shape.max_items} items")
        for index, item in enumerate(value):
            _explain(item, shape.item, f"{path}[{index}]")


def _explain_scalar(value: Any, expected: type, path: str) -> None:
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


def _explain_record(value: Any, shape: Record, path: str) -> None:
    if not isinstance(value, dict):
        raise ProtocolError(f"{path}: expected a map, got {type(value).__name__}")
    for key, item in value.items():
        field = shape.fields.get(key) if isinstance(key, str) else None
        if field is None:
            raise ProtocolError(f"{path}: unknown field {key!r}")
        _explain(item, field, f"{path}.{key}")
    missing = shape.required.difference(value)
    if missing:
        raise ProtocolError(f"{path}: missing field(s) {', '.join(sorted(missing))}")
