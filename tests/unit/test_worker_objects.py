"""Proto-like coprocess objects: protobuf's surface, Coproc's map semantics, REPLY deltas."""

from __future__ import annotations

import pytest

from ipc.coprocess import OBJECT
from ipc.schema import check
from worker.containers import MessageList, ScalarMap
from worker.objects import (
    AccessDefinition,
    Header,
    MiniRequestObject,
    Object,
    ResponseObject,
    ReturnOverrides,
    SessionState,
    changed_fields,
)


def test_missing_scalar_map_key_reads_default_without_inserting() -> None:
    request = MiniRequestObject.from_wire({"params": {"a": "1"}})
    assert request.params["missing"] == ""
    assert "missing" not in request.params
    assert request.params.get("missing") is None
    assert request.params["a"] == "1"
    assert dict(request.params) == {"a": "1"}


def test_scalar_defaults_and_auto_created_messages() -> None:
    obj = Object()
    assert obj.hook_name == "" and obj.request.url == "" and obj.request.raw_body == b""
    assert obj.session.rate == 0.0 and obj.session.quota_max == 0
    assert obj.session.is_inactive is False
    # a sub-message exists as soon as it is read, and edits stick
    obj.request.return_overrides.response_code = 403
    assert obj.request.return_overrides.response_code == 403
    assert isinstance(obj.request.return_overrides, ReturnOverrides)
    assert obj.to_wire() == {"request": {"return_overrides": {"response_code": 403}}}


def test_wrong_types_raise_like_protobuf_with_the_documented_coercions() -> None:
    request = MiniRequestObject()
    with pytest.raises(TypeError):
        request.url = 5
    with pytest.raises(TypeError):
        request.set_headers["X-Count"] = 5
    with pytest.raises(TypeError):
        request.delete_headers.append(5)
    with pytest.raises(ValueError):
        request.delete_headers.append(b"\xff")  # bytes for a str field must be UTF-8
    request.raw_body = "héllo"  # str on a bytes field: UTF-8
    assert request.raw_body == "héllo".encode()
    session = SessionState()
    session.rate = 10  # int on a float field
    assert session.rate == 10.0 and isinstance(session.rate, float)
    session.quota_max = True  # bool stored as an int, never as a bool
    assert session.quota_max == 1 and type(session.quota_max) is int
    with pytest.raises(TypeError):
        session.quota_max = 1.5
    with pytest.raises(ValueError):
        session.quota_max = 2**70


def test_unknown_attribute_and_unknown_constructor_field() -> None:
    request = MiniRequestObject()
    with pytest.raises(AttributeError):
        request.no_such_field = "x"
    with pytest.raises(AttributeError):
        _ = request.no_such_field
    with pytest.raises(ValueError):
        MiniRequestObject(no_such_field="x")


def test_repeated_fields_add_append_extend() -> None:
    response = ResponseObject()
    header = response.multivalue_headers.add(key="Set-Cookie")
    header.values.append("a=1")
    header.values.extend(["b=2", "c=3"])
    response.multivalue_headers.append({"key": "X", "values": ["1"]})
    response.multivalue_headers.append(Header(key="Y"))
    assert isinstance(response.multivalue_headers, MessageList)
    assert response.to_wire() == {"multivalue_headers": [
        {"key": "Set-Cookie", "values": ["a=1", "b=2", "c=3"]},
        {"key": "X", "values": ["1"]},
        {"key": "Y"},
    ]}
    with pytest.raises(TypeError):
        response.multivalue_headers.append("not a header")
    request = MiniRequestObject()
    request.delete_headers += ["A"]
    request.delete_headers.insert(0, "B")
    assert list(request.delete_headers) == ["B", "A"]
    # As protobuf's repeated fields: a str is an iterable of one-character names,
    # a mapping of its keys, and bytes of ints, which a string field refuses.
    request.delete_headers.extend("cd")
    request.delete_headers.extend({"E": 1})
    assert list(request.delete_headers) == ["B", "A", "c", "d", "E"]
    with pytest.raises(TypeError):
        request.delete_headers.extend(b"f")
    response.multivalue_headers[0].values.extend("x")
    assert response.multivalue_headers[0].values[-1] == "x"


def test_message_maps_create_entries_like_protobuf() -> None:
    session = SessionState()
    session.access_rights["api1"].api_name = "One"
    session.access_rights["api1"].versions.append("Default")
    session.access_rights["api2"] = {"api_id": "api2"}
    assert isinstance(session.access_rights["api2"], AccessDefinition)
    assert session.to_wire() == {"access_rights": {
        "api1": {"api_name": "One", "versions": ["Default"]}, "api2": {"api_id": "api2"}}}
    with pytest.raises(TypeError):
        session.access_rights["api3"] = "nope"


def test_copy_merge_clear_hasfield_listfields() -> None:
    a = SessionState(rate=5.0, org_id="o", tags=["t1"], metadata={"k": "v"})
    b = SessionState()
    b.CopyFrom(a)
    assert b == a and b is not a
    b.tags.append("t2")
    assert list(a.tags) == ["t1"]  # a deep copy
    c = SessionState(rate=1.0, tags=["x"], metadata={"k2": "v2"})
    c.MergeFrom(a)
    assert c.rate == 5.0 and list(c.tags) == ["x", "t1"]
    assert dict(c.metadata) == {"k2": "v2", "k": "v"}
    assert c.HasField("rate") and not c.HasField("per")
    assert not c.HasField("basic_auth_data")
    c.basic_auth_data.password = "p"
    assert c.HasField("basic_auth_data")
    with pytest.raises(ValueError):
        c.HasField("tags")  # repeated fields have no presence
    assert [f.name for f, _ in a.ListFields()] == ["rate", "org_id", "metadata", "tags"]
    c.ClearField("rate")
    assert c.rate == 0.0
    c.Clear()
    assert c.to_wire() == {}
    with pytest.raises(TypeError):
        c.MergeFrom(MiniRequestObject())  # type: ignore[arg-type]
    m = ScalarMap()
    m.MergeFrom({"a": "1"})
    assert m == {"a": "1"}


def test_changed_fields_sends_only_what_changed() -> None:
    body = b"x" * 100_000
    sent = {"headers": {"A": "1"}, "raw_body": body, "url": "/u",
            "return_overrides": {"response_code": -1, "response_error": "", "headers": {}}}
    request = MiniRequestObject.from_wire(sent)
    assert changed_fields(request, sent) == {}
    # reads do not count as changes, even of containers and sub-messages
    assert request.headers["A"] == "1" and request.headers["missing"] == ""
    assert request.return_overrides.response_code == -1
    assert request.raw_body is body
    assert changed_fields(request, sent) == {}
    request.set_headers["B"] = "2"
    request.return_overrides.response_code = 401
    delta = changed_fields(request, sent)
    assert delta == {"set_headers": {"B": "2"},
                     "return_overrides": {"response_code": 401}}
    request.raw_body = b"new"
    assert changed_fields(request, sent)["raw_body"] == b"new"
    request.ClearField("url")
    assert changed_fields(request, sent)["url"] == ""


def test_wire_output_passes_the_protocol_schema() -> None:
    obj = Object.from_wire({"request": {"headers": {"A": "1"}}, "session": {"rate": 3}})
    obj.request.raw_body = "text"
    obj.session.quota_remaining = False
    obj.session.monitor.trigger_limits.extend([1, 2.5])
    obj.response.multivalue_headers.add(key="K").values.append("v")
    wire = obj.to_wire()
    check(wire, OBJECT)
    assert "quota_remaining" not in wire["session"]  # 0 is the default: not written
    assert wire["session"]["monitor"] == {"trigger_limits": [1.0, 2.5]}
    assert type(wire["session"]["monitor"]["trigger_limits"][0]) is float
