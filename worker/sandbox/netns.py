"""Layer: a private network namespace (no interface but a down loopback).

Pathname Unix sockets (the hooks socket) live in the filesystem, not the
network namespace, so the worker keeps its channel.  As root this is a plain
unshare(CLONE_NEWNET); as a normal user it needs a user namespace first, with
the user's own uid/gid mapped so files keep their owners.
"""

from __future__ import annotations

import ctypes
import os
from typing import Final

from worker.sandbox.errors import LayerUnavailable

__all__ = ["enter_private_network"]

CLONE_NEWNET: Final = 0x40000000
CLONE_NEWUSER: Final = 0x10000000


def _unshare(flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(ctypes.c_int(flags)) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def enter_private_network() -> str:
    """Unshare the network namespace; return how ("netns" or "userns+netns")."""
    if os.geteuid() == 0:
        try:
            _unshare(CLONE_NEWNET)
        except OSError as exc:
            raise LayerUnavailable(f"unshare(CLONE_NEWNET) failed: {exc.strerror}") from None
        return "netns"
    uid, gid = os.geteuid(), os.getegid()
    try:
        _unshare(CLONE_NEWUSER | CLONE_NEWNET)
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{gid} {gid} 1")
    except OSError as exc:
        raise LayerUnavailable(
            f"no unprivileged user namespace for a private network: {exc.strerror}") from None
    return "userns+netns"
