"""What children are started with: docs/PROTOCOL.md, "Process contract".

The commands are data (`ChildCommands`) so tests can run the real supervisor
with tiny stand-in children; the environment is built here and nowhere else,
from the names of `ipc.contract` (which also says what is never inherited).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from config.gateway import GatewayConfig
from ipc.contract import (
    ADMIT_GATE_ENV,
    GATEWAY_INDEX_ENV,
    GENERATION_ENV,
    LISTEN_FD_ENV,
    NEVER_INHERITED,
    SUPERVISOR_PID_ENV,
    coprocess_env,
)
from ipc.tokens import worker_token

__all__ = ["WORKER_SECTIONS", "WORKER_TYK_FIELDS", "ChildCommands", "gateway_env",
           "gateway_secret", "scratch_dir", "store_env", "worker_config", "worker_env",
           "worker_secret"]

#: The parts of `coproc` a worker reads: never storage, keys, admin secret, bundles'
#: headers, analytics or anything else the gateway config holds.
WORKER_SECTIONS: Final = ("log_level", "log_format", "hooks", "worker", "ipc", "sandbox",
                          "jsvm")
#: Tyk's top-level settings a worker reads (the JSVM driver's).
WORKER_TYK_FIELDS: Final = ("enable_jsvm", "jsvm_timeout")


@dataclass(frozen=True, slots=True)
class ChildCommands:
    """argv of each kind of child (fresh interpreters, never a fork of us)."""

    gateway: tuple[str, ...]
    worker: tuple[str, ...]

    @classmethod
    def default(cls, config_path: Path, worker_python: str = "") -> ChildCommands:
        """`worker_python`: coproc.worker.python (plugins' venv); "": ours."""
        config = ("--config", str(config_path))
        return cls(gateway=(sys.executable, "-m", "gateway", *config),
                   worker=(worker_python or sys.executable, "-m", "worker", *config))


def _base_env(inherited: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in inherited.items() if k not in NEVER_INHERITED}
    env[SUPERVISOR_PID_ENV] = str(os.getpid())
    return env


def gateway_env(listen_fd: int, index: int = 0,
                inherited: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Gateway process `index`'s environment, except COPROC_CONTROL_FD and
    COPROC_SECRET_FD (set at spawn)."""
    env = _base_env(inherited)
    env[LISTEN_FD_ENV] = str(listen_fd)
    env[GATEWAY_INDEX_ENV] = str(index)
    return env


def store_env(inherited: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The store process's environment, except COPROC_CONTROL_FD (set at spawn)."""
    return _base_env(inherited)


def gateway_secret(instance_key: bytes) -> bytes:
    """What the gateway reads from its secret fd: the instance key (hex)."""
    return instance_key.hex().encode()


def worker_config(cfg: GatewayConfig) -> dict[str, Any]:
    """The part of the gateway config a worker needs, as a config document.

    The worker gets this from us (in its secret fd) instead of reading the config
    file: the file holds the admin `secret` and storage passwords, and is often
    world-readable.  Paths are resolved here (the worker resolves nothing)."""
    coproc = cfg.raw.get("coproc")
    coproc = coproc if isinstance(coproc, dict) else {}
    options = cfg.raw.get("coprocess_options")
    tyk: dict[str, Any] = {k: cfg.raw[k] for k in WORKER_TYK_FIELDS if k in cfg.raw}
    if cfg.jsvm.tyk_js_path is not None:
        tyk["tyk_js_path"] = str(cfg.jsvm.tyk_js_path)
    return {
        **tyk,
        "app_path": str(cfg.app_path),
        "middleware_path": str(cfg.middleware_path),
        "coprocess_options": options if isinstance(options, dict) else {},
        "coproc": {**{k: coproc[k] for k in WORKER_SECTIONS if k in coproc},
                   "run_dir": str(cfg.run_dir),
                   # Resolved here ("auto"): the worker connects to each one's socket.
                   "gateway": {"processes": cfg.gateway.processes}},
    }


def worker_secret(instance_key: bytes, generation: int,
                  config: Mapping[str, Any] | None = None) -> bytes:
    """What a worker reads from its secret fd: JSON with its generation's admission
    token and (from `coproc serve`) its part of the config (`worker_config`)."""
    boot: dict[str, Any] = {"token": worker_token(instance_key, generation)}
    if config is not None:
        boot["config"] = config
    return json.dumps(boot).encode()


def worker_env(generation: int, inherited: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The worker's environment, except COPROC_CONTROL_FD and COPROC_SECRET_FD (set at spawn)."""
    env = _base_env(coprocess_env(inherited))
    env[GENERATION_ENV] = str(generation)
    env[ADMIT_GATE_ENV] = "1"
    # A plugin edited twice within one second keeps its size: a cached .pyc
    # (keyed by mtime seconds and size) would then load the old code on reload.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def scratch_dir(generation: int) -> Path:
    """A fresh path for one worker generation's scratch directory (the worker makes it).

    Unguessable, so that no other user can plant it first; the worker falls back
    to a directory of its own choice if the path exists anyway.
    """
    name = f"coproc-scratch-{os.getpid()}-w{generation}-{secrets.token_hex(6)}"
    return Path(tempfile.gettempdir()) / name
