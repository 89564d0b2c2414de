"""Let a sandboxed worker (its own uid) reach the hooks socket and the body arena.

ZeroMQ creates the ipc:// socket file with the gateway's owner; a worker that
dropped to another uid could not connect.  Access is granted from the uid a
worker *actually* runs as, never from config alone (ipc/grants.py): here, at
bind, only to a live worker of our supervisor that already runs as the
configured uid (a restarted gateway under a dropped worker).  A fresh worker
grants itself access while still root, right before it drops
(worker/sandbox/launcher.py).  A worker that stays root gets nothing handed
to `nobody`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from config.gateway import GatewayConfig
from config.sandbox import worker_ids
from ipc.contract import SUPERVISOR_PID_ENV
from ipc.grants import grant_instance_files, sibling_uids
from ipc.shm import Arena

__all__ = ["share_with_worker"]

log = logging.getLogger(__name__)


def share_with_worker(cfg: GatewayConfig, arena: Arena | None) -> None:
    ids = worker_ids(cfg.sandbox)
    supervisor = os.environ.get(SUPERVISOR_PID_ENV, "")
    if ids is None or not supervisor.isdigit():
        return
    uid, gid = ids
    if uid not in sibling_uids(int(supervisor)):
        return  # no worker runs as that uid (yet): a new one grants itself before its drop
    endpoint = cfg.hooks_endpoint
    sock = Path(endpoint[len("ipc://"):]) if endpoint.startswith("ipc://") else None
    try:
        grant_instance_files(sock, [arena.path] if arena is not None else [], uid, gid)
    except OSError as exc:
        log.warning("cannot give the worker's uid %d access to the hooks socket: %s", uid, exc)
