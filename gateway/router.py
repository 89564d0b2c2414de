"""API matching: which API definition serves a request, by listen path and domain.

A listen path matches on whole path segments: "/foo" and "/foo/" both match
"/foo", "/foo/" and "/foo/bar", never "/foobar".  The longest listen path
wins.  APIs that name a `domain` are looked up first for a request whose Host
(without port) is that domain; domainless APIs serve every host.

Matching costs one dict lookup per path segment, whatever the number of APIs,
so it stays flat as API definitions are added.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Generic, TypeVar
from urllib.parse import unquote

__all__ = ["Router", "has_dot_segment", "host_without_port", "listen_prefix", "strip_prefix"]

log = logging.getLogger("coproc.gateway.router")

T = TypeVar("T")


def listen_prefix(listen_path: str) -> str:
    """The segment prefix a listen path matches: no trailing slash, "" for "/"."""
    return listen_path.rstrip("/")


def strip_prefix(prefix: str, path: str) -> str:
    """`path` without the listen prefix when it matches on a segment boundary."""
    if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
        return path[len(prefix):]
    return path


def host_without_port(host: str) -> str:
    """Lower-cased host name of a Host header value ("[::1]:80" -> "[::1]")."""
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1].lower() if end > 0 else host.lower()
    name, sep, port = host.rpartition(":")
    return name.lower() if sep and port.isdigit() else host.lower()


def has_dot_segment(path: str) -> bool:
    """True if `path` has a "." or ".." segment, plain or percent-encoded.

    The upstream would resolve them and could leave the API's listen path or
    target base path; clients normalise them away, so none should arrive.  A
    segment is what lies between "/" -- or "\\", or their encodings %2F and
    %5C -- after one percent-decoding, so "..%2f", "%2E%2E%2F" and "..\\" all
    count; so does "..;x" (a path parameter, which some servers drop).
    """
    if "/." not in path and "%2" not in path and "\\." not in path and "%5" not in path:
        return False  # the common case ("/x.json" too), decided without decoding
    decoded = unquote(path).replace("\\", "/")
    return any(segment.split(";", 1)[0] in (".", "..") for segment in decoded.split("/"))


def _lookup(table: dict[str, T], path: str) -> T | None:
    hit = table.get(path)
    if hit is not None:
        return hit
    end = len(path)
    # Try each prefix that ends at a '/', longest first.
    while (end := path.rfind("/", 0, end)) >= 0:
        hit = table.get(path[:end])
        if hit is not None:
            return hit
    return None


class Router(Generic[T]):
    """Maps (domain, listen path) to a value (the gateway stores per-API plans)."""

    __slots__ = ("_any_host", "_by_domain")

    def __init__(self, routes: Iterable[tuple[str, str, T]]) -> None:
        self._any_host: dict[str, T] = {}
        self._by_domain: dict[str, dict[str, T]] = {}
        for domain, listen_path, value in routes:
            table = (self._by_domain.setdefault(host_without_port(domain), {})
                     if domain else self._any_host)
            prefix = listen_prefix(listen_path)
            if prefix in table:
                # "/foo" and "/foo/" are the same route here; the first definition keeps it.
                log.warning("listen path %r on domain %r is already served; ignoring the "
                            "later API definition", listen_path, domain or "*")
                continue
            table[prefix] = value

    @property
    def uses_domains(self) -> bool:
        """False when no API names a domain: callers may then skip parsing Host."""
        return bool(self._by_domain)

    def values(self) -> list[T]:
        """Every routed value (for reports; not on the request path)."""
        out = list(self._any_host.values())
        for table in self._by_domain.values():
            out.extend(table.values())
        return out

    def match(self, host: str, path: str) -> T | None:
        """The value whose listen path is the longest segment prefix of `path`."""
        if self._by_domain:
            table = self._by_domain.get(host_without_port(host))
            if table is not None:
                hit = _lookup(table, path)
                if hit is not None:
                    return hit
        return _lookup(self._any_host, path)
