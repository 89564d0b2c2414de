"""Downloading one bundle: Tyk's URL rule, timeout and retries, plus conditional GET.

URL = `bundle_base_url` with the bundle name joined to its path (http, https
or file).  Each attempt has a timeout (5 s, as Tyk); any answer other than 200
(or 304 to a conditional request) is an error; up to `attempts` tries with
exponential backoff (x2, at most `retry_max_ms` between two).  Credentials may
sit in the URL (`https://user:secret@host/`, sent as HTTP Basic auth) and/or in
configured headers; neither ever appears in a message: `mask_url` hides them.

aiohttp is imported on the first download only: a supervisor without the
bundle downloader stays as small as it was (tests/unit/test_imports.py).
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

from config.gateway import BundleOptions

if TYPE_CHECKING:
    import aiohttp

__all__ = ["FetchError", "Fetched", "Fetcher", "Validators", "bundle_url", "mask_url"]

log = logging.getLogger("supervisor.bundles")


class FetchError(Exception):
    """Every attempt failed; the message names the bundle, masked URL and last reason."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # without the URL: fit for /hello


@dataclass(frozen=True, slots=True)
class Validators:
    """What the last good download answered, for a conditional GET."""

    etag: str = ""
    last_modified: str = ""


@dataclass(frozen=True, slots=True)
class Fetched:
    data: bytes | None  # None: 304, the cached copy is current
    validators: Validators


def bundle_url(base_url: str, name: str) -> str:
    """The base URL's path joined with the bundle name (Tyk's rule)."""
    parts = urlsplit(base_url)
    path = posixpath.normpath(posixpath.join(parts.path or "/", name))
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def mask_url(url: str) -> str:
    """The URL without credentials: user info and query values become ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "&".join(f"{item.split('=', 1)[0]}=***" if "=" in item else item
                     for item in parts.query.split("&")) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


class _Attempt(Exception):
    """One attempt failed (retried)."""


class Fetcher:
    """Downloads bundles from `bundle_base_url` with one shared client session."""

    def __init__(self, options: BundleOptions) -> None:
        self._options = options
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, name: str) -> str:
        return bundle_url(self._options.base_url, name)

    async def fetch(self, name: str, cached: Validators | None = None) -> Fetched:
        """The bundle's bytes (or 304), after up to `attempts` tries; FetchError otherwise."""
        url, o = self.url(name), self._options
        delay = o.retry_initial_ms / 1000
        reason = ""
        for attempt in range(1, o.attempts + 1):
            try:
                return await self._once(url, cached)
            except _Attempt as exc:
                reason = str(exc)
            log.info("bundle %r: attempt %d/%d from %s failed: %s", name, attempt,
                     o.attempts, mask_url(url), reason)
            if attempt < o.attempts:
                await asyncio.sleep(delay)
                delay = min(delay * 2, o.retry_max_ms / 1000)
        reason = f"download failed: {reason} (after {o.attempts} attempts)"
        raise FetchError(f"bundle {name!r} from {mask_url(url)}: {reason}", reason)

    async def _once(self, url: str, cached: Validators | None) -> Fetched:
        if url.startswith("file://"):
            return self._read_file(url)
        import aiohttp  # lazily: see the module docstring
        headers = dict(self._options.headers)
        if cached is not None and cached.etag:
            headers["If-None-Match"] = cached.etag
        if cached is not None and cached.last_modified:
            headers["If-Modified-Since"] = cached.last_modified
        timeout = aiohttp.ClientTimeout(total=self._options.timeout_ms / 1000)
        try:
            async with self._client().get(url, headers=headers, timeout=timeout,
                                          allow_redirects=True) as resp:
                if resp.status == 304 and cached is not None:
                    return Fetched(None, cached)
                if resp.status != 200:
                    raise _Attempt(f"HTTP status {resp.status}")
                data = await self._read_body(resp)
                return Fetched(data, Validators(resp.headers.get("ETag", ""),
                                                resp.headers.get("Last-Modified", "")))
        except TimeoutError:
            raise _Attempt(f"timeout after {self._options.timeout_ms} ms") from None
        except aiohttp.ClientError as exc:
            # aiohttp's messages may quote the URL: name the class, never the text.
            raise _Attempt(f"connection failed ({type(exc).__name__})") from None

    async def _read_body(self, resp: aiohttp.ClientResponse) -> bytes:
        limit = self._options.max_download_bytes
        if (resp.content_length or 0) > limit:
            raise _Attempt(f"{resp.content_length} bytes is over max_download_bytes {limit}")
        body = bytearray()
        async for chunk in resp.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > limit:
                raise _Attempt(f"over max_download_bytes {limit}")
        return bytes(body)

    def _read_file(self, url: str) -> Fetched:
        path = Path(unquote(urlsplit(url).path))
        try:
            if path.stat().st_size > self._options.max_download_bytes:
                raise _Attempt(f"over max_download_bytes {self._options.max_download_bytes}")
            return Fetched(path.read_bytes(), Validators())
        except OSError as exc:
            raise _Attempt(f"cannot read the file ({exc.strerror})") from None

    def _client(self) -> aiohttp.ClientSession:
        import aiohttp  # lazily: see the module docstring
        if self._session is None:
            ssl_context: ssl.SSLContext | bool = True
            if self._options.insecure_skip_verify:
                ssl_context = False  # bundle_insecure_skip_verify, warned about at start
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ssl_context, limit=16))
        return self._session
