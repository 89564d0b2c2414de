"""The shipped default config and example plugins do what the README shows.

README's quick start runs `coproc demo` and curls /echo/ and /local/; these
tests run the same files (config/coproc.json, config/apps, config/middleware)
and check every claim the README makes about them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import psutil
from integration.harness import (
    REPO_ROOT,
    Instance,
    Response,
    coproc_command,
    echo_header,
    http_request,
    launch,
    new_base_dir,
    poll,
    remove_base,
)

SHIPPED = REPO_ROOT / "config"
GREETING = "hello from a Coproc pre hook"


def check_echo_api(get: Any) -> None:
    """What README's first curl shows: the pre hook's header reached the upstream,
    the response hook stamped the body and added a header."""
    resp: Response = get("/echo/get?name=demo")
    assert resp.status == 200, resp.body
    doc = resp.json()
    assert doc["path"] == "/get"
    assert doc["query"] == {"name": ["demo"]}
    assert echo_header(doc, "X-Coproc-Greeting") == GREETING
    assert doc["stamped_by"] == "StampResponse"
    assert resp.header("X-Coproc-Stamped") == "true"
    assert resp.header("Content-Length") == str(len(resp.body))


def check_local_api(get: Any) -> None:
    """README's second and third curls: /local/mock answered by the plugin,
    anything else proxied with an extra query parameter."""
    resp: Response = get("/local/mock")
    assert resp.status == 200, resp.body
    assert resp.json() == {"message": "answered by the MockOrTag plugin"}
    assert (resp.header("Content-Type") or "").startswith("application/json")
    resp = get("/local/items?id=7")
    assert resp.status == 200, resp.body
    doc = resp.json()
    assert doc["path"] == "/items"
    assert doc["query"] == {"id": ["7"], "tagged_by": ["coproc"]}


def _copy_shipped(base: Path, upstream_url: str) -> Path:
    """The shipped files, retargeted at the test's echo upstream, on an ephemeral port."""
    for name in ("apps", "middleware"):
        shutil.copytree(SHIPPED / name, base / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    settings = json.loads((SHIPPED / "coproc.json").read_text())
    settings["listen_port"] = 0
    settings.setdefault("coproc", {})["run_dir"] = str(base / "run")
    config = base / "coproc.json"
    config.write_text(json.dumps(settings))
    for app in (base / "apps").glob("*.json"):
        api = json.loads(app.read_text())
        assert api["proxy"]["target_url"] == "http://127.0.0.1:8081/"
        api["proxy"]["target_url"] = upstream_url
        app.write_text(json.dumps(api))
    return config


def test_shipped_examples_through_serve(echo_upstream: Any) -> None:
    base = new_base_dir()
    inst: Instance | None = None
    try:
        inst = launch(base, _copy_shipped(base, echo_upstream.url))
        check_echo_api(inst.get)
        check_local_api(inst.get)
    finally:
        if inst is not None:
            code = inst.stop()
            leftovers = inst.cleanup()
            assert inst.stopped_gracefully and code == 0, inst.logs()
            assert not leftovers, leftovers
        remove_base(base)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_coproc_demo_runs_the_quick_start(tmp_path: Path) -> None:
    """1. `coproc demo --port P --upstream-port U` (the README command, other ports).
    2. /hello becomes 200; the README curls behave as documented.
    3. SIGTERM stops the gateway, the worker and the echo upstream; exit 0.
    """
    port, upstream_port = _free_port(), _free_port()
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*coproc_command(), "demo", "--port", str(port), "--upstream-port",
             str(upstream_port)], cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
    seen: dict[int, psutil.Process] = {}

    def get(path: str) -> Response:
        return http_request(port, "GET", path)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"coproc demo exited {proc.returncode}\n{log.read_text()}")
        try:
            return get("/ready").status == 200
        except OSError:
            return False

    try:
        poll("coproc demo: GET /ready == 200", ready, 30)
        for p in psutil.Process(proc.pid).children(recursive=True):
            seen[p.pid] = p
        assert len(seen) >= 3, f"expected echo upstream, gateway, worker: {seen}"
        check_echo_api(get)
        check_local_api(get)
        # Issue #11 item 19: the demo names its config and run dir, so status works.
        printed = re.search(r"coproc demo: config (\S+)", log.read_text())
        assert printed, log.read_text()
        assert re.search(r"coproc demo: run dir \S+", log.read_text()), log.read_text()
        status = subprocess.run([*coproc_command(), "status", "--config", printed.group(1)],
                                capture_output=True, text=True, timeout=30, check=False)
        assert status.returncode == 0, status.stderr
        assert "worker      pid " in status.stdout and "None" not in status.stdout, status.stdout
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            code = None
        left = [p.pid for p in seen.values() if _alive(p)]
        for p in seen.values():
            if p.pid in left:
                p.kill()
    assert code == 0, f"coproc demo exit {code}\n{log.read_text()[-4000:]}"
    assert not left, f"children left running after coproc demo exited: {left}"
