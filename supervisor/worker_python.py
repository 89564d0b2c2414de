"""`coproc.worker.python`: check, before anything starts, that it can run the worker.

The worker runs as `<python> -m worker`, so the coproc package must be
importable by that interpreter (install coproc into the plugins' venv too).
Checked once at `coproc serve`, with a clear error, instead of a worker that
fails at every start until it is FATAL.
"""

from __future__ import annotations

import importlib.metadata
import subprocess

__all__ = ["CHECK_TIMEOUT_S", "check_worker_python"]

CHECK_TIMEOUT_S = 60.0
# Imports what `python -m worker` needs first, then says which coproc it found.
_PROBE = ("import importlib.metadata as m, worker.main; "
          "print(m.version('coproc'))")


def check_worker_python(python: str) -> str:
    """"" when `python` can run this coproc's worker, else what is wrong and the fix."""
    fix = (f"install coproc in that interpreter's environment ({python} -m pip install "
           f"coproc, or pip install -e <this checkout>), or remove coproc.worker.python")
    try:
        done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True,
                              timeout=CHECK_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"coproc.worker.python {python} cannot be run: {exc}. Fix: {fix}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["exit status " + str(done.returncode)])[-1]
        return (f"coproc.worker.python {python} cannot import the coproc worker ({last}). "
                f"Fix: {fix}")
    theirs = done.stdout.strip()
    try:
        ours = importlib.metadata.version("coproc")
    except importlib.metadata.PackageNotFoundError:
        return ""  # a source tree run: nothing to compare with
    if theirs != ours:
        return (f"coproc.worker.python {python} has coproc {theirs}, the supervisor runs "
                f"{ours}: the worker protocol must match. Fix: install coproc {ours} there")
    return ""
