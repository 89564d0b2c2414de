"""`Storage` in the store process: what each gateway process uses with `storage:
memory` when the instance runs more than one of them.

Every operation is one request to the store (server.py) over one unix stream
connection per gateway process, pipelined: requests carry ids, replies may
be awaited by many requests at once, and the connection is never held by
one of them.  Every call has a deadline (`storage.timeout_ms`); a store that
does not answer in time, is down, or drops the connection is
`StorageUnavailable`, which the chain answers with 503 + Retry-After, as
for Redis.  The next call after a failure connects again, so a restarted
store is used as soon as it listens (its state starts empty).  Each new
connection first says HELLO with the store's token (ipc/tokens.py).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Final, cast

from gateway.storage.base import Hit, StorageUnavailable
from ipc.schema import ProtocolError
from ipc.store_protocol import (
    HEADER,
    MAX_KEYS,
    Op,
    decode_reply,
    encode_request,
    frame_length,
)

__all__ = ["RemoteStorage"]

#: Between two pings while waiting for the store at boot.
_READY_POLL_S: Final = 0.05


class RemoteStorage:
    """`Storage` forwarded to the store process listening at `path`; `token`
    admits its connections (`ipc.tokens.store_token` of the instance key)."""

    def __init__(self, path: str, timeout_s: float, token: str) -> None:
        self.path, self._timeout, self._token = path, timeout_s, token
        self._connection: _Connection | None = None
        self._connect_lock = asyncio.Lock()
        self._ids = itertools.count(1)

    @property
    def where(self) -> str:
        return f"store process at {self.path}"

    async def wait_ready(self, bound_s: float) -> bool:
        """Ping until the store answers or `bound_s` passes (a gateway that boots
        beside a store that is still starting); True once it answered."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound_s
        while True:
            if await self.ping():
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(_READY_POLL_S)

    async def _call(self, op: Op, *args: Any) -> Any:
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connect()
        call_id = next(self._ids)
        try:
            frame = encode_request(call_id, op, *args)
        except ValueError as exc:  # a value too large for one frame
            raise StorageUnavailable(f"{self.where}: {exc}") from None
        try:
            return await connection.call(call_id, frame)
        finally:
            connection.forget(call_id)

    async def _connect(self) -> _Connection:
        async with self._connect_lock:  # one attempt at a time; the others use its result
            connection = self._connection
            if connection is not None and not connection.closed:
                return connection
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self._timeout):
                    _, connection = await loop.create_unix_connection(
                        lambda: _Connection(self.where, self._timeout), self.path)
                    await self._hello(connection)
            except TimeoutError:
                raise StorageUnavailable(f"{self.where}: no connection within "
                                         f"{round(self._timeout * 1000)} ms") from None
            except OSError as exc:
                raise StorageUnavailable(f"{self.where}: {exc.strerror or exc}") from None
            self._connection = connection
            return connection

    async def _hello(self, connection: _Connection) -> None:
        """The connection's first request; a store that refuses the token closes it."""
        try:
            await connection.call(0, encode_request(0, Op.HELLO, self._token))
        except BaseException:
            connection.close()
            raise
        finally:
            connection.forget(0)

    async def get(self, key: str) -> bytes | None:
        return _optional_bytes(await self._call(Op.GET, key))

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for start in range(0, len(keys), MAX_KEYS):  # a request holds MAX_KEYS at most
            chunk = keys[start:start + MAX_KEYS]
            values = await self._call(Op.GET_MANY, chunk)
            if not isinstance(values, list) or len(values) != len(chunk):
                raise StorageUnavailable(f"{self.where}: invalid reply to GET_MANY")
            out += [_optional_bytes(v) for v in values]
        return out

    async def set(self, key: str, value: bytes, ttl: float = 0) -> None:
        await self._call(Op.SET, key, bytes(value), float(ttl))

    async def delete(self, key: str) -> bool:
        return await self._call(Op.DELETE, key) is True

    async def set_nx(self, key: str, value: bytes, ttl: float = 0) -> bool:
        return await self._call(Op.SET_NX, key, bytes(value), float(ttl)) is True

    async def ttl(self, key: str) -> int:
        return _integer(await self._call(Op.TTL, key))

    async def incr(self, key: str, ttl: float = 0) -> int | None:
        value = await self._call(Op.INCR, key, float(ttl))
        return None if value is None else _integer(value)

    async def rate_hit(self, key: str, limit: int, per: float) -> Hit:
        return _hit(await self._call(Op.RATE_HIT, key, int(limit), float(per)))

    async def quota_hit(self, key: str, quota_max: int, renewal_s: int) -> Hit:
        return _hit(await self._call(Op.QUOTA_HIT, key, int(quota_max), int(renewal_s)))

    async def quota_peek(self, key: str, quota_max: int) -> Hit | None:
        value = await self._call(Op.QUOTA_PEEK, key, int(quota_max))
        return None if value is None else _hit(value)

    async def scan(self, prefix: str) -> list[str]:
        keys = await self._call(Op.SCAN, prefix)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise StorageUnavailable(f"{self.where}: invalid reply to SCAN")
        return keys

    async def ping(self) -> bool:
        try:
            return await self._call(Op.PING) is True
        except StorageUnavailable:
            return False

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


def _optional_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    raise StorageUnavailable("the store sent an invalid value")


def _integer(value: Any) -> int:
    if type(value) is not int:
        raise StorageUnavailable("the store sent an invalid integer")
    return value


def _hit(value: Any) -> Hit:
    if (not isinstance(value, list) or len(value) != 3 or not isinstance(value[0], bool)
            or not isinstance(value[1], int) or not isinstance(value[2], (int, float))):
        raise StorageUnavailable("the store sent an invalid counter reply")
    return Hit(value[0], value[1], float(value[2]))


class _Connection(asyncio.Protocol):
    """One connection to the store: requests out, replies matched to them by id.

    Every call has the same timeout, so the pending calls (in sending order)
    are also in deadline order: one timer checks the oldest ones a few times
    per timeout, which costs far less than a timer per call (asyncio.timeout
    is ~4 µs a call, and a request makes three)."""

    def __init__(self, where: str, timeout_s: float) -> None:
        self._where, self._timeout = where, timeout_s
        self._tick = max(0.005, min(timeout_s / 10, 0.05))  # a deadline's precision
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, tuple[asyncio.Future[Any], float]] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        self._buffer = bytearray()
        self._out: list[bytes] = []  # frames of this loop iteration, written together
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an asyncio.Transport subclass).
        self._transport = cast(asyncio.Transport, transport)

    def call(self, call_id: int, frame: bytes) -> asyncio.Future[Any]:
        """Send `frame`; its reply's value, or StorageUnavailable at the deadline."""
        transport = self._transport
        if self.closed or transport is None:
            raise StorageUnavailable(f"{self._where}: connection closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending[call_id] = (future, loop.time() + self._timeout)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._tick, self._expire)
        # Concurrent requests' calls leave in one write (one syscall here, one read
        # and one reply write in the store) instead of one each.
        if not self._out:
            loop.call_soon(self._flush)
        self._out.append(frame)
        return future

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._transport is not None and not self.closed and out:
            self._transport.write(b"".join(out))

    def _expire(self) -> None:
        self._watchdog = None
        loop = asyncio.get_running_loop()
        now, pending = loop.time(), self._pending
        while pending:
            call_id, (future, deadline) = next(iter(pending.items()))
            if deadline > now:
                break
            del pending[call_id]
            if not future.done():
                future.set_exception(StorageUnavailable(
                    f"{self._where}: no answer within {round(self._timeout * 1000)} ms"))
        if pending and not self.closed:
            self._watchdog = loop.call_later(self._tick, self._expire)

    def forget(self, call_id: int) -> None:
        """The call is over (answered, timed out or cancelled)."""
        self._pending.pop(call_id, None)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start, size = 0, len(buffer)
        try:
            while size - start >= HEADER.size:
                end = start + HEADER.size + frame_length(buffer[start:start + HEADER.size])
                if end > size:
                    break
                call_id, ok, value = decode_reply(memoryview(buffer)[start + HEADER.size:end])
                start = end
                self._settle(call_id, ok, value)
        except ProtocolError as exc:
            self._fail(f"{self._where}: invalid reply: {exc}")
            if self._transport is not None:
                self._transport.abort()
            return
        del buffer[:start]

    def _settle(self, call_id: int, ok: bool, value: Any) -> None:
        entry = self._pending.pop(call_id, None)
        if entry is None or entry[0].done():
            return  # its caller gave up (deadline, cancelled) before the reply came
        future = entry[0]
        if ok:
            future.set_result(value)
        else:
            future.set_exception(StorageUnavailable(f"{self._where}: {value}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"{self._where}: connection lost" + (f" ({exc})" if exc else ""))

    def _fail(self, why: str) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        pending, self._pending = self._pending, {}
        for future, _deadline in pending.values():
            if not future.done():
                future.set_exception(StorageUnavailable(why))

    def close(self) -> None:
        self._fail(f"{self._where}: closed")
        if self._transport is not None:
            self._transport.close()
