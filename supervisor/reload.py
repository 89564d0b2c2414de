"""One hot restart of the worker, from request to outcome.

    IDLE --request--> SPAWNING: generation N+1 boots while N keeps serving
      N+1 sends `loaded` (its plugin load report)
        a plugin that loaded under N fails under N+1 -> FAILED (N+1 killed)
        else `admit` -> ADMITTING: N+1 HELLOs the gateway, which makes it
        active and sends DRAIN to N
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Reload", "ReloadState", "regressions"]


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

    @property
    def finished(self) -> bool:
        return self.state in (ReloadState.DONE, ReloadState.FAILED)

    def outcome(self) -> dict[str, Any]:
        ok = self.state is ReloadState.DONE
        return {"ok": ok, "generation": self.generation, "reason": self.reason,
                "error": self.error, "state": self.state.value}

    def spawning(self, generation: int, revived: bool) -> None:
        """Generation `generation` boots for this reload (`revived`: it cleared FATAL)."""
        self.generation, self.revived = generation, revived

    def wait(self, waiter: Waiter) -> None:
        """`waiter` gets this reload's outcome too."""
        self.waiters.append(waiter)

    def admitting(self) -> None:
        self.state = ReloadState.ADMITTING

    def finish(self, error: str = "") -> None:
        self.state = ReloadState.FAILED if error else ReloadState.DONE
        self.error = error
        answer = self.outcome()
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(answer)
        self.waiters.clear()


def regressions(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """APIs whose plugins loaded in the old report and fail in the new one.

    An API that was already broken (or is new and broken while nothing runs
    to compare with) does not block a reload: it answers 500 either way.  A
    new API that fails while an old generation serves does block it.
    """
    if old is None:
        return []
    problems = []
    for api_id, entry in sorted(new.items()):
        if entry.get("ok", False):
            continue
        before = old.get(api_id)
        if before is None or before.get("ok", False):
            problems.append(f"API {api_id}: {summarise(str(entry.get('error', '')))}")
    return problems


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
