"""Layer: join the per-generation cgroup(s) the supervisor made, setting their limits.

The supervisor creates the directories (and removes them when the worker is
reaped, reading the OOM counter first); the worker, still privileged and
before any plugin runs, writes its memory and pids limits and moves itself in.
Works for cgroup v1 (memory.limit_in_bytes, pids.max) and v2 (memory.max).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from worker.sandbox.errors import LayerUnavailable

__all__ = ["JoinResult", "join_cgroups"]

_MB = 1024 * 1024


class JoinResult:
    def __init__(self) -> None:
        self.joined: list[Path] = []
        self.memory_limited = False
        self.pids_limited = False


def join_cgroups(dirs: Iterable[Path], memory_mb: int, processes: int) -> JoinResult:
    result = JoinResult()
    for directory in dirs:
        try:
            result.memory_limited |= _limit_memory(directory, memory_mb)
            result.pids_limited |= _limit_pids(directory, processes)
            (directory / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as exc:
            raise LayerUnavailable(f"cannot join cgroup {directory}: {exc}") from None
        result.joined.append(directory)
    return result


def _limit_memory(directory: Path, memory_mb: int) -> bool:
    if not memory_mb:
        return False
    limit = str(memory_mb * _MB)
    if (directory / "memory.limit_in_bytes").exists():  # v1
        (directory / "memory.limit_in_bytes").write_text(limit)
        swap = directory / "memory.memsw.limit_in_bytes"
        if swap.exists():  # no swapping out of the limit
            swap.write_text(limit)
        return True
    if (directory / "memory.max").exists():  # v2
        (directory / "memory.max").write_text(limit)
        if (directory / "memory.swap.max").exists():
            (directory / "memory.swap.max").write_text("0")
        return True
    return False


def _limit_pids(directory: Path, processes: int) -> bool:
    if processes and (directory / "pids.max").exists():
        (directory / "pids.max").write_text(str(processes))
        return True
    return False
