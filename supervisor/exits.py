"""Classify how a child ended, in words an operator can act on.

`subprocess.Popen.returncode` folds two different outcomes into one int: a
non-negative exit code the child chose, or `-signum` when a signal killed it.
The supervisor's log line and restart decision need to know which, and which
exit codes carry a meaning (`ipc.exitcodes.RESERVED`).
"""

from __future__ import annotations

import signal
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ipc import exitcodes

__all__ = ["ExitHistory", "ExitStatus"]

#: Exit codes that mean "this command fails at start": restarting at once would
#: fail the same way, so they never reset the backoff (see `RestartPolicy`).
_BOOT_FAILURES = frozenset({exitcodes.BOOT_FAILED, exitcodes.PLUGINS_FAILED})


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """One reaped child's `returncode`, plus who killed it if we did."""

    returncode: int
    #: Set when the supervisor itself sent the fatal signal (hang, stop):
    #: then a SIGKILL is not a hint of the OOM killer.
    killed_by_us: str = ""
    #: The kernel's OOM killer struck in the worker's cgroup (supervisor/cgroups.py).
    oom: bool = False

    @property
    def signal(self) -> int | None:
        return -self.returncode if self.returncode < 0 else None

    @property
    def code(self) -> int | None:
        return self.returncode if self.returncode >= 0 else None

    @property
    def clean(self) -> bool:
        return self.returncode == exitcodes.OK

    @property
    def boot_failure(self) -> bool:
        return self.returncode in _BOOT_FAILURES

    @property
    def reason(self) -> str:
        """One word for logs and status: "oom", "signal", "exit" or "clean"."""
        if self.oom:
            return "oom"
        if self.signal is not None:
            return "signal"
        return "clean" if self.clean else "exit"

    def describe(self) -> str:
        signum = self.signal
        if self.oom:
            how = f"killed ({_signal_name(signum)})" if signum else f"exited {self.returncode}"
            return f"{how}: oom (the memory limit of its cgroup was exceeded)"
        if signum is None:
            meaning = exitcodes.RESERVED.get(self.returncode)
            if self.clean:
                return "exited 0"
            return f"exited {self.returncode}" + (f" ({meaning})" if meaning else "")
        name = _signal_name(signum)
        if self.killed_by_us:
            return f"killed ({name}, by the supervisor: {self.killed_by_us})"
        if signum == signal.SIGKILL:
            # Nobody in Coproc sends SIGKILL without saying so, so the usual
            # sender is the kernel's OOM killer (or an operator's kill -9).
            return "killed (SIGKILL, possibly OOM)"
        return f"killed ({name})"


class ExitHistory:
    """The last exits, newest last, for `coproc status` and a FATAL worker's `/hello`."""

    def __init__(self, size: int = 10) -> None:
        self._exits: deque[dict[str, Any]] = deque(maxlen=size)

    def remember(self, role: str, generation: int, pid: int, reason: str) -> None:
        self._exits.append({"time": round(time.time(), 3), "child": role,
                            "generation": generation, "pid": pid, "reason": reason})

    def reasons(self, role: str, last: int) -> list[str]:
        return [e["reason"] for e in self._exits if e["child"] == role][-last:]

    def as_list(self) -> list[dict[str, Any]]:
        return list(self._exits)
