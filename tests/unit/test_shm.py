"""The shared-memory arena: allocation, references, mapping from a second handle."""

from __future__ import annotations

import itertools
import os
import random
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from ipc.protocol import MsgType, ProtocolError, decode_frame, encode
from ipc.shm import (
    GRANULE,
    Arena,
    ArenaFull,
    ArenaView,
    BodyRef,
    Slot,
    remove_stale_arenas,
    resolve_bodies,
    slot_capacity,
)
from ipc.shm_names import SHM_DIR


@pytest.fixture
def prefix() -> str:
    return f"coproc-test{uuid.uuid4().hex[:8]}"


@pytest.fixture
def arena(prefix: str) -> Iterator[Arena]:
    arena = Arena.create(prefix, 64 * GRANULE)
    try:
        yield arena
    finally:
        arena.close()


def test_segment_is_private_and_removed_at_close(prefix: str) -> None:
    arena = Arena.create(prefix, 10 * GRANULE + 7)
    path = SHM_DIR / arena.name
    assert arena.size == 10 * GRANULE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_uid == os.getuid()
    arena.chown(os.getuid(), os.getgid())  # the sandbox hand-over; a no-op here
    arena.close()
    assert not path.exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid  # reaped: no process has it (until the kernel reuses it)


def test_stale_arenas_of_the_instance_are_removed(prefix: str) -> None:
    first = Arena.create(prefix, GRANULE, pid=_dead_pid())
    second = Arena.create(prefix, GRANULE, pid=_dead_pid())
    assert remove_stale_arenas(prefix) == 2
    assert not (SHM_DIR / first.name).exists() and not (SHM_DIR / second.name).exists()
    first.close()
    second.close()


def test_a_live_gateway_process_keeps_its_arena(prefix: str) -> None:
    """Several gateway processes share the prefix: a starting one removes only the
    arenas of processes that are gone."""
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = Arena.create(prefix, GRANULE, pid=sibling.pid)
        dead = Arena.create(prefix, GRANULE, pid=_dead_pid())
        assert remove_stale_arenas(prefix) == 1
        assert (SHM_DIR / live.name).exists() and not (SHM_DIR / dead.name).exists()
        live.close()
        dead.close()
    finally:
        sibling.kill()
        sibling.wait(timeout=10)


def test_alloc_rounds_to_pages_and_exhaustion_raises(arena: Arena) -> None:
    slot = arena.alloc(1)
    assert slot == Slot(0, GRANULE)
    big = arena.alloc(63 * GRANULE)
    assert big.offset == GRANULE
    with pytest.raises(ArenaFull):
        arena.alloc(1)
    arena.free(slot)
    assert arena.alloc(GRANULE) == slot
    arena.free(slot)
    with pytest.raises(ValueError):
        arena.free(slot)  # twice


def test_free_coalesces_so_the_whole_arena_is_one_block_again(arena: Arena) -> None:
    rng = random.Random(4)
    live: list[Slot] = []
    for _ in range(2000):  # bounded random churn
        if live and (rng.random() < 0.5 or len(live) > 20):
            arena.free(live.pop(rng.randrange(len(live))))
        else:
            try:
                live.append(arena.alloc(rng.randint(1, 6 * GRANULE)))
            except ArenaFull:
                pass
        used = sum(s.capacity for s in live)
        assert arena.in_use == used
        spans = sorted((s.offset, s.offset + s.capacity) for s in live)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    for slot in live:
        arena.free(slot)
    assert list(arena.free_blocks()) == [(0, arena.size)] and arena.in_use == 0


def test_a_second_mapping_sees_the_bytes_and_resolves_references(arena: Arena) -> None:
    body = "héllo wörld".encode() * 1000
    slot = arena.alloc(slot_capacity(len(body)))
    arena.write(slot.offset, body)
    view = ArenaView.attach(arena.name, arena.size)
    try:
        obj = {"request": {"method": "POST"}}
        refs = {"request": {"offset": slot.offset, "length": len(body),
                            "capacity": slot.capacity, "text": True}}
        out = resolve_bodies(obj, refs, view)
        assert out["request"] == {"method": "POST", "raw_body": body,
                                  "body": body.decode()}
        assert obj == {"request": {"method": "POST"}}  # the input is not modified
        view.write(slot.offset, b"changed")
        assert arena.read(slot.offset, 7) == b"changed"
        binary = resolve_bodies({}, {"request": {**refs["request"], "length": 2}}, view)
        assert binary["request"]["raw_body"] == b"ch"
    finally:
        view.close()


def test_invalid_utf8_gives_an_empty_text(arena: Arena) -> None:
    arena.write(0, b"\xff\xfe")
    out = resolve_bodies({}, {"response": {"offset": 0, "length": 2, "text": True}}, arena)
    assert out["response"] == {"raw_body": b"\xff\xfe", "body": ""}


@pytest.mark.parametrize("ref", [
    {"offset": -1, "length": 1},
    {"offset": 0, "length": -1},
    {"offset": 60 * GRANULE, "length": 8 * GRANULE},
    {"offset": 0, "length": 10, "capacity": 5},
])
def test_references_outside_the_arena_are_protocol_errors(arena: Arena,
                                                          ref: dict[str, int]) -> None:
    with pytest.raises(ProtocolError):
        BodyRef.from_wire(ref, arena.size)


def test_the_gateway_accepts_only_the_calls_own_slot(arena: Arena) -> None:
    mine, other = arena.alloc(GRANULE), arena.alloc(GRANULE)
    refs = {"request": {"offset": other.offset, "length": 4}}
    with pytest.raises(ProtocolError):
        resolve_bodies({}, refs, arena, {"request": mine})
    with pytest.raises(ProtocolError):
        resolve_bodies({}, {"response": {"offset": mine.offset, "length": 4}}, arena,
                       {"request": mine})
    with pytest.raises(ProtocolError):
        resolve_bodies({}, {"request": {"offset": mine.offset, "length": GRANULE + 1,
                                        "capacity": 2 * GRANULE}}, arena, {"request": mine})


def test_body_references_pass_the_one_validating_decode() -> None:
    call = {"api_id": "a", "hook_type": "pre", "hook_name": "h", "object": {"request": {}},
            "bodies": {"request": {"offset": 0, "length": 3, "capacity": 4096, "text": True}}}
    assert decode_frame(encode(MsgType.CALL, 1, call)).payload == call
    reply = {"object": {}, "bodies": {"response": {"offset": 4096, "length": 1}}}
    assert decode_frame(encode(MsgType.REPLY, 1, reply)).payload == reply
    welcome = {"generation": 1, "shm": {"name": "n", "size": 1, "threshold": 2}}
    assert decode_frame(encode(MsgType.WELCOME, 0, welcome)).payload == welcome
    for bad in ({**call, "bodies": {"session": {"offset": 0, "length": 1}}},
                {**call, "bodies": {"request": {"offset": "0", "length": 1}}},
                {**call, "bodies": {"request": {"length": 1}}}):
        with pytest.raises(ProtocolError):
            decode_frame(encode(MsgType.CALL, 1, bad))
