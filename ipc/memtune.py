"""Keep large body buffers' memory mapped between requests (glibc malloc tuning).

By default glibc serves every allocation above 128 KiB with a fresh `mmap`
and returns it with `munmap`, and gives the top of the heap back to the
kernel past 128 KiB of free space.  A gateway moving 1 MiB bodies then
page-faults every page of every body buffer, on every request, in every copy
(HTTP read, msgpack, ZeroMQ, the hook's `bytes`).  On a virtual machine a
page fault is expensive: measured on the 2-core bench VM, copying 1 MiB took
5 ms with the defaults and 0.08 ms after this tuning.

Raising both thresholds keeps freed body buffers in the heap for the next
request.  Because each heap keeps its high-water mark, the number of heaps
(glibc makes one per thread, up to 8 per core) is capped at `ARENAS`: the
worker's hook threads would otherwise each keep a body-sized heap of their own
(measured with lanes, 10 MiB bodies: worker RSS 94 MiB through shared memory
and 224 MiB inline with the cap, 143 and 394 MiB without).
The cost is that the heap keeps its high-water mark up to
`TRIM_BYTES` of free memory instead of shrinking at once.  Both gateway and
worker call `tune_for_large_buffers` at start; elsewhere than glibc it is a
no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Final

__all__ = ["ARENAS", "MMAP_THRESHOLD_BYTES", "TRIM_BYTES", "tune_for_large_buffers"]

log = logging.getLogger("coproc.memtune")

#: Allocations below this come from the heap (glibc's ceiling for the setting).
MMAP_THRESHOLD_BYTES: Final = 32 * 1024 * 1024
#: Free memory the heap may keep at its top before giving it back to the kernel.
TRIM_BYTES: Final = 256 * 1024 * 1024
#: Heaps (malloc arenas) shared by all threads of the process.
ARENAS: Final = 2

_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
_M_ARENA_MAX: Final = -8
_done = False


def tune_for_large_buffers() -> bool:
    """Apply the tuning once per process; False where it is not glibc."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES)) and bool(mallopt(_M_ARENA_MAX, ARENAS))
    if not ok:
        log.debug("mallopt refused the large-buffer tuning")
    _done = ok
    return ok
