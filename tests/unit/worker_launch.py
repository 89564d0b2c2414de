"""Start a real `python -m worker` the way the supervisor does, for unit tests that play
the gateway (and the supervisor) themselves."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from ipc.control import make_control_pair, secret_fd

REPO_ROOT = Path(__file__).resolve().parents[2]


def launch_worker(config: Path, log: Path, generation: int, token: str
                  ) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """The worker process, and the supervisor's end of its control socket.

    Its token travels in an inherited secret fd, its control channel in an
    inherited socket, as `coproc serve` hands them over."""
    secret = secret_fd(token.encode())
    parent, child = make_control_pair()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT),
           "COPROC_GENERATION": str(generation), "COPROC_SECRET_FD": str(secret),
           "COPROC_SUPERVISOR_PID": str(os.getpid()),
           "COPROC_CONTROL_FD": str(child.fileno())}
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker", "--config", str(config)],
                cwd=REPO_ROOT, env=env, pass_fds=(child.fileno(), secret),
                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    finally:
        child.close()
        os.close(secret)
    return proc, parent
