"""The worker's sandbox layers travel in `loaded`/`ready` and show in `coproc status`."""

from __future__ import annotations

import asyncio

from ipc.control import decode_control, make_control_pair
from supervisor.ctl import format_status
from worker.supervisor_link import SupervisorLink

LAYERS = {"landlock": "active", "seccomp": "active: 40 syscalls denied",
          "netns": "skipped: no user namespaces", "identity": "off"}


def test_loaded_and_ready_carry_the_sandbox_layers() -> None:
    parent, child = make_control_pair()
    child.setblocking(False)  # as `inherited_control_socket` leaves it
    link = SupervisorLink(child, gated=False, sandbox=LAYERS)
    try:
        link.ready(12, 3, {})
        ready = decode_control(parent.recv(65536))
        assert ready["sandbox"] == LAYERS
        link.gated = True
        admitted = asyncio.run(link.wait_admitted(12, 3, {}, timeout_s=0.05))
        assert not admitted  # nobody admits it here
        loaded = decode_control(parent.recv(65536))
        assert loaded["type"] == "loaded" and loaded["sandbox"] == LAYERS
    finally:
        link.close()
        parent.close()


def test_status_text_lists_active_and_skipped_layers() -> None:
    text = format_status({"worker": {"sandbox": LAYERS}})
    assert "sandbox active [landlock, seccomp]  skipped [netns]" in text
    assert "sandbox" not in format_status({"worker": {"sandbox": {}}})
