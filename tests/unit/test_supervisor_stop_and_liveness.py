"""Pure decisions of the loop: hang detection, the staged-stop schedule, sd_notify."""

from __future__ import annotations

from pathlib import Path

import pytest
from unit.recording import RecordingNotifier

from config.gateway import GatewayConfig, GatewayOptions, SupervisorOptions, WorkerOptions
from supervisor.liveness import hang_reason
from supervisor.shutdown import FINAL_REAP_S, StopPlan
from supervisor.status import ServiceStatus

OPTS = WorkerOptions(boot_timeout_ms=2000, heartbeat_timeout_ms=500)


def test_boot_timeout() -> None:
    assert hang_reason(100.0, None, 101.9, OPTS) is None
    assert hang_reason(100.0, None, 102.1, OPTS) == "not ready within 2000 ms"


def test_heartbeat_timeout_after_ready() -> None:
    assert hang_reason(100.0, 0.4, 500.0, OPTS) is None  # boot time no longer matters
    assert hang_reason(100.0, 0.6, 500.0, OPTS) == "no heartbeat for 600 ms"


def config(stop_ms: int, drain_ms: int) -> GatewayConfig:
    return GatewayConfig(path=Path("/x.json"),
                         supervisor=SupervisorOptions(stop_grace_ms=stop_ms),
                         gateway=GatewayOptions(drain_grace_ms=drain_ms))


def test_worker_stops_after_the_gateway_or_at_the_latest_point() -> None:
    plan = StopPlan.starting_at(10.0, config(stop_ms=10000, drain_ms=10000))
    assert plan.deadline == pytest.approx(20.0)
    assert not plan.worker_term_due(11.0, gateway_alive=True)
    assert plan.worker_term_due(11.0, gateway_alive=False)
    assert plan.worker_term_due(18.0, gateway_alive=True)  # 80 % of the grace
    short_drain = StopPlan.starting_at(10.0, config(stop_ms=10000, drain_ms=2000))
    assert short_drain.worker_term_due(12.0, gateway_alive=True)


def test_kill_at_the_deadline_or_now_then_give_up() -> None:
    plan = StopPlan.starting_at(0.0, config(stop_ms=3000, drain_ms=1000), exit_code=1)
    assert not plan.kill_due(2.9) and plan.kill_due(3.0)
    plan.kill_now(1.0)  # a second signal
    assert plan.killed and not plan.kill_due(1.0)
    assert not plan.give_up_due(1.0 + FINAL_REAP_S - 0.1)
    assert plan.give_up_due(1.0 + FINAL_REAP_S)
    assert plan.exit_code == 1


class Recorder(RecordingNotifier):
    def watchdog_interval(self) -> float | None:
        return 5.0


def test_ready_once_status_on_change_watchdog_on_schedule() -> None:
    rec = Recorder()
    status = ServiceStatus(rec)
    status.update("gateway starting")
    status.update("gateway starting")
    status.update("gateway running", ready=True)
    status.update("gateway running", ready=True)
    status.ping(0.0)
    status.ping(4.0)
    status.ping(5.0)
    status.stopping("SIGTERM received")
    assert rec.sent == [{"status": "gateway starting"},
                        {"ready": 1, "status": "gateway running"},
                        {"watchdog": 1}, {"watchdog": 1},
                        {"stopping": 1, "status": "stopping: SIGTERM received"}]
