"""The HTTP listening sockets, owned by the supervisor for its whole life.

The supervisor binds once and hands a socket to each gateway process
(`COPROC_LISTEN_FD`).  While a gateway restarts, the kernel keeps queueing
new connections in its socket's backlog, so clients see a delay instead of a
refusal.

With several gateway processes (`coproc.gateway.accept`):

* `reuseport` (the default): one socket per process, all bound to the port
  with SO_REUSEPORT; the kernel spreads new connections evenly over them.
* `shared`: one socket, accepted on by every process.  asyncio accepts up to
  a backlog's worth of connections per wake-up, so a burst of connections
  (a client pool opening) tends to land on one process: measured with wrk's
  50 connections, 72/28, 46/54 and 100/0 splits over 2 processes (bench/processes.py).
"""

from __future__ import annotations

import socket
from typing import Final

__all__ = ["BACKLOG", "ListenError", "bind_listener", "bind_listeners", "bound_port"]

BACKLOG: Final = 1024


class ListenError(Exception):
    """The configured address cannot be bound."""


def bind_listeners(address: str, port: int, count: int, backlog: int = BACKLOG
                   ) -> list[socket.socket]:
    """`count` sockets on one port with SO_REUSEPORT (the first picks an ephemeral
    port for the others); one plain socket when `count` is 1."""
    if count <= 1:
        return [bind_listener(address, port, backlog)]
    first = bind_listener(address, port, backlog, reuse_port=True)
    sockets = [first]
    try:
        for _ in range(count - 1):
            sockets.append(bind_listener(address, bound_port(first), backlog, reuse_port=True))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def bind_listener(address: str, port: int, backlog: int = BACKLOG,
                  reuse_port: bool = False) -> socket.socket:
    """Bind and listen on `address:port` ("" = every IPv4 address, port 0 = ephemeral)."""
    host = address.strip("[]")  # accept "[::1]" as written in URLs
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # A restarted supervisor must be able to rebind while old connections
        # of its predecessor sit in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        shown = f"[{host}]" if family == socket.AF_INET6 else (host or "0.0.0.0")
        raise ListenError(f"cannot listen on {shown}:{port}: {exc.strerror or exc}. Fix: stop "
                          "whatever uses that port, or change listen_address / listen_port "
                          "in the config") from None
    return sock


def bound_port(sock: socket.socket) -> int:
    port: int = sock.getsockname()[1]
    return port
