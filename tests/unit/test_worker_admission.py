"""Admission on the hooks socket: one connection per live generation (issue #11 item 1).

The worker's token can no longer be read back by a plugin (it travels in an fd,
tests/integration/test_sandbox_instance.py), but the gateway must not rely on
that alone: once generation N is admitted, a second DEALER saying HELLO for N,
even with the right token, is refused and never routed to.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from config.apidef import HookDef
from config.gateway import GatewayConfig, HookOptions
from gateway.hooks import HookClient
from ipc.protocol import MsgType, decode, encode
from ipc.tokens import worker_token

KEY = b"a" * 32
HOOK = HookDef(name="MyHook", timeout_ms=2000)


class _NoHost:
    async def host_call(self, api_id: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        return None


@pytest.fixture
async def hooks() -> AsyncIterator[tuple[HookClient, zmq.asyncio.Context, str]]:
    run_dir = Path(tempfile.mkdtemp(prefix="cpa-"))
    cfg = GatewayConfig(path=run_dir / "c.json", run_dir=run_dir,
                        hooks=HookOptions(worker_wait_ms=300))
    client = HookClient(cfg, KEY, _NoHost())
    await client.start()
    ctx = zmq.asyncio.Context()
    try:
        yield client, ctx, cfg.hooks_endpoint
    finally:
        await client.close()
        ctx.destroy(linger=0)
        shutil.rmtree(run_dir, ignore_errors=True)


async def _hello(ctx: zmq.asyncio.Context, endpoint: str, generation: int,
                 pid: int) -> tuple[zmq.asyncio.Socket, Any]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    await sock.send_multipart([encode(MsgType.HELLO, 0, {
        "generation": generation, "pid": pid, "token": worker_token(KEY, generation)})])
    return sock, decode(await asyncio.wait_for(sock.recv_multipart(), 2.0))


async def test_a_second_hello_for_an_admitted_generation_is_refused(hooks: Any) -> None:
    """1. generation 1 is admitted; 2. another connection says HELLO for 1 with the
    right token: REJECT; 3. calls still go to the first connection only."""
    client, ctx, endpoint = hooks
    worker, welcome = await _hello(ctx, endpoint, 1, 100)
    assert welcome.type is MsgType.WELCOME and welcome.payload["active"] is True
    impostor, answer = await _hello(ctx, endpoint, 1, 666)
    assert answer.type is MsgType.REJECT, answer
    for _ in range(3):
        task = asyncio.ensure_future(client.call("x", "pre", HOOK, {}))
        call = decode(await asyncio.wait_for(worker.recv_multipart(), 2.0))
        assert call.type is MsgType.CALL
        await worker.send_multipart([encode(MsgType.REPLY, call.call_id,
                                           {"object": {"metadata": {"by": "worker"}}})])
        assert (await task)["metadata"] == {"by": "worker"}
    assert not await impostor.poll(100)  # nothing was routed to the second connection
