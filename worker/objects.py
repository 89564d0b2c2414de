"""Proto-like coprocess objects for plugins, generated from `ipc.coprocess`.

Tyk hands Python plugins protobuf messages, and Tyk plugins lean on a few
protobuf behaviours: attribute access with proto3 defaults, sub-messages that
exist as soon as they are read, `map<string,string>` fields where a missing
key reads as "", repeated fields with `add()`, `CopyFrom`/`MergeFrom`, and a
`TypeError` when a plugin assigns the wrong type.  This module rebuilds that
surface from the `Record` shapes in `ipc/coprocess.py`, so the wire schema and
what plugins see can never drift apart.

Deliberate differences from protobuf, each in the plugin's favour:

* reading a missing key of a *scalar* map returns the default without
  inserting it (protobuf inserts it; a header a plugin merely looked at must
  not be sent back as set); a missing key of a *message* map is inserted, as
  in protobuf, so `session.access_rights["id"].api_name = "x"` works;
* a map, repeated or message field may be assigned a plain `dict`/`list` (or a
  message of the right type); protobuf refuses the assignment outright;
* `str` is accepted for `bytes` fields (encoded as UTF-8) and `int` for
  `float` fields.

Objects are built lazily from the decoded CALL payload: a field that a hook
never touches is never converted, and `changed_fields` can tell it apart from
one that was replaced, which keeps REPLY small (see docs/PROTOCOL.md).  The
`body` text of a body that came through shared memory is not even decoded
until a plugin reads it (`ipc.coprocess.LazyText`).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from ipc import coprocess
from ipc.coprocess import MISSING, LazyText, record_delta, resolved
from ipc.schema import MapOf, Record, Shape
from worker.containers import MessageList, MessageMap, ScalarList, ScalarMap, coerce

__all__ = [
    "PB2_MODULES",
    "AccessDefinition",
    "AccessSpec",
    "BasicAuthData",
    "Event",
    "EventReply",
    "Header",
    "JWTData",
    "LazyText",
    "Message",
    "MessageList",
    "MessageMap",
    "MiniRequestObject",
    "Monitor",
    "Object",
    "ResponseObject",
    "ReturnOverrides",
    "ScalarList",
    "ScalarMap",
    "SessionState",
    "StringSlice",
    "changed_fields",
]

class Kind(enum.Enum):
    SCALAR = "scalar"
    MESSAGE = "message"
    MAP = "map"
    REPEATED = "repeated"


def _plain(value: Any) -> Any:
    """A wire (msgpack-ready) copy of a field value, wrapped or still raw."""
    if isinstance(value, Message):
        return value.to_wire()
    if isinstance(value, MessageMap):
        return {k: v.to_wire() for k, v in value.items()}
    if isinstance(value, MessageList):
        return [v.to_wire() for v in value]
    if isinstance(value, ScalarMap):
        return dict(value)
    if isinstance(value, ScalarList):
        return list(value)
    return value  # a scalar, or a raw container from the wire (already validated)


# --- messages ----------------------------------------------------------------------------


class Field:
    """Descriptor for one field of a generated message class."""

    __slots__ = ("default", "item", "kind", "message", "name", "shape", "where")

    def __init__(self, owner: str, name: str, shape: Shape) -> None:
        self.name, self.where, self.shape = name, f"{owner}.{name}", shape
        self.message: type[Message] | None = None
        self.default: Any = None
        self.item: Any = None  # the scalar type of a scalar, map or list field
        if isinstance(shape, type):
            self.kind, self.item = Kind.SCALAR, shape
            self.default = coprocess.default_for(shape)
            return
        if isinstance(shape, Record):
            self.kind, self.item = Kind.MESSAGE, None
            self.message = _class_for(shape, name)
            return
        self.kind = Kind.MAP if isinstance(shape, MapOf) else Kind.REPEATED
        inner = shape.value if isinstance(shape, MapOf) else shape.item
        if isinstance(inner, Record):
            self.item, self.message = None, _class_for(inner, name)
        elif isinstance(inner, type):
            self.item = inner
        else:  # nested containers do not occur in the coprocess object
            raise TypeError(f"{self.where}: unsupported shape {shape!r}")

    def __get__(self, obj: Message | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        values = obj._values
        value = values.get(self.name, MISSING)
        if self.kind is Kind.SCALAR:
            if value is MISSING:
                return self.default
            if type(value) is LazyText:
                value = values[self.name] = value.text()
                return value
            if self.item is float and type(value) is int:
                return float(value)
            return value
        if value is MISSING:
            value = values[self.name] = self.empty()
        elif type(value) is dict or type(value) is list:  # still the wire's container
            value = values[self.name] = self.adopt(value)
        return value

    def __set__(self, obj: Message, value: Any) -> None:
        obj._values[self.name] = self.convert(value)

    def empty(self) -> Any:
        if self.kind is Kind.MESSAGE:
            assert self.message is not None
            return self.message()
        if self.kind is Kind.MAP:
            if self.message is not None:
                return MessageMap(self.message, self.where)
            return ScalarMap(self.item, self.where)
        if self.message is not None:
            return MessageList(self.message, self.where)
        return ScalarList(self.item, self.where)

    def adopt(self, raw: Any) -> Any:
        """Wrap a container decoded from the wire (trusted: decode validated it)."""
        if self.kind is Kind.MESSAGE:
            assert self.message is not None
            return self.message.from_wire(raw)
        if self.kind is Kind.MAP:
            if self.message is not None:
                return MessageMap._adopt(raw, self.message, self.where)
            return ScalarMap._adopt(raw, self.item, self.where)
        if self.message is not None:
            return MessageList._adopt(raw, self.message, self.where)
        return ScalarList._adopt(raw, self.item, self.where)

    def convert(self, value: Any) -> Any:
        """What to store for an assignment from plugin code (validated)."""
        if self.kind is Kind.SCALAR:
            return coerce(value, self.item, self.where)
        if self.kind is Kind.MESSAGE:
            assert self.message is not None
            return self.message._convert(value, self.where)
        container = self.empty()
        if self.kind is Kind.MAP:
            if not isinstance(value, Mapping):
                raise TypeError(f"{self.where}: expected a mapping, got {type(value).__name__}")
            container.update(value)
        else:
            container.extend(value)
        return container

    def empty_wire(self) -> Any:
        """The wire value of an unset field (a fresh container for containers)."""
        return coprocess.default_for(self.shape)

    def is_default(self, value: Any) -> bool:
        if value is MISSING:
            return True
        if self.kind is Kind.SCALAR:
            return bool(value == self.default)
        if isinstance(value, Message):
            return not value.ListFields()
        return not value


class Message:
    """Base of the generated message classes; protobuf's method names, minimal."""

    __slots__ = ("_values",)
    _fields: ClassVar[dict[str, Field]] = {}

    def __init__(self, **fields: Any) -> None:
        self._values: dict[str, Any] = {}
        for name, value in fields.items():
            self._field(name).__set__(self, value)

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> Message:
        """Wrap a decoded, validated wire map; its containers are converted on first use."""
        message = cls.__new__(cls)
        message._values = dict(raw)
        return message

    @classmethod
    def _convert(cls, value: Any, where: str) -> Message:
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return cls(**value)
        raise TypeError(f"{where}: expected {cls.__name__} or a mapping, "
                        f"got {type(value).__name__}")

    @classmethod
    def _field(cls, name: str) -> Field:
        field = cls._fields.get(name)
        if field is None:
            raise ValueError(f'Protocol message {cls.__name__} has no "{name}" field.')
        return field

    def to_wire(self) -> dict[str, Any]:
        """A msgpack-ready dict of this message's non-default fields."""
        fields = self._fields
        out = {}
        for name, value in self._values.items():
            value = resolved(value)
            if not fields[name].is_default(value):
                out[name] = _plain(value)
        return out

    @classmethod
    def _wire_value(cls, name: str, value: Any) -> Any:
        """`value` of field `name` in wire form (MISSING: the default), for comparing."""
        field = cls._fields[name]
        if value is MISSING:
            return field.empty_wire()
        if field.message is not None and type(value) is dict:
            return _plain(field.adopt(value))  # normalise: the sender may spell out defaults
        return _plain(value)

    # protobuf-style API --------------------------------------------------------------

    def Clear(self) -> None:
        self._values.clear()

    def ClearField(self, name: str) -> None:
        self._field(name)
        self._values.pop(name, None)

    def HasField(self, name: str) -> bool:
        field = self._field(name)
        if field.kind in (Kind.MAP, Kind.REPEATED):
            raise ValueError(f'Protocol message has no singular "{name}" field.')
        value = resolved(self._values.get(name, MISSING))
        if field.kind is Kind.MESSAGE and type(value) is dict:
            return bool(value)
        return not field.is_default(value)

    def ListFields(self) -> list[tuple[Field, Any]]:
        """(field, value) for every field that is set, in declaration order."""
        out = []
        for name, field in self._fields.items():
            if name in self._values:
                value = field.__get__(self)
                if not field.is_default(value):
                    out.append((field, value))
        return out

    def MergeFrom(self, other: Message) -> None:
        """Set fields: scalars overwrite, maps update, lists extend, messages merge."""
        if not isinstance(other, type(self)):
            raise TypeError(f"MergeFrom: expected {type(self).__name__}, "
                            f"got {type(other).__name__}")
        for field, value in other.ListFields():
            if field.kind is Kind.SCALAR:
                self._values[field.name] = value
            else:
                field.__get__(self).MergeFrom(value)

    def CopyFrom(self, other: Message) -> None:
        if other is self:
            return
        if not isinstance(other, type(self)):
            raise TypeError(f"CopyFrom: expected {type(self).__name__}, "
                            f"got {type(other).__name__}")
        self.Clear()
        self.MergeFrom(other)

    def IsInitialized(self) -> bool:
        return True

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Message)
        return self.to_wire() == other.to_wire()

    __hash__ = None  # type: ignore[assignment]  # mutable, like protobuf messages

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_wire()!r})"


def changed_fields(message: Message, sent: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of `message` that differ from the wire map `sent`, as wire values.

    The REPLY delta rule (`ipc.coprocess.record_delta`) over this message's
    values: an untouched field is still the object that came off the wire and
    costs nothing; a `LazyText` the hook did not read is never decoded.
    """
    return record_delta(message._values, sent, message._wire_value)


# --- generation --------------------------------------------------------------------------

_NAMES: dict[int, str] = {
    id(coprocess.OBJECT): "Object",
    id(coprocess.REQUEST): "MiniRequestObject",
    id(coprocess.RETURN_OVERRIDES): "ReturnOverrides",
    id(coprocess.SESSION): "SessionState",
    id(coprocess.RESPONSE): "ResponseObject",
    id(coprocess.ACCESS_DEFINITION): "AccessDefinition",
    id(coprocess.ACCESS_SPEC): "AccessSpec",
    id(coprocess.HEADER): "Header",
    id(coprocess.SESSION.fields["basic_auth_data"]): "BasicAuthData",
    id(coprocess.SESSION.fields["jwt_data"]): "JWTData",
    id(coprocess.SESSION.fields["monitor"]): "Monitor",
}
_CLASSES: dict[int, type[Message]] = {}


def _class_for(record: Record, field_name: str) -> type[Message]:
    """The message class for `record`, created once (named after Tyk's messages)."""
    cls = _CLASSES.get(id(record))
    if cls is not None:
        return cls
    name = _NAMES.get(id(record)) or re.sub(r"(?:^|_)(\w)", lambda m: m.group(1).upper(),
                                            field_name)
    cls = type(name, (Message,), {"__slots__": (), "__module__": __name__,
                                  "__doc__": f"Proto-like {name} (see ipc/coprocess.py)."})
    _CLASSES[id(record)] = cls
    fields = {}
    for fname, shape in record.fields.items():
        field = Field(name, fname, shape)
        setattr(cls, fname, field)
        fields[fname] = field
    cls._fields = fields
    return cls


Object = _class_for(coprocess.OBJECT, "object")
MiniRequestObject = _class_for(coprocess.REQUEST, "request")
ReturnOverrides = _class_for(coprocess.RETURN_OVERRIDES, "return_overrides")
SessionState = _class_for(coprocess.SESSION, "session")
ResponseObject = _class_for(coprocess.RESPONSE, "response")
AccessDefinition = _class_for(coprocess.ACCESS_DEFINITION, "access_definition")
AccessSpec = _class_for(coprocess.ACCESS_SPEC, "access_spec")
Header = _class_for(coprocess.HEADER, "header")


def _nested(owner: type[Message], name: str) -> type[Message]:
    message = owner._fields[name].message
    if message is None:
        raise TypeError(f"{owner.__name__}.{name} is not a message field")
    return message


BasicAuthData = _nested(SessionState, "basic_auth_data")
JWTData = _nested(SessionState, "jwt_data")
Monitor = _nested(SessionState, "monitor")

# Messages of Tyk's protos that never travel in a CALL, for plugins that import them.
# (Module constants: `_CLASSES` is keyed by the record's id, which must stay alive.)
_STRING_SLICE = Record({"items": coprocess.STR_LIST})
_EVENT = Record({"payload": str})
_EVENT_REPLY = Record({})
StringSlice = _class_for(_STRING_SLICE, "string_slice")
Event = _class_for(_EVENT, "event")
EventReply = _class_for(_EVENT_REPLY, "event_reply")

#: Tyk's generated protobuf modules and the classes each defines; plugins that
#: build messages (`from coprocess_session_state_pb2 import SessionState`) get these.
PB2_MODULES: dict[str, tuple[type[Message], ...]] = {
    "coprocess_common_pb2": (StringSlice,),
    "coprocess_object_pb2": (Object, Event, EventReply),
    "coprocess_mini_request_object_pb2": (MiniRequestObject,),
    "coprocess_return_overrides_pb2": (ReturnOverrides,),
    "coprocess_session_state_pb2": (SessionState, AccessDefinition, AccessSpec, BasicAuthData,
                                    JWTData, Monitor),
    "coprocess_response_object_pb2": (ResponseObject, Header),
}
