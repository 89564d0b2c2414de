"""The gateway config's `storage` block: where Redis is and how to reach it.

Tyk's `tyk.conf` names (`addrs`, `master_name`, `sentinel_password`,
`enable_cluster`, `use_ssl`, `ssl_insecure_skip_verify`, `ca_file`,
`cert_file`, `key_file`, `tls_min_version`, `timeout`,
`optimisation_max_active`, the deprecated `hosts` map) with Tyk's meaning,
and Coproc's older names (`host`/`port`, `timeout_ms`, `max_connections`),
which still work; where both are set, Coproc's finer-grained name wins.

The topology follows Tyk's: `master_name` set means Sentinel (the addresses
are the sentinels'); `enable_cluster` means Redis Cluster (the addresses are
seed nodes); otherwise one server (the first address).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from config.reader import Reader

__all__ = ["TLS_VERSIONS", "StorageConfig", "parse_storage"]

#: Tyk's `tls_min_version` values.
TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")


@dataclass(frozen=True, slots=True)
class StorageConfig:
    type: str = "memory"
    host: str = "127.0.0.1"
    port: int = 6379
    database: int = 0
    username: str = ""
    password: str = ""
    timeout_ms: int = 1000
    max_connections: int = 64
    #: "host:port" of the server(s), sentinels or cluster seed nodes (empty: host/port).
    addrs: tuple[str, ...] = ()
    master_name: str = ""
    sentinel_password: str = ""
    enable_cluster: bool = False
    use_ssl: bool = False
    ssl_insecure_skip_verify: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_min_version: str = ""

    @property
    def topology(self) -> str:
        """`sentinel`, `cluster` or `single`."""
        if self.master_name:
            return "sentinel"
        return "cluster" if self.enable_cluster else "single"

    @property
    def nodes(self) -> tuple[tuple[str, int], ...]:
        """(host, port) of each address to connect to first."""
        if not self.addrs:
            return ((self.host, self.port),)
        return tuple(_split_addr(a) for a in self.addrs)


def _split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def _check_addr(r: Reader, field: str, addr: object) -> str:
    fix = "write each address as HOST:PORT, e.g. \"10.0.0.5:6379\""
    if not isinstance(addr, str):
        raise r.error(field, f"expected a \"host:port\" string, got {addr!r}", fix)
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise r.error(field, f"{addr!r} is not HOST:PORT", fix)
    return addr


def _addrs(r: Reader) -> tuple[str, ...]:
    listed = r.get("addrs", list, [])
    if listed:
        return tuple(_check_addr(r, f"addrs[{i}]", a) for i, a in enumerate(listed))
    # Tyk's deprecated form: {"host": "port", ...}.
    hosts = r.get("hosts", dict, {})
    return tuple(_check_addr(r, f"hosts.{h}", f"{h}:{p}") for h, p in hosts.items())


def _file(r: Reader, key: str, base: Path) -> Path | None:
    value = r.get(key, str, "")
    if not value:
        return None
    path = (base / os.path.expanduser(value)).resolve()
    if not path.is_file():
        raise r.error(key, f"{path} is not a readable file",
                      f"point {key} at an existing PEM file or remove the field")
    return path


def _millis(r: Reader, d: StorageConfig) -> int:
    if r.has("timeout_ms"):
        return r.number("timeout_ms", int, d.timeout_ms, 1)
    if r.has("timeout"):  # Tyk's name, in seconds (0: Tyk's default)
        seconds = r.number("timeout", int, 0, 0)
        return seconds * 1000 if seconds else d.timeout_ms
    return d.timeout_ms


def _pool(r: Reader, d: StorageConfig) -> int:
    if r.has("max_connections"):
        return r.number("max_connections", int, d.max_connections, 1)
    active = r.number("optimisation_max_active", int, 0, 0)  # Tyk's name (0: default)
    return active or d.max_connections


def parse_storage(r: Reader, base: Path) -> StorageConfig:
    """The `storage` block; relative TLS file paths are resolved against `base`."""
    d = StorageConfig()
    cfg = StorageConfig(
        type=r.choice("type", ("memory", "redis"), d.type),
        host=r.get("host", str, d.host),
        port=r.number("port", int, d.port, 1, 65535),
        database=r.number("database", int, d.database, 0),
        username=r.get("username", str, d.username),
        password=r.get("password", str, d.password),
        timeout_ms=_millis(r, d),
        max_connections=_pool(r, d),
        addrs=_addrs(r),
        master_name=r.get("master_name", str, ""),
        sentinel_password=r.get("sentinel_password", str, ""),
        enable_cluster=r.get("enable_cluster", bool, False),
        use_ssl=r.get("use_ssl", bool, False),
        ssl_insecure_skip_verify=r.get("ssl_insecure_skip_verify", bool, False),
        ca_file=_file(r, "ca_file", base),
        cert_file=_file(r, "cert_file", base),
        key_file=_file(r, "key_file", base),
        tls_min_version=r.choice("tls_min_version", ("", *TLS_VERSIONS), ""),
    )
    _check(r, cfg)
    return cfg


def _check(r: Reader, cfg: StorageConfig) -> None:
    if cfg.master_name and cfg.enable_cluster:
        raise r.error("enable_cluster", "Sentinel (master_name) and Cluster (enable_cluster) "
                      "exclude each other", "set only one of master_name and enable_cluster")
    if cfg.enable_cluster and cfg.database:
        raise r.error("database", "Redis Cluster has only database 0",
                      "remove database or set it to 0")
    if (cfg.cert_file is None) != (cfg.key_file is None):
        raise r.error("cert_file" if cfg.cert_file is None else "key_file",
                      "a client certificate needs both cert_file and key_file",
                      "set both (PEM certificate and its private key) or neither")
