"""`python -m bench.processes [--rounds N] [--seconds S]`: N gateway processes vs 1.

One instance per variant, all running at once, measured in interleaved rounds:
`coproc.gateway.processes` 1, 2 and `auto` (the CPU count; left out when it is
2 already), each with no hooks and with one no-op pre hook.  For each round it
reads, from /proc, the CPU time of every gateway process and of the worker, and
from `coproc status` how many requests each gateway process served, then prints:

* requests/s, and the ratio to the 1-process instance of the same round;
* CPU µs per request of each gateway process (its CPU over its own requests):
  the figure that says whether being several costs anything per request, and
  the one that predicts a bigger machine (requests/s per core = 1e6 / µs);
* the worker's CPU µs per request (one worker serves every gateway process);
* how the requests spread over the processes.

On a 2-core machine wrk, the upstream, the worker and the gateways share the
cores, so 2 processes cannot show 2x; the CPU figures say what more cores give.

Saturated, two cores run wrk, the upstream, the worker, N gateways and their
ZeroMQ I/O threads: every one runnable all the time, each process pays for
being switched out and back in, and the more processes the more it pays.  And
the same load spread over 2 processes gives each one half of it: fewer
requests per event-loop turn, so each pays more of a turn's fixed cost.  So
the rounds are run twice: saturated (as many requests as the machine serves)
and paced (`--pause-ms`: each of wrk's connections waits after every response,
with `--paced-connections` connections *per gateway process*): each process
then gets the same offered load as the single one, below saturation, which
is what every process of a saturated machine with enough cores sees.  The
paced figures answer "does a request cost more because there are several
gateway processes?" without the machine's contention or the thinner load
per process in them.
Every other round runs the variants in reverse order.  Medians over the rounds;
nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from bench.load import run_load
from bench.procs import Coproc, Server, cpu_seconds
from bench.run import PLUGIN, _api, round_order

#: How long a gateway takes at most to report its counters (report_status: 1 s).
STATUS_LAG_S = 1.3


@dataclass
class Variant:
    label: str
    processes: int | str
    hook: bool
    pause_ms: int = 0
    connections: int = 0  # 0: the run's --connections
    coproc: Coproc | None = None
    rps: list[float] = field(default_factory=list)
    gateway_us: list[list[float]] = field(default_factory=list)  # per round, per process
    worker_us: list[float] = field(default_factory=list)
    spread: list[list[int]] = field(default_factory=list)

    @property
    def path(self) -> str:
        return "/hook/x" if self.hook else "/plain/x"


def _requests(coproc: Coproc) -> dict[int, int]:
    """Requests served so far by each gateway process, by pid."""
    return {g["pid"]: int((g.get("stats") or {}).get("requests", 0))
            for g in coproc.status().get("gateways", []) if g.get("pid")}


def _round(v: Variant, seconds: float, connections: int) -> None:
    assert v.coproc is not None
    gateways, worker = v.coproc.role_pids("gateway"), v.coproc.role_pids("worker")
    before_req = _requests(v.coproc)
    before = {pid: cpu_seconds(pid) for pid in [*gateways, *worker]}
    result = run_load(v.coproc.url + v.path, seconds=seconds,
                      connections=v.connections or connections, pause_ms=v.pause_ms)
    after = {pid: cpu_seconds(pid) for pid in [*gateways, *worker]}
    time.sleep(STATUS_LAG_S)  # the counters arrive with the next status report
    served = {pid: n - before_req.get(pid, 0) for pid, n in _requests(v.coproc).items()}
    per_process = [(after[pid] - before[pid]) / served[pid] * 1e6
                   for pid in gateways if served.get(pid)]
    total = sum(served.values()) or 1
    v.rps.append(result.rps)
    v.gateway_us.append(per_process)
    v.worker_us.append(sum(after[p] - before[p] for p in worker) / total * 1e6)
    v.spread.append([served.get(pid, 0) for pid in gateways])
    spread = "/".join(f"{100 * n / total:.0f}%" for n in v.spread[-1])
    print(f"  {v.label:<30} {result.rps:8.0f} req/s  gateway µs/req "
          f"{' '.join(f'{u:6.1f}' for u in per_process)}  worker µs/req "
          f"{v.worker_us[-1]:6.1f}  spread {spread}  errors {result.errors}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.processes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--pause-ms", type=int, default=20,
                        help="the paced rounds' wait per connection after each response "
                             "(0: no paced rounds)")
    parser.add_argument("--paced-connections", type=int, default=20,
                        help="the paced rounds' connections per gateway process")
    args = parser.parse_args(argv)
    cpus = os.cpu_count() or 1
    counts: list[int | str] = [1, 2] + (["auto"] if cpus != 2 else [])
    variants = [Variant(f"{n} process{'es' if n != 1 else ''}{' + hook' if hook else ''}",
                        n, hook) for hook in (False, True) for n in counts]
    paced = [Variant(v.label + " (paced)", v.processes, v.hook, args.pause_ms,
                     args.paced_connections * (cpus if v.processes == "auto" else int(v.processes)))
             for v in variants] if args.pause_ms else []
    upstream = Server("upstream")
    try:
        apis: dict[str, Any] = {"plain": _api("plain", upstream.url + "/"),
                                "hook": _api("hook", upstream.url + "/", pre=["NoopPre"])}
        for v in variants:
            v.coproc = Coproc(apis, {"bench/mw.py": PLUGIN},
                              {"coproc": {"gateway": {"processes": v.processes}}})
        for p, v in zip(paced, variants, strict=False):
            p.coproc = v.coproc  # the same instances, offered less
        for v in variants:  # warm up
            assert v.coproc is not None
            run_load(v.coproc.url + v.path, seconds=1, connections=args.connections)
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", flush=True)
            for v in round_order([*variants, *paced], r):
                _round(v, args.seconds, args.connections)
    finally:
        for v in variants:
            if v.coproc is not None:
                v.coproc.stop()
        upstream.stop()
    _report(variants, cpus, "saturated")
    if paced:
        _report(paced, cpus, f"paced: {args.paced_connections} connections per gateway "
                             f"process, {args.pause_ms} ms pause after each response")
    return 0


def _report(variants: list[Variant], cpus: int, how: str) -> None:
    print(f"\nmedians over the rounds ({cpus} CPUs; auto = {cpus}; {how}):")
    print(f"  {'variant':<30} {'req/s':>8} {'vs 1':>6} {'gateway µs/req (each)':>24} "
          f"{'vs 1':>6} {'worker µs/req':>14} {'vs 1':>6}")
    for hook in (False, True):
        group = [v for v in variants if v.hook is hook]
        base = group[0]
        base_us = statistics.median(statistics.mean(r) for r in base.gateway_us)
        base_worker = statistics.median(base.worker_us)
        for v in group:
            worker = statistics.median(v.worker_us)
            # Without hooks the worker only sends heartbeats: no ratio to speak of.
            worker_ratio = f"{worker / base_worker:6.2f}" if hook else f"{'-':>6}"
            ratio = statistics.median(a / b for a, b in zip(v.rps, base.rps, strict=True))
            each = [statistics.median(r[i] for r in v.gateway_us if len(r) > i)
                    for i in range(max(len(r) for r in v.gateway_us))]
            us_ratio = statistics.mean(each) / base_us
            print(f"  {v.label:<30} {statistics.median(v.rps):8.0f} {ratio:6.2f} "
                  f"{' '.join(f'{u:.1f}' for u in each):>24} {us_ratio:6.2f} "
                  f"{worker:14.1f} {worker_ratio}")
        per_core = 1e6 / base_us
        print(f"  -> one gateway process does at most {per_core:.0f} req/s per core here "
              f"({'with' if hook else 'without'} the hook); N processes on N free cores "
              f"scale with N while the worker keeps up "
              f"(worker µs/req above: {1e6 / statistics.median(group[-1].worker_us):.0f} "
              "calls/s per worker core)" if hook else
              f"  -> one gateway process does at most {per_core:.0f} req/s per core here; "
              "N processes on N free cores scale with N (no shared step without hooks)")


if __name__ == "__main__":
    raise SystemExit(main())
