"""Apply the sandbox's layers to this worker, in order, before any plugin is imported.

Order (each step needs the one before, or would be blocked by the one after):
cgroup join (needs root to write the limits) -> network namespace (needs
CAP_SYS_ADMIN) -> rlimits -> uid/gid -> pdeathsig + parent check (a uid change
clears it) -> no_new_privs (Landlock and seccomp require it without
CAP_SYS_ADMIN) -> Landlock scope (`standard`) or Landlock -> seccomp (last: it
denies what the others use).

No `preexec_fn`: the worker is a fresh interpreter and confines itself.
A required layer that fails raises `SandboxError` (the worker exits
BOOT_FAILED naming the layer); an optional one is skipped with one warning.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ipc.contract import SCRATCH_DIR_ENV
from ipc.grants import grant_instance_files, instance_arenas
from worker.sandbox import cgroup, identity, landlock, netns, prctl, rlimits, seccomp
from worker.sandbox.errors import LayerUnavailable
from worker.sandbox.policy import Layer, Policy

__all__ = ["LayerState", "SandboxError", "SandboxReport", "apply_sandbox"]

log = logging.getLogger("worker.sandbox")
#: Set by the supervisor (supervisor/contract.py, same name): the scratch path.


class LayerState(enum.Enum):
    ACTIVE = "active"
    SKIPPED = "skipped"  # optional and unavailable on this host (warned once)
    OFF = "off"  # the policy does not ask for it


class SandboxError(Exception):
    """A required layer could not be applied: the worker must not run plugins."""

    def __init__(self, layer: Layer, reason: str) -> None:
        super().__init__(f"sandbox layer {layer.value} is required but failed: {reason}")
        self.layer = layer


@dataclass
class SandboxReport:
    profile: str
    layers: dict[Layer, LayerState] = field(default_factory=dict)
    details: dict[Layer, str] = field(default_factory=dict)
    scratch: Path | None = None
    elapsed_ms: float = 0.0

    def active(self) -> list[str]:
        return [layer.value for layer, st in self.layers.items() if st is LayerState.ACTIVE]

    def summary(self) -> dict[str, str]:
        """layer name -> "active: detail" / "skipped: why" / "off"."""
        out: dict[str, str] = {}
        for layer, st in self.layers.items():
            detail = self.details.get(layer, "")
            out[layer.value] = st.value + (f": {detail}" if detail else "")
        return out

    def describe(self) -> str:
        skipped = [layer.value for layer, st in self.layers.items()
                   if st is LayerState.SKIPPED]
        return (f"sandbox profile {self.profile} ({self.elapsed_ms:.1f} ms): "
                f"active [{', '.join(self.active()) or 'none'}]"
                + (f", skipped [{', '.join(skipped)}]" if skipped else ""))

    def cleanup(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


class _Run:
    """Applies one layer at a time and records its outcome."""

    def __init__(self, report: SandboxReport) -> None:
        self.report = report

    def step(self, layer: Layer, wanted: bool, required: bool,
             action: Callable[[], str | None]) -> bool:
        if not wanted:
            self.report.layers[layer] = LayerState.OFF
            return False
        try:
            detail = action()
        except LayerUnavailable as exc:
            if required:
                raise SandboxError(layer, str(exc)) from None
            log.warning("sandbox layer %s unavailable, skipped: %s", layer.value, exc)
            self.report.layers[layer] = LayerState.SKIPPED
            self.report.details[layer] = str(exc)
            return False
        self.report.layers[layer] = LayerState.ACTIVE
        if detail:
            self.report.details[layer] = detail
        return True


def apply_sandbox(policy: Policy) -> SandboxReport:
    """Confine this process for good; raise `SandboxError` if a required layer fails."""
    started = time.perf_counter()
    report = SandboxReport(policy.profile)
    run = _Run(report)
    joined = cgroup.JoinResult()

    def join() -> str:
        nonlocal joined
        joined = cgroup.join_cgroups(policy.cgroup_dirs, policy.memory_mb.value,
                                     policy.processes.value)
        return ", ".join(str(d) for d in joined.joined)

    has_cgroup = bool(policy.cgroup_dirs)
    limits_required = policy.memory_mb.required or policy.processes.required
    run.step(Layer.CGROUP, True, limits_required and has_cgroup,
             join if has_cgroup else _unavailable("the supervisor made no cgroup "
                                                  "(cgroup fs not writable)"))
    run.step(Layer.NETNS, not policy.network, policy.network_required,
             netns.enter_private_network)
    plan = rlimits.planned_rlimits(policy, joined.memory_limited)
    run.step(Layer.RLIMITS, len(plan) > 1 or not policy.off, any(r for _, r in plan.values()),
             lambda: _rlimits(plan))
    if policy.landlock:
        report.scratch = _make_scratch(policy.ids)
    if policy.seccomp:
        seccomp.prepare()
    run.step(Layer.IDENTITY, policy.identity,
             policy.ids_required, lambda: _drop(policy))
    run.step(Layer.PDEATHSIG, not policy.off, True,
             lambda: prctl.arm_pdeathsig(policy.supervisor_pid))
    run.step(Layer.NNP, policy.nnp, False, prctl.set_no_new_privs)
    writable = [*policy.write_paths, *([report.scratch] if report.scratch else []),
                Path(os.devnull)]
    run.step(Layer.SCOPE, policy.scope, False,
             lambda: _single_threaded(lambda: landlock.scope_only(
                 abstract_unix=not any(str(s).startswith("@") for s in policy.hooks_sockets))))
    run.step(Layer.LANDLOCK, policy.landlock, False, lambda: _single_threaded(
        lambda: landlock.restrict(policy.read_paths, writable, policy.shm_paths)))
    run.step(Layer.SECCOMP, policy.seccomp, False,
             lambda: _single_threaded(seccomp.install_filter))
    report.elapsed_ms = (time.perf_counter() - started) * 1000
    return report


def _unavailable(reason: str) -> Callable[[], str | None]:
    def fail() -> str | None:
        raise LayerUnavailable(reason)
    return fail


def _single_threaded(apply: Callable[[], str]) -> str:
    """Landlock and seccomp bind this thread and its future threads only: a thread
    started earlier (by a C extension, say) would escape them, so refuse."""
    threads = _thread_count()
    if threads > 1:
        raise LayerUnavailable(f"{threads} threads already run and would not be confined")
    return apply()


def _thread_count() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return threading.active_count()


def _rlimits(plan: dict[int, tuple[int, bool]]) -> str:
    for warning in rlimits.apply_rlimits(plan):
        log.warning("sandbox layer rlimits: %s", warning)
    return f"{len(plan)} limits"


def _drop(policy: Policy) -> str:
    if policy.ids is None:
        raise LayerUnavailable("not started as root: the worker keeps the supervisor's uid"
                               if os.geteuid() != 0 else
                               "no such user (set coproc.sandbox.user to a dedicated user)")
    uid, gid = policy.ids
    blocked = identity.unreachable([*policy.read_paths, *policy.reach_paths], uid, gid)
    if blocked is not None:
        raise LayerUnavailable(
            f"uid {uid} cannot read {blocked} (the interpreter or plugins live under a "
            "private directory; see docs/SECURITY.md)")
    # Now that the drop will happen, and only then: the hooks sockets and the body
    # arenas go to the uid we become (a worker that stays root hands nothing out).
    # A gateway process that binds later grants its socket itself (ipc/grants.py).
    try:
        grant_instance_files(None, instance_arenas(policy.arena_prefix)
                             if policy.arena_prefix else [], uid, gid)
        for hooks_socket in policy.hooks_sockets:
            grant_instance_files(hooks_socket, (), uid, gid)
    except OSError as exc:
        raise LayerUnavailable(f"cannot give uid {uid} the hooks socket or the body "
                               f"arena: {exc}") from None
    identity.drop_identity(uid, gid)
    return f"uid {uid} gid {gid}"


def _make_scratch(ids: tuple[int, int] | None) -> Path:
    """The one writable directory of a Landlocked worker; TMPDIR points at it.

    At the path the supervisor chose (it removes it when it reaps a killed
    worker), else, run by hand or if that path exists already, a fresh one.
    """
    scratch = _chosen_scratch() or Path(tempfile.mkdtemp(prefix="coproc-scratch-"))
    if ids is not None and os.geteuid() == 0:
        os.chown(scratch, *ids)
    os.environ["TMPDIR"] = str(scratch)
    tempfile.tempdir = str(scratch)
    return scratch


def _chosen_scratch() -> Path | None:
    raw = os.environ.get(SCRATCH_DIR_ENV)
    if not raw:
        return None
    try:
        os.mkdir(raw, 0o700)  # never an existing one: it could be someone else's
    except OSError as exc:
        log.warning("scratch directory %s not made (%s); using a fresh one", raw, exc)
        return None
    return Path(raw)
