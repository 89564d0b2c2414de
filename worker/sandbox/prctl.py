"""Layers: PR_SET_PDEATHSIG (+ parent check) and PR_SET_NO_NEW_PRIVS, via prctl(2).

A uid change clears the parent-death signal, so it is armed again after the
identity layer, and the parent is checked once more (it may have died between).
"""

from __future__ import annotations

import ctypes
import os
import signal
from typing import Final

from worker.sandbox.errors import LayerUnavailable

__all__ = ["arm_pdeathsig", "set_no_new_privs"]

PR_SET_PDEATHSIG: Final = 1
PR_SET_NO_NEW_PRIVS: Final = 38
PR_GET_NO_NEW_PRIVS: Final = 39


def _prctl(option: int, arg: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    result: int = libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0),
                             ctypes.c_ulong(0), ctypes.c_ulong(0))
    if result < 0:
        err = ctypes.get_errno()
        raise LayerUnavailable(f"prctl({option}) failed: {os.strerror(err)}")
    return result


def arm_pdeathsig(supervisor_pid: int) -> None:
    """SIGKILL when the supervisor dies; fail if it already has."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if supervisor_pid and os.getppid() != supervisor_pid:
        raise LayerUnavailable(f"the supervisor (pid {supervisor_pid}) is gone")


def set_no_new_privs() -> None:
    """No setuid binary or file capability can raise privileges from here on."""
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if _prctl(PR_GET_NO_NEW_PRIVS, 0) != 1:
        raise LayerUnavailable("no_new_privs did not stick")
