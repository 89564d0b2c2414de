"""The compiled wire validators of ipc/schema.py agree with the plain rules.

`check` answers from a generated function and only walks the value the slow way
to word the error.  These tests hold the generated code to an independent
statement of the rules (`_follows`), on random shapes and on the protocol's own,
with values drawn to be mostly valid and broken in the ways that matter: a
missing or unknown field, a wrong type deep down, a bool for an int, a container
over its bound, a non-str key, a dict or str subclass.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipc import schema
from ipc.control import CONTROL_MESSAGES
from ipc.coprocess import OBJECT, SESSION
from ipc.protocol import PAYLOADS, MsgType
from ipc.schema import ListOf, MapOf, ProtocolError, Record, Shape, check


class Color(enum.IntEnum):
    RED = 1


class Text(str):
    pass


def _follows(value: Any, shape: Shape) -> bool:
    """The rules of ipc/schema.py's docstring, written as plainly as possible."""
    if isinstance(shape, type):
        if shape is int:
            return isinstance(value, int) and not isinstance(value, bool)
        if shape is float:
            return isinstance(value, int | float) and not isinstance(value, bool)
        return isinstance(value, shape)
    if isinstance(shape, Record):
        return (isinstance(value, dict)
                and all(isinstance(key, str) and key in shape.fields
                        and _follows(item, shape.fields[key]) for key, item in value.items())
                and all(name in value for name in shape.required))
    if isinstance(shape, MapOf):
        return (isinstance(value, dict) and len(value) <= shape.max_items
                and all(isinstance(key, str) and _follows(item, shape.value)
                        for key, item in value.items()))
    return (isinstance(value, list) and len(value) <= shape.max_items
            and all(_follows(item, shape.item) for item in value))


def _agrees(value: Any, shape: Shape, path: str = "$") -> None:
    expected = _follows(value, shape)
    try:
        schema._compiled(shape)(value)
        compiled = True
    except schema._Invalid:
        compiled = False
    assert compiled == expected, (value, shape)
    if expected:
        check(value, shape, path)
        return
    with pytest.raises(ProtocolError) as caught:
        check(value, shape, path)
    message = str(caught.value)
    assert message.startswith(path)
    assert not message.endswith(": invalid value"), message  # _explain found the problem


# -- drawing shapes and values ----------------------------------------------------------------

SCALARS = (str, bytes, int, float, bool)
NAMES = st.sampled_from(["a", "b", "value", "n1", "it's", 'q"\\', "é\n", ""])

SHAPES: st.SearchStrategy[Shape] = st.recursive(
    st.sampled_from(SCALARS),
    lambda inner: st.one_of(
        st.builds(MapOf, inner, st.integers(0, 3)),
        st.builds(ListOf, inner, st.integers(0, 3)),
        st.dictionaries(NAMES, inner, max_size=4).flatmap(
            lambda fields: st.builds(Record, st.just(fields),
                                     st.frozensets(st.sampled_from(sorted(fields) or ["a"]))
                                     .map(lambda names: names & fields.keys()))),
    ),
    max_leaves=8,
)

JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=3),
    st.binary(max_size=3), st.just(bytearray(b"x")), st.just(Color.RED), st.just(Text("t")),
    st.just(()), st.just([]), st.just({}), st.just({"a": 1}), st.just([None]),
)

GOOD_SCALARS: dict[type, st.SearchStrategy[Any]] = {
    str: st.text(max_size=3) | st.just(Text("t")),
    bytes: st.binary(max_size=3),
    int: st.integers(-(2**70), 2**70) | st.just(Color.RED),
    float: st.floats() | st.integers(-(2**70), 2**70),
    bool: st.booleans(),
}


def _draw(data: st.DataObject, shape: Shape, depth: int = 0) -> Any:
    """Mostly a value of `shape`, sometimes junk or a near miss anywhere inside."""
    if depth > 12 or data.draw(st.integers(0, 9)) == 0:
        return data.draw(JUNK)
    if isinstance(shape, type):
        return data.draw(GOOD_SCALARS.get(shape, JUNK))
    if isinstance(shape, ListOf):
        size = data.draw(st.integers(0, min(shape.max_items, 3) + 1))
        items = [_draw(data, shape.item, depth + 1) for _ in range(size)]
        return items if data.draw(st.integers(0, 9)) else items[:1]
    if isinstance(shape, MapOf):
        keys = data.draw(st.lists(st.text(max_size=2) | st.binary(max_size=1) | st.integers(0, 2),
                                  max_size=min(shape.max_items, 3) + 1, unique=True))
        mapping = {key: _draw(data, shape.value, depth + 1) for key in keys}
        return OrderedDict(mapping) if data.draw(st.integers(0, 9)) == 0 else mapping
    names = data.draw(st.lists(st.sampled_from(sorted(shape.fields)), unique=True)
                      if shape.fields else st.just([]))
    if data.draw(st.integers(0, 4)) == 0:
        names = sorted(shape.required | set(names))
    record: dict[Any, Any] = {name: _draw(data, shape.fields[name], depth + 1) for name in names}
    extra = data.draw(st.integers(0, 12))
    if extra == 0:
        record[data.draw(st.sampled_from(["zz", b"a", 1, None, Text("zz")]))] = 1
    elif extra == 1:
        record = OrderedDict(record)
    return record


SETTINGS = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(SHAPES, st.data())
def test_random_shapes_agree_with_the_rules(shape: Shape, data: st.DataObject) -> None:
    _agrees(_draw(data, shape), shape)


WIRE_SHAPES = [OBJECT, SESSION, *PAYLOADS.values(), *CONTROL_MESSAGES.values()]


@SETTINGS
@given(st.sampled_from(WIRE_SHAPES), st.data())
def test_protocol_shapes_agree_with_the_rules(shape: Shape, data: st.DataObject) -> None:
    _agrees(_draw(data, shape), shape, "MSG")


# -- targeted cases ---------------------------------------------------------------------------

POINT = Record({"x": int, "y": float, "tags": ListOf(str, max_items=2),
                "meta": MapOf(bytes, max_items=2), "on": bool},
               required=frozenset({"x"}))


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ({}, "$: missing field(s) x"),
        ({"x": 1, "z": 1}, "$: unknown field 'z'"),
        ({"x": 1, b"y": 1.0}, "$: unknown field b'y'"),
        ({"x": 1, 2: 1.0}, "$: unknown field 2"),
        ({"x": True}, "$.x: expected int, got bool"),
        ({"x": 1.0}, "$.x: expected int, got float"),
        ({"x": 1, "y": False}, "$.y: expected float, got bool"),
        ({"x": 1, "y": "1"}, "$.y: expected float, got str"),
        ({"x": 1, "on": 1}, "$.on: expected bool, got int"),
        ({"x": 1, "tags": ["a", "b", "c"]}, "$.tags: more than 2 items"),
        ({"x": 1, "tags": ("a",)}, "$.tags: expected an array, got tuple"),
        ({"x": 1, "tags": ["a", 1]}, "$.tags[1]: expected str, got int"),
        ({"x": 1, "meta": {"a": b"", "b": b"", "c": b""}}, "$.meta: more than 2 entries"),
        ({"x": 1, "meta": {1: b""}}, "$.meta: map keys must be strings"),
        ({"x": 1, "meta": {"k": bytearray()}}, "$.meta.k: expected bytes, got bytearray"),
        ([("x", 1)], "$: expected a map, got list"),
        (OrderedDict(x=1, w=2), "$: unknown field 'w'"),
    ],
)
def test_refusals_name_the_problem(value: Any, error: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        check(value, POINT)
    assert str(caught.value) == error


@pytest.mark.parametrize(
    "value",
    [
        {"x": 1},
        {"x": Color.RED, "y": 2, "on": False},
        {"x": -(2**70), "y": 0.5, "tags": [Text("t"), "u"], "meta": {Text("k"): b"v"}},
        OrderedDict(x=1, tags=[]),
        {"x": 0, "tags": [], "meta": {}},
    ],
)
def test_valid_values_pass(value: Any) -> None:
    check(value, POINT)


def test_the_protocols_tables_compile_and_are_cached() -> None:
    for shape in WIRE_SHAPES:
        validator = schema._compiled(shape)
        assert schema._compiled(shape) is validator


def test_a_valid_call_never_takes_the_slow_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> None:
        raise AssertionError("the slow path ran for a valid value")

    monkeypatch.setattr(schema, "_explain", refuse)
    payload = {"api_id": "a", "hook_type": "pre", "hook_name": "H", "timeout_ms": 10,
               "object": {"hook_type": "pre", "spec": {"APIID": "a"}, "session": {},
                          "request": {"headers": {"Host": "h"}, "url": "/", "raw_body": b"",
                                      "delete_headers": [], "return_overrides": {
                                          "response_code": -1}}}}
    check(payload, PAYLOADS[MsgType.CALL], "CALL")


def test_deep_and_self_containing_shapes() -> None:
    deep: Shape = str
    value: Any = "leaf"
    for level in range(60):
        deep = Record({"a": deep}) if level % 3 else ListOf(MapOf(deep))
        value = {"a": value} if level % 3 else [{"k": value}]
    check(value, deep)
    _agrees(value, deep)
    fields: dict[str, Shape] = {"n": int}
    tree = Record(fields)
    fields["child"] = tree
    check({"child": {"child": {"n": 1}}}, tree)
    with pytest.raises(ProtocolError, match=r"^\$\.child\.child\.n: expected int, got bool$"):
        check({"child": {"child": {"n": True}}}, tree)


def test_a_required_field_not_in_the_record_can_never_be_met() -> None:
    impossible = Record({"a": int}, required=frozenset({"b"}))
    for value in ({}, {"a": 1}, {"b": 1}):
        _agrees(value, impossible)


def test_top_level_scalars_and_empty_records() -> None:
    for value in (1, True, 1.5, "s", b"b", None, Color.RED):
        for shape in SCALARS:
            _agrees(value, shape)
    containers: list[Any] = [{}, {"a": 1}, [], OrderedDict()]
    for container in containers:
        _agrees(container, Record({}))
