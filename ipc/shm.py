"""The shared-memory body arena: large bodies cross between gateway and worker here.

The gateway creates one POSIX shared-memory segment per process
(`/dev/shm/<shm_prefix>-arena-<pid>`, mode 0600) and is its only allocator.
For a hook call whose body is at least `shm_threshold_bytes`, it allocates a
slot, copies the body in and sends a *reference* (`BodyRef`) in the CALL
instead of the bytes; the worker, which mapped the segment when it was
WELCOMEd, reads the body from the slot.  A hook that changed the body writes
the new one into the same slot when it fits (the slot's `capacity` leaves
room for growth) and answers with a reference; otherwise inline.

Who may touch a slot when (the rule that keeps this free of locks):

* the gateway writes it before sending the CALL and reads it after the
  worker's answer; the worker reads it after the CALL and writes it only
  right before sending its REPLY;
* the gateway frees it when the worker answered the call (REPLY or ERROR), or
  when that worker is gone.  A call that timed out or was cancelled keeps its
  slot *quarantined* until one of those happens, so a late write can never
  land in a slot that was handed to another call.

A full arena is not an error: the body goes inline (the caller counts it).
No segment outlives the instance: the gateway unlinks its own at close and
stale ones at start, and the supervisor removes every `shm_prefix` entry when
the instance stops (also after a SIGKILL of the gateway).
"""

from __future__ import annotations

import bisect
import mmap
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ipc.coprocess import utf8_text
from ipc.schema import ProtocolError, Record

__all__ = [
    "BODY_PARTS",
    "BODY_REF",
    "BODY_REFS",
    "GRANULE",
    "Arena",
    "ArenaFull",
    "ArenaView",
    "BodyRef",
    "Slot",
    "arena_name",
    "remove_stale_arenas",
    "resolve_bodies",
    "slot_capacity",
]

#: Allocation unit: slots start on page boundaries, so a body never shares a page.
GRANULE: Final = 4096
#: Records of the coprocess object whose `raw_body` may travel through the arena.
BODY_PARTS: Final = ("request", "response")

#: A body in the arena, as it appears on the wire (CALL and REPLY `bodies`).
BODY_REF: Final = Record(
    {"offset": int, "length": int, "capacity": int, "text": bool},
    required=frozenset({"offset", "length"}),
)
#: CALL/REPLY `bodies`: which record's `raw_body` is in the arena.
BODY_REFS: Final = Record({part: BODY_REF for part in BODY_PARTS})

_SHM_DIR: Final = Path("/dev/shm")  # noqa: S108 (a system path, not a temp file)


class ArenaFull(Exception):
    """No free slot is large enough (callers fall back to inline transfer)."""


@dataclass(frozen=True, slots=True)
class Slot:
    offset: int
    capacity: int


@dataclass(frozen=True, slots=True)
class BodyRef:
    """A reference read from the wire, checked against the segment's size."""

    offset: int
    length: int
    capacity: int
    text: bool

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any], arena_size: int) -> BodyRef:
        offset, length = raw["offset"], raw["length"]
        capacity = raw.get("capacity", length)
        if offset < 0 or length < 0 or capacity < length or offset + capacity > arena_size:
            raise ProtocolError(f"body reference {offset}+{length}/{capacity} lies outside "
                                f"the {arena_size}-byte arena")
        return cls(offset, length, capacity, bool(raw.get("text", False)))


def arena_name(prefix: str, pid: int) -> str:
    """The segment's name: the instance's prefix, so the supervisor's sweep finds it."""
    return f"{prefix}-arena-{pid}"


def slot_capacity(length: int) -> int:
    """Room for `length` bytes plus a quarter for a hook that grows the body, in pages."""
    wanted = length + length // 4 + GRANULE
    return -(-wanted // GRANULE) * GRANULE


def remove_stale_arenas(prefix: str) -> int:
    """Unlink arenas a previous gateway of this instance left (it was killed).

    Only those whose owner is gone: with several gateway processes, the live
    ones' arenas share the prefix."""
    removed = 0
    try:
        entries = [e for e in _SHM_DIR.iterdir() if e.name.startswith(f"{prefix}-arena-")]
    except OSError:
        return 0
    for entry in entries:
        owner = entry.name.rpartition("-")[2]
        if owner.isdigit() and _alive(int(owner)):
            continue
        try:
            entry.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a name of ours left from before an exec: not a live arena
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: not ours to judge, leave it
    return True


class _Mapping:
    """An mmap of a /dev/shm file; the base of both ends."""

    def __init__(self, name: str, size: int, fd: int) -> None:
        self.name, self.size = name, size
        try:
            self._mmap = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.view = memoryview(self._mmap)

    @property
    def path(self) -> Path:
        return _SHM_DIR / self.name

    def read(self, offset: int, length: int) -> bytes:
        """A private copy of the bytes (plugins and aiohttp want `bytes`)."""
        return bytes(self.view[offset:offset + length])

    def write(self, offset: int, data: bytes | memoryview) -> None:
        self.view[offset:offset + len(data)] = data

    def close(self) -> None:
        self.view.release()
        try:
            self._mmap.close()
        except BufferError:  # a caller still holds a view: the mapping goes with it
            pass


class ArenaView(_Mapping):
    """The worker's mapping of the gateway's arena (no allocation on this side)."""

    @classmethod
    def attach(cls, name: str, size: int) -> ArenaView:
        if "/" in name or not name:
            raise ValueError(f"invalid arena name {name!r}")
        fd = os.open(_SHM_DIR / name, os.O_RDWR | os.O_CLOEXEC)
        actual = os.fstat(fd).st_size
        if actual < size:
            os.close(fd)
            raise ValueError(f"arena {name} is {actual} bytes, expected {size}")
        return cls(name, size, fd)


class Arena(_Mapping):
    """The gateway's segment and its allocator (event-loop thread only).

    First fit over a sorted free list with coalescing: the number of live
    slots is bounded by the calls in flight, so linear scans stay short.
    """

    def __init__(self, name: str, size: int, fd: int) -> None:
        super().__init__(name, size, fd)
        self._free_offsets: list[int] = [0]
        self._free_sizes: dict[int, int] = {0: size}
        self.in_use = 0

    @classmethod
    def create(cls, prefix: str, size: int, pid: int | None = None) -> Arena:
        """Create (replacing a stale one of the same name) and map the segment."""
        size = max(GRANULE, size - size % GRANULE)
        name = arena_name(prefix, os.getpid() if pid is None else pid)
        path = _SHM_DIR / name
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)  # sparse: pages are committed only when written
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return cls(name, size, fd)

    def chown(self, uid: int, gid: int = -1) -> None:
        """Hand the segment to a worker running under another uid (mode stays 0600)."""
        os.chown(self.path, uid, gid)

    def alloc(self, capacity: int) -> Slot:
        """A slot of at least `capacity` bytes; `ArenaFull` when none is free."""
        need = max(GRANULE, -(-capacity // GRANULE) * GRANULE)
        for offset in self._free_offsets:
            size = self._free_sizes[offset]
            if size >= need:
                self._take(offset, size, need)
                self.in_use += need
                return Slot(offset, need)
        raise ArenaFull(f"no free {need}-byte slot in the {self.size}-byte arena")

    def free(self, slot: Slot) -> None:
        offset, size = slot.offset, slot.capacity
        index = bisect.bisect_left(self._free_offsets, offset)
        if index < len(self._free_offsets) and self._free_offsets[index] == offset:
            raise ValueError(f"slot at {offset} freed twice")
        self.in_use -= size
        following = offset + size
        if index < len(self._free_offsets) and self._free_offsets[index] == following:
            size += self._free_sizes.pop(following)  # merge with the next free block
            del self._free_offsets[index]
        if index > 0:
            before = self._free_offsets[index - 1]
            if before + self._free_sizes[before] == offset:
                self._free_sizes[before] += size  # merge into the previous free block
                return
        self._free_offsets.insert(index, offset)
        self._free_sizes[offset] = size

    def free_blocks(self) -> Iterator[tuple[int, int]]:
        return ((o, self._free_sizes[o]) for o in self._free_offsets)

    def _take(self, offset: int, size: int, need: int) -> None:
        index = bisect.bisect_left(self._free_offsets, offset)
        del self._free_offsets[index]
        del self._free_sizes[offset]
        if size > need:
            rest = offset + need
            self._free_offsets.insert(index, rest)
            self._free_sizes[rest] = size - need

    def close(self) -> None:
        """Unmap and unlink: after this no name is left under /dev/shm."""
        super().close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def resolve_bodies(obj: dict[str, Any], refs: Mapping[str, Any], view: _Mapping,
                   allowed: Mapping[str, Slot] | None = None, *,
                   text: Callable[[bytes], Any] = utf8_text) -> dict[str, Any]:
    """`obj` with each referenced `raw_body` (and its `body` text) read from the arena.

    `allowed` (gateway side) limits references to the slots this call owns,
    so a worker cannot make the gateway read another call's body.  Raises
    `ProtocolError` for a reference outside the arena or the call's slots.
    `text(raw_body)` makes `body` where the reference says it is text: the
    decoded text by default; the worker passes `ipc.coprocess.LazyText`.
    Each body is read once, into a private `bytes` (plugins and aiohttp want
    `bytes`, and the slot is not the caller's once the call is answered).
    """
    out = dict(obj)
    for part, raw in refs.items():
        ref = BodyRef.from_wire(raw, view.size)
        if allowed is not None:
            slot = allowed.get(part)
            if slot is None or ref.offset != slot.offset or ref.length > slot.capacity:
                raise ProtocolError(f"{part} body reference is not this call's slot")
        data = view.read(ref.offset, ref.length)
        record = dict(out.get(part) or {})
        record["raw_body"] = data
        if ref.text:
            record["body"] = text(data)
        out[part] = record
    return out
