"""Names of the POSIX shared-memory objects of one Coproc instance.

Every object the instance creates under /dev/shm starts with `shm_prefix`, a
digest of its run directory: two instances never collide, and the supervisor
can remove whatever a crashed gateway or worker left behind without knowing
the individual names.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Final

__all__ = ["SHM_DIR", "shm_prefix"]

#: Where Linux exposes POSIX shared memory as files.
SHM_DIR: Final = Path("/dev/shm")  # noqa: S108 (a system path, not a temp file)


def shm_prefix(run_dir: Path) -> str:
    """`coproc-<12 hex digits>`: short, because shm names share NAME_MAX with a suffix."""
    digest = hashlib.sha256(os.path.abspath(run_dir).encode()).hexdigest()[:12]
    return f"coproc-{digest}"
