"""Who is at the other end of a Unix socket (SO_PEERCRED), for the local sockets that
admit peers by uid: the supervisor's control socket and the store process's socket."""

from __future__ import annotations

import socket
import struct
from typing import Final, NamedTuple

__all__ = ["PeerCredentials", "peer_credentials"]

_UCRED: Final = struct.Struct("3i")  # struct ucred


class PeerCredentials(NamedTuple):
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """The peer's pid, uid and gid as the kernel recorded them at connect; OSError if
    the socket has none (not a connected Unix socket)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return PeerCredentials(*_UCRED.unpack(raw))
