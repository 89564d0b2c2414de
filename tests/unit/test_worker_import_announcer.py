"""The worker names each plugin file on its control socket before importing it."""

from __future__ import annotations

import socket
from pathlib import Path

from ipc.contract import CONTROL_FD_ENV
from ipc.control import ControlEndpoint, ControlType
from worker.supervisor_link import ImportAnnouncer


def test_importing_is_sent_on_a_duplicate_of_the_inherited_socket() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    endpoint = ControlEndpoint(ours, "test")
    try:
        announcer = ImportAnnouncer({CONTROL_FD_ENV: str(theirs.fileno())})
        announcer.importing("api1", Path("/plugins/api1/mw.py"))
        announcer.close()
        got = endpoint.receive()
        assert [(m.type, m.fields) for m in got] == [
            (ControlType.IMPORTING, {"api_id": "api1", "file": "/plugins/api1/mw.py"})]
        theirs.getsockname()  # the inherited descriptor itself is still open
    finally:
        endpoint.close()
        theirs.close()


def test_run_by_hand_announces_nothing() -> None:
    announcer = ImportAnnouncer({})
    announcer.importing("api1", Path("mw.py"))  # no socket: a no-op, never an error
    announcer.close()
