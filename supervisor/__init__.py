"""`coproc serve`: the supervisor of one Coproc instance.

It owns the run directory (lock, pid file), the HTTP listening socket and the
instance key; starts the gateway and one plugin worker as fresh interpreters
(docs/PROTOCOL.md, "Process contract"); restarts them with backoff, detects a
hung worker, hot-restarts the worker on reload, and stops everything in
stages (docs/OPERATIONS.md).  Module map:

    cli        argparse: `coproc serve|demo|status|reload|restart-worker|stop`
    ctl        the control commands' client side (control socket, output)
    runtime    one `serve` run: run dir, lock, listener, event loop, clean-up
    supervisor the reconcile loop (events -> reap -> liveness -> restore/stop)
    core       the loop's state and shared helpers (the parts below are mixins over it)
    dispatch   signals, control datagrams and control commands -> handlers
    lifecycle  the slots' children: start, reap and classify, liveness
    hot_restart  candidate, admission, adoption, retiring generations
    stopping   the staged stop sequence
    snapshot   the `coproc status` snapshot
    events     what the loop reacts to (signals, control messages, exits)
    control_server  the control socket <run_dir>/control.sock
    reload     one hot restart: states, outcome, load-report comparison
    handover   candidate / retiring generations and queued reloads
    recycle    max_requests / max_age / max_rss limits and watched plugin files
    slot       one supervised role: its child, state and restart policy
    child      one child process: spawn, control channel, signals, reap
    contract   child commands and environment
    policy     restart backoff and flapping
    liveness   boot timeout and heartbeat checks
    shutdown   the schedule of a staged stop
    status     sd_notify READY / STATUS / WATCHDOG / STOPPING
    exits      exit classification
    lock       the run directory's flock
    listener   the HTTP listening socket
    rundir     files in the run directory
    demo       `coproc demo`: echo upstream + the shipped config
"""
