"""The process contract: every environment variable a Coproc child reads.

The supervisor sets these when it starts a child (supervisor/contract.py builds
the environments); the gateway, the worker and the worker's sandbox read them.
Both sides import the names from here and nowhere else (docs/PROTOCOL.md,
"Process contract").  `NEVER_INHERITED` lists what a child must never get from
the supervisor's own environment: the contract variables are set per child, and
only the supervisor may talk to systemd.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = [
    "ADMIT_GATE_ENV",
    "CGROUPS_ENV",
    "CONFIG_ENV_PREFIX",
    "CONTRACT_ENV",
    "CONTROL_FD_ENV",
    "GATEWAY_INDEX_ENV",
    "GENERATION_ENV",
    "LISTEN_FD_ENV",
    "NEVER_INHERITED",
    "SCRATCH_DIR_ENV",
    "SECRET_FD_ENV",
    "STORE_SOCKET_ENV",
    "SUPERVISOR_PID_ENV",
    "SYSTEMD_ENV",
    "coprocess_env",
]

#: Every child: one end of its control socketpair (ipc/control.py).
CONTROL_FD_ENV: Final = "COPROC_CONTROL_FD"
#: Every child: the supervisor's pid (a child re-parented elsewhere exits at once).
SUPERVISOR_PID_ENV: Final = "COPROC_SUPERVISOR_PID"
#: Gateway: the inherited HTTP listening socket.
LISTEN_FD_ENV: Final = "COPROC_LISTEN_FD"
#: Gateway and worker: an inherited memfd holding the child's one secret, read once
#: and closed at boot (ipc/control.py).  Gateway: the instance key worker tokens are
#: derived from; worker: its admission token.  Secrets never travel in the
#: environment: /proc/<pid>/environ keeps the original for the process's whole life,
#: readable by anything of the same uid.
SECRET_FD_ENV: Final = "COPROC_SECRET_FD"  # noqa: S105 (a variable name)
#: Gateway: its index among the instance's gateway processes (0 when absent).
GATEWAY_INDEX_ENV: Final = "COPROC_GATEWAY_INDEX"
#: Gateway, when the instance's memory storage lives in the store process (several
#: gateway processes): the store's unix socket (gateway/storage/remote.py).
STORE_SOCKET_ENV: Final = "COPROC_STORE_SOCKET"
#: Worker: its generation number.
GENERATION_ENV: Final = "COPROC_GENERATION"
#: Worker, "1": send `loaded` and wait for `admit` before HELLO.
ADMIT_GATE_ENV: Final = "COPROC_ADMIT_GATE"
#: Worker: where to make its scratch directory (the supervisor removes it at reap).
SCRATCH_DIR_ENV: Final = "COPROC_SCRATCH_DIR"
#: Worker: the per-generation cgroup directories to join, os.pathsep-joined.
CGROUPS_ENV: Final = "COPROC_CGROUPS"

#: Every name of the contract: set per child by the supervisor, or not at all.
CONTRACT_ENV: Final = frozenset({
    CONTROL_FD_ENV, SUPERVISOR_PID_ENV, LISTEN_FD_ENV, SECRET_FD_ENV, GENERATION_ENV,
    ADMIT_GATE_ENV, SCRATCH_DIR_ENV, CGROUPS_ENV, GATEWAY_INDEX_ENV, STORE_SOCKET_ENV,
    # Names of an older contract that carried secrets in the environment: never passed on.
    "COPROC_INSTANCE_KEY", "COPROC_WORKER_TOKEN",
})

#: systemd's: a child sending READY=1 (or watchdog pings) would lie for the instance.
SYSTEMD_ENV: Final = frozenset({
    "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
    "LISTEN_FDNAMES",
})

#: Never passed from the supervisor's environment to a child.  A contract
#: variable inherited by accident would be worse than a missing one: e.g. a
#: stale COPROC_CGROUPS would make a worker join a cgroup made for another.
NEVER_INHERITED: Final = CONTRACT_ENV | SYSTEMD_ENV

#: Settings the gateway config may take from the environment under Tyk's names
#: (`config.gateway.ENV_OVERRIDES`: the admin secret, the Redis password, ...).  The
#: gateway reads them; a coprocess (the plugin worker, a supervised gRPC server)
#: never gets them, since plugin code could read its own environment.
CONFIG_ENV_PREFIX: Final = "TYK_GW_"


def coprocess_env(inherited: Mapping[str, str]) -> dict[str, str]:
    """What a coprocess may inherit: no contract, systemd or config-override variable."""
    return {k: v for k, v in inherited.items()
            if k not in NEVER_INHERITED and not k.startswith(CONFIG_ENV_PREFIX)}
