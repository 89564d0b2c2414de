"""Tyk security policies applied to sessions: rate, quota, access rights, partitions.

A session names its policies in `apply_policies` (or the legacy
`apply_policy_id`); each request applies them to the session read from
storage or returned by an auth plugin, as Tyk's policy service does
(facts from Tyk's `internal/policy/apply.go`):

* the parts a policy sets are first cleared on the session (all parts, or
  only its `partitions`: `quota`, `rate_limit`, `acl`, `complexity`);
* for every API in a policy's `access_rights`: the ACLs merge (versions and
  allowed URLs joined), the quota takes the larger `quota_max` (-1,
  unlimited, is larger than any) and `quota_renewal_rate`, the rate limit
  takes the policy's when it allows more requests (shorter `per`/`rate`);
  a policy without access rights sets the session's values directly;
* `per_api` policies give each API its own `limit`; mixing them with
  partitioned policies is an error;
* tags join, `meta_data` of the policies is merged in, the key is inactive
  if any policy is;
* a policy of another org, a missing policy (when it is the only one), or no
  API left in the result: the session is refused (with Tyk's error texts,
  which the admin API answers with);
* a session without policies keeps its own values; an API of it with its own
  `limit` gets `allowance_scope` set to the API's id (its quota counter's scope).

* when the ACLs come from several policies, each API without a scope gets the
  id of the policy that set its ACL as `allowance_scope` (Tyk's `SetBy`), so
  each policy's APIs count against their own rate and quota.

gateway/ratelimit.py enforces an API's own `limit` when it has one (else the
session's), counted under its `allowance_scope`.

`PolicyStore` reads the policy files (config/policies.py) and re-reads them
when they change (checked at most once a second), so a policy edit is live
without a restart; a broken edit keeps the last good policies and is logged.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from config.policies import PolicyOptions, load_policies, policy_files
from config.reader import ConfigError

__all__ = ["PolicyStore", "apply_policies", "has_own_limit"]

log = logging.getLogger("coproc.gateway.policy")

_LIMIT_FIELDS = ("rate", "per", "quota_max", "quota_renewal_rate", "throttle_interval",
                 "throttle_retry_limit", "max_query_depth")
#: The fields Tyk's `APILimit.IsEmpty` looks at.
_API_LIMIT_FIELDS = (*_LIMIT_FIELDS, "quota_renews", "quota_remaining")


class PolicyStore:
    """The policies by id, re-read when their files change."""

    def __init__(self, options: PolicyOptions | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options or PolicyOptions()
        self._clock = clock
        self._checked = 0.0
        self._signature = self._current_signature()
        self.policies: dict[str, dict[str, Any]] = load_policies(self.options)

    @classmethod
    def of(cls, policies: Mapping[str, dict[str, Any]]) -> PolicyStore:
        """A fixed set (tests, and sessions' own policies)."""
        store = cls()
        store.policies = dict(policies)
        return store

    def get(self, policy_id: str) -> dict[str, Any] | None:
        self.refresh()
        return self.policies.get(policy_id)

    def refresh(self) -> None:
        now = self._clock()
        if not self.options.configured or now - self._checked < 1.0:
            return
        self._checked = now
        signature = self._current_signature()
        if signature == self._signature:
            return
        self._signature = signature
        try:
            self.policies = load_policies(self.options)
            log.info("policies re-read: %d", len(self.policies))
        except ConfigError as exc:
            log.error("policies not re-read, keeping the last good ones: %s", exc)

    def _current_signature(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        for path in policy_files(self.options):
            try:
                stat = path.stat()
            except OSError:
                continue
            out.append((str(path), stat.st_mtime_ns, stat.st_size))
        return tuple(out)


def has_own_limit(limit: Any) -> TypeGuard[Mapping[str, Any]]:
    """Whether an access right's `limit` sets anything (not Tyk's `APILimit.IsEmpty`)."""
    return isinstance(limit, Mapping) and any(_num(limit.get(k)) for k in _API_LIMIT_FIELDS)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else 0.0


def _greater(first: float, second: float) -> bool:
    """Tyk's comparison of quotas and depths: -1 (unlimited) beats everything."""
    if first == -1:
        return True
    if second == -1:
        return False
    return first > second


def _duration(limits: Mapping[str, Any]) -> float:
    rate, per = _num(limits.get("rate")), _num(limits.get("per"))
    return per / rate if rate and per else 0.0


def _empty_rate(limits: Mapping[str, Any]) -> bool:
    return not _num(limits.get("rate")) or not _num(limits.get("per"))


def _policy_limit(policy: Mapping[str, Any]) -> dict[str, Any]:
    return {k: policy[k] for k in _LIMIT_FIELDS if k in policy}


@dataclass
class _State:
    rights: dict[str, dict[str, Any]] = field(default_factory=dict)
    acl: set[str] = field(default_factory=set)
    quota: set[str] = field(default_factory=set)
    rate: set[str] = field(default_factory=set)
    complexity: set[str] = field(default_factory=set)
    # api_id -> the policy that last set its ACL (Tyk's Limit.SetBy): when the ACLs
    # come from several policies, each API's counters are scoped by its policy.
    set_by: dict[str, str] = field(default_factory=dict)
    per_api: bool = False
    partitioned: bool = False


def _parts(policy: Mapping[str, Any]) -> dict[str, bool]:
    p = policy.get("partitions") or {}
    return {k: bool(p.get(k)) for k in ("quota", "rate_limit", "acl", "complexity", "per_api")}


def policy_ids(session: Mapping[str, Any]) -> list[str]:
    ids = session.get("apply_policies") or []
    if ids:
        return [str(i) for i in ids]
    legacy = session.get("apply_policy_id")
    return [str(legacy)] if legacy else []


def apply_policies(session: dict[str, Any], store: PolicyStore,
                   org_id: str | None = None) -> str:
    """Apply the session's policies to it in place; "" or why the key is refused.

    `org_id` is the API's (None: no API, as for the admin API): a policy of
    another org is refused.
    """
    ids = policy_ids(session)
    if not ids:
        _scope_own_limits(session)
        return ""
    _clear(session, [p for p in map(store.get, ids) if p is not None])
    state = _State()
    meta = session.get("meta_data")
    session["meta_data"] = meta = dict(meta) if isinstance(meta, Mapping) else {}
    tags: list[str] = []
    inactive = False
    for pid in ids:
        policy = store.get(pid)
        if policy is None:
            log.error("policy not found: %r", pid)
            if len(ids) > 1:
                continue
            return f"policy not found: {json.dumps(pid)}"  # Go's %q
        if org_id is not None and policy.get("org_id", "") != org_id:
            return "attempting to apply policy from different organisation to key, skipping"
        parts = _parts(policy)
        partitioned = any(parts[k] for k in ("quota", "rate_limit", "acl", "complexity"))
        if parts["per_api"] and partitioned:
            return f"cannot apply policy {policy.get('id', pid)} which has per_api and any " \
                   "of partitions set"
        problem = _per_api(policy, session, state) if parts["per_api"] else \
            _partitions(policy, session, state, parts, partitioned)
        if problem:
            return problem
        inactive = inactive or bool(policy.get("is_inactive"))
        tags += [str(t) for t in policy.get("tags") or [] if str(t) not in tags]
        meta.update(policy.get("meta_data") or {})
        if str(policy.get("last_updated") or "") > str(session.get("last_updated") or ""):
            session["last_updated"] = policy["last_updated"]
    session["is_inactive"] = inactive
    tags += [str(t) for t in session.get("tags") or [] if str(t) not in tags]
    session["tags"] = tags
    _finish(session, state)
    if not state.rights:
        return "key has no valid policies to be applied"
    return ""


def _scope_own_limits(session: dict[str, Any]) -> None:
    rights = session.get("access_rights")
    if not isinstance(rights, dict):
        return
    for api_id, right in rights.items():
        limit = right.get("limit") if isinstance(right, dict) else None
        if has_own_limit(limit):
            right["allowance_scope"] = api_id


def _clear(session: dict[str, Any], policies: list[dict[str, Any]]) -> None:
    for policy in policies:
        parts = _parts(policy)
        every = not any(parts[k] for k in ("quota", "rate_limit", "acl", "complexity"))
        if parts["quota"] or every:
            session["quota_max"] = session["quota_remaining"] = 0
        if parts["rate_limit"] or every:
            session["rate"] = session["per"] = 0
            session["throttle_retry_limit"] = session["throttle_interval"] = 0
        if parts["complexity"] or every:
            session["max_query_depth"] = 0


def _per_api(policy: Mapping[str, Any], session: dict[str, Any], state: _State) -> str:
    if state.partitioned:
        return "cannot apply multiple policies when some have per_api set and some are " \
               "partitioned"
    for api_id, right in (policy.get("access_rights") or {}).items():
        right = copy.deepcopy(right)
        if not right.get("limit"):
            right["limit"] = _policy_limit(policy)
            right["allowance_scope"] = policy.get("id", "")
        else:
            right["allowance_scope"] = api_id
        state.rights[api_id] = right
        for done in (state.acl, state.quota, state.rate, state.complexity):
            done.add(api_id)
    state.per_api = state.per_api or bool(policy.get("access_rights"))
    return ""


def _partitions(policy: Mapping[str, Any], session: dict[str, Any], state: _State,
                parts: dict[str, bool], partitioned: bool) -> str:
    if partitioned and state.per_api:
        return "cannot apply multiple policies when some have per_api set and some are " \
               "partitioned"
    for api_id, right in (policy.get("access_rights") or {}).items():
        ar = state.rights.setdefault(api_id, {"limit": {}})
        limit = ar["limit"]
        if not partitioned or parts["acl"]:
            state.acl.add(api_id)
            _merge_acl(ar, right)
            state.set_by[api_id] = str(policy.get("id", ""))
        if not partitioned or parts["quota"]:
            state.quota.add(api_id)
            _raise(policy, limit, session, "quota_max", _greater)
            _raise(policy, limit, session, "quota_renewal_rate", lambda a, b: a > b)
        if not partitioned or parts["rate_limit"]:
            state.rate.add(api_id)
            _rate(policy, limit, session)
            for key in ("throttle_retry_limit", "throttle_interval"):
                _raise(policy, limit, session, key, lambda a, b: a > b)
        if not partitioned or parts["complexity"]:
            state.complexity.add(api_id)
            _raise(policy, limit, session, "max_query_depth", _greater)
    if not policy.get("access_rights"):
        fields = [("rate_limit", ("rate", "per", "throttle_interval", "throttle_retry_limit")),
                  ("complexity", ("max_query_depth",)),
                  ("quota", ("quota_max", "quota_renewal_rate"))]
        for part, keys in fields:
            if not partitioned or parts[part]:
                for key in keys:
                    session[key] = policy.get(key, 0)
    state.partitioned = partitioned
    return ""


def _merge_acl(ar: dict[str, Any], right: Mapping[str, Any]) -> None:
    for key in ("api_id", "api_name"):
        if right.get(key) and not ar.get(key):
            ar[key] = right[key]
    versions = ar.setdefault("versions", [])
    versions += [v for v in right.get("versions") or [] if v not in versions]
    urls = {u.get("url"): u for u in ar.get("allowed_urls") or []}
    for spec in right.get("allowed_urls") or []:
        known = urls.get(spec.get("url"))
        if known is None:
            urls[spec.get("url")] = copy.deepcopy(spec)
        else:
            methods = known.setdefault("methods", [])
            methods += [m for m in spec.get("methods") or [] if m not in methods]
    if urls:
        ar["allowed_urls"] = list(urls.values())


def _raise(policy: Mapping[str, Any], limit: dict[str, Any], session: dict[str, Any],
           key: str, greater: Callable[[float, float], bool]) -> None:
    value = _num(policy.get(key))
    if greater(value, _num(limit.get(key))):
        limit[key] = policy.get(key)
        if greater(value, _num(session.get(key))):
            session[key] = policy.get(key)


def _rate(policy: Mapping[str, Any], limit: dict[str, Any], session: dict[str, Any]) -> None:
    """The policy's rate wins where it allows more requests (a shorter per/rate)."""
    if _empty_rate(policy):
        return
    for target in (limit, session):
        if _empty_rate(target) or _duration(target) > _duration(policy):
            target["rate"], target["per"] = policy.get("rate"), policy.get("per")


def _finish(session: dict[str, Any], state: _State) -> None:
    for api_id in list(state.rights):
        ar = state.rights[api_id]
        if api_id not in state.acl:
            del state.rights[api_id]
            continue
        limit = ar.setdefault("limit", {})
        if api_id not in state.rate:
            limit.update(rate=session.get("rate", 0), per=session.get("per", 0))
        if api_id not in state.complexity:
            limit["max_query_depth"] = session.get("max_query_depth", 0)
        if api_id not in state.quota:
            limit.update(quota_max=session.get("quota_max", 0),
                         quota_renewal_rate=session.get("quota_renewal_rate", 0))
    if len({state.set_by.get(api_id) for api_id in state.rights} - {None, ""}) > 1:
        for api_id, ar in state.rights.items():
            if not ar.get("allowance_scope") and state.set_by.get(api_id):
                ar["allowance_scope"] = state.set_by[api_id]
    # One API in the result: its limits are the session's (Tyk's legacy root values).
    if len(state.quota) == 1 and len(state.rate) == 1 and len(state.complexity) == 1:
        for ar in state.rights.values():
            limit = ar["limit"]
            for key in ("rate", "per", "quota_max", "quota_renewal_rate", "max_query_depth"):
                if key in limit:
                    session[key] = limit[key]
    if state.acl:
        session["access_rights"] = state.rights
