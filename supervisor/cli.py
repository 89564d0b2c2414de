"""The `coproc` command line (console script `coproc = supervisor.cli:main`).

Exit codes: 0 after a graceful stop; 78 (`ipc.exitcodes.CONFIG`) for an
invalid config (or, with `--strict` / `coproc.strict_definitions`, an invalid
API definition: without it that API is left unserved and named); 75
(`LOCKED`) when another instance holds the run directory; 1 when the run
directory or the listening address cannot be used, or when the gateway keeps
failing.

`status`, `reload`, `restart-worker` and `stop` talk to a running `serve`
(see ctl.py): 0 done, 1 failed (named on stderr), 69 no instance running.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from config import ConfigError, load_definition_set, load_gateway_config
from config.logs import setup_logging
from ipc import exitcodes
from supervisor import bundle_cli, ctl, demo, runtime
from supervisor.contract import ChildCommands
from supervisor.listener import ListenError
from supervisor.lock import LockedError
from supervisor.rundir import RunDirError
from supervisor.worker_python import check_worker_python

__all__ = ["build_parser", "main", "serve", "version"]

log = logging.getLogger("coproc.supervisor")

_EPILOG = """\
signals (serve): SIGTERM/SIGINT stop gracefully (the gateway drains, then the
worker; a second signal or the end of supervisor.stop_grace_ms kills them);
SIGQUIT stops at once; SIGHUP hot-restarts the worker (API definitions and
plugins re-read); SIGUSR1 logs a status summary.  With listen_port 0 the bound
port is logged and written to <run_dir>/http.port.
"""

_CONTROL = {
    "status": "show the supervisor, gateway and worker state (--json for a machine)",
    "reload": "re-read API definitions and hot-restart the worker; wait for the outcome",
    "restart-worker": "hot-restart the worker (also clears FATAL); wait for the outcome",
    "stop": "stop the instance gracefully",
}



def serve(config_path: Path, commands: ChildCommands | None = None,
          strict: bool = False) -> int:
    """`coproc serve`: validate the config, then supervise until stopped.

    `strict` (`--strict`): any API definition that does not load fails the start.
    """
    setup_logging("supervisor")
    try:
        cfg = load_gateway_config(config_path)
        if strict:
            cfg = dataclasses.replace(cfg, strict_definitions=True)
        definitions = load_definition_set(cfg)
        if cfg.strict_definitions:
            # Fail here, with the file's message, and not as a gateway crash loop.
            definitions.strict()
    except ConfigError as exc:
        print(f"coproc: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    setup_logging("supervisor", cfg.log_level, cfg.log_format)
    for broken in definitions.broken:  # logged once, here (gateway and worker skip them)
        log.error("API definition not served (%s): %s", broken.component, broken.error)
    if commands is None and cfg.worker.python:
        problem = check_worker_python(cfg.worker.python)
        if problem:
            print(f"coproc: {cfg.path}: {problem}", file=sys.stderr)
            return exitcodes.CONFIG
        commands = ChildCommands.default(cfg.path, worker_python=cfg.worker.python)
    try:
        return runtime.serve(cfg, commands)
    except LockedError as exc:
        print(f"coproc: {exc}", file=sys.stderr)
        return exitcodes.LOCKED
    except (RunDirError, ListenError) as exc:
        print(f"coproc: {exc}", file=sys.stderr)
        return 1


def version() -> str:
    """The installed distribution's version (a source tree run without install: unknown)."""
    try:
        return importlib.metadata.version("coproc")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coproc", description="An API gateway whose Tyk-compatible Python plugins run "
        "out of process in one supervised plugin worker.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG)
    parser.add_argument("--version", action="version", version=f"coproc {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "serve", help="run the gateway and its plugin worker in the foreground",
        description="Run the gateway and one plugin worker under this supervisor, in the "
        "foreground, logging to stderr. Stops gracefully on SIGTERM or Ctrl-C.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG)
    run.add_argument("--config", required=True, type=Path, metavar="FILE",
                     help="the gateway config file (JSON, tyk.conf-style)")
    run.add_argument("--strict", action="store_true",
                     help="exit 78 if any API definition does not load, and refuse a reload "
                     "that leaves one broken (default: that API is unserved, the others "
                     "serve; also coproc.strict_definitions)")
    quick = commands.add_parser(
        "demo", help="start an echo upstream and serve the shipped example config",
        description="Quick start: run an echo upstream on 127.0.0.1:UPSTREAM_PORT and serve "
        "the shipped default config (with its example plugins) on 127.0.0.1:PORT. "
        "Ctrl-C stops both.")
    quick.add_argument("--port", type=int, default=demo.DEFAULT_PORT,
                       help="port the gateway listens on (default %(default)s)")
    quick.add_argument("--upstream-port", type=int, default=demo.DEFAULT_UPSTREAM_PORT,
                       help="port of the echo upstream (default %(default)s)")
    for name, text in _CONTROL.items():
        sub = commands.add_parser(name, help=text, description=text.capitalize() + ".")
        sub.add_argument("--config", required=True, type=Path, metavar="FILE",
                         help="the config file the instance was started with")
        sub.add_argument("--json", action="store_true", help="print the answer as JSON")
    bundle_cli.add_parser(commands)
    return parser


def control(command: str, config_path: Path, as_json: bool) -> int:
    """Send one command to the instance started with `config_path`."""
    try:
        cfg = load_gateway_config(config_path)
    except ConfigError as exc:
        print(f"coproc: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    wait_s = 10.0 if command in ("status", "stop") else cfg.worker.boot_timeout_ms / 1000 + 20
    try:
        answer = ctl.send_command(cfg.run_dir, command, wait_s)
    except ctl.ControlError as exc:
        print(f"coproc {command}: {exc}", file=sys.stderr)
        return exc.code
    ok = bool(answer.get("ok"))
    if as_json:
        print(json.dumps(answer.get("status", answer), indent=2, sort_keys=True))
    elif command == "status" and ok:
        print(ctl.format_status(answer["status"]))
    elif ok and command != "stop" and answer.get("generation") is None:
        print(f"coproc {command}: API definitions re-read (no coprocess to restart)")
    elif ok and command != "stop":
        print(f"coproc {command}: worker generation {answer.get('generation')} is active")
        for name in answer.get("unserved") or ():  # new APIs whose plugins failed: 500
            print(f"coproc {command}: not served, plugin failed to load: {name}",
                  file=sys.stderr)
    elif ok:
        pid = answer.get("pid")
        gone = isinstance(pid, int) and ctl.wait_exit(
            pid, cfg.supervisor.stop_grace_ms / 1000 + 5)
        print(f"coproc stop: supervisor pid {pid} " + ("stopped" if gone else "is stopping"))
    if not ok:
        print(f"coproc {command} failed: {answer.get('error') or 'unknown error'}",
              file=sys.stderr)
        return 1
    return 0



def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bundle":
        return bundle_cli.run(args)
    if args.command == "demo":
        return demo.run_demo(args.port, args.upstream_port, serve)
    if args.command in _CONTROL:
        return control(args.command, args.config, args.json)
    return serve(args.config, strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
