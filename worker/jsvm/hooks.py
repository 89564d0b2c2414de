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

from config.apidef import APIDefinition, HookDef
from config.gateway import JsvmOptions
from worker.engine_files import engine_files, phase_hooks
from worker.jsvm.api import host_functions, log_sink
from worker.jsvm.engine import JSDeadline, JSHookError, JSVMContext
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
    try:
        context = JSVMContext(files, functions, log_sink(api.api_id),
                              options.max_memory_mb << 20, options.tyk_js_path)
    except JSHookError as exc:
        plugins.load_error = f"JSError: {exc}"
        return plugins
    if context.uses_host_calls:
        log.warning("API %s: its JS uses TykMakeHttpRequest/TykBatchRequest/TykGetKeyData/"
                    "TykSetKeyData, so jsvm_timeout cannot stop it (QuickJS's time limit "
                    "excludes calls into Python); only the hook deadline bounds its calls",
                    api.api_id)
    for phase, hook in hooks:
        if not context.has_object(hook.name):
            plugins.problems.append(f"hook {hook.name!r} is not a global TykJS middleware "
                                    f"object (NewMiddleware) in {plugins.source}")
            continue
        limit = min(options.timeout_s, hook.timeout_ms / 1000 + STOP_MARGIN_S)
        func, arity = _WRAPPERS[phase](context, hook, limit, api)
        plugins.hooks[hook.name] = HookEntry(hook.name, func, arity, False, False,
                                             plugins.source)
    return plugins


def _run(context: JSVMContext, hook: HookDef, method: str, args: list[Any],
         timeout_s: float) -> dict[str, Any]:
    got = context.call(hook.name, method, json.dumps(args), timeout_s)
    if not got:
        raise JSHookError(f"JS middleware {hook.name} returned no object (did it return "
                          f"{'ReturnResponseData' if 'Response' in method else 'ReturnData'}"
                          "(...)?)")
    value = json.loads(got)
    if not isinstance(value, dict):
        raise JSHookError(f"JS middleware {hook.name} returned {type(value).__name__}, "
                          "not an object")
    return value


def _wire(message: Any) -> dict[str, Any]:
    # The worker hands hooks Tyk's `request` wrapper (worker/request.py); JS
    # gets the MiniRequestObject's fields.
    wire: dict[str, Any] = getattr(message, "object", message).to_wire()
    return wire


def _request_hook(context: JSVMContext, hook: HookDef, timeout_s: float,
                  api: APIDefinition) -> tuple[Callable[..., Any], int]:
    def call(request: Message, session: Message, spec: Any) -> Any:
        req, sess = _wire(request), _wire(session)
        got = _run(context, hook, "DoProcessRequest",
                   [js_request(req), js_session(sess), js_spec(spec)], timeout_s)
        try:
            new_req = from_js_request(got.get("Request"), req)
            if hook.require_session and "SessionMeta" in got:
                meta = from_js_session({"meta_data": got.get("SessionMeta") or {}})
                sess = {**sess, "metadata": meta.get("metadata", {})}
        except JSValueError as exc:
            raise JSHookError(f"JS middleware {hook.name}: {exc}") from None
        return MiniRequestObject.from_wire(new_req), SessionState.from_wire(sess)
    return call, 3


def _auth_hook(context: JSVMContext, hook: HookDef, timeout_s: float,
               api: APIDefinition) -> tuple[Callable[..., Any], int]:
    header = api.auth_header_name.lower()

    def call(request: Message, session: Message, metadata: Any, spec: Any) -> Any:
        req = _wire(request)
        got = _run(context, hook, "DoProcessRequest",
                   [js_request(req), {}, js_spec(spec)], timeout_s)
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


def _response_hook(context: JSVMContext, hook: HookDef, timeout_s: float,
                   api: APIDefinition) -> tuple[Callable[..., Any], int]:
    def call(request: Message, response: Message, session: Message,
             metadata: Any, spec: Any) -> Any:
        req, resp, sess = _wire(request), _wire(response), _wire(session)
        got = _run(context, hook, "DoProcessResponse",
                   [js_response(resp), js_request(req), js_session(sess), js_spec(spec)],
                   timeout_s)
        try:
            new_resp = from_js_response(got.get("Response"), resp)
        except JSValueError as exc:
            raise JSHookError(f"JS middleware {hook.name}: {exc}") from None
        return ResponseObject.from_wire(new_resp)
    return call, 5


_WRAPPERS = {"pre": _request_hook, "post": _request_hook, "post_key_auth": _request_hook,
             "auth_check": _auth_hook, "response": _response_hook}
