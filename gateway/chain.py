"""The middleware chain: one API request from match to the response written.

match -> pre hooks -> auth and session checks (gateway.auth)
-> post_key_auth hooks -> post hooks -> upstream -> response hooks -> client.

A request with no request-phase hook streams its body to the upstream; one
without response hooks streams the upstream's body back.  Hook failures follow
each hook's `failure_policy`; auth always fails closed.

Hooks run in the groups the plan made (gateway/hook_groups.py): a group of
several hooks is one merged call, whose results are applied here in order
exactly as separate calls' would be; a failed hook's own policy then decides
(fail_open: the group's remaining hooks go on, as a further merged call).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from config.apidef import HookDef
from config.gateway import GatewayOptions
from gateway.analytics import observer as observe
from gateway.auth import Authenticator, Denied
from gateway.bodies import defers_text
from gateway.credentials import strip_credentials
from gateway.hook_groups import GroupReply, HookGroup, Step
from gateway.hooks import BackendUnavailable, HookCallError, HookFailed, HookTimeout, NoWorker
from gateway.log_once import hook_failure_level
from gateway.plan import ApiPlan, AuthMode
from gateway.proxy import (
    HOP_BY_HOP,
    BodyTooLarge,
    UpstreamError,
    copy_end_to_end,
    limited,
    read_limited,
    relay,
    send,
    upstream_headers,
)
from gateway.request_id import REQUEST_INFO, TRACE_HEADERS, request_id, with_request_id
from gateway.router import Router, has_dot_segment
from gateway.tyk_object import (
    Headers,
    Reply,
    RequestState,
    ResponseState,
    apply_response,
    apply_result,
    error_reply,
    overrides_reply,
    request_object,
    request_shadow,
    response_object,
)
from ipc.coprocess import changes_nothing, merge_reply
from ipc.protocol import ErrorCode
from ipc.ratelog import Throttle

__all__ = ["STATS", "Chain", "HookCaller", "json_error"]

log = logging.getLogger("coproc.gateway.chain")

NOT_AUTHORISED = "Key not authorised"
MIDDLEWARE_ERROR = "Middleware error"
#: A hook failing the same way on every request (a FATAL worker, a storage
#: outage) logs one line per this interval, with the count held back.
HOOK_FAILURE_LOG_S = 10.0
# Headers that would contradict the body the gateway writes: it sets its own length.
_FRAMING = HOP_BY_HOP | {"content-length"}
# Read-ahead for a body read whole without a size limit (as aiohttp's request.read()).
_UNBOUNDED = 1 << 62

#: Counters the chain keeps (reported to the supervisor with the hook client's).
STATS = ("requests", "no_route", "bad_path", "body_too_large", "upstream_errors",
         "upstream_timeouts", "hooks_fail_open", "hooks_fail_closed", "auth_denied")


class HookCaller(Protocol):
    """What the chain needs of `gateway.hooks.HookClient` (through `DriverRouter`)."""

    async def call(self, api_id: str, hook_type: str, hook: HookDef,
                   obj: dict[str, Any]) -> dict[str, Any]: ...

    async def call_group(self, api_id: str, group: HookGroup,
                         obj: dict[str, Any]) -> GroupReply | None: ...


#: Builds a hook's object from the request's state (`defer`: its text may stay lazy).
_Build = Callable[[Step, bool], dict[str, Any]]
#: What `_Apply` reads of a merged call's later hook's object (None: the whole object).
_Shadow = Callable[[], dict[str, Any]] | None
#: Applies a hook's result (the REPLY merged over what it got) to the request's state.
_Apply = Callable[[Step, dict[str, Any], dict[str, Any]], None]


class _Stop(Exception):
    """Ends the chain early with this response."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__()
        self.response = response


def json_error(status: int, message: str, headers: Mapping[str, str] | None = None
               ) -> web.Response:
    """Tyk's error template (`gateway.tyk_object.error_reply`) as a response."""
    return reply_response(error_reply(status, message, headers))


def reply_response(reply: Reply) -> web.Response:
    response = web.Response(status=reply.status, body=reply.body)
    for name, value in reply.headers.items():
        if name.lower() not in _FRAMING:
            response.headers[name] = value
    if reply.content_type:
        response.headers["Content-Type"] = reply.content_type
    elif reply.body and "Content-Type" not in response.headers:
        # The override body is text (a proto string); Go would sniff the same type.
        response.headers["Content-Type"] = "text/plain; charset=utf-8"
    return response


def _fail_closed(exc: HookCallError) -> web.Response:
    if isinstance(exc, HookTimeout):
        return json_error(504, "Hook timed out")
    if isinstance(exc, NoWorker):
        return json_error(503, "Plugin worker unavailable", {"Retry-After": "1"})
    if isinstance(exc, BackendUnavailable):
        return json_error(503, "Storage unavailable", {"Retry-After": "1"})
    return json_error(500, MIDDLEWARE_ERROR)


class Chain:
    """Serves every API request; one instance per gateway process."""

    def __init__(self, router: Router[ApiPlan], hooks: HookCaller,
                 session: aiohttp.ClientSession, opts: GatewayOptions,
                 auth: Authenticator | None = None) -> None:
        self.router = router
        self.hooks = hooks
        if auth is None:  # embedded default: sessions in this process's memory
            from gateway.storage import MemoryStorage

            auth = Authenticator(MemoryStorage(), hooks)
        self.auth = auth
        self.session = session
        self.max_body = opts.max_body_bytes  # 0: no limit
        self.stats: dict[str, int] = dict.fromkeys(STATS, 0)
        # Whether hook objects may carry lazy body text: asked on the first hook call
        # (the hook client has its arena by then, and keeps it).
        self._defer: bool | None = None
        # One throttle per (api, hook, outcome, error kind): bounded by the config.
        self._hook_logs: dict[tuple[str, str, str, str], Throttle] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.stats["requests"] += 1
        raw = request.raw_path
        if not raw.startswith("/"):  # absolute-form request target
            raw = request.rel_url.raw_path_qs
        path, _, query = raw.partition("?")
        router = self.router
        plan = router.match(request.host if router.uses_domains else "", path)
        if plan is None:
            self.stats["no_route"] += 1
            return json_error(404, "No API is listening on this path")
        observe.matched(plan, None, "")  # its own errors below are the API's too
        if has_dot_segment(path):
            self.stats["bad_path"] += 1
            return json_error(400, "Dot segments are not allowed in the path")
        if plan.broken:
            return json_error(plan.broken_status, MIDDLEWARE_ERROR if plan.broken_status == 500
                              else "Plugins unavailable")
        rid, given = request_id(request.headers)
        REQUEST_INFO.set((plan.api_id, rid))  # the access log's, the span's
        headers: Headers = request.headers
        trace = TRACE_HEADERS.get()  # tracing on: the request span's context replaces theirs
        if trace is not None or (not given and (plan.needs_body or plan.response)):
            headers = with_request_id(headers, rid, trace)  # hooks see the upstream's id
        state = RequestState(request.method, path, query, raw, request.scheme, headers)
        observe.matched(plan, state, rid)
        try:
            await self._request_phases(request, plan, state, rid)
            return await self._forward(request, plan, state, rid)
        except _Stop as stop:
            return stop.response

    # -- request phases ------------------------------------------------------

    async def _request_phases(self, request: web.Request, plan: ApiPlan, state: RequestState,
                              rid: str) -> None:
        if self.max_body and (request.content_length or 0) > self.max_body:
            raise _Stop(self._too_large())  # refused before reading a byte of it
        if plan.needs_body:
            state.body = await self._read_body(request)
        for group in plan.before_auth:  # pre (and post on a keyless API)
            await self._request_group(plan, group, state, rid)
        if plan.auth is not AuthMode.KEYLESS:
            await self._authenticate(plan, state, rid)
        for group in plan.after_auth:  # post_key_auth and post
            await self._request_group(plan, group, state, rid)
        if plan.strip_auth:  # strip_auth_data: after_auth was post_key_auth only
            strip_credentials(state, plan.strip_auth)
            for group in plan.after_strip:
                await self._request_group(plan, group, state, rid)

    async def _read_body(self, request: web.Request) -> bytes:
        """The whole body, bounded by max_body_bytes, copied once.

        The parser's chunks are taken as they are and joined in one copy;
        `request.read()` would copy every byte twice more (into a growing
        bytearray, then into bytes), which for large bodies costs as much as
        the hook's own transfer.  The stream is read to its end, as there.
        """
        if not request.body_exists:
            return b""  # a request without a body (GET): nothing to wait for
        content = request.content
        limit = self.max_body
        # Like request.read(): buffer without pausing the socket, the body is wanted whole.
        grow = getattr(content, "set_read_chunk_size", None)
        if grow is not None:
            grow(limit or _UNBOUNDED)
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk, end_of_http_chunk = await content.readchunk()
            if not chunk:
                if end_of_http_chunk and not content.at_eof():
                    continue  # a chunked body's chunk boundary, not its end
                break  # (no body: aiohttp's shared empty stream says "boundary" after once)
            size += len(chunk)
            if limit and size > limit:
                raise _Stop(self._too_large())
            chunks.append(chunk)
        return b"".join(chunks)  # one chunk: that very object, no copy

    def _too_large(self) -> web.Response:
        self.stats["body_too_large"] += 1
        return json_error(413, f"Request body exceeds {self.max_body} bytes")

    async def _request_group(self, plan: ApiPlan, group: HookGroup, state: RequestState,
                             rid: str) -> None:
        def build(step: Step, defer: bool) -> dict[str, Any]:
            return request_object(state, plan.spec, step.hook_type, step.hook, defer_text=defer)

        def apply(step: Step, sent: dict[str, Any], got: dict[str, Any]) -> None:
            request = apply_result(state, step.hook_type, sent, got)
            reply = overrides_reply(request.get("return_overrides") or {})
            if reply is not None:
                raise _Stop(reply_response(reply))

        await self._group(plan, group, build, apply, rid, lambda: request_shadow(state))

    async def _group(self, plan: ApiPlan, group: HookGroup, build: _Build, apply: _Apply,
                     rid: str, shadow: _Shadow = None) -> None:
        """Run a group's hooks: `build` makes a hook's object from the state, `apply`
        applies its result (raising _Stop to answer the client); `shadow` stands in
        for `build` where only `apply` reads the object (a merged call's later hooks,
        whose objects the worker made)."""
        defer = self._defer
        if defer is None:
            defer = self._defer = defers_text(self.hooks)
        while group:
            first = build(group[0], defer)
            reply = await self._call_group(plan, group, first) if len(group) > 1 else None
            if reply is None:  # one hook, or a worker that does not merge: one call each
                for index, step in enumerate(group):
                    obj = build(step, defer) if index else first
                    got = await self._call(plan, step.hook_type, step.hook, obj, rid)
                    # None: failed open; obj itself: the hook changed nothing.
                    if got is not None and got is not obj:
                        apply(step, obj, got)
                return
            sent = first
            for index, result in enumerate(reply.results):
                if changes_nothing(result):
                    continue  # nothing to apply, and no object to rebuild for it
                if index:  # what the worker built for it (ipc/merged.py), as apply reads it
                    sent = shadow() if shadow is not None else build(group[index], True)
                apply(group[index], sent, merge_reply(sent, result))
            done = len(reply.results)
            error = reply.error
            if error is None:
                if done == len(group):
                    return
                error = HookFailed(ErrorCode.PROTOCOL, "the worker ended a merged call early "
                                                       "without a failure or an answer")
            step = group[done]
            self._failed(plan, step.hook_type, step.hook, error, rid)  # fail_closed: _Stop
            group = group[done + 1:]  # failed open: the others, as a further merged call

    async def _call_group(self, plan: ApiPlan, group: HookGroup,
                          obj: dict[str, Any]) -> GroupReply | None:
        """A merged call; a call that failed as a whole is its first hook's failure."""
        try:
            return await self.hooks.call_group(plan.api_id, group, obj)
        except HookCallError as exc:
            return GroupReply([], exc)

    async def _call(self, plan: ApiPlan, hook_type: str, hook: HookDef, obj: dict[str, Any],
                    rid: str) -> dict[str, Any] | None:
        """The hook's object, None when it failed open; fail closed by raising _Stop."""
        try:
            return await self.hooks.call(plan.api_id, hook_type, hook, obj)
        except HookCallError as exc:
            self._failed(plan, hook_type, hook, exc, rid)
            return None

    def _failed(self, plan: ApiPlan, hook_type: str, hook: HookDef, exc: HookCallError,
                rid: str) -> None:
        """A hook failed: skip it (fail_open) or answer the client (_Stop)."""
        fields = {**plan.log_fields, "hook": hook.name, "request_id": rid}
        level = hook_failure_level(plan.api_id, hook.name, exc)  # load_failed: once
        if hook.failure_policy == "fail_open":
            self.stats["hooks_fail_open"] += 1
            observe.failed_open(plan.api_id, hook_type, hook.name)
            self._log_hook_failure(plan, hook_type, hook, exc, fields,
                                   "failed open (skipped)", level)
            return
        self.stats["hooks_fail_closed"] += 1
        self._log_hook_failure(plan, hook_type, hook, exc, fields, "failed", level)
        raise _Stop(_fail_closed(exc)) from None

    def _log_hook_failure(self, plan: ApiPlan, hook_type: str, hook: HookDef,
                          exc: HookCallError, fields: dict[str, Any], outcome: str,
                          level: int) -> None:
        """One line per interval for a repeating failure, naming how many were held;
        below WARNING (a load failure already reported once) it is not throttled."""
        if level < logging.WARNING:
            log.log(level, "%s hook %s %s: %s", hook_type, hook.name, outcome, exc,
                    extra={"fields": fields})
            return
        key = (plan.api_id, hook.name, outcome, f"{type(exc).__name__}:{getattr(exc, 'code', '')}")
        throttle = self._hook_logs.get(key)
        if throttle is None:
            throttle = self._hook_logs[key] = Throttle(HOOK_FAILURE_LOG_S)
        held = throttle.due()
        if held is None:
            return
        suffix = f" ({held} more like it in the last {HOOK_FAILURE_LOG_S:.0f} s)" if held else ""
        log.log(level, "%s hook %s %s: %s%s", hook_type, hook.name, outcome, exc, suffix,
                extra={"fields": fields})

    # -- auth ------------------------------------------------------------------

    async def _authenticate(self, plan: ApiPlan, state: RequestState, rid: str) -> None:
        try:
            await self.auth.check(plan, state, rid)
        except Denied as denied:
            self.stats["auth_denied"] += 1
            response = (reply_response(denied.reply) if denied.reply is not None
                        else json_error(denied.status, denied.message, denied.headers))
            raise _Stop(response) from None

    # -- upstream and response ---------------------------------------------------

    async def _forward(self, request: web.Request, plan: ApiPlan, state: RequestState,
                       rid: str) -> web.StreamResponse:
        target = plan.target
        headers = upstream_headers(state, target, request.remote, rid)
        data = self._upstream_body(request, state, headers)
        sent = time.perf_counter_ns()
        try:
            resp = await send(self.session, state, target.url(state.path, state.query),
                              headers, data)
            observe.upstream(time.perf_counter_ns() - sent)
        except BodyTooLarge:
            return self._too_large()
        except UpstreamError as exc:
            return self._upstream_failed(plan, exc, rid)
        try:
            if plan.response:
                return await self._response_phase(request, plan, state, resp, rid)
            return await relay(request, resp, state.response_headers)
        except UpstreamError as exc:
            return self._upstream_failed(plan, exc, rid)
        finally:
            resp.release()

    def _upstream_body(self, request: web.Request, state: RequestState,
                       headers: CIMultiDict[str]) -> Any:
        """What to send upstream: the buffered body, the client's stream, or nothing."""
        if state.body is not None:
            if not state.body and request.body_exists:
                headers["Content-Length"] = "0"  # a hook emptied the body
            return state.body or None
        if not request.body_exists:
            return None
        if request.content_length is None and self.max_body:
            return limited(request.content, self.max_body)  # chunked: count as it streams
        return request.content  # its Content-Length was checked, the parser enforces it

    def _upstream_failed(self, plan: ApiPlan, exc: UpstreamError, rid: str) -> web.Response:
        self.stats["upstream_timeouts" if exc.status == 504 else "upstream_errors"] += 1
        log.warning("upstream %s failed: %s", plan.target.origin, exc.detail,
                    extra={"fields": {**plan.log_fields, "request_id": rid}})
        return json_error(exc.status, str(exc))

    async def _response_phase(self, request: web.Request, plan: ApiPlan, state: RequestState,
                              upstream: aiohttp.ClientResponse, rid: str) -> web.Response:
        # Response hooks get the whole body, bounded like request bodies.
        resp = ResponseState(upstream.status, _end_to_end(upstream),
                             await read_limited(upstream, self.max_body))

        def build(step: Step, defer: bool) -> dict[str, Any]:
            return response_object(state, resp, plan.spec, step.hook, defer_text=defer)

        def apply(step: Step, sent: dict[str, Any], got: dict[str, Any]) -> None:
            apply_response(resp, sent["response"], got.get("response") or {})

        for group in plan.response_groups:
            await self._group(plan, group, build, apply, rid)
        headers = resp.headers  # the upstream's end-to-end headers, as the hooks left them
        if request.method != "HEAD":  # (HEAD: the upstream's Content-Length stands)
            if resp.headers_changed:  # a hook may have set hop-by-hop headers
                headers = CIMultiDict()
                copy_end_to_end(resp.headers, headers, _FRAMING)
            else:
                headers.popall("Content-Length", None)  # the body written sets its own
        out = web.Response(status=resp.status, body=resp.body, headers=headers,
                           reason=upstream.reason if resp.status == upstream.status else None)
        out.headers.update(state.response_headers)
        return out


def _end_to_end(upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    copy_end_to_end(upstream.headers, headers)
    return headers
