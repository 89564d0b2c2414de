"""Give a worker's uid access to the instance's hooks socket and body arenas.

Access follows the uid the worker *actually* runs as, never the configured
one alone: a worker that stays root (the uid drop was skipped) must not leave
the socket and the arena to `nobody`, where any other daemon of that uid
could read and change in-flight bodies.  Two callers, one rule:

- the worker, still root, right before it drops to `uid` (it knows it will);
- the gateway, at bind, for a live sibling worker already running as `uid`
  (a restarted gateway binds a fresh socket under a worker that dropped).

Mode 0600 on the socket and arenas (that uid and root), 0710 on the run
directory with the worker's group (search, not list).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from ipc.shm_names import SHM_DIR

__all__ = ["grant_instance_files", "instance_arenas", "sibling_uids"]


def instance_arenas(prefix: str) -> list[Path]:
    """This instance's body arenas under /dev/shm (named `<prefix>-arena-<pid>`)."""
    try:
        return [e for e in SHM_DIR.iterdir() if e.name.startswith(f"{prefix}-arena-")]
    except OSError:
        return []


def grant_instance_files(socket_path: Path | None, arenas: Iterable[Path],
                         uid: int, gid: int) -> None:
    """Hand the socket and arenas to `uid`/`gid`; raise OSError."""
    if socket_path is not None and socket_path.exists():
        os.chown(socket_path, uid, gid)
        os.chmod(socket_path, 0o600)
        _traversable(socket_path.parent, gid)
    for arena in arenas:
        os.chown(arena, uid, gid)


def _traversable(directory: Path, gid: int) -> None:
    """Search (not list) permission for `gid` on the run dir; nothing for others."""
    st = directory.stat()
    if st.st_gid != gid:
        os.chown(directory, -1, gid)
    mode = stat.S_IMODE(st.st_mode)
    os.chmod(directory, (mode | stat.S_IXGRP) & ~0o007)


def sibling_uids(parent: int) -> set[int]:
    """Real uids of `parent`'s other children (the supervisor's workers), from /proc."""
    me, found = os.getpid(), set()
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit() and int(e) != me]
    except OSError:
        return set()
    for entry in entries:
        try:
            with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as f:
                status = f.read(4096)
        except OSError:
            continue  # gone meanwhile
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        try:
            if int(fields.get("PPid", "0")) == parent:
                found.add(int(fields["Uid"].split()[0]))
        except (KeyError, ValueError, IndexError):
            continue
    return found
