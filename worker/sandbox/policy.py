"""Which layers to apply, with which values: the profile, overridden knob by knob.

A value that comes from the profile is best effort (an unavailable layer is
skipped with one warning); a knob the operator set explicitly is required
(the worker refuses to start without it).  0 means "no limit".
"""

from __future__ import annotations

import enum
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from config.gateway import GatewayConfig
from config.sandbox import SandboxOptions, worker_ids
from ipc.contract import CGROUPS_ENV, SUPERVISOR_PID_ENV
from ipc.shm_names import shm_prefix

__all__ = ["Layer", "Limit", "Policy", "resolve_policy"]

#: Set by the supervisor: the per-generation cgroup directories to join (os.pathsep).
#: Where the gateway's body arena lives (ipc/shm.py); opened, never created, by the worker.
_SHM_DIR = Path("/dev/shm")  # noqa: S108


class Layer(enum.Enum):
    """In the order the launcher applies them."""

    CGROUP = "cgroup"
    NETNS = "netns"
    RLIMITS = "rlimits"
    IDENTITY = "identity"
    PDEATHSIG = "pdeathsig"
    NNP = "no_new_privs"
    #: `standard`: a Landlock domain with no file rules, only scoping (signals, ptrace).
    SCOPE = "scope"
    LANDLOCK = "landlock"
    SECCOMP = "seccomp"


@dataclass(frozen=True, slots=True)
class Limit:
    value: int  # 0: no limit
    required: bool = False


@dataclass(frozen=True, slots=True)
class _Profile:
    memory_mb: int
    cpu_seconds: int
    open_files: int
    processes: int
    file_size_mb: int
    network: bool
    confine: bool  # nnp + uid drop + pdeathsig re-arm
    strict: bool  # Landlock + seccomp


_PROFILES = {
    "off": _Profile(0, 0, 0, 0, 0, network=True, confine=False, strict=False),
    # Threads count against `processes` (pids.max): 32 hook threads, zmq's, asyncio's.
    "standard": _Profile(1024, 0, 4096, 512, 1024, network=True, confine=True, strict=False),
    "strict": _Profile(512, 0, 1024, 256, 256, network=False, confine=True, strict=True),
}


@dataclass(frozen=True, slots=True)
class Policy:
    profile: str
    memory_mb: Limit
    cpu_seconds: Limit
    open_files: Limit
    processes: Limit
    file_size_mb: Limit
    network: bool
    network_required: bool
    identity: bool  # asked for (applied only as root, to `ids`)
    ids: tuple[int, int] | None
    ids_required: bool
    nnp: bool
    #: Landlock scoping alone (`standard`; `strict`'s Landlock layer includes it).
    scope: bool
    landlock: bool
    seccomp: bool
    cgroup_dirs: tuple[Path, ...]
    read_paths: tuple[Path, ...] = ()
    write_paths: tuple[Path, ...] = ()
    #: Existing files here may be opened read-write, nothing else (the body arena).
    shm_paths: tuple[Path, ...] = ()
    supervisor_pid: int = 0
    #: Directories a dropped uid must be able to enter: the hooks socket's run dir's
    #: parent (the gateway opens the run dir itself to the worker's group after bind).
    reach_paths: tuple[Path, ...] = ()
    #: Handed to the worker's uid right before it drops (ipc/grants.py): every
    #: gateway process's hooks socket (the ipc:// ones) and this instance's
    #: arenas' name prefix (one arena per gateway process, all under it).
    hooks_sockets: tuple[Path, ...] = ()
    arena_prefix: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def off(self) -> bool:
        return self.profile == "off"


def _limit(explicit: int | None, default: int) -> Limit:
    return Limit(default) if explicit is None else Limit(explicit, required=explicit > 0)


def resolve_policy(cfg: GatewayConfig, plugin_dirs: Iterable[Path] = (),
                   environ: Mapping[str, str] | None = None) -> Policy:
    """The layers for this worker, from `coproc.sandbox` and the supervisor's environment."""
    env = os.environ if environ is None else environ
    opts: SandboxOptions = cfg.sandbox
    base = _PROFILES[opts.profile]
    cgroups = tuple(Path(p) for p in env.get(CGROUPS_ENV, "").split(os.pathsep) if p)
    sup = env.get(SUPERVISOR_PID_ENV, "")
    return Policy(
        profile=opts.profile,
        memory_mb=_limit(opts.memory_mb, base.memory_mb),
        cpu_seconds=_limit(opts.cpu_seconds, base.cpu_seconds),
        open_files=_limit(opts.open_files, base.open_files),
        processes=_limit(opts.processes, base.processes),
        file_size_mb=_limit(opts.file_size_mb, base.file_size_mb),
        network=base.network if opts.network is None else opts.network,
        network_required=opts.network is False,
        identity=base.confine or bool(opts.user),
        ids=worker_ids(opts) if (base.confine or opts.user) else None,
        ids_required=bool(opts.user) and os.geteuid() == 0,
        nnp=base.confine,
        scope=base.confine and not base.strict,
        landlock=base.strict,
        seccomp=base.strict,
        cgroup_dirs=cgroups,
        read_paths=_read_paths(cfg, plugin_dirs),
        write_paths=tuple(opts.writable_paths),
        shm_paths=(_SHM_DIR,) if cfg.ipc.shm_threshold_bytes > 0
        and cfg.ipc.shm_arena_bytes > 0 and _SHM_DIR.is_dir() else (),
        supervisor_pid=int(sup) if sup.isdigit() else 0,
        reach_paths=tuple(dict.fromkeys(s.parent.parent for s in _hooks_sockets(cfg))),
        hooks_sockets=_hooks_sockets(cfg),
        arena_prefix=shm_prefix(cfg.run_dir),
    )


def _hooks_sockets(cfg: GatewayConfig) -> tuple[Path, ...]:
    """The ipc:// hooks sockets of every gateway process (tcp:// has no file)."""
    return tuple(Path(e[len("ipc://"):]) for e in cfg.hooks_endpoints if e.startswith("ipc://"))


def _read_paths(cfg: GatewayConfig, plugin_dirs: Iterable[Path]) -> tuple[Path, ...]:
    """What a confined worker may read: the interpreter, its libraries, the plugins."""
    found: list[Path] = []
    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                  os.path.dirname(os.path.realpath(sys.executable)), *sys.path,
                  str(cfg.middleware_path), str(cfg.app_path),
                  "/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib",
                  "/usr/share/zoneinfo", "/etc/localtime", "/dev/null", "/dev/urandom",
                  # /proc/self only: /proc/<gateway>/environ holds the instance key.
                  "/proc/self", *(str(d) for d in plugin_dirs)]
    for raw in candidates:
        if not raw:
            continue
        path = Path(raw).resolve()
        if path.exists() and path not in found:
            found.append(path)
    return tuple(found)
