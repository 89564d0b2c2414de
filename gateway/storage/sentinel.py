"""Sentinel-managed connections that follow a failover on every reconnect.

redis-py (6.4) asks the sentinels for the master when a pooled connection is
handed out, but a connection that breaks *during* a command (the old master
closing its clients as it becomes a replica) is reconnected by the command's
retry through `connect_check_health`, which reuses the old address: the retry
lands on the demoted master and fails with READONLY.  Measured here: 1-5 of 6
requests in flight failed per failover that way.  These classes look the
master up again on that path too, so the retry reaches the new master.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

__all__ = ["FailoverConnection", "FailoverSSLConnection"]


class _LookUpOnReconnect:
    """Mixin: refresh the master's address before a reconnect the retry makes."""

    connection_pool: Any
    host: str
    port: int
    is_connected: bool

    async def connect_check_health(self, check_health: bool = True,
                                   retry_socket_connect: bool = True) -> None:
        # `connect_to` (the sentinel lookup path) passes retry_socket_connect=False
        # with the address it just looked up; any other caller is a bare reconnect.
        if not self.is_connected and retry_socket_connect and self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(  # type: ignore[misc]
            check_health=check_health, retry_socket_connect=retry_socket_connect)


class FailoverConnection(_LookUpOnReconnect, SentinelManagedConnection):
    pass


class FailoverSSLConnection(_LookUpOnReconnect, SentinelManagedSSLConnection):
    pass
