"""Process lifecycle scenarios: each test gets its own Coproc instance.

These tests crash the worker, send real signals, start a second supervisor
on the same run directory or feed a broken config, so they never share an
instance with other tests.
"""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
from integration.harness import (
    REPO_ROOT,
    Instance,
    api_def,
    coproc_command,
    echo_header,
    hook,
    new_base_dir,
    poll,
    remove_base,
    write_instance,
)

TYK_IMPORTS = "from tyk.decorators import *\nfrom gateway import TykGateway as tyk\n"
SHM_DIR = Path("/dev/shm")

TAG_PLUGIN = TYK_IMPORTS + textwrap.dedent('''
    @Hook
    def Tag(request, session, spec):
        request.add_header("X-Tag", spec["APIID"])
        return request, session
''')


def tagged_api(api_id: str, target: str, path: str = "tag/middleware.py",
               **kw: Any) -> dict[str, Any]:
    return api_def(api_id, f"/{api_id}/", target, pre=[hook("Tag", path, **kw)])


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def hello(gw: Instance) -> dict[str, Any]:
    """The full health detail (GET /coproc/status): the worker's pid and generation."""
    return gw.expect(gw.status(), 200).json()


def test_worker_crash_fails_the_request_fast_and_worker_is_replaced(
        coproc_factory: Any, echo_upstream: Any) -> None:
    """1. A pre hook (deadline 5 s) calls os._exit(1) when asked to.
    2. That request fails with 500 well before the deadline (< 2 s).
    3. /coproc/status reports a new worker generation (new pid) within a bounded wait.
    4. The next requests are served by the new worker.
    """
    crash = TYK_IMPORTS + textwrap.dedent('''
        import os

        @Hook
        def MaybeCrash(request, session, spec):
            if request.get_header("X-Crash") == "1":
                os._exit(1)
            request.add_header("X-Survived", "yes")
            return request, session
    ''')
    gw = coproc_factory(
        {"crash": api_def("crash", "/crash/", echo_upstream.url,
                          pre=[hook("MaybeCrash", "crash/middleware.py", timeout_ms=5000)])},
        {"crash/middleware.py": crash})
    before = hello(gw)["worker"]
    gw.expect(gw.get("/crash/"), 200)

    resp = gw.get("/crash/", {"X-Crash": "1"}, timeout=10)
    assert resp.status == 500, (resp.status, resp.body, gw.logs())
    assert resp.elapsed < 2.0, f"crash noticed after {resp.elapsed:.2f}s (deadline 5 s)"

    def replaced() -> dict[str, Any] | None:
        try:
            r = gw.status()
        except OSError:
            return None
        if r.status != 200:
            return None
        w = r.json()["worker"]
        return w if w["ready"] and w["generation"] > before["generation"] else None

    after = poll("a new worker generation in /coproc/status", replaced, 20)
    assert after["pid"] != before["pid"]
    assert not _running(before["pid"]), "the crashed worker is still running"
    for _ in range(5):
        echo = gw.expect(gw.get("/crash/"), 200).json()
        assert echo_header(echo, "X-Survived") == "yes"


def test_plugin_import_failure_fails_only_its_api(coproc_factory: Any,
                                                  echo_upstream: Any) -> None:
    """1. API "broken" has a plugin whose import raises; API "good" is fine.
    2. The instance still becomes ready.
    3. "broken" answers 500, "good" answers 200 with its hook applied.
    """
    broken = TYK_IMPORTS + "import coproc_no_such_module_for_tests  # noqa\n" + textwrap.dedent('''
        @Hook
        def Tag(request, session, spec):
            return request, session
    ''')
    gw = coproc_factory(
        {"broken": tagged_api("broken", echo_upstream.url, "broken/middleware.py"),
         "good": tagged_api("good", echo_upstream.url)},
        {"broken/middleware.py": broken, "tag/middleware.py": TAG_PLUGIN})
    for _ in range(2):
        gw.expect(gw.get("/broken/"), 500)
        echo = gw.expect(gw.get("/good/"), 200).json()
        assert echo_header(echo, "X-Tag") == "good"


def _shm_entries() -> set[str]:
    return {p.name for p in SHM_DIR.iterdir()} if SHM_DIR.is_dir() else set()


def _mapped_by_live_process(name: str) -> bool:
    """True when some live process maps /dev/shm/<name> (another instance owns it)."""
    path = str(SHM_DIR / name)
    for proc in psutil.process_iter():
        try:
            if any(m.path == path for m in proc.memory_maps(grouped=True)):
                return True
        except psutil.Error:
            continue
    return False


def test_sigterm_stops_everything_and_leaves_nothing(coproc_factory: Any,
                                                     echo_upstream: Any) -> None:
    """1. Start an instance with a plugin and serve a request through it.
    2. Note its child processes (gateway, worker).
    3. SIGTERM the supervisor: it exits 0 within the deadline.
    4. No child is left running, no socket file is left in the run dir, and no
       /dev/shm/coproc-* segment created meanwhile remains.
    """
    shm_before = _shm_entries()
    gw = coproc_factory({"tag": tagged_api("tag", echo_upstream.url)},
                        {"tag/middleware.py": TAG_PLUGIN})
    gw.expect(gw.get("/tag/"), 200)
    children = gw.children()
    assert len(children) >= 2, f"expected a gateway and a worker, got {children}"
    worker_pid = hello(gw)["worker"]["pid"]
    assert worker_pid in {p.pid for p in children}
    assert (gw.run_dir / "coproc.pid").read_text().strip() == str(gw.pid)
    assert (gw.run_dir / "hooks.sock").exists()

    started = time.monotonic()
    code = gw.stop()
    assert gw.stopped_gracefully, "did not exit on SIGTERM within the deadline"
    assert code == 0, f"exit code {code}\n{gw.logs()}"
    assert time.monotonic() - started < 15

    alive = [p.pid for p in children if p.is_running() and _running(p.pid)]
    assert not alive, f"children still running after the supervisor exited: {alive}"
    sockets = sorted(str(p) for p in gw.run_dir.rglob("*.sock"))
    assert not sockets, f"socket files left behind: {sockets}"
    leaked = sorted(n for n in _shm_entries() - shm_before
                    if n.startswith("coproc-") and not _mapped_by_live_process(n))
    assert not leaked, f"/dev/shm segments left behind: {leaked}"


def test_sigint_stops_gracefully_too(coproc_factory: Any, echo_upstream: Any) -> None:
    gw = coproc_factory({"tag": tagged_api("tag", echo_upstream.url)},
                        {"tag/middleware.py": TAG_PLUGIN})
    gw.expect(gw.get("/tag/"), 200)
    children = gw.children()
    gw.proc.send_signal(signal.SIGINT)
    try:
        code = gw.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"no exit within 15 s of SIGINT\n{gw.logs()}") from None
    assert code == 0, gw.logs()
    assert not [p.pid for p in children if p.is_running() and _running(p.pid)]


def test_second_serve_on_same_run_dir_is_refused(coproc_factory: Any,
                                                 echo_upstream: Any) -> None:
    """1. Start an instance.
    2. Run a second `coproc serve` with the same config (same run dir).
    3. It exits 75 (LOCKED) promptly, naming the holder's pid.
    4. The first instance is unaffected.
    """
    gw = coproc_factory({"tag": tagged_api("tag", echo_upstream.url)},
                        {"tag/middleware.py": TAG_PLUGIN})
    second = subprocess.run([*coproc_command(), "serve", "--config", str(gw.config_path)],
                            cwd=REPO_ROOT, capture_output=True, timeout=20,
                            stdin=subprocess.DEVNULL)
    output = (second.stdout + second.stderr).decode(errors="replace")
    assert second.returncode == 75, (second.returncode, output)
    assert str(gw.pid) in output, output

    assert gw.proc.poll() is None
    assert hello(gw)["worker"]["ready"] is True
    assert (gw.run_dir / "coproc.pid").read_text().strip() == str(gw.pid)
    assert (gw.run_dir / "hooks.sock").exists()
    echo = gw.expect(gw.get("/tag/"), 200).json()
    assert echo_header(echo, "X-Tag") == "tag"


def test_bad_config_exits_78_naming_file_and_field() -> None:
    base = new_base_dir()
    try:
        config = write_instance(base, {}, {}, {"listen_port": "eighty"})
        proc = subprocess.run([*coproc_command(), "serve", "--config", str(config)],
                              cwd=REPO_ROOT, capture_output=True, timeout=20,
                              stdin=subprocess.DEVNULL)
        stderr = proc.stderr.decode(errors="replace")
        assert proc.returncode == 78, (proc.returncode, stderr)
        assert str(config) in stderr, stderr
        assert "listen_port" in stderr, stderr
    finally:
        remove_base(base)


def test_bad_api_definition_exits_78_naming_file_and_field_with_strict(
        echo_upstream: Any) -> None:
    base = new_base_dir()
    try:
        bad = api_def("bad", "no-leading-slash/", echo_upstream.url)
        config = write_instance(base, {"bad": bad}, {})
        proc = subprocess.run([*coproc_command(), "serve", "--strict", "--config", str(config)],
                              cwd=REPO_ROOT, capture_output=True, timeout=20,
                              stdin=subprocess.DEVNULL)
        stderr = proc.stderr.decode(errors="replace")
        assert proc.returncode == 78, (proc.returncode, stderr)
        assert str(base / "apps" / "bad.json") in stderr, stderr
        assert "proxy.listen_path" in stderr, stderr
    finally:
        remove_base(base)


def test_run_dir_files_while_running(coproc_factory: Any, echo_upstream: Any) -> None:
    gw = coproc_factory({"tag": tagged_api("tag", echo_upstream.url)},
                        {"tag/middleware.py": TAG_PLUGIN})
    assert (gw.run_dir / "coproc.lock").exists()
    assert (gw.run_dir / "coproc.pid").read_text().strip() == str(gw.pid)
    assert int((gw.run_dir / "http.port").read_text()) == gw.port
    assert json.loads(gw.hello().body)["status"] == "pass"
