"""`python -m bench.profile [SCENARIO]`: where the time goes, per process, under load.

Starts the upstream and one Coproc instance (scenario `pre` by default: one
no-op pre hook; `apre`: the same as `async def`; `plain`: no hooks; `three`:
pre+post+response; `body`: 1 MiB bodies), drives it with the bench's load
generator and samples the gateway and the worker with py-spy (`pip install
py-spy`; needs ptrace rights), then prints the hottest functions of each.
Output: bench/results/profile-*.txt.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from bench.load import run_load
from bench.procs import Coproc, Server
from bench.run import MIB, PLUGIN, RESULTS, _api

SCENARIOS = {
    "plain": ({}, b"", 50),
    "pre": ({"pre": ["NoopPre"]}, b"", 50),
    "apre": ({"pre": ["AsyncNoopPre"]}, b"", 50),
    "three": ({"pre": ["GreetPre"], "post": ["NoopPost"], "response": ["NoopResponse"]},
              b"", 50),
    "body": ({"pre": ["ReadBody"]}, b"a" * MIB, 8),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("scenario", nargs="?", default="pre", choices=sorted(SCENARIOS))
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    phases, body, connections = SCENARIOS[args.scenario]
    RESULTS.mkdir(exist_ok=True)
    upstream = Server("upstream")
    try:
        inst = Coproc({"api": _api("api", upstream.url + "/", **phases)},
                      {"bench/mw.py": PLUGIN}, {})
        try:
            pids = inst.pids()
            outs = {role: RESULTS / f"profile-{args.scenario}-{role}.txt" for role in pids}
            spies = [subprocess.Popen([spy, "record", "-p", str(pid), "-d", str(args.seconds),
                                       "-r", "200", "-f", "raw", "-o", str(outs[role]),
                                       "--nonblocking"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for role, pid in pids.items()]
            result: list[object] = []
            load = threading.Thread(target=lambda: result.append(run_load(
                inst.url + "/api/x", seconds=args.seconds, connections=connections,
                body=body)))
            load.start()
            for proc in spies:
                proc.wait(timeout=args.seconds + 60)
            load.join(args.seconds + 60)
            print(f"load: {result[0] if result else '?'}")
            for role, path in outs.items():
                print(f"\n== {role}: hottest functions (self samples) ==")
                print(_summary(path, args.top))
        finally:
            inst.stop()
    finally:
        upstream.stop()
    return 0


def _summary(path: Path, top: int) -> str:
    """Self and inclusive sample counts per function from py-spy's raw (folded) output."""
    if not path.exists():
        return "  (no samples: py-spy could not attach)"
    self_counts: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf = frames[-1]
        self_counts[leaf] = self_counts.get(leaf, 0) + n
        for frame in set(frames):
            incl[frame] = incl.get(frame, 0) + n
    rows = sorted(self_counts.items(), key=lambda kv: -kv[1])[:top]
    out = [f"  {total} samples"]
    out += [f"  self {n / total:6.1%}  incl {incl[f] / total:6.1%}  {f}" for f, n in rows]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
