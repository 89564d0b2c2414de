"""Example plugin for the Local API (config/apps/local.json).

GET /local/mock is answered by the plugin itself through return_overrides, so
the upstream is never called; every other request goes upstream with an extra
query parameter.
"""

import json

from tyk.decorators import *

from gateway import TykGateway as tyk


@Hook
def MockOrTag(request, session, spec):
    path = request.object.url.split("?", 1)[0]
    if path.endswith("/mock"):
        overrides = request.object.return_overrides
        # A response_code below 400 answers the client with response_body as is.
        overrides.response_code = 200
        overrides.response_body = json.dumps({"message": "answered by the MockOrTag plugin"})
        overrides.headers["Content-Type"] = "application/json"
        return request, session
    request.add_param("tagged_by", "coproc")
    tyk.log("MockOrTag passed " + path + " upstream", "debug")
    return request, session
