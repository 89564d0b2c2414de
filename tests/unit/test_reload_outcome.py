"""A reload's outcome, from the supervisor to the gateways: `/tyk/reload?block=true`,
the `reload` component of /hello, `coproc status`, and the import notes of a refused
candidate.  No process is started: channels are socketpairs, children stand-ins."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.control import ControlChannel, ReloadWaits, dispatch, make_reload
from gateway.health import HealthRegistry
from gateway.health_routes import RELOAD_FAILED, show_reload_outcome
from ipc.control import (
    MAX_NAME_CHARS,
    MAX_NAMES,
    ControlEndpoint,
    ControlMessage,
    ControlType,
    decode_control,
    encode_control,
    make_control_pair,
)
from supervisor.child import ChildProcess
from supervisor.ctl import format_status
from supervisor.gateway_link import MAX_RELOAD_ERROR, GatewayLink
from supervisor.imports import ImportNotes

SECRET = "s3cret"
#: A refusal as the supervisor words it (hot_restart.py).
REFUSED = "APIs that serve now would stop, their plugins failed to load: API v: X"
ADMIN = {"X-Tyk-Authorization": SECRET}


class FakeGateway:
    """What the link uses of a gateway's ChildProcess; every message is checked as the
    gateway's end would decode it."""

    def __init__(self) -> None:
        self.sent: list[tuple[ControlType, dict[str, Any]]] = []
        self.alive = True

    def send(self, kind: ControlType, fields: dict[str, Any]) -> bool:
        decode_control(encode_control({"type": kind.value, **fields}))
        self.sent.append((kind, dict(fields)))
        return True


def test_every_gateway_hears_each_reload_outcome_and_a_new_one_the_last() -> None:
    """1. A failed reload reaches every gateway up (validated fields, error cut to
       MAX_RELOAD_ERROR, at most MAX_NAMES unserved APIs of MAX_NAME_CHARS).
    2. A gateway that (re)starts hears the last outcome at once.
    3. The answer to one gateway's `block=true` request goes to it alone, and not
       to a gateway that has exited."""
    link = GatewayLink()
    first = FakeGateway()
    link.gateway_up(cast(ChildProcess, first))
    link.reload_outcome({"ok": False, "reason": "SIGHUP", "error": "x" * (MAX_RELOAD_ERROR + 9),
                         "generation": 3, "state": "failed"})
    (kind, fields), = first.sent
    assert kind is ControlType.RELOAD_OUTCOME and fields["ok"] is False
    assert fields["reason"] == "SIGHUP" and fields["error"].endswith(" [truncated]")
    link.reload_outcome({"ok": True, "reason": "coproc reload", "error": "",
                         "unserved": ["API a: " + "y" * 2 * MAX_NAME_CHARS] * (MAX_NAMES + 5)})
    names = first.sent[-1][1]["unserved"]
    assert len(names) == MAX_NAMES and len(names[0]) == MAX_NAME_CHARS

    second = FakeGateway()
    link.gateway_up(cast(ChildProcess, second))
    assert second.sent == [first.sent[-1]]

    link.answer_reload(cast(ChildProcess, second), 7, {"ok": False, "error": "refused"})
    assert second.sent[-1] == (ControlType.RELOAD_ANSWER, {"id": 7, "ok": False,
                                                           "error": "refused", "unserved": []})
    assert len(first.sent) == 2
    second.alive = False
    link.answer_reload(cast(ChildProcess, second), 8, {"ok": True})
    assert second.sent[-1][1]["id"] == 7


def test_hello_warns_while_the_last_reload_failed() -> None:
    """1. A failed reload: `reload` warns with a short public output (never the error,
       which may name files); /coproc/status has the error.
    2. The next reload that serves clears it."""
    registry = HealthRegistry()
    show_reload_outcome(registry, False, "GET /tyk/reload",
                        REFUSED + " (/srv/mw.py, line 1)")
    hello = registry.liveness()
    assert hello["status"] == "warn"
    assert hello["details"]["reload"]["output"] == RELOAD_FAILED
    assert "/srv" not in str(hello)
    assert "/srv/mw.py" in registry.detail()["components"]["reload"]["error"]
    show_reload_outcome(registry, True, "GET /tyk/reload", "")
    assert "reload" not in registry.liveness()["details"]


def test_coproc_status_names_unserved_apis_and_a_failed_reload() -> None:
    text = format_status({
        "worker": {"plugins": {"ok": {"ok": True},
                               "bad": {"ok": False, "error": "Traceback\nImportError: nope"}}},
        "reload": {"last": {"ok": False, "generation": 4, "reason": "SIGHUP",
                            "error": REFUSED}}})
    assert "API bad: ImportError: nope: plugin failed to load, answers 500" in text
    assert "API ok" not in text
    assert f"(SIGHUP): FAILED (nothing changed): {REFUSED}" in text


class ImportingChild:
    """What ImportNotes uses of a booting worker."""

    def __init__(self) -> None:
        self.pid, self.name, self.ready_at = 41, "worker generation 2 (pid 41)", None

    def read_messages(self) -> list[ControlMessage]:
        return []


def test_a_worker_killed_after_its_load_report_did_not_die_importing() -> None:
    notes, worker = ImportNotes(), cast(ChildProcess, ImportingChild())
    notes.note(worker, ControlMessage(ControlType.IMPORTING, {"api_id": "a", "file": "/m/a.js"}))
    notes.ready(worker)  # `loaded`: the imports are over (e.g. then refused and killed)
    assert notes.exit_note(worker) == ""
    notes.note(worker, ControlMessage(ControlType.IMPORTING, {"api_id": "a", "file": "/m/a.py"}))
    assert notes.exit_note(worker) == " while importing plugin a.py of API a"


# -- /tyk/reload on the gateway, with the supervisor's end of the channel here ------------


class Supervisor:
    """The supervisor's end: answers each `reload_request` with `answer` (None: never)."""

    def __init__(self, answer: dict[str, Any] | None) -> None:
        parent, child = make_control_pair()
        self.end = ControlEndpoint(parent, "supervisor end")
        self.channel = ControlChannel(child)
        self.waits = ReloadWaits()
        self.answer = answer
        self.requests: list[dict[str, Any]] = []

    def start(self) -> None:
        self.channel.start(lambda message: dispatch(message, _NoEvents(),
                                                    on_reload_answer=self.waits.answered))
        asyncio.get_running_loop().add_reader(self.end.fileno(), self._readable)

    def _readable(self) -> None:
        for message in self.end.receive():
            assert message.type is ControlType.RELOAD_REQUEST
            self.requests.append(message.fields)
            if self.answer is not None and "id" in message.fields:
                self.end.send(ControlType.RELOAD_ANSWER, {"id": message["id"], **self.answer})

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.end.fileno())
        self.channel.close()
        self.end.close()


class _NoEvents:
    def __init__(self) -> None:
        self.stats: dict[str, int] = {}

    def on_worker_exited(self, generation: int, reason: str) -> None:
        raise AssertionError("not sent here")

    def on_worker_state(self, state: str, generation: int | None, detail: str) -> None:
        raise AssertionError("not sent here")

    def health(self) -> dict[str, Any]:
        return {}


@contextlib.asynccontextmanager
async def _client(supervisor: Supervisor, wait_s: float = 5.0
                  ) -> AsyncIterator[TestClient[Any, Any]]:
    app = web.Application()
    handler = make_reload(SECRET, supervisor.channel, supervisor.waits, wait_s)
    app.router.add_get("/tyk/reload", handler)
    app.router.add_post("/tyk/reload/group", handler)
    client: TestClient[Any, Any] = TestClient(TestServer(app))  # 127.0.0.1
    await client.start_server()
    supervisor.start()
    try:
        yield client
    finally:
        supervisor.close()
        await client.close()


@pytest.fixture
async def refused() -> AsyncIterator[tuple[Supervisor, TestClient[Any, Any]]]:
    supervisor = Supervisor({"ok": False, "error": REFUSED,
                             "unserved": []})
    async with _client(supervisor) as client:
        yield supervisor, client


async def test_block_true_answers_the_outcome_in_tyks_error_shape(
        refused: tuple[Supervisor, TestClient[Any, Any]]) -> None:
    """1. Without block=true: Tyk's ok at once (the reload is queued), no id sent.
    2. With it: 500 `{"status": "error", "message": ...}` naming the refusal.
    3. Without the secret: 403, nothing sent."""
    supervisor, client = refused
    queued = await client.get("/tyk/reload", headers=ADMIN)
    assert queued.status == 200 and await queued.json() == {"status": "ok", "message": ""}
    blocked = await client.get("/tyk/reload?block=true", headers=ADMIN)
    assert blocked.status == 500
    assert await blocked.json() == {
        "status": "error",
        "message": "reload failed, nothing changed: " + REFUSED}
    assert (await client.get("/tyk/reload?block=true")).status == 403
    assert [r.get("id") for r in supervisor.requests] == [None, 1]
    assert supervisor.requests[1]["reason"] == "GET /tyk/reload"


async def test_block_true_ok_is_tyks_answer_and_names_unserved_apis() -> None:
    supervisor = Supervisor({"ok": True, "error": "", "unserved": []})
    async with _client(supervisor) as client:
        done = await client.post("/tyk/reload/group?block=true", headers=ADMIN)
        assert done.status == 200 and await done.json() == {"status": "ok", "message": ""}
        supervisor.answer = {"ok": True, "error": "",
                             "unserved": ["API bad: ImportError: nope"]}
        partial = await client.post("/tyk/reload/group?block=true", headers=ADMIN)
        assert partial.status == 200 and await partial.json() == {
            "status": "ok",
            "message": "not served, plugins failed to load: API bad: ImportError: nope"}


async def test_block_true_is_bounded_in_time_and_forgets_the_request() -> None:
    supervisor = Supervisor(None)  # the answer never comes
    async with _client(supervisor, wait_s=0.2) as client:
        late = await client.get("/tyk/reload?block=true", headers=ADMIN)
        assert late.status == 504 and (await late.json())["status"] == "error"
        assert supervisor.waits.waiting == 0  # forgotten at its deadline
        # An answer after the deadline finds nobody waiting, and breaks nothing.
        supervisor.waits.answered(ControlMessage(ControlType.RELOAD_ANSWER,
                                                 {"id": 1, "ok": True}))


async def test_without_a_supervisor_block_true_is_503() -> None:
    app = web.Application()
    app.router.add_get("/tyk/reload", make_reload(SECRET, ControlChannel(None)))
    async with TestClient(TestServer(app)) as client:
        for path in ("/tyk/reload", "/tyk/reload?block=true"):
            answer = await client.get(path, headers=ADMIN)
            assert answer.status == 503, path
            assert (await answer.json())["status"] == "error"

