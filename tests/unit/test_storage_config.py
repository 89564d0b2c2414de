"""The `storage` block under Tyk's names, its environment variables, its errors, and the
redis-py client each topology gets (`gateway.storage.client`)."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from config.gateway import load_gateway_config
from config.reader import ConfigError
from config.storage import StorageConfig
from gateway.storage.client import describe, redis_client, tls_options
from gateway.storage.sentinel import FailoverConnection, FailoverSSLConnection


def _load(tmp_path: Path, storage: dict[str, Any], environ: dict[str, str] | None = None,
          ) -> StorageConfig:
    path = tmp_path / "coproc.json"
    path.write_text(json.dumps({"storage": storage}))
    return load_gateway_config(path, environ=environ or {}).storage


def test_tyk_names_are_read(tmp_path: Path) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("pem")
    cfg = _load(tmp_path, {
        "type": "redis", "addrs": ["10.0.0.1:26379", "10.0.0.2:26379"],
        "master_name": "mymaster", "sentinel_password": "sp", "username": "u",
        "password": "p", "timeout": 3, "optimisation_max_active": 200, "use_ssl": True,
        "ssl_insecure_skip_verify": True, "ca_file": "ca.pem", "cert_file": "cert.pem",
        "key_file": "key.pem", "tls_min_version": "1.3"})
    assert cfg.topology == "sentinel"
    assert cfg.nodes == (("10.0.0.1", 26379), ("10.0.0.2", 26379))
    assert (cfg.master_name, cfg.sentinel_password, cfg.username, cfg.password) == (
        "mymaster", "sp", "u", "p")
    assert (cfg.timeout_ms, cfg.max_connections) == (3000, 200)
    assert cfg.use_ssl and cfg.ssl_insecure_skip_verify and cfg.tls_min_version == "1.3"
    assert cfg.ca_file == tmp_path / "ca.pem" and cfg.key_file == tmp_path / "key.pem"


def test_coproc_names_still_work_and_win(tmp_path: Path) -> None:
    cfg = _load(tmp_path, {"type": "redis", "host": "r1", "port": 6380, "timeout": 3,
                           "timeout_ms": 250, "optimisation_max_active": 9,
                           "max_connections": 7})
    assert cfg.topology == "single" and cfg.nodes == (("r1", 6380),)
    assert (cfg.timeout_ms, cfg.max_connections) == (250, 7)
    assert _load(tmp_path, {}) == StorageConfig()


def test_cluster_and_deprecated_hosts_map(tmp_path: Path) -> None:
    cfg = _load(tmp_path, {"type": "redis", "enable_cluster": True,
                           "hosts": {"10.0.0.1": "7000", "10.0.0.2": "7001"}})
    assert cfg.topology == "cluster"
    assert cfg.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))


def test_environment_variables(tmp_path: Path) -> None:
    cfg = _load(tmp_path, {"type": "redis"}, {
        "TYK_GW_STORAGE_ADDRS": "a:1, b:2", "TYK_GW_STORAGE_MASTERNAME": "m",
        "TYK_GW_STORAGE_SENTINELPASSWORD": "s", "TYK_GW_STORAGE_USESSL": "true",
        "TYK_GW_STORAGE_TIMEOUT": "2"})
    assert cfg.addrs == ("a:1", "b:2") and cfg.master_name == "m"
    assert cfg.sentinel_password == "s" and cfg.use_ssl and cfg.timeout_ms == 2000
    cluster = _load(tmp_path, {}, {"TYK_GW_STORAGE_ENABLECLUSTER": "1"})
    assert cluster.enable_cluster


def test_a_bad_boolean_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, {}, {"TYK_GW_STORAGE_ENABLECLUSTER": "yes please"})
    assert info.value.field == "storage.enable_cluster"
    assert "TYK_GW_STORAGE_ENABLECLUSTER" in str(info.value) and "true or false" in str(info.value)


@pytest.mark.parametrize(("storage", "field", "words"), [
    ({"addrs": ["nohost"]}, "storage.addrs[0]", "HOST:PORT"),
    ({"addrs": ["h:99999"]}, "storage.addrs[0]", "HOST:PORT"),
    ({"addrs": [6379]}, "storage.addrs[0]", "host:port"),
    ({"master_name": "m", "enable_cluster": True}, "storage.enable_cluster", "exclude"),
    ({"enable_cluster": True, "database": 2}, "storage.database", "database 0"),
    ({"ca_file": "missing.pem"}, "storage.ca_file", "not a readable file"),
    ({"tls_min_version": "1.4"}, "storage.tls_min_version", "1.3"),
])
def test_bad_settings_name_the_field(tmp_path: Path, storage: dict[str, Any], field: str,
                                     words: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, {"type": "redis", **storage})
    assert info.value.field == field and words in str(info.value)


def test_a_certificate_needs_its_key(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("pem")
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, {"cert_file": "cert.pem"})
    assert info.value.field == "storage.key_file"


def test_tls_options_follow_tyk() -> None:
    assert tls_options(StorageConfig()) == {}
    strict = tls_options(StorageConfig(use_ssl=True, ca_file=Path("/ca.pem")))
    assert strict["ssl"] and strict["ssl_ca_certs"] == "/ca.pem"
    assert strict["ssl_cert_reqs"] == "required" and strict["ssl_check_hostname"]
    assert strict["ssl_min_version"] is ssl.TLSVersion.TLSv1_2  # Tyk's default minimum
    loose = tls_options(StorageConfig(use_ssl=True, ssl_insecure_skip_verify=True,
                                      tls_min_version="1.3"))
    assert loose["ssl_cert_reqs"] == "none" and not loose["ssl_check_hostname"]
    assert loose["ssl_min_version"] is ssl.TLSVersion.TLSv1_3


async def test_each_topology_gets_its_client() -> None:
    single = redis_client(StorageConfig(type="redis", addrs=("h1:7001", "h2:7002")))
    assert isinstance(single, aioredis.Redis)
    assert single.connection_pool.connection_kwargs["host"] == "h1"
    sentinel = redis_client(StorageConfig(type="redis", addrs=("s:26379",), master_name="m"))
    assert isinstance(sentinel, aioredis.Redis)
    assert isinstance(sentinel.connection_pool, SentinelConnectionPool)
    # Connections that look the master up again on every reconnect (gateway/storage/sentinel.py).
    assert sentinel.connection_pool.connection_class is FailoverConnection
    tls = redis_client(StorageConfig(type="redis", addrs=("s:26379",), master_name="m",
                                     use_ssl=True, ssl_insecure_skip_verify=True))
    assert tls.connection_pool.connection_class is FailoverSSLConnection
    cluster = redis_client(StorageConfig(type="redis", addrs=("c:7000",), enable_cluster=True))
    assert isinstance(cluster, RedisCluster)
    for client in (single, sentinel, tls, cluster):
        await client.aclose()


def test_describe_never_shows_credentials() -> None:
    cfg = StorageConfig(type="redis", addrs=("s:26379",), master_name="m", password="secret",
                        sentinel_password="secret2", use_ssl=True)
    assert describe(cfg) == "rediss+sentinel://s:26379/m/0"
    assert "secret" not in describe(StorageConfig(password="secret"))
