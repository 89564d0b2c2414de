"""Example plugin for the Echo API (config/apps/echo.json).

Written the way a Tyk user writes a Python plugin: the same imports, the same
`@Hook` decorator and the same argument lists run unmodified on Tyk and on Coproc.
"""

import json

from tyk.decorators import *

from gateway import TykGateway as tyk


@Hook
def AddGreeting(request, session, spec):
    # A pre hook: three arguments, returns (request, session).
    # spec["config_data"] is the API definition's "config_data", as JSON text.
    config = json.loads(spec["config_data"] or "{}")
    request.add_header("X-Coproc-Greeting", config.get("greeting", "hello"))
    tyk.log("AddGreeting ran for " + request.object.url, "info")
    return request, session


@Hook
def StampResponse(request, response, session, metadata, spec):
    # A response hook: five arguments, returns the response.
    response.headers["X-Coproc-Stamped"] = "true"
    try:
        document = json.loads(response.raw_body)
    except ValueError:
        return response  # not JSON: pass the body through untouched
    document["stamped_by"] = "StampResponse"
    # Replacing raw_body replaces the body; Coproc fixes Content-Length.
    response.raw_body = json.dumps(document).encode()
    return response
