"""Records as Tyk's gateway writes them to Redis, so an unmodified Tyk Pump reads them.

Tyk's gateway encodes `analytics.AnalyticsRecord` with gopkg.in/vmihailenco/
msgpack.v2 (Tyk Pump decodes with the same library).  That library writes a
struct as a map from the Go field name (the struct has no msgpack tags, so not
the JSON names) to the value, in declaration order, exported fields only; ints
in their smallest form; a nil slice or map as nil; and a time.Time not as the
msgpack timestamp extension but as a two-element array [unix seconds,
nanoseconds] (v2's own time encoder).  Python's msgpack packer makes the same
choices for the same values, so the bytes match what a Go gateway writes.

The list is `analytics-` (the analytics store's key prefix) +
`tyk-system-analytics`, or one of ten shards `…_0`..`…_9` picked at random per
batch when `enable_multiple_analytics_keys` is on.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgpack

__all__ = ["ANALYTICS_LIST", "FIELDS", "decode", "encode", "list_key", "to_go"]

ANALYTICS_LIST = "analytics-tyk-system-analytics"

# (Go field name, JSON name, kind) in Tyk Pump's declaration order.  Kinds:
# "s" string, "i" int, "b" bool, "t" time.Time, "l" []string, or a nested table.
_GEO = (("Country", "country", (("ISOCode", "iso_code", "s"),)),
        ("City", "city", (("GeoNameID", "geoname_id", "i"), ("Names", "names", "m"))),
        ("Location", "location", (("Latitude", "latitude", "f"),
                                  ("Longitude", "longitude", "f"),
                                  ("TimeZone", "time_zone", "s"))))
_NETWORK = (("OpenConnections", "open_connections", "i"),
            ("ClosedConnection", "closed_connections", "i"),
            ("BytesIn", "bytes_in", "i"), ("BytesOut", "bytes_out", "i"))
_LATENCY = (("Total", "total", "i"), ("Upstream", "upstream", "i"),
            ("Gateway", "gateway", "i"))
_GRAPHQL = (("Variables", "Variables", "s"), ("RootFields", "RootFields", "l"),
            ("Types", "Types", "m"), ("Errors", "Errors", "n"),
            ("OperationType", "OperationType", "i"), ("HasErrors", "HasErrors", "b"),
            ("IsGraphQL", "IsGraphQL", "b"))
_MCP = (("IsMCP", "is_mcp", "b"), ("JSONRPCMethod", "jsonrpc_method", "s"),
        ("PrimitiveType", "primitive_type", "s"), ("PrimitiveName", "primitive_name", "s"))

FIELDS: tuple[tuple[str, str, Any], ...] = (
    ("Method", "method", "s"), ("Host", "host", "s"), ("Path", "path", "s"),
    ("RawPath", "raw_path", "s"), ("ContentLength", "content_length", "i"),
    ("UserAgent", "user_agent", "s"), ("Day", "day", "i"), ("Month", "month", "i"),
    ("Year", "year", "i"), ("Hour", "hour", "i"), ("ResponseCode", "response_code", "i"),
    ("APIKey", "api_key", "s"), ("TimeStamp", "timestamp", "t"),
    ("APIVersion", "api_version", "s"), ("APIName", "api_name", "s"),
    ("APIID", "api_id", "s"), ("OrgID", "org_id", "s"), ("OauthID", "oauth_id", "s"),
    ("RequestTime", "request_time", "i"), ("RawRequest", "raw_request", "s"),
    ("RawResponse", "raw_response", "s"), ("IPAddress", "ip_address", "s"),
    ("Geo", "geo", _GEO), ("Network", "network", _NETWORK), ("Latency", "latency", _LATENCY),
    ("Tags", "tags", "l"), ("Alias", "alias", "s"), ("TrackPath", "track_path", "b"),
    ("ExpireAt", "expireAt", "t"), ("ApiSchema", "api_schema", "s"),
    ("OriginalPath", "original_path", "s"), ("ListenPath", "listen_path", "s"),
    ("GraphQLStats", "graphql_stats", _GRAPHQL), ("MCPStats", "mcp_stats", _MCP),
    # json:"-" but no msgpack tag: the library writes it.
    ("CollectionName", "", "s"),
)

# Go's zero time.Time as v2 writes it: seconds since 1970 of 0001-01-01 UTC.
_ZERO_TIME = [-62135596800, 0]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_go(record: dict[str, Any]) -> dict[str, Any]:
    """The record under Go field names, in Go's order, each value of Go's kind."""
    return _TO_GO(record)


Converter = Callable[[Any], Any]


def _compile(table: tuple[tuple[str, str, Any], ...]
             ) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """One function per struct: the table is walked once, not per record."""
    steps: list[tuple[str, str, Converter]] = []
    for go_name, json_name, kind in table:
        if isinstance(kind, tuple):
            steps.append((go_name, json_name, _nested(_compile(kind))))
        else:
            steps.append((go_name, json_name, _CONVERT[kind]))

    def convert(record: dict[str, Any]) -> dict[str, Any]:
        get = record.get
        return {go: conv(get(js) if js else None) for go, js, conv in steps}

    return convert


def _nested(inner: Callable[[dict[str, Any]], dict[str, Any]]) -> Converter:
    def convert(value: Any) -> dict[str, Any]:
        return inner(value if isinstance(value, dict) else {})

    return convert


def _str(v: Any) -> str:
    return v if type(v) is str else ("" if v is None else str(v))


def _int(v: Any) -> int:
    return v if type(v) is int else (0 if v is None else int(v))


def _time(v: Any) -> list[int]:
    return _ZERO_TIME if v is None else _go_time(v)


_CONVERT: dict[str, Converter] = {
    "s": _str, "i": _int,
    "f": lambda v: 0.0 if v is None else float(v),
    "b": lambda v: bool(v),
    "l": lambda v: None if v is None else [str(x) for x in v],
    "m": lambda v: v, "n": lambda v: v,
    "t": _time,
}


def _go_time(value: Any) -> list[int]:
    moment = (datetime.fromisoformat(value) if isinstance(value, str)
              else datetime.fromtimestamp(float(value), UTC))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH  # exact: no float rounding of the fraction
    return [delta.days * 86400 + delta.seconds, delta.microseconds * 1000]


_TO_GO = _compile(FIELDS)


def encode(record: dict[str, Any]) -> bytes:
    """The bytes Tyk's gateway would RPUSH for this record."""
    return msgpack.packb(to_go(record), use_bin_type=True)  # type: ignore[no-any-return]


def decode(data: bytes) -> dict[str, Any]:
    """A stored record as a Go-name dict (for tests and tools)."""
    got = msgpack.unpackb(data, raw=False, strict_map_key=False)
    if not isinstance(got, dict):
        raise ValueError("an analytics record is a msgpack map")
    return got


def list_key(sharded: bool, rng: random.Random | None = None) -> str:
    """The list a batch goes to: the one list, or a random one of ten shards."""
    if not sharded:
        return ANALYTICS_LIST
    return f"{ANALYTICS_LIST}_{(rng or random).randrange(10)}"
