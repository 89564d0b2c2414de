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

Last, the same with a real analytics plugin in the worker: 5,000 requests (50
at a time) to an instance whose API has an `analytics_plugin` that sleeps
50 ms per record, and to one without it; the p99 of the responses is printed
as a ratio (within noise of 1: the plugin runs after the responses, on its own
thread), with the records the full queue dropped.  `--plugin-only` runs just this.
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

SLOW_ANALYTICS = '''
import time


def slow(record):
    time.sleep(0.05)  # an analytics plugin that takes 50 ms per record
    record["tags"].append("slow-plugin")
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


async def _count_load(url: str, count: int, connections: int) -> list[float]:
    """Latencies (ms) of `count` GETs, `connections` at a time."""
    import aiohttp

    latencies: list[float] = []
    left = iter(range(count))

    async def client(session: aiohttp.ClientSession) -> None:
        for _ in left:
            started = time.perf_counter()
            async with session.get(url) as resp:
                await resp.read()
            latencies.append((time.perf_counter() - started) * 1000)

    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections)) as session:
        await asyncio.gather(*(client(session) for _ in range(connections)))
    return latencies


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _plugin_runs(rounds: int, count: int, connections: int) -> None:
    settings = {"enable_analytics": True,
                "analytics_config": {"records_buffer_size": 1000, "pool_size": 50},
                "coproc": {"metrics": {"listen_port": 0}, "analytics": {"sink": "file"}}}
    with contextlib.ExitStack() as stack:
        upstream = Server("upstream")
        stack.callback(upstream.stop)
        plain = _api(upstream.url + "/")
        slow = {**plain, "analytics_plugin": {"enable": True, "plugin_path": "bench/ana.py",
                                              "func_name": "slow"}}
        plugins = {"bench/mw.py": PLUGIN, "bench/ana.py": SLOW_ANALYTICS}
        without = Coproc({"a": plain}, plugins, settings)
        stack.callback(without.stop)
        with_plugin = Coproc({"a": slow}, plugins, settings)
        stack.callback(with_plugin.stop)
        ratios = []
        for n in range(rounds):
            base = asyncio.run(_count_load(without.url + "/a/x", count, connections))
            got = asyncio.run(_count_load(with_plugin.url + "/a/x", count, connections))
            ratio = _p99(got) / _p99(base)
            ratios.append(ratio)
            print(f"  round {n + 1}: p99 without plugin {_p99(base):.2f} ms, with a 50 ms "
                  f"plugin {_p99(got):.2f} ms: x{ratio:.3f}", flush=True)
        print(f"\n{count:,} requests, analytics plugin sleeping 50 ms per record: "
              f"p99 latency x{statistics.median(ratios):.3f} (median of {rounds})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.analytics", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s")
    parser.add_argument("--plugin-only", action="store_true",
                        help="only the analytics plugin run (5,000 requests)")
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args(argv)
    if args.plugin_only:
        _plugin_runs(args.rounds, args.requests, args.connections)
        return 0
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
    _plugin_runs(args.rounds, args.requests, args.connections)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
