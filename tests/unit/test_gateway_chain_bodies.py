"""The chain's side of request bodies: reading them once, and deferring their text.

In-process gateway with a fake hook client (tests/unit/inprocess.py) and the
real echo upstream.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from unit import inprocess

from config.apidef import HookDef
from config.gateway import GatewayOptions
from ipc.coprocess import LazyText


def api(api_id: str, listen: str, target: str, **phases: list[str]) -> dict[str, Any]:
    return {"api_id": api_id, "use_keyless": True,
            "proxy": {"listen_path": listen, "target_url": target, "strip_listen_path": True},
            "custom_middleware": {phase: [{"name": n} for n in names]
                                  for phase, names in phases.items()}}


class ArenaHooks(inprocess.FakeHooks):
    """A fake hook client that says it has a body arena, as `HookClient.arena` does:
    the chain then leaves `body` as a `LazyText`, which this client resolves
    the way `gateway.bodies.Bodies.send_side` does for a body sent inline."""

    arena = object()

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[str, LazyText, str]] = []

    async def call(self, api_id: str, hook_type: str, hook: HookDef,
                   obj: dict[str, Any]) -> dict[str, Any]:
        for part in ("request", "response"):
            text = (obj.get(part) or {}).get("body")
            if isinstance(text, LazyText):
                self.pending.append((part, text, text.text()))
        return await super().call(api_id, hook_type, hook, obj)


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    fakes: list[type] = [inprocess.FakeHooks]

    async with inprocess.gateway_factory(tmp_path, lambda: fakes[-1]()) as starter:
        async def start(*apis: dict[str, Any], fake: type = inprocess.FakeHooks,
                        **opts: Any) -> inprocess.Env:
            fakes.append(fake)
            env: inprocess.Env = await starter(
                *apis, gateway=GatewayOptions(**{"max_body_bytes": 1 << 20, **opts}))
            return env

        yield start


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def test_a_chunked_body_is_read_whole_for_the_hook(gateway: Any, echo: str) -> None:
    env = await gateway(api("a", "/a/", echo, pre=["Pre"]))
    body = bytes(range(256)) * 2000  # 512000 bytes in 7 HTTP chunks
    status, got, _ = await env.request("POST", "/a/x", data=_chunks(body, 80_000))
    assert status == 200
    assert got["body_len"] == len(body)
    assert got["body_sha256"] == hashlib.sha256(body).hexdigest()
    sent = env.fake.calls[0][3]["request"]
    assert sent["raw_body"] == body and sent["body"] == ""  # not UTF-8


async def test_a_chunked_body_over_the_limit_is_413(gateway: Any, echo: str) -> None:
    env = await gateway(api("a", "/a/", echo, pre=["Pre"]), max_body_bytes=100_000)
    status, _, _ = await env.request("POST", "/a/x", data=_chunks(b"z" * 150_000, 30_000))
    assert status == 413 and env.fake.calls == []


async def test_requests_without_a_body_on_one_connection(gateway: Any, echo: str) -> None:
    """aiohttp shares one empty stream between requests without a body: reading it
    must end at once every time (the second read of it says "chunk boundary")."""
    env = await gateway(api("a", "/a/", echo, pre=["Pre"]))
    for _ in range(3):
        status, got, _ = await env.request("GET", "/a/x")
        assert status == 200 and got["body_len"] == 0
    assert [c[3]["request"]["raw_body"] for c in env.fake.calls] == [b""] * 3


async def test_the_body_is_read_once_and_forwarded_as_is(gateway: Any, echo: str) -> None:
    env = await gateway(api("a", "/a/", echo, pre=["Pre"]))
    body = "héllo ".encode() * 100_000
    status, got, _ = await env.request("POST", "/a/x", data=body)
    assert status == 200 and got["body_sha256"] == hashlib.sha256(body).hexdigest()
    sent = env.fake.calls[0][3]["request"]
    assert sent["raw_body"] == body and sent["body"] == body.decode()  # no arena: eager


async def test_a_hook_client_with_an_arena_gets_the_text_deferred(gateway: Any,
                                                                  echo: str) -> None:
    env = await gateway(api("a", "/a/", echo, pre=["Pre"], response=["Resp"]),
                        fake=ArenaHooks)
    body = "wörld ".encode() * 10_000
    status, got, _ = await env.request("POST", "/a/x", data=body)
    assert status == 200 and got["body_len"] == len(body)
    (part, pending, text), (rpart, rpending, rtext) = env.fake.pending
    assert part == "request" and pending.raw == body and text == body.decode()
    assert rpart == "response" and rtext == rpending.raw.decode() and rtext.startswith("{")
