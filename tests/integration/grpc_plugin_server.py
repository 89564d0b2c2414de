"""A Tyk gRPC plugin server in Python, written as Tyk's docs show users to write one.

`python tests/integration/grpc_plugin_server.py --listen 127.0.0.1:0 [--events FILE]`
prints `GRPC_PORT=<port>` once serving.  `Dispatch` calls the method named by
the object's `hook_name` (Tyk's convention); `DispatchEvent` appends each
event's JSON payload to FILE.  The hooks mirror the Python-worker plugins of
test_tyk_compat.py and test_auth_plugins.py, so both drivers are held to the
same outcomes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.grpc._pb import coprocess_pb2 as pb
from gateway.grpc._pb import coprocess_pb2_grpc as pb_grpc


class Hooks:
    """One method per hook name, each changing the object in place."""

    def __init__(self, events: Path | None) -> None:
        self.events = events

    def MyPreHook(self, obj: pb.Object) -> None:
        req = obj.request
        req.set_headers["X-Added"] = "added-by-grpc"
        req.delete_headers.append("X-Remove-Me")
        req.add_params["added"] = "1"
        req.delete_params.append("removeme")
        if obj.spec.get("config_data"):
            req.set_headers["X-Config-Foo"] = json.loads(obj.spec["config_data"])["foo"]
        req.set_headers["X-Api-Id"] = obj.spec["APIID"]
        req.set_headers["X-Hook-Type"] = pb.HookType.Name(obj.hook_type)

    def MyRequestHook(self, obj: pb.Object) -> None:
        # Tyk's response-override test plugin.
        params, overrides = obj.request.params, obj.request.return_overrides
        overrides.headers["X-Foo"] = "Bar"
        overrides.response_code = int(params["status"])
        if params.get("response_body") == "true":
            overrides.response_body = "foobar"
        else:
            overrides.response_error = '{"foo": "bar"}'
        if params.get("override"):
            overrides.override_error = True

    def MyAuthCheck(self, obj: pb.Object) -> None:
        token = obj.request.headers.get("Authorization", "")
        if token.startswith("valid_"):
            obj.session.rate = 1000.0
            obj.session.per = 1.0
            obj.session.quota_max = 1
            obj.session.quota_renewal_rate = 60
            obj.metadata["token"] = token
        elif token.startswith("rate_"):
            obj.session.rate = 2.0
            obj.session.per = 60.0
            obj.session.quota_max = -1
            obj.session.metadata["token"] = token  # the session's metadata also counts
            obj.session.metadata["plan"] = "gold"
        elif token.startswith("nosession_"):
            # A token but no session (Tyk's grpc_node-auth-simple rejects this way).
            obj.metadata["token"] = token

    def ShowSession(self, obj: pb.Object) -> None:
        req = obj.request
        req.set_headers["X-Session-Rate"] = str(obj.session.rate)
        req.set_headers["X-Session-Plan"] = obj.session.metadata.get("plan", "")
        req.set_headers["X-Hook-Type"] = pb.HookType.Name(obj.hook_type)

    def MyPostHook(self, obj: pb.Object) -> None:
        # Tyk's post hook with a URL rewrite and a method transform.
        req = obj.request
        if req.url.split("?")[0].endswith("/test2"):
            if req.method != "POST":
                req.return_overrides.response_code = 500
                req.return_overrides.response_error = "'invalid method type'"
                return
            req.url = "/newpath"
            req.method = "GET"

    def MyResponseHook(self, obj: pb.Object) -> None:
        obj.response.raw_body = b"newbody"
        obj.response.headers["X-Response-Hook"] = "grpc"
        obj.response.multivalue_headers.add(key="X-Response-Hook", values=["grpc"])

    def CheckBody(self, obj: pb.Object) -> None:
        req, fail = obj.request, obj.request.return_overrides
        content_type = req.headers.get("Content-Type", "")
        problem = ""
        if "json" in content_type and (not req.raw_body or "{}" not in req.body):
            problem = "json: body or raw_body missing"
        if "multipart" in content_type and (req.body or not req.raw_body):
            problem = "binary: body must be empty, raw_body full"
        expected = req.headers.get("X-Body-Len")
        if expected and len(req.raw_body) != int(expected):
            problem = f"raw_body has {len(req.raw_body)} bytes, expected {expected}"
        if problem:
            fail.response_code, fail.response_error = 400, problem
        else:
            req.raw_body = req.raw_body + b"+grpc"  # the upstream gets the new body

    def Explode(self, obj: pb.Object) -> None:
        raise RuntimeError("plugin bug")

    def After(self, obj: pb.Object) -> None:
        obj.request.set_headers["X-After"] = "ran"

    async def SleepFromHeader(self, obj: pb.Object) -> None:
        ms = obj.request.headers.get("X-Sleep-Ms", "")
        if ms:
            if self.events is not None:  # lets a test see the call is in the server
                with self.events.open("a") as f:
                    f.write(json.dumps({"sleeping": int(ms)}) + "\n")
            await asyncio.sleep(int(ms) / 1000)
        obj.request.set_headers["X-Slept"] = ms or "0"

    def Noop(self, obj: pb.Object) -> None:
        pass


class Dispatcher(pb_grpc.DispatcherServicer):
    def __init__(self, events: Path | None) -> None:
        self.hooks = Hooks(events)
        self.events = events

    async def Dispatch(self, request: pb.Object, context: grpc.aio.ServicerContext) -> pb.Object:
        hook = getattr(self.hooks, request.hook_name, None)
        if hook is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"no hook {request.hook_name}")
        result = hook(request)
        if asyncio.iscoroutine(result):
            await result
        return request

    async def DispatchEvent(self, request: pb.Event,
                            context: grpc.aio.ServicerContext) -> pb.EventReply:
        if self.events is not None:
            with self.events.open("a") as f:
                f.write(request.payload + "\n")
        return pb.EventReply()


async def serve(listen: str, events: Path | None) -> None:
    server = grpc.aio.server()
    pb_grpc.add_DispatcherServicer_to_server(Dispatcher(events), server)
    port = server.add_insecure_port(listen)
    await server.start()
    print(f"GRPC_PORT={port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--events", type=Path)
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.events))


if __name__ == "__main__":
    main()
