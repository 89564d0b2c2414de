"""Merged hook calls on the gateway's side: which hooks share a CALL, and what one returns.

Hooks with no gateway work between them travel in one CALL (ipc/merged.py,
docs/PROTOCOL.md *Merged calls*).  `group_hooks` works the groups out once
per API at load (gateway/plan.py): consecutive hooks of the worker-side
drivers (python, lua, jsvm) share a group; a gRPC hook is always alone (the
gRPC server takes one hook per call).  With `coproc.hooks.merge: false`
every hook is its own group, which is today's one CALL per hook.

A merged call returns a `GroupReply`: the REPLY object of each hook that ran,
in order (each with its own `RUN_NS`), and, when one failed, which one and
why.  The chain (gateway/chain.py) applies the results in order exactly as
for separate calls, then the failed hook's own failure policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from config.apidef import GRPC_DRIVER, HookDef
from gateway.hook_errors import HookCallError, HookFailed, error_from_reply
from ipc.coprocess import RUN_NS, MergedHook
from ipc.protocol import MAX_MERGED, ErrorCode

__all__ = ["GroupReply", "HookGroup", "Step", "group_hooks", "group_reply", "hook_times", "then"]


class Step(NamedTuple):
    """One hook of a request stage, with the phase it runs in."""

    hook_type: str
    hook: HookDef


#: Hooks that share one CALL (a single hook: a plain CALL, as without merging).
HookGroup = tuple[Step, ...]


def group_hooks(steps: Iterable[Step], merge: bool) -> tuple[HookGroup, ...]:
    """The stage's hooks in groups, in order: split where the driver leaves the worker."""
    groups: list[list[Step]] = []
    for step in steps:
        alone = not merge or step.hook.driver == GRPC_DRIVER
        last = groups[-1] if groups else None
        if (alone or last is None or last[-1].hook.driver == GRPC_DRIVER
                or len(last) >= MAX_MERGED):
            groups.append([step])
        else:
            last.append(step)
    return tuple(tuple(group) for group in groups)


def then(group: HookGroup) -> list[MergedHook]:
    """A CALL's `then`: the group's hooks after its first."""
    return [{"hook_name": s.hook.name, "hook_type": s.hook_type,
             "timeout_ms": s.hook.timeout_ms, "raw_body_only": s.hook.raw_body_only}
            for s in group[1:]]


class GroupReply(NamedTuple):
    """What a merged call gave: `results[i]` is hook i's REPLY object (with its
    `RUN_NS`); `error` is hook `len(results)`'s failure, None when none failed.
    (A tuple: one is made per merged call.)"""

    results: list[dict[str, Any]]
    error: HookCallError | None = None


def group_reply(payload: Mapping[str, Any], size: int) -> GroupReply:
    """The validated `GroupReply` of a merged REPLY for a group of `size` hooks.

    A REPLY that ran more hooks than the group has, or names another hook as
    failed than the one after the last result, is the worker's error
    (`HookFailed` protocol, for the hook after the last result).
    """
    results = payload.get("results")
    if results is None or len(results) > size:
        return GroupReply([], HookFailed(ErrorCode.PROTOCOL,
                                         f"a merged call of {size} hooks got "
                                         f"{'no results' if results is None else len(results)}"))
    failed = payload.get("failed")
    error: HookCallError | None = None
    if failed is not None:
        if failed["index"] != len(results) or len(results) >= size:
            error = HookFailed(ErrorCode.PROTOCOL, f"a merged REPLY with {len(results)} "
                                                   f"result(s) names hook {failed['index']}")
        else:
            error = error_from_reply(failed)
    return GroupReply([result["object"] for result in results], error)


def hook_times(reply: GroupReply, total_ns: int) -> list[int]:
    """Each hook's share of a merged call's `total_ns`, for per-hook metrics and spans:
    the hooks that ran, then the failed one (if any).

    A hook that ran counts its own run time (its `RUN_NS`); the round trip
    around them counts to the failed hook (its own time is in there), else
    to the first, which carried it, so the shares add up to `total_ns`.
    """
    times = [int(result.get(RUN_NS, 0)) for result in reply.results]
    if reply.error is not None:
        times.append(0)
    if times:
        carrier = len(times) - 1 if reply.error is not None else 0
        times[carrier] += max(0, total_ns - sum(times))
    return times
