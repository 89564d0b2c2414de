"""Layer: drop to a dedicated uid/gid (only when started as root).

A dropped uid must still read what the worker imports after the drop: the
interpreter's libraries and the plugin directories.  An interpreter under a
private home (e.g. /root, mode 0700) is unreadable to it; `unreachable` finds
that before the drop so the layer is skipped with a reason, not a crash.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from worker.sandbox.errors import LayerUnavailable

__all__ = ["drop_identity", "unreachable"]


def unreachable(paths: Iterable[Path], uid: int, gid: int) -> Path | None:
    """The first path (or parent directory) that `uid`/`gid` cannot read or enter."""
    for path in paths:
        for part in [*reversed(path.parents), path]:
            try:
                st = part.stat()
            except OSError:
                break  # gone: nothing to read there
            need = stat.S_IXOTH if stat.S_ISDIR(st.st_mode) or part != path else stat.S_IROTH
            if not _allowed(st, uid, gid, need):
                return part
    return None


def _allowed(st: os.stat_result, uid: int, gid: int, other_bit: int) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & (other_bit << 6))
    if st.st_gid == gid:
        return bool(st.st_mode & (other_bit << 3))
    return bool(st.st_mode & other_bit)


def drop_identity(uid: int, gid: int) -> None:
    """Become `uid`/`gid` with no supplementary groups, irreversibly."""
    try:
        os.setgroups([gid])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise LayerUnavailable(f"cannot switch to uid {uid} gid {gid}: {exc}") from None
    if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid:
        raise LayerUnavailable(f"uid/gid switch to {uid}/{gid} did not stick")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise LayerUnavailable("could regain root after dropping the uid")
