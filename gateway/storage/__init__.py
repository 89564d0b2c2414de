"""Gateway state behind one async interface: sessions, counters, plugin data.

`memory` (one instance, zero set-up) and `redis` (shared by every instance
that points at the same Redis: one server, Sentinel or Cluster, see
`client.py`) implement `Storage`; `open_storage` picks one from the gateway
config.
"""

from __future__ import annotations

from config.gateway import StorageConfig
from gateway.storage.base import Hit, Storage, StorageUnavailable
from gateway.storage.memory import MemoryStorage

__all__ = ["Hit", "MemoryStorage", "Storage", "StorageUnavailable", "open_storage"]


def open_storage(cfg: StorageConfig) -> Storage:
    """The backend the config names (not connected yet: Redis connects lazily)."""
    if cfg.type == "redis":
        from gateway.storage.redis import RedisStorage  # only needed (imported) when used

        return RedisStorage(cfg)
    return MemoryStorage()
