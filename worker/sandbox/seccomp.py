"""Layer: a seccomp filter (PyPI `pyseccomp` over the system libseccomp).

Default allow, with a deny list answering EPERM, so a plugin gets a Python
exception rather than a dead worker: sockets other than AF_UNIX, exec, creating
processes (fork, vfork, clone without CLONE_THREAD; clone3 answers ENOSYS so
glibc falls back to clone, whose flags can be inspected), ptrace and process
memory access, namespaces and mounts, bpf, keyrings, io_uring, perf, modules.
Threads keep working: they are clone(CLONE_THREAD).
"""

from __future__ import annotations

import errno
import socket
from typing import Final

from worker.sandbox.errors import LayerUnavailable

__all__ = ["DENIED", "install_filter", "prepare"]

_CLONE_THREAD: Final = 0x00010000

#: Denied outright (EPERM).
DENIED: Final = (
    "execve", "execveat", "fork", "vfork", "ptrace", "process_vm_readv",
    "process_vm_writev", "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "bpf", "keyctl", "add_key", "request_key", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "perf_event_open", "kexec_load", "kexec_file_load", "init_module",
    "finit_module", "delete_module", "userfaultfd", "swapon", "swapoff", "reboot",
    "open_by_handle_at", "name_to_handle_at", "fsopen", "fsmount", "move_mount",
    "open_tree", "fspick", "mount_setattr", "pidfd_getfd", "process_madvise",
)


def prepare() -> None:
    """Import the binding while the filesystem is open: it finds libseccomp by
    running `ldconfig -p`, which Landlock and this very filter would refuse."""
    try:
        import pyseccomp  # noqa: F401
    except (ImportError, RuntimeError):
        pass  # install_filter reports it


def install_filter() -> str:
    """Load the filter into this thread (and its future threads); return a summary."""
    try:
        import pyseccomp as sc
    except ImportError:
        raise LayerUnavailable("the pyseccomp package is not installed") from None
    except RuntimeError as exc:  # the binding found no libseccomp
        raise LayerUnavailable(f"pyseccomp: {exc} (install libseccomp2)") from None
    try:
        flt = sc.SyscallFilter(defaction=sc.ALLOW)
        eperm = sc.ERRNO(errno.EPERM)
        for name in DENIED:
            _add(flt, eperm, name)
        for call in ("socket", "socketpair"):
            flt.add_rule(eperm, call, sc.Arg(0, sc.NE, socket.AF_UNIX))
        flt.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_THREAD, 0))
        _add(flt, sc.ERRNO(errno.ENOSYS), "clone3")
        flt.load()
    except OSError as exc:
        raise LayerUnavailable(f"seccomp filter not loaded: {exc}") from None
    return f"seccomp ({len(DENIED) + 4} rules)"


def _add(flt: object, action: int, name: str) -> None:
    try:
        flt.add_rule(action, name)  # type: ignore[attr-defined]
    except (OSError, ValueError):
        pass  # a syscall this architecture does not have: nothing to deny
