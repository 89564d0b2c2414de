"""control.sock's peer check (docs/SECURITY.md): SO_PEERCRED, never our own children.

The check runs against real processes: the test process plays the supervisor,
its subprocesses play the gateway/worker and what a plugin forked.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.control_server import ControlRequest, ControlServer, peer_refusal

GRANDCHILD = textwrap.dedent("""
    import subprocess, sys
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    print(p.pid, flush=True)
    p.wait()
""")


@pytest.fixture
def child() -> Iterator[subprocess.Popen[str]]:
    """A child in its own session (as the supervisor starts them) with one grandchild."""
    proc = subprocess.Popen([sys.executable, "-c", GRANDCHILD], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        yield proc
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_the_supervisors_children_and_their_descendants_are_refused(
        child: subprocess.Popen[str]) -> None:
    assert child.stdout is not None
    grandchild = int(child.stdout.readline())
    me, uid = os.getpid(), os.geteuid()
    assert "descends from the supervisor's child" in (peer_refusal(child.pid, uid, me) or "")
    assert str(child.pid) in (peer_refusal(grandchild, uid, me) or "")


def test_another_uid_is_refused_and_an_outside_process_of_ours_is_allowed(
        child: subprocess.Popen[str]) -> None:
    # Seen from the child as "supervisor", this test process is an outsider: allowed.
    assert peer_refusal(os.getpid(), os.geteuid(), supervisor_pid=child.pid) is None
    refusal = peer_refusal(os.getpid(), 4242, supervisor_pid=child.pid, supervisor_uid=1000)
    assert refusal is not None and "uid 4242" in refusal
    assert peer_refusal(os.getpid(), 0, supervisor_pid=child.pid, supervisor_uid=1000) is None


CLIENT = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.sendall(b'{"command": "stop"}\\n')
    print(s.makefile().readline(), end="")
""")


def test_a_child_sending_stop_is_refused_on_the_real_socket_and_nothing_is_queued() -> None:
    """1. Serve control.sock; 2. our own subprocess sends `stop`: refused, not queued;
    3. an outside client (this process) is answered."""
    queued: list[ControlRequest] = []

    def submit(request: ControlRequest) -> None:
        queued.append(request)
        request.reply.set_result({"ok": True, "command": request.command})

    async def scenario(path: Path) -> tuple[str, dict[str, object]]:
        server = ControlServer(path, submit, answer_timeout_s=5)
        await server.start()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", CLIENT, str(path), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 20)
            assert proc.returncode == 0, err.decode()
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(b'{"command": "status"}\n')
            own = json.loads(await asyncio.wait_for(reader.readline(), 5))
            writer.close()
            return out.decode(), own
        finally:
            await server.close()

    with tempfile.TemporaryDirectory(prefix="cpc-") as tmp:
        child_answer, own_answer = asyncio.run(scenario(Path(tmp) / "control.sock"))
    assert child_answer, "the child got no answer"
    refused = json.loads(child_answer)
    assert refused["ok"] is False and refused["error"].startswith("refused: ")
    assert own_answer == {"ok": True, "command": "status"}
    assert [r.command for r in queued] == ["status"]
