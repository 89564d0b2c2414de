"""The reconcile loop in-process, fed through its own event queue.

Children are one-line Python programs, so these tests show restart decisions
(backoff, flapping -> fatal) and the staged stop without a gateway or worker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from unit.recording import RecordingNotifier
from unit.waiting import until

from config.gateway import GatewayConfig, GatewayOptions, SupervisorOptions, WorkerOptions
from ipc.notify import Notifier
from supervisor import policy
from supervisor.arbiter import Arbiter, Phase
from supervisor.contract import ChildCommands
from supervisor.listener import bind_listener
from supervisor.slot import SlotState

SLEEPS = (sys.executable, "-c", "import time; time.sleep(60)")
PLUGINS_FAIL = (sys.executable, "-c", "import sys; sys.exit(4)")
CRASHES = (sys.executable, "-c", "import sys; sys.exit(1)")


@pytest.fixture
def make_supervisor(tmp_path: Path) -> Iterator[Callable[..., Arbiter]]:
    listeners = []

    def make(gateway: tuple[str, ...], worker: tuple[str, ...], flap_max_exits: int = 3,
             notifier: Notifier | None = None, processes: int = 1,
             hang_timeout_ms: int = 10000) -> Arbiter:
        cfg = GatewayConfig(
            path=tmp_path / "coproc.json", run_dir=tmp_path,
            gateway=GatewayOptions(processes=processes, hang_timeout_ms=hang_timeout_ms),
            supervisor=SupervisorOptions(restart_backoff_initial_ms=10,
                                         restart_backoff_max_ms=20, stop_grace_ms=3000,
                                         flap_window_s=60, flap_max_exits=flap_max_exits),
            worker=WorkerOptions(boot_timeout_ms=30000))
        listener = bind_listener("127.0.0.1", 0)
        listeners.append(listener)
        return Arbiter(cfg, [listener], ChildCommands(gateway=gateway, worker=worker),
                          notifier or RecordingNotifier())

    try:
        yield make
    finally:
        for listener in listeners:
            listener.close()




def test_flapping_worker_goes_fatal_and_the_gateway_keeps_running(
        make_supervisor: Callable[..., Arbiter]) -> None:
    notifier = RecordingNotifier()
    sup = make_supervisor(SLEEPS, PLUGINS_FAIL, flap_max_exits=3, notifier=notifier)

    async def scenario() -> int:
        running = asyncio.create_task(sup.run())
        await until(lambda: sup.worker_state is SlotState.FATAL)
        assert sup.worker_generation == 3  # 3 exits within the window, no 4th start
        assert sup.gateway_state is SlotState.STARTING  # still up (it never says ready)
        sup.post_signal(signal.SIGTERM)
        return await asyncio.wait_for(running, 10)

    assert asyncio.run(scenario()) == 0
    assert sup.phase is Phase.STOPPED
    assert {"status": "gateway starting; worker generation 3 fatal"} in notifier.sent
    assert any(sent.get("stopping") == 1 for sent in notifier.sent)


def test_flapping_gateway_stops_the_instance_with_exit_1(
        make_supervisor: Callable[..., Arbiter]) -> None:
    sup = make_supervisor(CRASHES, SLEEPS, flap_max_exits=2)
    assert asyncio.run(asyncio.wait_for(sup.run(), 15)) == 1
    assert sup.gateway_state is SlotState.STOPPED and sup.worker_state is SlotState.STOPPED


#: Gateway process 1 crashes at once; process 0 stays up.
SECOND_CRASHES = (sys.executable, "-c", """
import os, sys, time
if os.environ["COPROC_GATEWAY_INDEX"] == "1":
    sys.exit(1)
time.sleep(60)
""")


def test_one_flapping_gateway_process_of_two_does_not_stop_the_instance(
        make_supervisor: Callable[..., Arbiter]) -> None:
    notifier = RecordingNotifier()
    sup = make_supervisor(SECOND_CRASHES, SLEEPS, flap_max_exits=2, notifier=notifier,
                          processes=2)

    async def scenario() -> int:
        running = asyncio.create_task(sup.run())
        await until(lambda: sup.gateway_states[1] is SlotState.FATAL)
        assert sup.phase is Phase.RUNNING  # process 0 still serves
        assert sup.gateway_states[0] is SlotState.STARTING
        status = sup.status(0.0)
        assert [g["index"] for g in status["gateways"]] == [0, 1]
        assert status["gateways"][1]["state"] == "fatal"
        assert status["gateways"][1]["retry_in_s"] is not None  # FATAL heals by itself
        assert status["gateways"][0]["pid"] == status["gateway"]["pid"] is not None
        sup.post_signal(signal.SIGTERM)
        return await asyncio.wait_for(running, 10)

    assert asyncio.run(scenario()) == 0
    assert any(str(sent.get("status", "")).startswith("gateways 0/2 running")
               for sent in notifier.sent)


IGNORES_TERM_THEN_READY = (sys.executable, "-c", """
import os, signal, time
from ipc.control import encode_control, inherited_control_socket
signal.signal(signal.SIGTERM, signal.SIG_IGN)
inherited_control_socket().send(encode_control({"type": "ready", "role": "gateway",
                                                "pid": os.getpid()}))
time.sleep(60)
""")


#: Says ready, then its "event loop" never reports again (a hung gateway).
READY_THEN_SILENT = (sys.executable, "-c", """
import os, time
from ipc.control import encode_control, inherited_control_socket
inherited_control_socket().send(encode_control({"type": "ready", "role": "gateway",
                                                "pid": os.getpid()}))
time.sleep(60)
""")


def test_a_silent_gateway_process_is_hung_and_restarted(
        make_supervisor: Callable[..., Arbiter], monkeypatch: pytest.MonkeyPatch) -> None:
    """No `status` from its loop for hang_timeout_ms after `ready`: SIGABRT, SIGKILL,
    restart (the exit names the hang)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))  # children import ipc
    sup = make_supervisor(READY_THEN_SILENT, SLEEPS, hang_timeout_ms=2000)

    async def scenario() -> dict[str, Any]:
        running = asyncio.create_task(sup.run())
        await until(lambda: sup.gateway_state is SlotState.RUNNING)
        first = sup.status(0.0)["gateway"]["pid"]
        await until(lambda: sup.status(0.0)["gateway"]["pid"] not in (None, first), 15)
        status = sup.status(0.0)
        sup.post_signal(signal.SIGTERM)
        await asyncio.wait_for(running, 10)
        return status

    status = asyncio.run(scenario())
    assert any("no heartbeat" in e["reason"] for e in status["last_exits"]), status["last_exits"]


def test_second_stop_signal_kills_at_once(make_supervisor: Callable[..., Arbiter],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))  # children import ipc
    sup = make_supervisor(IGNORES_TERM_THEN_READY, SLEEPS)

    async def scenario() -> int:
        running = asyncio.create_task(sup.run())
        await until(lambda: sup.gateway_state is SlotState.RUNNING)
        sup.post_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        assert not running.done()  # grace is 3 s and the gateway ignores SIGTERM
        sup.post_signal(signal.SIGINT)
        return await asyncio.wait_for(running, 2)

    assert asyncio.run(scenario()) == 0


def test_a_reload_whose_worker_never_loads_fails_and_keeps_the_old_one(
        tmp_path: Path) -> None:
    """1. Gateway and worker are stand-ins that sleep (the worker never says `loaded`).
    2. `reload`: the candidate misses the boot timeout, is killed, and the reload
       fails naming the timeout (no candidate is left).
    3. `status` reports the failed reload; `stop` stops everything.
    """
    (tmp_path / "apps").mkdir()
    cfg = GatewayConfig(
        path=tmp_path / "coproc.json", run_dir=tmp_path, app_path=tmp_path / "apps",
        supervisor=SupervisorOptions(stop_grace_ms=3000),
        worker=WorkerOptions(boot_timeout_ms=300))
    listener = bind_listener("127.0.0.1", 0)
    sup = Arbiter(cfg, [listener], ChildCommands(gateway=SLEEPS, worker=SLEEPS),
                     RecordingNotifier())

    async def scenario() -> int:
        running = asyncio.create_task(sup.run())
        await until(lambda: sup.worker_generation == 1)
        outcome = await asyncio.wait_for(sup.post_command("reload"), 10)
        assert outcome["ok"] is False
        assert "not ready within 300 ms" in outcome["error"], outcome
        status = (await asyncio.wait_for(sup.post_command("status"), 5))["status"]
        assert status["reload"]["last"]["ok"] is False
        assert status["worker"]["candidate"] is None
        assert (await asyncio.wait_for(sup.post_command("stop"), 5))["ok"] is True
        return await asyncio.wait_for(running, 10)

    try:
        assert asyncio.run(scenario()) == 0
    finally:
        listener.close()


# A worker stand-in that speaks the admission gate: `loaded`, wait for `admit`,
# `ready`, heartbeats.  Generation 1 exits 0 once <dir>/drain exists (as a worker
# told to DRAIN does).  Generation 2, once admitted, per FAKE_CANDIDATE: "ready"
# creates that file and says `ready` 0.3 s later; "drain-crash" creates it and
# exits 1 0.3 s later; "crash" exits 1 at once (generation 1 never drains).
GATED_WORKER = (sys.executable, "-c", """
import os, sys, time
from pathlib import Path
from typing import Any
from ipc.control import ControlEndpoint, ControlType
link = ControlEndpoint.inherited()
gen, flag = int(os.environ["COPROC_GENERATION"]), Path(os.environ["FAKE_DIR"]) / "drain"
link.send(ControlType.LOADED, {"generation": gen, "pid": os.getpid(), "plugins": {}})
while not any(m.type is ControlType.ADMIT for m in link.receive()):
    time.sleep(0.01)
if gen >= 2:
    mode = os.environ["FAKE_CANDIDATE"]
    if mode == "crash":
        sys.exit(1)
    flag.touch()
    time.sleep(0.3)
    if mode == "drain-crash":
        sys.exit(1)
link.send(ControlType.READY, {"role": "worker", "pid": os.getpid(), "generation": gen})
for _ in range(6000):
    if gen == 1 and flag.exists():
        sys.exit(0)
    link.send(ControlType.HEARTBEAT, {"generation": gen, "inflight": 0})
    time.sleep(0.01)
""")


def hot_restart_scenario(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         candidate: str) -> dict[str, Any]:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))
    monkeypatch.setenv("FAKE_DIR", str(tmp_path))
    monkeypatch.setenv("FAKE_CANDIDATE", candidate)
    (tmp_path / "apps").mkdir()
    cfg = GatewayConfig(path=tmp_path / "coproc.json", run_dir=tmp_path,
                        app_path=tmp_path / "apps",
                        supervisor=SupervisorOptions(stop_grace_ms=3000),
                        worker=WorkerOptions(boot_timeout_ms=20000))
    listener = bind_listener("127.0.0.1", 0)
    sup = Arbiter(cfg, [listener], ChildCommands(gateway=SLEEPS, worker=GATED_WORKER),
                  RecordingNotifier())

    async def scenario() -> dict[str, Any]:
        running = asyncio.create_task(sup.run())
        await until(lambda: sup.worker_state is SlotState.RUNNING)
        first = (await asyncio.wait_for(sup.post_command("status"), 5))["status"]
        reloading = sup.post_command("reload")
        during = []  # the worker as status showed it while the reload ran
        for _ in range(1500):
            if reloading.done():
                break
            worker = (await asyncio.wait_for(sup.post_command("status"), 5))["status"]["worker"]
            during.append((worker["generation"], worker["pid"], worker["candidate"]))
            await asyncio.sleep(0.01)
        outcome = await asyncio.wait_for(reloading, 15)
        status = (await asyncio.wait_for(sup.post_command("status"), 5))["status"]
        await asyncio.wait_for(sup.post_command("stop"), 5)
        assert await asyncio.wait_for(running, 10) == 0
        return {"first": first, "outcome": outcome, "status": status, "during": during}

    try:
        return asyncio.run(scenario())
    finally:
        listener.close()


def test_the_active_worker_leaves_the_slot_at_admission_and_its_exit_0_is_expected(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1. Generation 1 runs; `reload` starts generation 2, which is admitted.
    2. Generation 1 exits 0 (drained) *before* generation 2 says `ready`.
    3. The reload succeeds; that exit is no crash (no restart, no exit recorded)."""
    seen = hot_restart_scenario(tmp_path, monkeypatch, candidate="ready")
    assert seen["outcome"]["ok"] is True, seen["outcome"]
    worker = seen["status"]["worker"]
    assert worker["generation"] == 2 and worker["state"] == "running"
    assert worker["restarts"] == 0 and worker["hot_restarts"] == 1
    assert seen["status"]["last_exits"] == []


def test_status_always_shows_a_serving_worker_during_a_hot_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While generation 2 is admitted but not ready, the slot is vacant: status shows
    generation 1 while it serves on, then generation 2 once 1 has drained and left;
    never no worker at all (a reload via /tyk/reload was once polled into a None)."""
    seen = hot_restart_scenario(tmp_path, monkeypatch, candidate="ready")
    assert seen["outcome"]["ok"] is True, seen["outcome"]
    during = seen["during"]
    assert during, "the reload finished before status was asked once"
    assert all(generation in (1, 2) and pid for generation, pid, _ in during), during
    # The window this is about was seen: generation 2 admitted, not yet the slot's.
    assert any(candidate == 2 for _, _, candidate in during), during


def test_a_candidate_that_dies_after_admission_hands_the_slot_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1. Generation 2 is admitted (generation 1 leaves the slot), then exits 1.
    2. The reload fails naming the exit; generation 1, still serving, is the
       slot's child again: same pid, running, no restart."""
    seen = hot_restart_scenario(tmp_path, monkeypatch, candidate="crash")
    assert seen["outcome"]["ok"] is False
    assert "generation 2 exited 1" in seen["outcome"]["error"], seen["outcome"]
    before, after = seen["first"]["worker"], seen["status"]["worker"]
    assert after["pid"] == before["pid"] and after["generation"] == 1
    assert after["state"] == "running" and after["restarts"] == 0


def test_a_failed_candidate_after_the_old_one_drained_means_a_fresh_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1. Generation 2 is admitted; generation 1 drains and exits 0; then 2 exits 1.
    2. The reload fails; nothing serves, so generation 3 starts at once (no
       backoff: generation 1's exit was no crash)."""
    seen = hot_restart_scenario(tmp_path, monkeypatch, candidate="drain-crash")
    assert seen["outcome"]["ok"] is False
    worker = seen["status"]["worker"]
    assert worker["generation"] == 3 and worker["restarts"] == 0
    assert [e["generation"] for e in seen["status"]["last_exits"]] == [2]


def test_fatal_is_retried_after_a_growing_cooloff_reported_in_status(
        make_supervisor: Callable[..., Arbiter], monkeypatch: pytest.MonkeyPatch) -> None:
    """1. A worker that always fails goes FATAL after 3 exits (cool-off 0.3 s here).
    2. `status` reports FATAL and when the next try comes.
    3. After the cool-off it is started again (generation 4), fails, and is FATAL
       again with a longer cool-off (0.6 s) before generation 5.
    """
    monkeypatch.setattr(policy, "FATAL_COOLOFF_S", 0.3)
    monkeypatch.setattr(policy, "FATAL_COOLOFF_MAX_S", 5.0)
    sup = make_supervisor(SLEEPS, PLUGINS_FAIL, flap_max_exits=3)

    async def scenario() -> list[dict[str, Any]]:
        running = asyncio.create_task(sup.run())
        await until(lambda: sup.worker_state is SlotState.FATAL)
        fatal = (await asyncio.wait_for(sup.post_command("status"), 5))["status"]["worker"]
        await until(lambda: sup.worker_generation == 4)
        started_4 = asyncio.get_running_loop().time()
        await until(lambda: sup.worker_state is SlotState.FATAL)
        again = (await asyncio.wait_for(sup.post_command("status"), 5))["status"]["worker"]
        await until(lambda: sup.worker_generation == 5)
        assert asyncio.get_running_loop().time() - started_4 >= 0.5
        sup.post_signal(signal.SIGTERM)
        assert await asyncio.wait_for(running, 10) == 0
        return [fatal, again]

    fatal, again = asyncio.run(scenario())
    assert fatal["state"] == "fatal" and 0 < fatal["retry_in_s"] <= 0.3
    assert again["state"] == "fatal" and 0.3 < again["retry_in_s"] <= 0.6
