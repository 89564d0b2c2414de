"""Issue 13 item 2: a plugin importing every module and public name of Tyk's Python package.

The plugin is written the way Tyk plugins use these modules (`tyk.session`
classes to build sessions, `tyk.object`'s wrapper, the pb2 modules' messages
and HookType values) and is loaded and called by the worker's loader in a
child process.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from compat.plugin_runner import run_plugins, write_apis

EVERY_MODULE_PLUGIN = textwrap.dedent('''
    from tyk.decorators import *
    from tyk.decorators import (CustomKeyCheck, Event, HandlerDecorator, Hook, Post,
                                PostKeyAuth, Pre)
    from gateway import TykGateway as tyk
    from tyk.gateway import TykGateway
    from tyk.session import (AccessDefinition, AccessSpec, BasicAuthData, JWTData, Monitor,
                             TykSession)
    from tyk.object import TykCoProcessObject
    from tyk.request import TykCoProcessRequest
    from tyk.event import TykEvent
    from tyk.loader import MiddlewareLoader
    from tyk.middleware import TykMiddleware, HandlerDecorators
    import tyk.session as tyk_session, tyk.middleware as tyk_middleware
    import coprocess_common_pb2 as HookType
    from coprocess_common_pb2 import StringSlice
    from coprocess_object_pb2 import Object, Event as EventMessage, EventReply
    from coprocess_mini_request_object_pb2 import MiniRequestObject
    from coprocess_return_overrides_pb2 import ReturnOverrides
    from coprocess_session_state_pb2 import SessionState
    from coprocess_response_object_pb2 import ResponseObject, Header
    import coprocess_grpc_pb2

    @Hook
    def Everything(request, session, metadata, spec):
        assert TykGateway is tyk and TykSession is SessionState is tyk_session.TykSession
        assert isinstance(request, TykCoProcessRequest) and isinstance(session, TykSession)
        built = TykSession(rate=10, per=1, quota_max=100)
        built.access_rights["api1"].api_name = "one"
        built.access_rights["api1"].allowed_urls.add(url="/x", methods=["GET"])
        built.access_rights["api2"].CopyFrom(AccessDefinition(api_id="api2"))
        built.basic_auth_data.CopyFrom(BasicAuthData(password="p", hash="bcrypt"))
        built.jwt_data.CopyFrom(JWTData(secret="s"))
        built.monitor.CopyFrom(Monitor(trigger_limits=[80.0]))
        assert isinstance(built.access_rights["api1"].allowed_urls[0], AccessSpec)
        session.CopyFrom(built)
        wrapped = TykCoProcessObject(Object(hook_type="CustomKeyCheck", hook_name="x"))
        assert wrapped.hook_type == "customkeycheck" and wrapped.dump()[1] > 0
        assert HookType.CustomKeyCheck == 4 and HookType.HookType.Name(5) == "Response"
        event = TykEvent('{"event_type": "QuotaExceeded", "message": "m"}')
        overrides = ReturnOverrides(response_code=200, headers={"a": "b"})
        response = ResponseObject(status_code=201)
        response.multivalue_headers.append(Header(key="k", values=["v"]))
        assert MiddlewareLoader(None).find_module("x") is None
        assert Hook in HandlerDecorators and issubclass(Pre, HandlerDecorator)
        assert coprocess_grpc_pb2.Object is Object and TykMiddleware
        names = [event.event_type, str(overrides.response_code), str(response.status_code),
                 ",".join(StringSlice(items=["a", "b"]).items), EventMessage(payload="p").payload,
                 type(EventReply()).__name__, MiniRequestObject(method="GET").method]
        request.add_header("X-Everything", "|".join(names))
        metadata["token"] = "abc"
        return request, session, metadata

    @Pre
    def LegacyPre(request, session, spec):
        request.add_header("X-Legacy", "pre")
        return request, session

    @Event
    def OnEvent(event, spec):
        pass
''')


def test_a_plugin_importing_every_tyk_module_loads_and_runs(tmp_path: Path) -> None:
    """1. A plugin imports every module and public name of Tyk's `tyk` package and pb2s.
    2. It loads without problems; its @Hook builds a session with tyk.session classes.
    3. The hook and a legacy @Pre run and set their headers.
    """
    (tmp_path / "middleware").mkdir()
    (tmp_path / "middleware" / "everything.py").write_text(EVERY_MODULE_PLUGIN)
    middleware = {"driver": "python", "pre": [
        {"name": "Everything", "path": "everything.py"},
        {"name": "LegacyPre", "path": "everything.py"}]}
    config = write_apis(tmp_path, {"api": {"custom_middleware": middleware}})
    result = run_plugins(config, [("api", "Everything"), ("api", "LegacyPre")])
    assert result.report["api"]["ok"], json.dumps(result.report)
    assert result.calls == {
        "api.Everything": {"X-Everything": "QuotaExceeded|200|201|a,b|p|EventReply|GET"},
        "api.LegacyPre": {"X-Legacy": "pre"},
    }, result.log
