"""One `coproc serve` per run directory: an exclusive flock on `coproc.lock`.

The kernel drops a flock when its holder dies, however it dies, so a crashed
supervisor never leaves a lock that needs manual removal; the pid written into
the file only serves the error message of the next attempt.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Final

__all__ = ["LOCK_NAME", "LockedError", "RunDirLock"]

LOCK_NAME: Final = "coproc.lock"


class LockedError(Exception):
    """Another process holds the run directory."""

    def __init__(self, run_dir: Path, holder_pid: int | None) -> None:
        self.run_dir, self.holder_pid = run_dir, holder_pid
        who = f"pid {holder_pid}" if holder_pid else "another process (pid unknown)"
        super().__init__(
            f"{run_dir} is in use by another `coproc serve` ({who}). Stop that instance "
            "first, or give this config its own coproc.run_dir")


class RunDirLock:
    """An acquired lock; `release()` removes the file, then unlocks."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, run_dir: Path) -> RunDirLock:
        """Lock `run_dir/coproc.lock` without waiting; raise `LockedError` if held."""
        path = run_dir / LOCK_NAME
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise LockedError(run_dir, _read_pid(path)) from None
            # A previous holder may have unlinked the file between our open and
            # our flock: we would then hold a lock nobody else can see.  Only a
            # lock on the inode that is still at `path` counts.
            if _same_file(fd, path):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return cls(path, fd)

    def release(self) -> None:
        if self._fd < 0:
            return
        # Unlink while still holding the lock, so no one locks a file that is
        # about to vanish (see the inode check in `acquire`).
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = -1


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
