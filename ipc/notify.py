"""sd_notify: tell systemd (or anything listening on $NOTIFY_SOCKET) our state.

The protocol is one datagram of newline-separated `KEY=VALUE` pairs sent to the
Unix socket named by `$NOTIFY_SOCKET` (a leading `@` means the abstract
namespace).  With no `$NOTIFY_SOCKET` every call is a cheap no-op, so callers
never need to ask whether they run under systemd.
"""

from __future__ import annotations

import os
import socket

__all__ = ["Notifier", "format_notify", "parse_notify"]


def format_notify(**fields: str | int) -> bytes:
    return "\n".join(f"{key.upper()}={value}" for key, value in fields.items()).encode()


def parse_notify(datagram: bytes) -> dict[str, str]:
    pairs = (line.partition("=") for line in datagram.decode(errors="replace").splitlines())
    return {key: value for key, _, value in pairs if key}


class Notifier:
    """A connected-once client for `$NOTIFY_SOCKET`."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def watchdog_interval(self) -> float | None:
        """Half of `$WATCHDOG_USEC` in seconds, if systemd asked for pings."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 2_000_000

    def send(self, **fields: str | int) -> bool:
        """Send one state update; errors are swallowed (systemd may be gone)."""
        if not self._address:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never block the loop: a stalled listener loses an update, not the service.
            self._sock.sendto(format_notify(**fields), socket.MSG_DONTWAIT, self._address)
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
