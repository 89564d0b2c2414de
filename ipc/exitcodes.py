"""Exit codes with a meaning the supervisor acts on (see docs/OPERATIONS.md)."""

from __future__ import annotations

from typing import Final

OK: Final = 0
#: The child could not start (bad environment, socket, sandbox): respawning the
#: same command will fail the same way, so it is reported, not retried blindly.
BOOT_FAILED: Final = 3
#: The worker's plugins could not be loaded at all.
PLUGINS_FAILED: Final = 4
#: The gateway rejected this worker (stale generation, bad token).
REJECTED: Final = 5
#: The supervisor that started this child is gone.
ORPHANED: Final = 6
#: Another `coproc serve` holds the run directory.
LOCKED: Final = 75
#: A configuration file is invalid (sysexits EX_CONFIG).
CONFIG: Final = 78

RESERVED: Final = {BOOT_FAILED: "failed to boot", PLUGINS_FAILED: "plugins failed to load",
                   REJECTED: "rejected by the gateway", ORPHANED: "supervisor gone",
                   LOCKED: "run directory locked", CONFIG: "invalid configuration"}
