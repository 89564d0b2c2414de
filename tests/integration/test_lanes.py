"""Plain hooks run on lane threads (worker/lanes.py); with lanes off, on the thread pool."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
from integration.harness import api_def, echo_header, hook

PLUGIN = "from tyk.decorators import *\n" + textwrap.dedent('''
    import threading

    @Hook
    def WhichThread(request, session, spec):
        request.add_header("X-Thread", threading.current_thread().name)
        return request, session
''')


@pytest.mark.parametrize(("lanes", "prefix"), [(True, "coproc-lane-"), (False, "coproc-hook")])
def test_plain_hooks_run_where_the_lanes_setting_says(coproc_factory: Any, echo_upstream: Any,
                                                      lanes: bool, prefix: str) -> None:
    """1. An instance with `coproc.worker.lanes` on (default) or off.
    2. A plain pre hook reports the name of the thread it runs on.
    3. With lanes, requests after start-up run on a lane; without, on the pool."""
    gw = coproc_factory({"t": api_def("t", "/t/", echo_upstream.url,
                                      pre=[hook("WhichThread", "t/middleware.py")])},
                        {"t/middleware.py": PLUGIN},
                        {"coproc": {"worker": {"lanes": lanes}}})
    seen = [echo_header(gw.expect(gw.get("/t/"), 200).json(), "X-Thread") for _ in range(20)]
    # The first calls may beat the lanes' own HELLO (they then use the pool): look
    # at the later ones.
    assert all(name and name.startswith(prefix) for name in seen[-5:]), seen
