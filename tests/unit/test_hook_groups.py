"""Which hooks share a CALL (gateway/hook_groups.py, gateway/plan.py), what a merged
REPLY must look like, and per-hook metrics of a merged call."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from config.apidef import HookDef, load_api_definitions
from config.gateway import GatewayConfig, load_gateway_config
from config.reader import ConfigError
from gateway.analytics.observer import HookObserver
from gateway.drivers import DriverRouter
from gateway.hook_errors import HookFailed, HookTimeout
from gateway.hook_groups import GroupReply, HookGroup, Step, group_hooks, group_reply, hook_times
from gateway.metrics import GatewayMetrics
from gateway.plan import build_plan
from ipc.coprocess import RUN_NS
from ipc.protocol import MAX_MERGED


def _names(groups: tuple[HookGroup, ...]) -> list[list[str]]:
    return [[f"{s.hook_type}:{s.hook.name}" for s in group] for group in groups]


def _plan(tmp_path: Path, merge: bool = True, **definition: Any) -> Any:
    apps = tmp_path / "apps"
    apps.mkdir(exist_ok=True)
    base: dict[str, Any] = {
        "name": "a", "api_id": "a", "org_id": "o", "use_keyless": True,
        "version_data": {"not_versioned": True, "versions": {"v1": {"name": "v1"}}},
        "proxy": {"listen_path": "/a/", "target_url": "http://127.0.0.1:9/"},
        "custom_middleware": {"driver": "python",
                              "pre": [{"name": "P1"}, {"name": "P2"}],
                              "post_key_auth": [{"name": "K"}], "post": [{"name": "Q"}],
                              "response": [{"name": "R1"}, {"name": "R2"}]}}
    base.update(definition)
    (apps / "a.json").write_text(json.dumps(base))
    cfg = GatewayConfig(path=tmp_path / "coproc.json", app_path=apps, middleware_path=tmp_path)
    return build_plan(load_api_definitions(cfg)[0], merge=merge)


def test_keyless_pre_and_post_share_one_call(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    assert _names(plan.before_auth) == [["pre:P1", "pre:P2", "post:Q"]]
    assert plan.after_auth == ()  # post_key_auth hooks never run on a keyless API
    assert _names(plan.response_groups) == [["response:R1", "response:R2"]]


def test_protected_pre_apart_from_post_key_auth_and_post(tmp_path: Path) -> None:
    plan = _plan(tmp_path, use_keyless=False)
    assert _names(plan.before_auth) == [["pre:P1", "pre:P2"]]
    assert _names(plan.after_auth) == [["post_key_auth:K", "post:Q"]]


def test_merge_off_is_one_call_per_hook(tmp_path: Path) -> None:
    plan = _plan(tmp_path, merge=False)
    assert _names(plan.before_auth) == [["pre:P1"], ["pre:P2"], ["post:Q"]]
    assert _names(plan.response_groups) == [["response:R1"], ["response:R2"]]


def test_grpc_hooks_are_never_merged() -> None:
    py, grpc = HookDef("a", driver="python"), HookDef("g", driver="grpc")
    steps = [Step("pre", py), Step("pre", py), Step("pre", grpc), Step("pre", grpc),
             Step("post", py)]
    assert [len(g) for g in group_hooks(steps, merge=True)] == [2, 1, 1, 1]


def test_groups_are_bounded() -> None:
    steps = [Step("pre", HookDef(f"h{i}")) for i in range(MAX_MERGED + 3)]
    assert [len(g) for g in group_hooks(steps, merge=True)] == [MAX_MERGED, 3]


@pytest.mark.parametrize(("payload", "size", "results", "error"), [
    ({"results": [{"object": {}}, {"object": {}}]}, 2, 2, None),
    ({"results": [{"object": {}}], "failed": {"index": 1, "code": "deadline",
                                               "message": "late"}}, 3, 1, HookTimeout),
    ({"results": [], "failed": {"index": 0, "code": "hook_failed", "message": "x"}}, 2, 0,
     HookFailed),
    ({"results": [{"object": {}}] * 3}, 2, 0, HookFailed),  # more results than hooks
    ({"results": [], "failed": {"index": 1, "code": "hook_failed", "message": "x"}}, 2, 0,
     HookFailed),  # names a hook that did not fail
    ({"object": {}}, 2, 0, HookFailed),  # a single REPLY to a merged CALL
])
def test_group_reply_is_checked(payload: dict[str, Any], size: int, results: int,
                                error: type[Exception] | None) -> None:
    reply = group_reply(payload, size)
    assert len(reply.results) == results
    assert (reply.error is None) if error is None else isinstance(reply.error, error)


def test_hook_times_add_up_and_carry_the_round_trip() -> None:
    ok = GroupReply([{RUN_NS: 10}, {RUN_NS: 20}])
    assert hook_times(ok, 100) == [80, 20]
    failed = GroupReply([{RUN_NS: 10}], HookTimeout("late"))
    assert hook_times(failed, 100) == [10, 90]


class _Merged:
    async def call_group(self, api_id: str, group: HookGroup,
                         obj: dict[str, Any]) -> GroupReply | None:
        return GroupReply([{RUN_NS: 1000}], HookTimeout("late"))


def test_metrics_count_one_call_per_hook_of_a_merged_call() -> None:
    metrics = GatewayMetrics()
    observed = DriverRouter(_Merged(), None, observer=HookObserver(metrics))  # type: ignore[arg-type]
    group = (Step("pre", HookDef("A")), Step("post", HookDef("B")), Step("post", HookDef("C")))
    reply = asyncio.run(observed.call_group("api", group, {}))
    assert reply is not None and len(reply.results) == 1
    assert metrics.hook_calls == {("api", "pre", "A", "ok"): 1,
                                  ("api", "post", "B", "timeout"): 1}


def test_the_merge_setting(tmp_path: Path) -> None:
    path = tmp_path / "coproc.json"
    path.write_text("{}")
    assert load_gateway_config(path).hooks.merge is True
    path.write_text(json.dumps({"coproc": {"hooks": {"merge": False}}}))
    assert load_gateway_config(path).hooks.merge is False
    path.write_text(json.dumps({"coproc": {"hooks": {"merge": "no"}}}))
    with pytest.raises(ConfigError, match=r"coproc\.hooks\.merge"):
        load_gateway_config(path)
