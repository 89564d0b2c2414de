"""Typed access to a parsed JSON document, with errors that say how to fix it.

Every accessor names the file and the dotted field in its error, states what
was expected and what was found.  Unknown fields are left alone: Tyk API
definitions carry hundreds of fields Coproc does not use.
"""

from __future__ import annotations

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

    def __init__(self, data: dict[str, Any], file: Path | str, prefix: str = "") -> None:
        self.data, self.file, self.prefix = data, file, prefix

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def error(self, key: str, problem: str, fix: str = "") -> ConfigError:
        return ConfigError(self.file, self.name(key), problem, fix)

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def get(self, key: str, kind: type[T], default: T = _MISSING) -> T:
        """The field's value; `default` when absent (or null); required otherwise."""
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

    def child(self, key: str) -> Reader:
        """A reader for a nested object (an empty one when absent)."""
        return Reader(self.get(key, dict, {}), self.file, f"{self.prefix}{key}.")

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
