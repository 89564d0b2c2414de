"""Throttle: one line per interval for a repeated failure, with the count held back."""

from __future__ import annotations

from ipc.ratelog import Throttle


def test_once_per_interval_with_the_count_held_back() -> None:
    """1. The first occurrence is due at once.  2. Within the interval: quiet.
    3. The first one after it is due and says how many were held back."""
    now = [100.0]
    throttle = Throttle(10.0, clock=lambda: now[0])
    assert throttle.due() == 0
    for step in range(1, 1000):
        now[0] = 100.0 + step * 0.005
        assert throttle.due() is None
    now[0] = 110.0
    assert throttle.due() == 999
    now[0] = 125.0
    assert throttle.due() == 0  # a quiet interval: nothing was held back
