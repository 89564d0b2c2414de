"""Analytics and metrics settings: Tyk's `enable_analytics`/`analytics_config`, plus ours.

Tyk's names are read where Tyk has them (top level of the config file);
Coproc's own choices (which sink, its file, the queue's batching, the
Prometheus listener) live under `coproc.analytics` and `coproc.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from config.reader import Reader

__all__ = [
    "SINKS",
    "AnalyticsConfig",
    "MetricsOptions",
    "parse_analytics",
    "parse_metrics",
]

SINKS = ("file", "stdout", "redis")


@dataclass(frozen=True, slots=True)
class AnalyticsConfig:
    enabled: bool = False  # Tyk: enable_analytics
    enable_detailed_recording: bool = False
    ignored_ips: frozenset[str] = frozenset()
    storage_expiration_time: int = 60  # seconds the Redis list lives unread (Tyk: 60)
    enable_multiple_analytics_keys: bool = False
    pool_size: int = 50
    records_buffer_size: int = 1000  # the queue's bound (Tyk: the records channel's size)
    hash_keys: bool = True  # Tyk: hash_keys (top level); the record's api_key is hashed
    # Coproc's: where records go and how they are batched.
    sink: str = "file"
    file_path: Path = Path("analytics.jsonl")
    file_max_bytes: int = 64 * 1024 * 1024
    file_backups: int = 5
    flush_interval_ms: int = 1000
    # Coproc's per-phase hook latencies in the record (not read by Tyk Pump).
    phase_latencies: bool = True

    @property
    def batch_size(self) -> int:
        """Tyk's per-worker buffer: records_buffer_size / pool_size (at least 1)."""
        return max(1, self.records_buffer_size // self.pool_size)


@dataclass(frozen=True, slots=True)
class MetricsOptions:
    enabled: bool = True
    listen_address: str = "127.0.0.1"
    listen_port: int = 9464  # 0: on the gateway's own port, behind the admin secret
    path: str = "/metrics"


def parse_analytics(top: Reader, coproc: Reader, base: Path, run_dir: Path) -> AnalyticsConfig:
    """Tyk's switches from the top level, Coproc's sink options from `coproc.analytics`."""
    d = AnalyticsConfig()
    tyk = top.child("analytics_config")
    serializer = tyk.get("serializer_type", str, "msgpack") or "msgpack"
    if serializer != "msgpack":
        raise tyk.error("serializer_type", f"{serializer!r} is not supported by Coproc",
                        "remove it or set \"msgpack\" (Tyk's default, read by every Tyk Pump)")
    ours = coproc.child("analytics")
    ips = tyk.get("ignored_ips", list, [])
    if not all(isinstance(ip, str) for ip in ips):
        raise tyk.error("ignored_ips", "expected an array of IP address strings",
                        'write it like ["10.0.0.1", "::1"]')
    file_path = ours.get("file_path", str, "")
    return AnalyticsConfig(
        enabled=top.get("enable_analytics", bool, d.enabled),
        enable_detailed_recording=tyk.get("enable_detailed_recording", bool,
                                          d.enable_detailed_recording),
        ignored_ips=frozenset(ips),
        storage_expiration_time=tyk.number("storage_expiration_time", int,
                                           d.storage_expiration_time, 0),
        enable_multiple_analytics_keys=tyk.get("enable_multiple_analytics_keys", bool,
                                               d.enable_multiple_analytics_keys),
        pool_size=tyk.number("pool_size", int, d.pool_size, 1, 1024),
        records_buffer_size=tyk.number("records_buffer_size", int, d.records_buffer_size, 1),
        hash_keys=top.get("hash_keys", bool, d.hash_keys),
        sink=ours.choice("sink", SINKS, d.sink),
        file_path=(base / file_path).resolve() if file_path else run_dir / "analytics.jsonl",
        file_max_bytes=ours.number("file_max_bytes", int, d.file_max_bytes, 1024),
        file_backups=ours.number("file_backups", int, d.file_backups, 0, 1000),
        flush_interval_ms=ours.number("flush_interval_ms", int, d.flush_interval_ms, 1),
        phase_latencies=ours.get("phase_latencies", bool, d.phase_latencies),
    )


def parse_metrics(r: Reader) -> MetricsOptions:
    d = MetricsOptions()
    path = r.get("path", str, d.path)
    if not path.startswith("/"):
        raise r.error("path", f"must start with '/', got {path!r}", f'use "/{path}"')
    return MetricsOptions(
        enabled=r.get("enabled", bool, d.enabled),
        listen_address=r.get("listen_address", str, d.listen_address),
        listen_port=r.number("listen_port", int, d.listen_port, 0, 65535),
        path=path,
    )

