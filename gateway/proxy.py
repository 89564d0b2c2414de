"""Forwarding to the upstream: URL and header rewriting, the pooled client, relaying.

Hop-by-hop headers (RFC 9110 section 7.6.1, plus any named in `Connection`)
never cross the gateway in either direction.  Bodies stream through unless a
hook needs them whole; the client session never decompresses, follows
redirects or keeps cookies, so the upstream's bytes reach the client as sent.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from config.apidef import ProxyDef
from config.gateway import GatewayOptions
from gateway.router import listen_prefix, strip_prefix
from gateway.tyk_object import Headers, RequestState

__all__ = [
    "HOP_BY_HOP",
    "BodyTooLarge",
    "Target",
    "UpstreamError",
    "copy_end_to_end",
    "forwarded_for",
    "join_path",
    "limited",
    "make_session",
    "read_limited",
    "relay",
    "upstream_headers",
]

log = logging.getLogger("coproc.gateway.proxy")

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
    "proxy-authorization", "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
# Host is recomputed for the upstream; Expect was already answered by aiohttp.
_REQUEST_SKIP = HOP_BY_HOP | {"host", "expect"}
# A buffered body gets its own Content-Length from the client library.
_REQUEST_SKIP_BUFFERED = _REQUEST_SKIP | {"content-length"}
# Responses up to this size are read whole and written at once (fewer writes).
_BUFFER_RESPONSE_MAX = 64 * 1024
_UPSTREAM_MAX_HEADER = 64 * 1024


class UpstreamError(Exception):
    """The upstream could not be reached or did not answer in time.

    str() is what the client is told; `detail` (for the log) may name hosts.
    """

    def __init__(self, status: int, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail or message


class BodyTooLarge(Exception):
    """A streamed request body passed `max_body_bytes`."""


def copy_end_to_end(src: Headers, dst: CIMultiDict[str],
                    skip: frozenset[str] = HOP_BY_HOP) -> None:
    """Add `src`'s headers to `dst`, without hop-by-hop ones and those in `skip`."""
    connection = src.get("Connection")
    if connection:
        skip = skip | {token.strip().lower() for token in connection.split(",")}
    for name, value in src.items():
        lowered = name.lower()
        if lowered not in skip and not lowered.startswith("proxy-"):
            dst.add(name, value)


def forwarded_for(previous: Iterable[str], client: str | None) -> str:
    """X-Forwarded-For with the client appended to what earlier proxies wrote."""
    hops = [value for value in previous if value]
    if client:
        hops.append(client)
    return ", ".join(hops)


def join_path(base: str, sub: str) -> str:
    """`base` + `sub` with exactly one slash between them."""
    if not sub:
        return base or "/"
    if not base or base == "/":
        return sub if sub.startswith("/") else "/" + sub
    return base.rstrip("/") + "/" + sub.lstrip("/")


@dataclass(frozen=True, slots=True)
class Target:
    """One API's upstream, parsed once at load."""

    origin: str  # scheme://host[:port]
    base_path: str
    base_query: str
    strip: str | None  # the listen prefix to remove, or None to keep the path
    preserve_host: bool

    @classmethod
    def from_proxy(cls, proxy: ProxyDef) -> Target:
        parts = urlsplit(proxy.target_url)
        return cls(
            origin=f"{parts.scheme}://{parts.netloc}",
            base_path=parts.path,
            base_query=parts.query,
            strip=listen_prefix(proxy.listen_path) if proxy.strip_listen_path else None,
            preserve_host=proxy.preserve_host_header,
        )

    def url(self, path: str, query: str) -> URL:
        if self.strip is not None:
            path = strip_prefix(self.strip, path)
        if self.base_query:
            query = f"{self.base_query}&{query}" if query else self.base_query
        full = self.origin + join_path(self.base_path, path)
        return URL(f"{full}?{query}" if query else full, encoded=True)


def upstream_headers(state: RequestState, target: Target, client: str | None,
                     request_id: str) -> CIMultiDict[str]:
    """The headers the upstream gets for this request."""
    incoming = state.headers
    headers: CIMultiDict[str] = CIMultiDict()
    copy_end_to_end(incoming, headers,
                    _REQUEST_SKIP if state.body is None else _REQUEST_SKIP_BUFFERED)
    headers["X-Request-Id"] = request_id
    headers["X-Forwarded-For"] = forwarded_for(incoming.getall("X-Forwarded-For", ()), client)
    # An outer proxy's Proto/Host describe the client better than ours: keep them.
    headers.setdefault("X-Forwarded-Proto", state.scheme)
    host = incoming.get("Host")
    if host:
        headers.setdefault("X-Forwarded-Host", host)
    if state.host_override:
        headers["Host"] = state.host_override
    elif target.preserve_host and host:
        headers["Host"] = host
    return headers


async def limited(stream: aiohttp.StreamReader, limit: int) -> AsyncIterator[bytes]:
    """Stream a body of unknown length, failing once it passes `limit` bytes."""
    seen = 0
    async for chunk in stream.iter_any():
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge(f"request body exceeds {limit} bytes")
        yield chunk


async def read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole upstream body (`limit` 0: any size); UpstreamError if it cannot be had."""
    length = resp.content_length
    if limit and length is not None and length > limit:
        raise UpstreamError(502, "Upstream response too large")
    try:
        if length is not None or not limit:
            return await resp.read()
        chunks, seen = [], 0
        async for chunk in resp.content.iter_any():
            seen += len(chunk)
            if seen > limit:
                raise UpstreamError(502, "Upstream response too large")
            chunks.append(chunk)
        return b"".join(chunks)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _failed(exc) from None


def make_session(opts: GatewayOptions) -> aiohttp.ClientSession:
    """The pooled keep-alive client every API shares."""
    connector = aiohttp.TCPConnector(limit=opts.upstream_max_connections, limit_per_host=0,
                                     ttl_dns_cache=10, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(
        total=None,
        # `connect` includes waiting for a free pooled connection.
        connect=opts.upstream_timeout_ms / 1000,
        sock_connect=opts.upstream_connect_timeout_ms / 1000,
        sock_read=opts.upstream_timeout_ms / 1000,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        # Send only what the client sent: no invented User-Agent, Accept or Content-Type.
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        trust_env=False,
        max_line_size=_UPSTREAM_MAX_HEADER,
        max_field_size=_UPSTREAM_MAX_HEADER,
    )


async def send(session: aiohttp.ClientSession, state: RequestState, url: URL,
               headers: CIMultiDict[str], data: Any) -> aiohttp.ClientResponse:
    """Start the upstream request; raise UpstreamError (502/504) or BodyTooLarge."""
    try:
        return await session.request(state.method, url, headers=headers, data=data,
                                     allow_redirects=False)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        if isinstance(exc.__cause__, BodyTooLarge):
            raise exc.__cause__ from None
        raise _failed(exc) from None


def _failed(exc: BaseException) -> UpstreamError:
    if isinstance(exc, TimeoutError):
        return UpstreamError(504, "Upstream timed out", _describe(exc))
    return UpstreamError(502, "Upstream request failed", _describe(exc))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def relay(request: web.Request, resp: aiohttp.ClientResponse,
                extra_headers: Mapping[str, str]) -> web.StreamResponse:
    """Write the upstream response to the client, streaming large or unsized bodies."""
    length = resp.content_length
    if length is not None and length <= _BUFFER_RESPONSE_MAX:
        body = await read_limited(resp, 0)
        out = web.Response(status=resp.status, reason=resp.reason, body=body)
        copy_end_to_end(resp.headers, out.headers)
        out.headers.update(extra_headers)
        return out
    stream = web.StreamResponse(status=resp.status, reason=resp.reason)
    copy_end_to_end(resp.headers, stream.headers)
    stream.headers.update(extra_headers)
    await stream.prepare(request)
    try:
        async for chunk in resp.content.iter_any():
            await stream.write(chunk)
    except ConnectionError:
        return stream  # the client left; aiohttp closes its side
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("upstream response broke off after headers: %s", _describe(exc))
        # Close without the final chunk so the client sees a truncated response,
        # not a complete-looking short one.
        if request.transport is not None:
            request.transport.close()
        return stream
    await stream.write_eof()
    return stream
