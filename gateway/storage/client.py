"""The one place that makes Redis clients from the `storage` settings.

Every Redis user in the gateway (the storage backend, the analytics sink)
calls `redis_client`, so one server, Sentinel and Cluster, TLS and the
credentials are handled alike everywhere:

- single: `redis.asyncio.Redis` on the first address;
- sentinel: the sentinels are asked for `master_name`'s master
  (`Sentinel.master_for`) whenever a connection (re)connects (`sentinel.py`),
  so after a failover every new or retried command reaches the new master;
- cluster: `redis.asyncio.cluster.RedisCluster` from the seed nodes; it routes
  each command to its key's slot and follows MOVED/ASK.
"""

from __future__ import annotations

import ssl
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from config.storage import StorageConfig
from gateway.storage.sentinel import FailoverConnection, FailoverSSLConnection

__all__ = ["RedisClient", "describe", "redis_client", "tls_options"]

RedisClient = aioredis.Redis | RedisCluster

_TLS_VERSIONS = {"1.0": ssl.TLSVersion.TLSv1, "1.1": ssl.TLSVersion.TLSv1_1,
                 "1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def tls_options(cfg: StorageConfig) -> dict[str, Any]:
    """redis-py's TLS keyword arguments for `cfg` (none without `use_ssl`)."""
    if not cfg.use_ssl:
        return {}
    skip = cfg.ssl_insecure_skip_verify
    return {
        "ssl": True,
        "ssl_ca_certs": str(cfg.ca_file) if cfg.ca_file else None,
        "ssl_certfile": str(cfg.cert_file) if cfg.cert_file else None,
        "ssl_keyfile": str(cfg.key_file) if cfg.key_file else None,
        # Tyk's skip-verify skips both the chain and the name check.
        "ssl_cert_reqs": "none" if skip else "required",
        "ssl_check_hostname": not skip,
        # Tyk's default minimum is TLS 1.2.
        "ssl_min_version": _TLS_VERSIONS[cfg.tls_min_version or "1.2"],
    }


def _common(cfg: StorageConfig, pool_size: int | None) -> dict[str, Any]:
    timeout = cfg.timeout_ms / 1000
    return {
        "username": cfg.username or None, "password": cfg.password or None,
        "socket_timeout": timeout, "socket_connect_timeout": timeout,
        "max_connections": pool_size or cfg.max_connections,
        # One immediate retry: a pooled connection that died with a restarted (or
        # failed-over) server is replaced at once instead of failing a request.
        "retry": Retry(NoBackoff(), 1),
        # Keys come from client headers, whose bytes need not be UTF-8 (aiohttp hands
        # them over surrogate-escaped): store them as the bytes received.
        "encoding_errors": "surrogateescape",
        **tls_options(cfg),
    }


def redis_client(cfg: StorageConfig, pool_size: int | None = None) -> RedisClient:
    """A new client (its own connection pool) for the configured topology."""
    kwargs = _common(cfg, pool_size)
    if cfg.topology == "cluster":
        # max_connections is per node, as Tyk's pool size is.
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in cfg.nodes], **kwargs)
    if cfg.topology == "sentinel":
        sentinel_kwargs = {"password": cfg.sentinel_password or None,
                           "socket_timeout": kwargs["socket_timeout"],
                           "socket_connect_timeout": kwargs["socket_connect_timeout"],
                           **tls_options(cfg)}
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(cfg.nodes), sentinel_kwargs=sentinel_kwargs, db=cfg.database,
                            **kwargs)
        connection = FailoverSSLConnection if cfg.use_ssl else FailoverConnection
        master: aioredis.Redis = sentinel.master_for(cfg.master_name,
                                                     connection_class=connection)
        return master
    host, port = cfg.nodes[0]
    return aioredis.Redis(host=host, port=port, db=cfg.database, **kwargs)


def describe(cfg: StorageConfig) -> str:
    """Where the client connects, for messages (never the credentials)."""
    nodes = ",".join(f"{h}:{p}" for h, p in cfg.nodes)
    scheme = "rediss" if cfg.use_ssl else "redis"
    if cfg.topology == "sentinel":
        return f"{scheme}+sentinel://{nodes}/{cfg.master_name}/{cfg.database}"
    if cfg.topology == "cluster":
        return f"{scheme}+cluster://{nodes}"
    return f"{scheme}://{nodes}/{cfg.database}"
