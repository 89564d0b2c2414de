"""Tyk's gRPC client settings as a grpcio target and channel options.

`coprocess_grpc_server` is read as Tyk reads it: a `tcp://` prefix is
stripped (gRPC takes host:port), other schemes (`unix://`, `dns:///`) are
gRPC's own and pass through.  Message size limits of 0 mean "as large as the
bodies the gateway accepts" instead of gRPC's 4 MiB default, which would fail
every hook call with a larger body (see docs/drivers/grpc.md).
"""

from __future__ import annotations

from typing import Any

from config.gateway import GatewayConfig

__all__ = ["channel_options", "grpc_target"]

#: Reconnect backoff: a restarted server is called again within this bound,
#: instead of gRPC's default (1 s, growing to 120 s) during which calls fail.
RECONNECT_MIN_MS = 100
RECONNECT_MAX_MS = 1000
_SLACK = 1 << 20  # the rest of the object beside its bodies


def grpc_target(server: str) -> str:
    """The grpcio target for a `coprocess_grpc_server` value."""
    return server.removeprefix("tcp://")


def channel_options(cfg: GatewayConfig) -> list[tuple[str, Any]]:
    grpc = cfg.grpc
    # An object carries the body twice (raw_body and its text).
    body = cfg.gateway.max_body_bytes
    derived = 2 * body + _SLACK if body else -1
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", grpc.recv_max_size or derived),
        ("grpc.max_send_message_length", grpc.send_max_size or derived),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_MIN_MS),
        ("grpc.min_reconnect_backoff_ms", RECONNECT_MIN_MS),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_MAX_MS),
        # Plugin servers are plain-text on a private address, as Tyk dials them.
        ("grpc.enable_http_proxy", 0),
    ]
    if grpc.authority:
        options.append(("grpc.default_authority", grpc.authority))
    if grpc.round_robin:
        options.append(("grpc.lb_policy_name", "round_robin"))
    return options
