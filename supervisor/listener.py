"""The HTTP listening socket, owned by the supervisor for its whole life.

The supervisor binds once and hands the same socket to every gateway process
(`COPROC_LISTEN_FD`).  While a gateway restarts, the kernel keeps queueing
new connections in the backlog, so clients see a delay instead of a refusal.
"""

from __future__ import annotations

import socket
from typing import Final

__all__ = ["BACKLOG", "ListenError", "bind_listener", "bound_port"]

BACKLOG: Final = 1024


class ListenError(Exception):
    """The configured address cannot be bound."""


def bind_listener(address: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """Bind and listen on `address:port` ("" = every IPv4 address, port 0 = ephemeral)."""
    host = address.strip("[]")  # accept "[::1]" as written in URLs
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # A restarted supervisor must be able to rebind while old connections
        # of its predecessor sit in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
