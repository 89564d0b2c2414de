"""JavaScript (JSVM) plugins (`custom_middleware.driver: "otto"` or `"javascript"`) in the worker.

Tyk runs its JSVM (otto, or goja for `"javascript"`) inside the gateway;
Coproc runs QuickJS (PyPI `quickjs`) inside the plugin worker, so JS hooks get
the same sandbox, deadlines, failure policies and hot restarts as Python and
Lua hooks.  A JS hook becomes an ordinary worker hook (`HookEntry`) whose
function converts the coprocess objects to Tyk's JS objects and back: the
dispatcher, the call threads and the wire protocol need no JS-specific code.
"""

from worker.jsvm.hooks import load_jsvm_api

__all__ = ["load_jsvm_api"]
