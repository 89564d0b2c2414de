"""`python -m bench.analytics`: what metrics and analytics cost a request, as ratios.

Three instances, the same API with one no-op pre hook, driven in interleaved
rounds by the same load generator:

* off: `coproc.metrics.enabled: false`, `enable_analytics: false` (the gateway
  as it was before either existed);
* metrics: the Prometheus instrumentation only;
* metrics + analytics: every request also gives a record to the file sink.

Then, in this process, the property that a slow consumer never delays a
request: a pipeline whose transform (where a worker's analytics plugin will
sit) sleeps 50 ms per batch takes 5,000 submissions; the p99 time of one
`submit` is printed, and the drop count (which moves only once the queue is
full).  Ratios are within one run; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from typing import Any

from bench.load import Result, generator_name, run_load
from bench.procs import Coproc, Server
from config.analytics import AnalyticsConfig
from gateway.analytics.pipeline import Pipeline
from gateway.analytics.record import Exchange, Record, RecordSpec

PLUGIN = '''
from tyk.decorators import *


@Hook
def NoopPre(request, session, spec):
    return request, session
'''

SCENARIOS: dict[str, dict[str, Any]] = {
    "off": {"enable_analytics": False, "coproc": {"metrics": {"enabled": False}}},
    "metrics": {"enable_analytics": False, "coproc": {"metrics": {"listen_port": 0}}},
    "metrics+analytics": {"enable_analytics": True,
                          "coproc": {"metrics": {"listen_port": 0},
                                     "analytics": {"sink": "file"}}},
}


def _api(target: str) -> dict[str, Any]:
    return {"api_id": "a", "name": "a", "use_keyless": True, "active": True,
            "proxy": {"listen_path": "/a/", "target_url": target, "strip_listen_path": True},
            "custom_middleware": {"driver": "python",
                                  "pre": [{"name": "NoopPre", "path": "bench/mw.py"}]}}


def _gateway_runs(args: argparse.Namespace) -> dict[str, list[Result]]:
    results: dict[str, list[Result]] = {name: [] for name in SCENARIOS}
    with contextlib.ExitStack() as stack:
        upstream = Server("upstream")
        stack.callback(upstream.stop)
        instances = {}
        for name, settings in SCENARIOS.items():
            inst = Coproc({"a": _api(upstream.url + "/")}, {"bench/mw.py": PLUGIN}, settings)
            stack.callback(inst.stop)
            instances[name] = inst
        for n in range(args.rounds):
            print(f"round {n + 1}/{args.rounds}", flush=True)
            for name, inst in instances.items():
                run_load(inst.url + "/a/x", seconds=args.warmup, connections=args.connections)
                got = run_load(inst.url + "/a/x", seconds=args.seconds,
                               connections=args.connections)
                results[name].append(got)
                print(f"  {name:<20} {got.rps:9.0f} rps  p50 {got.p50_ms:7.2f} ms  "
                      f"p99 {got.p99_ms:7.2f} ms  errors {got.errors}", flush=True)
    return results


class _NullSink:
    async def write(self, records: list[Record]) -> None:
        return None

    async def close(self) -> None:
        return None


async def _slow_consumer(count: int, rate: float) -> dict[str, Any]:
    async def slow(records: list[Record]) -> list[Record]:
        await asyncio.sleep(0.05)  # an analytics plugin that takes 50 ms
        return records

    cfg = AnalyticsConfig(enabled=True, records_buffer_size=1000, pool_size=50,
                          flush_interval_ms=50)
    pipeline = Pipeline(cfg, _NullSink(), slow)
    spec = RecordSpec("a", "a", "o", "/a/", "up:80")
    task = asyncio.create_task(pipeline.run())
    costs = []
    try:
        for n in range(count):
            ex = Exchange(time.perf_counter_ns(), method="GET", path="/a/x", status=200)
            started = time.perf_counter_ns()
            pipeline.submit(spec, ex, time.perf_counter_ns())
            costs.append(time.perf_counter_ns() - started)
            if n % 50 == 49:
                await asyncio.sleep(50 / rate)  # requests arrive in bursts of 50
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pipeline.close()
    costs.sort()
    return {"submit_p50_us": costs[len(costs) // 2] / 1000,
            "submit_p99_us": costs[int(len(costs) * 0.99)] / 1000,
            "written": pipeline.written, "dropped": pipeline.dropped}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.analytics", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds, args.warmup = 2.0, 1, 0.5
    print(f"load generator: {generator_name()}, {args.connections} connections", flush=True)
    results = _gateway_runs(args)
    off = results["off"]
    print("\nratios to 'off' (median over rounds, each ratio within its round):")
    for name in ("metrics", "metrics+analytics"):
        rps = statistics.median(r.rps / o.rps for r, o in zip(results[name], off, strict=True))
        p99 = statistics.median(r.p99_ms / o.p99_ms
                                for r, o in zip(results[name], off, strict=True))
        print(f"  {name:<20} throughput x{rps:.3f}   p99 latency x{p99:.3f}")
    slow = asyncio.run(_slow_consumer(5000, rate=5000.0))
    print("\n5,000 records, analytics transform sleeping 50 ms per batch:")
    print(f"  submit p50 {slow['submit_p50_us']:.2f} us, p99 {slow['submit_p99_us']:.2f} us; "
          f"written {slow['written']}, dropped {slow['dropped']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
