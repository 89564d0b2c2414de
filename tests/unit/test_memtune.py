"""ipc/memtune.py: free heap memory is given back once a process is quiet, and only then."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

from ipc.memtune import give_back_free_memory

REPO_ROOT = Path(__file__).resolve().parents[2]
BUSY_TICKS = 15


async def _run_trimmer(activity: list[int], free: int, ticks: int) -> list[int]:
    """Run give_back_free_memory (a check every 30 ms) over `ticks` ticks of 10 ms, busy
    for the first 15 (the work counter `activity[0]` moves at every tick), with `free`
    bytes held (threshold 100).  Returns the ticks at which it released memory."""
    released: list[int] = []
    tick = [0]

    def release() -> bool:
        released.append(tick[0])
        return True

    task = asyncio.create_task(give_back_free_memory(
        lambda: activity[0], interval_s=0.03, min_free=100, held=lambda: free,
        release=release))
    try:
        for tick[0] in range(1, ticks + 1):
            await asyncio.sleep(0.01)
            if tick[0] <= BUSY_TICKS:
                activity[0] += 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return released


async def test_a_busy_process_keeps_its_memory_and_a_quiet_one_gives_it_back_once() -> None:
    released = await _run_trimmer([0], free=1000, ticks=60)
    assert len(released) == 1  # once per quiet period, not at every check
    assert released[0] > BUSY_TICKS  # never while requests were coming


async def test_little_free_memory_is_left_alone() -> None:
    assert await _run_trimmer([0], free=10, ticks=60) == []


def test_the_heaps_free_memory_is_seen_and_given_back() -> None:
    """With the large-buffer tuning, 64 freed MiB stay in the heap (and in RSS) until
    `release_free_memory`; run apart so this process's heap does not blur the figures."""
    script = textwrap.dedent("""
        import os
        from ipc import memtune
        assert memtune.tune_for_large_buffers()
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        buffers = [b"x" * (1 << 20) for _ in range(64)]  # written: resident
        del buffers
        held, before = memtune.held_free_bytes(), rss()
        assert memtune.release_free_memory()
        print(held >> 20, (before - rss()) >> 20)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    held_mib, returned_mib = int(out[0]), int(out[1])
    assert held_mib >= 48
    assert returned_mib >= 48

