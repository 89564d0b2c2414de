"""One QuickJS context per API: Tyk's `TykJS` prelude, the plugin files, bounded calls.

Why QuickJS (measured on the 2-core dev machine, docs/drivers/jsvm.md):

=============  ===============  =========  ==========================================
engine         new context +    one call   stopping `while(true){}`
               a small file
=============  ===============  =========  ==========================================
quickjs        0.13 ms          2 us       per-context time limit (interrupt handler)
mini-racer     6.5 ms           125 us     per-call timeout (a V8 isolate per context)
dukpy          0.7 ms per eval  -          none: a runaway script hangs the thread
=============  ===============  =========  ==========================================

QuickJS has a per-context memory limit too, and a context is its own heap:
one API's JS never sees another's.

Tyk copies its otto VM for every call, so a plugin's global changes do not
survive the call; Coproc keeps one context per API (building one per call
would cost more than the hook), so they do, as a Python plugin's module
globals do (documented).  A context serialises its calls with its own lock:
concurrent hooks of one API run one after another, hooks of different APIs in
parallel on the worker's call threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import quickjs

__all__ = ["DEFAULT_MAX_MEMORY", "JSDeadline", "JSHookError", "JSVMContext", "Script",
           "scoped_name"]

log = logging.getLogger("worker.jsvm")

#: Heap one API's context may use.
DEFAULT_MAX_MEMORY = 64 * 1024 * 1024

#: ECMAScript's reserved words (strict mode's included): never a middleware object's name.
_JS_RESERVED = frozenset((
    "await break case catch class const continue debugger default delete do else enum "
    "export extends false finally for function if implements import in instanceof "
    "interface let new null package private protected public return static super switch "
    "this throw true try typeof var void while with yield").split())

#: Prelude functions that call into Python (see `uses_host_calls`).
_PRELUDE_HOST_CALLERS = ("TykStorage",)

# Tyk's JS prelude (`TykJS.TykMiddleware`), written here from its documented
# behaviour.  `__coproc_run` is the one entry point Python calls: the arguments
# travel as one JSON text and the answer comes back as JSON text, which is how
# Tyk's own driver talks to its VM too.
PRELUDE = r"""
var TykJS = {TykMiddleware: {}, TykEventHandlers: {}};

TykJS.TykMiddleware.MiddlewareComponentMeta = function (configuration) {
  this.configuration = configuration;
};
var __Meta = TykJS.TykMiddleware.MiddlewareComponentMeta.prototype;
__Meta.ProcessRequest = function (request, session, config) {
  log("Process Request Not Implemented");
  return request;
};
__Meta.ProcessResponse = function (response, request, session, config) {
  log("Process Response Not Implemented");
  return response;
};
__Meta.DoProcessRequest = function (request, session, config) {
  var processed = this.ProcessRequest(request, session, config);
  if (!processed) {
    log("Middleware didn't return request object!");
    return undefined;
  }
  return processed;
};
__Meta.DoProcessResponse = function (response, request, session, config) {
  var processed = this.ProcessResponse(response, request, session, config);
  if (!processed) {
    log("Middleware didn't return response object!");
    return undefined;
  }
  return processed;
};

TykJS.TykMiddleware.NewMiddleware = function (configuration) {
  TykJS.TykMiddleware.MiddlewareComponentMeta.call(this, configuration);
};
TykJS.TykMiddleware.NewMiddleware.prototype = Object.create(__Meta);
TykJS.TykMiddleware.NewMiddleware.prototype.constructor = TykJS.TykMiddleware.NewMiddleware;
(function (p) {
  p.NewProcessRequest = function (callback) { this.ProcessRequest = callback; };
  p.NewProcessResponse = function (callback) { this.ProcessResponse = callback; };
  p.ReturnData = function (request, session) { return {Request: request, SessionMeta: session}; };
  p.ReturnResponseData = function (response, session) {
    return {Response: response, SessionMeta: session};
  };
  p.ReturnAuthData = function (request, session) { return {Request: request, Session: session}; };
})(TykJS.TykMiddleware.NewMiddleware.prototype);

TykJS.TykEventHandlers.EventHandlerComponentMeta = function () {};
TykJS.TykEventHandlers.EventHandlerComponentMeta.prototype.DoProcessEvent = function (e, c) {
  this.Handle(e, c);
};
TykJS.TykEventHandlers.EventHandlerComponentMeta.prototype.Handle = function (e, c) {
  log("Handler not implemented!");
  return e;
};
TykJS.TykEventHandlers.NewEventHandler = function () {
  TykJS.TykEventHandlers.EventHandlerComponentMeta.call(this);
};
TykJS.TykEventHandlers.NewEventHandler.prototype =
  Object.create(TykJS.TykEventHandlers.EventHandlerComponentMeta.prototype);
TykJS.TykEventHandlers.NewEventHandler.prototype.NewHandler = function (callback) {
  this.Handle = callback;
};

function TykJsResponse(response, session_meta) {
  return JSON.stringify({Response: response, SessionMeta: session_meta});
}

// Tyk's base64 helpers and logging in JS: the binding refuses calls into
// Python while a time limit is set, so only the host-call functions are Python.
var __coproc_logs = [];
function log(message) { __coproc_logs.push(["info", String(message)]); }
function rawlog(message) { __coproc_logs.push(["raw", String(message)]); }
var __B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
function __utf8(s) { return unescape(encodeURIComponent(String(s))); }
function __unutf8(s) {
  try { return decodeURIComponent(escape(s)); } catch (e) { return s; }
}
function rawb64enc(input) {
  var s = __utf8(input), out = "", i = 0;
  while (i < s.length) {
    var a = s.charCodeAt(i++), b = s.charCodeAt(i++), c = s.charCodeAt(i++);
    out += __B64.charAt(a >> 2) + __B64.charAt(((a & 3) << 4) | (b >> 4));
    if (!isNaN(b)) { out += __B64.charAt(((b & 15) << 2) | (c >> 6)); }
    if (!isNaN(c)) { out += __B64.charAt(c & 63); }
  }
  return out;
}
function b64enc(input) {
  var out = rawb64enc(input);
  while (out.length % 4) { out += "="; }
  return out;
}
function rawb64dec(input) {
  var s = String(input), bits = 0, count = 0, out = "";
  if (s.length % 4 === 1) { return undefined; }
  for (var i = 0; i < s.length; i++) {
    var v = __B64.indexOf(s.charAt(i));
    if (v < 0) { return undefined; }
    bits = (bits << 6) | v; count += 6;
    if (count >= 8) { count -= 8; out += String.fromCharCode((bits >> count) & 255); }
  }
  return __unutf8(out);
}
function b64dec(input) {
  var s = String(input);
  if (s.length % 4 === 0 && /^[A-Za-z0-9+\/]*={0,2}$/.test(s)) {
    return rawb64dec(s.replace(/=+$/, ""));
  }
  return rawb64dec(s);
}

// Tyk's goja storage functions.  They throw on failure (a refused key, storage
// down), so a plugin never takes an outage for an absent key; the Python side
// (`__coproc_storage`, worker/jsvm/api.py) answers {"result"} or {"error"}.
// Arguments convert as goja's String() and ToInteger() do.
function __coproc_store(action, key, value, ttl) {
  var n = Math.trunc(Number(ttl));
  var answer = JSON.parse(__coproc_storage(action, String(key), String(value),
                                           isFinite(n) ? n : 0));
  if (answer.error !== undefined) { throw new Error(answer.error); }
  return answer.result;
}
function TykStorageGet(key) { return __coproc_store("get", key, "", 0); }
function TykStorageSet(key, value, ttl) { __coproc_store("set", key, value, ttl); }
function TykStorageSetNX(key, value, ttl) { return __coproc_store("setnx", key, value, ttl); }
function TykStorageDel(key) { __coproc_store("del", key, "", 0); }
function TykStorageTTL(key) { return __coproc_store("ttl", key, "", 0); }
function TykStorageIncr(key, ttl) { return __coproc_store("incr", key, "", ttl); }

var __coproc_drain = function () { return JSON.stringify(__coproc_logs.splice(0)); };

var __coproc_run = function (name, method, argsJSON) {
  var target = globalThis[name];
  if (target === undefined || target === null || typeof target[method] !== "function") {
    throw new Error("no JS middleware object named '" + name + "' (with " + method + ")");
  }
  var result = target[method].apply(target, JSON.parse(argsJSON));
  return result === undefined ? "" : JSON.stringify(result);
};
"""


class JSHookError(Exception):
    """A JS hook threw, returned something unusable, or its files did not load."""


class JSDeadline(JSHookError):
    """A JS hook ran past its time limit and was stopped (answered as a timeout: 504)."""

    error_code = "deadline"  # worker.invoke reads it: ErrorCode.DEADLINE


def scoped_name(label: str, name: str) -> str:
    """The global under which a scoped script publishes its object `name`: one per
    (script, name), so two files may each have a `handler` (Tyk's goja scheme)."""
    digest = hashlib.sha256(f"{label}::{name}".encode()).hexdigest()[:12]
    return f"__tyk_h_{digest}_{re.sub(r'[^A-Za-z0-9_]', '_', name) or 'h'}"


@dataclass(frozen=True, slots=True)
class Script:
    """One JS source of a context.  With `exports`, it runs in a function scope of
    its own (Tyk's goja driver: its `var`s stay local), and each exported name it
    defines is published as `scoped_name(label, name)`; without, at top level
    (otto: every file shares the globals)."""

    label: str  # the file, or Tyk's synthetic name of inline code; names it in errors
    text: str
    exports: tuple[str, ...] = ()

    @classmethod
    def read(cls, path: Path, what: str, exports: tuple[str, ...] = ()) -> Script:
        try:
            return cls(str(path), path.read_text(encoding="utf-8"), exports)
        except (OSError, UnicodeDecodeError) as exc:
            raise JSHookError(f"{path}: cannot read the {what} file ({exc})") from None

    def source(self) -> str:
        if not self.exports:
            return self.text
        # Names are identifiers (config/apidef.py checks hook names); a reserved
        # word cannot name a JS object, and `typeof` of one would not even parse.
        publish = "".join(
            f"if (typeof {n} !== 'undefined') "
            f"{{ globalThis[{_js_string(scoped_name(self.label, n))}] = {n}; }}\n"
            for n in self.exports if n not in _JS_RESERVED)
        # The newline and semicolon end a last line that is a comment or lacks ";".
        return f"(function () {{\n{self.text}\n;\n{publish}}})();\n"


class JSVMContext:
    """The QuickJS context of one API: Tyk's prelude, host functions, then the scripts."""

    def __init__(self, scripts: Iterable[Script],
                 host_functions: Mapping[str, Callable[..., Any]],
                 log_sink: Callable[[str, str], None], max_memory: int = DEFAULT_MAX_MEMORY,
                 library: Path | None = None) -> None:
        self._context = quickjs.Context()
        self._context.set_memory_limit(max_memory)
        self._lock = threading.Lock()
        self._log_sink = log_sink
        for name, func in host_functions.items():
            self._context.add_callable(name, _never_raises(name, func))
        self._context.eval(PRELUDE)
        self._run = self._context.get("__coproc_run")
        self._drain = self._context.get("__coproc_drain")
        sources: list[str] = []
        if library is not None:  # Tyk's `tyk_js_path`: the operator's own JS library
            scripts = [Script.read(library, "tyk_js_path"), *scripts]
        for script in scripts:
            self._load(script)
            sources.append(script.text)
        # QuickJS's time limit and calls into Python exclude each other (the
        # binding refuses the call): an API whose JS uses a host-call function
        # runs without the limit, bounded by the hook deadline's answer only.
        self.uses_host_calls = any(name in text
                                   for name in (*host_functions, *_PRELUDE_HOST_CALLERS)
                                   for text in sources)

    def _load(self, script: Script) -> None:
        try:
            self._context.eval(script.source())
        except quickjs.JSException as exc:
            raise JSHookError(f"{script.label}: {_text(exc)}") from None
        finally:
            self._flush_logs()

    def has_object(self, name: str) -> bool:
        """Whether `name` is a global with a `DoProcessRequest` (a Tyk middleware object)."""
        with self._lock:
            try:
                return bool(self._context.eval(
                    f"(function(n){{var o = globalThis[n]; return !!o && "
                    f"typeof o.DoProcessRequest === 'function';}})({_js_string(name)})"))
            except quickjs.JSException:
                return False

    def call(self, name: str, method: str, args_json: str, timeout_s: float,
             shown: str = "") -> str:
        """`name.method(...args)` with the JSON-encoded args; the JSON of its result
        ("" for undefined).  Stops the call at `timeout_s` (see `uses_host_calls`).
        `shown`: the hook's name in errors, when `name` is a scoped one."""
        target, name = name, shown or name
        with self._lock:
            limited = not self.uses_host_calls
            if limited:
                self._context.set_time_limit(timeout_s)
            started = time.monotonic()
            try:
                result = self._run(target, method, args_json)
            except quickjs.JSException as exc:
                text = _text(exc)
                if "interrupted" in text and time.monotonic() - started >= timeout_s * 0.9:
                    raise JSDeadline(f"JS middleware {name} stopped after {timeout_s:g} s "
                                     "(jsvm_timeout or the hook deadline)") from None
                if "out of memory" in text:
                    raise JSHookError(f"JS middleware {name}: the API's JS context ran out "
                                      "of memory") from None
                raise JSHookError(f"JS middleware {name}: {text}") from None
            finally:
                if limited:
                    self._context.set_time_limit(-1)
                self._flush_logs()
        if not isinstance(result, str):
            raise JSHookError(f"JS middleware {name}: {method} returned a non-JSON value")
        return result

    def _flush_logs(self) -> None:
        """Hand what `log`/`rawlog` collected to the sink (after the call: see PRELUDE)."""
        try:
            entries = json.loads(self._drain())
        except (quickjs.JSException, ValueError, TypeError):
            return
        for level, message in entries:
            self._log_sink(str(level), str(message))


def _never_raises(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    # An exception out of a callable leaves the binding in an error state for
    # the context's next calls: answer undefined (Tyk's answer on failure).
    def call(*args: Any) -> Any:
        try:
            return func(*args)
        except Exception:
            log.exception("JSVM function %s failed", name)
            return None
    return call


def _js_string(value: str) -> str:
    return json.dumps(value)


def _text(exc: BaseException) -> str:
    return str(exc.args[0] if exc.args else exc).strip()
