"""A hostile process on the hooks socket of a live instance cannot disturb it."""

from __future__ import annotations

import textwrap
from typing import Any

import zmq
from integration.harness import api_def, echo_header, hook

from ipc.protocol import MsgType, decode, encode

PLUGIN = "from tyk.decorators import *\n" + textwrap.dedent('''
    @Hook
    def Tag(request, session, spec):
        request.add_header("X-Tag", "real-worker")
        return request, session
''')


def test_garbage_and_forged_workers_are_rejected_while_serving(coproc_factory: Any,
                                                              echo_upstream: Any) -> None:
    """1. A live instance serves through its worker (generation 1).
    2. A peer connects to hooks.sock and sends garbage frames, then a HELLO with a
       forged token and a higher generation, then a REPLY for a call it never got.
    3. It gets REJECT, REJECT, RESYNC; /coproc/status still names the same worker, and
       requests still carry the real plugin's header.
    """
    gw = coproc_factory({"t": api_def("t", "/t/", echo_upstream.url,
                                      pre=[hook("Tag", "t/middleware.py")])},
                        {"t/middleware.py": PLUGIN})
    before = gw.worker()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 3000)
    try:
        sock.connect(f"ipc://{gw.run_dir / 'hooks.sock'}")
        sock.send_multipart([b"\x01", b"\x04", b"\0" * 8, b"\xc1\xc1"])
        assert decode(sock.recv_multipart()).type is MsgType.REJECT
        forged = {"generation": before["generation"] + 5, "pid": 1, "token": "00" * 32}
        sock.send_multipart([encode(MsgType.HELLO, 0, forged)])
        answer = decode(sock.recv_multipart())
        assert answer.type is MsgType.REJECT and "token" in answer.payload["reason"]
        sock.send_multipart([encode(MsgType.REPLY, 1, {"object": {}})])
        assert decode(sock.recv_multipart()).type is MsgType.RESYNC
    finally:
        sock.close()
        ctx.term()
    after = gw.worker()
    assert (after["generation"], after["pid"]) == (before["generation"], before["pid"])
    for _ in range(3):
        assert echo_header(gw.expect(gw.get("/t/"), 200).json(), "X-Tag") == "real-worker"
