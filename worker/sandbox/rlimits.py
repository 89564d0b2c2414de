"""Layer: resource limits (CPU seconds, open files, processes, file size, no core dumps).

`setrlimit` only lowers: a limit above the current hard limit is clamped to it.
RLIMIT_NPROC counts per uid and root ignores it, so it is set only for a
dropped uid; memory is the cgroup's job and RLIMIT_DATA is only the fallback
(RLIMIT_AS would count glibc's per-thread arena reservations and break threads).
"""

from __future__ import annotations

import resource

from worker.sandbox.errors import LayerUnavailable
from worker.sandbox.policy import Policy

__all__ = ["apply_rlimits", "planned_rlimits"]

_MB = 1024 * 1024


def planned_rlimits(policy: Policy, memory_in_cgroup: bool) -> dict[int, tuple[int, bool]]:
    """resource -> (limit, required), for the limits this policy sets."""
    plan: dict[int, tuple[int, bool]] = {resource.RLIMIT_CORE: (0, False)}
    for res, lim, scale in ((resource.RLIMIT_CPU, policy.cpu_seconds, 1),
                            (resource.RLIMIT_NOFILE, policy.open_files, 1),
                            (resource.RLIMIT_FSIZE, policy.file_size_mb, _MB)):
        if lim.value:
            plan[res] = (lim.value * scale, lim.required)
    if policy.processes.value and policy.ids is not None:
        plan[resource.RLIMIT_NPROC] = (policy.processes.value, policy.processes.required)
    if policy.memory_mb.value and not memory_in_cgroup:
        plan[resource.RLIMIT_DATA] = (policy.memory_mb.value * _MB, policy.memory_mb.required)
    return plan


def apply_rlimits(plan: dict[int, tuple[int, bool]]) -> list[str]:
    """Set each limit (soft = hard); return warnings for optional ones that failed."""
    warnings: list[str] = []
    for res, (value, required) in plan.items():
        _soft, hard = resource.getrlimit(res)
        target = value if hard == resource.RLIM_INFINITY else min(value, hard)
        try:
            resource.setrlimit(res, (target, target))
        except (ValueError, OSError) as exc:
            if required:
                raise LayerUnavailable(f"cannot set rlimit {res}: {exc}") from None
            warnings.append(f"rlimit {res} not set: {exc}")
    return warnings
