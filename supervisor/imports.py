"""Which plugin file a booting worker is importing, to name it if the worker dies.

The worker says `importing` (api_id, file) on its control socket before each
plugin import (worker/supervisor_link.ImportAnnouncer).  A plugin that ends
the process at import time (`os._exit`, a segfault, a signal) leaves no
traceback: the last file announced by a worker that never became ready is
the culprit, and the exit reason names it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ipc.control import ControlMessage, ControlType
from supervisor.child import ChildProcess

__all__ = ["ImportNotes"]

log = logging.getLogger("coproc.supervisor.imports")


class ImportNotes:
    """The last `importing` message per booting worker pid."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[str, str]] = {}

    def note(self, child: ChildProcess, message: ControlMessage) -> None:
        if child.ready_at is None:
            self._last[child.pid] = (str(message.get("api_id", "")), str(message["file"]))

    def ready(self, child: ChildProcess) -> None:
        """`child` finished importing (`loaded`, or `ready`): a later death is not an
        import's (e.g. a candidate killed because its reload was refused)."""
        self._last.pop(child.pid, None)

    def exit_note(self, child: ChildProcess) -> str:
        """For a child that just exited: " while importing ..." when it died during
        its plugin load, else "".  Call before its control socket is closed: a last
        datagram not read yet is read here."""
        for message in child.read_messages():
            if message.type is ControlType.IMPORTING:
                self.note(child, message)
        last = self._last.pop(child.pid, None)
        if last is None or child.ready_at is not None:
            return ""
        api_id, file = last
        # The full path goes to the log only: exit reasons reach /hello (no paths).
        log.error("%s died while importing the plugin file %s (API %s): that plugin ends "
                  "the process at import; fix or remove it", child.name, file, api_id or "?")
        return f" while importing plugin {Path(file).name} of API {api_id or '?'}"
