"""JS hooks as worker hooks: load an API's JS files, call Tyk's middleware objects.

A hook's `name` is the global JS variable holding a
`TykJS.TykMiddleware.NewMiddleware` object; `path` is its file.  Calls, as in
Tyk's `mw_js_plugin.go`:

=============  ==================================================  =====================
phase          JS call                                             returns
=============  ==================================================  =====================
pre, post,     ``DoProcessRequest(request, session, spec)``        ``ReturnData(request,
post_key_auth                                                      session.meta_data)``
auth_check     ``DoProcessRequest(request, {}, spec)``             ``ReturnAuthData(request,
                                                                   session)``
response       ``DoProcessResponse(response, request, session,     ``ReturnResponseData(
               spec)``                                             response, meta_data)``
=============  ==================================================  =====================

`SessionMeta` replaces the session's `meta_data` only for hooks with
`require_session` (Tyk's rule).  An auth hook's session is keyed by the
returned `AuthValue` if any, else by the API's auth header value, else by
Tyk's empty key (the gateway lets a JS auth hook through without a token).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from config.apidef import GOJA_DRIVER, APIDefinition, HookDef
from config.gateway import JsvmOptions
from worker.engine_files import engine_files, phase_hooks
from worker.jsvm.api import host_functions, log_sink
from worker.jsvm.engine import JSDeadline, JSHookError, JSVMContext, Script, scoped_name
from worker.jsvm.objects import (
    JSValueError,
    from_js_request,
    from_js_response,
    from_js_session,
    js_request,
    js_response,
    js_session,
    js_spec,
)
from worker.loader import ApiPlugins, BundleError, HookEntry
from worker.objects import Message, MiniRequestObject, ResponseObject, SessionState

__all__ = ["JSDeadline", "JSHookError", "load_jsvm_api", "load_jsvm_plugins"]

log = logging.getLogger("worker.jsvm")

#: The JS stop comes this long after the hook's deadline: the worker answers the
#: call at the deadline (504, as for any hook), and the stop then frees the call
#: thread; stopping first would race the deadline's answer.
STOP_MARGIN_S = 0.1


def load_jsvm_api(api: APIDefinition, options: JsvmOptions) -> ApiPlugins:
    """The JS plugins of one API (never raises): its files, then its hooks."""
    if not options.enable:
        return ApiPlugins(api.api_id, source=api.api_id, load_error=(
            "JSVM is disabled: this API's custom_middleware.driver is "
            f"{api.custom_middleware.driver!r}; set enable_jsvm: true in the gateway config"))
    try:
        files = engine_files(api, ".js")
    except BundleError as exc:
        return ApiPlugins(api.api_id, source=api.custom_middleware_bundle,
                          load_error=f"BundleError: {exc}")
    return load_jsvm_plugins(api, files, phase_hooks(api), options)


def load_jsvm_plugins(api: APIDefinition, files: Sequence[Path],
                      hooks: Iterable[tuple[str, HookDef]],
                      options: JsvmOptions) -> ApiPlugins:
    """Load `files` into a new JS context for `api` and wrap each (phase, hook)."""
    plugins = ApiPlugins(api.api_id, source=", ".join(str(f) for f in files))
    functions = host_functions(api.api_id, options.outbound_timeout_ms / 1000)
    hooks = list(hooks)
    goja = api.custom_middleware.driver == GOJA_DRIVER
    try:
        scripts = _scripts(api, files, [hook for _, hook in hooks], goja)
        context = JSVMContext(scripts, functions, log_sink(api.api_id),
                              options.max_memory_mb << 20, options.tyk_js_path)
    except JSHookError as exc:
        plugins.load_error = f"JSError: {exc}"
        return plugins
    if context.uses_host_calls:
        log.warning("API %s: its JS uses TykMakeHttpRequest/TykBatchRequest/TykGetKeyData/"
                    "TykSetKeyData/TykStorage*, so jsvm_timeout cannot stop it (QuickJS's "
                    "time limit excludes calls into Python); only the hook deadline bounds "
                    "its calls", api.api_id)
    for index, (phase, hook) in enumerate(hooks):
        target = _target(context, api, index, hook, scripts) if goja else hook.name
        if target is None or not context.has_object(target):
            where = "its inline code" if hook.code else plugins.source
            plugins.problems.append(f"hook {hook.name!r} is not a{'' if goja else ' global'} "
                                    f"TykJS middleware object (NewMiddleware) in {where}")
            continue
        limit = min(options.timeout_s, hook.timeout_ms / 1000 + STOP_MARGIN_S)
        func, arity = _WRAPPERS[phase](_runner(context, hook, target, limit), hook, api)
        plugins.hooks[hook.name] = HookEntry(hook.name, func, arity, False, False,
                                             plugins.source)
    return plugins


def _scripts(api: APIDefinition, files: Sequence[Path], hooks: Sequence[HookDef],
             goja: bool) -> list[Script]:
    """The API's JS: its files, then (goja) its hooks' inline code.  Under goja each
    file runs in its own scope and publishes the hook names it defines; inline code
    gets Tyk's synthetic name, one per hook."""
    if not goja:
        return [Script.read(path, "plugin") for path in files]
    names = tuple(dict.fromkeys(h.name for h in hooks if not h.code))
    scripts = [Script.read(path, "plugin", names) for path in files]
    scripts += [Script(_inline_label(api, index, hook), hook.code, (hook.name,))
                for index, hook in enumerate(hooks) if hook.code]
    return scripts


def _inline_label(api: APIDefinition, index: int, hook: HookDef) -> str:
    """Inline code's name, as a file's (in errors, and in its scoped globals)."""
    return f"__tyk_inline__/{api.api_id}/{index}/{hook.name}"


def _target(context: JSVMContext, api: APIDefinition, index: int, hook: HookDef,
            scripts: Sequence[Script]) -> str | None:
    """A goja hook's scoped global: its inline code's, its `path`'s, else that of the
    last file defining the name (a bundle hook without a path)."""
    if hook.code:
        return scoped_name(_inline_label(api, index, hook), hook.name)
    if hook.path:
        own = scoped_name(hook.path, hook.name)
        if context.has_object(own):
            return own
    for script in reversed(scripts):
        candidate = scoped_name(script.label, hook.name)
        if hook.name in script.exports and context.has_object(candidate):
            return candidate
    return None


#: `run(method, args)`: one call of a hook's JS object, its answer as a dict.
Runner = Callable[[str, list[Any]], dict[str, Any]]


def _runner(context: JSVMContext, hook: HookDef, target: str, timeout_s: float) -> Runner:
    """Calls of `hook`'s object, the global `target` (its name, or its scoped name)."""
    def run(method: str, args: list[Any]) -> dict[str, Any]:
        got = context.call(target, method, json.dumps(args), timeout_s, shown=hook.name)
        if not got:
            raise JSHookError(f"JS middleware {hook.name} returned no object (did it return "
                              f"{'ReturnResponseData' if 'Response' in method else 'ReturnData'}"
                              "(...)?)")
        value = json.loads(got)
        if not isinstance(value, dict):
            raise JSHookError(f"JS middleware {hook.name} returned {type(value).__name__}, "
                              "not an object")
        return value
    return run


def _wire(message: Any) -> dict[str, Any]:
    # The worker hands hooks Tyk's `request` wrapper (worker/request.py); JS
    # gets the MiniRequestObject's fields.
    wire: dict[str, Any] = getattr(message, "object", message).to_wire()
    return wire


def _request_hook(run: Runner, hook: HookDef,
                  api: APIDefinition) -> tuple[Callable[..., Any], int]:
    def call(request: Message, session: Message, spec: Any) -> Any:
        req, sess = _wire(request), _wire(session)
        got = run("DoProcessRequest", [js_request(req), js_session(sess), js_spec(spec)])
        try:
            new_req = from_js_request(got.get("Request"), req)
            if hook.require_session and "SessionMeta" in got:
                meta = from_js_session({"meta_data": got.get("SessionMeta") or {}})
                sess = {**sess, "metadata": meta.get("metadata", {})}
        except JSValueError as exc:
            raise JSHookError(f"JS middleware {hook.name}: {exc}") from None
        return MiniRequestObject.from_wire(new_req), SessionState.from_wire(sess)
    return call, 3


def _auth_hook(run: Runner, hook: HookDef,
               api: APIDefinition) -> tuple[Callable[..., Any], int]:
    header = api.auth_header_name.lower()

    def call(request: Message, session: Message, metadata: Any, spec: Any) -> Any:
        req = _wire(request)
        got = run("DoProcessRequest", [js_request(req), {}, js_spec(spec)])
        try:
            new_req = from_js_request(got.get("Request"), req)
            new_session = from_js_session(got.get("Session") or {})
        except JSValueError as exc:
            raise JSHookError(f"JS middleware {hook.name}: {exc}") from None
        # Tyk keys the session by `AuthValue` (which ReturnAuthData never sets);
        # Coproc falls back to the credential the request carried, so each
        # caller gets its own rate limit and quota.
        token = got.get("AuthValue") or next(
            (v for k, v in (req.get("headers") or {}).items() if k.lower() == header), "")
        meta = dict(metadata)
        if token and isinstance(token, str):
            meta["token"] = token
        return (MiniRequestObject.from_wire(new_req), SessionState.from_wire(new_session),
                meta)
    return call, 4


def _response_hook(run: Runner, hook: HookDef,
                   api: APIDefinition) -> tuple[Callable[..., Any], int]:
    def call(request: Message, response: Message, session: Message,
             metadata: Any, spec: Any) -> Any:
        req, resp, sess = _wire(request), _wire(response), _wire(session)
        got = run("DoProcessResponse",
                  [js_response(resp), js_request(req), js_session(sess), js_spec(spec)])
        try:
            new_resp = from_js_response(got.get("Response"), resp)
        except JSValueError as exc:
            raise JSHookError(f"JS middleware {hook.name}: {exc}") from None
        return ResponseObject.from_wire(new_resp)
    return call, 5


_WRAPPERS = {"pre": _request_hook, "post": _request_hook, "post_key_auth": _request_hook,
             "auth_check": _auth_hook, "response": _response_hook}
