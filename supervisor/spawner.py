"""How each kind of child is started: the process contract as data.

A `SpawnSpec` is everything a `Watcher` needs to start a child of its role:
argv, the environment for a generation, inherited fds, and whether the child
runs plugin code (then it gets its own cgroup and scratch directory).  A new
kind of supervised process (another gateway process, a gRPC plugin server) is
one more spec, not one more branch in the supervisor.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ipc.tokens import store_token
from supervisor.child import ChildProcess, Role
from supervisor.contract import (
    ChildCommands,
    gateway_env,
    gateway_secret,
    store_env,
    worker_env,
    worker_secret,
)

__all__ = ["SpawnSpec", "gateway_spec", "grpc_server_spec", "store_spec", "worker_spec"]


@dataclass(frozen=True, slots=True)
class SpawnSpec:
    role: Role
    argv: tuple[str, ...]
    #: generation -> the child's environment (COPROC_CONTROL_FD is added at spawn).
    env: Callable[[int], dict[str, str]]
    #: generation -> the child's secret, handed over in an fd (never the environment).
    secret: Callable[[int], bytes] | None = None
    pass_fds: tuple[int, ...] = ()
    #: Runs plugin code: a cgroup and a scratch directory of its own.
    confined: bool = False
    #: How logs and `coproc status` name the child ("": its role), e.g. "gateway 1".
    label: str = ""

    def spawn(self, generation: int, now: float) -> ChildProcess:
        """Start one child; raise OSError if it cannot run."""
        secret = self.secret(generation) if self.secret is not None else None
        child = ChildProcess.spawn(self.role, generation, self.argv, self.env(generation), now,
                                   pass_fds=self.pass_fds, confined=self.confined,
                                   secret=secret)
        child.label = self.label
        return child


def gateway_spec(commands: ChildCommands, listen_fd: int, instance_key: bytes,
                 index: int = 0, processes: int = 1,
                 store: Mapping[str, str] | None = None) -> SpawnSpec:
    """Gateway process `index` of `processes`: all of them accept on `listen_fd`.
    `store`: the store process's part of the environment (store_role.py), if any."""
    return SpawnSpec(Role.GATEWAY, commands.gateway,
                     lambda _generation: {**gateway_env(listen_fd, index), **(store or {})},
                     secret=lambda _generation: gateway_secret(instance_key),
                     pass_fds=(listen_fd,),
                     label=f"gateway {index}" if processes > 1 else "")


def worker_spec(commands: ChildCommands, instance_key: bytes,
                config: Mapping[str, Any] | None = None) -> SpawnSpec:
    """`config`: the worker's part of the gateway config (`worker_config`), handed
    over with its token so that it never reads the config file."""
    return SpawnSpec(Role.WORKER, commands.worker,
                     lambda generation: worker_env(generation),
                     secret=lambda generation: worker_secret(instance_key, generation, config),
                     confined=True)


def grpc_server_spec(command: tuple[str, ...], config_path: str,
                     env: Callable[[int], dict[str, str]]) -> SpawnSpec:
    """A supervised gRPC plugin server: `command` run through the sandbox launcher
    (worker/sandbox/grpc_launch.py), which fills in `{listen}` from `env` and execs it."""
    argv = (sys.executable, "-m", "worker.sandbox.grpc_launch", "--config", config_path, "--",
            *command)
    return SpawnSpec(Role.GRPC_SERVER, argv, env, confined=True)


def store_spec(socket_path: str, log_level: str, log_format: str,
               instance_key: bytes) -> SpawnSpec:
    """The store process (gateway/storage/server.py; supervisor/store_role.py); its
    secret is the token gateways present (`ipc.tokens.store_token`)."""
    argv = (sys.executable, "-m", "gateway.storage.server", "--socket", socket_path,
            "--log-level", log_level, "--log-format", log_format)
    return SpawnSpec(Role.STORE, argv, lambda _generation: store_env(),
                     secret=lambda _generation: store_token(instance_key).encode())
