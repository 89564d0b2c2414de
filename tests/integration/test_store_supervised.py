"""`coproc serve` with memory storage and several gateway processes runs the store process.

The supervisor starts the store before the gateways, hands them its socket,
restarts it when it dies (its state starts empty; meanwhile requests that
need storage get 503 + Retry-After) and stops it after the gateways.  With
one gateway process there is no store process at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import uuid
from typing import Any

import psutil
from integration.harness import Instance, api_def, coproc_command, echo_header, hook, poll
from integration.test_redis_scaleout import PLUGIN, _burst, assert_exactly_ten

SECRET = "store-secret"
ADMIN = {"X-Tyk-Authorization": SECRET}


def start(factory: Any, echo: Any, processes: int) -> Instance:
    apis = {"keys": api_def("keys", "/keys/", echo.url, use_keyless=False),
            "kv": api_def("kv", "/kv/", echo.url, pre=[hook("KeyValue", "kv/mw.py")])}
    return factory(apis, {"kv/mw.py": PLUGIN},
                   {"secret": SECRET, "coproc": {"gateway": {"processes": processes}}})


def status(inst: Instance) -> dict[str, Any]:
    done = subprocess.run([*coproc_command(), "status", "--json", "--config",
                           str(inst.config_path)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def store_children(inst: Instance) -> list[psutil.Process]:
    return inst.running("gateway.storage.server")


def add_key(inst: Instance, session: dict[str, Any]) -> str:
    key = f"key-{uuid.uuid4().hex}"
    body = {"access_rights": {"keys": {"api_id": "keys"}}, **session}
    inst.expect(inst.request("POST", f"/tyk/keys/{key}", ADMIN, json.dumps(body).encode()),
                200)
    return key


def test_several_gateway_processes_share_the_store(coproc_factory: Any,
                                                   echo_upstream: Any) -> None:
    """1. processes 2: a store process runs, `coproc status` names it;
    2. rate 10 per 1 s: 50 concurrent requests -> exactly 10 pass; a quota of 3;
       a plugin's store_data is read back by get_data;
    3. SIGKILL the store: requests get 503 + Retry-After until the supervisor's new
       store listens, then serve again (the old keys are gone: state starts empty);
    4. SIGTERM: the store exits after every gateway process."""
    inst = start(coproc_factory, echo_upstream, processes=2)
    stores = poll("the store process", lambda: store_children(inst), 10.0)
    assert len(stores) == 1
    own = poll("the store in `coproc status`",
               lambda: (s := status(inst).get("store")) and s["state"] == "running" and s, 15.0)
    assert own["pid"] == stores[0].pid and own["socket"].endswith("store.sock")

    key = add_key(inst, {"rate": 10, "per": 1})
    assert_exactly_ten(*asyncio.run(_burst([inst.port], key, 50)))

    quota_key = add_key(inst, {"quota_max": 3, "quota_renewal_rate": 3600})
    assert [inst.get("/keys/", {"Authorization": quota_key}).status for _ in range(4)] == \
        [200, 200, 200, 403]
    kv_key = f"kv-{uuid.uuid4().hex}"
    inst.expect(inst.get("/kv/", {"X-Kv-Key": kv_key, "X-Kv-Op": "store",
                                  "X-Kv-Value": "kept"}), 200)
    echo = inst.expect(inst.get("/kv/", {"X-Kv-Key": kv_key}), 200).json()
    assert echo_header(echo, "X-Kv-Got") == "kept"

    os.kill(stores[0].pid, signal.SIGKILL)
    seen: list[int] = []

    def outage_then_back() -> bool:
        resp = inst.get("/keys/", {"Authorization": key})
        seen.append(resp.status)
        if resp.status == 503:
            assert resp.header("Retry-After") == "1"
        return resp.status == 403  # a new, empty store: the key is unknown

    poll("a new store after the old one was killed", outage_then_back, 20.0, interval=0.01)
    assert set(seen) <= {200, 429, 503, 403}, seen
    restarted = status(inst)["store"]
    assert restarted["restarts"] == 1 and restarted["pid"] != stores[0].pid
    fresh = add_key(inst, {})
    inst.expect(inst.get("/keys/", {"Authorization": fresh}), 200)

    assert inst.stop() == 0
    logs = inst.logs(200_000)
    # "gateway (pid N)" with one gateway process, "gateway 1 (pid N)" with several.
    gateways_gone = list(re.finditer(r"gateway (\d+ )?\(pid \d+\) exited 0 .*\(stopping\)",
                                     logs))
    store_gone = re.search(r"store generation 2 \(pid \d+\) exited 0 .*\(stopping\)", logs)
    assert gateways_gone and store_gone, logs[-3000:]
    assert max(g.start() for g in gateways_gone) < store_gone.start(), logs[-3000:]


def test_one_gateway_process_keeps_memory_in_process(coproc_factory: Any,
                                                     echo_upstream: Any) -> None:
    """processes 1 (the default): no store process; the gateway's own memory counts."""
    inst = start(coproc_factory, echo_upstream, processes=1)
    assert store_children(inst) == []
    assert "store" not in status(inst)
    key = add_key(inst, {"rate": 10, "per": 1})
    assert_exactly_ten(*asyncio.run(_burst([inst.port], key, 50)))
