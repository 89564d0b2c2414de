"""The processes the gateway is compared with, and the upstream everything proxies to.

`python -m bench.servers upstream --port 0`: a minimal keep-alive HTTP/1.1
responder on a raw asyncio protocol (drains any Content-Length body, answers
200 "ok"), so the upstream costs as little CPU as possible on a 2-core box.

`python -m bench.servers proxy --target URL [--middleware]`: a bare aiohttp
reverse proxy doing the gateway's forwarding (method, path, headers, body,
response relayed); with `--middleware` an aiohttp middleware first sets one
request header: the in-process ceiling for what a plugin hook does.

`python -m bench.servers grpc --port 0`: a Tyk gRPC plugin server whose
`Dispatch` returns the object unchanged (the `grpc` driver's no-op hook).

Each prints `PORT=<n>` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from ipc import eventloop

_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                  "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length"})
_OK = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
       b"Connection: keep-alive\r\n\r\nok")
_MAX_HEAD = 64 * 1024


class _Upstream(asyncio.Protocol):
    """Just enough HTTP/1.1: request heads, Content-Length bodies, keep-alive."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.skip = 0  # body bytes still to drain
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.transport is not None:
            if self.skip:
                used = min(self.skip, len(self.buf))
                del self.buf[:used]
                self.skip -= used
                if self.skip:
                    return
                self.transport.write(_OK)
                continue
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > _MAX_HEAD:
                    self.transport.close()
                return
            head = bytes(self.buf[:end]).lower()
            del self.buf[:end + 4]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
                elif line.startswith(b"transfer-encoding:"):
                    self.transport.close()  # chunked is not needed by the bench
                    return
            if length:
                self.skip = length
            else:
                self.transport.write(_OK)


async def _upstream(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Upstream, host, port, backlog=1024)
    print(f"PORT={server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def _proxy_app(target: str, middleware: bool) -> web.Application:
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        if request.get("greeting"):
            headers["X-Coproc-Greeting"] = request["greeting"]
        data = request.content if request.body_exists else None
        async with request.app[session_key].request(
                request.method, target + request.rel_url.raw_path_qs, headers=headers,
                data=data, allow_redirects=False) as upstream:
            out = web.StreamResponse(status=upstream.status)
            for name, value in upstream.headers.items():
                if name.lower() not in _HOP:
                    out.headers.add(name, value)
            try:
                await out.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await out.write(chunk)
                await out.write_eof()
            except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                pass  # the load generator closed its connections at the end of a run
            return out

    @web.middleware
    async def greet(request: web.Request,
                    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        request["greeting"] = "hello from a middleware"
        return await handler(request)

    async def session_ctx(app: web.Application) -> Any:
        connector = aiohttp.TCPConnector(limit=512)
        app[session_key] = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        yield
        await app[session_key].close()

    app = web.Application(middlewares=[greet] if middleware else [],
                          client_max_size=64 * 1024 * 1024)
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def _proxy(host: str, port: int, target: str, middleware: bool) -> None:
    runner = web.AppRunner(_proxy_app(target.rstrip("/"), middleware), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    server = site._server
    assert server is not None and server.sockets  # type: ignore[attr-defined]
    print(f"PORT={server.sockets[0].getsockname()[1]}", flush=True)  # type: ignore[attr-defined]
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


async def _grpc(host: str, port: int) -> None:
    import grpc

    from gateway.grpc._pb import coprocess_pb2 as pb
    from gateway.grpc._pb import coprocess_pb2_grpc as pb_grpc

    class Noop(pb_grpc.DispatcherServicer):
        async def Dispatch(self, request: pb.Object, context: Any) -> pb.Object:
            return request

    server = grpc.aio.server()
    pb_grpc.add_DispatcherServicer_to_server(Noop(), server)  # type: ignore[no-untyped-call]
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"PORT={bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop(None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.servers")
    parser.add_argument("role", choices=("upstream", "proxy", "grpc"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--target", default="")
    parser.add_argument("--middleware", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.role == "upstream":
            eventloop.run(_upstream(args.host, args.port))
        elif args.role == "grpc":
            eventloop.run(_grpc(args.host, args.port))
        else:
            eventloop.run(_proxy(args.host, args.port, args.target, args.middleware))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
