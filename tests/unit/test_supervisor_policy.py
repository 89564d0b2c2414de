"""RestartPolicy: backoff doubling and cap, reset after a stable period, flapping."""

from __future__ import annotations

import pytest

from config.gateway import SupervisorOptions
from supervisor.policy import RestartPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy(clock: FakeClock, *, initial: float = 0.1, maximum: float = 1.0,
           flap_max: int = 100, window: float = 60.0) -> RestartPolicy:
    return RestartPolicy(initial, maximum, flap_max, window, stable_s=10.0, clock=clock)


def crash(p: RestartPolicy, clock: FakeClock, ran_for: float = 0.1,
          boot_failure: bool = False) -> float:
    """One child life: started, ready, ran `ran_for` seconds, exited."""
    p.started()
    p.ready()
    clock.now += ran_for
    verdict = p.exited(boot_failure)
    assert not verdict.fatal
    return verdict.delay_s


def test_backoff_doubles_up_to_the_cap() -> None:
    clock = FakeClock()
    p = policy(clock)
    delays = [crash(p, clock) for _ in range(7)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_backoff_resets_after_a_stable_period_of_readiness() -> None:
    clock = FakeClock()
    p = policy(clock)
    assert [crash(p, clock) for _ in range(3)] == pytest.approx([0.1, 0.2, 0.4])
    assert crash(p, clock, ran_for=10.0) == pytest.approx(0.1)
    assert crash(p, clock) == pytest.approx(0.2)


def test_time_before_ready_does_not_count_as_stable() -> None:
    clock = FakeClock()
    p = policy(clock)
    crash(p, clock)
    p.started()
    clock.now += 30  # a slow boot that never became ready
    assert p.exited().delay_s == pytest.approx(0.2)


def test_boot_failures_never_reset_the_backoff() -> None:
    clock = FakeClock()
    p = policy(clock)
    crash(p, clock)
    assert crash(p, clock, ran_for=20.0, boot_failure=True) == pytest.approx(0.2)


def test_flapping_is_fatal() -> None:
    clock = FakeClock()
    p = policy(clock, flap_max=3, window=5.0)
    crash(p, clock)
    crash(p, clock)
    p.started()
    verdict = p.exited()
    assert verdict.fatal and verdict.recent_exits == 3
    assert verdict.delay_s == pytest.approx(30.0)  # FATAL_COOLOFF_S: then it is tried again


def fatal_policy(clock: FakeClock) -> RestartPolicy:
    return RestartPolicy(0.1, 1.0, 2, 60.0, stable_s=10.0, clock=clock, cooloff_s=5.0,
                         cooloff_max_s=12.0)


def go_fatal(p: RestartPolicy, clock: FakeClock, ran_for: float = 0.1) -> float:
    """Two quick exits: FATAL; its cool-off, after which the child is tried again."""
    crash(p, clock, ran_for)
    p.started()
    p.ready()
    clock.now += 0.1
    verdict = p.exited()
    assert verdict.fatal
    return verdict.delay_s


def test_fatal_cooloff_grows_and_is_capped() -> None:
    """1. FATAL, retried after 5 s; 2. it fails again at once: 10 s; 3. then 12 (cap)."""
    clock = FakeClock()
    p = fatal_policy(clock)
    assert go_fatal(p, clock) == pytest.approx(5.0)
    cooloffs = []
    for _ in range(3):
        clock.now += 5.0  # the cool-off passes; the retried child exits at once
        p.started()
        verdict = p.exited()
        assert verdict.fatal  # still within the flapping window
        cooloffs.append(verdict.delay_s)
    assert cooloffs == pytest.approx([10.0, 12.0, 12.0])


def test_a_stable_run_resets_the_cooloff_and_the_backoff() -> None:
    """1. FATAL twice (5 s, then 10 s).  2. The retry runs stable for 10 s, then exits.
    3. The next exits restart after the initial backoff, and a next FATAL cools off 5 s."""
    clock = FakeClock()
    p = fatal_policy(clock)
    assert go_fatal(p, clock) == pytest.approx(5.0)
    clock.now += 5.0
    p.started()
    assert p.exited().delay_s == pytest.approx(10.0)
    clock.now += 120.0  # past the window: the next exit alone is no flapping
    assert crash(p, clock, ran_for=10.0) == pytest.approx(0.1)
    p.started()
    p.ready()
    clock.now += 0.1
    verdict = p.exited()
    assert verdict.fatal and verdict.delay_s == pytest.approx(5.0)


def test_an_operators_reset_also_resets_the_cooloff() -> None:
    clock = FakeClock()
    p = fatal_policy(clock)
    go_fatal(p, clock)
    assert p.cooloff() == pytest.approx(10.0)  # a failed revival: the next one
    p.reset()
    assert p.cooloff() == pytest.approx(5.0)


def test_exits_outside_the_window_are_forgotten() -> None:
    clock = FakeClock()
    p = policy(clock, flap_max=3, window=5.0)
    crash(p, clock)
    crash(p, clock)
    clock.now += 6.0
    p.started()
    verdict = p.exited()
    assert not verdict.fatal and verdict.recent_exits == 1


def test_from_options_reads_milliseconds() -> None:
    clock = FakeClock()
    opts = SupervisorOptions(restart_backoff_initial_ms=250, restart_backoff_max_ms=400,
                             flap_max_exits=2, flap_window_s=60)
    p = RestartPolicy.from_options(opts, clock)
    p.started()
    first = p.exited()
    assert first.delay_s == pytest.approx(0.25) and not first.fatal
    assert p.exited().fatal
