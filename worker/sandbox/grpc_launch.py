"""Run a supervised gRPC plugin server's command inside the worker's process layers.

`python -m worker.sandbox.grpc_launch --config FILE -- COMMAND...` is what the
supervisor spawns for `coproc.grpc_server.command` (supervisor/spawner.py).
It puts `$COPROC_GRPC_LISTEN` where the command says `{listen}`, applies the
sandbox layers that hold across `exec` for any program, whatever its language
(the same `coproc.sandbox` profile and knobs as the worker's), and execs the
command, which keeps this pid and so the supervisor's process group and cgroup:

* the per-generation cgroup (memory and pids limits) when the host allows it;
* rlimits (CPU seconds, open files, file size, no core dumps; processes when the
  uid is dropped, which is not done here);
* no_new_privs (profiles `standard` and `strict`);
* the parent-death signal (SIGKILL when the supervisor dies), always.

Landlock, seccomp, the private network namespace and the uid drop are not
applied: they are set up inside the Python worker around its own imports and
sockets, and a server in another runtime needs its own files and its address
(docs/drivers/grpc.md, "Supervised server").
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from config import ConfigError
from config.gateway import GRPC_LISTEN_ENV, LISTEN_PLACEHOLDER, load_gateway_config
from worker.sandbox.cgroup import join_cgroups
from worker.sandbox.errors import LayerUnavailable
from worker.sandbox.policy import resolve_policy
from worker.sandbox.prctl import arm_pdeathsig, set_no_new_privs
from worker.sandbox.rlimits import apply_rlimits, planned_rlimits

__all__ = ["command_for", "main"]
#: Exit code when the command cannot be started at all (as a shell's).
EXEC_FAILED = 127


def command_for(command: list[str], listen: str) -> list[str]:
    """The command with `{listen}` replaced by the address to bind."""
    return [arg.replace(LISTEN_PLACEHOLDER, listen) for arg in command]


def main(argv: list[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(prog="python -m worker.sandbox.grpc_launch")
    parser.add_argument("--config", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command: list[str] = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        _fail("no command to run")
    try:
        cfg = load_gateway_config(args.config)
    except ConfigError as exc:
        _fail(str(exc))
    policy = resolve_policy(cfg)
    layers: list[str] = []
    try:
        joined = join_cgroups(policy.cgroup_dirs, policy.memory_mb.value,
                              policy.processes.value)
        if joined.joined:
            layers.append("cgroup")
        for warning in apply_rlimits(planned_rlimits(policy, joined.memory_limited)):
            print(f"coproc grpc_server: {warning}", file=sys.stderr)
        layers.append("rlimits")
        if policy.nnp:
            set_no_new_privs()
            layers.append("no_new_privs")
        arm_pdeathsig(policy.supervisor_pid)
        layers.append("pdeathsig")
    except LayerUnavailable as exc:
        _fail(f"sandbox layer failed: {exc}")
    final = command_for(command, os.environ.get(GRPC_LISTEN_ENV, ""))
    print(f"coproc grpc_server: sandbox {policy.profile} ({', '.join(layers)}); "
          f"exec {final[0]}", file=sys.stderr, flush=True)
    try:
        os.execvp(final[0], final)  # noqa: S606 - the operator's argv, never a shell
    except OSError as exc:
        _fail(f"cannot run {final[0]!r}: {exc.strerror}; check coproc.grpc_server.command")


def _fail(message: str) -> NoReturn:
    print(f"coproc grpc_server: {message}", file=sys.stderr, flush=True)
    sys.exit(EXEC_FAILED)


if __name__ == "__main__":
    main()
