"""The `coproc` command line (console script `coproc = supervisor.cli:main`).

Exit codes: 0 after a graceful stop; 78 (`ipc.exitcodes.CONFIG`) for an
invalid config or API definition; 75 (`LOCKED`) when another instance holds
the run directory; 1 when the run directory or the listening address cannot
be used, or when the gateway keeps failing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from config import ConfigError, load_api_definitions, load_gateway_config
from config.logs import setup_logging
from ipc import exitcodes
from supervisor import demo, runtime
from supervisor.contract import ChildCommands
from supervisor.listener import ListenError
from supervisor.lock import LockedError
from supervisor.rundir import RunDirError

__all__ = ["build_parser", "main", "serve"]

_EPILOG = """\
signals (serve): SIGTERM/SIGINT stop gracefully (the gateway drains, then the
worker; a second signal or the end of supervisor.stop_grace_ms kills them);
SIGQUIT stops at once.  With listen_port 0 the bound port is logged and
written to <run_dir>/http.port.
"""


def serve(config_path: Path, commands: ChildCommands | None = None) -> int:
    """`coproc serve`: validate the config, then supervise until stopped."""
    setup_logging("supervisor")
    try:
        cfg = load_gateway_config(config_path)
        # A broken API definition must fail here, with its message, and not
        # as a gateway crash loop.
        load_api_definitions(cfg)
    except ConfigError as exc:
        print(f"coproc: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    setup_logging("supervisor", cfg.log_level, cfg.log_format)
    try:
        return runtime.serve(cfg, commands)
    except LockedError as exc:
        print(f"coproc: {exc}", file=sys.stderr)
        return exitcodes.LOCKED
    except (RunDirError, ListenError) as exc:
        print(f"coproc: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coproc", description="An API gateway whose Tyk-compatible Python plugins run "
        "out of process in one supervised plugin worker.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "serve", help="run the gateway and its plugin worker in the foreground",
        description="Run the gateway and one plugin worker under this supervisor, in the "
        "foreground, logging to stderr. Stops gracefully on SIGTERM or Ctrl-C.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG)
    run.add_argument("--config", required=True, type=Path, metavar="FILE",
                     help="the gateway config file (JSON, tyk.conf-style)")
    quick = commands.add_parser(
        "demo", help="start an echo upstream and serve the shipped example config",
        description="Quick start: run an echo upstream on 127.0.0.1:UPSTREAM_PORT and serve "
        "the shipped default config (with its example plugins) on 127.0.0.1:PORT. "
        "Ctrl-C stops both.")
    quick.add_argument("--port", type=int, default=demo.DEFAULT_PORT,
                       help="port the gateway listens on (default %(default)s)")
    quick.add_argument("--upstream-port", type=int, default=demo.DEFAULT_UPSTREAM_PORT,
                       help="port of the echo upstream (default %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        return demo.run_demo(args.port, args.upstream_port, serve)
    return serve(args.config)


if __name__ == "__main__":
    sys.exit(main())
