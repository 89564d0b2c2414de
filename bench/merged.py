"""`python -m bench.merged [ROUNDS]`: what merged hook calls save, in one run.

Three instances against one upstream: no hooks, pre+post+response with
merging (the default: pre and post share one CALL, so 2 round trips) and
without it (`coproc.hooks.merge: false`: 3).  They run in interleaved rounds;
each round gives requests/s and the CPU µs per request of the gateway and of
the worker (from /proc, steadier than requests/s on a shared machine), and the
ratios to no hooks within the round; the medians over the rounds are printed.
`SKIP_APART=1` leaves the unmerged instance out (a release without the setting).
"""

from __future__ import annotations

import os
import statistics
import sys
from dataclasses import dataclass, field

import psutil

from bench.load import run_load
from bench.procs import Coproc, Server, cpu_seconds
from bench.run import PLUGIN, _api

SECONDS = 4.0
CONNECTIONS = 50


@dataclass
class _Case:
    name: str
    inst: Coproc
    path: str
    rps: list[float] = field(default_factory=list)
    cpu_us: dict[str, list[float]] = field(default_factory=dict)

    def measure(self) -> None:
        procs = {role: psutil.Process(pid) for role, pid in self.inst.pids().items()}
        before = {role: cpu_seconds(p) for role, p in procs.items()}
        result = run_load(self.inst.url + self.path, seconds=SECONDS, connections=CONNECTIONS)
        served = result.rps * SECONDS
        self.rps.append(result.rps)
        for role, proc in procs.items():
            used = cpu_seconds(proc) - before[role]
            self.cpu_us.setdefault(role, []).append(used / served * 1e6 if served else 0.0)
        cpu = "  ".join(f"{role} {v[-1]:6.1f} µs" for role, v in self.cpu_us.items())
        print(f"  {self.name:<34} {result.rps:8.0f} req/s  CPU per request: {cpu}", flush=True)


def main(rounds: int = 3) -> None:
    upstream = Server("upstream")
    up = upstream.url + "/"
    three = _api("three", up, pre=["GreetPre"], post=["NoopPost"], response=["NoopResponse"])
    instances: list[Coproc] = []

    def start(apis: dict[str, object], settings: dict[str, object]) -> Coproc:
        inst = Coproc(apis, {"bench/mw.py": PLUGIN}, settings)
        instances.append(inst)
        return inst

    try:
        cases = [_Case("no hooks", start({"plain": _api("plain", up)}, {}), "/plain/x"),
                 _Case("pre+post+response, merged", start({"three": three}, {}), "/three/x")]
        if not os.environ.get("SKIP_APART"):
            cases.append(_Case("pre+post+response, not merged",
                               start({"three": three}, {"coproc": {"hooks": {"merge": False}}}),
                               "/three/x"))
        for case in cases:  # warm up
            run_load(case.inst.url + case.path, seconds=1, connections=CONNECTIONS)
        for round_no in range(rounds):
            print(f"round {round_no + 1}/{rounds}", flush=True)
            for case in cases:
                case.measure()
    finally:
        for inst in instances:
            inst.stop()
        upstream.stop()
    base = cases[0]
    print("\nmedians over the rounds (ratios within each round):")
    for case in cases:
        ratio = statistics.median(r / b for r, b in zip(case.rps, base.rps, strict=True))
        cpu = "  ".join(f"{role} {statistics.median(v):6.1f} µs"
                        for role, v in case.cpu_us.items())
        print(f"  {case.name:<34} {statistics.median(case.rps):8.0f} req/s  "
              f"/ no hooks {ratio:5.2f}  CPU per request: {cpu}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
