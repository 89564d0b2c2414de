"""The connection guard's cap: evict the oldest idle or slow connection, else refuse."""

from __future__ import annotations

from typing import Any

from config.gateway import GatewayOptions
from gateway.frontdoor import ConnectionGuard, connection_cap


class FakeConnection:
    def __init__(self, busy: bool) -> None:
        self.busy, self.closed = busy, False

    def evictable(self) -> bool:
        return not self.busy

    def force_close(self) -> None:
        self.closed = True


def test_cap_evicts_the_oldest_idle_connection_first() -> None:
    guard = ConnectionGuard(cap=3, header_timeout_s=0)
    busy, idle_old, idle_new = FakeConnection(True), FakeConnection(False), FakeConnection(False)
    for conn in (busy, idle_old, idle_new):
        assert guard.admit(conn)  # type: ignore[arg-type]
    newcomer: Any = FakeConnection(False)
    assert guard.admit(newcomer)
    assert idle_old.closed and not busy.closed and not idle_new.closed
    assert guard.count == 3 and guard.evicted.total == 1


def test_cap_refuses_when_every_connection_is_busy() -> None:
    guard = ConnectionGuard(cap=2, header_timeout_s=0)
    for _ in range(2):
        assert guard.admit(FakeConnection(True))  # type: ignore[arg-type]
    assert not guard.admit(FakeConnection(False))  # type: ignore[arg-type]
    assert guard.refused.total == 1 and guard.count == 2


def test_auto_cap_leaves_room_for_upstream_connections() -> None:
    assert connection_cap(GatewayOptions(max_connections=7)) == 7
    auto = connection_cap(GatewayOptions(upstream_max_connections=512))
    assert auto >= 64
