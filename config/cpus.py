"""How many CPUs this process may really use: what `processes: "auto"` means.

`os.cpu_count()` is the machine's count.  In a container or a systemd slice the
process may be held to fewer: its CPU affinity (cpusets, `taskset`) and a
cgroup CPU quota (`cpu.max` in cgroup v2, `cpu.cfs_quota_us` / `cpu.cfs_period_us`
in v1: Kubernetes' CPU limit).  Running more gateway processes than that only
adds context switches, so "auto" takes the smallest of the three, rounded up
for a fractional quota (a limit of 1.5 CPUs gets 2 processes).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["usable_cpus"]

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(cgroup_root: Path = _CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")
                ) -> int:
    """At least 1: min(affinity, cgroup quota), or the machine's count."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def _cgroup_quota(root: Path, proc_cgroup: Path) -> float | None:
    """The CPU quota (in CPUs) of this process's cgroup, None when unlimited or unknown."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":  # cgroup v2: one unified hierarchy
            quota = _v2(root / rel / "cpu.max") or _v2(root / "cpu.max")
        elif "cpu" in controllers.split(","):
            base = root / controllers
            if not base.is_dir():
                base = root / "cpu,cpuacct"
            quota = _v1(base / rel) or _v1(base)
        else:
            continue
        if quota is not None:
            return quota
    return None


def _v2(path: Path) -> float | None:
    try:
        limit, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if limit == "max":
        return None
    try:
        return int(limit) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def _v1(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None  # -1: no quota
    return quota / period
