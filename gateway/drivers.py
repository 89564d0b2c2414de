"""Driver selection: each hook call goes to the hook service of its API's driver.

An API's `custom_middleware.driver` names who runs its hooks: `grpc` a Tyk
gRPC plugin server (gateway/grpc/), anything else the Python plugin worker
(gateway/hooks.py).  Both services have the same `call` and `send_event`, and
raise the same exceptions, so the chain and the authenticator use this router
as they would use either, and apply answers and failure policies alike.

The router also times every call and hands the outcome to a `HookObserver`
(metrics, the analytics record's phase times) when observation is on.  It
does so inline rather than through a wrapping client: each layer of
coroutines between the chain and the socket costs on every hook call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from config.apidef import GRPC_DRIVER, APIDefinition, HookDef
from config.gateway import GatewayConfig
from gateway.analytics.observer import HookObserver
from gateway.hook_errors import outcome_of
from gateway.hook_groups import GroupReply, HookGroup
from gateway.hooks import NoWorker

__all__ = ["DriverClient", "DriverRouter", "grpc_apis", "open_grpc"]

log = logging.getLogger("coproc.gateway.drivers")


class HookCaller(Protocol):
    async def call(self, api_id: str, hook_type: str, hook: HookDef,
                   obj: dict[str, Any]) -> dict[str, Any]: ...


class DriverClient(HookCaller, Protocol):
    """What a driver's client offers the chain (the worker's and the gRPC one)."""

    def send_event(self, api_id: str, handler: str, event: Mapping[str, str],
                   spec: Mapping[str, str]) -> bool: ...

    def health(self) -> dict[str, Any]: ...


class GrpcService(DriverClient, Protocol):
    on_drained: Callable[[str], None] | None

    async def start(self) -> None: ...

    def use(self, address: str, generation: int | None = None) -> None: ...

    async def close(self) -> None: ...


class DriverRouter:
    """The hook caller of the chain: the worker client, or the gRPC one for `grpc` hooks."""

    def __init__(self, worker: HookCaller, grpc: GrpcService | None,
                 grpc_api_ids: Iterable[str] = (), observer: HookObserver | None = None) -> None:
        self.worker = worker
        self.grpc = grpc
        self.observer = observer
        self._grpc_apis = frozenset(grpc_api_ids)
        # The worker client's merged call (test fakes may have none).
        self._call_group: Callable[[str, HookGroup, dict[str, Any]],
                                   Awaitable[GroupReply | None]] | None = getattr(
            worker, "call_group", None)

    @property
    def arena(self) -> Any:
        """The worker's body arena (gateway/bodies.py `defers_text`); gRPC resolves text."""
        return getattr(self.worker, "arena", None)

    async def call(self, api_id: str, hook_type: str, hook: HookDef,
                   obj: dict[str, Any]) -> dict[str, Any]:
        observer = self.observer
        started = time.perf_counter_ns()
        try:
            if hook.driver != GRPC_DRIVER:
                got = await self.worker.call(api_id, hook_type, hook, obj)
            elif self.grpc is None:
                raise NoWorker("the API's driver is grpc but no gRPC plugin server is "
                               "configured (coprocess_options.coprocess_grpc_server)")
            else:
                got = await self.grpc.call(api_id, hook_type, hook, obj)
        except BaseException as exc:
            if observer is not None:
                observer.one(api_id, hook_type, hook, outcome_of(exc),
                             time.perf_counter_ns() - started)
            raise
        if observer is not None:
            observer.one(api_id, hook_type, hook, "ok", time.perf_counter_ns() - started)
        return got

    async def call_group(self, api_id: str, group: HookGroup,
                         obj: dict[str, Any]) -> GroupReply | None:
        """A merged call to the worker (gateway/hook_groups.py); None: call one by one
        (a worker client that does not merge).  A call that failed as a whole counts
        as its first hook's failure, as the chain handles it.  A gRPC hook is never
        in a merged group: `hook_groups.group_hooks` leaves each one alone."""
        call_group = self._call_group
        if call_group is None:
            return None
        observer = self.observer
        started = time.perf_counter_ns()
        try:
            reply = await call_group(api_id, group, obj)
        except BaseException as exc:
            if observer is not None:
                first = group[0]
                observer.one(api_id, first.hook_type, first.hook, outcome_of(exc),
                             time.perf_counter_ns() - started)
            raise
        if reply is not None and observer is not None:
            observer.group(api_id, group, reply, time.perf_counter_ns() - started)
        return reply

    def send_event(self, api_id: str, handler: str, event: Mapping[str, str],
                   spec: Mapping[str, str]) -> bool:
        """A cp_dynamic_handler event, to the service that runs the API's plugins."""
        if api_id in self._grpc_apis:
            return self.grpc is not None and self.grpc.send_event(api_id, handler, event, spec)
        send = getattr(self.worker, "send_event", None)  # test fakes may have none
        return send is not None and bool(send(api_id, handler, event, spec))


def grpc_apis(apis: Iterable[APIDefinition]) -> list[str]:
    """Ids of the active APIs whose plugins a gRPC server runs."""
    return [a.api_id for a in apis if a.active and a.custom_middleware.driver == GRPC_DRIVER]


def open_grpc(cfg: GatewayConfig, needed: bool) -> GrpcService | None:
    """The gRPC hook client when a server is configured, else None.

    grpcio is imported only here: a gateway without `grpc` APIs runs without
    it.  API definitions that need it were refused at load when it is missing.
    """
    if not (cfg.grpc.server or cfg.grpc_server.enabled) or not cfg.enable_coprocess:
        return None
    from gateway.grpc import grpc_available

    if not grpc_available():
        if needed:
            raise RuntimeError("coprocess_grpc_server is set but grpcio is not installed: "
                               "pip install 'coproc[grpc]'")
        log.warning("coprocess_grpc_server is set but grpcio is not installed: "
                    "no API can use the grpc driver (pip install 'coproc[grpc]')")
        return None
    from gateway.grpc.client import GrpcHookClient

    return GrpcHookClient(cfg)
