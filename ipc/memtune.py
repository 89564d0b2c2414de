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

That free memory still counts in RSS, and a process keeps the peak of its
last burst: `give_back_free_memory` gives it back (`malloc_trim`) once the
process has been quiet for a while (under load the buffers stay mapped: the
point of the tuning).  After the bench's 1 MiB inline bodies stopped, the
gateway went from 120 to 88 MiB and the worker from 69 to 61 MiB.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable
from typing import Final, cast

__all__ = ["ARENAS", "IDLE_TRIM_BYTES", "IDLE_TRIM_S", "MMAP_THRESHOLD_BYTES", "TRIM_BYTES",
           "give_back_free_memory", "held_free_bytes", "release_free_memory",
           "tune_for_large_buffers"]

log = logging.getLogger("coproc.memtune")

#: Allocations below this come from the heap (glibc's ceiling for the setting).
MMAP_THRESHOLD_BYTES: Final = 32 * 1024 * 1024
#: Free memory the heap may keep at its top before giving it back to the kernel.
TRIM_BYTES: Final = 256 * 1024 * 1024
#: Heaps (malloc arenas) shared by all threads of the process.
ARENAS: Final = 2

#: A quiet process gives back its free heap memory when it holds more than this ...
IDLE_TRIM_BYTES: Final = 32 * 1024 * 1024
#: ... and nothing happened for this long (two checks in a row saw no activity).
IDLE_TRIM_S: Final = 10.0

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


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


@functools.cache
def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    mallinfo2 = getattr(_libc(), "mallinfo2", None)
    if mallinfo2 is not None:
        mallinfo2.restype = _MallInfo2
    return cast(Callable[[], _MallInfo2] | None, mallinfo2)


def held_free_bytes() -> int | None:
    """Free memory the allocator holds in its heaps (glibc's `mallinfo2().fordblks`);
    None where that cannot be asked (not glibc, or glibc before 2.33)."""
    mallinfo2 = _mallinfo2()
    return None if mallinfo2 is None else int(mallinfo2().fordblks)


def release_free_memory() -> bool:
    """Give the heaps' free pages back to the kernel (`malloc_trim(0)`); False where
    that is not possible."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True


async def give_back_free_memory(activity: Callable[[], int], *,
                                interval_s: float = IDLE_TRIM_S / 2,
                                min_free: int = IDLE_TRIM_BYTES,
                                held: Callable[[], int | None] = held_free_bytes,
                                release: Callable[[], bool] = release_free_memory) -> None:
    """Run until cancelled: every `interval_s`, when `activity()` (a counter of the
    process's work, e.g. requests served) did not move over the last two checks and
    the heaps hold more than `min_free` bytes free, give them back once.  Trimming
    walks the heaps (milliseconds for hundreds of MiB), so it waits for quiet."""
    last, quiet, trimmed = activity(), 0, False
    while True:
        await asyncio.sleep(interval_s)
        now = activity()
        if now != last:
            last, quiet, trimmed = now, 0, False
            continue
        quiet += 1
        if quiet < 2 or trimmed:
            continue
        free = held()
        if free is not None and free > min_free:
            release()
            log.debug("quiet: gave %d MiB of free heap memory back", free >> 20)
        trimmed = True  # once per quiet period
