"""`python -m bench.worker_start`: how much the sandbox adds to a worker's start.

For each profile (off, standard, strict) it starts a real `coproc serve` with
one plugin, `--rounds` times, and reads two figures from the instance's log:

* boot: from the supervisor's "started worker generation 1" to the worker's
  "admitted by the gateway" (interpreter start, config, sandbox, plugin import,
  connect, HELLO/WELCOME);
* sandbox: the time the worker itself spent applying its layers.

Medians are printed beside `off`, with the ratio; nothing is asserted (the
machine is shared: read the ratio, not the absolute figures).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("off", "standard", "strict")
DEADLINE_S = 30.0
_TS = r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})"
_STARTED = re.compile(_TS + r" .*started worker generation 1 ")
_ADMITTED = re.compile(_TS + r" .*admitted by the gateway as generation 1")
_SANDBOX = re.compile(r"sandbox profile \w+ \(([\d.]+) ms\)")

PLUGIN = """from tyk.decorators import *

@Hook
def Noop(request, session, spec):
    return request, session
"""


def _write(base: Path, profile: str) -> Path:
    (base / "apps").mkdir()
    (base / "middleware" / "noop").mkdir(parents=True)
    (base / "middleware" / "noop" / "mw.py").write_text(PLUGIN)
    api = {"name": "noop", "api_id": "noop", "org_id": "default", "active": True,
           "use_keyless": True,
           "proxy": {"listen_path": "/noop/", "target_url": "http://127.0.0.1:9",
                     "strip_listen_path": True},
           "custom_middleware": {"driver": "python", "pre": [{"name": "Noop",
                                                              "path": "noop/mw.py"}]},
           "version_data": {"not_versioned": True, "versions": {"Default": {"name": "Default"}}}}
    (base / "apps" / "noop.json").write_text(json.dumps(api))
    config = {"listen_address": "127.0.0.1", "listen_port": 0,
              "coproc": {"run_dir": str(base / "run"), "sandbox": {"profile": profile},
                         "supervisor": {"stop_grace_ms": 3000}}}
    path = base / "coproc.json"
    path.write_text(json.dumps(config))
    return path


def _stamp(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


def one_start(profile: str) -> tuple[float, float]:
    """(boot ms, sandbox ms) of one fresh instance's first worker."""
    base = Path(tempfile.mkdtemp(prefix="cp-"))
    log_path = base / "coproc.log"
    proc = None
    try:
        config = _write(base, profile)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "supervisor.cli", "serve",
                                     "--config", str(config)], cwd=REPO_ROOT,
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            started, admitted = _STARTED.search(text), _ADMITTED.search(text)
            sandbox = _SANDBOX.search(text)
            if started and admitted and sandbox:
                return ((_stamp(admitted.group(1)) - _stamp(started.group(1))) * 1000,
                        float(sandbox.group(1)))
            if proc.poll() is not None:
                break
            time.sleep(0.02)  # polling the log file against the deadline
        raise RuntimeError(f"no admitted worker for profile {profile}:\n{text[-3000:]}")
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(base, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {p: [] for p in PROFILES}
    for _ in range(args.rounds):  # interleaved: a busy moment hits every profile
        for profile in PROFILES:
            results[profile].append(one_start(profile))
    base_boot = statistics.median(b for b, _ in results["off"])
    print(f"worker start, median of {args.rounds} (uid {os.geteuid()}):")
    print(f"{'profile':<10}{'boot ms':>10}{'sandbox ms':>12}{'boot vs off':>13}")
    for profile in PROFILES:
        boot = statistics.median(b for b, _ in results[profile])
        sandbox = statistics.median(s for _, s in results[profile])
        print(f"{profile:<10}{boot:>10.1f}{sandbox:>12.1f}{boot / base_boot:>12.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
