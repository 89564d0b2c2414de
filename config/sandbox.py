"""`coproc.sandbox`: how the plugin worker is isolated from the host (docs/SECURITY.md).

A profile names a set of layers (`off`, `standard`, `strict`); each knob may be
set on its own and then overrides the profile.  A knob left out is `None` here
and means "the profile's default"; the worker's `worker.sandbox.policy` turns
the pair into the layers to apply.  A knob the operator set explicitly is
*required*: if the host cannot apply it the worker refuses to start, where a
profile default that the host cannot apply is skipped with a warning.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from config.reader import Reader

__all__ = ["DEFAULT_USER", "PROFILES", "SandboxOptions", "parse_sandbox", "worker_ids"]

PROFILES = ("off", "standard", "strict")
#: The worker's uid when the supervisor runs as root and `user` is not set.
#: A missing user degrades to "no uid drop" with a warning (fresh CI machines).
DEFAULT_USER = "nobody"


@dataclass(frozen=True, slots=True)
class SandboxOptions:
    profile: str = "standard"
    memory_mb: int | None = None
    cpu_seconds: int | None = None
    open_files: int | None = None
    processes: int | None = None
    file_size_mb: int | None = None
    network: bool | None = None
    writable_paths: tuple[Path, ...] = ()
    user: str = ""
    group: str = ""


def parse_sandbox(r: Reader, base: Path) -> SandboxOptions:
    """Read `coproc.sandbox`; raise `ConfigError` naming the field and the fix."""
    def knob(key: str, maximum: int) -> int | None:
        return r.number(key, int, 0, 0, maximum) if r.has(key) else None

    paths = r.get("writable_paths", list, [])
    for i, item in enumerate(paths):
        if not isinstance(item, str) or not item:
            raise r.error(f"writable_paths[{i}]", f"expected a path string, got {item!r}",
                          "list directories as strings, e.g. [\"/var/tmp/plugins\"]")
    user, group = r.get("user", str, ""), r.get("group", str, "")
    for key, value, lookup in (("user", user, _uid), ("group", group, _gid)):
        if value and lookup(value) is None:
            raise r.error(key, f"no such {key} {value!r} on this host",
                          f"create it (e.g. `useradd --system {value}`) or set an existing "
                          f"{key} name or number")
    return SandboxOptions(
        profile=r.choice("profile", PROFILES, "standard"),
        memory_mb=knob("memory_mb", 1 << 22), cpu_seconds=knob("cpu_seconds", 1 << 31),
        open_files=knob("open_files", 1 << 20), processes=knob("processes", 1 << 22),
        file_size_mb=knob("file_size_mb", 1 << 30),
        network=r.get("network", bool) if r.has("network") else None,
        writable_paths=tuple((base / os.path.expanduser(p)).resolve() for p in paths),
        user=user, group=group,
    )


def worker_ids(opts: SandboxOptions) -> tuple[int, int] | None:
    """The (uid, gid) the worker drops to, or None (not root, `off`, or no such user)."""
    if os.geteuid() != 0 or opts.profile == "off":
        return None
    uid = _uid(opts.user or DEFAULT_USER)
    if uid is None:
        return None
    if opts.group:
        gid = _gid(opts.group)
    else:
        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:  # a bare number with no passwd entry: its own group number
            gid = uid
    return (uid, gid) if gid is not None and uid != 0 else None


def _uid(name: str) -> int | None:
    try:
        return int(name) if name.isdigit() else pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def _gid(name: str) -> int | None:
    try:
        return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        return None
