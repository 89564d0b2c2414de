"""The `grpc` driver through a gRPC plugin server Coproc supervises (`coproc.grpc_server`).

The same server script and hook cases as test_grpc_driver.py (its tests are
imported here and run against this module's instance), with the server started,
probed, restarted and hot-restarted by the supervisor: killing it fails only
the calls in flight and it comes back; hot restarts under load drop nothing;
an instance that would also need the Python worker is refused at start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
from integration.harness import (
    Instance,
    api_def,
    coproc_command,
    echo_header,
    free_port,
    hook,
    new_base_dir,
    poll,
    remove_base,
    write_instance,
)
from integration.test_grpc_driver import (  # noqa: F401 - collected here, on this instance
    SERVER,
    build_apis,
    echoed,
    grpc_api,
    test_auth_failure_event_reaches_dispatch_event,
    test_auth_session_rate_limit_is_enforced,
    test_binary_body_gives_empty_body_and_full_raw_body,
    test_deadline_is_504_and_next_request_is_served,
    test_fail_open_api_skips_a_timed_out_hook,
    test_fail_open_hook_that_raises_is_skipped,
    test_json_body_gives_body_and_raw_body_and_a_new_body_reaches_upstream,
    test_post_hook_error_override,
    test_post_hook_leaves_other_requests_alone,
    test_post_hook_rewrites_url_and_method,
    test_pre_hook_edits_headers_and_params,
    test_response_hook_replaces_body_and_content_length,
    test_return_overrides_matrix,
    test_server_exception_is_500_middleware_error,
    test_tyk_auth_acceptance,
)

#: Generous: a restart is backoff (100 ms) + interpreter start + probe, on a loaded box.
COME_BACK_S = 30.0


class Events:
    """Where the supervised server appends DispatchEvent payloads (`server.events`)."""

    def __init__(self, base: Path) -> None:
        self.events = base / "events.jsonl"


def supervised(events: Path) -> dict[str, Any]:
    command = [sys.executable, str(SERVER), "--listen", "{listen}", "--events", str(events)]
    return {"coproc": {"grpc_server": {"command": command, "health_interval_ms": 500},
                       "gateway": {"max_body_bytes": 64 * 1024}}}


@pytest.fixture(scope="module")
def server() -> Iterator[Events]:
    base = new_base_dir()
    yield Events(base)
    remove_base(base)


@pytest.fixture(scope="module")
def gw(module_coproc_factory: Any, echo_upstream: Any, server: Events) -> Instance:
    apis = build_apis(echo_upstream.url)
    del apis["python"]  # one coprocess per instance: see test_python_api_is_refused
    apis["load"] = grpc_api("load", echo_upstream.url,
                            pre=[hook("SleepFromHeader", timeout_ms=5000)])
    inst: Instance = module_coproc_factory(apis, {}, supervised(server.events))
    return inst




def grpc_status(inst: Instance) -> dict[str, Any]:
    done = inst.ctl("status", "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)["grpc_server"]
    return result


def server_pids(inst: Instance) -> list[int]:
    found = []
    for proc in inst.children():
        try:
            if any(str(SERVER) in arg for arg in proc.cmdline()):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


# --------------------------------------------------------------------------- supervision


def test_server_is_supervised_sandboxed_and_on_a_run_dir_socket(gw: Instance) -> None:
    status = grpc_status(gw)
    assert status["state"] == "running", status
    assert status["movable"] is True
    assert status["address"] == f"unix://{gw.run_dir}/grpc-{status['generation']}.sock"
    assert server_pids(gw) == [status["pid"]]  # the launcher exec'd the command itself
    proc = psutil.Process(status["pid"])
    nnp = [line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
           if line.startswith("NoNewPrivs:")]
    assert nnp == ["NoNewPrivs:\t1"], nnp  # profile standard
    assert proc.rlimit(psutil.RLIMIT_CORE) == (0, 0)
    hello = gw.expect(gw.status(), 200).json()
    assert hello["worker"]["driver"] == "grpc", hello["worker"]


def test_kill_fails_only_in_flight_calls_and_it_comes_back(gw: Instance,
                                                           server: Events) -> None:
    before = grpc_status(gw)
    seen = server.events.stat().st_size if server.events.exists() else 0
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(gw.get, "/load/", {"X-Sleep-Ms": "4000"})
        # SleepFromHeader appends "sleeping" to the events file before it sleeps.
        poll("the slow call to reach the server", lambda: server.events.exists()
             and '"sleeping"' in server.events.read_text()[seen:], 10)
        os.kill(before["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        try:
            resp = slow.result(timeout=15)
        except OSError as exc:
            raise AssertionError(f"{exc!r}\n--- coproc log (tail) ---\n{gw.logs()}") from None
    gw.expect(resp, 503)  # the call in flight fails, at once
    assert resp.elapsed < 3.0, resp.elapsed

    def served() -> bool:
        return gw.get("/pre/", {}).status == 200

    poll("calls served by the restarted server", served, COME_BACK_S)
    took = time.monotonic() - killed_at
    print(f"supervised gRPC server: calls served again {took:.2f}s after SIGKILL")
    after = grpc_status(gw)
    assert after["generation"] > before["generation"]
    assert after["restarts"] == before["restarts"] + 1
    assert "SIGKILL" in after["last_exits"][-1]["reason"], after


def test_a_hung_server_fails_its_health_checks_and_is_replaced(gw: Instance) -> None:
    """SIGSTOP: the process lives but answers nothing; after `health_failures` failed
    checks it is killed and a new generation serves."""
    before = grpc_status(gw)
    os.kill(before["pid"], signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        def replaced() -> bool:
            now = grpc_status(gw)  # generation None: between two servers
            return now["state"] == "running" and (now["generation"] or 0) > before["generation"]

        poll("a new generation", replaced, COME_BACK_S)
    finally:
        if psutil.pid_exists(before["pid"]):
            os.kill(before["pid"], signal.SIGCONT)
    print(f"hung gRPC server replaced {time.monotonic() - stopped_at:.2f}s after SIGSTOP")
    after = grpc_status(gw)
    assert "health checks" in after["last_exits"][-1]["reason"], after["last_exits"]
    gw.expect(gw.get("/pre/"), 200)


def test_ten_hot_restarts_under_load_drop_nothing(gw: Instance) -> None:
    before = grpc_status(gw)
    stop = threading.Event()
    results: list[int] = []
    errors: list[str] = []

    def load() -> None:
        while not stop.is_set() and len(results) < 100_000:  # bounded in count and time
            try:
                resp = gw.get("/pre/", {})
            except OSError as exc:
                errors.append(repr(exc))
                continue
            results.append(resp.status)
            if resp.status != 200:
                errors.append(f"{resp.status} {resp.body[:200]!r}")

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(10):
            done = gw.ctl("reload")
            assert done.returncode == 0, (i, done.stdout, done.stderr, gw.logs())
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    after = grpc_status(gw)
    assert after["hot_restarts"] == before["hot_restarts"] + 10, after
    assert after["generation"] == before["generation"] + 10
    assert after["restarts"] == before["restarts"]  # no crash among them
    assert len(results) > 50, len(results)
    assert not errors, errors[:5]
    poll("retired servers to stop", lambda: len(server_pids(gw)) == 1, COME_BACK_S)
    leftover = sorted(p.name for p in gw.run_dir.glob("grpc-*.sock"))
    assert leftover == [f"grpc-{after['generation']}.sock"], leftover
    print(f"10 hot restarts of the supervised gRPC server under load: {len(results)} "
          f"requests, 0 failed")


def test_reused_hooks_still_apply_after_restarts(gw: Instance) -> None:
    echo = echoed(gw, "GET", "/pre/path?keep=2&removeme=1", {"X-Remove-Me": "please"})
    assert echo_header(echo, "X-Added") == "added-by-grpc"


def test_a_command_without_listen_is_stopped_then_started(coproc_factory: Any,
                                                          echo_upstream: Any) -> None:
    """A server with a fixed address cannot run twice: `coproc reload` stops it, then
    starts the next generation on the same address; calls are served again after."""
    base = new_base_dir()
    try:
        listen = f"127.0.0.1:{free_port()}"
        command = [sys.executable, str(SERVER), "--listen", listen]
        inst = coproc_factory(
            {"pre": grpc_api("pre", echo_upstream.url, pre=[hook("MyPreHook")],
                             config_data={"foo": "bar"})}, {},
            {"coprocess_options": {"coprocess_grpc_server": f"tcp://{listen}"},
             "coproc": {"grpc_server": {"command": command}}})
        inst.expect(inst.get("/pre/"), 200)
        before = grpc_status(inst)
        assert before["movable"] is False and before["address"] == f"tcp://{listen}"
        done = inst.ctl("reload")
        assert done.returncode == 0, (done.stdout, done.stderr, inst.logs())
        after = grpc_status(inst)
        assert after["generation"] == before["generation"] + 1
        assert after["pid"] != before["pid"] and after["restarts"] == before["restarts"]
        assert not psutil.pid_exists(before["pid"]) or \
            psutil.Process(before["pid"]).status() == psutil.STATUS_ZOMBIE
        poll("calls served by the new server", lambda: inst.get("/pre/").status == 200, 10)
        assert "stopping grpc_server generation 1" in inst.logs()
    finally:
        remove_base(base)


def test_reload_reads_the_api_definitions_again(coproc_factory: Any, echo_upstream: Any,
                                                server: Events) -> None:
    """1. API `pre` serves; `late` is not defined yet (404).
    2. `late` is added to app_path and `coproc reload` hot-restarts the server.
    3. The gateways switch to the re-read definitions with the new server: `late`
       serves through its gRPC hook.
    4. `late.json` edited into an error: the reload is refused, nothing restarts and
       `late` keeps serving."""
    inst = coproc_factory({"pre": grpc_api("pre", echo_upstream.url, pre=[hook("MyPreHook")],
                                           config_data={"foo": "bar"})},
                          {}, supervised(server.events))
    inst.expect(inst.get("/pre/"), 200)
    assert inst.get("/late/").status == 404
    late = grpc_api("late", echo_upstream.url, pre=[hook("MyPreHook")],
                    config_data={"foo": "bar"})
    (inst.base / "apps" / "late.json").write_text(json.dumps(late))
    done = inst.ctl("reload")
    assert done.returncode == 0, (done.stdout, done.stderr, inst.logs())
    poll("the new API served", lambda: inst.get("/late/").status == 200, 10)
    echo = echoed(inst, "GET", "/late/path?keep=2", {})
    assert echo_header(echo, "X-Added") == "added-by-grpc"
    (inst.base / "apps" / "late.json").write_text("{not json")  # `late` serves: refused
    refused = inst.ctl("reload")
    assert refused.returncode == 1 and "late.json" in refused.stderr, refused.stderr
    assert grpc_status(inst)["generation"] == 2  # no restart for a refused reload
    assert inst.get("/late/").status == 200


# --------------------------------------------------------------------------- refusals


def test_python_api_is_refused_beside_a_supervised_server(echo_upstream: Any) -> None:
    base = new_base_dir()
    try:
        apis = {"grpc": grpc_api("grpc", echo_upstream.url, pre=[hook("MyPreHook")]),
                "python": api_def("python", "/python/", echo_upstream.url,
                                  pre=[hook("PyPre", "py/mw.py")])}
        config = write_instance(base, apis, {"py/mw.py": "def PyPre(r, s, spec):\n"
                                                         "    return r, s\n"},
                                supervised(base / "events.jsonl"))
        done = subprocess.run([*coproc_command(), "serve", "--config", str(config)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0
        assert "one coprocess" in done.stderr, done.stderr
        assert "python" in done.stderr and "coproc.grpc_server.command" in done.stderr
    finally:
        remove_base(base)
