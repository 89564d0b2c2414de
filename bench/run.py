"""`python -m bench`: one run, one table of ratios, one JSON file under bench/results/.

What is measured (all on 127.0.0.1, against the same minimal upstream):

* a bare aiohttp reverse proxy, and the same with an aiohttp middleware that
  sets one header (the in-process ceiling: what a user writes without isolation);
* Coproc with no hooks, with one no-op pre hook (also as an `async def` hook,
  which runs on the worker's event loop instead of its call threads, as a Lua hook,
  and through the `grpc` driver to a no-op Tyk gRPC plugin server), and with
  pre+post+response, its hooks merged into 2 round trips (the default) and
  one CALL per hook (`coproc.hooks.merge: false`, 3 round trips);
* 1 MiB and 10 MiB POST bodies through a pre hook that reads the body, with
  the shared-memory arena and with inline transfer (threshold set out of reach);
* the hook round trip as the gateway times it (p50/p99 µs, from GET /hello),
  on its own instances driven by one connection (the round trip itself, not
  the queueing of a saturated run), and the gateway's and worker's peak RSS
  under load.

The scenarios run in `--rounds` interleaved rounds, every other one in reverse
order.  Each ratio is computed within a round (its two scenarios ran seconds
apart, those of the targets side by side) and the median over the rounds is
reported, as are the median req/s: the machine may be shared, and
neighbours' load moves absolute figures far more than it moves ratios.
Targets are printed next to the figures; nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import statistics
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from bench.floor import round_trip_floor_us
from bench.load import Result, generator_name, run_load
from bench.procs import Coproc, Server

RESULTS = Path(__file__).resolve().parent / "results"
MIB = 1024 * 1024
INLINE_THRESHOLD = 1 << 40  # no body is that large: everything travels inline

PLUGIN = '''
from tyk.decorators import *


@Hook
def NoopPre(request, session, spec):
    return request, session


@Hook
async def AsyncNoopPre(request, session, spec):
    return request, session


@Hook
def GreetPre(request, session, spec):
    request.add_header("X-Coproc-Greeting", "hello from a hook")
    return request, session


@Hook
def NoopPost(request, session, spec):
    return request, session


@Hook
def NoopResponse(request, response, session, metadata, spec):
    return response


@Hook
def ReadBody(request, session, spec):
    request.add_header("X-Body-Len", str(len(request.object.raw_body)))
    return request, session
'''

LUA_PLUGIN = """
function NoopLua(request, session, spec)
  return request, session
end
"""

JS_PLUGIN = """
var noopJs = new TykJS.TykMiddleware.NewMiddleware({});
noopJs.NewProcessRequest(function(request, session, spec) {
  return noopJs.ReturnData(request, {});
});
"""


def _api(api_id: str, target: str, **phases: list[str]) -> dict[str, Any]:
    middleware: dict[str, Any] = {"driver": "python"}
    for phase, names in phases.items():
        middleware[phase] = [{"name": n, "path": "bench/mw.py"} for n in names]
    return {"api_id": api_id, "name": api_id, "use_keyless": True, "active": True,
            "proxy": {"listen_path": f"/{api_id}/", "target_url": target,
                      "strip_listen_path": True},
            "custom_middleware": middleware}


def _grpc_api(api_id: str, target: str) -> dict[str, Any]:
    """One no-op pre hook run by the gRPC plugin server (bench/servers.py grpc)."""
    api = _api(api_id, target)
    api["custom_middleware"] = {"driver": "grpc", "pre": [{"name": "NoopPre"}]}
    return api


def _lua_api(api_id: str, target: str, **phases: list[str]) -> dict[str, Any]:
    definition = _api(api_id, target, **phases)
    middleware = definition["custom_middleware"]
    middleware["driver"] = "lua"
    for phase in phases:
        middleware[phase] = [{**h, "path": "bench/mw.lua"} for h in middleware[phase]]
    return definition


def _js_api(api_id: str, target: str) -> dict[str, Any]:
    """One no-op JSVM (driver otto) pre hook."""
    api = _api(api_id, target)
    api["custom_middleware"] = {"driver": "otto",
                                "pre": [{"name": "noopJs", "path": "bench/mw.js"}]}
    return api


@dataclass
class Scenario:
    key: str
    label: str
    url: Callable[[], str]
    connections: int
    body: bytes = b""
    seconds_factor: float = 1.0
    coproc: Coproc | None = None
    rounds: list[Result] = field(default_factory=list)
    rss: dict[str, int] = field(default_factory=dict)

    def median(self) -> Result:
        """The round with the median req/s (its latencies with it)."""
        ranked = sorted(self.rounds, key=lambda r: r.rps)
        return ranked[(len(ranked) - 1) // 2]


@contextlib.contextmanager
def _rss_sampler(pids: dict[str, int], out: dict[str, int]) -> Iterator[None]:
    """Peak RSS per role while the load runs (sampled every 200 ms)."""
    stop = threading.Event()

    def sample() -> None:
        procs = {}
        for role, pid in pids.items():
            with contextlib.suppress(psutil.Error):
                procs[role] = psutil.Process(pid)
        while not stop.wait(0.2):
            for role, proc in procs.items():
                with contextlib.suppress(psutil.Error):
                    out[role] = max(out.get(role, 0), proc.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def _measure(s: Scenario, seconds: float, warmup: float) -> None:
    duration = max(1.0, seconds * s.seconds_factor)
    if warmup:
        run_load(s.url(), seconds=warmup, connections=s.connections, body=s.body)
    pids = s.coproc.pids() if s.coproc else {}
    with _rss_sampler(pids, s.rss):
        result = run_load(s.url(), seconds=duration, connections=s.connections, body=s.body)
    s.rounds.append(result)
    print(f"  {s.label:<44} {result.rps:9.0f} rps  p50 {result.p50_ms:7.2f} ms  "
          f"p99 {result.p99_ms:7.2f} ms  errors {result.errors}", flush=True)


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _verdict(value: float, target: float, higher: bool = True) -> str:
    ok = value >= target if higher else value <= target
    return "meets" if ok else "MISSES"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured time per round")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured load first")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per scenario")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s (a smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds, args.warmup = 2.0, 1, 0.5
    started = datetime.datetime.now(datetime.UTC)
    print(f"load generator: {generator_name()}, {args.connections} connections, "
          f"{args.rounds} round(s) of {args.seconds:.0f} s", flush=True)
    stack = contextlib.ExitStack()
    with stack:
        upstream = Server("upstream")
        stack.callback(upstream.stop)
        up = upstream.url + "/"
        bare = Server("proxy", "--target", upstream.url)
        stack.callback(bare.stop)
        middleware = Server("proxy", "--target", upstream.url, "--middleware")
        stack.callback(middleware.stop)

        def coproc(apis: dict[str, Any], merge: bool = True, **ipc: Any) -> Coproc:
            settings: dict[str, Any] = {"hooks": {"merge": merge}}
            if ipc:
                settings["ipc"] = ipc
            inst = Coproc(apis, {"bench/mw.py": PLUGIN, "bench/mw.lua": LUA_PLUGIN,
                                 "bench/mw.js": JS_PLUGIN},
                          {"enable_jsvm": True, "coproc": settings})
            stack.callback(inst.stop)
            return inst

        grpc_server = Server("grpc")
        stack.callback(grpc_server.stop)
        plain = coproc({"plain": _api("plain", up)})
        gpre = Coproc({"gpre": _grpc_api("gpre", up)}, {}, {"coprocess_options": {
            "coprocess_grpc_server": f"tcp://127.0.0.1:{grpc_server.port}"}})
        stack.callback(gpre.stop)
        pre = coproc({"pre": _api("pre", up, pre=["NoopPre"])})
        apre = coproc({"apre": _api("apre", up, pre=["AsyncNoopPre"])})
        lua = coproc({"lua": _lua_api("lua", up, pre=["NoopLua"])})
        js = coproc({"js": _js_api("js", up)})
        three_api = _api("three", up, pre=["GreetPre"], post=["NoopPost"],
                         response=["NoopResponse"])
        three = coproc({"three": three_api})
        three_apart = coproc({"three": three_api}, merge=False)
        probes = {"pre_noop": coproc({"pre": _api("pre", up, pre=["NoopPre"])}),
                  "pre_async_noop": coproc({"pre": _api("pre", up, pre=["AsyncNoopPre"])})}
        # An instance per body size: memory a 10 MiB round leaves behind must not count
        # as the peak of a 1 MiB one (every other round runs them in reverse).
        shm = coproc({"body": _api("body", up, pre=["ReadBody"])})
        inline = coproc({"body": _api("body", up, pre=["ReadBody"])},
                        shm_threshold_bytes=INLINE_THRESHOLD)
        shm10 = coproc({"body": _api("body", up, pre=["ReadBody"])})
        inline10 = coproc({"body": _api("body", up, pre=["ReadBody"])},
                          shm_threshold_bytes=INLINE_THRESHOLD)
        c = args.connections
        scenarios = [
            Scenario("inprocess_middleware", "aiohttp proxy + in-process middleware",
                     lambda: middleware.url + "/x", c),
            Scenario("pre_noop", "coproc, 1 no-op pre hook", lambda: pre.url + "/pre/x", c,
                     coproc=pre),
            Scenario("no_hooks", "coproc, no hooks", lambda: plain.url + "/plain/x", c,
                     coproc=plain),
            Scenario("pre_post_response", "coproc, pre+post+response hooks",
                     lambda: three.url + "/three/x", c, coproc=three),
            Scenario("bare_proxy", "bare aiohttp reverse proxy", lambda: bare.url + "/x", c),
            Scenario("pre_post_response_apart", "coproc, pre+post+response, not merged",
                     lambda: three_apart.url + "/three/x", c, coproc=three_apart),
            Scenario("pre_async_noop", "coproc, 1 no-op async pre hook",
                     lambda: apre.url + "/apre/x", c, coproc=apre),
            Scenario("pre_noop_grpc", "coproc, 1 no-op pre hook via gRPC",
                     lambda: gpre.url + "/gpre/x", c, coproc=gpre),
            Scenario("lua_noop", "coproc, 1 no-op Lua pre hook", lambda: lua.url + "/lua/x", c,
                     coproc=lua),
            Scenario("jsvm_noop", "coproc, 1 no-op JSVM pre hook", lambda: js.url + "/js/x",
                     c, coproc=js),
            Scenario("body_1mib_shm", "1 MiB body, body-reading pre hook, shm",
                     lambda: shm.url + "/body/x", 8, b"a" * MIB, coproc=shm),
            Scenario("body_1mib_inline", "1 MiB body, body-reading pre hook, inline",
                     lambda: inline.url + "/body/x", 8, b"a" * MIB, coproc=inline),
            Scenario("body_10mib_shm", "10 MiB body, body-reading pre hook, shm",
                     lambda: shm10.url + "/body/x", 2, b"a" * 10 * MIB, 0.7, coproc=shm10),
            Scenario("body_10mib_inline", "10 MiB body, body-reading pre hook, inline",
                     lambda: inline10.url + "/body/x", 2, b"a" * 10 * MIB, 0.7,
                     coproc=inline10),
        ]
        for round_no in range(args.rounds):
            print(f"round {round_no + 1}/{args.rounds}", flush=True)
            for s in round_order(scenarios, round_no):
                _measure(s, args.seconds, args.warmup)
        print("hook round trip, 1 connection", flush=True)
        latency = {}
        for name, inst in probes.items():
            run_load(inst.url + "/pre/x", seconds=max(2.0, args.seconds), connections=1)
            latency[name] = inst.hello().get("worker", {}).get("hook_latency_us", {})
        latency.update({f"{name} (under load)": inst.hello().get("worker", {}).get(
            "hook_latency_us", {}) for name, inst in (("pre_noop", pre), ("body_shm", shm),
                                                      ("body_inline", inline))})
        shm_stats: dict[str, Any] = {"bodies": 0, "fallback": 0}  # both shm instances'
        for inst in (shm, shm10):
            arena = inst.hello().get("worker", {}).get("shm", {})
            for counter in shm_stats:
                shm_stats[counter] += int(arena.get(counter, 0))
    print("round-trip floor of this machine (two blocking processes)", flush=True)
    floor = round_trip_floor_us()
    report = _report(scenarios, latency, shm_stats, floor, args, started)
    print(_table(report))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nresults written to {out}")
    return 0


T = TypeVar("T")


def round_order(items: list[T], round_no: int) -> list[T]:
    """The order round `round_no` measures `items` in: every other round backwards,
    so that a drift of the machine's load over a round favours neither side of a
    ratio (`main` also lists the two scenarios of each target ratio side by side)."""
    return items if round_no % 2 == 0 else items[::-1]


def _report(scenarios: list[Scenario], latency: dict[str, Any], shm_stats: dict[str, Any],
            floor: dict[str, float], args: argparse.Namespace,
            started: datetime.datetime) -> dict[str, Any]:
    by = {s.key: s for s in scenarios}
    pairs = {
        "no_hooks_vs_bare_proxy": ("no_hooks", "bare_proxy"),
        "pre_noop_vs_no_hooks": ("pre_noop", "no_hooks"),
        "pre_async_noop_vs_no_hooks": ("pre_async_noop", "no_hooks"),
        "pre_noop_grpc_vs_no_hooks": ("pre_noop_grpc", "no_hooks"),
        "lua_noop_vs_no_hooks": ("lua_noop", "no_hooks"),
        "jsvm_noop_vs_no_hooks": ("jsvm_noop", "no_hooks"),
        "pre_post_response_vs_no_hooks": ("pre_post_response", "no_hooks"),
        "pre_post_response_apart_vs_no_hooks": ("pre_post_response_apart", "no_hooks"),
        "pre_noop_vs_inprocess_middleware": ("pre_noop", "inprocess_middleware"),
        "body_1mib_shm_vs_inline": ("body_1mib_shm", "body_1mib_inline"),
        "body_10mib_shm_vs_inline": ("body_10mib_shm", "body_10mib_inline"),
    }
    per_round = {name: [_ratio(x.rps, y.rps) for x, y in zip(by[a].rounds, by[b].rounds,
                                                               strict=True)]
                 for name, (a, b) in pairs.items()}
    ratios = {name: statistics.median(values) for name, values in per_round.items()}
    return {
        "started": started.isoformat(),
        "machine": {"cpus": psutil.cpu_count(), "python": sys.version.split()[0],
                    "platform": platform.platform()},
        "generator": generator_name(),
        "options": vars(args),
        "scenarios": {k: {"label": s.label, "connections": s.connections,
                          "body_bytes": len(s.body), "median": s.median().as_dict(),
                          "rounds": [r.as_dict() for r in s.rounds],
                          "peak_rss_bytes": s.rss} for k, s in by.items()},
        "ratios": ratios,
        "ratios_per_round": per_round,
        "hook_latency_us": latency,
        "round_trip_floor_us": floor,
        "shm": shm_stats,
    }


def _table(report: dict[str, Any]) -> str:
    sc, ratios, lat = report["scenarios"], report["ratios"], report["hook_latency_us"]
    lines = ["", f"{'scenario':<46}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
                 f"{'gw RSS':>9}{'wk RSS':>9}", "-" * 91]
    for s in sc.values():
        mid, rss = s["median"], s["peak_rss_bytes"]
        mem = "".join(f"{rss[r] / MIB:8.0f}M" if r in rss else f"{'':>9}"
                      for r in ("gateway", "worker"))
        lines.append(f"{s['label']:<46}{mid['rps']:9.0f}{mid['p50_ms']:9.2f}"
                     f"{mid['p99_ms']:9.2f}{mem}")
    pre = lat.get("pre_noop", {})
    apre = lat.get("pre_async_noop", {})
    checks = [
        ("no-op pre hook / no hooks", ratios["pre_noop_vs_no_hooks"], ">= 0.75", 0.75, True),
        ("no-op async pre hook / no hooks", ratios["pre_async_noop_vs_no_hooks"], "", None,
         True),
        ("no-op pre hook via gRPC / no hooks", ratios["pre_noop_grpc_vs_no_hooks"], "", None,
         True),
        ("no-op Lua pre hook / no hooks", ratios["lua_noop_vs_no_hooks"], "", None, True),
        ("no-op JSVM pre hook / no hooks", ratios["jsvm_noop_vs_no_hooks"], "", None, True),
        ("pre+post+response / no hooks", ratios["pre_post_response_vs_no_hooks"], ">= 0.65",
         0.65, True),
        ("the same, not merged / no hooks", ratios["pre_post_response_apart_vs_no_hooks"], "",
         None, True),
        ("no hooks / bare aiohttp proxy", ratios["no_hooks_vs_bare_proxy"], ">= 0.80", 0.80,
         True),
        ("no-op pre hook / in-process middleware", ratios["pre_noop_vs_inprocess_middleware"],
         "(ceiling)", None, True),
        ("1 MiB body: shm / inline", ratios["body_1mib_shm_vs_inline"], ">= 3.0", 3.0, True),
        ("10 MiB body: shm / inline", ratios["body_10mib_shm_vs_inline"], "", None, True),
        ("hook round trip p50 (µs, no-op pre)", float(pre.get("p50", 0)), "<= 200", 200.0,
         False),
        ("hook round trip p50 (µs, async no-op pre)", float(apre.get("p50", 0)), "<= 200",
         200.0, False),
    ]
    lines += ["", f"{'ratio (median of per-round ratios)':<46}{'measured':>10}  "
                  f"{'target':<10}", "-" * 70]
    for name, value, target, bound, higher in checks:
        verdict = _verdict(value, bound, higher) if bound is not None else ""
        lines.append(f"{name:<46}{value:10.2f}  {target:<10}{verdict}")
    lines += ["", "hook round trip measured inside the gateway (µs):"]
    for name, summary in lat.items():
        if summary:
            lines.append(f"  {name:<30} p50 {summary['p50']:>6}  p90 {summary['p90']:>6}  "
                         f"p99 {summary['p99']:>6}  ({summary['count']} calls)")
    floor = report["round_trip_floor_us"]
    lines.append(f"  floor: ZeroMQ ipc echo p50 {floor['zmq_ipc']:.0f}, Unix socketpair echo p50 "
                 f"{floor['unix_socketpair']:.0f} (two blocking processes, no Coproc code)")
    shm = report["shm"]
    if shm:
        lines.append(f"shm arena: {shm.get('bodies', 0)} bodies via shared memory, "
                     f"{shm.get('fallback', 0)} inline fallbacks (arena full)")
    return "\n".join(lines)
