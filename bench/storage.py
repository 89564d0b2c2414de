"""`python -m bench.storage [ROUNDS]`: what a request's storage costs, by backend, in one run.

One API with Tyk's built-in key auth; the key has a rate limit and a quota
(both high enough never to refuse), so every request makes three storage
calls: the session read, `rate_hit` and `quota_hit`.  Three instances, one
after the other, same load:

* `memory`: one gateway process, the storage in its own memory (the default);
* `store`: `coproc.gateway.processes: 2` on memory, i.e. the store process
  (gateway/storage/server.py) holds the state and the gateway processes reach
  it over its unix socket;
* `redis`: one gateway process on a redis-server started here (loopback TCP).

Reported per configuration: requests/s, p50/p99, and CPU µs per request (from
/proc, steadier than requests/s on a shared machine) of the gateway processes
(summed), of the storage process (store or redis-server), and in total.  The
store hop's cost per request is `store` total minus `memory` total.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil

from bench.load import Result, _parse_wrk
from bench.procs import HOST, Coproc, Server, stop_process

__all__ = ["main"]

SECRET = "bench-secret"  # noqa: S105 (bench.procs' throwaway instances use it)
SECONDS = 4
CONNECTIONS = 50
#: Never refused: the limits are counted, not enforced, so every request is served.
SESSION = {"rate": 1_000_000_000, "per": 1, "quota_max": 1_000_000_000,
           "quota_renewal_rate": 3600}


@dataclass
class Row:
    name: str
    rounds: list[dict[str, float]] = field(default_factory=list)

    def median(self, key: str) -> float:
        return statistics.median(r[key] for r in self.rounds)


def _api(target: str) -> dict[str, Any]:
    return {"api_id": "keyed", "name": "keyed", "use_keyless": False, "active": True,
            "auth": {"auth_header_name": "Authorization"},
            "proxy": {"listen_path": "/keyed/", "target_url": target,
                      "strip_listen_path": True}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _redis() -> Iterator[tuple[int, int]]:
    """(port, pid) of a throwaway redis-server (no persistence)."""
    if shutil.which("redis-server") is None:
        raise SystemExit("bench.storage needs redis-server on PATH")
    port, work = _free_port(), tempfile.mkdtemp(prefix="cp-redis-")
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", HOST, "--save", "",
                             "--appendonly", "no", "--dir", work],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while True:  # bounded by the deadline
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)  # polling a readiness condition against a deadline
        yield port, proc.pid
    finally:
        stop_process(proc)
        shutil.rmtree(work, ignore_errors=True)


def _add_key(inst: Coproc) -> str:
    key = f"bench-{uuid.uuid4().hex}"
    request = urllib.request.Request(  # noqa: S310 (our own loopback instance)
        f"{inst.url}/tyk/keys/{key}", data=json.dumps(SESSION).encode(), method="POST",
        headers={"X-Tyk-Authorization": SECRET, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
        resp.read()
    return key


def _processes(inst: Coproc) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """(gateway processes, store processes) among the instance's children."""
    gateways, stores = [], []
    for child in psutil.Process(inst.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            argv = child.cmdline()
            if "gateway.storage.server" in argv:
                stores.append(child)
            elif argv[1:3] == ["-m", "gateway"]:
                gateways.append(child)
    return gateways, stores


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def _wrk(url: str, key: str, seconds: float) -> Result:
    out = subprocess.run(["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s",
                          "--latency", "--timeout", "30s", "-H", f"Authorization: {key}", url],
                         capture_output=True, text=True, timeout=seconds + 60,
                         check=False).stdout
    return _parse_wrk(out)


def _measure(row: Row, inst: Coproc, storage: list[psutil.Process], rounds: int) -> None:
    key = _add_key(inst)
    url = f"{inst.url}/keyed/x"
    gateways, stores = _processes(inst)
    storage = storage + stores
    _wrk(url, key, 1)  # warm up
    for _ in range(rounds):
        g0, s0 = _cpu(gateways), _cpu(storage)
        result = _wrk(url, key, SECONDS)
        g1, s1 = _cpu(gateways), _cpu(storage)
        served = max(1, result.requests)
        if result.errors:
            raise RuntimeError(f"{row.name}: {result.errors} failed requests")
        gateway_us, storage_us = (g1 - g0) / served * 1e6, (s1 - s0) / served * 1e6
        row.rounds.append({"rps": result.rps, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
                           "gateway_us": gateway_us, "storage_us": storage_us,
                           "total_us": gateway_us + storage_us,
                           "gateways": len(gateways)})
        print(f"{row.name:7} {result.rps:7.0f} req/s  gateway {gateway_us:6.1f} µs  "
              f"storage {storage_us:6.1f} µs per request", flush=True)


def main(rounds: int = 3) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("bench.storage needs wrk on PATH")
    upstream = Server("upstream")
    rows: list[Row] = []
    try:
        apis = {"keyed": _api(upstream.url + "/")}
        with _redis() as (redis_port, redis_pid):
            configs: list[tuple[str, dict[str, Any], list[psutil.Process]]] = [
                ("memory", {}, []),
                ("store", {"coproc": {"gateway": {"processes": 2}}}, []),
                ("redis", {"storage": {"type": "redis", "host": HOST, "port": redis_port}},
                 [psutil.Process(redis_pid)]),
            ]
            for name, settings, storage in configs:
                row = Row(name)
                inst = Coproc(apis, {}, {"secret": SECRET, **settings})
                try:
                    _measure(row, inst, storage, rounds)
                finally:
                    inst.stop()
                rows.append(row)
    finally:
        upstream.stop()
    report: dict[str, Any] = {r.name: {k: round(r.median(k), 2) for k in r.rounds[0]}
                              for r in rows}
    memory, store = report["memory"], report["store"]
    report["store_hop_us"] = round(store["total_us"] - memory["total_us"], 1)
    print(_table(report))
    return report


def _table(report: dict[str, Any]) -> str:
    lines = ["| storage | gateway processes | req/s | p99 ms | gateway CPU µs/req "
             "| storage CPU µs/req | total CPU µs/req |", "|---|---|---|---|---|---|---|"]
    for name in ("memory", "store", "redis"):
        r = report[name]
        lines.append(f"| {name} | {int(r['gateways'])} | {r['rps']:.0f} | {r['p99_ms']:.1f} "
                     f"| {r['gateway_us']:.1f} | {r['storage_us']:.1f} | {r['total_us']:.1f} |")
    lines.append(f"\nthe store hop: {report['store_hop_us']:+.1f} µs of CPU per request "
                 "(store total - memory total; three storage calls per request)")
    return "\n".join(lines)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
