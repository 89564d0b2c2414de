"""The coprocess object between its dict shape and Tyk's protobuf `Object`.

The gateway builds one dict per hook call (gateway/tyk_object.py) whatever
the driver; the Python worker gets it as msgpack, a gRPC server as this
`Object`.  The answer comes back as the same dict shape, and the chain applies
it with the same code as a worker's reply.

Proto3 cannot tell "unchanged" from "set to the default", so the answer is
read as Tyk reads it:

* `request` and `response` come back whole (every field, defaults included),
  as Tyk applies the returned records whole; an empty `url` or `method` is
  taken as unchanged rather than as a request for "/" (Tyk fails such a call);
* `session` only when the server returned one, with the fields it set;
* `metadata` only when non-empty (Tyk reads it only to add to the session).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.grpc._pb import coprocess_pb2 as pb
from ipc.coprocess import LazyText

__all__ = ["HOOK_TYPES", "from_proto", "to_proto"]

#: custom_middleware phase -> Tyk's HookType.
HOOK_TYPES: Final = {"pre": pb.Pre, "post": pb.Post, "post_key_auth": pb.PostKeyAuth,
                     "auth_check": pb.CustomKeyCheck, "response": pb.Response}

_HOOK_NAMES: Final = {number: name for name, number in HOOK_TYPES.items()}
_INTS: Final = frozenset({FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64,
                          FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_UINT64})
_MESSAGE: Final = FieldDescriptor.CPPTYPE_MESSAGE


def to_proto(obj: Mapping[str, Any]) -> pb.Object:
    """The `Object` for one hook call's dict; raise TypeError/ValueError on bad values."""
    msg = pb.Object(hook_type=HOOK_TYPES.get(obj.get("hook_type", ""), pb.Unknown),
                    hook_name=obj.get("hook_name", ""))
    for part in ("request", "response"):
        record = obj.get(part)
        if record:
            _fill_record(getattr(msg, part), record)
    session = obj.get("session")
    if session:
        _fill(msg.session, session)
    for part in ("metadata", "spec"):
        values = obj.get(part)
        if values:
            getattr(msg, part).update({str(k): _text(v) for k, v in values.items()})
    return msg


def _fill_record(target: Message, record: Mapping[str, Any]) -> None:
    """A request or response record as the gateway builds it: one C-level constructor
    (a third of the cost of walking the fields), else field by field."""
    names = target.DESCRIPTOR.fields_by_name
    fields = {k: v for k, v in record.items() if k in names and v is not None}
    body = fields.get("body")
    if body is not None and type(body) is not str:
        fields["body"] = _text(body)
    try:
        target.CopyFrom(type(target)(**fields))
    except (TypeError, ValueError):  # values of other types: coerce them one by one
        target.Clear()
        _fill(target, record)


def from_proto(msg: pb.Object) -> dict[str, Any]:
    """The answer's dict shape (see the module docstring for what is left out)."""
    got: dict[str, Any] = {"hook_type": _HOOK_NAMES.get(msg.hook_type, ""),
                           "hook_name": msg.hook_name}
    if msg.HasField("request"):
        request = _request(msg.request)
        for unchanged_if_empty in ("url", "method"):
            if not request[unchanged_if_empty]:
                del request[unchanged_if_empty]
        got["request"] = request
    if msg.HasField("session"):
        got["session"] = _set_fields(msg.session)
    if msg.metadata:
        got["metadata"] = dict(msg.metadata)
    if msg.HasField("response"):
        got["response"] = _response(msg.response)
    return got


def _request(m: pb.MiniRequestObject) -> dict[str, Any]:
    """Every field (written out: four times faster than walking the descriptor)."""
    o = m.return_overrides
    return {"headers": dict(m.headers), "set_headers": dict(m.set_headers),
            "delete_headers": list(m.delete_headers), "body": m.body, "url": m.url,
            "params": dict(m.params), "add_params": dict(m.add_params),
            "extended_params": dict(m.extended_params),
            "delete_params": list(m.delete_params),
            "return_overrides": {"response_code": o.response_code,
                                 "response_error": o.response_error,
                                 "headers": dict(o.headers),
                                 "override_error": o.override_error,
                                 "response_body": o.response_body},
            "method": m.method, "request_uri": m.request_uri, "scheme": m.scheme,
            "raw_body": m.raw_body}


def _response(m: pb.ResponseObject) -> dict[str, Any]:
    return {"status_code": m.status_code, "raw_body": m.raw_body, "body": m.body,
            "headers": dict(m.headers),
            "multivalue_headers": [{"key": h.key, "values": list(h.values)}
                                   for h in m.multivalue_headers]}


# -- dict -> message ------------------------------------------------------------


def _fill(msg: Message, record: Mapping[str, Any]) -> None:
    fields = msg.DESCRIPTOR.fields_by_name
    for key, value in record.items():
        fd = fields.get(key)
        if fd is None or value is None:
            continue  # not one of Tyk's fields: a server could not read it anyway
        target = getattr(msg, key)
        if _is_map(fd):
            value_fd = fd.message_type.fields_by_name["value"]
            for k, v in value.items():
                if value_fd.cpp_type == _MESSAGE:
                    _fill(target[str(k)], v)
                else:
                    target[str(k)] = _scalar(value_fd, v)
        elif fd.is_repeated:
            if fd.cpp_type == _MESSAGE:
                for item in value:
                    _fill(target.add(), item)
            else:
                target.extend(_scalar(fd, v) for v in value)
        elif fd.cpp_type == _MESSAGE:
            _fill(target, value)
        else:
            setattr(msg, key, _scalar(fd, value))


def _scalar(fd: FieldDescriptor, value: Any) -> Any:
    kind = fd.cpp_type
    if kind == FieldDescriptor.CPPTYPE_STRING:
        if fd.type == FieldDescriptor.TYPE_BYTES:
            return bytes(value)
        return _text(value)
    if kind in _INTS:
        return int(value)
    if kind == FieldDescriptor.CPPTYPE_DOUBLE or kind == FieldDescriptor.CPPTYPE_FLOAT:
        return float(value)
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        return bool(value)
    return value


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, LazyText):
        return value.text()
    # Tyk JSON-encodes non-string metadata values into these string maps.
    return json.dumps(value, separators=(",", ":"))


def _is_map(fd: FieldDescriptor) -> bool:
    return (fd.is_repeated and fd.cpp_type == _MESSAGE
            and bool(fd.message_type.GetOptions().map_entry))


# -- message -> dict ------------------------------------------------------------


def _whole(msg: Message) -> dict[str, Any]:
    """Every field of `msg`, defaults included."""
    return {fd.name: _value(fd, getattr(msg, fd.name)) for fd in _fields(msg.DESCRIPTOR)}


def _set_fields(msg: Message) -> dict[str, Any]:
    """The fields of `msg` that are not at their default."""
    return {fd.name: _value(fd, value) for fd, value in msg.ListFields()}


def _fields(descriptor: Descriptor) -> tuple[FieldDescriptor, ...]:
    return tuple(descriptor.fields)


def _value(fd: FieldDescriptor, value: Any) -> Any:
    if _is_map(fd):
        if fd.message_type.fields_by_name["value"].cpp_type == _MESSAGE:
            return {k: _set_fields(v) for k, v in value.items()}
        return dict(value)
    if fd.is_repeated:
        if fd.cpp_type == _MESSAGE:
            return [_whole(item) for item in value]
        return list(value)
    if fd.cpp_type == _MESSAGE:
        return _whole(value)
    return value
