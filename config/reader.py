"""Typed access to a parsed JSON document, with errors that say how to fix it.

Every accessor names the file and the dotted field in its error, states what
was expected and what was found.  Unknown fields are left alone by default: Tyk
API definitions carry hundreds of fields Coproc does not use.  Coproc's own
blocks are read strictly instead (`child(key, strict=True)`, then
`reject_unknown()`): a typo there would otherwise silently mean "default".
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["ConfigError", "Reader", "load_json"]

T = TypeVar("T")
_MISSING: Any = object()


class ConfigError(Exception):
    """A configuration file is unusable; the message names file, field and fix."""

    def __init__(self, file: Path | str, field: str, problem: str, fix: str = "") -> None:
        self.file, self.field, self.problem, self.fix = str(file), field, problem, fix
        where = f"{self.file}: field '{field}'" if field else str(self.file)
        super().__init__(f"{where}: {problem}" + (f". Fix: {fix}" if fix else ""))


def load_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read file ({exc.strerror})",
                          "check the path and its permissions") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(path, "", f"invalid JSON at line {exc.lineno} column {exc.colno}: "
                          f"{exc.msg}", "correct the JSON syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(path, "", "the top level must be a JSON object", "wrap it in {...}")
    return data


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               dict: "an object", list: "an array"}


class Reader:
    """Reads fields of one JSON object (or a nested part of it)."""

    def __init__(self, data: dict[str, Any], file: Path | str, prefix: str = "",
                 strict: bool = False) -> None:
        self.data, self.file, self.prefix, self.strict = data, file, prefix, strict
        # Every key a parser asked about is a valid key (asked = valid, whether
        # or not the file has it), which is what `reject_unknown` compares with.
        self._asked: set[str] = set()
        self._children: list[Reader] = []

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def error(self, key: str, problem: str, fix: str = "") -> ConfigError:
        return ConfigError(self.file, self.name(key), problem, fix)

    def has(self, key: str) -> bool:
        self._asked.add(key)
        return key in self.data and self.data[key] is not None

    def get(self, key: str, kind: type[T], default: T = _MISSING) -> T:
        """The field's value; `default` when absent (or null); required otherwise."""
        self._asked.add(key)
        value = self.data.get(key, _MISSING)
        if value is _MISSING or value is None:
            if default is _MISSING:
                raise self.error(key, f"is required (expected {_TYPE_NAMES[kind]})",
                                 f"add \"{key}\" to the file")
            return default
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            raise self.error(key, f"expected {_TYPE_NAMES[kind]}, got {_describe(value)}",
                             f"set \"{key}\" to {_TYPE_NAMES[kind]}")
        return value  # type: ignore[no-any-return]

    def number(self, key: str, kind: type[T], default: T, minimum: float = 0,
               maximum: float | None = None) -> T:
        value = self.get(key, kind, default)
        if value < minimum or (maximum is not None and value > maximum):  # type: ignore[operator]
            bounds = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
            raise self.error(key, f"must be {bounds}, got {value}", f"use a value {bounds}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}; got {value!r}",
                             f"set \"{key}\" to one of {', '.join(choices)}")
        return value

    def child(self, key: str, strict: bool | None = None) -> Reader:
        """A reader for a nested object (an empty one when absent).

        A strict reader's children are strict unless told otherwise.
        """
        child = Reader(self.get(key, dict, {}), self.file, f"{self.prefix}{key}.",
                       self.strict if strict is None else strict)
        self._children.append(child)
        return child

    def reject_unknown(self) -> None:
        """Raise `ConfigError` for the first key of a strict reader no parser asked for.

        Call it after parsing: the message names the key and the nearest valid one.
        """
        for reader in self._strict_readers():
            unknown = sorted(set(reader.data) - reader._asked)
            if unknown:
                key = unknown[0]
                near = difflib.get_close_matches(key, sorted(reader._asked), n=1)
                fix = (f"did you mean \"{near[0]}\"? " if near else "") + \
                    "remove it or correct its name (see the README's configuration reference)"
                raise reader.error(key, "unknown setting", fix)

    def _strict_readers(self) -> list[Reader]:
        found = [self] if self.strict else []
        for child in self._children:
            found.extend(child._strict_readers())
        return found

    def items(self, key: str, parse: Callable[[Reader], T]) -> tuple[T, ...]:
        """Parse an array of objects with `parse`."""
        values = self.get(key, list, [])
        out = []
        for index, item in enumerate(values):
            if not isinstance(item, dict):
                raise self.error(f"{key}[{index}]", f"expected an object, got {_describe(item)}")
            out.append(parse(Reader(item, self.file, f"{self.prefix}{key}[{index}].")))
        return tuple(out)


def _describe(value: Any) -> str:
    for kind, name in _TYPE_NAMES.items():
        if isinstance(value, bool):
            return "true/false"
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__
