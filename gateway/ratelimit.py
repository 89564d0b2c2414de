"""Session rate limits (`rate` per `per` seconds) and quotas (`quota_max` per renewal).

Both are counted in storage under the session's key, so every gateway instance
sharing the storage enforces one limit.  A session with `rate` <= 0 or
`per` <= 0 has no rate limit; `quota_max` < 0 (Tyk's -1) or 0 means no quota.

As Tyk's GetAccessDefinitionByAPIIDOrSession: an API whose access right has a
`limit` of its own (policies write them: per-API and partitioned policies)
is limited by it, else by the session's values; the counters are named with
the access right's `allowance_scope` (`quota-<scope>-<key>`), so APIs of one
scope share a quota and other scopes count apart.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.policy import has_own_limit
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


async def enforce_limits(storage: Storage, key_id: str, session: dict[str, Any],
                         api_id: str = "", *, rate: bool = True, quota: bool = True,
                         quota_headers: bool = True) -> tuple[Limited | None, dict[str, str]]:
    """Count this request to `api_id`; (refusal or None, X-RateLimit-* headers for
    the response).  `rate`/`quota` False: the API's `disable_rate_limit`/
    `disable_quota` (that one is neither counted nor checked).  The headers are
    Tyk's `rate_limit_response_headers`: with `quota_headers` ("quotas", Tyk's
    default) the quota after this request, on an admitted request only; else
    ("rate_limits") the rate counts, on a 429 too.

    Updates `quota_remaining`/`quota_renews` in `session` (the root's, or the
    access rights' of the scope) so later hooks and the stored session see them.
    """
    headers: dict[str, str] = {}
    limits, scope = _limits_for(session, api_id)
    counted = f"{scope}-{key_id}" if scope else key_id
    allowed, per = _number(limits, "rate"), _number(limits, "per")
    if rate and allowed > 0 and per > 0:
        limit = int(allowed)
        hit = await storage.rate_hit(f"rate-{counted}", limit, per)
        if not quota_headers:
            headers = {"X-RateLimit-Limit": str(limit),
                       "X-RateLimit-Remaining": str(hit.remaining),
                       "X-RateLimit-Reset": str(int(time.time() + math.ceil(hit.reset)))}
        if not hit.allowed:
            return Limited(429, RATE_EXCEEDED, "RateLimitExceeded", headers), headers
    quota_max = int(_number(limits, "quota_max"))
    if quota and quota_max > 0:
        renewal = int(_number(limits, "quota_renewal_rate"))
        hit = await storage.quota_hit(f"quota-{counted}", quota_max, renewal)
        _record_quota(session, scope, hit.remaining,
                      int(time.time() + hit.reset) if hit.reset else None)
        if not hit.allowed:
            return Limited(403, QUOTA_EXCEEDED, "QuotaExceeded", headers), headers
    if quota_headers:  # Tyk's quotaSender: this API's quota after the request
        headers = {"X-RateLimit-Limit": str(int(_number(limits, "quota_max"))),
                   "X-RateLimit-Remaining": str(int(_number(limits, "quota_remaining"))),
                   "X-RateLimit-Reset": str(int(_number(limits, "quota_renews")))}
    return None, headers


def _limits_for(session: Mapping[str, Any], api_id: str) -> tuple[Mapping[str, Any], str]:
    """(the values that limit this API, their counters' scope), as Tyk's
    GetAccessDefinitionByAPIIDOrSession: the API's own `limit` unless it is empty,
    else the session's; the scope is the access right's either way."""
    rights = session.get("access_rights")
    right = rights.get(api_id) if api_id and isinstance(rights, Mapping) else None
    if not isinstance(right, Mapping):
        return session, ""
    scope = str(right.get("allowance_scope") or "")
    limit = right.get("limit")
    return (limit if has_own_limit(limit) else session), scope


def _record_quota(session: dict[str, Any], scope: str, remaining: int,
                  renews: int | None) -> None:
    """The counts on every access right of `scope` with a limit, and on the root for
    the unscoped quota (Tyk's updateSessionQuota)."""
    rights = session.get("access_rights")
    for right in rights.values() if isinstance(rights, Mapping) else ():
        limit = right.get("limit") if isinstance(right, dict) else None
        if has_own_limit(limit) and isinstance(limit, dict) \
                and str(right.get("allowance_scope") or "") == scope:
            limit["quota_remaining"] = remaining
            if renews is not None:
                limit["quota_renews"] = renews
    if not scope:
        session["quota_remaining"] = remaining
        if renews is not None:
            session["quota_renews"] = renews
