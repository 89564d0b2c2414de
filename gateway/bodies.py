"""Large bodies through the shared-memory arena, on the gateway's side of a call.

`HookClient.call` hands each CALL payload to `Bodies.send_side`, which swaps
every `raw_body` of `shm_threshold_bytes` or more for a reference to an arena
slot (ipc/shm.py), and turns the references of a REPLY back into bytes with
`reply_side`.  Callers of the hook client never see the arena.

A call's slots are freed once its worker answered it or is gone
(`Bodies.release`); until then (a timed-out or cancelled call) the worker
may still write into them, and they stay in the `Quarantine`, held for that
worker until it answers the call (`Quarantine.answered`) or is dropped
(`Quarantine.forget`).

The `body` text of a record may still be a `LazyText` (the chain defers it
when the hook client has an arena, see `defers_text`): `send_side` decodes it
only for a body that stays inline; a body in the arena is sent as bytes alone
with `text: true`, and the worker decodes it if the plugin reads `body`.  The
bytes themselves are written into the slot once; the gateway keeps its own
`bytes` for the upstream, so a body the hook did not change is never read back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from config.gateway import GatewayConfig
from ipc.coprocess import LazyText
from ipc.protocol import ProtocolError
from ipc.shm import (
    BODY_PARTS,
    Arena,
    ArenaFull,
    Slot,
    remove_stale_arenas,
    resolve_bodies,
    slot_capacity,
)
from ipc.shm_names import shm_prefix

__all__ = ["Bodies", "Quarantine", "Slots", "arena_health", "defers_text", "reply_bodies"]

log = logging.getLogger("coproc.hooks")

#: The slots one call's bodies occupy, by object part ("request", "response").
Slots = dict[str, Slot]


def defers_text(hooks: object) -> bool:
    """Whether `hooks` may be given objects whose `body` is a `LazyText`.

    True for a hook client with a body arena (`gateway.hooks.HookClient.arena`):
    it hands every CALL to `Bodies.send_side`, which resolves them.
    """
    return getattr(hooks, "arena", None) is not None


class Quarantine:
    """Slots of calls given up on, held per worker (`owner`) until it cannot write them."""

    def __init__(self, free: Callable[[Slots], None]) -> None:
        self._free = free
        self._held: dict[object, dict[int, Slots]] = {}

    def __len__(self) -> int:
        """How many calls' slots are held."""
        return sum(len(calls) for calls in self._held.values())

    def hold(self, owner: object, call_id: int, slots: Slots) -> None:
        self._held.setdefault(owner, {})[call_id] = slots

    def answered(self, owner: object, call_id: int) -> None:
        """`owner` answered `call_id` late: it no longer touches the call's slots."""
        calls = self._held.get(owner)
        slots = calls.pop(call_id, None) if calls else None
        if slots:
            self._free(slots)

    def forget(self, owner: object) -> None:
        """`owner` is gone: a dead worker writes nothing more."""
        for slots in self._held.pop(owner, {}).values():
            self._free(slots)


class Bodies:
    """The gateway's arena; counts into the hook client's `stats` (shm_* keys)."""

    def __init__(self, arena: Arena, threshold: int, stats: dict[str, int]) -> None:
        self.arena = arena
        self.threshold = threshold
        self.stats = stats
        self.quarantine = Quarantine(self.free)

    @classmethod
    def create(cls, cfg: GatewayConfig, stats: dict[str, int]) -> Bodies | None:
        """The arena for this gateway, or None (disabled, or shared memory unusable)."""
        ipc = cfg.ipc
        if ipc.shm_threshold_bytes <= 0 or ipc.shm_arena_bytes <= 0:
            return None
        prefix = shm_prefix(cfg.run_dir)
        remove_stale_arenas(prefix)  # a killed predecessor's; its worker keeps its mapping
        try:
            arena = Arena.create(prefix, ipc.shm_arena_bytes)
        except OSError as exc:
            log.warning("no shared-memory arena (%s): every body travels inline", exc)
            return None
        log.info("shared-memory arena %s: %d bytes, bodies from %d bytes", arena.name,
                 arena.size, ipc.shm_threshold_bytes)
        return cls(arena, ipc.shm_threshold_bytes, stats)

    def send_side(self, payload: dict[str, Any]) -> Slots:
        """Move large `raw_body`s of the CALL payload into arena slots; resolve texts.

        The caller's object is left as it was: changed records are copies in a
        copy of `payload["object"]`.
        """
        arena, obj = self.arena, payload["object"]
        slots: Slots = {}
        for part in BODY_PARTS:
            record = obj.get(part)
            if not record:
                continue
            raw = record.get("raw_body")
            text = record.get("body")
            if raw is not None and len(raw) >= self.threshold:
                try:
                    slot = arena.alloc(slot_capacity(len(raw)))
                except ArenaFull:
                    self.stats["shm_fallback"] += 1
                else:
                    arena.write(slot.offset, raw)
                    slots[part] = slot
                    # The worker makes `body` from the slot's bytes: neither goes twice.
                    _replace(payload, obj, part, {k: v for k, v in record.items()
                                                  if k != "raw_body" and k != "body"})
                    payload.setdefault("bodies", {})[part] = {
                        "offset": slot.offset, "length": len(raw), "capacity": slot.capacity,
                        "text": type(text) is LazyText or bool(text)}
                    self.stats["shm_bodies"] += 1
                    continue
            if type(text) is LazyText:
                _replace(payload, obj, part, {**record, "body": text.text()})
        return slots

    def reply_side(self, got: dict[str, Any], refs: dict[str, Any],
                   slots: Slots | None) -> dict[str, Any]:
        """The REPLY object with its body references read back; raise ProtocolError."""
        if not slots:
            raise ProtocolError("the reply references a body in shared memory this call "
                                "did not send")
        resolved = resolve_bodies(got, refs, self.arena, slots)
        self.stats["shm_reply_bodies"] += len(refs)
        return resolved

    def free(self, slots: Slots) -> None:
        for slot in slots.values():
            self.arena.free(slot)

    def release(self, owner: object, call_id: int, slots: Slots, settled: bool) -> None:
        """A call is over: free its slots if its worker `settled` it (answered, or is
        gone), else quarantine them until it does."""
        if settled:
            self.free(slots)
        else:
            self.quarantine.hold(owner, call_id, slots)

    def welcome(self) -> dict[str, Any]:
        """What a worker needs to map the arena (WELCOME's `shm`)."""
        return {"name": self.arena.name, "size": self.arena.size, "threshold": self.threshold}

    def close(self) -> None:
        self.arena.close()


def reply_bodies(bodies: Bodies | None, got: dict[str, Any], refs: dict[str, Any],
                 slots: Slots | None) -> dict[str, Any]:
    """`Bodies.reply_side`, also for a gateway without an arena; raise ProtocolError."""
    if bodies is None:
        raise ProtocolError("the reply references shared memory, but this gateway has no arena")
    return bodies.reply_side(got, refs, slots)


def arena_health(bodies: Bodies | None, threshold: int,
                 stats: Mapping[str, int]) -> dict[str, Any]:
    """The `shm` part of /hello (`threshold`: the configured one, even when disabled)."""
    return {"enabled": bodies is not None,
            "size": bodies.arena.size if bodies else 0,
            "in_use": bodies.arena.in_use if bodies else 0,
            "threshold": threshold,
            "bodies": stats["shm_bodies"], "fallback": stats["shm_fallback"],
            "quarantined": len(bodies.quarantine) if bodies else 0}


def _replace(payload: dict[str, Any], sent: dict[str, Any], part: str,
             record: dict[str, Any]) -> None:
    """Put `record` in the payload's object, copying the object the caller passed first."""
    if payload["object"] is sent:
        payload["object"] = dict(sent)
    payload["object"][part] = record
