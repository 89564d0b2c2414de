"""Where finished records go: a JSON-lines file (rotated by size), stdout, or Redis.

Each sink takes a whole batch at once.  The file and stdout sinks write Tyk's
JSON names, one record a line, in a thread (a slow disk never stalls the
event loop); the Redis sink pushes Tyk's own msgpack bytes in one RPUSH per
batch, on the gateway's storage connection settings, so a Tyk Pump reads them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TextIO

from config.analytics import AnalyticsConfig
from config.gateway import StorageConfig
from gateway.analytics import tyk_format
from gateway.analytics.record import Record

__all__ = ["FileSink", "RedisSink", "Sink", "StdoutSink", "open_sink"]


class Sink(Protocol):
    async def write(self, records: list[Record]) -> None: ...

    async def close(self) -> None: ...


def _lines(records: list[Record]) -> str:
    return "".join(json.dumps(r, separators=(",", ":"), default=str) + "\n" for r in records)


class FileSink:
    """JSON lines appended to `path`; past `max_bytes` it becomes path.1 (… path.N)."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self._lock = threading.Lock()  # batches may be written by several threads
        self._file: BinaryIO | None = None
        self._size = 0

    async def write(self, records: list[Record]) -> None:
        await asyncio.to_thread(self._append, _lines(records).encode())

    def _append(self, data: bytes) -> None:
        with self._lock:
            if self._file is not None and self._size + len(data) > self.max_bytes:
                self._rotate()
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("ab")
                self._size = self._file.tell()
                if self._size and self._size + len(data) > self.max_bytes:
                    self._rotate()
            file = self._file
            if file is not None:
                file.write(data)
                file.flush()
                self._size += len(data)

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
        name = self.path.name
        if self.backups:
            for n in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{name}.{n}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{name}.{n + 1}"))
            os.replace(self.path, self.path.with_name(f"{name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._file = self.path.open("ab")
        self._size = 0

    async def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class StdoutSink:
    """JSON lines on the process's stdout (a container's log collector reads them)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    async def write(self, records: list[Record]) -> None:
        text = _lines(records)

        def put() -> None:
            self.stream.write(text)
            self.stream.flush()

        await asyncio.to_thread(put)

    async def close(self) -> None:
        return None


class RedisSink:
    """RPUSH of Tyk's msgpack records to analytics-tyk-system-analytics (or a shard)."""

    def __init__(self, storage: StorageConfig, sharded: bool, expire_s: int) -> None:
        # Imported only when used, as gateway.storage does for its Redis backend.
        from gateway.storage.client import describe, redis_client

        # Its own pool on the storage settings (one server, Sentinel or Cluster): a
        # burst of analytics writes never queues behind (or ahead of) the session
        # and rate-limit calls.  RPUSH and EXPIRE name one key: one slot on a cluster.
        self._client: Any = redis_client(storage)
        self.where = describe(storage)
        self.sharded, self.expire_s = sharded, expire_s

    async def write(self, records: list[Record]) -> None:
        key = tyk_format.list_key(self.sharded)
        payload = [tyk_format.encode(r) for r in records]
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.rpush(key, *payload)
            if self.expire_s:  # unread records do not pile up forever (Tyk's default 60 s)
                pipe.expire(key, self.expire_s)
            await pipe.execute()

    async def close(self) -> None:
        await self._client.aclose()


def open_sink(cfg: AnalyticsConfig, storage: StorageConfig) -> Sink:
    if cfg.sink == "redis":
        return RedisSink(storage, cfg.enable_multiple_analytics_keys,
                         cfg.storage_expiration_time)
    if cfg.sink == "stdout":
        return StdoutSink()
    return FileSink(cfg.file_path, cfg.file_max_bytes, cfg.file_backups)
