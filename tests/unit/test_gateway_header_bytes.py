"""Header bytes that are not UTF-8: exact on the wire, latin-1 text for plugins."""

from __future__ import annotations

import aiohttp.http_writer
import pytest
from multidict import CIMultiDict

from gateway import header_bytes
from gateway.tyk_object import header_map, multivalue_headers

RAW = b"a\xff\xfeb"
ESCAPED = RAW.decode("utf-8", "surrogateescape")  # what aiohttp's parser hands us


def test_plugin_text_is_latin1_only_for_bytes_that_are_not_utf8() -> None:
    assert header_bytes.plugin_text("plain") == "plain"
    assert header_bytes.plugin_text("caf\u00e9") == "caf\u00e9"  # valid UTF-8 stays text
    assert header_bytes.plugin_text(ESCAPED).encode("latin-1") == RAW
    assert header_map([("x-bin", ESCAPED)]) == {"X-Bin": "a\u00ff\u00feb"}
    assert multivalue_headers([("x-bin", ESCAPED)])[0]["values"] == ["a\u00ff\u00feb"]


def test_installed_serializer_writes_the_received_bytes() -> None:
    header_bytes.install()
    header_bytes.install()  # idempotent
    serialize = aiohttp.http_writer._serialize_headers
    head = serialize("GET / HTTP/1.1", CIMultiDict({"X-Bin": ESCAPED, "X-Text": "caf\u00e9"}))
    assert b"X-Bin: " + RAW + b"\r\n" in head
    assert "X-Text: caf\u00e9".encode() in head
    ascii_head = serialize("GET / HTTP/1.1", CIMultiDict({"A": "b"}))
    assert ascii_head == b"GET / HTTP/1.1\r\nA: b\r\n\r\n"
    with pytest.raises(ValueError, match="Forbidden control character"):
        serialize("GET / HTTP/1.1", CIMultiDict({"X-Bin": ESCAPED + "\r\nX-Evil: 1"}))
