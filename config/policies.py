"""Tyk security policies from files: `policies.policy_path` or `policies.policy_record_name`.

As Tyk's file source (`policies.policy_source` "" or "file"): with
`policy_path`, every `*.json` in that directory is one policy (its `id`
field names it); otherwise `policy_record_name` is one JSON object mapping
policy ids to policies.  The JSON is Tyk's `user.Policy` (`rate`, `per`,
`quota_max`, `quota_renewal_rate`, `access_rights`, `partitions`, `tags`,
`meta_data`, `is_inactive`, ...).  The fields the gateway applies are checked
here, with the file, the field and the fix in the error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.reader import ConfigError, Reader, load_json

__all__ = ["PolicyOptions", "load_policies", "policy_files"]

#: Tyk's policy sources Coproc can read ("" is Tyk's default: the file source).
FILE_SOURCES = ("", "file")


@dataclass(frozen=True, slots=True)
class PolicyOptions:
    """tyk.conf's `policies` block (paths resolved against the config file)."""

    policy_source: str = ""
    policy_path: Path | None = None
    policy_record_name: Path | None = None

    @property
    def configured(self) -> bool:
        return self.policy_source in FILE_SOURCES and (
            self.policy_path is not None or self.policy_record_name is not None)


def policy_files(options: PolicyOptions) -> list[Path]:
    """The files policies are read from (for change detection)."""
    if not options.configured:
        return []
    if options.policy_path is not None:
        return sorted(options.policy_path.glob("*.json"))
    assert options.policy_record_name is not None
    return [options.policy_record_name]


def load_policies(options: PolicyOptions) -> dict[str, dict[str, Any]]:
    """Policies by id; raise `ConfigError` naming the file and field."""
    if not options.configured:
        return {}
    policies: dict[str, dict[str, Any]] = {}
    if options.policy_path is not None:
        if not options.policy_path.is_dir():
            raise ConfigError(options.policy_path, "policies.policy_path", "is not a directory",
                              "create it or point policies.policy_path at the policy files")
        for path in policy_files(options):
            policy = load_json(path)
            reader = Reader(policy, path)
            pid = reader.get("id", str, "")
            if not pid:
                raise reader.error("id", "is required for a policy in policy_path",
                                   "set \"id\" to the id sessions name in apply_policies")
            _check(reader)
            policies[pid] = policy
        return policies
    assert options.policy_record_name is not None
    path = options.policy_record_name
    records = load_json(path)
    for pid, policy in records.items():
        if not isinstance(policy, dict):
            raise ConfigError(path, pid, "a policy must be a JSON object",
                              "map each policy id to a policy object")
        _check(Reader(policy, path, f"{pid}."))
        policies[pid] = {**policy, "id": pid}  # as Tyk: the map key wins
    return policies


def _check(r: Reader) -> None:
    for key in ("rate", "per", "throttle_interval"):
        r.get(key, float, 0.0)
    for key in ("quota_max", "quota_renewal_rate", "throttle_retry_limit", "max_query_depth"):
        r.get(key, int, 0)
    r.get("org_id", str, "")
    r.get("is_inactive", bool, False)
    r.get("tags", list, [])
    r.get("meta_data", dict, {})
    for key in ("quota", "rate_limit", "acl", "complexity", "per_api"):
        r.child("partitions").get(key, bool, False)
    rights = r.child("access_rights")
    for api_id in rights.data:
        right = rights.child(api_id)
        right.get("versions", list, [])
        right.get("allowed_urls", list, [])
        right.get("limit", dict, {})
