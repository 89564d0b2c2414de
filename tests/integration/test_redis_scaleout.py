"""Many instances act as one through a real Redis, and survive it going away.

Two `coproc serve` processes (their own run directories and ports) share one
redis-server: one rate limit, one quota, one plugin data store.  A Redis
stopped mid-test turns the requests that need it into 503s while the gateway
stays up, and they succeed again once it is back, without a restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import textwrap
import time
import uuid
from typing import Any

import aiohttp
from integration.harness import HOST, Instance, RedisServer, api_def, echo_header, hook, poll

SECRET = "scaleout-secret"
ADMIN = {"X-Tyk-Authorization": SECRET}

PLUGIN = textwrap.dedent('''
    from tyk.decorators import *
    from gateway import TykGateway as tyk


    @Hook
    def KeyValue(request, session, spec):
        key = request.get_header("X-Kv-Key")
        if request.get_header("X-Kv-Op") == "store":
            tyk.store_data(key, request.get_header("X-Kv-Value"), 60)
        else:
            request.add_header("X-Kv-Got", tyk.get_data(key).decode() or "<empty>")
        return request, session
''').lstrip()


def apis(echo_url: str) -> dict[str, dict[str, Any]]:
    return {
        "keys": api_def("keys", "/keys/", echo_url, use_keyless=False),
        "kv": api_def("kv", "/kv/", echo_url, pre=[hook("KeyValue", "kv/mw.py")]),
    }


def start(factory: Any, echo: Any, redis: RedisServer) -> Instance:
    return factory(apis(echo.url), {"kv/mw.py": PLUGIN}, {"secret": SECRET,
                                                         **redis.settings()})


#: Access to the "keys" API: the admin API refuses a key without access rights
#: (Tyk's allow_master_keys is off by default).
ACCESS = {"access_rights": {"keys": {"api_id": "keys", "versions": ["Default"]}}}


def add_key(gw: Instance, session: dict[str, Any]) -> str:
    key = f"key-{uuid.uuid4().hex}"
    body = json.dumps({**ACCESS, **session}).encode()
    gw.expect(gw.request("POST", f"/tyk/keys/{key}", ADMIN, body), 200)
    return key


def assert_exactly_ten(statuses: list[int], elapsed: float) -> None:
    """rate 10 per 1 s: exactly 10 pass while the burst fits in the window.

    A machine so loaded that the burst outlasts the window legitimately lets
    more through as the first hits slide out; then at most 10 per started second.
    """
    assert set(statuses) <= {200, 429}, statuses
    if elapsed < 1.0:
        assert statuses.count(200) == 10, statuses
    else:
        assert 10 <= statuses.count(200) <= 10 * (int(elapsed) + 1), (elapsed, statuses)


async def _burst(ports: list[int], key: str, count: int) -> tuple[list[int], float]:
    """`count` concurrent requests spread over the instances' ports; (statuses, seconds)
    from the first response to the last."""
    async with aiohttp.ClientSession() as client:
        async def one(i: int) -> int:
            url = f"http://{HOST}:{ports[i % len(ports)]}/keys/"
            async with client.get(url, headers={"Authorization": key}) as resp:
                await resp.read()
                done.append(time.monotonic())
                return resp.status
        done: list[float] = []
        statuses = list(await asyncio.gather(*(one(i) for i in range(count))))
        return statuses, max(done) - min(done)


def test_two_instances_share_limits_and_plugin_data(coproc_factory: Any, echo_upstream: Any,
                                                    redis_server: RedisServer) -> None:
    """1. two instances on one Redis; 2. a key made on A works on B;
    3. rate 10 per 1 s: 50 concurrent requests over both -> exactly 10 pass;
    4. quota_max 3: uses on A and B together -> the 4th is refused on either;
    5. store_data on A, get_data on B."""
    a = start(coproc_factory, echo_upstream, redis_server)
    b = start(coproc_factory, echo_upstream, redis_server)
    assert a.run_dir != b.run_dir and a.port != b.port

    key = add_key(a, {"rate": 10, "per": 1})
    b.expect(b.get("/keys/", {"Authorization": add_key(a, {})}), 200)
    assert_exactly_ten(*asyncio.run(_burst([a.port, b.port], key, 50)))

    quota_key = add_key(b, {"quota_max": 3, "quota_renewal_rate": 3600})
    got = [gw.get("/keys/", {"Authorization": quota_key}).status for gw in (a, b, a, b)]
    assert got == [200, 200, 200, 403]

    kv_key = f"kv-{uuid.uuid4().hex}"
    a.expect(a.get("/kv/", {"X-Kv-Key": kv_key, "X-Kv-Op": "store",
                            "X-Kv-Value": "from-a"}), 200)
    echo = b.expect(b.get("/kv/", {"X-Kv-Key": kv_key}), 200).json()
    assert echo_header(echo, "X-Kv-Got") == "from-a"


def test_rate_limit_is_exact_for_one_instance(coproc_factory: Any, echo_upstream: Any,
                                              redis_server: RedisServer) -> None:
    gw = start(coproc_factory, echo_upstream, redis_server)
    key = add_key(gw, {"rate": 10, "per": 1})
    assert_exactly_ten(*asyncio.run(_burst([gw.port], key, 50)))


def test_redis_outage_is_503_then_recovers(coproc_factory: Any, echo_upstream: Any,
                                          own_redis: RedisServer) -> None:
    """1. a key works; 2. Redis stopped: 503 for keyed requests and plugin data,
    the gateway stays up (GET /hello 200 naming storage as failing, GET /ready 503,
    keyless APIs without storage); 3. Redis started again on the same port: 200
    again (and /ready), same gateway process."""
    gw = start(coproc_factory, echo_upstream, own_redis)
    key = add_key(gw, {})
    gw.expect(gw.get("/keys/", {"Authorization": key}), 200)
    pid = gw.pid

    own_redis.stop()
    resp = gw.expect(gw.get("/keys/", {"Authorization": key}), 503)
    assert resp.json() == {"error": "Storage unavailable"}
    poll("/hello to name the storage as failing", lambda: gw.expect(gw.hello(), 200).json()
         ["details"]["storage"]["status"] == "fail", 10)
    assert gw.hello().json()["details"]["storage"]["output"] == "storage unreachable"
    gw.expect(gw.ready(), 503)
    # A plugin whose get_data needs Redis: the request needs the storage, so 503 too.
    kv = gw.expect(gw.get("/kv/", {"X-Kv-Key": "k"}), 503)
    assert kv.json() == {"error": "Storage unavailable"} and kv.headers["Retry-After"] == "1"

    own_redis.start()
    # Data is gone (no persistence): the key comes back through the admin API.
    poll("the key API to reach Redis again",
         lambda: gw.request("POST", f"/tyk/keys/{key}", ADMIN,
                            json.dumps(ACCESS).encode()).status == 200, 15)
    gw.expect(gw.get("/keys/", {"Authorization": key}), 200)
    poll("/ready == 200 again", lambda: gw.ready().status == 200, 10)
    assert gw.pid == pid and gw.proc.poll() is None
    assert "storage unavailable" in gw.logs(20000)


def test_frozen_redis_is_503_before_the_hook_deadline(coproc_factory: Any, echo_upstream: Any,
                                                      own_redis: RedisServer) -> None:
    """Issue #11 item 14: redis-server frozen (SIGSTOP) while a plugin calls get_data /
    store_data, with the hook's deadline equal to the storage timeout (1000 ms both):
    each request answers 503 Storage unavailable within the hook's deadline, never 504,
    with at most one log line each; thawed (SIGCONT), the same gateway serves 200."""
    settings = {**own_redis.settings(), "secret": SECRET,
                "coproc": {"hooks": {"timeout_ms": 1000}}}
    settings["storage"] = {**settings["storage"], "timeout_ms": 1000}
    gw = coproc_factory(apis(echo_upstream.url), {"kv/mw.py": PLUGIN}, settings)
    gw.expect(gw.get("/kv/", {"X-Kv-Key": "k", "X-Kv-Op": "store", "X-Kv-Value": "v"}), 200)
    assert own_redis.proc is not None
    before = len(gw.logs(200000).splitlines())
    os.kill(own_redis.proc.pid, signal.SIGSTOP)
    try:
        for headers in ({"X-Kv-Key": "k"}, {"X-Kv-Key": "k", "X-Kv-Op": "store",
                                            "X-Kv-Value": "w"}, {"X-Kv-Key": "k"}):
            started = time.monotonic()
            resp = gw.expect(gw.get("/kv/", headers), 503)
            elapsed = time.monotonic() - started
            assert resp.json() == {"error": "Storage unavailable"}, resp.json()
            assert elapsed < 1.0, f"answered after {elapsed:.2f} s: the hook's deadline"
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)
    new = gw.logs(200000).splitlines()[before:]
    # The worker's line per failed hook, plus the gateway's, once per interval.
    assert len(new) <= 3 + 1, "\n".join(new)
    assert "timed out" not in "\n".join(new) and "exceeded" not in "\n".join(new)
    poll("plugin data served again after SIGCONT",
         lambda: gw.get("/kv/", {"X-Kv-Key": "k"}).status == 200, 15)
