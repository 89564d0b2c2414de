"""The supervisor <-> child control channel.

Each child inherits one end of a `socketpair(AF_UNIX, SOCK_DGRAM)` as the file
descriptor named by `$COPROC_CONTROL_FD`.  One datagram is one msgpack map with
a `type` field.  Because the pair is private to one child, the supervisor
always knows who sent what, without paths, credentials or tokens.

child -> supervisor:  ready, heartbeat, status, loaded (worker), reload_request (gateway)
supervisor -> gateway: worker_state, worker_exited, reload_apis
supervisor -> worker:  admit
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any, Final

import msgpack

from ipc.contract import CONTROL_FD_ENV
from ipc.protocol import PLUGIN_REPORT
from ipc.schema import MapOf, ProtocolError, Record, Shape, check

__all__ = [
    "MAX_DATAGRAM",
    "decode_control",
    "encode_control",
    "inherited_control_socket",
    "make_control_pair",
]

MAX_DATAGRAM: Final = 256 * 1024

_ANY_STATS = MapOf(int)
#: worker: sandbox layer -> "active: detail" / "skipped: why" / "off" (as in HELLO).
_SANDBOX = MapOf(str, max_items=64)

CONTROL_MESSAGES: Final[Mapping[str, Shape]] = {
    # worker: plugins loaded and the gateway accepted it; gateway: serving HTTP.
    "ready": Record(
        {"type": str, "role": str, "generation": int, "pid": int, "plugins": PLUGIN_REPORT,
         "sandbox": _SANDBOX},
        required=frozenset({"type", "role", "pid"}),
    ),
    # worker: sent from its event loop; a stuck loop stops sending it.
    "heartbeat": Record(
        {"type": str, "generation": int, "inflight": int, "calls": int},
        required=frozenset({"type"}),
    ),
    # gateway: counters for `coproc status` and the supervisor's recycling policy.
    "status": Record(
        {"type": str, "active_generation": int, "stats": _ANY_STATS},
        required=frozenset({"type"}),
    ),
    # supervisor -> gateway: what the supervisor knows about the worker slot.
    "worker_state": Record(
        {"type": str, "state": str, "generation": int, "detail": str},
        required=frozenset({"type", "state"}),
    ),
    # supervisor -> gateway: generation N is gone; fail its in-flight calls now.
    "worker_exited": Record(
        {"type": str, "generation": int, "reason": str},
        required=frozenset({"type", "generation", "reason"}),
    ),
    # worker -> supervisor (only with $COPROC_ADMIT_GATE=1): plugins are loaded;
    # the worker waits for `admit` before it says HELLO to the gateway.
    "loaded": Record(
        {"type": str, "generation": int, "pid": int, "plugins": PLUGIN_REPORT,
         "sandbox": _SANDBOX},
        required=frozenset({"type", "generation", "pid"}),
    ),
    # supervisor -> worker: go ahead and HELLO the gateway.
    "admit": Record({"type": str, "generation": int}, required=frozenset({"type", "generation"})),
    # supervisor -> gateway: re-read the API definitions; switch to the new
    # router when `generation` becomes the active worker.
    "reload_apis": Record(
        {"type": str, "generation": int}, required=frozenset({"type", "generation"})
    ),
    # gateway -> supervisor: hot-restart the worker (POST /tyk/reload).
    "reload_request": Record({"type": str, "reason": str}, required=frozenset({"type"})),
}


def encode_control(message: Mapping[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(message, use_bin_type=True)
    return packed


def decode_control(datagram: bytes) -> dict[str, Any]:
    """Validate one control datagram; raise `ProtocolError`."""
    if len(datagram) > MAX_DATAGRAM:
        raise ProtocolError("control datagram too large")
    try:
        message = msgpack.unpackb(datagram, raw=False, strict_map_key=True, max_ext_len=0)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"control datagram is not valid msgpack: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("control datagram needs a string 'type'")
    shape = CONTROL_MESSAGES.get(message["type"])
    if shape is None:
        raise ProtocolError(f"unknown control message {message['type']!r}")
    check(message, shape, message["type"])
    return message


def make_control_pair() -> tuple[socket.socket, socket.socket]:
    """(supervisor end, child end); the child end is inheritable, the other is not."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for sock in (parent, child):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_DATAGRAM * 4)
    parent.setblocking(False)
    child.set_inheritable(True)
    return parent, child


def inherited_control_socket() -> socket.socket | None:
    """The control socket this process inherited, or None when run by hand."""
    raw = os.environ.get(CONTROL_FD_ENV)
    if not raw:
        return None
    sock = socket.socket(fileno=int(raw))
    sock.setblocking(False)
    return sock
