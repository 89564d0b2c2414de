"""Per-generation worker cgroups: made before spawn, read for OOM and removed at reap.

The supervisor makes `coproc-<its pid>-w<generation>` under its *own* cgroup in
each hierarchy where it may (v1 `memory` and `pids`, and the v2 tree); the
worker writes its limits and joins them itself, before any plugin runs
(`worker.sandbox.cgroup`).  Owning the group gives the supervisor three things
a process group cannot: the memory limit's OOM counter (exit reason `oom`),
a kill that also reaches double-forked, `setsid` children (v2 `cgroup.kill`,
else SIGKILL to every pid listed), and a clean removal at reap.

Nothing here is fatal: a host without a writable cgroup fs yields no cgroup,
and the worker reports the layer as skipped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ipc.contract import CGROUPS_ENV

__all__ = ["WorkerCgroup", "remove_leftovers"]

log = logging.getLogger("coproc.supervisor.cgroups")

_V1_CONTROLLERS: Final = ("memory", "pids")
#: How long `release` waits for killed members to leave before rmdir gives up.
_RELEASE_WAIT_S: Final = 0.5
_KILL_ROUNDS: Final = 20


@dataclass(frozen=True, slots=True)
class _Hierarchy:
    mount: Path  # where it is mounted
    own: Path  # our cgroup inside it, relative to the mount root
    v2: bool


def _hierarchies() -> list[_Hierarchy]:
    """Our cgroup in each mounted hierarchy Coproc uses (v1 memory/pids, v2)."""
    try:
        own = _own_cgroups(Path("/proc/self/cgroup").read_text())
        mounts = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return []
    found: list[_Hierarchy] = []
    for line in mounts.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, mount, fstype, options = fields[3], fields[4], tail[0], tail[2].split(",")
        key = "" if fstype == "cgroup2" else next(
            (c for c in _V1_CONTROLLERS if fstype == "cgroup" and c in options), None)
        if key is None or key not in own:
            continue
        path = own[key]
        if root != "/" and path.startswith(root):  # a cgroup namespace or bind mount
            path = path[len(root):]
        found.append(_Hierarchy(Path(mount), Path(path.lstrip("/") or "."), key == ""))
    return found


def _own_cgroups(text: str) -> dict[str, str]:
    """controller ("" for v2) -> our path, from /proc/self/cgroup."""
    own: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                own[controller] = parts[2]
    return own


class WorkerCgroup:
    """The cgroup directories of one worker generation."""

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = dirs
        self.oom_kills = 0

    @classmethod
    def create(cls, generation: int) -> WorkerCgroup:
        """Make the directories where we may; an empty result is fine."""
        dirs: list[Path] = []
        for h in _hierarchies():
            _remove_stale(h.mount / h.own)
            directory = h.mount / h.own / f"coproc-{os.getpid()}-w{generation}"
            try:
                directory.mkdir(exist_ok=True)
            except OSError as exc:
                log.debug("no worker cgroup under %s: %s", directory.parent, exc)
                continue
            if h.v2:
                _enable_v2_controllers(directory.parent)
            dirs.append(directory)
        return cls(dirs)

    def env(self) -> dict[str, str]:
        return {CGROUPS_ENV: os.pathsep.join(str(d) for d in self.dirs)} if self.dirs else {}

    def kill(self) -> None:
        """SIGKILL every member, including children that left the process group."""
        for directory in self.dirs:
            kill_file = directory / "cgroup.kill"
            if kill_file.exists():
                with contextlib.suppress(OSError):
                    kill_file.write_text("1")
                    continue
            for _ in range(_KILL_ROUNDS):  # v1: members may fork while we kill
                pids = _members(directory)
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer struck inside the group (v1 or v2 counter)."""
        count = 0
        for directory in self.dirs:
            for name in ("memory.oom_control", "memory.events"):
                count += _counter(directory / name, "oom_kill")
        self.oom_kills = count
        return count > 0

    def release(self) -> bool:
        """At reap: OOM verdict, kill leftovers, remove the directories. True if OOM."""
        oom = self.oom_killed()
        self.kill()
        deadline = time.monotonic() + _RELEASE_WAIT_S
        for directory in self.dirs:
            while True:
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if time.monotonic() >= deadline:
                        log.warning("worker cgroup %s not removed: %s", directory, exc)
                        break
                    time.sleep(0.01)  # killed members are still exiting
        self.dirs = []
        return oom


def remove_leftovers(supervisor_pid: int) -> list[Path]:
    """Kill what is left in, and remove, the worker groups of a dead supervisor of
    this instance (its pid comes from the run dir's pid file: only this instance's
    leftovers, never another's).  Only groups we own are touched.  Returns them."""
    if supervisor_pid == os.getpid() or _alive(supervisor_pid):
        return []
    removed: list[Path] = []
    for h in _hierarchies():
        for directory in (h.mount / h.own).glob(f"coproc-{supervisor_pid}-w*"):
            try:
                if directory.stat().st_uid != os.geteuid():
                    continue
            except OSError:
                continue
            group = WorkerCgroup([directory])
            group.release()  # kills a plugin's double-forked leftovers too
            if not directory.exists():
                removed.append(directory)
    return removed


def _remove_stale(parent: Path) -> None:
    """Empty groups left by a supervisor that was SIGKILLed (it could not clean up)."""
    now = time.time()
    for stale in parent.glob("coproc-*-w*"):
        pid = stale.name.split("-")[1]
        # Old enough that a live owner's worker has long joined it (or another pid
        # namespace reuses the number): an empty group is then surely abandoned.
        with contextlib.suppress(OSError):  # gone, or not empty: members still running
            if pid.isdigit() and not _alive(int(pid)) and now - stale.stat().st_mtime > 60:
                stale.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _members(directory: Path) -> list[int]:
    try:
        return [int(p) for p in (directory / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _counter(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def _enable_v2_controllers(parent: Path) -> None:
    """Best effort: memory/pids for our children in v2 (refused if we hold processes)."""
    available = set()
    with contextlib.suppress(OSError):
        available = set((parent / "cgroup.controllers").read_text().split())
    wanted = " ".join(f"+{c}" for c in ("memory", "pids") if c in available)
    if wanted:
        with contextlib.suppress(OSError):
            (parent / "cgroup.subtree_control").write_text(wanted)
