"""What the supervisor tells systemd (or anything on $NOTIFY_SOCKET).

READY=1 once, when the gateway serves and the first worker is routable;
STATUS=<one line> whenever that line changes; RELOADING=1 when a hot restart
begins and READY=1 when it ended; WATCHDOG=1 at half of
$WATCHDOG_USEC, sent from the reconcile loop so that a stuck loop is noticed;
STOPPING=1 when a stop begins.  Without $NOTIFY_SOCKET all of it is a no-op.
"""

from __future__ import annotations

from ipc.notify import Notifier

__all__ = ["ServiceStatus"]


class ServiceStatus:
    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier
        self._line = ""
        self._ready_sent = False
        self._watchdog_s = notifier.watchdog_interval()
        self._next_ping = 0.0

    @property
    def ready_sent(self) -> bool:
        return self._ready_sent

    def update(self, line: str, ready: bool = False) -> None:
        """Report `line`; with `ready`, also READY=1 the first time."""
        if ready and not self._ready_sent:
            self._ready_sent = True
            self._line = line
            self._notifier.send(ready=1, status=line)
        elif line != self._line:
            self._line = line
            self._notifier.send(status=line)

    def reloading(self, why: str) -> None:
        self._line = f"reloading: {why}"
        self._notifier.send(reloading=1, status=self._line)

    def reloaded(self, line: str) -> None:
        """After RELOADING=1, READY=1 again (whatever the outcome: we still serve)."""
        self._line = line
        if self._ready_sent:
            self._notifier.send(ready=1, status=line)
        else:
            self._notifier.send(status=line)

    def stopping(self, why: str) -> None:
        self._line = f"stopping: {why}"
        self._notifier.send(stopping=1, status=self._line)

    def ping(self, now: float) -> None:
        if self._watchdog_s and now >= self._next_ping:
            self._notifier.send(watchdog=1)
            self._next_ping = now + self._watchdog_s
