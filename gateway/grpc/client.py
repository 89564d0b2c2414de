"""`GrpcHookClient`: hook calls of `grpc`-driver APIs to a Tyk gRPC plugin server.

One `grpc.aio` channel in the gateway's event loop; each hook call is one
`coprocess.Dispatcher/Dispatch` with the hook's deadline.  Outcomes map onto
the hook client's exceptions (gateway/hooks.py), so the chain applies the same
failure policy and status codes whatever the driver:

* deadline exceeded -> `HookTimeout` (504);
* server unreachable or gone (UNAVAILABLE) -> `NoWorker` (503 + Retry-After).
  gRPC fails such calls at once (no wait_for_ready), and a call in flight when
  the connection drops fails at once too, never at its deadline;
* anything else the server answers (an exception in it, UNIMPLEMENTED, a
  message over the size limits) -> `HookFailed` (500).

The address can be switched while calls run (`switch`): new calls go to the
new channel and the old one closes once its calls are done or after a grace.
That is the seam for a supervised server's hot restart (new server on a new
address, switch, drain the old; supervisor/grpc_server.py): `on_drained` hears
of each replaced address once its channel is closed, and the gateway tells the
supervisor (`grpc_drained`), which then stops the old server.  This module
does not start servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import grpc

from config.apidef import HookDef
from config.gateway import GatewayConfig
from gateway.grpc._pb import coprocess_pb2 as pb
from gateway.grpc._pb.coprocess_pb2_grpc import DispatcherStub
from gateway.grpc.convert import from_proto, to_proto
from gateway.grpc.target import channel_options, grpc_target
from gateway.hooks import HookCallError, HookFailed, HookTimeout, NoWorker, WorkerLost
from gateway.latency import Histogram
from ipc.tyk_event import tyk_event

__all__ = ["GrpcHookClient"]

log = logging.getLogger("coproc.grpc")

#: How long DispatchEvent may take (events are off the request path).
EVENT_TIMEOUT_S: Final = 5.0
#: How long a replaced channel's calls may run before it is closed under them.
DRAIN_GRACE_S: Final = 30.0
#: Counters, prefixed: they join the chain's in the gateway's status reports.
STATS: Final = ("grpc_calls", "grpc_replies", "grpc_errors", "grpc_timeouts",
                "grpc_unavailable", "grpc_events", "grpc_event_errors", "grpc_switches")


class _Channel:
    """One server address: its channel, stub and calls in flight."""

    def __init__(self, address: str, options: list[tuple[str, Any]]) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(grpc_target(address), options=options)
        self.stub = DispatcherStub(self.channel)  # type: ignore[no-untyped-call]
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def enter(self) -> None:
        self.inflight += 1
        self.idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if not self.inflight:
            self.idle.set()

    def state(self) -> str:
        return str(self.channel.get_state(try_to_connect=False).name).lower()


class GrpcHookClient:
    """The hook service of `grpc`-driver APIs (see the module docstring)."""

    def __init__(self, cfg: GatewayConfig) -> None:
        self._options = channel_options(cfg)
        # A supervised server's address comes from the supervisor once it is healthy.
        self._supervised = cfg.grpc_server.enabled
        self._address = "" if self._supervised else cfg.grpc.server
        self._active: _Channel | None = None
        self._draining: set[_Channel] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Called with a replaced address once its channel is closed.
        self.on_drained: Callable[[str], None] | None = None
        #: The supervised server's generation the active channel goes to (None: external).
        self.generation: int | None = None
        self.latency = Histogram()
        self.stats: dict[str, int] = dict.fromkeys(STATS, 0)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        # Connecting is lazy: a server that starts after the gateway is fine.
        if self._address:
            self._active = _Channel(self._address, self._options)
            log.info("gRPC plugin server: %s", self._address)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        channels = [c for c in (self._active, *self._draining) if c is not None]
        self._active = None
        self._draining.clear()
        for channel in channels:
            await channel.channel.close(grace=None)

    async def switch(self, address: str, grace_s: float = DRAIN_GRACE_S) -> None:
        """Send new calls to `address`; the previous channel drains, then closes."""
        self.use(address, grace_s=grace_s)

    def use(self, address: str, generation: int | None = None,
            grace_s: float = DRAIN_GRACE_S) -> None:
        """`switch` from synchronous code (the control channel's reader): new calls go
        to `address` from now on; the previous channel drains in a task."""
        self.generation = generation
        if self._active is not None and self._active.address == address:
            return  # a restarted server on a fixed address: the channel reconnects
        previous, self._active = self._active, _Channel(address, self._options)
        self._address = address
        self.stats["grpc_switches"] += 1
        log.info("gRPC plugin server: now %s", address)
        if previous is not None:
            self._draining.add(previous)
            self._spawn(self._drain(previous, grace_s))

    async def ready(self, timeout_s: float) -> bool:
        """Whether the active channel connects within `timeout_s`."""
        channel = self._active
        if channel is None:
            return False
        try:
            await asyncio.wait_for(channel.channel.channel_ready(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def _drain(self, channel: _Channel, grace_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(channel.idle.wait(), grace_s)
        if channel.inflight:
            log.warning("gRPC server %s: closing with %d call(s) still running",
                        channel.address, channel.inflight)
        self._draining.discard(channel)
        await channel.channel.close(grace=None)
        if self.on_drained is not None:
            self.on_drained(channel.address)

    # -- calls -------------------------------------------------------------

    async def call(self, api_id: str, hook_type: str, hook: HookDef,
                   obj: dict[str, Any]) -> dict[str, Any]:
        """Run one hook in the gRPC server; return the object after the hook."""
        channel = self._active
        if channel is None:
            self.stats["grpc_unavailable"] += 1
            raise NoWorker("the supervised gRPC plugin server is not up yet" if self._supervised
                           else "no gRPC plugin server is configured "
                           "(coprocess_options.coprocess_grpc_server)")
        try:
            request = to_proto(obj)
        except (TypeError, ValueError) as exc:
            self.stats["grpc_errors"] += 1
            raise HookFailed("bad_object", f"cannot encode the object: {exc}") from None
        self.stats["grpc_calls"] += 1
        channel.enter()
        started = time.perf_counter_ns()
        try:
            reply = await channel.stub.Dispatch(request, timeout=hook.timeout_ms / 1000)
        except grpc.aio.AioRpcError as exc:
            raise self._failed(exc, channel, hook) from None
        finally:
            channel.leave()
        self.latency.record_ns(time.perf_counter_ns() - started)
        self.stats["grpc_replies"] += 1
        got = from_proto(reply)
        if hook_type == "response" and "response" not in got:
            self.stats["grpc_errors"] += 1  # Tyk: "Middleware error"
            raise HookFailed("no_response", f"response hook {hook.name} returned no "
                                            f"response object")
        got["spec"] = obj.get("spec", {})
        return got

    def _failed(self, exc: grpc.aio.AioRpcError, channel: _Channel,
                hook: HookDef) -> HookCallError:
        code, details = exc.code(), exc.details() or ""
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            self.stats["grpc_timeouts"] += 1
            return HookTimeout(f"hook {hook.name} exceeded {hook.timeout_ms} ms")
        if code is grpc.StatusCode.UNAVAILABLE:
            self.stats["grpc_unavailable"] += 1
            return NoWorker(f"gRPC plugin server {channel.address} is unavailable: {details}")
        self.stats["grpc_errors"] += 1
        if code is grpc.StatusCode.CANCELLED:
            return WorkerLost(f"gRPC call to {channel.address} was cancelled: {details}")
        return HookFailed(code.name.lower(), details)

    # -- events ------------------------------------------------------------

    def send_event(self, api_id: str, handler: str, event: Mapping[str, str],
                   spec: Mapping[str, str]) -> bool:
        """DispatchEvent for a cp_dynamic_handler, in Tyk's JSON wrapper; off the request path."""
        channel = self._active
        if channel is None:
            return False
        payload = json.dumps(tyk_event({"api_id": api_id, **event}, handler, spec))
        self.stats["grpc_events"] += 1
        self._spawn(self._event(channel, payload))
        return True

    async def _event(self, channel: _Channel, payload: str) -> None:
        try:
            await channel.stub.DispatchEvent(pb.Event(payload=payload),
                                             timeout=EVENT_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            self.stats["grpc_event_errors"] += 1
            log.warning("DispatchEvent to %s failed: %s %s", channel.address,
                        exc.code().name, exc.details())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- health ------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The server's address and connection state, calls in flight, latency, counters."""
        channel = self._active
        return {
            "driver": "grpc",
            "server": channel.address if channel else "",
            "state": channel.state() if channel else "unconfigured",
            "inflight": sum(c.inflight for c in (channel, *self._draining) if c is not None),
            "draining": sorted(c.address for c in self._draining),
            "generation": self.generation,
            # The supervised server's channel is set once the supervisor said where
            # it is healthy; an external server is the operator's to run.
            "ready": channel is not None,
            "hook_latency_us": self.latency.summary(),
            "stats": dict(self.stats),
        }
