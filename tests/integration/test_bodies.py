"""Request and response bodies through real Coproc instances: shared memory and inline.

Each test drives `coproc serve` over real HTTP, with the echo upstream telling
what it received (length and sha256), and a plugin telling what it saw.
Sizes straddle the shared-memory threshold; the arena's state is read from
GET /coproc/status (`worker.shm`).
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from typing import Any

import psutil
import pytest

from ipc.shm_names import SHM_DIR, shm_prefix
from tests.integration.harness import Instance, Response, api_def, hook, poll

THRESHOLD = 16 * 1024
MIB = 1024 * 1024

PLUGIN = '''
import hashlib
import time
from tyk.decorators import *
from gateway import TykGateway as tyk


@Hook
def SeeBody(request, session, spec):
    raw = request.object.raw_body
    request.add_header("X-Hook-Len", str(len(raw)))
    request.add_header("X-Hook-Sha", hashlib.sha256(raw).hexdigest())
    request.add_header("X-Hook-Text-Len", str(len(request.object.body)))
    mode = request.get_header("X-Change")
    if mode == "reverse":
        request.object.raw_body = raw[::-1]
    elif mode == "grow":
        request.object.raw_body = raw + raw
    elif mode == "shrink":
        request.object.raw_body = raw[:10]
    delay = request.get_header("X-Sleep")
    if delay:
        time.sleep(float(delay))
    return request, session


@Hook
def StampBody(request, response, session, metadata, spec):
    if request.object.headers.get("X-Change-Response") == "upper":
        response.raw_body = response.raw_body.upper()
    return response
'''


def _apis(echo_url: str) -> dict[str, Any]:
    return {
        "bodies": api_def("bodies", "/bodies/", echo_url, pre=[hook("SeeBody", "b/mw.py")]),
        "resp": api_def("resp", "/resp/", echo_url,
                        response=[hook("StampBody", "b/mw.py", raw_body_only=True)]),
    }


def _settings(**ipc: Any) -> dict[str, Any]:
    return {"coproc": {"ipc": {"shm_threshold_bytes": THRESHOLD, **ipc},
                       "hooks": {"timeout_ms": 5000}}}


@pytest.fixture(scope="module")
def gw(module_coproc_factory: Any, echo_upstream: Any) -> Instance:
    return module_coproc_factory(_apis(echo_upstream.url), {"b/mw.py": PLUGIN}, _settings())


def _shm(inst: Instance) -> dict[str, Any]:
    return inst.worker()["shm"]


def _post(inst: Instance, path: str, body: bytes, **headers: str) -> Response:
    return inst.expect(inst.request("POST", path, headers, body, timeout=60), 200)


def _arena_entries(inst: Instance) -> list[str]:
    prefix = shm_prefix(inst.run_dir)
    return sorted(e.name for e in SHM_DIR.iterdir() if e.name.startswith(prefix))


def _binary(size: int) -> bytes:
    # Every byte value, not valid UTF-8: `body` must arrive empty, `raw_body` exact.
    return bytes(range(256)) * (size // 256) + bytes(range(size % 256))


def _text(size: int) -> bytes:
    return (b"coproc-" * (size // 7 + 1))[:size]


SIZES = [0, 1, THRESHOLD - 1, THRESHOLD, MIB, 10 * MIB]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["text", "binary"])
def test_unchanged_body_reaches_hook_and_upstream_byte_exact(gw: Instance, size: int,
                                                             kind: str) -> None:
    body = _text(size) if kind == "text" else _binary(size)
    before = _shm(gw)["bodies"]
    echo = _post(gw, "/bodies/post", body).json()
    digest = hashlib.sha256(body).hexdigest()
    assert echo["body_len"] == size and echo["body_sha256"] == digest
    headers = {k.lower(): v for k, v in echo["headers"].items()}
    assert headers["x-hook-len"] == str(size)
    assert headers["x-hook-sha"] == digest
    text_len = 0 if kind == "binary" and size > 127 else size
    assert headers["x-hook-text-len"] == str(text_len)
    went_shm = _shm(gw)["bodies"] - before
    assert went_shm == (1 if size >= THRESHOLD else 0)


@pytest.mark.parametrize("size", [THRESHOLD - 1, THRESHOLD, MIB, 10 * MIB])
@pytest.mark.parametrize("change", ["reverse", "grow", "shrink"])
def test_changed_body_comes_back_byte_exact(gw: Instance, size: int, change: str) -> None:
    body = _binary(size)
    expected = {"reverse": body[::-1], "grow": body + body, "shrink": body[:10]}[change]
    echo = _post(gw, "/bodies/post", body, **{"X-Change": change}).json()
    assert echo["body_len"] == len(expected)
    assert echo["body_sha256"] == hashlib.sha256(expected).hexdigest()


def test_response_body_through_shared_memory(gw: Instance) -> None:
    body = _text(2 * MIB)
    before = _shm(gw)["bodies"]
    resp = _post(gw, "/resp/post", body, **{"X-Change-Response": "upper"})
    upper = resp.body
    assert upper == upper.upper() and len(upper) > len(body)  # the JSON echo, uppercased
    assert hashlib.sha256(body).hexdigest().upper() in upper.decode()
    assert _shm(gw)["bodies"] - before >= 1


def test_slots_are_all_free_between_requests(gw: Instance) -> None:
    _post(gw, "/bodies/post", _binary(MIB), **{"X-Change": "reverse"})
    shm = poll("arena empty", lambda: _shm(gw)["in_use"] == 0 and _shm(gw), 10)
    assert shm["enabled"] and shm["quarantined"] == 0


def test_full_arena_falls_back_to_inline(coproc_factory: Any, echo_upstream: Any) -> None:
    """1. an arena of 64 KiB; 2. a 1 MiB body does not fit; 3. it goes inline, counted."""
    inst = coproc_factory(_apis(echo_upstream.url), {"b/mw.py": PLUGIN},
                          _settings(shm_arena_bytes=64 * 1024))
    body = _binary(MIB)
    echo = _post(inst, "/bodies/post", body, **{"X-Change": "reverse"}).json()
    assert echo["body_sha256"] == hashlib.sha256(body[::-1]).hexdigest()
    small = _post(inst, "/bodies/post", _binary(THRESHOLD)).json()  # fits: shared memory
    assert small["body_len"] == THRESHOLD
    shm = _shm(inst)
    assert shm["fallback"] == 1 and shm["bodies"] == 1 and shm["in_use"] == 0


def _worker_pid(inst: Instance) -> int:
    return int(inst.worker()["pid"])


def _in_background(inst: Instance, body: bytes, **headers: str) -> tuple[threading.Thread,
                                                                         list[Response]]:
    out: list[Response] = []
    thread = threading.Thread(target=lambda: out.append(
        inst.request("POST", "/bodies/post", headers, body, timeout=30)), daemon=True)
    thread.start()
    return thread, out


def test_worker_sigkill_mid_call_frees_its_slots(coproc_factory: Any,
                                                 echo_upstream: Any) -> None:
    """1. a call with a 1 MiB body hangs in the hook; 2. its slot is in use;
    3. SIGKILL the worker; 4. the call fails at once; 5. the slot is free again."""
    inst = coproc_factory(_apis(echo_upstream.url), {"b/mw.py": PLUGIN}, _settings())
    pid = _worker_pid(inst)
    thread, out = _in_background(inst, _binary(MIB), **{"X-Sleep": "20"})
    poll("a slot in use", lambda: _shm(inst)["in_use"] > 0, 10)
    os.kill(pid, signal.SIGKILL)
    thread.join(25)
    assert out and out[0].status == 500, out
    poll("the slot freed", lambda: _shm(inst)["in_use"] == 0, 10)
    poll("a new worker", lambda: inst.serving() and _worker_pid(inst) != pid, 20)
    echo = _post(inst, "/bodies/post", _binary(MIB), **{"X-Change": "reverse"}).json()
    assert echo["body_sha256"] == hashlib.sha256(_binary(MIB)[::-1]).hexdigest()


def test_timed_out_call_keeps_its_slot_until_the_worker_answers(coproc_factory: Any,
                                                                echo_upstream: Any) -> None:
    """1. the hook outlives the deadline; 2. the client gets 504; 3. the slot stays
    quarantined while the worker may still write it; 4. freed once it answered."""
    apis = {"bodies": api_def("bodies", "/bodies/", echo_upstream.url,
                              pre=[hook("SeeBody", "b/mw.py", timeout_ms=300)])}
    inst = coproc_factory(apis, {"b/mw.py": PLUGIN}, _settings())
    resp = inst.request("POST", "/bodies/post", {"X-Sleep": "1.5"}, _binary(MIB), timeout=30)
    assert resp.status == 504
    poll("the slot freed after the worker's answer",
         lambda: _shm(inst)["in_use"] == 0 and _shm(inst)["quarantined"] == 0, 10)


def test_no_shared_memory_left_after_stop_even_after_gateway_sigkill(
        coproc_factory: Any, echo_upstream: Any) -> None:
    """1. one arena while running; 2. SIGKILL the gateway; 3. its successor replaces
    the arena and large bodies still work; 4. after stop no /dev/shm entry is left."""
    inst = coproc_factory(_apis(echo_upstream.url), {"b/mw.py": PLUGIN}, _settings())
    first = _arena_entries(inst)
    assert len(first) == 1
    gateway = next(p for p in inst.children() if "gateway" in " ".join(p.cmdline()))
    gateway.send_signal(signal.SIGKILL)
    psutil.wait_procs([gateway], timeout=10)

    def replaced() -> bool:
        entries = _arena_entries(inst)
        try:
            return len(entries) == 1 and entries != first and inst.serving()
        except OSError:
            return False

    poll("a new gateway with its own arena", replaced, 30)
    body = _binary(MIB)
    echo = poll("a large body through the new arena", lambda: (
        (r := inst.request("POST", "/bodies/post", {"X-Change": "reverse"}, body,
                           timeout=30)).status == 200 and r.json()), 20)
    assert echo["body_sha256"] == hashlib.sha256(body[::-1]).hexdigest()
    assert inst.stop() == 0
    assert _arena_entries(inst) == []
