"""The REPLY delta rule and lazy body text (ipc/coprocess.py), as both ends use them."""

from __future__ import annotations

from typing import Any

from ipc.coprocess import MISSING, LazyText, merge_reply, record_delta, replaced, utf8_text
from worker.objects import MiniRequestObject, changed_fields


def _wire(name: str, value: Any) -> Any:
    return "" if value is MISSING else value


def test_merge_reply_lays_changed_fields_over_what_was_sent() -> None:
    sent = {"request": {"url": "/a", "raw_body": b"x"}, "metadata": {"a": "1"}, "spec": {}}
    merged = merge_reply(sent, {"request": {"url": "/b"}, "metadata": {"t": "2"}})
    assert merged == {"request": {"url": "/b", "raw_body": b"x"}, "metadata": {"t": "2"},
                      "spec": {}}
    # an unchanged field is the very object that was sent: `replaced` tells by identity
    assert merged["request"]["raw_body"] is sent["request"]["raw_body"]
    assert replaced(merged["request"], sent["request"], "raw_body") is MISSING
    assert replaced(merged["request"], sent["request"], "url") == "/b"
    assert replaced({}, sent["request"], "url") is MISSING
    assert sent == {"request": {"url": "/a", "raw_body": b"x"}, "metadata": {"a": "1"},
                    "spec": {}}  # not changed in place


def test_record_delta_skips_untouched_fields_and_compares_the_rest() -> None:
    body = b"B" * 100
    sent = {"url": "/a", "raw_body": body, "method": "GET"}
    now = {"url": "/a", "raw_body": body, "method": "POST", "scheme": "https"}
    assert record_delta(now, sent, _wire) == {"method": "POST", "scheme": "https"}
    # a field back to its default counts as changed; an equal copy does not
    assert record_delta({"raw_body": bytes(body)}, sent, _wire) == {"url": "", "method": ""}


def test_lazy_text_is_decoded_once_and_counts_as_its_text() -> None:
    lazy = LazyText("é".encode())
    assert lazy.text() == "é" and lazy.text() is lazy.text()
    assert LazyText(b"\xff").text() == "" == utf8_text(b"\xff")
    sent = {"body": lazy}
    assert record_delta({"body": lazy}, sent, _wire) == {}  # not read
    assert record_delta({"body": lazy.text()}, sent, _wire) == {}  # read, not changed
    assert record_delta({"body": "other"}, sent, _wire) == {"body": "other"}


def test_worker_delta_merged_by_the_gateway_gives_the_object_after_the_hook() -> None:
    sent = {"url": "/a", "headers": {"A": "1"}, "raw_body": b"x" * 10,
            "return_overrides": {"response_code": -1}}
    request: Any = MiniRequestObject.from_wire(sent)
    request.set_headers["X-New"] = "1"
    request.return_overrides.response_code = 403
    delta = changed_fields(request, sent)
    assert set(delta) == {"set_headers", "return_overrides"}
    merged = merge_reply({"request": sent}, {"request": delta})["request"]
    assert merged == {**sent, "set_headers": {"X-New": "1"},
                      "return_overrides": {"response_code": 403}}
