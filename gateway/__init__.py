"""The gateway process: HTTP front end, API matching, middleware chain, proxy.

Plugin hooks run in the worker process; this package reaches it only through
`gateway.hooks` (the ZeroMQ side of the hooks protocol).
"""
