"""Let a sandboxed worker (its own uid) reach the hooks socket and the body arena.

ZeroMQ creates the ipc:// socket file with the gateway's owner; a worker that
dropped to another uid could not connect.  After bind the socket is handed to
the worker's uid (mode 0600: that uid and root, nobody else), the run directory
becomes traversable by the worker's group only (0710), and the shared-memory
arena is handed over the same way.  Nothing changes when no uid is dropped.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from config.gateway import GatewayConfig
from config.sandbox import worker_ids
from ipc.shm import Arena

__all__ = ["share_with_worker"]

log = logging.getLogger(__name__)


def share_with_worker(cfg: GatewayConfig, arena: Arena | None) -> None:
    ids = worker_ids(cfg.sandbox)
    if ids is None:
        return
    uid, gid = ids
    endpoint = cfg.hooks_endpoint
    try:
        if endpoint.startswith("ipc://"):
            sock = Path(endpoint[len("ipc://"):])
            os.chown(sock, uid, gid)
            os.chmod(sock, 0o600)
            _traversable(sock.parent, gid)
        if arena is not None:
            arena.chown(uid, gid)
    except OSError as exc:
        log.warning("cannot give the worker's uid %d access to the hooks socket: %s", uid, exc)


def _traversable(directory: Path, gid: int) -> None:
    """Search (not list) permission for `gid` on the run dir; nothing for others."""
    st = directory.stat()
    if st.st_gid != gid:
        os.chown(directory, -1, gid)
    mode = stat.S_IMODE(st.st_mode)
    os.chmod(directory, (mode | stat.S_IXGRP) & ~0o007)
