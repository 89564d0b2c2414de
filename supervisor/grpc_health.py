"""One health probe of a gRPC plugin server (blocking: the supervisor runs it in a thread).

The gRPC health protocol (`grpc.health.v1.Health/Check` for the server as a
whole, service "") when the server implements it; a server that answers
UNIMPLEMENTED is healthy once it accepts a connection (Tyk's plugin servers
rarely register the health service).  The messages are tiny and fixed, so
they are written here as protobuf bytes: no generated code, no
grpcio-health-checking dependency.  grpcio is imported here only, so the
supervisor of an instance without a supervised server never loads it.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["HEALTH_CHECK", "probe", "serving"]

HEALTH_CHECK: Final = "/grpc.health.v1.Health/Check"
#: HealthCheckResponse{status: SERVING}: field 1, varint 1.
_SERVING: Final = b"\x08\x01"


def serving(reply: bytes) -> bool:
    """Whether a HealthCheckResponse says SERVING."""
    return reply == _SERVING


def probe(target: str, timeout_s: float) -> str:
    """'' when the server at `target` (a grpcio target) is healthy, else why not."""
    import grpc

    channel = grpc.insecure_channel(target.removeprefix("tcp://"),
                                    options=[("grpc.enable_http_proxy", 0)])
    try:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            return f"no connection to {target} within {timeout_s:g} s"
        check = channel.unary_unary(HEALTH_CHECK)  # bytes in, bytes out
        try:
            reply = check(b"", timeout=timeout_s)  # HealthCheckRequest{service: ""}
        except grpc.RpcError as exc:
            code: Any = exc.code()  # every call error has one
            if code is grpc.StatusCode.UNIMPLEMENTED:
                return ""  # no health service: accepting connections is all we can know
            return f"health check failed: {code.name}"
        return "" if serving(reply) else "the health service says it is not serving"
    finally:
        channel.close()
