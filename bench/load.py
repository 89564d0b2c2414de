"""Load generators: wrk when it is on PATH, else a bundled aiohttp client.

Both return the same `Result`: requests/s, p50/p99 latency in ms, errors.
`pause_ms` paces the load: each connection waits that long after every
response before its next request (wrk's `delay()`), so the offered rate is
about connections / (pause + latency) and stays below what the machine can
serve: CPU per request measured there is free of the contention that a
saturated machine adds (every process runnable, none idle).
The aiohttp generator runs in its own process (a loop per process), so it
competes for the same cores as wrk would, only less efficiently: compare
ratios within one run, never absolute figures across generators.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Result", "generator_name", "run_load"]


@dataclass(frozen=True, slots=True)
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def generator_name() -> str:
    return "wrk" if shutil.which("wrk") else "aiohttp"


def run_load(url: str, *, seconds: float, connections: int, body: bytes = b"",
             threads: int = 1, pause_ms: int = 0) -> Result:
    if shutil.which("wrk"):
        return _wrk(url, seconds, connections, body, threads, pause_ms)
    return _aiohttp(url, seconds, connections, body, pause_ms)


# -- wrk -----------------------------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _wrk(url: str, seconds: float, connections: int, body: bytes, threads: int,
         pause_ms: int) -> Result:
    with tempfile.TemporaryDirectory(prefix="cp-wrk-") as tmp:
        args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
                "--latency", "--timeout", "30s"]
        script = ""
        if body:
            # wrk sends the script's body with every request; Lua strings are binary-safe.
            (Path(tmp) / "body.bin").write_bytes(body)
            script += ('local f = io.open("' + str(Path(tmp) / "body.bin") + '", "rb")\n'
                       'wrk.method = "POST"\nwrk.body = f:read("*a")\nf:close()\n'
                       'wrk.headers["Content-Type"] = "application/octet-stream"\n')
        if pause_ms:
            script += f"function delay()\n  return {int(pause_ms)}\nend\n"
        if script:
            (Path(tmp) / "load.lua").write_text(script)
            args += ["-s", str(Path(tmp) / "load.lua")]
        out = subprocess.run([*args, url], capture_output=True, text=True,
                             timeout=seconds + 60, check=False).stdout
    return _parse_wrk(out)


def _parse_wrk(out: str) -> Result:
    def latency(pct: str) -> float:
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    if sock:
        errors += sum(int(x) for x in sock.groups())
    return Result(float(rps.group(1)) if rps else 0.0, latency("50"), latency("99"),
                  int(total.group(1)) if total else 0, errors)


# -- bundled aiohttp generator -----------------------------------------------------------

def _aiohttp(url: str, seconds: float, connections: int, body: bytes, pause_ms: int) -> Result:
    with tempfile.NamedTemporaryFile(prefix="cp-body-", delete=False) as f:
        f.write(body)
    try:
        proc = subprocess.run([sys.executable, "-m", "bench.load", url, str(seconds),
                               str(connections), f.name, str(pause_ms)],
                              capture_output=True, text=True, timeout=seconds + 60, check=False,
                              cwd=Path(__file__).resolve().parents[1])
    finally:
        Path(f.name).unlink(missing_ok=True)
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return Result(**data)


async def _drive(url: str, seconds: float, connections: int, body: bytes,
                 pause_ms: int = 0) -> Result:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.monotonic() < deadline:  # bounded by the run's duration
            started = time.perf_counter()
            try:
                if body:
                    async with session.post(url, data=body) as resp:
                        await resp.read()
                        ok = resp.status < 400
                else:
                    async with session.get(url) as resp:
                        await resp.read()
                        ok = resp.status < 400
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            latencies.append((time.perf_counter() - started) * 1000)
            errors += not ok
            if pause_ms:
                await asyncio.sleep(pause_ms / 1000)

    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.monotonic()
        await asyncio.gather(*(one(session) for _ in range(connections)))
        elapsed = time.monotonic() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else 0.0

    return Result(len(latencies) / elapsed, pct(0.5), pct(0.99), len(latencies), errors)


def main(argv: list[str]) -> int:
    url, seconds, connections, body_path, pause_ms = argv
    body = Path(body_path).read_bytes()
    result = asyncio.run(_drive(url, float(seconds), int(connections), body, int(pause_ms)))
    print(json.dumps(result.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
