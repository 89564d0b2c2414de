"""`coproc serve`: the supervisor of one Coproc instance.

It owns the run directory (lock, pid file), the HTTP listening socket and the
instance key; starts the gateway and one plugin worker as fresh interpreters
(docs/PROTOCOL.md, "Process contract"); restarts them with backoff, detects a
hung worker, and stops everything in stages.  Module map:

    cli        argparse: `coproc serve`, `coproc demo`
    runtime    one `serve` run: run dir, lock, listener, event loop, clean-up
    supervisor the reconcile loop (events -> reap -> liveness -> restore/stop)
    events     what the loop reacts to (signals, control messages, exits)
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
