"""Header values are bytes on the wire and text in aiohttp and in Tyk's object: carry any byte.

aiohttp's parsers decode a header value as UTF-8 with `surrogateescape`, so a
byte that is not UTF-8 (RFC 9110's obs-text, e.g. 0xFF) becomes a lone
surrogate.  Two places then went wrong: the hook object's msgpack encoding
refused it (500 on every hooked API), and aiohttp's C header writer silently
drops such characters, so the upstream got other bytes than the client sent.

* `install()` wraps aiohttp's header serializer: a head with a non-ASCII value
  is encoded with `surrogateescape`, i.e. back to the exact bytes received (the
  same control-character checks as aiohttp's); all-ASCII heads keep the C path.
* `plugin_text()` is the value a plugin sees: valid UTF-8 as text; anything
  else decoded as ISO-8859-1, one character per byte, so a plugin gets every
  byte back with `value.encode("latin-1")`.  This is what Go (Tyk) would hand a
  plugin if its protobuf object accepted such bytes (Go strings are bytes), and
  what WSGI (PEP 3333) does with header bytes.

A header a plugin leaves alone reaches the upstream byte for byte; a value a
plugin sets is sent as UTF-8 (it is text).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import aiohttp.http_writer

__all__ = ["install", "plugin_text", "wire_bytes"]

_FORBIDDEN = ("\r", "\n", "\0")


def plugin_text(value: str) -> str:
    """`value` as Tyk's object carries it (see the module docstring)."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("latin-1")
    return value


def wire_bytes(value: str) -> bytes:
    """The bytes aiohttp received for a header value it decoded."""
    return value.encode("utf-8", "surrogateescape")


def _exact(status_line: str, headers: Mapping[str, str]) -> bytes:
    lines = [status_line]
    for name, value in headers.items():
        if any(c in name or c in value for c in _FORBIDDEN):
            raise ValueError("Forbidden control character detected in headers. "
                             "Potential header injection attack.")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def install() -> None:
    """Route heads with non-ASCII values through `_exact` (idempotent, process-wide)."""
    module: Any = aiohttp.http_writer
    fast: Callable[[str, Mapping[str, str]], bytes] = module._serialize_headers
    if getattr(fast, "coproc_exact", False):
        return

    def serialize(status_line: str, headers: Mapping[str, str]) -> bytes:
        for value in headers.values():
            if not value.isascii():
                return _exact(status_line, headers)
        return fast(status_line, headers)

    serialize.coproc_exact = True  # type: ignore[attr-defined]
    module._serialize_headers = serialize
