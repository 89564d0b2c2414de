"""Tyk's analytics record, built from what the chain saw, after the response was sent.

The record is a plain dict under Tyk's JSON names (Tyk Pump's
`analytics.AnalyticsRecord`): the file and stdout sinks write it as it is,
analytics plugins will get it as it is, and `gateway.analytics.tyk_format`
turns it into the Go field names for Redis.  `build` runs on the request's
task but only after the response went out; it copies a few strings and does
no I/O.  `finish` is what Tyk's Redis writer does to every record before
storing it (hash the key, add the key-/org-/api- tags, fix the paths); it runs
off the request path, after any analytics plugin, as in Tyk.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from gateway.router import strip_prefix
from gateway.storage.keyhash import hash_key

__all__ = ["Exchange", "Record", "RecordSpec", "build", "finish", "rfc3339", "wire_request",
           "wire_response"]

Record = dict[str, Any]

# Tyk: an expire_analytics_after of 0 keeps the record for 100 years.
_FOREVER_S = 100 * 365 * 24 * 3600
_NS_PER_MS = 1_000_000


@dataclass(frozen=True, slots=True)
class RecordSpec:
    """The per-API part of every record of one API (built once per API definition)."""

    api_id: str
    api_name: str
    org_id: str
    listen_path: str
    target_host: str
    do_not_track: bool = False
    detailed: bool = False  # the API's enable_detailed_recording
    tags: tuple[str, ...] = ()
    tag_headers: tuple[str, ...] = ()
    expire_after_s: int = 0
    strip: str | None = None  # the listen prefix taken off the path (strip_listen_path)

    @classmethod
    def from_api(cls, api: Any, target_host: str, strip: str | None = None) -> RecordSpec:
        """From a `config.apidef.APIDefinition`: Tyk's fields read from its raw JSON."""
        raw: Mapping[str, Any] = api.raw
        return cls(
            api_id=api.api_id, api_name=api.name, org_id=api.org_id,
            listen_path=api.proxy.listen_path, target_host=target_host,
            do_not_track=bool(raw.get("do_not_track")),
            detailed=bool(raw.get("enable_detailed_recording")),
            tags=tuple(t for t in raw.get("tags") or () if isinstance(t, str)),
            tag_headers=tuple(h for h in raw.get("tag_headers") or () if isinstance(h, str)),
            expire_after_s=_int(raw.get("expire_analytics_after")),
            strip=strip,
        )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@dataclass(slots=True)
class Exchange:
    """One request and its answer as the chain saw them (filled in as it goes)."""

    started_ns: int
    method: str = ""
    path: str = ""  # raw: as the hooks left it, before the listen path is stripped
    original_path: str = ""  # as received, percent-decoded (Go's r.URL.Path)
    user_agent: str = ""
    content_length: int = 0
    ip: str = ""
    status: int = 0
    api_key: str = ""  # the credential, unhashed (finish() hashes it)
    session: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    upstream_ns: int = 0
    # Coproc's: time spent in hook calls, per phase (pre, auth_check, ..., response).
    phase_ns: dict[str, int] = field(default_factory=dict)
    raw_request: bytes = b""
    raw_response: bytes = b""
    request_id: str = ""


def build(spec: RecordSpec, ex: Exchange, ended_ns: int, *, phases: bool = True,
          now: float | None = None) -> Record:
    """Tyk's record (JSON names) for one exchange; plus Coproc's per-phase latencies."""
    wall = time.time() if now is None else now
    # Tyk records the path as proxied: listen path stripped (when the API strips it),
    # percent-decoded like Go's URL.Path; original_path is the path as received.
    path = unquote(strip_prefix(spec.strip, ex.path) if spec.strip is not None else ex.path)
    t = datetime.fromtimestamp(wall, UTC)
    total = (ended_ns - ex.started_ns) // _NS_PER_MS
    upstream = ex.upstream_ns // _NS_PER_MS
    expire_s = spec.expire_after_s or _FOREVER_S
    record: Record = {
        "method": ex.method, "host": spec.target_host, "path": path,
        "raw_path": path, "content_length": ex.content_length,
        "user_agent": ex.user_agent, "day": t.day, "month": t.month, "year": t.year,
        "hour": t.hour, "response_code": ex.status, "api_key": ex.api_key,
        "timestamp": rfc3339(t), "api_version": "Non Versioned", "api_name": spec.api_name,
        "api_id": spec.api_id, "org_id": spec.org_id,
        "oauth_id": str(ex.session.get("oauth_client_id") or ""),
        "request_time": total,
        "raw_request": _b64(ex.raw_request), "raw_response": _b64(ex.raw_response),
        "ip_address": ex.ip, "geo": _empty_geo(),
        "network": {"open_connections": 0, "closed_connections": 0, "bytes_in": 0,
                    "bytes_out": 0},
        "latency": {"total": total, "upstream": upstream, "gateway": total - upstream},
        "tags": _tags(spec, ex), "alias": str(ex.session.get("alias") or ""),
        "track_path": False,
        "expireAt": rfc3339(datetime.fromtimestamp(wall + expire_s, UTC)), "api_schema": "",
        "original_path": ex.original_path, "listen_path": spec.listen_path,
        "graphql_stats": {"Variables": "", "RootFields": None, "Types": None, "Errors": None,
                          "OperationType": 0, "HasErrors": False, "IsGraphQL": False},
        "mcp_stats": {"is_mcp": False, "jsonrpc_method": "", "primitive_type": "",
                      "primitive_name": ""},
    }
    if phases:
        record["hook_latency"] = {p: ns / _NS_PER_MS for p, ns in ex.phase_ns.items()}
    if ex.request_id:
        record["request_id"] = ex.request_id
    return record


def rfc3339(t: datetime) -> str:
    """Go's JSON form of a UTC time.Time (RFC 3339, "Z")."""
    return t.isoformat().replace("+00:00", "Z")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii") if data else ""


def _empty_geo() -> dict[str, Any]:
    return {"country": {"iso_code": ""}, "city": {"geoname_id": 0, "names": None},
            "location": {"latitude": 0.0, "longitude": 0.0, "time_zone": ""}}


def _tags(spec: RecordSpec, ex: Exchange) -> list[str]:
    tags = [t for t in ex.session.get("tags") or () if isinstance(t, str)]
    for name in spec.tag_headers:  # Tyk: "<header lowercased>-<value>"
        value = ex.headers.get(name)
        if value:
            tags.append(f"{name.lower()}-{value}")
    tags.extend(spec.tags)
    return tags


def finish(record: Record, hash_keys: bool) -> Record:
    """What Tyk's analytics writer does to each record before storing it."""
    key = hash_key(str(record.get("api_key") or ""), hash_keys)
    record["api_key"] = key
    tags = record.get("tags")
    if not isinstance(tags, list):
        tags = record["tags"] = []
    if key:
        tags.append("key-" + key)
    if record.get("org_id"):
        tags.append(f"org-{record['org_id']}")
    tags.append(f"api-{record.get('api_id', '')}")
    for name in ("path", "raw_path"):
        value = str(record.get(name) or "")
        if not value.startswith("/"):
            record[name] = "/" + value
    original = str(record.get("original_path") or "")
    if original and not original.startswith("/"):
        record["original_path"] = "/" + original
    return record


def wire_request(method: str, target: str, headers: Iterable[tuple[str, str]],
                 body: bytes | None) -> bytes:
    """The request in HTTP/1.1 wire format (what Tyk base64-encodes as raw_request)."""
    lines = [f"{method} {target} HTTP/1.1"]
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + (body or b"")


def wire_response(status: int, reason: str, headers: Iterable[tuple[str, str]],
                  body: bytes | None) -> bytes:
    """The response in HTTP/1.1 wire format (raw_response)."""
    lines = [f"HTTP/1.1 {status} {reason}".rstrip()]
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + (body or b"")
