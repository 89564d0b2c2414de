"""GET /hello: is this gateway able to serve its APIs, plugins included?

200 with "status": "pass" when a plugin worker is routable, else 503 with
"status": "fail" and the same details, so a load balancer stops sending
traffic to an instance whose plugins cannot run.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

__all__ = ["HealthSource", "health_report", "make_hello"]


class HealthSource(Protocol):
    def health(self) -> dict[str, Any]: ...


def health_report(worker: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    ready = bool(worker.get("ready"))
    body = {"status": "pass" if ready else "fail", "gateway": {"pid": os.getpid()},
            "worker": worker}
    return (200 if ready else 503), body


def make_hello(source: Callable[[], HealthSource]
               ) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The /hello handler; `source` gives the hook client once the app has started."""

    async def hello(request: web.Request) -> web.Response:
        status, body = health_report(source().health())
        return web.json_response(body, status=status)

    return hello
