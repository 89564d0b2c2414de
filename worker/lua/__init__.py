"""Lua plugins (`custom_middleware.driver: "lua"`) in the one worker.

Tyk's Lua driver runs LuaJIT inside the gateway; Coproc runs Lua 5.4 (through
lupa) inside the plugin worker, so Lua hooks get the same sandbox, deadlines,
failure policies and hot restarts as Python hooks.  A Lua hook is turned into an
ordinary worker hook (`HookEntry`) whose function converts the coprocess objects
to Lua tables and back: the dispatcher, the call threads and the wire protocol
need no Lua-specific code.
"""

from worker.lua.hooks import load_lua_api, load_lua_plugins

__all__ = ["load_lua_api", "load_lua_plugins"]
