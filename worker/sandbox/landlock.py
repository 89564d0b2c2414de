"""Layer: Landlock, through ctypes (no binding needed): files, TCP, signals.

Read-only: the interpreter, its libraries and the plugin directories;
read-write: the scratch directory (and `writable_paths`); everything else in
the filesystem is out of reach, whatever the uid.  With ABI >= 4 TCP bind and
connect are denied; with ABI >= 6 signals to processes outside the worker and
abstract Unix sockets are too.  Connecting to a pathname Unix socket (the
hooks socket) is not a filesystem access Landlock governs, so it keeps working.

Landlock binds the calling thread and what it starts later: it must be applied
before any thread exists (the launcher runs before ZeroMQ and the call threads).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from worker.sandbox.errors import LayerUnavailable

__all__ = ["abi_version", "restrict", "scope_only"]

_SYS_CREATE_RULESET: Final = 444
_SYS_ADD_RULE: Final = 445
_SYS_RESTRICT_SELF: Final = 446
_CREATE_RULESET_VERSION: Final = 1
_RULE_PATH_BENEATH: Final = 1

_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_TRUNCATE, _IOCTL_DEV = 1 << 14, 1 << 15
#: Every filesystem right of ABI 1 (bits 0..12), then one more per ABI 2, 3, 5.
_FS_ABI1: Final = (1 << 13) - 1
_REFER: Final = 1 << 13
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1

_READ: Final = _EXECUTE | _READ_FILE | _READ_DIR


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64),
                ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # the kernel's struct is __attribute__((packed))
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def abi_version() -> int:
    """The kernel's Landlock ABI, or 0 when Landlock is absent or disabled."""
    version: int = _libc().syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0),
                                   ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(version, 0)


def _fs_rights(abi: int) -> int:
    rights = _FS_ABI1
    if abi >= 2:
        rights |= _REFER
    if abi >= 3:
        rights |= _TRUNCATE
    if abi >= 5:
        rights |= _IOCTL_DEV
    return rights


def restrict(read: Iterable[Path], write: Iterable[Path],
             open_existing: Iterable[Path] = ()) -> str:
    """Confine this thread (and its future threads) for good; return a summary.

    `open_existing`: directories whose existing files may be opened read-write but
    not listed, created or removed (/dev/shm, for the gateway's body arena).
    """
    abi = abi_version()
    if abi < 1:
        raise LayerUnavailable("the kernel has no Landlock (or it is disabled)")
    handled = _fs_rights(abi)
    attr = _RulesetAttr(handled, (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0,
                        (_SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL) if abi >= 6 else 0)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    libc = _libc()
    fd = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                      ctypes.c_uint32(0))
    if fd < 0:
        raise LayerUnavailable(f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        for path in read:
            _allow(libc, fd, path, _READ & handled)
        for path in write:
            _allow(libc, fd, path, handled & ~_IOCTL_DEV)
        for path in open_existing:
            _allow(libc, fd, path, _READ_FILE | _WRITE_FILE)
        if libc.syscall(_SYS_RESTRICT_SELF, fd, ctypes.c_uint32(0)) != 0:
            raise LayerUnavailable(
                f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)
    extras = [x for x, ok in (("tcp", abi >= 4), ("signals", abi >= 6)) if ok]
    return f"landlock ABI {abi}" + (f" (+{', '.join(extras)})" if extras else "")


def scope_only(abstract_unix: bool = True) -> str:
    """Confine this thread (and its future threads) to its own Landlock domain, with
    no file or network rule: it can no longer signal, ptrace, or read the /proc
    files (environ, mem, fd) of a process outside the domain, nor reach an
    abstract Unix socket made outside it.  Files stay as the uid allows.

    This is how `standard` keeps a worker that kept the supervisor's uid away
    from the supervisor and the gateway (signal scoping: ABI 6, Linux 6.12;
    the ptrace and /proc restriction holds for every Landlock domain).
    `abstract_unix=False` leaves abstract Unix sockets alone (an `ipc://@name`
    hooks endpoint is one)."""
    abi = abi_version()
    if abi < 6:
        raise LayerUnavailable(f"Landlock signal scoping needs ABI 6 (Linux 6.12); "
                               f"this kernel has ABI {abi}")
    attr = _RulesetAttr(0, 0, (_SCOPE_ABSTRACT_UNIX if abstract_unix else 0) | _SCOPE_SIGNAL)
    libc = _libc()
    fd = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr),
                      ctypes.c_size_t(ctypes.sizeof(_RulesetAttr)), ctypes.c_uint32(0))
    if fd < 0:
        raise LayerUnavailable(f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        if libc.syscall(_SYS_RESTRICT_SELF, fd, ctypes.c_uint32(0)) != 0:
            raise LayerUnavailable(
                f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)
    extra = ", abstract sockets" if abstract_unix else ""
    return f"landlock ABI {abi} scope (signals, ptrace{extra})"


def _allow(libc: ctypes.CDLL, ruleset: int, path: Path, access: int) -> None:
    try:
        pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # vanished since the policy was built: nothing to allow
    try:
        if not path.is_dir():
            # Directory-only rights on a file are EINVAL.
            access &= _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV
        rule = _PathBeneathAttr(access, pfd)
        if libc.syscall(_SYS_ADD_RULE, ruleset, ctypes.c_int(_RULE_PATH_BENEATH),
                        ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
            raise LayerUnavailable(
                f"landlock_add_rule({path}): {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(pfd)
