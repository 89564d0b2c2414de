"""A gateway app served in-process by aiohttp's test server, with a fake hook client.

For unit tests of the chain (tests/unit/test_gateway_chain.py, test_auth_inprocess.py):
the real app, router, proxy and echo upstream, without processes or ZeroMQ.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from config.apidef import HookDef, load_api_definitions
from config.gateway import GatewayConfig
from gateway.app import build_app
from gateway.echo_upstream import make_app as make_echo
from gateway.hook_errors import HookCallError
from gateway.hook_groups import GroupReply, HookGroup, then
from ipc.coprocess import merge_reply
from ipc.merged import next_request_object, next_response_object, short_circuits

__all__ = ["Env", "FakeHooks", "echo_server", "gateway_factory"]

#: What a fake hook does with the object: a REPLY object, or an exception to raise.
Behaviour = Callable[[dict[str, Any]], dict[str, Any] | Exception]


class FakeHooks:
    """A `gateway.app.HookService` that runs `behaviours[hook name](object)`: a REPLY
    object, or an exception to raise."""

    def __init__(self) -> None:
        self.behaviours: dict[str, Behaviour] = {}
        self.calls: list[tuple[str, str, str, dict[str, Any]]] = []
        self.events: list[tuple[str, str, dict[str, str]]] = []
        self.stats = {"calls": 0, "merged_calls": 0}
        #: Run groups of hooks in one call, as a worker does (False: one call each).
        self.merges = True
        self.ready = True
        self.on_activate: Callable[[int], None] | None = None

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def call(self, api_id: str, hook_type: str, hook: HookDef,
                   obj: dict[str, Any]) -> dict[str, Any]:
        self.stats["calls"] += 1
        self.calls.append((api_id, hook_type, hook.name, obj))
        result = self.behaviours.get(hook.name, _unchanged)(obj)
        if isinstance(result, Exception):
            raise result
        return merge_reply(obj, result)

    async def call_group(self, api_id: str, group: HookGroup,
                         obj: dict[str, Any]) -> GroupReply | None:
        """A merged call as the worker runs it (worker/merged.py): each hook's object
        from the previous one by `ipc.merged`'s rule, stopping at a short-circuit or a
        failure.  None (one call per hook) when `merges` is off."""
        if not self.merges:
            return None
        self.stats["calls"] += 1
        self.stats["merged_calls"] += 1
        results: list[dict[str, Any]] = []
        sent = obj
        for index, step in enumerate(group):
            self.calls.append((api_id, step.hook_type, step.hook.name, sent))
            result = self.behaviours.get(step.hook.name, _unchanged)(sent)
            if isinstance(result, HookCallError):
                return GroupReply(results, result)
            if isinstance(result, Exception):
                raise result
            results.append(result)
            if step.hook_type != "response" and short_circuits(
                    (result.get("request") or {}).get("return_overrides")):
                break
            if index + 1 < len(group):
                nxt = group[index + 1]
                following = (next_response_object if nxt.hook_type == "response"
                             else next_request_object)
                sent = following(sent, result, then(group[index:])[0])
        return GroupReply(results)

    def send_event(self, api_id: str, handler: str, event: Mapping[str, str],
                   spec: Mapping[str, str]) -> bool:
        self.events.append((api_id, handler, dict(event)))
        return self.ready

    def on_worker_exited(self, generation: int, reason: str) -> None:
        pass

    def on_worker_state(self, state: str, generation: int | None, detail: str) -> None:
        pass

    def health(self) -> dict[str, Any]:
        return {"state": "running" if self.ready else "restarting", "generation": 1,
                "pid": 1, "ready": self.ready, "plugins": {}}


class Env:
    """One in-process gateway: its test client and the fake hook client it uses."""

    def __init__(self, client: TestClient[Any, Any], fake: Any) -> None:
        self.client, self.fake = client, fake

    async def request(self, method: str, path: str, **kw: Any) -> tuple[int, Any, Any]:
        async with self.client.request(method, path, **kw) as resp:
            body = await resp.read()
            try:
                parsed: Any = json.loads(body)
            except ValueError:
                parsed = body
            return resp.status, parsed, resp.headers


@asynccontextmanager
async def echo_server() -> AsyncIterator[str]:
    """The echo upstream on an ephemeral port; yields its base URL."""
    server = TestServer(make_echo())
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@asynccontextmanager
async def gateway_factory(tmp_path: Path, make_fake: Callable[[], Any],
                          env_class: type[Env] = Env) -> AsyncIterator[Callable[..., Any]]:
    """Yields `start(*api_defs, **config_fields) -> Env`; closes every client after."""
    clients: list[TestClient[Any, Any]] = []

    async def start(*apis: dict[str, Any], **fields: Any) -> Env:
        apps = tmp_path / "apps"
        apps.mkdir(exist_ok=True)
        for definition in apis:
            (apps / f"{definition['api_id']}.json").write_text(json.dumps(definition))
        cfg = replace(GatewayConfig(path=tmp_path / "coproc.json", app_path=apps,
                                    middleware_path=tmp_path, run_dir=tmp_path), **fields)
        fake = make_fake()
        app = build_app(cfg, load_api_definitions(cfg), instance_key=b"k" * 32,
                        hook_factory=lambda *_: fake)
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return env_class(client, fake)

    try:
        yield start
    finally:
        for client in clients:
            await client.close()


def _unchanged(obj: dict[str, Any]) -> dict[str, Any]:
    return {}
