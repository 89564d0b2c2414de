"""Hot-restart building blocks without processes: load-report comparison,
recycling limits, file watching, the control socket and its client."""

from __future__ import annotations

import asyncio
import os
import stat
import tempfile
from pathlib import Path

import pytest

from config.gateway import WorkerOptions
from supervisor.control_server import ControlRequest, ControlServer
from supervisor.ctl import NOT_RUNNING, ControlError, format_status, send_command
from supervisor.recycle import FileWatch, RecyclePolicy, plugin_files
from supervisor.reload import Reload, ReloadState, regressions, unserved

OK = {"ok": True, "source": "/m/a.py"}
BROKEN = {"ok": False, "error": "Traceback...\nImportError: nope", "source": "/m/a.py"}


def test_regressions_only_count_apis_that_serve_now() -> None:
    served = {"a", "plain"}
    assert regressions({"a": OK}, {"a": BROKEN}, served) == ["API a: ImportError: nope"]
    assert regressions({"a": BROKEN}, {"a": BROKEN}, served) == []  # already broken
    # A new API whose plugin fails answers 500; it blocks nothing (Tyk loads each API
    # on its own), nor does one whose definition did not load before.
    assert regressions({"a": OK}, {"a": OK, "new": BROKEN}, served) == []
    # An API that serves now without plugins, edited to a plugin that fails: a regression.
    assert regressions({"a": OK}, {"plain": BROKEN}, served) == [
        "API plain: ImportError: nope"]
    assert regressions(None, {"a": BROKEN}, served) == []  # nothing serves: nothing to protect
    assert regressions({"a": OK}, {"a": OK}, served) == []


def test_unserved_names_every_api_whose_plugins_failed() -> None:
    assert unserved({"b": BROKEN, "a": OK, "c": {"ok": False, "error": ""}}) == [
        "API b: ImportError: nope", "API c: plugins failed to load"]
    assert unserved({}) == []


def test_reload_outcome_reaches_every_waiter() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        waiters = [loop.create_future(), loop.create_future()]
        reload = Reload("test", 0.0, generation=4, waiters=list(waiters))
        reload.finish("it broke")
        assert reload.state is ReloadState.FAILED
        for waiter in waiters:
            assert (await waiter) == {"ok": False, "generation": 4, "reason": "test",
                                      "error": "it broke", "state": "failed",
                                      "unserved": []}

    asyncio.run(scenario())


def test_recycle_limits() -> None:
    policy = RecyclePolicy(WorkerOptions(max_requests=100), started_at=0.0)
    assert policy.reason(1.0, os.getpid(), 99) is None
    assert "max_requests 100" in (policy.reason(1.0, os.getpid(), 100) or "")
    aged = RecyclePolicy(WorkerOptions(max_age_s=10), started_at=0.0)
    assert aged.reason(9.9, os.getpid(), 0) is None
    assert "max_age_s" in (aged.reason(11.1, os.getpid(), 0) or "")  # past 10 % jitter
    fat = RecyclePolicy(WorkerOptions(max_rss_mb=1), started_at=0.0)
    assert "RSS" in (fat.reason(1.0, os.getpid(), 0) or "")  # this interpreter > 1 MiB


def test_file_watch_sees_an_edit(tmp_path: Path) -> None:
    plugin = tmp_path / "mw.py"
    plugin.write_text("A = 1\n")
    report = {"a": {"ok": True, "source": f"{plugin}, {tmp_path / 'other.py'}"},
              "b": {"ok": True, "source": "some-bundle"}}
    assert plugin_files(report) == sorted([plugin, tmp_path / "other.py"])
    watch = FileWatch([plugin], now=0.0)
    assert watch.changed(1.0) is None
    plugin.write_text("A = 22\n")
    assert watch.changed(1.2) is None  # scanned at most every WATCH_S
    assert watch.changed(2.0) == plugin


def test_control_socket_round_trip_and_mode() -> None:
    base = Path(tempfile.mkdtemp(prefix="cp-"))

    async def scenario() -> None:
        def submit(request: ControlRequest) -> None:
            request.reply.set_result({"ok": True, "echo": request.command})

        server = ControlServer(base / "control.sock", submit, answer_timeout_s=5)
        await server.start()
        try:
            assert stat.S_IMODE(os.stat(base / "control.sock").st_mode) == 0o600
            answer = await asyncio.to_thread(send_command, base, "status", 5)
            assert answer == {"ok": True, "echo": "status"}
            bad = await asyncio.to_thread(send_command, base, "explode", 5)
            assert bad["ok"] is False and "unknown command" in bad["error"]
        finally:
            await server.close()

    try:
        asyncio.run(scenario())
        with pytest.raises(ControlError) as err:
            send_command(base, "status", 1)
        assert err.value.code == NOT_RUNNING
    finally:
        for entry in base.iterdir():
            entry.unlink()
        base.rmdir()


def test_format_status_mentions_fatal_and_exits() -> None:
    text = format_status({"pid": 1, "phase": "running", "uptime_s": 61,
                          "gateway": {"pid": 2, "state": "running"},
                          "worker": {"pid": None, "state": "fatal", "restarts": 3},
                          "last_exits": [{"time": 0, "child": "worker", "generation": 3,
                                          "pid": 9, "reason": "exited 1"}]})
    assert "FATAL" in text and "exited 1" in text and "1m01s" in text


def test_a_refused_reload_names_the_file_and_line_of_a_syntax_error() -> None:
    from supervisor.reload import regressions

    error = ('SyntaxError: invalid syntax\nTraceback (most recent call last):\n'
             '  File "/srv/mw/api/mw.py", line 7\n    def broken(:\n               ^\n'
             'SyntaxError: invalid syntax')
    got = regressions({"a": {"ok": True}}, {"a": {"ok": False, "error": error}}, {"a"})
    assert got == ["API a: SyntaxError: invalid syntax (/srv/mw/api/mw.py, line 7)"]
    assert regressions({"a": {"ok": True}}, {"a": {"ok": False, "error": "ImportError: x"}},
                       {"a"}) == ["API a: ImportError: x"]
