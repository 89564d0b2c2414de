"""The supervisor <-> child control channel: one message-type enum, one endpoint.

Each child inherits one end of a `socketpair(AF_UNIX, SOCK_DGRAM)` as the file
descriptor named by `$COPROC_CONTROL_FD` (ipc/contract.py).  One datagram is one
msgpack map with a `type` field (a `ControlType` value).  Because the pair is
private to one child, the supervisor always knows who sent what, without paths,
credentials or tokens.

child -> supervisor:  ready, heartbeat (worker), status (gateway), loaded (worker),
                      reload_request (gateway)
supervisor -> gateway: worker_state, worker_exited, reload_apis, grpc_server,
                       reload_outcome, reload_answer
gateway -> supervisor: grpc_drained (besides ready/status/reload_request)
supervisor -> worker:  admit

`encode_control` / `decode_control` are the wire codec; the three sides
(supervisor/child.py, gateway/control.py, worker/supervisor_link.py) talk
through a `ControlEndpoint`, which sends and receives `ControlMessage`s.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

from ipc.contract import CONTROL_FD_ENV, SECRET_FD_ENV
from ipc.protocol import PAYLOADS, PLUGIN_REPORT, MsgType
from ipc.ratelog import Throttle
from ipc.schema import ListOf, MapOf, ProtocolError, Record, check

__all__ = [
    "CONTROL_MESSAGES",
    "MAX_DATAGRAM",
    "MAX_NAMES",
    "MAX_NAME_CHARS",
    "ControlEndpoint",
    "ControlMessage",
    "ControlType",
    "decode_control",
    "encode_control",
    "inherited_control_socket",
    "make_control_pair",
    "read_inherited_secret",
    "secret_fd",
]

MAX_DATAGRAM: Final = 256 * 1024
#: Datagrams read per wake-up: a flooding peer cannot starve an event loop.
READ_BATCH: Final = 64
#: At most this many APIs named in a reload's outcome, each at most MAX_NAME_CHARS
#: long (the rest are cut): a datagram stays far below MAX_DATAGRAM.
MAX_NAMES: Final = 200
MAX_NAME_CHARS: Final = 500
#: A child's secret: a key, or a worker's token with its part of the config.
MAX_SECRET_BYTES: Final = 1 << 20
#: At most one line per this many seconds about a peer's invalid datagrams.
BAD_DATAGRAM_LOG_S: Final = 10.0

log = logging.getLogger("coproc.ipc.control")


class ControlType(enum.Enum):
    """Every control message type; the value is the wire's `type` string."""

    READY = "ready"
    HEARTBEAT = "heartbeat"
    STATUS = "status"
    LOADED = "loaded"
    RELOAD_REQUEST = "reload_request"
    WORKER_STATE = "worker_state"
    WORKER_EXITED = "worker_exited"
    RELOAD_APIS = "reload_apis"
    ADMIT = "admit"
    IMPORTING = "importing"
    GRPC_SERVER = "grpc_server"
    GRPC_DRAINED = "grpc_drained"
    GATEWAYS = "gateways"
    RELOAD_OUTCOME = "reload_outcome"
    RELOAD_ANSWER = "reload_answer"


@dataclass(frozen=True, slots=True)
class ControlMessage:
    """One validated control message: its type and its other fields."""

    type: ControlType
    fields: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)


_ANY_STATS = MapOf(int)
#: A reload's unserved APIs, one line each ("API <id>: <error summary>").
_NAMES = ListOf(str, max_items=MAX_NAMES)
#: worker: sandbox layer -> "active: detail" / "skipped: why" / "off" (as in HELLO).
_SANDBOX = MapOf(str, max_items=64)
#: The worker's heartbeat has one shape on both channels: the hooks protocol's
#: HEARTBEAT payload (ipc/protocol.py), here with its `type`.
_HEARTBEAT = PAYLOADS[MsgType.HEARTBEAT]
assert isinstance(_HEARTBEAT, Record)  # import-time check of our own table, not wire input

CONTROL_MESSAGES: Final[Mapping[ControlType, Record]] = {
    # worker: plugins loaded and the gateway accepted it; gateway: serving HTTP.
    ControlType.READY: Record(
        {"type": str, "role": str, "generation": int, "pid": int, "plugins": PLUGIN_REPORT,
         "sandbox": _SANDBOX},
        required=frozenset({"type", "role", "pid"}),
    ),
    # worker: sent from its event loop; a stuck loop stops sending it.  `calls`
    # are the call threads' counters; `calls["calls"]` counts every CALL read.
    ControlType.HEARTBEAT: Record({"type": str, **_HEARTBEAT.fields},
                                  required=frozenset({"type", *_HEARTBEAT.required})),
    # gateway: counters for `coproc status` and the supervisor's recycling policy.
    ControlType.STATUS: Record(
        {"type": str, "active_generation": int, "stats": _ANY_STATS},
        required=frozenset({"type"}),
    ),
    # supervisor -> gateway: what the supervisor knows about the worker slot.
    ControlType.WORKER_STATE: Record(
        {"type": str, "state": str, "generation": int, "detail": str},
        required=frozenset({"type", "state"}),
    ),
    # supervisor -> gateway: generation N is gone; fail its in-flight calls now.
    ControlType.WORKER_EXITED: Record(
        {"type": str, "generation": int, "reason": str},
        required=frozenset({"type", "generation", "reason"}),
    ),
    # worker -> supervisor (only with $COPROC_ADMIT_GATE=1): plugins are loaded;
    # the worker waits for `admit` before it says HELLO to the gateway.
    ControlType.LOADED: Record(
        {"type": str, "generation": int, "pid": int, "plugins": PLUGIN_REPORT,
         "sandbox": _SANDBOX},
        required=frozenset({"type", "generation", "pid"}),
    ),
    # worker -> supervisor: about to import this plugin file, so that a worker
    # killed by it (os._exit at import) is reported with the file's name.
    ControlType.IMPORTING: Record({"type": str, "api_id": str, "file": str},
                                  required=frozenset({"type", "file"})),
    # supervisor -> worker: go ahead and HELLO the gateway.
    ControlType.ADMIT: Record({"type": str, "generation": int},
                              required=frozenset({"type", "generation"})),
    # supervisor -> gateway: re-read the API definitions; switch to the new
    # router when `generation` becomes the active worker.
    ControlType.RELOAD_APIS: Record(
        {"type": str, "generation": int}, required=frozenset({"type", "generation"})
    ),
    # gateway -> supervisor: hot-restart the worker (/tyk/reload); with `id`
    # (`?block=true`) the outcome comes back to this gateway in `reload_answer`.
    ControlType.RELOAD_REQUEST: Record({"type": str, "reason": str, "id": int},
                                       required=frozenset({"type"})),
    # supervisor -> every gateway: how the last reload ended (its /hello says when
    # one failed: the previous configuration serves); re-sent to a gateway that
    # (re)starts.  `unserved`: APIs of an accepted reload whose plugins failed.
    ControlType.RELOAD_OUTCOME: Record(
        {"type": str, "ok": bool, "reason": str, "error": str, "unserved": _NAMES},
        required=frozenset({"type", "ok"})),
    # supervisor -> the gateway whose `reload_request` had this `id`: its outcome.
    ControlType.RELOAD_ANSWER: Record(
        {"type": str, "id": int, "ok": bool, "error": str, "unserved": _NAMES},
        required=frozenset({"type", "id", "ok"})),
    # supervisor -> gateway: the supervised gRPC plugin server of `generation`
    # is healthy at `address`: send new grpc-driver calls there.
    ControlType.GRPC_SERVER: Record({"type": str, "address": str, "generation": int},
                                    required=frozenset({"type", "address", "generation"})),
    # gateway -> supervisor: no call is left on the channel to `address` (it was
    # switched away from): the server there may stop.
    ControlType.GRPC_DRAINED: Record({"type": str, "address": str},
                                     required=frozenset({"type", "address"})),
    # supervisor -> gateway, with several gateway processes: every process's state
    # (its /hello names each one).
    ControlType.GATEWAYS: Record(
        {"type": str, "processes": ListOf(
            Record({"index": int, "pid": int, "state": str},
                   required=frozenset({"index", "state"})), max_items=256)},
        required=frozenset({"type", "processes"})),
}
_BY_VALUE: Final = {t.value: t for t in ControlType}


def encode_control(message: Mapping[str, Any]) -> bytes:
    """One datagram (the wire codec; senders use `ControlEndpoint.send`)."""
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
    kind = _BY_VALUE.get(message["type"])
    if kind is None:
        raise ProtocolError(f"unknown control message {message['type']!r}")
    check(message, CONTROL_MESSAGES[kind], message["type"])
    return message


def _message(datagram: bytes) -> ControlMessage:
    fields = decode_control(datagram)
    return ControlMessage(_BY_VALUE[fields.pop("type")], fields)


class ControlEndpoint:
    """One end of a control socketpair: typed, validated, never-blocking datagrams.

    Sends never block and never raise: a full buffer or a vanished peer loses
    the datagram (logged once per failing streak); the peer's liveness is
    judged elsewhere (reaping, heartbeats, PR_SET_PDEATHSIG).  Invalid
    datagrams are dropped and logged once per BAD_DATAGRAM_LOG_S with a count
    (a broken peer could send thousands per second).
    """

    def __init__(self, sock: socket.socket, name: str = "control channel") -> None:
        sock.setblocking(False)  # a stuck peer must never block an event loop
        self._sock, self.name = sock, name
        self._failing = False
        self._bad = Throttle(BAD_DATAGRAM_LOG_S)
        #: The peer closed its end or the socket failed: nothing more will come.
        self.closed = False

    @classmethod
    def inherited(cls) -> ControlEndpoint | None:
        """The endpoint this child inherited, or None when run by hand."""
        sock = inherited_control_socket()
        return cls(sock) if sock is not None else None

    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, kind: ControlType, fields: Mapping[str, Any] | None = None) -> bool:
        """Send one message; False if it could not go.  Our own fields are checked
        (ProtocolError): a wrong shape is a bug of this side, not the peer's."""
        message = {"type": kind.value, **(fields or {})}
        check(message, CONTROL_MESSAGES[kind], kind.value)
        try:
            self._sock.send(encode_control(message))
        except OSError as exc:  # BlockingIOError, ConnectionRefused, EPIPE, EMSGSIZE
            if not self._failing:
                log.warning("%s: %s not sent: %s", self.name, kind.value, exc)
            self._failing = True
            return False
        self._failing = False
        return True

    def receive(self) -> list[ControlMessage]:
        """What has arrived (at most READ_BATCH datagrams); never waits."""
        messages: list[ControlMessage] = []
        for _ in range(READ_BATCH):
            try:
                datagram = self._sock.recv(MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.warning("%s: socket error: %s", self.name, exc)
                self.closed = True
                break
            if not datagram:  # SOCK_DGRAM: an empty read means the peer closed
                self.closed = True
                break
            self._decode(datagram, messages)
        return messages

    async def receive_one(self) -> ControlMessage | None:
        """Wait for the next valid message; None once the peer closed."""
        loop = asyncio.get_running_loop()
        while True:  # bounded by the caller's timeout
            datagram = await loop.sock_recv(self._sock, MAX_DATAGRAM + 1)
            if not datagram:
                self.closed = True
                return None
            messages: list[ControlMessage] = []
            self._decode(datagram, messages)
            if messages:
                return messages[0]

    def close(self) -> None:
        self._sock.close()

    def _decode(self, datagram: bytes, into: list[ControlMessage]) -> None:
        try:
            into.append(_message(datagram))
        except ProtocolError as exc:
            held = self._bad.due()
            if held is not None:
                log.warning("%s: dropped an invalid control datagram: %s%s", self.name, exc,
                            f" ({held} more since the last report)" if held else "")


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


def secret_fd(secret: bytes) -> int:
    """A memfd holding `secret`, read position 0, for one child to inherit.

    The secret hand-off: unlike the environment (/proc/<pid>/environ keeps the
    original for the process's whole life, readable by its uid), the child
    reads the fd once at boot and closes it, and nothing of it stays visible.
    The caller passes the fd in `pass_fds` and closes it after the spawn."""
    if len(secret) > MAX_SECRET_BYTES:
        raise ValueError(f"a child secret is at most {MAX_SECRET_BYTES} bytes")
    fd = os.memfd_create("coproc-secret", os.MFD_CLOEXEC)
    try:
        os.write(fd, secret)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_inherited_secret(environ: MutableMapping[str, str] | None = None) -> bytes | None:
    """The secret this child inherited ($COPROC_SECRET_FD), read and the fd closed;
    None when run by hand.  Raise ValueError for a variable that names no readable fd."""
    env: MutableMapping[str, str] = os.environ if environ is None else environ
    raw = env.pop(SECRET_FD_ENV, "")
    if not raw:
        return None
    if not raw.isdigit():
        raise ValueError(f"{SECRET_FD_ENV}={raw!r} is not a file descriptor number")
    fd = int(raw)
    try:
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{SECRET_FD_ENV}={fd}: cannot read the secret: {exc.strerror}") \
            from None
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    if not data or len(data) > MAX_SECRET_BYTES:
        raise ValueError(f"{SECRET_FD_ENV}={fd}: empty or oversized secret")
    return data
