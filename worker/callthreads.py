"""Call threads: a plain hook runs on the thread that read its CALL (leader/followers).

Why: the hook round trip is on every request's path, and on the machines we
measured a thread hand-off costs more than the hook (README, Performance):
waking another thread is a futex and a context switch, and waking one on
another CPU of a virtual machine costs tens of microseconds.  So one thread
at a time *leads*: it reads the hooks socket (worker/channel.py) and runs
each plain-hook CALL it read right there, answering on the same socket.  A
batch of CALLs read at once runs back to back, without any hand-off.

Everything else the leader reads goes to the event loop, in order: WELCOME,
DRAIN, HOST_REPLY, EVENT, and the CALLs of `async def` hooks (they run on the
loop, worker/dispatch.py).

A hook that blocks would stop the reading with it, so leadership moves on:

* at once when the hook makes a blocking host call (`before_blocking`);
* otherwise once the hook has run for `handoff_s`, which a watchdog thread
  notices (it checks every `handoff_s`, and parks while no hook runs).

The thread that was leading answers its call when its hook returns and then
waits as a follower.  Followers are started when a hand-off needs one, up to
`max_threads`; when every thread is inside a hook, CALLs wait in the socket,
as they would wait for a free thread of a pool, and the first thread to
finish its hook leads again.

Every call is bounded by its `timeout_ms`: past it the watchdog answers
ERROR `deadline` and the call no longer counts as in flight (a drain does not
wait for it).  The hook itself cannot be interrupted; whatever it returns
later is dropped.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ipc.protocol import ErrorCode, Message, MsgType
from worker.channel import Channel
from worker.dispatch import Dispatcher, Outcome, Ran, error
from worker.loader import LookupFailed

__all__ = ["CallLedger", "CallThreads"]

log = logging.getLogger("worker.calls")

#: How long the leader sleeps in `receive` at most (it is poked for anything sooner).
RECEIVE_TIMEOUT_S: Final = 1.0
#: Replies the leader holds back at most, and for how long at most, so that one
#: wake-up of the ZeroMQ I/O thread carries a batch (see `_hold`).
OUTBOX_MAX: Final = 32
OUTBOX_HOLD_S: Final = 0.0005
#: Consecutive watchdog checks without a running hook before the watchdog parks.
PARK_AFTER_IDLE_CHECKS: Final = 200
#: How long `stop` waits for the call threads to leave.
JOIN_S: Final = 1.0
THREAD_PREFIX: Final = "coproc-call"

Deliver = Callable[[Message], None]


class CallLedger:
    """Which CALLs this worker has answered lately, on any thread (thread-safe).

    A DRAIN lists the calls the gateway still waits for; the drain waits until
    each listed call is answered here, not merely until nothing runs (a listed
    call may still sit in the socket or the queue when the DRAIN is handled).
    """

    def __init__(self, remember: int = 65536) -> None:
        self._lock = threading.Lock()
        self._answered: set[int] = set()
        self._order: collections.deque[int] = collections.deque()
        self._remember = remember

    def answered(self, call_id: int) -> None:
        with self._lock:
            self._answered.add(call_id)
            self._order.append(call_id)
            if len(self._order) > self._remember:
                self._answered.discard(self._order.popleft())

    def missing(self, call_ids: Iterable[int]) -> set[int]:
        with self._lock:
            return {c for c in call_ids if c not in self._answered}


@dataclass(slots=True, eq=False)
class _Running:
    """The call one thread is running (changed under the CallThreads lock only)."""

    call_id: int
    hook_name: str
    api_id: str
    timeout_ms: int
    started: float
    answered: bool = False  # by its thread, or by the watchdog at the deadline


class CallThreads:
    """Reads the channel and runs plain hooks; `start` once the event loop runs."""

    def __init__(self, channel: Channel, dispatcher: Dispatcher, ledger: CallLedger,
                 max_threads: int, handoff_s: float) -> None:
        self._channel = channel
        self._dispatcher = dispatcher
        self._ledger = ledger
        self._max = max(1, max_threads)
        self._handoff_s = handoff_s
        self._lock = threading.Lock()
        self._followers = threading.Condition(self._lock)
        self._queue: collections.deque[Message] = collections.deque()
        self._threads: list[threading.Thread] = []
        self._leader: int | None = None  # thread ident
        self._running: dict[int, _Running] = {}  # by thread ident
        self._outbox: list[tuple[int, Outcome]] = []  # the leader's replies not sent yet
        self._outbox_since = 0.0
        self._idle = 0  # followers waiting to lead
        self._stopping = False
        self._watch_parked = False
        self._watch_wake = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deliver: Deliver | None = None
        #: False once the worker drains: CALLs read after that are refused.
        self.accepting = True
        self.inflight = 0  # CALLs read and not answered yet
        self.calls = 0  # CALLs read, in total
        self.handoffs = 0
        self.deadlines = 0  # calls the watchdog answered with ERROR `deadline`

    @property
    def started(self) -> bool:
        return bool(self._threads)

    @property
    def threads(self) -> int:
        return len(self._threads)

    def counters(self) -> dict[str, int]:
        """For HEARTBEAT, and from there `GET /hello` (`worker.call_threads`)."""
        return {"calls": self.calls, "inflight": self.inflight, "threads": len(self._threads),
                "handoffs": self.handoffs, "deadlines": self.deadlines}

    def start(self, loop: asyncio.AbstractEventLoop, deliver: Deliver) -> None:
        """Start leading; `deliver` gets every other message on `loop`."""
        if self._threads:
            return
        self._loop, self._deliver = loop, deliver
        with self._lock:
            self._spawn()
        threading.Thread(target=self._watch, name=f"{THREAD_PREFIX}-watch", daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._followers.notify_all()
        log.info("call threads: %d call(s), %d hand-off(s), %d thread(s)", self.calls,
                 self.handoffs, len(self._threads))
        self._watch_wake.set()
        self._channel.poke()
        deadline = time.monotonic() + JOIN_S
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:  # daemons: the process exits without them
            log.warning("call threads still inside a hook at exit (%s): exiting without "
                        "them", ", ".join(stuck))

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

    def _run(self) -> None:
        me = threading.get_ident()
        lock = self._lock
        with lock:
            while not self._stopping:
                if self._leader is None:
                    self._leader = me
                    self._channel.reader = me
                if self._leader != me:
                    self._idle += 1
                    self._followers.wait()
                    self._idle -= 1
                    continue
                if self._queue:
                    if self._outbox and time.monotonic() - self._outbox_since > OUTBOX_HOLD_S:
                        self._flush()
                    message = self._queue.popleft()
                    running = self._running[me] = self._track(message)
                    lock.release()
                    try:
                        ran = self._run_hook(message)
                    finally:
                        lock.acquire()
                        del self._running[me]
                    if not running.answered:  # else the watchdog answered at the deadline
                        running.answered = True
                        outcome = self._finish(message, ran)
                        if self._leader == me:
                            self._hold(message.call_id, outcome)
                        else:  # handed off meanwhile: the new leader has its own batch
                            self.inflight -= 1
                            self._answer(message.call_id, outcome)
                    continue
                if self._outbox:
                    self._flush()  # nothing more to run: send before sleeping
                lock.release()
                try:
                    messages = self._channel.receive(RECEIVE_TIMEOUT_S)
                finally:
                    lock.acquire()
                self._sort(messages)
            if self._leader == me:
                self._leader = None
                self._channel.reader = None

    def _sort(self, messages: list[Message]) -> None:
        """Queue the plain-hook CALLs; refuse CALLs while draining; the rest to the loop."""
        for message in messages:
            kind = message.type
            if kind is MsgType.CALL:
                self.calls += 1
                if not self.accepting:
                    self._answer(message.call_id, error(ErrorCode.DRAINING,
                                                        "the worker is draining"))
                elif self._runs_on_loop(message.payload):
                    self._to_loop(message)
                else:
                    self.inflight += 1
                    self._queue.append(message)
                continue
            if kind is MsgType.DRAIN:
                # Here, not on the loop: CALLs read after the DRAIN are refused,
                # those before it (the socket keeps the gateway's order) are served.
                self.accepting = False
            self._to_loop(message)

    def _runs_on_loop(self, payload: Mapping[str, Any]) -> bool:
        try:
            return self._dispatcher.table.find(payload["api_id"], payload["hook_name"]).is_async
        except LookupFailed:
            return False  # answered with the lookup error right here

    def _to_loop(self, message: Message) -> None:
        assert self._loop is not None and self._deliver is not None  # set by start()
        try:
            self._loop.call_soon_threadsafe(self._deliver, message)
        except RuntimeError:  # the loop closed: the worker is exiting
            log.debug("dropped %s: the event loop is closed", message.type.name)

    def _track(self, message: Message) -> _Running:
        """Book-keeping before a hook runs (lock held)."""
        payload = message.payload
        if self._watch_parked:
            self._watch_parked = False
            self._watch_wake.set()
        return _Running(message.call_id, payload["hook_name"], payload["api_id"],
                        payload.get("timeout_ms") or self._dispatcher.default_timeout_ms,
                        time.monotonic())

    def _run_hook(self, message: Message) -> Ran | Outcome:
        assert self._loop is not None  # set by start()
        try:
            return self._dispatcher.run_here(message.payload, self._loop)
        except Exception as exc:  # the dispatcher turns hook errors into ERRORs already
            log.exception("CALL %d failed inside the worker", message.call_id)
            return error(ErrorCode.HOOK_FAILED, f"{type(exc).__name__}: {exc}")

    def _finish(self, message: Message, ran: Ran | Outcome) -> Outcome:
        """The answer to a call still unanswered (lock held: the watchdog cannot answer it
        meanwhile, so a changed body written to its arena slot is still the call's)."""
        try:
            return self._dispatcher.finish(ran)
        except Exception as exc:
            log.exception("CALL %d failed inside the worker", message.call_id)
            return error(ErrorCode.HOOK_FAILED, f"{type(exc).__name__}: {exc}")

    def _hold(self, call_id: int, outcome: Outcome) -> None:
        """Keep the leader's reply for one send of the batch (lock held).

        Each send that finds the ZeroMQ I/O thread asleep wakes it, and that
        wake-up cost more than a no-op hook (README, Performance); replies of
        CALLs read together therefore leave together.  A reply waits at most
        OUTBOX_HOLD_S plus one hook, or until a hand-off sends it.
        """
        if not self._outbox:
            self._outbox_since = time.monotonic()
        self._outbox.append((call_id, outcome))
        if len(self._outbox) >= OUTBOX_MAX:
            self._flush()

    def _flush(self) -> None:
        """Send the held replies (lock held)."""
        batch, self._outbox = self._outbox, []
        sent = self._channel.send_many([(mtype, call_id, payload)
                                        for call_id, (mtype, payload) in batch])
        if sent < len(batch):
            log.warning("%d answer(s) could not be sent", len(batch) - sent)
        self.inflight -= len(batch)
        for call_id, _ in batch:
            self._ledger.answered(call_id)

    def _answer(self, call_id: int, outcome: Outcome) -> None:
        mtype, payload = outcome
        if not self._channel.send(mtype, call_id, payload):
            log.warning("answer to CALL %d could not be sent", call_id)
        self._ledger.answered(call_id)

    # -- hand-offs ----------------------------------------------------------------------

    def _hand_off(self) -> None:
        """The leader is stuck in a hook: another thread reads (lock held)."""
        if self._outbox:
            self._flush()  # the stuck leader's finished calls must not wait for it
        self._leader = None
        self._channel.reader = None
        self.handoffs += 1
        if self._idle:
            self._followers.notify()
        elif len(self._threads) < self._max:
            self._spawn()
        # Else every thread is inside a hook: the first one out leads again.

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
            if not running.answered and now - running.started >= running.timeout_ms / 1000:
                running.answered = True
                self.inflight -= 1
                self.deadlines += 1
                log.warning("API %s: hook %s did not finish within %d ms", running.api_id,
                            running.hook_name, running.timeout_ms)
                self._answer(running.call_id, error(
                    ErrorCode.DEADLINE,
                    f"hook {running.hook_name} did not finish within {running.timeout_ms} ms"))
        leading = self._running.get(self._leader) if self._leader is not None else None
        if leading is not None and now - leading.started >= self._handoff_s:
            self._hand_off()
