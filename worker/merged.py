"""A merged CALL: several hooks in one round trip, run in order on one call thread.

A CALL with `then` (ipc/merged.py, docs/PROTOCOL.md *Merged calls*) is
prepared here into a `Group`: its own hook as a `Call`, and the hooks in
`then`, looked up at once.  The call threads (worker/callthreads.py) run it
hook by hook; after each one, `step` (under their lock, so the watchdog sees
a consistent group) records that hook's result and returns the next hook's
`Call`, whose object is `ipc.merged.next_request_object` (or
`next_response_object`) of the previous one: exactly what the gateway would
have built for it after applying the previous hook's result.  The sequence
stops at the end, at a result whose `return_overrides` answers the client
(`ipc.merged.short_circuits`), or at a failure: an ERROR outcome, a hook
that cannot be looked up, or a hook's own deadline (the watchdog, per hook).

The REPLY (`reply`) carries `results`, one per hook run with its own
`run_ns`, and `failed` naming the hook that failed and how.  A changed large
body goes back through the call's arena slot from the last result that
changed it (earlier ones inline), written only while the call is unanswered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ipc.coprocess import CallPayload, HookFailure, HookResult, MergedHook
from ipc.merged import next_request_object, next_response_object, short_circuits
from ipc.protocol import ErrorCode, MsgType
from worker.dispatch import Call, Dispatcher, Outcome, Ran, error
from worker.loader import HookEntry, LookupFailed

__all__ = ["Group", "deadline", "prepare_group", "reply", "step"]


@dataclass(slots=True, eq=False)
class Group:
    """A merged CALL being run; changed by `step` under the call threads' lock only."""

    first: Call
    then: tuple[MergedHook, ...]
    #: For each hook of `then`: its entry, or the ERROR its lookup gave.
    entries: tuple[HookEntry | Outcome, ...]
    default_timeout_ms: int
    current: Call = field(init=False)
    results: list[HookResult] = field(default_factory=list)
    failed: HookFailure | None = None

    def __post_init__(self) -> None:
        self.current = self.first

    @property
    def api_id(self) -> str:
        return self.first.api_id

    @property
    def timeout_ms(self) -> int:
        """The deadline of the hook running now (each hook keeps its own)."""
        return self.current.timeout_ms

    @property
    def size(self) -> int:
        return 1 + len(self.then)


def prepare_group(dispatcher: Dispatcher, payload: CallPayload) -> Group | Outcome:
    """The group a CALL with `then` names; an ERROR outcome when its first hook cannot run
    (as for a single CALL: the gateway treats it as the first hook's failure)."""
    first = dispatcher.prepare(payload)
    if not isinstance(first, Call):
        return first
    then = tuple(payload.get("then") or ())
    entries: list[HookEntry | Outcome] = []
    for hook in then:
        try:
            entries.append(dispatcher.table.find(first.api_id, hook["hook_name"]))
        except LookupFailed as exc:
            entries.append(error(exc.code, exc.message))
    return Group(first, then, tuple(entries), dispatcher.default_timeout_ms)


def step(group: Group, ran: Ran | Outcome) -> Call | None:
    """Record what the running hook gave; the next hook's call, or None: the group is done."""
    index = len(group.results)
    if not isinstance(ran, Ran):
        _fail(group, index, ran)
        return None
    group.results.append({"object": ran.result, "run_ns": ran.run_ns})
    call = ran.call
    if call.hook_type != "response" and short_circuits(
            (ran.result.get("request") or {}).get("return_overrides")):
        return None  # the gateway answers the client: later hooks must not run
    if index >= len(group.then):
        return None
    hook, entry = group.then[index], group.entries[index]
    if not isinstance(entry, HookEntry):
        _fail(group, index + 1, entry)
        return None
    following = next_response_object if hook["hook_type"] == "response" else next_request_object
    group.current = Call(call.api_id, entry, hook["hook_type"],
                         following(call.wire, ran.result, hook), None,
                         hook.get("timeout_ms") or group.default_timeout_ms)
    return group.current


def deadline(group: Group) -> None:
    """The running hook is past its deadline (the watchdog): the group ends there."""
    _fail(group, len(group.results), group.current.deadline_error())


def reply(dispatcher: Dispatcher, group: Group) -> Outcome:
    """The merged REPLY: each hook's result, and the failure that ended the group."""
    payload: dict[str, Any] = {"results": group.results}
    if group.failed is not None:
        payload["failed"] = group.failed
    refs: Mapping[str, Any] = group.first.refs or {}
    for part, ref in refs.items():
        for result in reversed(group.results):
            if (result["object"].get(part) or {}).get("raw_body") is not None:
                dispatcher.body_back(result, part, ref)
                break
    return MsgType.REPLY, payload


def _fail(group: Group, index: int, outcome: Outcome) -> None:
    body = outcome[1]
    group.failed = {"index": index, "code": str(body.get("code", ErrorCode.HOOK_FAILED)),
                    "message": str(body.get("message", ""))}
