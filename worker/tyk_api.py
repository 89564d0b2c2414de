"""The Tyk Python plugin API, installed as modules inside the worker process.

Unmodified Tyk plugins do `from tyk.decorators import *` and
`from gateway import TykGateway as tyk`.  `install_plugin_api` registers
synthetic modules in `sys.modules` so those imports resolve here:

* `tyk` (a package) and every module of Tyk's (`tyk.decorators`,
  `tyk.session`, `tyk.object`, `tyk.request`, `tyk.event`, `tyk.loader`,
  `tyk.middleware`; built by `worker.tyk_package`);
* `gateway` with `TykGateway` (`log`, `log_error`, `store_data`, `get_data`,
  `trigger_event`), also reachable as `tyk.gateway` for older plugins;
* Tyk's generated `coprocess_*_pb2` modules, holding the proto-like classes
  (`worker.objects`) for plugins that build messages themselves.

Naming a module `gateway` would shadow Coproc's own `gateway` package, which
is why this is only ever done in the worker: the worker never imports that
package (a test checks it), so there is nothing to shadow.

`TykGateway` calls go to the gateway as HOST_CALL messages through
`worker.hostcalls.HostCalls`.  `log` and `trigger_event` do not wait;
`store_data` and `get_data` wait for the answer, at most `HostCalls.timeout_s`.
Async hooks must not block the loop: they use the `*_async` variants.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Callable
from typing import Any

from worker.hostcalls import HostCallError, HostCalls
from worker.tyk_package import build_modules

__all__ = ["CURRENT_API", "CURRENT_HOOK", "TykGateway", "current_host", "install_plugin_api",
           "running"]

#: The API whose hook is running (set by the dispatcher); trigger_event reports it.
CURRENT_API: contextvars.ContextVar[str] = contextvars.ContextVar("coproc_api_id", default="")
#: (hook name, request id) of the running hook: `log` lines carry them.
CURRENT_HOOK: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar(
    "coproc_hook", default=("", ""))


def running(api_id: str, hook: str, request_id: str) -> tuple[contextvars.Token[str],
                                                              contextvars.Token[tuple[str, str]]]:
    """Mark this context as running `hook` of `api_id` for `request_id`; tokens to reset."""
    return CURRENT_API.set(api_id), CURRENT_HOOK.set((hook, request_id))

_plugin_log = logging.getLogger("plugin")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "warning": logging.WARNING, "error": logging.ERROR, "fatal": logging.CRITICAL,
           "critical": logging.CRITICAL}
_host: HostCalls | None = None


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _data(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"store_data: value must be str or bytes, got {type(value).__name__}")


def current_host() -> HostCalls | None:
    """The host calls `TykGateway` uses (the JS driver's functions share them)."""
    return _host


def _require_host() -> HostCalls:
    if _host is None:
        raise HostCallError("the Tyk plugin API is not connected to a gateway")
    return _host


class TykGateway:
    """What Tyk's embedded `gateway.TykGateway` offers, served by the gateway process."""

    @staticmethod
    def log(message: Any, level: str = "info") -> None:
        text, level = _text(message), str(level).lower()
        host = _host
        hook, request_id = CURRENT_HOOK.get()
        # Only what is known: a log at import time has no API, hook or request.
        fields = {k: v for k, v in (("api_id", CURRENT_API.get()), ("hook", hook),
                                    ("request_id", request_id)) if v}
        if host is not None and host.available:
            try:
                host.notify("log", {"level": level, "message": text, **fields})
                return
            except HostCallError:
                pass  # not connected (e.g. at import time): log here instead
        _plugin_log.log(_LEVELS.get(level, logging.INFO), "%s", text,
                        extra={"fields": fields})

    @staticmethod
    def log_error(message: Any) -> None:
        TykGateway.log(message, "error")

    @staticmethod
    def store_data(key: Any, value: Any, ttl: int = 0) -> None:
        _require_host().request("store_data", _store_fields(key, value, ttl))

    @staticmethod
    def get_data(key: Any) -> bytes:
        """The stored value, or b"" when there is none (as in Tyk)."""
        reply = _require_host().request("get_data", {"key": _text(key)})
        return bytes(reply.get("value", b""))

    @staticmethod
    def trigger_event(name: Any, payload: Any = "") -> None:
        _require_host().notify("trigger_event", {
            "name": _text(name), "payload": _text(payload), "api_id": CURRENT_API.get()})

    # Coproc extensions for `async def` hooks, which must not block the event loop.

    @staticmethod
    async def store_data_async(key: Any, value: Any, ttl: int = 0) -> None:
        await _require_host().arequest("store_data", _store_fields(key, value, ttl))

    @staticmethod
    async def get_data_async(key: Any) -> bytes:
        reply = await _require_host().arequest("get_data", {"key": _text(key)})
        return bytes(reply.get("value", b""))


def _store_fields(key: Any, value: Any, ttl: Any) -> dict[str, Any]:
    return {"key": _text(key), "value": _data(value), "ttl": max(0, int(ttl or 0))}


def install_plugin_api(host: HostCalls | None) -> Callable[[], None]:
    """Register `tyk`, every `tyk.*` module, `gateway` and the pb2 modules; return an undo.

    `host` serves TykGateway's calls (None: only `log` works, locally).  The
    undo restores `sys.modules` as it was; the worker never calls it, tests do.
    """
    global _host
    previous_host = _host
    _host = host
    modules = build_modules(TykGateway)
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)

    def undo() -> None:
        global _host
        _host = previous_host
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module

    return undo
