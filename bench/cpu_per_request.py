"""`python -m bench.cpu_per_request [ROUNDS]`: the gateway's CPU µs per request, no hooks.

CPU time from /proc (psutil) over requests served is steadier on a shared machine
than requests/s: it does not depend on how the scheduler shares the cores with the
load generator and the upstream.  `SETTINGS` (JSON, merged into the gateway config)
compares variants, e.g. SETTINGS='{"coproc": {"metrics": {"enabled": false}}}'.
"""

from __future__ import annotations

import json
import os
import statistics
import sys

import psutil

from bench.load import run_load
from bench.procs import Coproc, Server
from bench.run import _api


def main(rounds: int = 3) -> float:
    upstream = Server("upstream")
    settings = json.loads(os.environ.get("SETTINGS", "{}"))
    inst = Coproc({"plain": _api("plain", upstream.url + "/")}, {}, settings)
    per_request: list[float] = []
    try:
        gateway = psutil.Process(inst.pids()["gateway"])
        run_load(inst.url + "/plain/x", seconds=1, connections=50)  # warm up
        for _ in range(rounds):
            before = gateway.cpu_times()
            result = run_load(inst.url + "/plain/x", seconds=4, connections=50)
            after = gateway.cpu_times()
            cpu_s = (after.user + after.system) - (before.user + before.system)
            per_request.append(cpu_s / (result.rps * 4) * 1e6)
            print(f"{result.rps:7.0f} req/s  {per_request[-1]:6.1f} µs CPU per request",
                  flush=True)
    finally:
        inst.stop()
        upstream.stop()
    median = statistics.median(per_request)
    print(f"median: {median:.1f} µs of gateway CPU per request (no hooks)")
    return median


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
