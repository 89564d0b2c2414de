"""The `grpc` plugin driver: hooks of APIs with `custom_middleware.driver: "grpc"`
run in a Tyk gRPC plugin server (Tyk's `coprocess.Dispatcher` service).

* proto/coprocess.proto: Tyk's messages and service, field for field; the
  generated modules are in _pb/ (made by generate.py, committed);
* convert.py: the coprocess object's dict shape (gateway/tyk_object.py) to and
  from the protobuf `Object`;
* target.py: `coprocess_options.coprocess_grpc_server` to a gRPC target and
  the channel options of Tyk's settings;
* client.py: `GrpcHookClient`, the hook service the chain calls for those APIs.

Nothing here imports grpcio at package import: it is an optional extra
(`pip install 'coproc[grpc]'`); `require_grpc` says so clearly when missing.
"""

from __future__ import annotations

import importlib.util

__all__ = ["MISSING_GRPC", "grpc_available", "require_grpc"]

MISSING_GRPC = ("the grpc plugin driver needs the grpcio and protobuf packages, which are not "
                "installed; install them with: pip install 'coproc[grpc]'")


def grpc_available() -> bool:
    try:
        return (importlib.util.find_spec("grpc") is not None
                and importlib.util.find_spec("google.protobuf") is not None)
    except ModuleNotFoundError:  # no `google` namespace at all
        return False


def require_grpc() -> None:
    """Raise RuntimeError with the install command when grpcio is missing."""
    if not grpc_available():
        raise RuntimeError(MISSING_GRPC)
