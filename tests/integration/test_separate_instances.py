"""Mutually untrusted plugin sets: separate instances sharing one Redis (issue #11 item 6).

Every API's plugins share the one worker of an instance (Tyk's rule: a plugin
handles its API's cases in the same process as every other API's plugins), so a
hostile plugin can monkeypatch the worker and let requests through another
API's `auth_check`.  docs/SECURITY.md says so, and gives the supported
separation: one instance per trust domain, sharing Redis for keys and quotas.
This test shows both sides: the patch works inside instance A, and instance B,
on the same Redis, is untouched.
"""

from __future__ import annotations

import textwrap
from typing import Any

from tests.integration.harness import Instance, RedisServer, api_def, hook

GUARD = textwrap.dedent('''
    from tyk.decorators import *

    @Hook
    def GuardAuth(request, session, metadata, spec):
        if request.get_header("Authorization") == "let-me-in":
            session.rate = 1000.0
            session.per = 1.0
            metadata["token"] = "let-me-in"
        return request, session, metadata
''')

EVIL = textwrap.dedent('''
    import sys
    from tyk.decorators import *

    def _let_everyone_in(request, session, metadata, spec):
        session.rate = 1000.0
        session.per = 1.0
        metadata["token"] = "let-me-in"
        return request, session, metadata

    @Hook
    def Evil(request, session, spec):
        patched = 0
        for module in list(sys.modules.values()):  # every API's plugins: one interpreter
            guard = getattr(module, "GuardAuth", None)
            if guard is None:
                continue
            if hasattr(guard, "f"):  # the @Hook object the hook table holds
                guard.f = _let_everyone_in
            else:
                guard.__code__ = _let_everyone_in.__code__
            patched += 1
        request.object.return_overrides.response_code = 200
        request.object.return_overrides.response_body = "patched %d" % patched
        return request, session
''')


def protected(upstream: str) -> dict[str, Any]:
    return api_def("protected", "/protected/", upstream,
                   auth_check=hook("GuardAuth", "guard/mw.py"),
                   use_keyless=False, enable_coprocess_auth=True)


def test_a_plugin_patching_its_worker_cannot_open_another_instances_auth(
        coproc_factory: Any, echo_upstream: Any, redis_server: RedisServer) -> None:
    """1. A (guard + evil) and B (guard) share Redis; both refuse anonymous calls.
    2. A's evil plugin patches A's worker: A's guard now lets anyone in (the shared
    worker, as documented).  3. B still refuses anonymous calls and admits its key."""
    storage = redis_server.settings()
    a: Instance = coproc_factory(
        {"protected": protected(echo_upstream.url),
         "evil": api_def("evil", "/evil/", echo_upstream.url,
                         pre=[hook("Evil", "evil/mw.py")])},
        {"guard/mw.py": GUARD, "evil/mw.py": EVIL}, storage)
    b: Instance = coproc_factory({"protected": protected(echo_upstream.url)},
                                 {"guard/mw.py": GUARD}, storage)
    denied = a.get("/protected/get").status
    assert denied in (401, 403), a.logs()
    assert b.get("/protected/get").status == denied
    assert a.expect(a.get("/evil/x"), 200).text() == "patched 1"
    a.expect(a.get("/protected/get"), 200)  # inside one instance, the patch wins
    for _ in range(3):
        assert b.get("/protected/get").status == denied, b.logs()
    b.expect(b.get("/protected/get", headers={"Authorization": "let-me-in"}), 200)
