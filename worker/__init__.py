"""The Coproc plugin worker: runs Tyk-compatible Python plugins out of the gateway.

Started by the supervisor as `python -m worker --config FILE` (one process per
generation).  It loads every API's plugins, each into its own namespace,
installs Tyk's plugin API (`tyk.decorators`, `gateway.TykGateway`) inside this
process only, and answers the gateway's hook calls over the ZeroMQ hooks
socket (docs/PROTOCOL.md).

Modules, in the order a call meets them:

* `main` - boot: environment, config, token, plugin loading, exit;
* `runtime` - the conversation with the gateway (admission, heartbeats, drain);
* `channel` - the DEALER socket; `supervisor_link` - control datagrams;
* `callthreads` - the threads that read the socket and run plain hooks (leader/followers),
  with the watchdog that keeps their deadlines; `answers` - replies on their way out;
* `loopcalls` - `async def` hooks and handlers on the event loop;
* `dispatch` - one CALL or EVENT: lookup, bodies, run, REPLY;
* `invoke` - Tyk's arity convention and the REPLY delta;
* `objects`, `containers` - proto-like objects built from `ipc.coprocess`;
* `request` - the `request` wrapper hooks receive;
* `loader`, `isolation` - finding plugins, one module namespace per plugin set;
  `vendoring` - libraries plugins ship in `vendor/`, loaded once;
* `tyk_api`, `tyk_package`, `decorators`, `hostcalls` - what plugins import
  and call (every module of Tyk's `tyk` package and the pb2 modules).

This package never imports Coproc's `gateway` package: inside the worker the
name `gateway` belongs to Tyk's plugin API.
"""
