"""One hot restart of the worker, from request to outcome.

    IDLE --request--> SPAWNING: generation N+1 boots while N keeps serving
      N+1 sends `loaded` (its plugin load report)
        an API that serves now fails under N+1 (a regression) -> FAILED
        (N+1 killed)
        else `admit` -> ADMITTING: N+1 HELLOs the gateway, which makes it
        active and sends DRAIN to N; APIs whose plugins fail under N+1 and
        did not serve before (new, or failing already) are named in the
        outcome (`unserved`): they answer 500, as at start, and every other
        API serves
      N+1 says `ready` -> DONE (N drains and exits 0: an expected exit)
      N+1 exits or misses the boot timeout first -> FAILED (N stays active)

The outcome goes to every waiter (`coproc reload` connections); requests
that arrive while one reload runs are served by the next one, since files may
have changed after N+1 read them.
"""

from __future__ import annotations

import asyncio
import enum
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Reload", "ReloadState", "regressions", "summarise", "unserved"]


class ReloadState(enum.Enum):
    SPAWNING = "spawning"
    ADMITTING = "admitting"
    DONE = "done"
    FAILED = "failed"


Waiter = asyncio.Future[dict[str, Any]]


@dataclass(slots=True)
class Reload:
    reason: str
    started_at: float
    generation: int = 0
    state: ReloadState = ReloadState.SPAWNING
    error: str = ""
    waiters: list[Waiter] = field(default_factory=list)
    revived: bool = False  # it cleared FATAL: a failure makes the worker FATAL again
    #: APIs the new generation does not serve (their plugins failed to load).
    unserved: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.state in (ReloadState.DONE, ReloadState.FAILED)

    def outcome(self) -> dict[str, Any]:
        ok = self.state is ReloadState.DONE
        return {"ok": ok, "generation": self.generation, "reason": self.reason,
                "error": self.error, "state": self.state.value,
                "unserved": list(self.unserved) if ok else []}

    def spawning(self, generation: int, revived: bool) -> None:
        """Generation `generation` boots for this reload (`revived`: it cleared FATAL)."""
        self.generation, self.revived = generation, revived

    def wait(self, waiter: Waiter) -> None:
        """`waiter` gets this reload's outcome too."""
        self.waiters.append(waiter)

    def admitting(self, unserved: list[str]) -> None:
        """N+1 is let in; `unserved`: its APIs whose plugins failed (they answer 500)."""
        self.state, self.unserved = ReloadState.ADMITTING, unserved

    def finish(self, error: str = "") -> None:
        self.state = ReloadState.FAILED if error else ReloadState.DONE
        self.error = error
        answer = self.outcome()
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(answer)
        self.waiters.clear()


def regressions(old: Mapping[str, Any] | None, new: Mapping[str, Any],
                served: Collection[str]) -> list[str]:
    """APIs that serve now and whose plugins fail in the new load report: a reload
    that would take them out of service is refused (the old generation serves on).

    `old` is the active generation's report (None: no generation runs, so no
    plugin serves and there is nothing to protect); `served` the api_ids of the
    active definitions the gateway routes now.  An API serves now when it is in
    `served` and its plugins did not fail in `old` (an API without plugins has
    no entry).  The other failing APIs are no regression: a new API (or one whose
    definition did not load before) serves nothing now, and one whose plugins
    failed already answers 500 either way; refusing for them would only keep
    every other change from serving.  They answer 500 after the reload, as an
    API whose plugin fails at start does.
    """
    if old is None:
        return []
    problems = []
    for api_id, entry in sorted(new.items()):
        if entry.get("ok", False) or api_id not in served:
            continue
        before = old.get(api_id)
        if before is None or before.get("ok", False):
            problems.append(_named(api_id, entry))
    return problems


def unserved(report: Mapping[str, Any]) -> list[str]:
    """Every API whose plugins failed in `report`, with its error's summary."""
    return [_named(api_id, entry) for api_id, entry in sorted(report.items())
            if not entry.get("ok", False)]


def _named(api_id: str, entry: Mapping[str, Any]) -> str:
    return f"API {api_id}: {summarise(str(entry.get('error', '')))}"


_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+)', re.MULTILINE)


def summarise(error: str) -> str:
    """A load error's last line, with where it happened (the last traceback frame:
    the plugin's line for a SyntaxError), so `coproc reload` alone is enough."""
    lines = error.strip().splitlines()
    if not lines:
        return "plugins failed to load"
    frames = _FRAME.findall(error)
    if not frames:
        return lines[-1]
    file, line = frames[-1]
    return f"{lines[-1]} ({file}, line {line})"
