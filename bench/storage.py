"""`python -m bench.storage [ROUNDS] [--auth-check]`: what a request's storage costs, by
backend, in one run.

One API with Tyk's built-in key auth; the key has a rate limit and a quota
(both high enough never to refuse), so every request makes three storage
calls: the session read, `rate_hit` and `quota_hit`.  With `--auth-check` the
API is protected by a Python `auth_check` plugin instead (Tyk's coprocess
auth: the hook returns a session with the same rate limit and quota, and its
token in the metadata), so each request also makes the hook's round trip.
Three instances, one after the other, same load:

* `memory`: one gateway process, the storage in its own memory (the default);
* `store`: `coproc.gateway.processes: 2` on memory, i.e. the store process
  (gateway/storage/server.py) holds the state and the gateway processes reach
  it over its unix socket;
* `redis`: one gateway process on a redis-server started here (loopback TCP).

The three run side by side and are loaded in interleaved rounds (each round
sees the same machine).  Reported per configuration: requests/s, p50/p99, and
CPU µs per request (from /proc, steadier than requests/s on a shared machine)
of the gateway processes (summed), of the storage process (store or
redis-server), and in total; the store hop is the median over rounds of
`store` total minus `memory` total.  First, the same three calls without HTTP
(this process against MemoryStorage, then against a store process): the hop's
CPU with nothing else around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
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
from pathlib import Path
from typing import Any

import psutil

from bench.load import Result, _parse_wrk
from bench.procs import HOST, Coproc, Server, cpu_seconds, stop_process
from gateway.storage import Storage

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


#: The `auth_check` plugin of `--auth-check`: every key is valid, with SESSION's limits.
AUTH_PLUGIN = f'''
from tyk.decorators import *


@Hook
def BenchAuth(request, session, metadata, spec):
    key = request.get_header("Authorization")
    if key:
        session.rate = {SESSION["rate"]}.0
        session.per = {SESSION["per"]}.0
        session.quota_max = {SESSION["quota_max"]}
        session.quota_renewal_rate = {SESSION["quota_renewal_rate"]}
        metadata["token"] = key
    return request, session, metadata
'''


def _api(target: str, auth_check: bool = False) -> dict[str, Any]:
    api: dict[str, Any] = {
        "api_id": "keyed", "name": "keyed", "use_keyless": False, "active": True,
        "auth": {"auth_header_name": "Authorization"},
        "proxy": {"listen_path": "/keyed/", "target_url": target, "strip_listen_path": True}}
    if auth_check:
        api["enable_coprocess_auth"] = True
        api["custom_middleware"] = {"driver": "python", "auth_check": {
            "name": "BenchAuth", "path": "bench/auth.py"}}
    return api


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
        f"{inst.url}/tyk/keys/{key}", method="POST",
        data=json.dumps({**SESSION, "access_rights": {"keyed": {"api_id": "keyed"}}}).encode(),
        headers={"X-Tyk-Authorization": SECRET, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
        resp.read()
    return key


def _wrk(url: str, key: str, seconds: float) -> Result:
    out = subprocess.run(["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s",
                          "--latency", "--timeout", "30s", "-H", f"Authorization: {key}", url],
                         capture_output=True, text=True, timeout=seconds + 60,
                         check=False).stdout
    return _parse_wrk(out)


@dataclass
class Target:
    """One running configuration: its instance, key, URL and processes."""

    row: Row
    inst: Coproc
    url: str
    key: str
    gateways: list[psutil.Process]
    storage: list[psutil.Process]


def _target(name: str, inst: Coproc, storage: list[psutil.Process], auth_check: bool
            ) -> Target:
    gateways = [psutil.Process(pid) for pid in inst.role_pids("gateway")]
    stores = [psutil.Process(pid) for pid in inst.role_pids("gateway.storage.server")]
    key = f"bench-{uuid.uuid4().hex}" if auth_check else _add_key(inst)  # the plugin's
    return Target(Row(name), inst, f"{inst.url}/keyed/x", key, gateways, storage + stores)


def _measure(t: Target) -> None:
    g0, s0 = cpu_seconds(*t.gateways), cpu_seconds(*t.storage)
    result = _wrk(t.url, t.key, SECONDS)
    g1, s1 = cpu_seconds(*t.gateways), cpu_seconds(*t.storage)
    if result.errors or not result.requests:
        raise RuntimeError(f"{t.row.name}: {result.errors} failed of {result.requests}")
    gateway_us = (g1 - g0) / result.requests * 1e6
    storage_us = (s1 - s0) / result.requests * 1e6
    t.row.rounds.append({"rps": result.rps, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
                         "gateway_us": gateway_us, "storage_us": storage_us,
                         "total_us": gateway_us + storage_us, "gateways": len(t.gateways)})
    print(f"{t.row.name:7} {result.rps:7.0f} req/s  gateway {gateway_us:6.1f} µs  "
          f"storage {storage_us:6.1f} µs per request", flush=True)


async def _calls(storage: Storage, requests: int) -> None:
    """What the built-in key auth asks per request, 50 requests at a time."""
    async def one() -> None:
        await storage.get("apikey-bench")
        await storage.rate_hit("rate-bench", 1_000_000_000, 1)
        await storage.quota_hit("quota-bench", 1_000_000_000, 3600)

    for _ in range(requests // CONNECTIONS):
        await asyncio.gather(*(one() for _ in range(CONNECTIONS)))


def _calls_alone(requests: int = 20_000) -> dict[str, float]:
    """The same three calls without HTTP: this process's CPU per request on the
    in-process memory storage and through a store process, and the store's."""
    from gateway.storage import MemoryStorage, RemoteStorage
    from ipc import eventloop
    from ipc.contract import SECRET_FD_ENV
    from ipc.control import secret_fd

    work = Path(tempfile.mkdtemp(prefix="cp-st-"))
    socket_path, token = work / "store.sock", os.urandom(16).hex()
    secret = secret_fd(token.encode())  # as the supervisor hands it over
    try:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.storage.server", "--socket",
                                 str(socket_path), "--log-level", "warning"],
                                env={**os.environ, SECRET_FD_ENV: str(secret)},
                                pass_fds=(secret,), stdin=subprocess.DEVNULL,
                                start_new_session=True)
    finally:
        os.close(secret)
    out: dict[str, float] = {}

    async def run() -> None:
        remote = RemoteStorage(str(socket_path), 1.0, token)
        if not await remote.wait_ready(15):
            raise RuntimeError("the store process did not start")
        store = psutil.Process(proc.pid)
        for name, storage in (("memory", MemoryStorage()), ("store", remote)):
            await _calls(storage, 2_000)  # warm up
            c0, s0 = time.process_time(), sum(store.cpu_times()[:2])
            await _calls(storage, requests)
            c1, s1 = time.process_time(), sum(store.cpu_times()[:2])
            out[f"{name}_client_us"] = round((c1 - c0) / requests * 1e6, 1)
            out[f"{name}_server_us"] = round((s1 - s0) / requests * 1e6, 1)
        await remote.close()

    try:
        eventloop.run(run())
    finally:
        stop_process(proc)
        shutil.rmtree(work, ignore_errors=True)
    out["hop_us"] = round(out["store_client_us"] + out["store_server_us"]
                          - out["memory_client_us"], 1)
    return out


def main(rounds: int = 3, auth_check: bool = False) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("bench.storage needs wrk on PATH")
    calls = _calls_alone()
    print(f"three storage calls, no HTTP: in-process memory {calls['memory_client_us']} µs; "
          f"store process {calls['store_client_us']} µs here + {calls['store_server_us']} µs "
          f"in the store; the hop: {calls['hop_us']} µs of CPU per request", flush=True)
    upstream = Server("upstream")
    targets: list[Target] = []
    try:
        apis = {"keyed": _api(upstream.url + "/", auth_check)}
        plugins = {"bench/auth.py": AUTH_PLUGIN} if auth_check else {}
        with _redis() as (redis_port, redis_pid):
            configs: list[tuple[str, dict[str, Any], list[psutil.Process]]] = [
                ("memory", {}, []),
                ("store", {"coproc": {"gateway": {"processes": 2}}}, []),
                ("redis", {"storage": {"type": "redis", "host": HOST, "port": redis_port}},
                 [psutil.Process(redis_pid)]),
            ]
            for name, settings, storage in configs:
                targets.append(_target(name, Coproc(apis, plugins,
                                                    {"secret": SECRET, **settings}),
                                       storage, auth_check))
            for t in targets:
                _wrk(t.url, t.key, 1)  # warm up
            for _ in range(rounds):  # interleaved: each round sees the same machine
                for t in targets:
                    _measure(t)
    finally:
        for t in targets:
            t.inst.stop()
        upstream.stop()
    rows = [t.row for t in targets]
    report: dict[str, Any] = {r.name: {k: round(r.median(k), 2) for k in r.rounds[0]}
                              for r in rows}
    memory, store = rows[0], rows[1]
    report["store_hop_us"] = round(statistics.median(
        s["total_us"] - m["total_us"] for m, s in zip(memory.rounds, store.rounds,
                                                     strict=True)), 1)
    report["calls"] = calls
    print(_table(report))
    return report


def _table(report: dict[str, Any]) -> str:
    lines = ["| storage | gateway processes | req/s | p99 ms | gateway CPU µs/req "
             "| storage CPU µs/req | total CPU µs/req |", "|---|---|---|---|---|---|---|"]
    for name in ("memory", "store", "redis"):
        r = report[name]
        lines.append(f"| {name} | {int(r['gateways'])} | {r['rps']:.0f} | {r['p99_ms']:.1f} "
                     f"| {r['gateway_us']:.1f} | {r['storage_us']:.1f} | {r['total_us']:.1f} |")
    lines.append(f"\nthe store hop under HTTP load: {report['store_hop_us']:+.1f} µs of CPU per "
                 "request (median of each round's store total - memory total)")
    lines.append(f"the store hop, calls alone: {report['calls']['hop_us']:+.1f} µs of CPU per "
                 "request (three storage calls)")
    return "\n".join(lines)


if __name__ == "__main__":
    _args = [a for a in sys.argv[1:] if a != "--auth-check"]
    main(int(_args[0]) if _args else 3, auth_check="--auth-check" in sys.argv[1:])
