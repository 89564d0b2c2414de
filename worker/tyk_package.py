"""Every module of Tyk's Python package a plugin can import, backed by the worker's objects.

Tyk's embedded Python ships `tyk/` (`decorators`, `gateway`, `session`,
`object`, `request`, `event`, `loader`, `middleware`) and the generated
`coprocess_*_pb2` modules.  `build_modules` returns all of them as module
objects for `worker.tyk_api.install_plugin_api` to register; each public
name is the worker's own class where one exists (`tyk.session.TykSession`
*is* `worker.objects.SessionState`, `tyk.request.TykCoProcessRequest` *is*
`worker.request.HookRequest`), so there is one set of classes.

What differs from Tyk, and why:

* messages are the proto-like objects of `worker.objects`, not protobuf:
  `TykCoProcessObject` wraps an `Object` (or a mapping), and `dump()` gives
  the msgpack bytes the worker speaks instead of protobuf's;
* `tyk.loader.MiddlewareLoader` and `tyk.middleware.TykMiddleware` are
  Tyk's own loading machinery; Coproc loads plugins itself
  (`worker.loader`), so they exist for imports and for scripts that drive a
  bundle by hand, built on the worker's loader.
"""

from __future__ import annotations

import json
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgpack

from worker import decorators, objects
from worker.isolation import PluginNamespace
from worker.request import HookRequest

__all__ = ["HOOK_TYPES", "HookTypeEnum", "MiddlewareLoader", "TykCoProcessObject", "TykEvent",
           "TykMiddleware", "build_modules"]

#: Tyk's `coprocess_common.HookType` values, and the names Tyk's Python uses for them.
HOOK_TYPES: dict[str, int] = {"Unknown": 0, "Pre": 1, "Post": 2, "PostKeyAuth": 3,
                              "CustomKeyCheck": 4, "Response": 5}
_HOOK_TYPE_TEXT = {0: "", 1: "pre", 2: "post", 3: "postkeyauth", 4: "customkeycheck",
                   5: "response"}


class HookTypeEnum:
    """Protobuf's enum wrapper for `HookType`: `Name`, `Value`, `keys`, `values`, `items`."""

    def __init__(self, values: Mapping[str, int]) -> None:
        self._values = dict(values)

    def Name(self, number: int) -> str:
        for name, value in self._values.items():
            if value == number:
                return name
        raise ValueError(f"Enum HookType has no name defined for value {number!r}")

    def Value(self, name: str) -> int:
        if name not in self._values:
            raise ValueError(f"Enum HookType has no value defined for name {name!r}")
        return self._values[name]

    def keys(self) -> list[str]:
        return list(self._values)

    def values(self) -> list[int]:
        return list(self._values.values())

    def items(self) -> list[tuple[str, int]]:
        return list(self._values.items())


class TykCoProcessObject:
    """Tyk's wrapper of one coprocess `Object`: request, session, spec, metadata, ..."""

    def __init__(self, object_msg: Any = None) -> None:
        if object_msg is None or isinstance(object_msg, Mapping):
            self.object: Any = objects.Object(**(object_msg or {}))
        elif isinstance(object_msg, objects.Object):
            self.object = object_msg
        else:
            raise TypeError("TykCoProcessObject: Coproc's objects are not protobuf; pass an "
                            f"Object or a mapping, not {type(object_msg).__name__}")
        self.request = HookRequest(self.object.request)
        self.session = self.object.session
        self.spec = self.object.spec
        self.metadata = self.object.metadata
        self.hook_name = self.object.hook_name
        self.response = self.object.response
        hook_type = self.object.hook_type
        self.hook_type = _HOOK_TYPE_TEXT.get(hook_type, "") if isinstance(hook_type, int) \
            else str(hook_type).lower().replace("_", "")

    def dump(self) -> tuple[bytes, int]:
        """The object as bytes and their length (msgpack, the worker's encoding)."""
        data: bytes = msgpack.packb(self.object.to_wire(), use_bin_type=True)
        return data, len(data)


class TykEvent:
    """An event as an object whose attributes are the event JSON's fields."""

    def __init__(self, event_json: str | bytes | Mapping[str, Any]) -> None:
        fields = event_json if isinstance(event_json, Mapping) else json.loads(event_json)
        self.__dict__.update(fields)


class MiddlewareLoader:
    """Tyk's import hook for bundle-local modules; Coproc's loader does this itself
    (`worker.isolation`), so as a `sys.meta_path` entry this finds nothing."""

    def __init__(self, mw: Any = None) -> None:
        self.mw = mw

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        return None

    def find_module(self, module_name: str, package_path: Any = None) -> None:
        return None


class TykMiddleware:
    """One bundle's module and its handlers, loaded by the worker's loader."""

    def __init__(self, filepath: str, bundle_root_path: str | None = None) -> None:
        self.filepath = self.bundle_id = self.middleware_id = filepath
        self.bundle_root_path = bundle_root_path
        self.module_path = str(Path(bundle_root_path or "") / filepath)
        self.imported_modules: list[str] = []
        self.manifest: dict[str, Any] = {}
        self.parse_manifest()
        file_list = self.manifest.get("file_list") or []
        main = file_list[0] if len(file_list) == 1 else "middleware.py"
        self.mw_path = str(Path(self.module_path) / main)
        namespace = PluginNamespace(f"tyk_{filepath}", Path(self.module_path))
        self.module = namespace.load(Path(self.mw_path))
        self.handlers: dict[str, list[Any]] = {}
        self.register_handlers()

    def parse_manifest(self) -> None:
        self.manifest = json.loads((Path(self.module_path) / "manifest.json").read_text())

    def register_handlers(self) -> None:
        handlers: dict[str, list[Any]] = {}
        for value in _decorated(self.module):
            handlers.setdefault(type(value).__name__.lower(), []).append(value)
        self.handlers = handlers

    def build_hooks_and_event_handlers(self) -> dict[str, Any]:
        hooks = {}
        for handlers in self.handlers.values():
            for handler in handlers:
                handler.middleware = self
                hooks[handler.name] = handler
        return hooks

    def cleanup(self) -> None:
        return None  # the worker's namespace already keeps plugin modules apart

    def process(self, handler: Any, obj: TykCoProcessObject) -> TykCoProcessObject | None:
        """Call `handler` with Tyk's arity convention and store its results on `obj`."""
        if isinstance(handler, decorators.Event):
            handler(obj, obj.spec)
            return None
        arity = getattr(handler, "arg_count", 3)
        if arity == 5:
            obj.response = handler(obj.request, obj.response, obj.session,
                                   obj.session.metadata, obj.spec)
        elif arity == 4:
            obj.request, obj.session, metadata = handler(obj.request, obj.session,
                                                          obj.session.metadata, obj.spec)
            obj.session.metadata.update(metadata)
        else:
            obj.request, obj.session = handler(obj.request, obj.session, obj.spec)
        return obj


def _decorated(module: types.ModuleType) -> Iterator[Any]:
    for name in dir(module):
        value = getattr(module, name)
        if isinstance(value, (decorators.Hook, decorators.Event)):
            yield value


_DECORATORS = ("Hook", "Event", "Pre", "Post", "PostKeyAuth", "CustomKeyCheck")


def _module(name: str, doc: str, **names: Any) -> types.ModuleType:
    module = types.ModuleType(name, doc)
    for key, value in names.items():
        setattr(module, key, value)
    module.__all__ = [n for n in names if not n.startswith("_")]  # type: ignore[attr-defined]
    return module


def build_modules(gateway_class: type) -> dict[str, types.ModuleType]:
    """`tyk`, `tyk.*`, `gateway` and the `coprocess_*_pb2` modules, by import name."""
    hook_type = HookTypeEnum(HOOK_TYPES)
    pb2 = {name: _module(name, f"Tyk's {name} messages, proto-like (Coproc worker).",
                         **{cls.__name__: cls for cls in classes})
           for name, classes in objects.PB2_MODULES.items()}
    for key, value in HOOK_TYPES.items():
        setattr(pb2["coprocess_common_pb2"], key, value)
    pb2["coprocess_common_pb2"].HookType = hook_type  # type: ignore[attr-defined]
    pb2["coprocess_grpc_pb2"] = _module(
        "coprocess_grpc_pb2", "All of Tyk's coprocess messages (Coproc worker).",
        **{cls.__name__: cls for classes in objects.PB2_MODULES.values() for cls in classes})
    deco = _module("tyk.decorators", decorators.__doc__ or "",
                   HandlerDecorator=decorators.Hook,
                   **{n: getattr(decorators, n) for n in _DECORATORS})
    gw = _module("gateway", "Tyk's gateway API for plugins (Coproc worker).",
                 TykGateway=gateway_class)
    session = _module("tyk.session", "Tyk's session message classes.",
                      TykSession=objects.SessionState, AccessSpec=objects.AccessSpec,
                      AccessDefinition=objects.AccessDefinition,
                      BasicAuthData=objects.BasicAuthData, JWTData=objects.JWTData,
                      Monitor=objects.Monitor)
    request = _module("tyk.request", "Tyk's request wrapper.", TykCoProcessRequest=HookRequest)
    obj = _module("tyk.object", "Tyk's coprocess object wrapper.",
                  TykCoProcessObject=TykCoProcessObject, TykSession=objects.SessionState,
                  TykCoProcessRequest=HookRequest, HookType=pb2["coprocess_common_pb2"],
                  Object=objects.Object, MiniRequestObject=objects.MiniRequestObject,
                  ReturnOverrides=objects.ReturnOverrides, SessionState=objects.SessionState)
    event = _module("tyk.event", "Tyk's event object.", TykEvent=TykEvent, decorators=deco)
    loader = _module("tyk.loader", "Tyk's bundle import hook (inert in Coproc).",
                     MiddlewareLoader=MiddlewareLoader, tyk=gateway_class)
    handler_types: list[Callable[..., Any]] = [getattr(decorators, n) for n in _DECORATORS]
    middleware = _module("tyk.middleware", "Tyk's bundle wrapper, on Coproc's loader.",
                         TykMiddleware=TykMiddleware, MiddlewareLoader=MiddlewareLoader,
                         HandlerDecorators=handler_types, decorators=deco, tyk=gateway_class)
    tyk = _module("tyk", "Tyk's Python plugin API (Coproc worker).")
    tyk.__path__ = []  # a package, so `import tyk.session` works
    children = {"decorators": deco, "gateway": gw, "session": session, "request": request,
                "object": obj, "event": event, "loader": loader, "middleware": middleware}
    for name, child in children.items():
        setattr(tyk, name, child)
    return {"tyk": tyk, "gateway": gw, **{f"tyk.{n}": m for n, m in children.items()}, **pb2}
