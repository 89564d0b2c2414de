"""The `grpc` driver end to end: a real Coproc instance calls a Tyk gRPC plugin server.

The server (grpc_plugin_server.py) is a separate process written with
`grpc.aio` as Tyk's docs show; its hooks mirror the Python-worker plugins of
test_tyk_compat.py and test_auth_plugins.py, and these tests expect the same
outcomes.  One API of the instance keeps the Python driver: an external gRPC
server runs beside the worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from integration.harness import (
    REPO_ROOT,
    Instance,
    api_def,
    echo_header,
    free_port,
    hook,
    new_base_dir,
    poll,
    remove_base,
)
from integration.test_tyk_compat import OVERRIDE_CASES, check_override, multipart

SERVER = Path(__file__).with_name("grpc_plugin_server.py")


class GrpcServer:
    """grpc_plugin_server.py as a child process, stopped (or killed) by pid."""

    def __init__(self, base: Path, listen: str = "127.0.0.1:0") -> None:
        self.base, self.listen = base, listen
        self.events = base / "events.jsonl"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, timeout: float = 20.0) -> GrpcServer:
        lines: queue.Queue[bytes] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--listen", self.listen, "--events", str(self.events)],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, start_new_session=True)
        stdout = self.proc.stdout
        assert stdout is not None
        threading.Thread(target=_pump, args=(stdout, lines), daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(queue.Empty):
                line = lines.get(timeout=0.2)
                if line.startswith(b"GRPC_PORT="):
                    self.port = int(line.split(b"=", 1)[1])
                    return self
        self.stop()
        raise RuntimeError(f"the gRPC plugin server did not start within {timeout}s")

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self._reap()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
        self._reap()

    def _reap(self) -> None:
        if self.proc is not None:
            self.proc.wait(timeout=10)
            if self.proc.stdout is not None:  # its reader thread ends at EOF
                with contextlib.suppress(ValueError):
                    poll("the server's stdout to close", lambda: self.proc is not None and (
                        self.proc.stdout is None or self.proc.stdout.closed), 5)


def _pump(stream: Any, lines: queue.Queue[bytes]) -> None:
    # Drains the server's stdout to its end, then closes it (the server's exit).
    for line in iter(stream.readline, b""):
        lines.put(line)
    stream.close()


def grpc_api(api_id: str, target: str, **kw: Any) -> dict[str, Any]:
    definition = api_def(api_id, f"/{api_id}/", target, **kw)
    definition["custom_middleware"]["driver"] = "grpc"
    return definition


def protected(api_id: str, target: str, **kw: Any) -> dict[str, Any]:
    return grpc_api(api_id, target, use_keyless=False, enable_coprocess_auth=True,
                    auth_check=hook("MyAuthCheck"), **kw)


def build_apis(target: str) -> dict[str, dict[str, Any]]:
    return {
        "pre": grpc_api("pre", target, pre=[hook("MyPreHook")], config_data={"foo": "bar"}),
        "override": grpc_api("override", target, pre=[hook("MyRequestHook")]),
        "rewrite": grpc_api("rewrite", target, post=[hook("MyPostHook")]),
        "response": grpc_api("response", target, response=[hook("MyResponseHook")]),
        "bodies": grpc_api("bodies", target, pre=[hook("CheckBody")]),
        "raise": grpc_api("raise", target, pre=[hook("Explode")]),
        "slow": grpc_api("slow", target, pre=[hook("SleepFromHeader", timeout_ms=300)]),
        "failopen": grpc_api("failopen", target, pre=[
            hook("Explode", failure_policy="fail_open"), hook("After")]),
        "failopen-slow": grpc_api("failopen-slow", target, pre=[
            hook("SleepFromHeader"), hook("After")],
            coproc={"hook_timeout_ms": 200, "failure_policy": "fail_open"}),
        "auth": protected("auth", target, post_key_auth=[hook("ShowSession")],
                          post=[hook("ShowSession")],
                          event_handlers={"events": {"AuthFailure": [
                              {"handler_name": "cp_dynamic_handler",
                               "handler_meta": {"name": "OnAuthFailure"}}]}}),
        "python": api_def("python", "/python/", target, pre=[hook("PyPre", "py/mw.py")]),
    }


PY_PLUGIN = """
from tyk.decorators import *


@Hook
def PyPre(request, session, spec):
    request.add_header("X-Driver", "python")
    return request, session
"""


@pytest.fixture(scope="module")
def server() -> Iterator[GrpcServer]:
    base = new_base_dir()
    srv = GrpcServer(base).start()
    yield srv
    srv.stop()
    remove_base(base)


@pytest.fixture(scope="module")
def gw(module_coproc_factory: Any, echo_upstream: Any, server: GrpcServer) -> Instance:
    settings = {"coprocess_options": {"coprocess_grpc_server": server.address},
                "coproc": {"gateway": {"max_body_bytes": 64 * 1024}}}
    return module_coproc_factory(build_apis(echo_upstream.url), {"py/mw.py": PY_PLUGIN},
                                 settings)


def echoed(gw: Instance, method: str, path: str, headers: dict[str, str] | None = None,
           body: bytes | None = None) -> dict[str, Any]:
    resp = gw.expect(gw.request(method, path, headers, body), 200)
    return resp.json()


# --------------------------------------------------------------------------- request hooks


def test_pre_hook_edits_headers_and_params(gw: Instance) -> None:
    echo = echoed(gw, "GET", "/pre/path?keep=2&removeme=1", {"X-Remove-Me": "please"})
    assert echo_header(echo, "X-Added") == "added-by-grpc"
    assert echo_header(echo, "X-Remove-Me") is None
    assert echo["query"].get("added") == ["1"]
    assert echo["query"].get("keep") == ["2"]
    assert "removeme" not in echo["query"]
    assert echo_header(echo, "X-Config-Foo") == "bar"  # spec.config_data
    assert echo_header(echo, "X-Api-Id") == "pre"
    assert echo_header(echo, "X-Hook-Type") == "Pre"


def test_python_api_beside_grpc_apis_runs_in_the_worker(gw: Instance) -> None:
    echo = echoed(gw, "GET", "/python/")
    assert echo_header(echo, "X-Driver") == "python"


@pytest.mark.parametrize(("query", "status", "expected"), OVERRIDE_CASES,
                         ids=[c[0] for c in OVERRIDE_CASES])
def test_return_overrides_matrix(gw: Instance, query: str, status: int,
                                 expected: tuple[str, str]) -> None:
    check_override(gw, query, status, expected)


def test_post_hook_rewrites_url_and_method(gw: Instance) -> None:
    echo = echoed(gw, "POST", "/rewrite/test2", {"Content-Type": "text/plain"}, b"data")
    assert echo["path"].endswith("/newpath"), echo["path"]
    assert echo["method"] == "GET"


def test_post_hook_leaves_other_requests_alone(gw: Instance) -> None:
    echo = echoed(gw, "POST", "/rewrite/other", {"Content-Type": "text/plain"}, b"data")
    assert echo["path"] == "/other"
    assert echo["method"] == "POST"
    assert echo["body"] == "data"


def test_post_hook_error_override(gw: Instance) -> None:
    resp = gw.expect(gw.get("/rewrite/test2"), 500)
    assert resp.json() == {"error": "'invalid method type'"}


def test_json_body_gives_body_and_raw_body_and_a_new_body_reaches_upstream(
        gw: Instance) -> None:
    echo = echoed(gw, "POST", "/bodies/", {"Content-Type": "application/json",
                                           "X-Body-Len": "2"}, b"{}")
    assert echo["body"] == "{}+grpc"


def test_binary_body_gives_empty_body_and_full_raw_body(gw: Instance) -> None:
    body = multipart("coproc-grpc", bytes(range(256)) * 8)  # not UTF-8
    echo = echoed(gw, "POST", "/bodies/", {
        "Content-Type": "multipart/form-data; boundary=coproc-grpc",
        "X-Body-Len": str(len(body))}, body)
    assert echo["body_sha256"] == hashlib.sha256(body + b"+grpc").hexdigest()


def test_response_hook_replaces_body_and_content_length(gw: Instance) -> None:
    resp = gw.expect(gw.get("/response/anything"), 200)
    assert resp.body == b"newbody"
    assert resp.header("Content-Length") == "7"
    assert resp.header("X-Response-Hook") == "grpc"


# --------------------------------------------------------------------------- auth


def test_tyk_auth_acceptance(gw: Instance) -> None:
    """1. valid token -> 200; 2. invalid -> 403 Forbidden; 3. valid again with
    quota_max 1 -> 403 Quota exceeded (the quota is kept between auth calls)."""
    token = f"valid_{uuid.uuid4().hex}"
    echo = echoed(gw, "GET", "/auth/", {"Authorization": token})
    assert echo_header(echo, "X-Session-Rate") == "1000.0"  # post hooks see the session
    resp = gw.expect(gw.get("/auth/", {"Authorization": "invalid"}), 403)
    assert resp.json() == {"error": "Forbidden"}
    resp = gw.expect(gw.get("/auth/", {"Authorization": token}), 403)
    assert resp.json() == {"error": "Quota exceeded"}
    # A token in the metadata but no session: refused, and no key is made (Tyk reads
    # the token only from a returned session).
    resp = gw.expect(gw.get("/auth/", {"Authorization": f"nosession_{token}"}), 403)
    assert resp.json() == {"error": "Forbidden"}


def test_auth_session_rate_limit_is_enforced(gw: Instance) -> None:
    """The session's rate (2 per 60 s) is enforced by the gateway: the 3rd call is 429;
    its session metadata reaches the post hooks."""
    token = f"rate_{uuid.uuid4().hex}"
    for _ in range(2):
        echo = echoed(gw, "GET", "/auth/", {"Authorization": token})
        assert echo_header(echo, "X-Session-Plan") == "gold"
    resp = gw.expect(gw.get("/auth/", {"Authorization": token}), 429)
    assert resp.json() == {"error": "Rate Limit Exceeded"}


def test_auth_failure_event_reaches_dispatch_event(gw: Instance, server: GrpcServer) -> None:
    """AuthFailure with a cp_dynamic_handler -> DispatchEvent in Tyk's JSON wrapper."""
    gw.expect(gw.get("/auth/", {"Authorization": "nobody"}), 403)

    def events() -> list[dict[str, Any]]:
        if not server.events.exists():
            return []
        return [json.loads(line) for line in server.events.read_text().splitlines()]

    def nobodys() -> list[dict[str, Any]]:  # other tests' failures are in the file too
        return [e for e in events() if e["message"]["Meta"].get("Key") == "nobody"]

    got = poll("DispatchEvent", nobodys, 15)[-1]
    assert got["handler_name"] == "OnAuthFailure"
    # Tyk's EventMessage, with Go's field names (gateway/coprocess_events.go); the key
    # is the credential the request carried.
    message = got["message"]
    assert message["Type"] == "AuthFailure" and message["Meta"]["Message"] == "Forbidden"
    assert message["TimeStamp"][:2] == "20"
    assert got["spec"] == {"APIID": "auth", "OrgID": "default"}


# --------------------------------------------------------------------------- failures


def test_server_exception_is_500_middleware_error(gw: Instance) -> None:
    resp = gw.expect(gw.get("/raise/"), 500)
    assert resp.json() == {"error": "Middleware error"}


def test_deadline_is_504_and_next_request_is_served(gw: Instance) -> None:
    resp = gw.expect(gw.get("/slow/", {"X-Sleep-Ms": "3000"}), 504)
    assert 0.25 <= resp.elapsed < 1.8, resp.elapsed
    echo = echoed(gw, "GET", "/slow/")
    assert echo_header(echo, "X-Slept") == "0"


def test_fail_open_hook_that_raises_is_skipped(gw: Instance) -> None:
    echo = echoed(gw, "GET", "/failopen/")
    assert echo_header(echo, "X-After") == "ran"


def test_fail_open_api_skips_a_timed_out_hook(gw: Instance) -> None:
    echo = echoed(gw, "GET", "/failopen-slow/", {"X-Sleep-Ms": "2000"})
    assert echo_header(echo, "X-Slept") is None
    assert echo_header(echo, "X-After") == "ran"


# --------------------------------------------------------------------------- server down


def test_server_down_fails_fast_then_recovers(coproc_factory: Any, echo_upstream: Any) -> None:
    """1. no server on the address: 503 at once (not at the 5 s deadline);
    2. a fail_open hook is skipped instead; 3. the server starts: calls succeed within
    a bound; 4. SIGKILL it with a call in flight: that call fails at once (503);
    5. it comes back on the same port and calls succeed again."""
    base = new_base_dir()
    port = free_port()
    listen = f"127.0.0.1:{port}"
    apis = {
        "down": grpc_api("down", echo_upstream.url,
                         pre=[hook("SleepFromHeader", timeout_ms=5000)]),
        "down-open": grpc_api("down-open", echo_upstream.url, pre=[
            hook("SleepFromHeader", timeout_ms=5000, failure_policy="fail_open")]),
    }
    gw = coproc_factory(apis, {}, {"coprocess_options": {
        "coprocess_grpc_server": f"tcp://{listen}"}})
    srv = GrpcServer(base, listen)
    try:
        resp = gw.expect(gw.get("/down/"), 503)
        assert resp.elapsed < 2.5, resp.elapsed  # the deadline is 5 s
        assert resp.header("Retry-After") == "1"
        echo = echoed(gw, "GET", "/down-open/")
        assert echo_header(echo, "X-Slept") is None  # skipped, per its policy

        srv.start()
        poll("calls to the started server", lambda: gw.get("/down/").status == 200, 10)

        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(gw.get, "/down/", {"X-Sleep-Ms": "4500"})
            poll("the call to be in the server", lambda: srv.events.exists()
                 and '"sleeping"' in srv.events.read_text(), 5)
            srv.kill()
            resp = slow.result(timeout=10)
        gw.expect(resp, 503)
        # Not at the server's 4.5 s answer nor at the 5 s deadline: when it died.
        assert resp.elapsed < 3.0, resp.elapsed

        srv.start()
        started = time.monotonic()
        poll("calls to the restarted server", lambda: gw.get("/down/").status == 200, 10)
        print(f"calls served again {time.monotonic() - started:.2f}s after the restart")
    finally:
        srv.stop()
        remove_base(base)
