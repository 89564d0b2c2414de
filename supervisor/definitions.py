"""The supervisor's view of the API definitions: which are served, which are broken.

One bad definition never takes the instance down: it is left unserved and
named (`coproc status`, and `/hello` through the gateway's own load).  A
reload must not do worse than what serves now: `check()` refuses a new set of
files that would take a serving API out of service (its file edited into an
error, or its listen path taken by an earlier file); definitions already
broken may stay broken, and a fixed one is served by the reload.  With
`strict_definitions` any broken file refuses the reload.

The new set becomes the current one only when its reload succeeds
(`settle(True)`); until then `coproc status` shows what serves.
"""

from __future__ import annotations

import logging
from typing import Any

from config import ConfigError, DefinitionSet, load_definition_set
from config.gateway import GatewayConfig

__all__ = ["ServedDefinitions"]

log = logging.getLogger("coproc.supervisor.definitions")


class ServedDefinitions:
    def __init__(self, cfg: GatewayConfig) -> None:
        self._cfg = cfg
        try:
            self.current = load_definition_set(cfg)
        except ConfigError:  # app_path vanished since the CLI checked it
            self.current = DefinitionSet(())
        self._pending: DefinitionSet | None = None

    def check(self) -> str:
        """Re-read the files before a reload: "" when it may go ahead, else the
        reload's error ("API definitions not reloaded: ...")."""
        why = self._refusal()
        return f"API definitions not reloaded: {why}" if why else ""

    def _refusal(self) -> str:
        try:
            new = load_definition_set(self._cfg)
        except ConfigError as exc:
            return str(exc)
        if self._cfg.strict_definitions and new.broken:
            return f"{new.broken[0].error} (strict_definitions: every definition must load)"
        worse = new.breaks(self.current)
        if worse:
            return "; ".join(f"{b.error} (the API of {b.file.name} is serving now and "
                             "would stop)" for b in worse)
        known = {(b.file, str(b.error)) for b in self.current.broken}
        for broken in new.broken:  # logged once: when it first appears
            if (broken.file, str(broken.error)) not in known:
                log.error("API definition not served (%s): %s", broken.component, broken.error)
        self._pending = new
        return ""

    def settle(self, ok: bool) -> None:
        """The reload that `check` allowed finished (`ok`) or failed."""
        if ok and self._pending is not None:
            self.current = self._pending
        self._pending = None

    def served(self) -> frozenset[str]:
        """The api_ids the gateway routes now (a reload must not take them away)."""
        return frozenset(api.api_id for api in self.current.apis if api.active)

    def status(self) -> dict[str, Any]:
        """The `definitions` part of `coproc status`."""
        return {"served": sum(1 for api in self.current.apis if api.active),
                "broken": [b.summary() for b in self.current.broken],
                "strict": self._cfg.strict_definitions}
