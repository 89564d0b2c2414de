"""`coproc serve`: the supervisor of one Coproc instance.

It owns the run directory (lock, pid file), the HTTP listening socket and the
instance key; starts the gateway and one plugin worker as fresh interpreters
(docs/PROTOCOL.md, "Process contract"); restarts them with backoff, detects a
hung worker, hot-restarts the worker on reload, and stops everything in
stages (docs/OPERATIONS.md).  Module map:

    cli        argparse: `coproc serve|demo|status|reload|restart-worker|stop`
    ctl        the control commands' client side (control socket, output)
    runtime    one `serve` run: run dir, lock, listener, event loop, clean-up
    arbiter    the reconcile loop: event queue, phase, routing of child messages
               to their owner, `coproc status` composed from each owner's part
    watcher    one supervised role: its child, generations, restarts, exits, hangs
    spawner    how each kind of child is started (a spec per role)
    hot_restart  candidate, admission, adoption, retiring generations; the
               active generation's watch (recycling, watched files)
    stopping   the staged stop (Shutdown)
    gateway_link  the only sender of worker_state / worker_exited / reload_apis
    readers    child control sockets and pidfds -> events
    events     what the loop reacts to (signals, control messages, exits)
    control_server  the control socket <run_dir>/control.sock
    reload     one hot restart: states, outcome, load-report comparison
    handover   candidate / outgoing / retiring generations and queued reloads
    recycle    max_requests / max_age / max_rss limits and watched plugin files
    slot       one role's child, state and restart schedule
    child      one child process: spawn, control channel, signals, reap
    contract   child commands and environment (names from ipc/contract.py)
    policy     restart backoff and flapping
    liveness   boot timeout and heartbeat checks
    shutdown   the schedule of a staged stop (StopPlan)
    status     sd_notify READY / STATUS / WATCHDOG / STOPPING
    exits      exit classification and history
    lock       the run directory's flock
    listener   the HTTP listening socket
    rundir     files in the run directory
    demo       `coproc demo`: echo upstream + the shipped config
"""
