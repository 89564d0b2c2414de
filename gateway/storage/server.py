"""`python -m gateway.storage.server --socket PATH`: the store process.

With `storage: memory` and more than one gateway process, this process owns
the instance's one `MemoryStorage` (sessions, rate-limit and quota counters,
the id-extractor cache, plugin data) and every gateway process reaches it
through `RemoteStorage` (remote.py) over a unix stream socket; the wire is
ipc/store_protocol.py.  One event loop runs every operation to completion
before the next (MemoryStorage never awaits between reading and writing a
counter), so `rate_hit`/`quota_hit` stay exact across all gateway processes.

Each connection's requests are answered in order, all the complete frames
of one read in one write.  A peer of another uid is refused (SO_PEERCRED;
the socket is also mode 0600 in the 0700 run directory), and a connection
is served only once its first request, HELLO, carried the store's token
(from the supervisor, in $COPROC_SECRET_FD): gateway processes derive it from
the instance key, plugin code in the worker, even of the same uid, cannot.  An invalid frame
closes that connection only, logged once per interval with a count, never a
traceback per message.  The state lives only here: a restarted store starts
empty, as a restarted single-process memory instance does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Final, TypeVar, cast

from gateway.storage.memory import MemoryStorage
from ipc import eventloop, exitcodes
from ipc.child import die_with_parent
from ipc.control import ControlEndpoint, ControlType, read_inherited_secret
from ipc.peercred import peer_credentials
from ipc.ratelog import Throttle
from ipc.schema import ProtocolError
from ipc.store_protocol import HEADER, Op, Request, decode_request, encode_reply, frame_length

__all__ = ["ROLE", "StoreServer", "main", "peer_uid"]

T = TypeVar("T")

#: The role this process reports in `ready` (supervisor/child.py's Role.STORE).
ROLE: Final = "store"
#: At most one line per this many seconds about refused peers or invalid frames.
BAD_PEER_LOG_S: Final = 10.0

log = logging.getLogger("coproc.store")


def peer_uid(sock: Any) -> int | None:
    """The uid of a unix socket's peer, None if it cannot be read."""
    try:
        return peer_credentials(sock).uid
    except (OSError, AttributeError):
        return None


def _now(step: Coroutine[Any, Any, T]) -> T:
    """Run a MemoryStorage coroutine that never suspends, synchronously.

    Its methods are `async` for the `Storage` interface but await nothing that
    waits; running them here keeps a whole read's frames in one pass (no task
    per operation) and makes each operation atomic by construction."""
    try:
        step.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    step.close()
    raise RuntimeError("a memory storage operation suspended; it must not")


class StoreServer:
    """The unix-socket server in front of one MemoryStorage."""

    def __init__(self, storage: MemoryStorage, path: Path, token: str) -> None:
        self.storage, self.path = storage, path
        self._token = token.encode()
        self._server: asyncio.AbstractServer | None = None
        self._refused = Throttle(BAD_PEER_LOG_S)
        self._invalid = Throttle(BAD_PEER_LOG_S)
        self._uid = os.getuid()
        #: Counters: connections accepted and refused, frames answered, protocol errors.
        self.stats: dict[str, int] = dict.fromkeys(
            ("connections", "refused", "requests", "protocol_errors"), 0)

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)  # a stale socket of a store that died
        old_umask = os.umask(0o177)  # created 0600: no window with a wider mode
        try:
            self._server = await asyncio.get_running_loop().create_unix_server(
                lambda: _Connection(self), str(self.path))
        finally:
            os.umask(old_umask)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        self.path.unlink(missing_ok=True)

    def admit(self, sock: Any) -> bool:
        uid = peer_uid(sock)
        if uid == self._uid:
            self.stats["connections"] += 1
            return True
        self.stats["refused"] += 1
        held = self._refused.due()
        if held is not None:
            log.warning("refused a connection from uid %s (only uid %d may use the store)%s",
                        uid, self._uid, f" ({held} more since the last report)" if held else "")
        return False

    def hello(self, request: Request) -> bytes:
        """The first request of a connection: HELLO with the token, else ProtocolError."""
        if request.op is not Op.HELLO:
            raise ProtocolError(f"{request.op.name} before HELLO")
        if not hmac.compare_digest(str(request.args[0]).encode(errors="surrogateescape"),
                                   self._token):
            raise ProtocolError("HELLO with a wrong token")
        return encode_reply(request.call_id, True, True)

    def invalid(self, error: ProtocolError) -> None:
        self.stats["protocol_errors"] += 1
        held = self._invalid.due()
        if held is not None:
            log.warning("closed a connection that sent an invalid frame: %s%s", error,
                        f" ({held} more since the last report)" if held else "")

    def answer(self, request: Request) -> bytes:
        if request.op is Op.HELLO:
            raise ProtocolError("a second HELLO")
        self.stats["requests"] += 1
        try:
            value = self._run(request)
        except Exception as exc:  # a bug here must cost one call, not the store
            log.exception("store operation %s failed", request.op.name)
            return encode_reply(request.call_id, False, f"{type(exc).__name__}: {exc}")
        return encode_reply(request.call_id, True, value)

    def _run(self, request: Request) -> Any:
        store, args, op = self.storage, request.args, request.op
        if op is Op.GET:
            return _now(store.get(args[0]))
        if op is Op.GET_MANY:
            return _now(store.get_many(args[0]))
        if op is Op.SET:
            return _now(store.set(args[0], args[1], args[2]))
        if op is Op.DELETE:
            return _now(store.delete(args[0]))
        if op is Op.RATE_HIT:
            hit = _now(store.rate_hit(args[0], args[1], args[2]))
            return [hit.allowed, hit.remaining, hit.reset]
        if op is Op.QUOTA_HIT:
            hit = _now(store.quota_hit(args[0], args[1], args[2]))
            return [hit.allowed, hit.remaining, hit.reset]
        if op is Op.QUOTA_PEEK:
            peeked = _now(store.quota_peek(args[0], args[1]))
            return None if peeked is None else [peeked.allowed, peeked.remaining, peeked.reset]
        if op is Op.SCAN:
            return _now(store.scan(args[0]))
        if op is Op.SET_NX:
            return _now(store.set_nx(args[0], args[1], args[2]))
        if op is Op.TTL:
            return _now(store.ttl(args[0]))
        if op is Op.INCR:
            return _now(store.incr(args[0], args[1]))
        return True  # PING


class _Connection(asyncio.Protocol):
    """One gateway process's connection: frames in, replies out, in order."""

    def __init__(self, server: StoreServer) -> None:
        self._server = server
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._admitted = False  # its HELLO carried the token

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._server.admit(transport.get_extra_info("socket")):
            cast(asyncio.Transport, transport).abort()
            return
        # A stream transport (uvloop's is not an asyncio.Transport subclass).
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        buffer = self._buffer
        buffer += data
        replies: list[bytes] = []
        start, size = 0, len(buffer)
        try:
            while size - start >= HEADER.size:
                length = frame_length(memoryview(buffer)[start:start + HEADER.size])
                end = start + HEADER.size + length
                if end > size:
                    break
                request = decode_request(memoryview(buffer)[start + HEADER.size:end])
                if self._admitted:
                    replies.append(self._server.answer(request))
                else:
                    replies.append(self._server.hello(request))
                    self._admitted = True
                start = end
        except ProtocolError as exc:
            self._server.invalid(exc)
            self._transport = None
            transport.abort()
            return
        del buffer[:start]
        if replies:
            transport.write(b"".join(replies))

    def pause_writing(self) -> None:
        # A client that does not read its replies: stop reading its requests.
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._buffer = bytearray()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gateway.storage.server")
    parser.add_argument("--socket", required=True, help="the unix socket path to listen on")
    parser.add_argument("--max-entries", type=int, default=100_000,
                        help="the memory store's bound on stored keys")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", default="text", choices=("text", "json"))
    return parser.parse_args(argv)


async def serve(path: Path, token: str, max_entries: int = 100_000) -> None:
    """Serve until SIGTERM or SIGINT; say `ready` to the supervisor once listening."""
    storage = MemoryStorage(max_entries)
    server = StoreServer(storage, path, token)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    sweeper = asyncio.ensure_future(storage.sweep_forever())
    control = ControlEndpoint.inherited()
    if control is not None:
        control.send(ControlType.READY, {"role": ROLE, "pid": os.getpid()})
    log.info("store serving at %s", path)
    try:
        await stop.wait()
    finally:
        sweeper.cancel()
        await server.close()
        if control is not None:
            control.close()
    log.info("store stopped: %s", server.stats)


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    args = _parse_args(argv)
    from config.logs import setup_logging  # only this entry point configures logging

    setup_logging(ROLE, args.log_level, args.log_format)
    try:
        secret = read_inherited_secret()  # first: the fd is closed as early as possible
    except ValueError as exc:
        log.error("cannot start: %s", exc)
        return exitcodes.BOOT_FAILED
    if not secret:
        log.error("cannot start: no token in $COPROC_SECRET_FD: the store process is "
                  "started by `coproc serve`")
        return exitcodes.BOOT_FAILED
    try:
        eventloop.run(serve(Path(args.socket), secret.decode("ascii", "replace"),
                            args.max_entries))
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return exitcodes.BOOT_FAILED
    return exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
