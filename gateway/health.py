"""Health: the registry every part of the gateway reports to, and the three answers built on it.

* `GET /hello` (liveness, public) always answers 200 in Tyk's shape: `status`
  pass / warn / fail, `version`, `description` and `details` per component,
  each with `status`, `componentType`, `time` and a short `output` when it is
  not passing.  Names and short reasons only: a public probe must never hand
  out pids, file paths, URLs, credentials or tracebacks.
* `GET /ready` (readiness, Tyk 5.9) answers 503 while starting, while
  stopping, before the first successful plugin load and while a required
  component (a Redis store) fails; else 200 with the same shape.
* `GET /coproc/status` (admin secret in `X-Tyk-Authorization`) adds each
  component's full detail: worker pid, plugin report, sandbox layers, counters.

Other parts register a component with `HealthRegistry.set(name, status,
reason)` (a fact that changes when they say so) or `HealthRegistry.watch(name,
probe)` (read at each request).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

__all__ = ["Check", "HealthRegistry", "Phase", "Status", "version"]

#: The longest reason shown publicly; longer ones are cut (they are meant to be short).
MAX_REASON = 120


class Status(enum.Enum):
    PASS = "pass"  # noqa: S105 (a status, not a password)
    WARN = "warn"
    FAIL = "fail"


class Phase(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    STOPPING = "stopping"


@dataclass(frozen=True, slots=True)
class Check:
    """One component's state.

    `reason` is public (keep it to names and a few words); `detail` only goes
    to the authenticated endpoint.  A `required` component that fails makes
    the instance not ready.
    """

    status: Status
    reason: str = ""
    kind: str = "component"  # Tyk's componentType: component, datastore, system
    required: bool = False
    detail: Mapping[str, Any] = field(default_factory=dict)
    since: float = field(default_factory=time.time)

    def public(self) -> dict[str, Any]:
        item: dict[str, Any] = {"status": self.status.value, "componentType": self.kind,
                                "time": _rfc3339(self.since)}
        if self.reason and self.status is not Status.PASS:
            item["output"] = self.reason[:MAX_REASON]
        return item


Probe = Callable[[], Check]
GroupProbe = Callable[[], Mapping[str, Check]]


def version() -> str:
    try:
        return metadata.version("coproc")
    except metadata.PackageNotFoundError:  # run from a source tree without install
        return "unknown"


class HealthRegistry:
    """Components' health, the instance's phase, and whether plugins ever loaded."""

    def __init__(self, description: str = "Coproc GW") -> None:
        self.description = description
        self.version = version()
        self.phase = Phase.STARTING
        # Tyk's "performed successful reload": plugins loaded at least once.
        self.loaded = False
        self._checks: dict[str, Check] = {}
        self._probes: dict[str, Probe] = {}
        self._groups: dict[str, GroupProbe] = {}

    # -- reporting (any part of the gateway) ---------------------------------

    def set(self, component: str, status: Status | str, reason: str = "", *,
            kind: str = "component", required: bool = False,
            detail: Mapping[str, Any] | None = None) -> None:
        """Record `component`'s state; `time` moves only when the status changes."""
        status = Status(status)
        old = self._checks.get(component)
        since = old.since if old is not None and old.status is status else time.time()
        self._checks[component] = Check(status, reason, kind, required, detail or {}, since)

    def components(self) -> list[str]:
        """The components recorded with `set` (not the probed ones)."""
        return list(self._checks)

    def clear(self, component: str) -> None:
        self._checks.pop(component, None)
        self._probes.pop(component, None)
        self._groups.pop(component, None)

    def watch(self, component: str, probe: Probe) -> None:
        """Compute `component`'s state at each read (cheap probes only: no I/O)."""
        self._probes[component] = probe

    def watch_group(self, group: str, probe: GroupProbe) -> None:
        """Like `watch`, for a set of components named by the probe (one per API)."""
        self._groups[group] = probe

    # -- reading ----------------------------------------------------------------

    def checks(self) -> dict[str, Check]:
        out = dict(self._checks)
        for name, probe in self._probes.items():
            out[name] = probe()
        for group in self._groups.values():
            out.update(group())
        return out

    def liveness(self) -> dict[str, Any]:
        """Tyk's /hello body; the HTTP status is always 200."""
        checks = self.checks()
        return self._body(_overall(checks), checks, self.description)

    def readiness(self) -> tuple[str, dict[str, Any]]:
        """("", body) when ready, else (why, body)."""
        checks = self.checks()
        why = self._not_ready(checks)
        return why, self._body(_overall(checks), checks, f"{self.description} Ready")

    def detail(self) -> dict[str, Any]:
        """Everything, for the authenticated status endpoint."""
        checks = self.checks()
        body = self._body(_overall(checks), checks, self.description)
        body["phase"] = self.phase.value
        body["loaded"] = self.loaded
        body["components"] = {name: {**check.public(), "output": check.reason,
                                     "required": check.required, **dict(check.detail)}
                              for name, check in checks.items()}
        return body

    def _not_ready(self, checks: Mapping[str, Check]) -> str:
        if self.phase is Phase.STARTING:
            return "Gateway is starting"
        if self.phase is Phase.STOPPING:
            return "Gateway is shutting down"
        if not self.loaded:
            return "A successful plugin load did not happen"
        failed = sorted(n for n, c in checks.items() if c.required and c.status is Status.FAIL)
        if failed:
            return f"Required component unavailable: {', '.join(failed)}"
        return ""

    def _body(self, status: Status, checks: Mapping[str, Check],
              description: str) -> dict[str, Any]:
        return {"status": status.value, "version": self.version, "description": description,
                "details": {name: check.public() for name, check in sorted(checks.items())}}


def _overall(checks: Mapping[str, Check]) -> Status:
    """Tyk's rule (no failure: pass; all failed: fail; else warn), warnings counted as warn."""
    failed = sum(1 for c in checks.values() if c.status is Status.FAIL)
    if checks and failed == len(checks):
        return Status.FAIL
    if failed or any(c.status is Status.WARN for c in checks.values()):
        return Status.WARN
    return Status.PASS


def _rfc3339(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
