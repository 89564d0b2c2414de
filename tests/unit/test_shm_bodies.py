"""Large bodies end to end in one process: gateway side, wire, worker side, and back.

The gateway's half (`request_object` + `Bodies.send_side` / `reply_side` +
`apply_request`) and the worker's (`Dispatcher`) are wired through the real
`ipc.protocol.encode`/`decode` and a real arena mapped twice, without sockets.
What is checked: byte-exact round trips across the threshold, and the
laziness of `body`: the gateway does not decode a body that goes through
shared memory, and the worker decodes it only when a plugin reads it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from config.apidef import HookDef
from gateway.bodies import Bodies, defers_text
from gateway.tyk_object import RequestState, apply_request, request_object
from ipc.coprocess import LazyText, merge_reply
from ipc.protocol import MsgType, decode_frame, encode
from ipc.shm import GRANULE, Arena, ArenaView
from worker.dispatch import Call, Dispatcher
from worker.loader import ApiPlugins, HookEntry, HookTable
from worker.objects import MiniRequestObject, changed_fields

THRESHOLD = 16 * 1024
MIB = 1024 * 1024
SPEC = {"APIID": "api", "OrgID": "o", "bundle_hash": ""}
SEEN: dict[str, Any] = {}


def _see(request: Any, session: Any, spec: Any) -> Any:
    raw = request.object.raw_body
    SEEN["raw"] = raw
    SEEN["type"] = type(raw)
    SEEN["text"] = request.object.body
    change = request.get_header("X-Change")
    if change == "reverse":
        request.object.raw_body = raw[::-1]
    elif change == "grow":
        request.object.raw_body = raw + raw
    elif change == "same":
        request.object.raw_body = bytes(bytearray(raw))  # equal, not identical
    return request, session


def _raw_only(request: Any, session: Any, spec: Any) -> Any:
    SEEN["raw"] = request.object.raw_body
    SEEN["text"] = request.object.body
    return request, session


def _length(request: Any, session: Any, spec: Any) -> Any:
    # The benchmark's hook: reads raw_body, never body.
    request.add_header("X-Body-Len", str(len(request.object.raw_body)))
    return request, session


HOOKS: dict[str, Callable[..., Any]] = {"See": _see, "RawOnly": _raw_only, "Length": _length}


class Side:
    """Both ends of one call, in this process."""

    def __init__(self, arena: Arena, threshold: int) -> None:
        self.stats = dict.fromkeys(("shm_bodies", "shm_reply_bodies", "shm_fallback"), 0)
        self.bodies = Bodies(arena, threshold, self.stats)
        table = HookTable({"api": ApiPlugins("api", hooks={
            name: HookEntry(name, f, 3, False, False, "t.py") for name, f in HOOKS.items()})})
        self.dispatcher = Dispatcher(table, 2000)
        self.dispatcher.attach_arena(self.bodies.welcome())
        self.sent: dict[str, Any] = {}

    async def run(self, body: bytes, hook: HookDef, *, defer: bool = True,
                  headers: dict[str, str] | None = None) -> RequestState:
        """One pre hook on `body`; the state as the chain would forward it."""
        state = RequestState("POST", "/x", "", "/x", "http",
                             CIMultiDictProxy(CIMultiDict(headers or {})))
        state.body = body
        obj = request_object(state, SPEC, "pre", hook, defer_text=defer)
        payload = {"api_id": "api", "hook_type": "pre", "hook_name": hook.name,
                   "timeout_ms": 2000, "object": obj}
        slots = self.bodies.send_side(payload)
        call = decode_frame(encode(MsgType.CALL, 1, payload)).payload
        self.sent = call
        prepared = self.dispatcher.prepare(call)  # as the call thread reading it does
        assert isinstance(prepared, Call), prepared
        mtype, answer = self.dispatcher.finish(self.dispatcher.run_here(prepared))
        assert mtype is MsgType.REPLY, answer
        reply = decode_frame(encode(mtype, 1, answer)).payload
        got = reply["object"]
        if "bodies" in reply:
            got = self.bodies.reply_side(got, reply["bodies"], slots)
        self.bodies.free(slots)
        assert self.bodies.arena.in_use == 0
        self.reply = reply
        apply_request(state, obj["request"], merge_reply(obj, got).get("request") or {})
        return state

    def close(self) -> None:
        self.dispatcher.close()


def _arena(size: int) -> Iterator[Arena]:
    arena = Arena.create(f"coproc-test{uuid.uuid4().hex[:8]}", size)
    try:
        yield arena
    finally:
        arena.close()


@pytest.fixture
def arena() -> Iterator[Arena]:
    yield from _arena(64 * MIB)


@pytest.fixture
def side(arena: Arena) -> Iterator[Side]:
    SEEN.clear()
    side = Side(arena, THRESHOLD)
    try:
        yield side
    finally:
        side.close()


def _binary(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + bytes(range(size % 256))


def _text(size: int) -> bytes:
    """`size` bytes of valid UTF-8, not only ASCII."""
    unit = "coproc-é-".encode()
    cut = (unit * (size // len(unit) + 1))[:size]
    whole = cut.decode("utf-8", errors="ignore").encode()  # drop a split last character
    return whole + b"x" * (size - len(whole))


SIZES = [0, 1, THRESHOLD - 1, THRESHOLD, MIB, 10 * MIB]
SEE = HookDef(name="See")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["text", "binary"])
async def test_unchanged_body_round_trip(side: Side, size: int, kind: str) -> None:
    body = _text(size) if kind == "text" else _binary(size)
    state = await side.run(body, SEE)
    assert SEEN["raw"] == body and SEEN["type"] is bytes
    text = body.decode() if kind == "text" or size <= 128 else ""
    assert SEEN["text"] == text
    assert state.body is body and not state.body_replaced  # the original bytes go upstream
    assert "bodies" not in side.reply and "request" not in side.reply["object"]
    assert side.stats["shm_bodies"] == (1 if size >= THRESHOLD else 0)
    if size >= THRESHOLD:
        assert side.sent["bodies"]["request"]["text"] is True
        assert "body" not in side.sent["object"]["request"]


@pytest.mark.parametrize("size", [THRESHOLD - 1, THRESHOLD, MIB, 10 * MIB])
@pytest.mark.parametrize("change", ["reverse", "grow", "same"])
async def test_changed_body_round_trip(side: Side, size: int, change: str) -> None:
    body = _binary(size)
    expected = {"reverse": body[::-1], "grow": body + body, "same": body}[change]
    state = await side.run(body, SEE, headers={"X-Change": change})
    assert state.body == expected
    assert hashlib.sha256(state.body or b"").digest() == hashlib.sha256(expected).digest()
    assert state.body_replaced is (change != "same")
    through_slot = change == "reverse" and size >= THRESHOLD  # "grow" outgrows its slot
    assert ("bodies" in side.reply) is through_slot
    assert side.stats["shm_reply_bodies"] == (1 if through_slot else 0)


async def test_a_large_utf8_body_reads_as_text_only_when_asked(side: Side) -> None:
    body = "héllo wörld, ünïcode ✓ ".encode() * 50_000  # ~1.3 MB of UTF-8
    await side.run(body, SEE)
    assert SEEN["text"] == body.decode()
    await side.run(body, HookDef(name="Length"))
    assert side.reply["object"]["request"] == {"set_headers": {"X-Body-Len": str(len(body))}}


async def test_a_large_binary_body_reads_as_empty_text(side: Side) -> None:
    body = b"\xff\xfe" + _text(MIB)
    await side.run(body, SEE)
    assert SEEN["raw"] == body and SEEN["text"] == ""
    assert side.sent["bodies"]["request"]["text"] is True  # the worker finds out, lazily


@pytest.mark.parametrize("size", [100, MIB])
async def test_raw_body_only_gets_no_text(side: Side, size: int) -> None:
    body = _text(size)
    await side.run(body, HookDef(name="RawOnly", raw_body_only=True))
    assert SEEN["raw"] == body and SEEN["text"] == ""
    if size >= THRESHOLD:
        assert side.sent["bodies"]["request"]["text"] is False


async def test_without_deferral_the_text_is_made_by_the_gateway(side: Side) -> None:
    body = _text(MIB)
    await side.run(body, SEE, defer=False)
    assert SEEN["text"] == body.decode() and side.stats["shm_bodies"] == 1


# -- gateway side ------------------------------------------------------------------------


def _state(body: bytes) -> RequestState:
    state = RequestState("POST", "/x", "", "/x", "http", CIMultiDictProxy(CIMultiDict()))
    state.body = body
    return state


def test_pending_text_is_resolved_inline_and_dropped_for_shared_memory(arena: Arena) -> None:
    bodies = Bodies(arena, THRESHOLD, dict.fromkeys(("shm_bodies", "shm_fallback"), 0))
    small, large = _text(100), _text(MIB)
    for body in (small, large):
        obj = request_object(_state(body), SPEC, "pre", SEE, defer_text=True)
        pending = obj["request"]["body"]
        assert isinstance(pending, LazyText) and pending.raw is body
        payload: dict[str, Any] = {"object": obj}
        slots = bodies.send_side(payload)
        assert obj["request"]["body"] is pending  # the caller's object is left alone
        sent = payload["object"]["request"]
        if body is small:
            assert sent["body"] == small.decode() and sent["raw_body"] is small and not slots
        else:
            assert "body" not in sent and "raw_body" not in sent
            assert payload["bodies"]["request"]["text"] is True
            assert arena.read(slots["request"].offset, MIB) == large
        bodies.free(slots)
    assert arena.in_use == 0


def test_a_full_arena_falls_back_to_inline_with_the_text(prefix_arena: Arena) -> None:
    stats = dict.fromkeys(("shm_bodies", "shm_fallback"), 0)
    bodies = Bodies(prefix_arena, THRESHOLD, stats)
    body = b"\xc3\xa9" * (GRANULE * 4)  # valid UTF-8, larger than the 4-page arena
    payload: dict[str, Any] = {"object": request_object(_state(body), SPEC, "pre", SEE,
                                                        defer_text=True)}
    assert bodies.send_side(payload) == {}
    assert stats["shm_fallback"] == 1
    assert payload["object"]["request"]["body"] == body.decode()
    assert payload["object"]["request"]["raw_body"] is body
    decode_frame(encode(MsgType.CALL, 1, {"api_id": "a", "hook_type": "pre", "hook_name": "h",
                                    **payload}))  # a plain, sendable object


@pytest.fixture
def prefix_arena() -> Iterator[Arena]:
    yield from _arena(4 * GRANULE)


def test_pending_text_reuses_the_states_decoded_text() -> None:
    state = _state(_text(1000))
    pending = request_object(state, SPEC, "pre", SEE, defer_text=True)["request"]["body"]
    assert pending.text() is state.body_text()
    state.body = b"\xff"  # a later hook replaced the body: the record's bytes still count
    assert pending.text() == _text(1000).decode()
    raw_only = request_object(state, SPEC, "pre", HookDef(name="R", raw_body_only=True),
                              defer_text=True)
    assert raw_only["request"]["body"] == ""


def test_only_a_hook_client_with_an_arena_gets_pending_texts(arena: Arena) -> None:
    class WithArena:
        def __init__(self, value: Any) -> None:
            self.arena = value

    assert defers_text(WithArena(arena)) and not defers_text(WithArena(None))
    assert not defers_text(object())


# -- worker side ---------------------------------------------------------------------------


def test_lazy_text_is_decoded_on_first_read_only() -> None:
    raw = _text(THRESHOLD)
    lazy = LazyText(raw)
    sent = {"raw_body": raw, "body": lazy, "url": "/u"}
    request: Any = MiniRequestObject.from_wire(sent)
    assert request.raw_body is raw
    assert changed_fields(request, sent) == {}
    assert lazy._text is None  # nothing read it: never decoded
    assert request.body == raw.decode() and lazy._text is request.body
    assert request.HasField("body") and request.to_wire()["body"] == raw.decode()
    assert changed_fields(request, sent) == {}  # read, not changed
    request.body = "other"
    assert changed_fields(request, sent) == {"body": "other"}


def test_lazy_text_of_bytes_that_are_not_utf8_is_empty() -> None:
    sent = {"raw_body": b"\xff" * 10, "body": LazyText(b"\xff" * 10)}
    request: Any = MiniRequestObject.from_wire(sent)
    assert not request.HasField("body") and "body" not in request.to_wire()
    assert request.body == "" and changed_fields(request, sent) == {}
    copy: Any = MiniRequestObject()
    copy.CopyFrom(MiniRequestObject.from_wire({"body": LazyText(b"abc")}))
    assert copy.body == "abc"


def test_a_mapped_view_gives_lazy_texts(arena: Arena) -> None:
    from ipc.shm import resolve_bodies

    data = _text(THRESHOLD)
    arena.write(0, data)
    view = ArenaView.attach(arena.name, arena.size)
    try:
        out = resolve_bodies({}, {"request": {"offset": 0, "length": len(data), "text": True}},
                             view, text=LazyText)
    finally:
        view.close()
    assert out["request"]["raw_body"] == data
    assert isinstance(out["request"]["body"], LazyText)
    assert out["request"]["body"].text() == data.decode()


def test_a_changed_body_reaches_its_slot_only_when_the_reply_is_built(side: Side) -> None:
    """Call threads run a hook with `run_here` and build its REPLY with `finish` only
    if no deadline answered the call meanwhile: the slot may belong to another call
    by then, so `run_here` alone must leave the arena untouched."""
    body = _binary(MIB)
    state = RequestState("POST", "/x", "", "/x", "http",
                         CIMultiDictProxy(CIMultiDict({"X-Change": "reverse"})))
    state.body = body
    obj = request_object(state, SPEC, "pre", SEE)
    payload = {"api_id": "api", "hook_type": "pre", "hook_name": SEE.name,
               "timeout_ms": 2000, "object": obj}
    slots = side.bodies.send_side(payload)
    slot = slots["request"]
    call = side.dispatcher.prepare(decode_frame(encode(MsgType.CALL, 1, payload)).payload)
    assert isinstance(call, Call), call
    ran = side.dispatcher.run_here(call)
    assert side.bodies.arena.read(slot.offset, len(body)) == body  # untouched
    mtype, answer = side.dispatcher.finish(ran)
    assert mtype is MsgType.REPLY and "bodies" in answer
    assert side.bodies.arena.read(slot.offset, len(body)) == body[::-1]
    side.bodies.free(slots)
