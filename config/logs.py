"""Logging set-up shared by the supervisor, the gateway and the worker.

All three log to stderr (systemd's journal, or the terminal) with the
component and pid on every line; `log_format: json` gives one JSON object per
line for log shippers.  Extra fields passed with `extra={"fields": {...}}`
(a request id, an API id, a hook name) are appended in both formats.

One event is one line in json mode: a traceback (and a stack) is folded into
the `exc` (`stack`) field, newlines in a message are escaped, and a field
never replaces the line's own keys (`ts`, `level`, `msg`, ...).  Text mode is
for people: a traceback follows its line as Python prints it.
"""

from __future__ import annotations

import json
import logging
import sys
import time

__all__ = ["setup_logging"]


class _TextFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        fields = getattr(record, "fields", None) or {}
        extra = "".join(f" {k}={v}" for k, v in fields.items())
        line = (f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} "
                f"{self.component}[{record.process}] {record.name}: {record.getMessage()}{extra}")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(_TextFormatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "component": self.component,
            "pid": record.process,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in (getattr(record, "fields", None) or {}).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def setup_logging(component: str, level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter(component) if fmt == "json" else _TextFormatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
