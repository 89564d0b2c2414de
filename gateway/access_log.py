"""The optional access log: one line per request (`coproc.access_log: true`).

Logged by `coproc.access` at info level once the handler returned, so it
follows `coproc.log_format`: in text mode `GET /path 200 1.234ms` with the
fields appended, in json mode one object with `method`, `path`, `status`,
`duration_ms`, `remote`, `api_id` and `request_id` (the last two when the
request matched an API).  A response streamed from the upstream is logged
when its headers were sent and the body relayed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.request_id import REQUEST_INFO

__all__ = ["access_logged"]

log = logging.getLogger("coproc.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def access_logged(inner: Handler) -> Handler:
    """`inner`, with an access log line for each request it serves."""

    async def logged(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter_ns()
        status = 500  # an exception escaped: aiohttp answers 500
        try:
            response = await inner(request)
            status = response.status
            return response
        finally:
            _line(request, status, time.perf_counter_ns() - started)

    return logged


def _line(request: web.Request, status: int, elapsed_ns: int) -> None:
    path = request.raw_path.partition("?")[0]
    fields: dict[str, object] = {"method": request.method, "path": path, "status": status,
                                 "duration_ms": round(elapsed_ns / 1e6, 3),
                                 "remote": request.remote or ""}
    info = REQUEST_INFO.get()
    if info is not None:
        fields["api_id"], fields["request_id"] = info
    log.info("%s %s %d %.3fms", request.method, path, status, elapsed_ns / 1e6,
             extra={"fields": fields})
