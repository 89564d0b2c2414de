"""The HTTP front door: connection cap, header and idle timeouts, clean answers to bad requests.

aiohttp's request handler is kept; this module adds what a hostile client
needs, without touching the request path of a well-formed request:

* a **connection cap**: at the cap, the oldest connection that is not inside a
  request (idle keep-alive, or still sending its head) is closed to make room,
  so a slowloris crowd cannot starve real clients; when every connection is
  busy the new one gets `503` and is closed.  Either is logged once per
  interval with counts, never once per connection;
* a **header read timeout**: a connection that has not sent a complete request
  head within it (from accept, or from the end of the previous response) is
  closed.  aiohttp's keep-alive timer is the **idle timeout** between requests
  (it also runs from accept, so a first head gets the shorter of the two);
* malformed requests answer Tyk's JSON error template without echoing the
  client's bytes and without a traceback in the log: a line or header over
  `max_header_bytes` (or too many headers) is `431`, anything else `400`.

`GuardedSite` replaces `web.SockSite` so each accepted connection gets a
`GuardedHandler`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion10
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from config.gateway import GatewayOptions

__all__ = [
    "ConnectionGuard",
    "GuardedHandler",
    "GuardedSite",
    "connection_cap",
    "framing_middleware",
    "handler_args",
]

log = logging.getLogger("coproc.gateway.http")

#: Overload and bad-request summaries are logged at most once per this many seconds.
LOG_INTERVAL_S = 10.0
# File descriptors kept back from the cap for upstream connections, the hooks
# socket, logs and storage (see connection_cap).
_FD_RESERVE = 128
_OVERLOADED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
               b"Content-Length: 35\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
               b'{"error": "Too many connections"}\r\n')


def connection_cap(opts: GatewayOptions) -> int:
    """`max_connections`, or (0: auto) what the fd limit leaves after upstream connections."""
    if opts.max_connections:
        return opts.max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(64, soft - opts.upstream_max_connections - _FD_RESERVE)


def handler_args(opts: GatewayOptions) -> dict[str, Any]:
    """aiohttp's per-connection settings from the config (no access log: ours is JSON)."""
    return {"access_log": None,
            "max_line_size": opts.max_header_bytes,
            "max_field_size": opts.max_header_bytes,
            # aiohttp's keep-alive timer: from accept and between requests.
            "keepalive_timeout": opts.idle_timeout_ms / 1000}


def framing_middleware(max_header_bytes: int) -> Any:
    """Refuse what the parser lets through: HTTP/0.9, and heads over `max_header_bytes` in all.

    The parser bounds each line (and the count of headers); the whole head is
    bounded here, as Go's MaxHeaderBytes does: the request line plus every
    header line.
    """

    @web.middleware
    async def framing(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
        if request.version < HttpVersion10:
            # A 0.9 request has no headers (no Host, no framing): nothing to proxy safely.
            return _refuse(400, "HTTP/0.9 is not supported")
        size = len(request.method) + len(request.raw_path) + 12  # " ", " HTTP/1.1\r\n"
        for name, value in request.raw_headers:
            size += len(name) + len(value) + 4
        if size > max_header_bytes:
            return _refuse(431, "Request header fields too large")
        return await handler(request)

    return framing


def _refuse(status: int, message: str) -> web.Response:
    response = web.Response(status=status, body=json.dumps({"error": message}).encode(),
                            content_type="application/json")
    response.force_close()
    return response


class _Tally:
    """Counts events and logs a summary at most once per interval."""

    def __init__(self, what: str, level: int = logging.WARNING) -> None:
        self.what, self.level = what, level
        self.count = 0  # since the last log line
        self.total = 0
        self._next_log = 0.0

    def add(self, detail: str = "") -> None:
        self.count += 1
        self.total += 1
        now = time.monotonic()
        if now >= self._next_log:
            log.log(self.level, "%s: %d in the last %.0f s (%d in all)%s", self.what,
                    self.count, LOG_INTERVAL_S, self.total, f"; last: {detail}" if detail else "")
            self.count, self._next_log = 0, now + LOG_INTERVAL_S


class ConnectionGuard:
    """The live connections of one gateway process, oldest first, and the cap on them."""

    def __init__(self, cap: int, header_timeout_s: float) -> None:
        self.cap = cap
        self.header_timeout_s = header_timeout_s
        self._live: dict[GuardedHandler, None] = {}  # insertion order: oldest first
        self.evicted = _Tally("connection cap reached: closed idle or slow connections")
        self.refused = _Tally("connection cap reached with every connection busy: "
                              "refused new connections with 503")
        self.timed_out = _Tally("closed connections that sent no complete request head "
                                "in time", logging.INFO)
        self.bad_requests = _Tally("answered malformed requests", logging.INFO)

    @property
    def count(self) -> int:
        return len(self._live)

    def admit(self, handler: GuardedHandler) -> bool:
        """Register `handler`; False when it must be refused (every slot busy)."""
        if len(self._live) >= self.cap and not self._evict_one():
            self.refused.add()
            return False
        self._live[handler] = None
        return True

    def release(self, handler: GuardedHandler) -> None:
        self._live.pop(handler, None)

    def _evict_one(self) -> bool:
        for handler in self._live:  # oldest first
            if handler.evictable():
                self._live.pop(handler)
                handler.force_close()
                self.evicted.add()
                return True
        return False


class GuardedHandler(RequestHandler):
    """aiohttp's handler with the guard's cap and header timeout, and quiet JSON errors."""

    def __init__(self, manager: Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._head_deadline: asyncio.TimerHandle | None = None
        self._heads_seen = 0

    # -- connection lifecycle -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit(self):
            # Refused before aiohttp sees it: no task, nothing to clean up but the socket.
            write = getattr(transport, "write", None)
            if write is not None:
                write(_OVERLOADED)
            transport.close()
            self._manager = None  # so connection_lost() knows there is nothing to undo
            return
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.release(self)
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._disarm_head_deadline()  # a complete head arrived

    def evictable(self) -> bool:
        """Idle between requests or still sending a head: closing it loses no request."""
        return not self._request_in_progress and not self._messages

    def _arm_head_deadline(self) -> None:
        timeout = self._guard.header_timeout_s
        if timeout > 0:
            self._head_deadline = self._loop.call_later(timeout, self._head_timed_out)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self._request_count == 0 and not self._request_in_progress:
            self._guard.timed_out.add()
            self.force_close()

    # -- errors ---------------------------------------------------------------------------

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """Tyk's JSON error; the client's bytes are never echoed."""
        if status == 500 and not isinstance(exc, BadHttpMessage):
            return super().handle_error(request, status, exc, message)  # our bug: traceback
        if _too_large(exc):
            status, text = 431, "Request header fields too large"
        else:
            status, text = 400, "Bad request"
        self._guard.bad_requests.add(f"{status} {type(exc).__name__}")
        return _refuse(status, text)


def _too_large(exc: BaseException | None) -> bool:
    return isinstance(exc, LineTooLong) or (
        isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc))


class GuardedSite(web.SockSite):
    """`web.SockSite` whose connections are `GuardedHandler`s sharing one guard."""

    def __init__(self, runner: web.BaseRunner, sock: Any, guard: ConnectionGuard,
                 handler_args: dict[str, Any]) -> None:
        super().__init__(runner, sock)
        self.guard = guard
        self.handler_args = handler_args

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        server = self._runner.server
        assert server is not None  # the runner was set up
        loop = asyncio.get_running_loop()
        factory: Callable[[], GuardedHandler] = lambda: GuardedHandler(  # noqa: E731
            server, self.guard, loop=loop, **self.handler_args)
        self._server = await loop.create_server(factory, sock=self._sock)
