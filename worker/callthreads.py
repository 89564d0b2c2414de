"""Call threads: a plain hook runs on the thread that read its CALL (leader/followers).

Why: the hook round trip is on every request's path, and on the machines we
measured a thread hand-off costs more than the hook (README, Performance):
waking another thread is a futex and a context switch, and waking one on
another CPU of a virtual machine costs tens of microseconds.  So one thread
at a time *leads*: it reads the hooks sockets of every gateway process (one
`poll` over all of them, worker/inbox.py), looks each CALL's hook up (once,
worker/dispatch.py) and runs the plain ones right there, answering each on
the socket it came from.  A batch of CALLs read at once runs back to back,
without any hand-off, whichever gateways sent them.  Plain `@Event` handlers
run the same way.

One pool serves every uplink (worker/uplinks.py): with N gateway processes, N
pools would mean N leaders, each waking for 1/N of the messages and taking
turns at the GIL (README, Performance: with 2, a pool per socket cost 77 µs of
worker CPU per call against 64 for one pool, and 49 with one gateway process).
What is per gateway process travels with each job as its `Lane`
(worker/lane.py); `CURRENT_LANE` is set before each job runs, and before an
`async def` hook is handed to the loop, so host calls answer via the right
gateway.  The thread limit is `coproc.worker.threads` per attached lane, and
a lane's jobs run on at most `coproc.worker.threads` threads at once (the
others wait in the queue), so hooks blocked on one gateway's calls never take
the threads another gateway's calls need.

What the leader reads and does not run:

* HOST_REPLY, and an ERROR answering a host call: handed to the hook thread
  waiting for it (worker/hostcalls.py), right from here;
* the CALLs and EVENTs of `async def` hooks and handlers: to the event loop
  (worker/loopcalls.py);
* WELCOME, DRAIN, REJECT, RESYNC: to the event loop, to their lane's uplink
  (worker/uplink.py), in order.

A hook that blocks would stop the reading with it, so leadership moves on:

* at once when the hook makes a blocking host call (`before_blocking`);
* otherwise once the hook has run for `handoff_s`, which a watchdog thread
  notices (it checks every `handoff_s`, and parks while no hook runs).

The thread that was leading answers its call when its hook returns and then
waits as a follower.  Followers are started when a hand-off needs one, up to
the limit.  When every thread is inside a hook, a *stand-in* reads: one
more thread that never runs a hook.  It resolves host-call replies (without
it, hooks all waiting on `get_data` would wait for replies nobody reads, until
their host calls time out), hands control messages to the loop and queues
CALLs; the first call thread out of its hook takes the reading back and runs
what was queued.

This watchdog is a plain hook's only deadline: past its call's `timeout_ms`
it answers ERROR `deadline` and the call no longer counts as in flight (a
drain does not wait for it).  The hook itself cannot be interrupted;
whatever it returns later is dropped.  An event handler past its deadline
is only logged (events have no answer).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

from ipc.coprocess import CallPayload
from ipc.protocol import ErrorCode, Message, MsgType
from worker import merged
from worker.channel import Waker
from worker.dispatch import Call, EventCall, Outcome, Ran, error
from worker.inbox import Inbox
from worker.lane import CURRENT_LANE, Deliver, Lane
from worker.merged import Group

__all__ = ["CallThreads", "HostReplies"]

log = logging.getLogger("worker.calls")

#: How long the leader sleeps in `receive` at most (it is poked for anything sooner).
RECEIVE_TIMEOUT_S: Final = 1.0
#: Consecutive watchdog checks without a running hook before the watchdog parks.
PARK_AFTER_IDLE_CHECKS: Final = 200
#: How long `stop` waits for the call threads to leave, and `detach` for a lane's jobs.
JOIN_S: Final = 1.0
THREAD_PREFIX: Final = "coproc-call"

#: What a call thread runs: a plain hook's CALL, a merged CALL (any hooks, worker/merged.py),
#: or a plain handler's EVENT.
Job = Call | Group | EventCall


class HostReplies(Protocol):
    """Where host-call answers go (worker.hostcalls.HostCalls)."""

    def resolve(self, call_id: int, payload: dict[str, Any]) -> bool: ...

    def fail(self, call_id: int, message: str, code: str = ...) -> bool: ...


@dataclass(slots=True, eq=False)
class _Running:
    """The job one thread is running (changed under the CallThreads lock only)."""

    lane: Lane
    call_id: int  # 0 for an event
    job: Job
    timeout_ms: int
    started: float
    answered: bool = False  # by its thread, or by the watchdog at the deadline


class CallThreads:
    """Reads every attached lane's channel and runs plain hooks; one per process.

    Channels it reads must be built with its `waker`.  `attach` a lane once the
    event loop runs; the threads start with the first one.
    """

    def __init__(self, host_replies: HostReplies, threads_per_lane: int,
                 handoff_s: float) -> None:
        self._host_replies = host_replies
        self._per_lane = max(1, threads_per_lane)
        self._max = self._per_lane
        self._handoff_s = handoff_s
        self.waker = Waker()
        self._inbox = Inbox(self.waker)
        self._lock = threading.Lock()
        self._followers = threading.Condition(self._lock)
        #: Wakes the stand-in reader (started on first need): every thread is in a hook.
        self._stand_in_wake = threading.Condition(self._lock)
        #: Wakes `detach` waiting for a lane's running jobs to end.
        self._lane_idle = threading.Condition(self._lock)
        self._stand_in: int | None = None  # its thread ident
        self._queue: collections.deque[tuple[Lane, int, Job]] = collections.deque()
        self._holding: list[Lane] = []  # lanes whose answers the leader holds, oldest first
        self._threads: list[threading.Thread] = []
        self._leader: int | None = None  # thread ident
        self._running: dict[int, _Running] = {}  # by thread ident
        self._idle = 0  # followers waiting to lead
        self._stopping = False
        self._watch_parked = False
        self._watch_wake = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.handoffs = 0

    @property
    def threads(self) -> int:
        return len(self._threads)

    @property
    def lanes(self) -> tuple[Lane, ...]:
        return self._inbox.lanes

    def counters(self) -> dict[str, int]:
        """The pool's part of HEARTBEAT `calls` (each lane adds its own counters)."""
        return {"threads": len(self._threads), "handoffs": self.handoffs}

    def attach(self, lane: Lane, loop: asyncio.AbstractEventLoop, deliver: Deliver) -> None:
        """Read `lane` too (its channel must use `waker`); `deliver` gets its control
        messages on `loop`, the one loop of the process."""
        if lane.channel.waker is not self.waker:
            raise ValueError("the lane's channel was not built with these call threads' waker")
        with self._lock:
            if lane.attached or self._stopping:
                return
            self._loop = loop
            lane.deliver, lane.attached = deliver, True
            self._inbox.set_lanes((*self._inbox.lanes, lane))
            self._max = self._per_lane * len(self._inbox.lanes)
            if self._threads:
                return
            self._spawn()
        threading.Thread(target=self._watch, name=f"{THREAD_PREFIX}-watch", daemon=True).start()

    def detach(self, lane: Lane) -> None:
        """Stop reading `lane` (blocks: call off the loop).  Its held answers go out, its
        queued jobs are dropped, and its running ones get JOIN_S to finish; then
        its channel and arena may close."""
        with self._lock:
            if not lane.attached:
                return
            lane.attached = False
            self._inbox.set_lanes(tuple(x for x in self._inbox.lanes if x is not lane))
            if lane in self._holding:
                self._holding.remove(lane)
                lane.inflight -= lane.answers.flush()
            kept = [entry for entry in self._queue if entry[0] is not lane]
            if len(kept) != len(self._queue):
                self._queue.clear()
                self._queue.extend(kept)
            deadline = time.monotonic() + JOIN_S
            while lane.running and (left := deadline - time.monotonic()) > 0:
                self._lane_idle.wait(left)
            if lane.running:
                log.warning("%s: %d hook(s) still running as its uplink closes",
                            lane.channel.endpoint, lane.running)

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._followers.notify_all()
            self._stand_in_wake.notify_all()
        log.info("call threads: %d hand-off(s), %d thread(s)", self.handoffs,
                 len(self._threads))
        self._watch_wake.set()
        self.waker.poke()
        deadline = time.monotonic() + JOIN_S
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:  # daemons: the process exits without them
            log.warning("call threads still inside a hook at exit (%s): exiting without "
                        "them", ", ".join(stuck))
        else:
            self.waker.close()

    def before_blocking(self) -> None:
        """The calling hook is about to wait (a host call): let another thread read."""
        with self._lock:
            if self._leader == threading.get_ident():
                self._hand_off()

    # -- one thread ---------------------------------------------------------------------

    def _spawn(self) -> None:
        thread = threading.Thread(target=self._run, daemon=True,
                                  name=f"{THREAD_PREFIX}-{len(self._threads) + 1}")
        self._threads.append(thread)
        thread.start()

    def _lead(self, me: int | None) -> None:
        """`me` reads from now on (None: nobody); lock held."""
        self._leader = me
        self.waker.reader = me

    def _run(self) -> None:
        me = threading.get_ident()
        lock = self._lock
        with lock:
            while not self._stopping:
                if self._leader is None or self._leader == self._stand_in:
                    if self._leader is not None:
                        self.waker.poke()  # the stand-in stops reading
                    self._lead(me)
                if self._leader != me:
                    self._idle += 1
                    self._followers.wait()
                    self._idle -= 1
                    continue
                queue = self._queue
                if queue:
                    entry = (queue.popleft() if queue[0][0].running < self._per_lane
                             else self._next_job())
                    if entry is not None:
                        if self._holding and self._holding[0].answers.overdue():
                            self._flush()
                        self._run_job(me, *entry)
                        continue
                self._flush()  # nothing more to run: send before sleeping
                self._read()
            if self._leader == me:
                self._lead(None)

    def _next_job(self) -> tuple[Lane, int, Job] | None:
        """The first queued job whose lane runs fewer than its share of the threads,
        when the first one's lane runs its share already (lock held): hooks blocked on
        one gateway's calls leave the other gateways' share of the threads to them.
        None: read meanwhile."""
        queue = self._queue
        for index, entry in enumerate(queue):
            if entry[0].running < self._per_lane:
                del queue[index]
                return entry
        return None

    def _read(self) -> None:
        """Wait for messages without the lock, then sort them (lock held on entry and exit)."""
        self._lock.release()
        try:
            batches = self._inbox.receive(RECEIVE_TIMEOUT_S)
        finally:
            self._lock.acquire()
        for lane, messages in batches:
            if lane.attached:  # else its uplink is closing: nobody would answer
                self._sort(lane, messages)

    def _run_job(self, me: int, lane: Lane, call_id: int, job: Job) -> None:
        """Run one job on this thread, the lock released meanwhile, then answer it."""
        running = self._running[me] = self._track(lane, call_id, job)
        lane.running += 1
        self._lock.release()
        try:
            if CURRENT_LANE.get() is not lane:  # host calls go back to this lane's gateway
                CURRENT_LANE.set(lane)
            ran = self._execute(lane, call_id, job, running)
        finally:
            self._lock.acquire()
            del self._running[me]
            lane.running -= 1
            if not lane.attached:
                self._lane_idle.notify_all()
            elif (lane.running == self._per_lane - 1 and self._queue
                  and self._leader not in (None, me)):
                self.waker.poke()  # the leader may be reading past this lane's queued jobs
        if running.answered or ran is None:  # the watchdog answered at the deadline, or an event
            return
        running.answered = True
        outcome = self._finish(lane, call_id, ran)
        if self._leader == me:
            lane.inflight -= lane.answers.hold(call_id, outcome)
            if lane.answers.held and lane not in self._holding:
                self._holding.append(lane)
        else:  # handed off meanwhile: the new leader has its own batch
            lane.inflight -= 1
            lane.answers.answer(call_id, outcome)

    def _sort(self, lane: Lane, messages: list[Message]) -> None:
        """Each message read to where it runs (lock held; see the module docstring)."""
        if CURRENT_LANE.get() is not lane:  # the loop runs what it is handed in this context
            CURRENT_LANE.set(lane)
        for message in messages:
            kind = message.type
            if kind is MsgType.CALL:
                self._sort_call(lane, message)
            elif kind is MsgType.EVENT:
                event = lane.dispatcher.prepare_event(message.payload)
                if event is None:
                    pass  # logged
                elif event.handler.is_async:
                    self._to_loop(lane.loop_calls.start_event, event)
                else:
                    self._queue.append((lane, 0, event))
            elif kind is MsgType.ANALYTICS and lane.analytics is not None:
                lane.analytics.submit(message)  # its own threads: never a call thread
            elif kind is MsgType.HOST_REPLY:
                if not self._host_replies.resolve(message.call_id, message.payload):
                    log.debug("late or unknown HOST_REPLY %d", message.call_id)
            elif kind is MsgType.ERROR and self._host_replies.fail(
                    message.call_id, f"{message.payload['code']}: {message.payload['message']}",
                    message.payload["code"]):
                pass  # it answered a host call
            else:
                if kind is MsgType.DRAIN:
                    # Here, not on the loop: CALLs read after the DRAIN are refused,
                    # those before it (the socket keeps the gateway's order) are served.
                    lane.accepting = False
                assert lane.deliver is not None  # set by attach()
                self._to_loop(lane.deliver, message)

    def _sort_call(self, lane: Lane, message: Message) -> None:
        lane.calls += 1
        if not lane.accepting:
            lane.answers.answer(message.call_id,
                                error(ErrorCode.DRAINING, "the worker is draining"))
            return
        payload = cast(CallPayload, message.payload)
        call: Call | Group | Outcome
        if "then" in payload:
            lane.merged += 1
            call = merged.prepare_group(lane.dispatcher, payload)
        else:
            call = lane.dispatcher.prepare(payload)
        if isinstance(call, Group):  # on this thread, even its `async def` hooks' turns
            lane.inflight += 1
            self._queue.append((lane, message.call_id, call))
        elif not isinstance(call, Call):  # no such hook: answered with the lookup's ERROR
            lane.inflight += 1
            lane.inflight -= lane.answers.hold(message.call_id, call)
            if lane.answers.held and lane not in self._holding:
                self._holding.append(lane)
        elif call.entry.is_async:
            self._to_loop(lane.loop_calls.start_call, message.call_id, call)
        else:
            lane.inflight += 1
            self._queue.append((lane, message.call_id, call))

    def _to_loop(self, func: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None  # set by attach()
        try:
            self._loop.call_soon_threadsafe(func, *args)
        except RuntimeError:  # the loop closed: the worker is exiting
            log.debug("dropped %r: the event loop is closed", args[0])

    def _track(self, lane: Lane, call_id: int, job: Job) -> _Running:
        """Book-keeping before a job runs (lock held)."""
        if self._watch_parked:
            self._watch_parked = False
            self._watch_wake.set()
        return _Running(lane, call_id, job, job.timeout_ms, time.monotonic())

    def _execute(self, lane: Lane, call_id: int, job: Job, running: _Running
                 ) -> Ran | Group | Outcome | None:
        """Run the hook (None for an event handler: nothing to answer, or for a group
        the watchdog answered)."""
        if isinstance(job, EventCall):
            lane.dispatcher.run_event(job)  # logs the handler's failures
            return None
        if isinstance(job, Group):
            return self._run_group(lane, call_id, job, running)
        return self._run_one(lane, call_id, job)

    def _run_one(self, lane: Lane, call_id: int, call: Call) -> Ran | Outcome:
        """One hook on this thread; an `async def` one (in a group) on the loop, waited for."""
        try:
            if not call.entry.is_async:
                return lane.dispatcher.run_here(call)
            self.before_blocking()  # waiting: another thread reads meanwhile
            assert self._loop is not None  # set by attach()
            # Scheduled from this thread's context: the hook's host calls keep the lane.
            future = asyncio.run_coroutine_threadsafe(lane.dispatcher.run_async_ran(call),
                                                      self._loop)
            # run_async_ran ends at the hook's deadline; the margin covers a busy loop.
            return future.result(call.timeout_ms / 1000 + JOIN_S)
        except Exception as exc:  # the dispatcher turns hook errors into ERRORs already
            log.exception("CALL %d failed inside the worker", call_id)
            return error(ErrorCode.HOOK_FAILED, f"{type(exc).__name__}: {exc}")

    def _run_group(self, lane: Lane, call_id: int, group: Group, running: _Running
                   ) -> Group | None:
        """A merged CALL's hooks in turn (lock released; taken between hooks).

        Each hook gets its own deadline: the watchdog sees the running hook's
        start and timeout, and once it answered the group nothing more runs.
        """
        call: Call | None = group.first
        for _ in range(group.size):
            assert call is not None
            ran = self._run_one(lane, call_id, call)
            with self._lock:
                if running.answered:
                    return None
                call = merged.step(group, ran)
                if call is None:
                    break
                running.started, running.timeout_ms = time.monotonic(), call.timeout_ms
        return group

    def _finish(self, lane: Lane, call_id: int, ran: Ran | Group | Outcome) -> Outcome:
        """The answer to a call still unanswered (lock held: the watchdog cannot answer it
        meanwhile, so a changed body written to its arena slot is still the call's)."""
        try:
            if isinstance(ran, Group):
                return merged.reply(lane.dispatcher, ran)
            return lane.dispatcher.finish(ran)
        except Exception as exc:
            log.exception("CALL %d failed inside the worker", call_id)
            return error(ErrorCode.HOOK_FAILED, f"{type(exc).__name__}: {exc}")

    def _flush(self) -> None:
        """Send the leader's held answers, every lane's (lock held)."""
        if self._holding:
            for lane in self._holding:
                lane.inflight -= lane.answers.flush()
            self._holding.clear()

    # -- hand-offs and deadlines --------------------------------------------------------

    def _hand_off(self) -> None:
        """The leader is stuck in a hook: another thread reads (lock held)."""
        self._flush()  # the stuck leader's finished calls must not wait for it
        self._lead(None)
        self.handoffs += 1
        if self._idle:
            self._followers.notify()
        elif len(self._threads) < self._max:
            self._spawn()
        elif self._stand_in is None:  # every thread is inside a hook: someone must read
            thread = threading.Thread(target=self._stand_in_reads, daemon=True,
                                      name=f"{THREAD_PREFIX}-reader")
            thread.start()
            self._stand_in = thread.ident
        else:
            self._stand_in_wake.notify()

    def _stand_in_reads(self) -> None:
        """Read while no call thread can (module docstring); never run a hook."""
        me = threading.get_ident()
        lock = self._lock
        with lock:
            self._stand_in = me
            while not self._stopping:
                if self._leader is not None and self._leader != me:
                    self._stand_in_wake.wait()
                    continue
                if self._idle or (self._queue and len(self._threads) < self._max):
                    # A call thread can lead again (a follower waits, or one more may start).
                    self._lead(None)
                    if self._idle:
                        self._followers.notify()
                    else:
                        self._spawn()
                    self._stand_in_wake.wait()  # until every thread is in a hook again
                    continue
                self._lead(me)
                self._read()
                self._flush()
                if self._leader != me and self._queue:
                    # A call thread took the reading back while these were read: it may
                    # be asleep in `receive` already, with work queued behind it.
                    self.waker.poke()

    def _watch(self) -> None:
        idle_checks = 0
        while True:
            if self._watch_parked:
                self._watch_wake.wait()  # until a hook starts (or stop)
                self._watch_wake.clear()
            time.sleep(self._handoff_s)
            with self._lock:
                if self._stopping:
                    return
                if self._running:
                    idle_checks = 0
                    self._check(time.monotonic())
                else:
                    idle_checks += 1
                    if idle_checks >= PARK_AFTER_IDLE_CHECKS:
                        idle_checks = 0
                        self._watch_wake.clear()
                        self._watch_parked = True

    def _check(self, now: float) -> None:
        """Answer calls past their deadline; hand off a leader stuck in a hook (lock held)."""
        for running in self._running.values():
            if running.answered or now - running.started < running.timeout_ms / 1000:
                continue
            running.answered = True
            job, lane = running.job, running.lane
            if isinstance(job, EventCall):
                log.warning("API %s: event handler %s did not finish within %d ms",
                            job.api_id, job.handler.name, job.timeout_ms)
                continue
            lane.inflight -= 1
            lane.deadlines += 1
            if isinstance(job, Group):  # the hooks before it ran: their results go too
                merged.deadline(job)
                lane.answers.answer(running.call_id, merged.reply(lane.dispatcher, job))
            else:
                lane.answers.answer(running.call_id, job.deadline_error())
        leading = self._running.get(self._leader) if self._leader is not None else None
        if leading is not None and now - leading.started >= self._handoff_s:
            self._hand_off()
