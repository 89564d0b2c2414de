"""Plain hooks run on the call thread that read them; a blocked hook hands the reading on."""

from __future__ import annotations

import concurrent.futures
import textwrap
from typing import Any

from integration.harness import api_def, echo_header, hook, poll

PLUGIN = "from tyk.decorators import *\n" + textwrap.dedent('''
    import threading

    released = threading.Event()

    @Hook
    def WhichThread(request, session, spec):
        request.add_header("X-Thread", threading.current_thread().name)
        return request, session

    @Hook
    async def WhichThreadAsync(request, session, spec):
        request.add_header("X-Thread", threading.current_thread().name)
        return request, session

    @Hook
    def BlockOrRelease(request, session, spec):
        if request.object.url.endswith("/release"):
            released.set()
        else:
            # A plain wait (no host call): only the watchdog's hand-off lets another
            # thread read the call that ends it.
            request.add_header("X-Released", str(released.wait(20)))
        return request, session
''')


def _instance(coproc_factory: Any, echo_upstream: Any) -> Any:
    hooks = {"which": "WhichThread", "which_async": "WhichThreadAsync",
             "block": "BlockOrRelease"}
    apis = {name: api_def(name, f"/{name}/", echo_upstream.url,
                          pre=[hook(func, "t/middleware.py", timeout_ms=30_000)])
            for name, func in hooks.items()}
    return coproc_factory(apis, {"t/middleware.py": PLUGIN})


def test_hooks_run_on_call_threads_and_async_hooks_on_the_loop(coproc_factory: Any,
                                                               echo_upstream: Any) -> None:
    """1. A plain pre hook reports the thread it runs on: a call thread.
    2. The same as `async def`: the worker's main thread (its event loop)."""
    gw = _instance(coproc_factory, echo_upstream)
    plain = {echo_header(gw.expect(gw.get("/which/"), 200).json(), "X-Thread")
             for _ in range(10)}
    assert plain and all(name.startswith("coproc-call-") for name in plain), plain
    on_loop = echo_header(gw.expect(gw.get("/which_async/"), 200).json(), "X-Thread")
    assert on_loop == "MainThread"


def test_a_blocked_hook_does_not_stop_other_calls(coproc_factory: Any,
                                                  echo_upstream: Any) -> None:
    """1. Request A's hook blocks until request B's call of the same hook releases it.
    2. B is sent while A's hook blocks; A then completes, released by B (not by
       its own 20 s timeout): B's call was read and run by another thread."""
    gw = _instance(coproc_factory, echo_upstream)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        blocked = pool.submit(gw.get, "/block/", None, 40.0)
        poll("request A's hook to be running",
             lambda: gw.worker().get("inflight", 0) >= 1, 10)
        release = pool.submit(gw.get, "/block/release", None, 40.0)
        gw.expect(release.result(40), 200)
        first = gw.expect(blocked.result(40), 200)
    assert echo_header(first.json(), "X-Released") == "True"
    # The hand-off shows on /coproc/status (from the worker's heartbeats).
    counters = poll("the hand-off in /coproc/status", lambda: (
        c := gw.worker().get("call_threads", {})).get("handoffs", 0) >= 1
        and c, 10)
    assert counters["threads"] >= 2 and counters["calls"] >= 2 and counters["deadlines"] == 0


HOST_CALLS = "from tyk.decorators import *\n" + textwrap.dedent('''
    import time
    from gateway import TykGateway as tyk

    @Hook
    def SlowStore(request, session, spec):
        # Each hook waits on two host calls with the storage behind them.
        key = "k-" + request.get_header("X-N")
        tyk.store_data(key, "v", 60)
        request.add_header("X-Got", tyk.get_data(key).decode())
        return request, session
''')


def test_more_hooks_waiting_on_host_calls_than_call_threads(coproc_factory: Any,
                                                            echo_upstream: Any) -> None:
    """2 call threads, 24 concurrent requests whose hooks each wait on host calls:
    with every call thread inside such a hook, the stand-in reader still reads the
    replies, so every request is answered at once, not after a host call's timeout
    (2 s each, in series: minutes)."""
    gw = coproc_factory({"hc": api_def("hc", "/hc/", echo_upstream.url,
                                       pre=[hook("SlowStore", "hc/mw.py")])},
                        {"hc/mw.py": HOST_CALLS},
                        {"coproc": {"worker": {"threads": 2}}})

    def one(n: int) -> tuple[int, str | None, float]:
        resp = gw.get("/hc/", {"X-N": str(n)}, timeout=30)
        got = echo_header(resp.json(), "X-Got") if resp.status == 200 else None
        return resp.status, got, resp.elapsed

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        results = list(pool.map(one, range(24)))
    assert [(status, got) for status, got, _ in results] == [(200, "v")] * 24, (
        f"{sorted(results, key=lambda r: r[2])}\n{gw.logs()}")
    slowest = max(elapsed for _, _, elapsed in results)
    assert slowest < 2.0, f"a request waited {slowest:.2f} s: a host call's timeout"
