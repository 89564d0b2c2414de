"""What every child process does first: die with its parent, know its role.

Children are fresh interpreters started by the supervisor; this module reads
the environment the supervisor set (see docs/PROTOCOL.md, "Process contract").
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Final

from ipc import exitcodes
from ipc.contract import SUPERVISOR_PID_ENV

__all__ = ["die_with_parent", "env_int"]

_PR_SET_PDEATHSIG: Final = 1


def die_with_parent() -> None:
    """Ask the kernel for SIGKILL when the supervisor dies; exit if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the supervisor's process-group kill still covers us
    expected = os.environ.get(SUPERVISOR_PID_ENV)
    # The parent may have died between fork and prctl: then we were re-parented.
    if expected and expected.isdigit() and os.getppid() != int(expected):
        sys.exit(exitcodes.ORPHANED)


def env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name, "")
    if raw.isdigit():
        return int(raw)
    if default is None:
        raise SystemExit(f"{name} is not set: this process is started by `coproc serve`")
    return default
