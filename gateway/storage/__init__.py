"""Gateway state behind one async interface: sessions, counters, plugin data.

`memory` (one instance, zero set-up) and `redis` (shared by every instance
that points at the same Redis: one server, Sentinel or Cluster, see
`client.py`) implement `Storage`; `open_storage` picks one from the gateway
config.  With `memory` and several gateway processes, the memory store lives
in the store process (`server.py`) and each gateway process reaches it
through `RemoteStorage` (`remote.py`): the supervisor names its socket in
$COPROC_STORE_SOCKET.
"""

from __future__ import annotations

from config.gateway import StorageConfig
from gateway.storage.base import Hit, Storage, StorageUnavailable
from gateway.storage.memory import MemoryStorage
from gateway.storage.remote import RemoteStorage

__all__ = ["Hit", "MemoryStorage", "RemoteStorage", "Storage", "StorageUnavailable",
           "open_storage"]


def open_storage(cfg: StorageConfig, store_socket: str = "", store_token: str = "") -> Storage:
    """The backend the config names (not connected yet: Redis and the store process
    are reached lazily).  `store_socket`: the store process's socket
    ($COPROC_STORE_SOCKET), which holds the memory storage instead of this process;
    `store_token` admits this process there (`ipc.tokens.store_token`)."""
    if cfg.type == "redis":
        from gateway.storage.redis import RedisStorage  # only needed (imported) when used

        return RedisStorage(cfg)
    if store_socket:
        return RemoteStorage(store_socket, cfg.timeout_ms / 1000, store_token)
    return MemoryStorage()
