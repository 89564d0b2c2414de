"""Checked containers and scalar coercion behind the proto-like objects.

`ScalarMap`/`MessageMap` stand for protobuf map fields and `ScalarList`/
`MessageList` for repeated fields.  Every way a value gets in (`[]=`,
`update`, `append`, `extend`, `insert`, slices, `+=`, `|=`) converts it to
the field's wire type or raises `TypeError`, so what a plugin builds can
always be sent back as a valid REPLY.  Containers filled from the wire skip
the checks: `ipc.protocol.decode` validated that data already.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, SupportsIndex

from ipc.coprocess import default_for

if TYPE_CHECKING:
    from worker.objects import Message

__all__ = ["MessageList", "MessageMap", "ScalarList", "ScalarMap", "coerce"]

# msgpack carries 64-bit integers; anything wider could not be sent back.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def coerce(value: Any, kind: type, where: str) -> Any:
    """The value to store in a scalar slot of type `kind`, or TypeError."""
    if type(value) is kind and kind is not int:
        return value
    if kind is str:
        if isinstance(value, str):
            return str(value)
        if isinstance(value, (bytes, bytearray)):
            try:
                return bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{where}: bytes are not valid UTF-8") from None
    elif kind is bytes:
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
    elif kind is int:
        # bool is an int to Python and to protobuf; it is stored as 0/1, never as bool.
        if isinstance(value, int):
            if not _INT_MIN <= value <= _INT_MAX:
                raise ValueError(f"{where}: value out of range: {value}")
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)):
            return float(value)
    elif kind is bool:
        if isinstance(value, int):
            return bool(value)
    raise TypeError(
        f"{value!r} has type {type(value).__name__}, but expected one of: "
        f"{kind.__name__} (field {where})"
    )


def _key(key: Any, where: str) -> str:
    if isinstance(key, str):
        return str(key)
    raise TypeError(f"{key!r} has type {type(key).__name__}, but expected one of: str "
                    f"(map key of {where})")



class ScalarMap(dict[str, Any]):
    """`map<string, scalar>`: a missing key reads as the default and is not inserted."""

    __slots__ = ("_kind", "_where")

    def __init__(self, kind: type = str, where: str = "map", items: Any = ()) -> None:
        super().__init__()
        self._kind, self._where = kind, where
        if items:
            self.update(items)

    @classmethod
    def _adopt(cls, raw: dict[str, Any], kind: type, where: str) -> ScalarMap:
        m = cls(kind, where)
        dict.update(m, raw)  # validated by ipc.protocol.decode already
        return m

    def __missing__(self, key: Any) -> Any:
        _key(key, self._where)
        return default_for(self._kind)

    def __setitem__(self, key: Any, value: Any) -> None:
        dict.__setitem__(self, _key(key, self._where), coerce(value, self._kind, self._where))

    def update(self, *args: Any, **kwargs: Any) -> None:
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default_for(self._kind) if default is None else default
        return dict.__getitem__(self, key)

    def __ior__(self, other: Any) -> ScalarMap:  # type: ignore[override,misc]
        self.update(other)
        return self

    def MergeFrom(self, other: Mapping[str, Any]) -> None:
        self.update(other)


class MessageMap(dict[str, "Message"]):
    """`map<string, Message>`: a missing key is created on read, as in protobuf."""

    __slots__ = ("_cls", "_where")

    def __init__(self, cls: type[Message], where: str = "map", items: Any = ()) -> None:
        super().__init__()
        self._cls, self._where = cls, where
        if items:
            self.update(items)

    @classmethod
    def _adopt(cls, raw: dict[str, Any], msg_cls: type[Message], where: str) -> MessageMap:
        m = cls(msg_cls, where)
        for k, v in raw.items():
            dict.__setitem__(m, k, msg_cls.from_wire(v))
        return m

    def __missing__(self, key: Any) -> Message:
        value = self._cls()
        dict.__setitem__(self, _key(key, self._where), value)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        dict.__setitem__(self, _key(key, self._where), self._cls._convert(value, self._where))

    def update(self, *args: Any, **kwargs: Any) -> None:
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def setdefault(self, key: Any, default: Any = None) -> Message:
        if key not in self:
            self[key] = self._cls() if default is None else default
        return dict.__getitem__(self, key)

    def __ior__(self, other: Any) -> MessageMap:  # type: ignore[override,misc]
        self.update(other)
        return self

    def get_or_create(self, key: str) -> Message:
        return self[key]

    def MergeFrom(self, other: Mapping[str, Any]) -> None:
        for k, v in other.items():
            self[k].MergeFrom(self._cls._convert(v, self._where))


class _CheckedList(list[Any]):
    """A list whose every way in converts (or refuses) the item."""

    __slots__ = ("_where",)
    _where: str

    def _item(self, value: Any) -> Any:
        raise NotImplementedError

    def append(self, value: Any) -> None:
        super().append(self._item(value))

    def extend(self, values: Iterable[Any]) -> None:
        # Like protobuf's repeated fields, any iterable will do, a str too (one item
        # per character: Tyk's docs show `values.extend("a=1")`, and it runs there).
        super().extend([self._item(v) for v in values])

    def insert(self, index: SupportsIndex, value: Any) -> None:
        super().insert(index, self._item(value))

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(index, slice):
            super().__setitem__(index, [self._item(v) for v in value])
        else:
            super().__setitem__(index, self._item(value))

    def __iadd__(self, values: Iterable[Any]) -> _CheckedList:  # type: ignore[misc]
        self.extend(values)
        return self

    def MergeFrom(self, values: Iterable[Any]) -> None:
        self.extend(values)


class ScalarList(_CheckedList):
    """`repeated scalar`."""

    __slots__ = ("_kind",)

    def __init__(self, kind: type = str, where: str = "list", items: Iterable[Any] = ()) -> None:
        super().__init__()
        self._kind, self._where = kind, where
        self.extend(items)

    @classmethod
    def _adopt(cls, raw: list[Any], kind: type, where: str) -> ScalarList:
        lst = cls(kind, where)
        list.extend(lst, raw)
        return lst

    def _item(self, value: Any) -> Any:
        return coerce(value, self._kind, self._where)

    def add(self, value: Any) -> Any:
        """Append one value and return it (a convenience; protobuf has no `add` here)."""
        self.append(value)
        return self[-1]


class MessageList(_CheckedList):
    """`repeated Message`: `add(**fields)` appends a new message and returns it."""

    __slots__ = ("_cls",)

    def __init__(self, cls: type[Message], where: str = "list",
                 items: Iterable[Any] = ()) -> None:
        super().__init__()
        self._cls, self._where = cls, where
        self.extend(items)

    @classmethod
    def _adopt(cls, raw: list[Any], msg_cls: type[Message], where: str) -> MessageList:
        lst = cls(msg_cls, where)
        list.extend(lst, [msg_cls.from_wire(v) for v in raw])
        return lst

    def _item(self, value: Any) -> Any:
        return self._cls._convert(value, self._where)

    def add(self, **fields: Any) -> Message:
        message = self._cls(**fields)
        list.append(self, message)
        return message
