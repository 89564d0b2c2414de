"""`python -m gateway --config FILE`: the gateway process, normally started by `coproc serve`.

The supervisor passes the listening socket ($COPROC_LISTEN_FD), the control
channel ($COPROC_CONTROL_FD) and the instance key (in the memfd named by
$COPROC_SECRET_FD: never the environment, which a plugin of the same uid could
read back from /proc/<gateway pid>/environ).
Run by hand, `--listen HOST:PORT` (or the config's listen address) is bound
here and a random instance key is drawn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import stat
import sys
from pathlib import Path
from typing import Any

import zmq

from config import ConfigError, load_definition_set, load_gateway_config
from config.gateway import GatewayConfig, for_process
from config.logs import setup_logging
from config.policies import load_policies
from config.tyk_support import unapplied_warnings
from gateway.app import serve
from ipc import eventloop, exitcodes
from ipc.child import die_with_parent
from ipc.contract import GATEWAY_INDEX_ENV, LISTEN_FD_ENV, SECRET_FD_ENV
from ipc.control import inherited_control_socket, read_inherited_secret
from ipc.tokens import new_instance_key

log = logging.getLogger("coproc.gateway")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gateway")
    parser.add_argument("--config", required=True, help="the gateway config file")
    parser.add_argument("--listen", default="",
                        help="HOST:PORT to bind when not started by `coproc serve`")
    return parser.parse_args(argv)


def listening_socket(listen: str, cfg: GatewayConfig) -> socket.socket:
    """The inherited listening socket, else one bound to --listen or the config's address."""
    fd = os.environ.get(LISTEN_FD_ENV, "")
    if fd.isdigit():
        return socket.socket(fileno=int(fd))
    if listen:
        host, _, port = listen.rpartition(":")
        address = (host.strip("[]") or "127.0.0.1", int(port))
    else:
        address = (cfg.listen_address or "0.0.0.0", cfg.listen_port)
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    return socket.create_server(address, family=family, backlog=1024)


def instance_key() -> bytes:
    """The key from the inherited secret fd (read once, closed); random when run by hand.
    Raise ValueError for a secret fd that holds no key."""
    raw = read_inherited_secret()
    if raw:
        return bytes.fromhex(raw.decode("ascii"))
    log.warning("%s is not set: drew a random key, so only workers started by this "
                "process's supervisor could be admitted", SECRET_FD_ENV)
    return new_instance_key()


def process_index() -> int:
    """Which of the instance's gateway processes this is (0 when run by hand)."""
    raw = os.environ.get(GATEWAY_INDEX_ENV, "0")
    if not raw.isdigit():
        raise ConfigError(GATEWAY_INDEX_ENV, "", f"{raw!r} is not a process index",
                          "the supervisor sets it; unset it to run a gateway by hand")
    return int(raw)


#: Fields of a gateway config file that hold a credential: (path, name in the warning).
SECRET_FIELDS = ((("secret",), "the admin secret"), (("node_secret",), "node_secret"),
                 (("storage", "password"), "the storage (Redis) password"),
                 (("coproc", "bundles", "headers"), "the bundle server's headers"))


def readable_secrets_warning(path: Path) -> str | None:
    """A warning when `path` is readable by every user and holds credentials.

    The worker no longer reads the file (it gets its part from the supervisor),
    but any other local user or process could."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not mode & stat.S_IROTH or not isinstance(doc, dict):
        return None
    held = [name for keys, name in SECRET_FIELDS if _value(doc, keys)]
    if not held:
        return None
    return (f"{path} is readable by every user (mode {mode:04o}) and holds "
            f"{', '.join(held)}. Fix: chmod 600 {path} (0640 with the service's group), or "
            "set them through the environment (e.g. TYK_GW_SECRET, TYK_GW_STORAGE_PASSWORD)")


def _value(doc: dict[str, Any], keys: tuple[str, ...]) -> Any:
    node: Any = doc
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    args = _parse_args(argv)
    try:
        key = instance_key()  # first: the secret fd is closed as early as possible
    except ValueError as exc:
        setup_logging("gateway")
        log.error("cannot start: %s", exc)
        return exitcodes.BOOT_FAILED
    try:
        cfg = for_process(load_gateway_config(args.config), process_index())
        # A definition that does not load is left out, named by /hello; only an
        # unusable app_path (the gateway config) stops the gateway.
        definitions = load_definition_set(cfg)
        apis = list(definitions.apis)
        load_policies(cfg.policies)  # a broken policy file fails the start, named
    except ConfigError as exc:
        setup_logging("gateway")
        log.error("%s", exc)
        return exitcodes.CONFIG
    setup_logging("gateway", cfg.log_level, cfg.log_format)
    warning = readable_secrets_warning(cfg.path)
    if warning is not None:
        log.warning("%s", warning)
    for line in unapplied_warnings(cfg.path, cfg.raw, [(a.source, a.raw) for a in apis]):
        log.warning("%s", line)  # Tyk settings Coproc reads as known but does not apply
    try:
        sock = listening_socket(args.listen, cfg)
        control = inherited_control_socket()
    except (OSError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        return exitcodes.BOOT_FAILED
    for broken in definitions.broken:  # under a supervisor, it logged them already
        (log.debug if control is not None else log.error)(
            "API definition not served (%s): %s", broken.component, broken.error)
    try:
        eventloop.run(serve(cfg, apis, sock, instance_key=key, control_sock=control,
                            broken=definitions.broken))
    except asyncio.CancelledError:
        pass  # a second signal: stop now
    except (OSError, zmq.ZMQError) as exc:
        log.error("cannot start: %s", exc)
        return exitcodes.BOOT_FAILED
    return exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
