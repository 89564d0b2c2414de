"""The supervisor's collaborating objects, each alone: GatewayLink, Slot, Handover.

Children are stand-ins that record what they were sent; no process is started.
"""

from __future__ import annotations

from typing import Any, cast

from ipc.control import ControlType
from supervisor.child import ChildProcess, ChildState, Role
from supervisor.ctl import format_status
from supervisor.gateway_link import GatewayLink, GatewayReporter, WorkerReporter
from supervisor.handover import Handover
from supervisor.policy import FATAL_COOLOFF_S, RestartPolicy
from supervisor.slot import Slot, SlotState


class FakeChild:
    """What the link and the handover use of a ChildProcess."""

    def __init__(self, generation: int = 1, pid: int = 100) -> None:
        self.generation, self.pid = generation, pid
        self.sent: list[tuple[ControlType, dict[str, Any]]] = []
        self.state = ChildState.READY
        self.alive = True

    def send(self, kind: ControlType, fields: dict[str, Any]) -> bool:
        self.sent.append((kind, dict(fields)))
        return True

    def retire(self) -> None:
        self.state = ChildState.STOPPING

    def reap(self) -> None:
        return None


def child(generation: int = 1, pid: int = 100) -> tuple[FakeChild, ChildProcess]:
    fake = FakeChild(generation, pid)
    return fake, cast(ChildProcess, fake)


def test_worker_state_is_sent_on_change_and_to_a_gateway_that_comes_up() -> None:
    """1. A worker state reaches the gateway; the same state again is not re-sent.
    2. STOPPED is "stopping" on the wire.
    3. A gateway that (re)starts gets the last state at once; a gone one gets nothing.
    """
    link = GatewayLink()
    first, first_child = child()
    link.gateway_up(first_child)
    link.worker_state(SlotState.RUNNING, 3, "")
    link.worker_state(SlotState.RUNNING, 3, "")
    link.worker_state(SlotState.STOPPED, 3, "")
    assert first.sent == [
        (ControlType.WORKER_STATE, {"state": "running", "generation": 3, "detail": ""}),
        (ControlType.WORKER_STATE, {"state": "stopping", "generation": 3, "detail": ""})]
    link.gateway_down(first_child)
    second, second_child = child()
    link.gateway_up(second_child)
    link.worker_exited(3, "exited 1")
    assert len(first.sent) == 2
    assert second.sent == [
        (ControlType.WORKER_STATE, {"state": "stopping", "generation": 3, "detail": ""}),
        (ControlType.WORKER_EXITED, {"generation": 3, "reason": "exited 1"})]


def test_every_gateway_up_hears_reload_apis_and_exits() -> None:
    link = GatewayLink()
    gateways = [child() for _ in range(3)]
    for _, gateway in gateways:
        link.gateway_up(gateway)
    gateways[1][0].alive = False  # exited, not reaped yet
    link.reload_apis(4)
    assert [len(fake.sent) for fake, _ in gateways] == [1, 0, 1]
    assert gateways[0][0].sent == [(ControlType.RELOAD_APIS, {"generation": 4})]


def test_reporters_turn_watcher_news_into_link_calls() -> None:
    link = GatewayLink()
    gateway, gateway_child = child()
    GatewayReporter(link).started(gateway_child)
    worker = WorkerReporter(link)
    worker.changed(SlotState.STARTING, 0, "")  # generation 0: no worker ever started
    assert gateway.sent == []
    worker.changed(SlotState.FATAL, 2, "last exits: a; b")
    _, worker_child = child(2)
    worker.exited(worker_child, "killed (SIGKILL)")
    assert [kind for kind, _ in gateway.sent] == [ControlType.WORKER_STATE,
                                                  ControlType.WORKER_EXITED]
    GatewayReporter(link).exited(gateway_child, "exited 0")
    link.reload_apis(3)
    assert len(gateway.sent) == 2


def test_with_several_gateway_processes_each_hears_every_ones_state() -> None:
    """The roster (`gateways`) reaches every process on each change; a gone
    process loses its pid; with one process nothing of it is sent."""
    link = GatewayLink(processes=2)
    (zero, zero_child), (one, one_child) = child(pid=10), child(pid=11)
    reporters = [GatewayReporter(link, 0), GatewayReporter(link, 1)]
    reporters[0].started(zero_child)
    reporters[1].started(one_child)
    reporters[0].changed(SlotState.RUNNING, 1, "")
    reporters[1].changed(SlotState.RUNNING, 1, "")
    reporters[1].changed(SlotState.RUNNING, 1, "")  # no change: nothing sent
    reporters[1].changed(SlotState.FATAL, 1, "last exits: x")
    rosters = [fields["processes"] for kind, fields in zero.sent
               if kind is ControlType.GATEWAYS]
    assert rosters[-1] == [{"index": 0, "pid": 10, "state": "running"},
                           {"index": 1, "state": "fatal"}]
    assert len(rosters) == 5  # up, up, running, running, fatal
    assert [f["processes"] for k, f in one.sent if k is ControlType.GATEWAYS] == rosters[1:]

    single = GatewayLink()
    lone, lone_child = child()
    GatewayReporter(single).started(lone_child)
    GatewayReporter(single).changed(SlotState.RUNNING, 1, "")
    assert lone.sent == []


def test_status_text_has_a_line_per_gateway_process() -> None:
    status = {"pid": 1, "phase": "running", "gateway": {"pid": 10, "state": "running"},
              "gateways": [{"index": 0, "pid": 10, "state": "running", "uptime_s": 5,
                            "restarts": 0, "stats": {"requests": 7}, "retry_in_s": None},
                           {"index": 1, "pid": None, "state": "fatal", "uptime_s": None,
                            "restarts": 4, "stats": {}, "retry_in_s": 30}],
              "worker": {}}
    text = format_status(status)
    assert "gateway 0   pid 10  running  up 0m05s  requests 7  restarts 0" in text
    assert "gateway 1   no process  fatal  up -  requests -  restarts 4  next try in 0m30s" \
        in text
    status["gateways"] = status["gateways"][:1]
    assert "gateway     pid 10  running" in format_status(status)
    assert "gRPC server" not in format_status(status)
    status["grpc_server"] = {"pid": 12, "generation": 2, "state": "running",
                             "address": "unix:///run/g.sock", "uptime_s": 61, "restarts": 1,
                             "hot_restarts": 3}
    assert ("gRPC server pid 12  generation 2  RUNNING  at unix:///run/g.sock  up 1m01s  "
            "restarts 1  hot restarts 3") in format_status(status)


def slot() -> Slot:
    return Slot(Role.WORKER, RestartPolicy(0.1, 1.0, 5, 60.0, clock=lambda: 0.0))


def test_a_released_child_comes_back_if_it_is_still_alive() -> None:
    s = slot()
    _, old = child()
    s.started(old)
    s.ready()
    assert s.release() is old and s.child is None and s.restart_at is None
    assert not s.restart_due(1.0)  # a hot restart replaces it, not a restart
    s.reinstate(old, 1.0, fatal=False)
    assert s.child is old and s.state is SlotState.RUNNING


def test_a_released_child_that_left_means_a_fresh_start_or_fatal_again() -> None:
    s = slot()
    gone, old = child()
    s.started(old)
    s.release()
    gone.alive = False
    s.reinstate(old, 5.0, fatal=False)
    assert s.child is None and s.restart_due(5.0)
    revived = Slot(Role.WORKER, RestartPolicy(0.1, 1.0, 1, 60.0, clock=lambda: 0.0))
    _, crashed = child()
    revived.started(crashed)
    assert revived.exited(0.0, "exited 1", boot_failure=False).fatal
    revived.revive(0.0)
    revived.reinstate(None, 5.0, fatal=True)
    # FATAL again, retried after a fresh cool-off (the operator reset the policy)
    assert revived.state is SlotState.FATAL and revived.restart_at == 5.0 + FATAL_COOLOFF_S


def test_outgoing_generation_retires_at_adoption_or_goes_back() -> None:
    """1. At admission the active generation is held as outgoing (no deadline yet).
    2. Adoption retires it with a drain deadline; 3. or a failure hands it back."""
    handover = Handover(retire_grace_s=3.0)
    fake_old, old = child(1)
    handover.hold(old)
    assert handover.outgoing is old and list(handover.children()) == [old]
    assert handover.overdue(100.0) == []  # still serving: no deadline runs
    assert handover.adopted(10.0) is old
    assert fake_old.state is ChildState.STOPPING and handover.retiring == {old: 13.0}
    assert handover.overdue(13.0) == [old] and handover.count == 1
    again = Handover(retire_grace_s=3.0)
    again.hold(old)
    assert again.take_outgoing() is old and again.outgoing is None
    assert not again.retiring and again.count == 0


def test_status_text_says_when_a_fatal_worker_is_tried_again() -> None:
    text = format_status({"worker": {"state": "fatal", "retry_in_s": 42.5, "restarts": 5}})
    assert "FATAL" in text and "restarts 5" in text and "next try in 0m42s" in text
    assert "next try" not in format_status({"worker": {"state": "running", "retry_in_s": None}})
