"""Which limits count for an API, and under which counters (Tyk's
GetAccessDefinitionByAPIIDOrSession and updateSessionQuota)."""

from __future__ import annotations

from typing import Any

from gateway.ratelimit import enforce_limits
from gateway.storage import MemoryStorage


def _session() -> dict[str, Any]:
    return {"rate": 1000, "per": 1, "quota_max": 100, "quota_renewal_rate": 60,
            "access_rights": {
                "a": {"allowance_scope": "p1", "limit": {"quota_max": 2, "rate": 5, "per": 1}},
                "a2": {"allowance_scope": "p1", "limit": {"quota_max": 2, "rate": 5, "per": 1}},
                "b": {"allowance_scope": "b", "limit": {}},
                "c": {}}}


async def test_an_api_limit_counts_under_its_scope_and_is_recorded_there() -> None:
    storage, session = MemoryStorage(), _session()
    limited, headers = await enforce_limits(storage, "k", session, "a", quota_headers=False)
    assert limited is None and headers["X-RateLimit-Limit"] == "5"
    rights = session["access_rights"]
    assert rights["a"]["limit"]["quota_remaining"] == rights["a2"]["limit"]["quota_remaining"] == 1
    assert "quota_remaining" not in session  # the root's count is another counter's
    await enforce_limits(storage, "k", session, "a2")  # one scope: one quota for both
    limited, _ = await enforce_limits(storage, "k", session, "a")
    assert limited is not None and limited.status == 403
    assert await storage.quota_peek("quota-p1-k", 2) is not None
    assert await storage.quota_peek("quota-k", 100) is None


async def test_without_a_limit_of_its_own_the_sessions_count_in_the_apis_scope() -> None:
    storage, session = MemoryStorage(), _session()
    _, headers = await enforce_limits(storage, "k", session, "b", quota_headers=False)
    assert headers["X-RateLimit-Limit"] == "1000"
    assert await storage.quota_peek("quota-b-k", 100) is not None
    _, headers = await enforce_limits(storage, "k", session, "c")  # no scope: the root
    assert session["quota_remaining"] == 99 and "quota_renews" in session
