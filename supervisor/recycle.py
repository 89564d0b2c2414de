"""When to hot-restart a healthy worker anyway: recycling limits and watched files.

- `max_requests` (calls served, from the worker's heartbeats), `max_age_s`
  (stretched by a random jitter of up to 10 % so that instances started
  together do not recycle together) and `max_rss_mb` (psutil on the worker's
  pid, sampled at most once a second).  Reaching one is a hot restart, never
  a kill, logged with the reason.
- Watch mode: the mtimes of the plugin files the worker reported loading,
  polled from the supervisor's loop (cheap, no extra dependency).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import psutil

from config.gateway import WorkerOptions

__all__ = ["JITTER", "FileWatch", "RecyclePolicy", "WorkerWatch", "plugin_files", "rss_bytes"]

#: Share of max_age added at random per generation.
JITTER: Final = 0.1
#: Seconds between two RSS samples.
SAMPLE_S: Final = 1.0
#: Seconds between two scans of the watched files (a change shows within 2 s).
WATCH_S: Final = 0.5


def rss_bytes(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


class RecyclePolicy:
    """Decides, for one worker generation, whether it has served long enough."""

    def __init__(self, opts: WorkerOptions, started_at: float,
                 rng: random.Random | None = None) -> None:
        self._opts = opts
        jitter = (rng or random.Random()).uniform(0, JITTER)
        self._max_age = opts.max_age_s * (1 + jitter) if opts.max_age_s else 0.0
        self._started_at = started_at
        self._next_sample = 0.0
        self.rss: int | None = None

    def reason(self, now: float, pid: int, calls: int) -> str | None:
        opts = self._opts
        if opts.max_requests and calls >= opts.max_requests:
            return f"served {calls} calls (max_requests {opts.max_requests})"
        if self._max_age and now - self._started_at >= self._max_age:
            return f"age {now - self._started_at:.0f} s (max_age_s {opts.max_age_s} + jitter)"
        if now >= self._next_sample:
            self._next_sample = now + SAMPLE_S
            self.rss = rss_bytes(pid)
        limit = opts.max_rss_mb * 1024 * 1024
        if limit and self.rss is not None and self.rss > limit:
            return f"RSS {self.rss // (1024 * 1024)} MiB (max_rss_mb {opts.max_rss_mb})"
        return None


def plugin_files(report: Mapping[str, Any]) -> list[Path]:
    """The `.py` files named by a worker's load report (`source` of each API)."""
    files: set[Path] = set()
    for entry in report.values():
        for part in str(entry.get("source", "")).split(", "):
            if part.endswith(".py"):
                files.add(Path(part))
    return sorted(files)


class FileWatch:
    """mtime/size/inode snapshot of some files; `changed` says which one moved."""

    def __init__(self, files: Iterable[Path], now: float) -> None:
        self._files = list(files)
        self._seen = {path: _stamp(path) for path in self._files}
        self._next_scan = now + WATCH_S

    def changed(self, now: float) -> Path | None:
        if now < self._next_scan:
            return None
        self._next_scan = now + WATCH_S
        for path in self._files:
            if _stamp(path) != self._seen[path]:
                return path
        return None


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class WorkerWatch:
    """What the supervisor follows of the active generation: its load report,
    its last heartbeat's counters, and whether it is due for a hot restart."""

    def __init__(self, opts: WorkerOptions, report: Mapping[str, Any], now: float) -> None:
        self.report = dict(report)
        self.heartbeat: dict[str, int] = {}
        self._recycle = RecyclePolicy(opts, now)
        self._files = FileWatch(plugin_files(self.report), now) if opts.watch else None

    def beat(self, heartbeat: Mapping[str, Any]) -> None:
        """A heartbeat's counters: in flight, and CALLs read in total (`calls["calls"]`)."""
        counters = heartbeat.get("calls", {})
        self.heartbeat = {k: v for k, v in (("inflight", heartbeat.get("inflight")),
                                            ("calls", counters.get("calls"))) if v is not None}

    def restart_reason(self, now: float, pid: int) -> str | None:
        why = self._recycle.reason(now, pid, self.heartbeat.get("calls", 0))
        if why:
            return f"recycling: {why}"
        changed = self._files.changed(now) if self._files is not None else None
        return f"plugin file changed: {changed}" if changed else None
