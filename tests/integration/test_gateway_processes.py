"""Several gateway processes around the one plugin worker (`coproc.gateway.processes: 2`).

Real `coproc serve`, real processes, real sockets:
1. both processes accept on the port and each serves some of the requests;
   /hello and `coproc status` name each one;
2. SIGKILL of one gateway process under load: only requests that process had
   in flight fail, and the supervisor brings it back;
3. ten hot restarts of the worker under load with two gateway processes: no
   request fails;
4. a rate limit and a quota are exact across both processes, on the embedded
   memory storage and on Redis.
"""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
import time
from typing import Any

from integration.harness import (
    EchoUpstream,
    Instance,
    Load,
    RedisServer,
    api_def,
    echo_header,
    hook,
    poll,
)
from integration.test_redis_scaleout import SECRET, _burst, add_key, assert_exactly_ten

from tests.conftest import InstanceFactory

TWO = {"coproc": {"gateway": {"processes": 2}}}

PLUGIN = textwrap.dedent('''
    import time

    from tyk.decorators import *

    VERSION = "{version}"


    @Hook
    def Stamp(request, session, spec):
        request.add_header("X-Version", VERSION)
        return request, session


    @Hook
    def Slow(request, session, spec):
        time.sleep(0.02)  # keeps requests in flight when a gateway process is killed
        return request, session
''').lstrip()


def apis(echo: EchoUpstream) -> dict[str, dict[str, Any]]:
    return {
        "stamp": api_def("stamp", "/stamp/", echo.url, pre=[hook("Stamp", "p/mw.py")]),
        "slow": api_def("slow", "/slow/", echo.url, pre=[hook("Slow", "p/mw.py")]),
        "keys": api_def("keys", "/keys/", echo.url, use_keyless=False),
    }


def start(factory: InstanceFactory, echo: EchoUpstream, **settings: Any) -> Instance:
    return factory(apis(echo), {"p/mw.py": PLUGIN.format(version=0)},
                   {**TWO, "secret": SECRET, **settings})


def gateways(inst: Instance) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = inst.supervisor_status()["gateways"]
    return found


def served(inst: Instance) -> list[int]:
    """Requests each gateway process has reported serving (every second)."""
    return [int(g["stats"].get("requests", 0)) for g in gateways(inst)]


def served_since(inst: Instance, before: list[int], at_least: int) -> list[int]:
    """Requests each process served since `before`, once they add up to `at_least`
    (the counters reach the supervisor with each process's next status report)."""
    def enough() -> list[int] | None:
        each = [n - b for n, b in zip(served(inst), before, strict=True)]
        return each if sum(each) >= at_least else None

    result: list[int] = poll(f"{at_least} requests in the processes' counters", enough, 10)
    return result


def test_both_processes_accept_and_serve_and_are_named(coproc_factory: InstanceFactory,
                                                       echo_upstream: EchoUpstream) -> None:
    inst = start(coproc_factory, echo_upstream)
    processes = gateways(inst)
    assert [g["index"] for g in processes] == [0, 1]
    assert all(g["state"] == "running" and g["pid"] for g in processes)
    assert len({g["pid"] for g in processes}) == 2
    before = served(inst)
    for _ in range(200):  # a connection each, as 200 clients would
        inst.expect(inst.get("/stamp/x"), 200)
    each = served_since(inst, before, 200)
    assert all(n > 0 for n in each), f"one process served nothing: {each}"
    details = inst.hello().json()["details"]
    assert details["gateway:0"]["status"] == details["gateway:1"]["status"] == "pass"
    text = inst.ctl("status").stdout
    assert "gateway 0" in text and "gateway 1" in text, text


def test_sigkill_of_one_process_costs_only_its_requests_in_flight(
        coproc_factory: InstanceFactory, echo_upstream: EchoUpstream) -> None:
    """Six client threads, each with at most one request in flight: at most six
    fail (those the killed process held), the process comes back, and after that
    nothing fails."""
    inst = start(coproc_factory, echo_upstream)
    victim = gateways(inst)[1]["pid"]
    with Load(inst, "/slow/x", threads=6) as load:
        poll("answers from both processes", lambda: len(load.results) > 60, 30)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        back = poll("gateway 1 back under a new pid", lambda: (g := gateways(inst)[1])["state"]
                    == "running" and g["pid"] not in (None, victim), 30)
        restarted_in = time.monotonic() - killed_at
        failed_by_then = len(load.failures)
        count = len(load.results)
        poll("answers after the restart", lambda: len(load.results) > count + 60, 30)
    assert back
    assert len(load.failures) <= 6, f"{len(load.failures)} failed: {load.failures[:6]}"
    assert len(load.failures) == failed_by_then, "requests failed after the restart"
    print(f"\ngateway 1 SIGKILLed: {len(load.failures)} request(s) failed, back and "
          f"serving in {restarted_in:.2f} s; {len(load.results)} answered")
    assert gateways(inst)[0]["pid"] is not None and gateways(inst)[0]["state"] == "running"


def test_ten_hot_restarts_with_two_processes_drop_nothing(coproc_factory: InstanceFactory,
                                                          echo_upstream: EchoUpstream) -> None:
    inst = start(coproc_factory, echo_upstream)

    def version(resp: Any) -> str:
        return echo_header(resp.json(), "X-Version") or ""

    before = served(inst)
    with Load(inst, "/stamp/x", threads=6, keep=version) as load:
        poll("first answers", lambda: len(load.results) > 20, 20)
        for k in range(1, 11):
            (inst.base / "middleware" / "p" / "mw.py").write_text(PLUGIN.format(version=k))
            done = inst.ctl("reload", timeout=90)
            assert done.returncode == 0, f"reload {k}: {done.stdout}{done.stderr}"
            count = len(load.results)
            poll("answers after the reload", lambda c=count: len(load.results) > c + 10, 20)
    assert not load.failures, f"{len(load.failures)} failed: {load.failures[:5]}\n{inst.logs()}"
    assert load.results[-1][1] == "10"
    each = served_since(inst, before, len(load.results))
    assert all(n > 0 for n in each), f"one process served nothing: {each}"


def _storage(kind: str, redis: RedisServer) -> dict[str, Any]:
    return redis.settings() if kind == "redis" else {"storage": {"type": "memory"}}


def test_rate_limit_and_quota_are_exact_across_processes_on_memory(
        coproc_factory: InstanceFactory, echo_upstream: EchoUpstream,
        redis_server: RedisServer) -> None:
    _exact_across_processes(coproc_factory, echo_upstream, _storage("memory", redis_server))


def test_rate_limit_and_quota_are_exact_across_processes_on_redis(
        coproc_factory: InstanceFactory, echo_upstream: EchoUpstream,
        redis_server: RedisServer) -> None:
    _exact_across_processes(coproc_factory, echo_upstream, _storage("redis", redis_server))


def _exact_across_processes(factory: InstanceFactory, echo: EchoUpstream,
                            storage: dict[str, Any]) -> None:
    """rate 10 per 1 s: 50 concurrent requests (50 connections, spread over both
    processes by the kernel) -> exactly 10 pass; quota_max 3: the 4th use is
    refused whichever process serves it; a key made through one process works
    through the other."""
    inst = start(factory, echo, **storage)
    before = served(inst)
    key = add_key(inst, {"rate": 10, "per": 1})
    assert_exactly_ten(*asyncio.run(_burst([inst.port], key, 50)))
    each = served_since(inst, before, 50)
    assert all(n > 0 for n in each), f"the burst reached one process only: {each}"

    quota_key = add_key(inst, {"quota_max": 3, "quota_renewal_rate": 3600})
    got = [inst.get("/keys/", {"Authorization": quota_key}).status for _ in range(6)]
    assert got == [200, 200, 200, 403, 403, 403], got
    for _ in range(10):  # new connections: both processes know the key
        inst.expect(inst.get("/keys/", {"Authorization": add_key(inst, {})}), 200)
