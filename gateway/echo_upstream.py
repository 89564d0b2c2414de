"""A test upstream that describes each request it gets, as JSON.

    python -m gateway.echo_upstream --host 127.0.0.1 --port 8081   (port 0: any free port)

Every method and path answers {"method", "path", "path_qs", "query", "headers",
"body", "body_len", "body_sha256"}.  Special paths, GET only:
`/status/{code}` answers that status, `/bytes/{n}` answers n bytes.
`/slow/{ms}` (any method) sleeps, then echoes.  Once bound it prints one line
`ECHO_PORT=<port>` so a test harness can find an ephemeral port.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import signal
import socket
import sys
from typing import Any

from aiohttp import web

__all__ = ["describe", "main", "make_app"]

_MAX_BYTES = 256 * 1024 * 1024
_PATTERN = bytes(range(256)) * 256  # 64 KiB: /bytes answers a recognisable pattern
_NO_BODY_STATUSES = frozenset({204, 304})


def describe(request: web.Request, body: bytes) -> dict[str, Any]:
    query: dict[str, list[str]] = {}
    for key, value in request.query.items():
        query.setdefault(key, []).append(value)
    headers: dict[str, str] = {}
    names: dict[str, str] = {}  # lower-cased -> first spelling seen
    for name, value in request.headers.items():
        first = names.setdefault(name.lower(), name)
        headers[first] = f"{headers[first]}, {value}" if first in headers else value
    return {
        "method": request.method,
        "path": request.path,
        "path_qs": request.raw_path,
        "query": query,
        "headers": headers,
        "body": body.decode("utf-8", errors="replace"),
        "body_len": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
    }


async def _echo(request: web.Request) -> web.Response:
    return web.json_response(describe(request, await request.read()))


async def _status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    if not 200 <= code <= 599:
        raise web.HTTPBadRequest(text="status must be 200..599")
    if code in _NO_BODY_STATUSES:
        return web.Response(status=code)
    return web.json_response(describe(request, await request.read()), status=code)


async def _bytes(request: web.Request) -> web.Response:
    n = int(request.match_info["n"])
    if n > _MAX_BYTES:
        raise web.HTTPBadRequest(text=f"at most {_MAX_BYTES} bytes")
    body = (_PATTERN * (n // len(_PATTERN) + 1))[:n]
    return web.Response(body=body, content_type="application/octet-stream")


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(int(request.match_info["ms"]) / 1000)
    return await _echo(request)


def make_app() -> web.Application:
    app = web.Application(client_max_size=_MAX_BYTES)
    app.router.add_get(r"/status/{code:\d+}", _status)
    app.router.add_get(r"/bytes/{n:\d+}", _bytes)
    app.router.add_route("*", r"/slow/{ms:\d+}", _slow)
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app


async def _serve(host: str, port: int) -> None:
    runner = web.AppRunner(make_app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    sock = socket.create_server((host, port), reuse_port=False)
    try:
        await web.SockSite(runner, sock).start()
        print(f"ECHO_PORT={sock.getsockname()[1]}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.echo_upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
