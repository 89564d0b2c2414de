"""Start a real `python -m worker` the way the supervisor does, for unit tests that play
the gateway (and the supervisor) themselves."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from ipc.control import make_control_pair, secret_fd

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_one_api(base: Path, plugin: str, hook: str, coproc: dict[str, Any]) -> Path:
    """A run directory with one API (`api1`) whose pre hook `hook` is in `plugin`
    (source, dedented), and a config with `coproc` (the run_dir and debug logs added);
    the config's path."""
    (base / "apps").mkdir()
    (base / "middleware" / "mw").mkdir(parents=True)
    (base / "middleware" / "mw" / "mw.py").write_text(textwrap.dedent(plugin))
    (base / "apps" / "api1.json").write_text(json.dumps({
        "api_id": "api1", "proxy": {"listen_path": "/api1/",
                                    "target_url": "http://127.0.0.1:9/"},
        "custom_middleware": {"driver": "python",
                              "pre": [{"name": hook, "path": "mw/mw.py"}]}}))
    config = base / "coproc.json"
    config.write_text(json.dumps({"coproc": {
        "run_dir": str(base), "log_level": "debug", **coproc}}))
    return config


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
