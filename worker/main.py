"""`python -m worker --config FILE`: boot the plugin worker and run it to its exit code.

Boot order matters:

1. `die_with_parent` before anything else (the supervisor may already be gone);
2. config and API definitions (a bad config exits 78, `ipc.exitcodes.CONFIG`; a bad
   definition is skipped);
3. the admission token is read from the inherited secret fd (and the fd
   closed) first thing, so plugins (and their subprocesses) never see it:
   it never was in the environment, which /proc/self/environ would keep;
4. the sandbox (`worker.sandbox`) confines this process, before any plugin
   code is imported; a required layer that fails exits 3 (BOOT_FAILED);
5. the Tyk plugin API is installed, then every API's plugins are imported;
   a plugin that fails to import is reported, never fatal (only a failure of
   the loader itself exits 4, `ipc.exitcodes.PLUGINS_FAILED`);
6. the event loop runs one uplink per gateway process (`worker.uplinks`) until
   every one has drained (0), been rejected (5) or broken; then threads still
   running are given a moment and the process exits.

Environment (docs/PROTOCOL.md): COPROC_GENERATION, COPROC_SECRET_FD (the fd
holding the token), COPROC_SUPERVISOR_PID, and COPROC_CONTROL_FD (absent when
run by hand).
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from config import ConfigError, load_definition_set, load_gateway_config
from config.apidef import APIDefinition
from config.gateway import GatewayConfig, parse_gateway_config
from config.logs import setup_logging
from ipc import eventloop, exitcodes, gctune
from ipc.child import die_with_parent
from ipc.contract import GENERATION_ENV, SECRET_FD_ENV
from ipc.control import inherited_control_socket, read_inherited_secret
from worker.analytics import AnalyticsFunc, load_analytics
from worker.hostcalls import HostCalls
from worker.loader import HookTable, load_plugins
from worker.sandbox import SandboxError, SandboxReport, apply_sandbox, resolve_policy
from worker.supervisor_link import SupervisorLink
from worker.tyk_api import install_plugin_api
from worker.uplink import Identity
from worker.uplinks import build_uplinks

__all__ = ["main"]

log = logging.getLogger("worker")

#: How long exit waits for threads (a plugin's own) still running after the drain.
THREAD_EXIT_GRACE_S = 1.0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    die_with_parent()
    faulthandler.enable()  # the supervisor's SIGABRT on a hang dumps every thread's stack
    setup_logging("worker")
    try:
        secret = read_inherited_secret()  # first: the fd is closed before anything else
    except ValueError as exc:
        log.error("%s", exc)
        return exitcodes.BOOT_FAILED
    try:
        token, boot_config = _boot(secret)
    except ValueError as exc:
        log.error("%s", exc)
        return exitcodes.BOOT_FAILED
    try:
        # From `coproc serve`, the worker's part of the config came with the token:
        # the config file (admin secret, storage passwords) is never opened here.
        cfg = (parse_gateway_config(boot_config, Path(args.config).resolve())
               if boot_config is not None else load_gateway_config(args.config))
        # A definition that does not load has no plugins here (its API is unserved;
        # the supervisor logs it); only an unusable app_path stops the worker.
        apis = list(load_definition_set(cfg).apis)
    except ConfigError as exc:
        log.error("%s", exc)
        return exitcodes.CONFIG
    setup_logging("worker", cfg.log_level, cfg.log_format)
    identity = _identity(cfg, token)
    if identity is None:
        return exitcodes.BOOT_FAILED
    sandbox = _sandbox(cfg, apis)  # before any plugin code is imported
    if sandbox is None:
        return exitcodes.BOOT_FAILED
    identity = dataclasses.replace(identity, sandbox=sandbox.summary())  # told in HELLO
    hostcalls = HostCalls()  # bound to the uplinks once the event loop runs
    install_plugin_api(hostcalls)
    try:
        table = load_plugins(cfg, apis)
        analytics = load_analytics(apis)
    except Exception:  # the loader itself broke (plugin errors never get here)
        log.exception("loading plugins failed")
        return exitcodes.PLUGINS_FAILED
    failed = sorted(api for api, entry in table.report().items() if not entry["ok"])
    log.info("worker generation %d: %d API(s) with plugins, %d with problems%s",
             identity.generation, len(table.apis), len(failed),
             f" ({', '.join(failed)})" if failed else "")
    gctune.settle()  # plugins are loaded: see ipc/gctune.py
    try:
        code = eventloop.run(_serve(cfg, identity, table, hostcalls, analytics))
    finally:
        sandbox.cleanup()
    log.info("worker generation %d exiting with code %d", identity.generation, code)
    return _exit_code(code)


async def _serve(cfg: GatewayConfig, identity: Identity, table: HookTable,
                 hostcalls: HostCalls, analytics: dict[str, AnalyticsFunc]) -> int:
    link = SupervisorLink(inherited_control_socket(), sandbox=identity.sandbox)
    try:
        return await build_uplinks(cfg, identity, link, hostcalls, table, analytics).run()
    finally:
        link.close()


def _boot(secret: bytes | None) -> tuple[str, dict[str, Any] | None]:
    """(token, config document or None) from the secret fd's content: JSON
    `{"token", "config"}` from `coproc serve` (supervisor/contract.py), or a bare
    token (a worker started by hand or by a test).  Raise ValueError."""
    if not secret:
        return "", None
    if not secret.startswith(b"{"):
        return secret.decode("ascii", "replace"), None
    try:
        boot = json.loads(secret)
    except ValueError:
        raise ValueError(f"{SECRET_FD_ENV}: not the JSON `coproc serve` writes") from None
    token, config = boot.get("token"), boot.get("config")
    if not isinstance(token, str) or not (config is None or isinstance(config, dict)):
        raise ValueError(f"{SECRET_FD_ENV}: expected a token and a config object")
    return token, config


def _identity(cfg: GatewayConfig, token: str) -> Identity | None:
    generation = os.environ.get(GENERATION_ENV, "")
    if not generation.isdigit() or not token:
        log.error("%s and %s must be set: the worker is started by `coproc serve`",
                  GENERATION_ENV, SECRET_FD_ENV)
        return None
    return Identity(int(generation), token, os.getpid(), cfg.worker.threads)


def _sandbox(cfg: GatewayConfig, apis: Sequence[APIDefinition]) -> SandboxReport | None:
    """Confine this process (docs/SECURITY.md); None if a required layer failed."""
    plugin_dirs = {Path(h.path).parent for api in apis
                   for h in api.custom_middleware.all_hooks() if h.path}
    plugin_dirs |= {Path(api.analytics_plugin.path).parent for api in apis
                    if api.analytics_plugin is not None}
    try:
        report = apply_sandbox(resolve_policy(cfg, sorted(plugin_dirs)))
    except SandboxError as exc:
        log.error("%s", exc)
        return None
    log.info("%s", report.describe())
    return report


def _exit_code(code: int) -> int:
    """`code`, after hook threads had a moment to finish; hard exit if some never do.

    Interpreter shutdown joins every non-daemon thread: one hung hook (or a
    plugin's own thread) would keep a drained worker alive forever.
    """
    deadline = time.monotonic() + THREAD_EXIT_GRACE_S
    for thread in threading.enumerate():
        if thread is threading.current_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threading.enumerate()
             if t is not threading.current_thread() and not t.daemon and t.is_alive()]
    if stuck:
        log.warning("threads still running at exit (%s): exiting without waiting",
                    ", ".join(stuck))
        logging.shutdown()
        sys.stderr.flush()
        os._exit(code)
    return code


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker",
                                     description="Coproc plugin worker (started by coproc serve)")
    parser.add_argument("--config", required=True, help="the gateway config file")
    return parser.parse_args(argv)
