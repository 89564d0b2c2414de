"""Session rate limits (`rate` per `per` seconds) and quotas (`quota_max` per renewal).

Both are counted in storage under the session's key, so every gateway instance
sharing the storage enforces one limit.  A session with `rate` <= 0 or
`per` <= 0 has no rate limit; `quota_max` < 0 (Tyk's -1) or 0 means no quota.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.storage import Storage

__all__ = ["Limited", "enforce_limits"]

RATE_EXCEEDED = "Rate Limit Exceeded"
QUOTA_EXCEEDED = "Quota exceeded"


@dataclass(frozen=True, slots=True)
class Limited:
    """A request the limits refuse: status, message, headers, and the event to fire."""

    status: int
    message: str
    event: str
    headers: Mapping[str, str] = field(default_factory=dict)


def _number(session: Mapping[str, Any], key: str) -> float:
    value = session.get(key) or 0
    return float(value) if isinstance(value, (int, float)) else 0.0


async def enforce_limits(storage: Storage, key_id: str, session: dict[str, Any], *,
                         rate: bool = True,
                         quota: bool = True) -> tuple[Limited | None, dict[str, str]]:
    """Count this request; (refusal or None, X-RateLimit-* headers for the response).
    `rate`/`quota` False: the API's `disable_rate_limit`/`disable_quota` (that one
    is neither counted nor checked).

    Updates `quota_remaining`/`quota_renews` in `session` so later hooks and
    the stored session see the counts.
    """
    headers: dict[str, str] = {}
    allowed, per = _number(session, "rate"), _number(session, "per")
    if rate and allowed > 0 and per > 0:
        limit = int(allowed)
        hit = await storage.rate_hit(f"rate-{key_id}", limit, per)
        headers = {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": str(hit.remaining),
                   "X-RateLimit-Reset": str(int(time.time() + math.ceil(hit.reset)))}
        if not hit.allowed:
            return Limited(429, RATE_EXCEEDED, "RateLimitExceeded", headers), headers
    quota_max = int(_number(session, "quota_max"))
    if quota and quota_max > 0:
        renewal = int(_number(session, "quota_renewal_rate"))
        hit = await storage.quota_hit(f"quota-{key_id}", quota_max, renewal)
        session["quota_remaining"] = hit.remaining
        if hit.reset:
            session["quota_renews"] = int(time.time() + hit.reset)
        if not hit.allowed:
            return Limited(403, QUOTA_EXCEEDED, "QuotaExceeded", headers), headers
    return None, headers
