"""The waiting machinery of pyqueue.asyncio: a loop's ring, else one
waiter thread per process.

A coroutine that finds nothing to take registers on the pq_event of the
segment it waits on (the same waiter count and sequence word that blocking
calls of every process use), re-checks, and awaits a future. Where the
kernel runs futex waits on an io_uring (Linux 6.7+), the future is
resolved by the loop's own ring (pyqueue/_aio_ring.py: one wake-up, no
thread). Elsewhere (an older kernel, a seccomp profile that refuses
io_uring, PYQUEUE_AIO_WAIT=thread) the one waiter thread of the process
parks - GIL released - on the sequence words
of every event that coroutines of any event loop wait on, plus a private
word of its own (a new registration bumps it), with futex_waitv
(csrc/pq_wait_words.h). When a word moves it resolves the futures of that
event with loop.call_soon_threadsafe; the coroutines then retry their
non-blocking call on their own loop's thread. The thread takes nothing
from any queue: a message is taken only by that synchronous retry, so a
cancelled coroutine has taken nothing (the documentation's Design page, "asyncio").

Every registration has a deadline (at most SLICE_S away): at it the
coroutine retries as a blocking call does after each slice (repairs of
dead producers, delayed messages, heartbeats). With nothing registered
the thread exits after IDLE_EXIT_S.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any, Dict, List, Optional

from . import _aio_ring, _api, _core
from .errors import PyQueueError

SLICE_S = 0.1  # the longest a registration waits before its coroutine re-checks
# Spin before parking, as blocking calls do (PYQUEUE_SPIN_NS, default 50 us).
SPIN_NS = int(os.environ.get("PYQUEUE_SPIN_NS", "50000"))
IDLE_EXIT_S = 1.0  # the waiter thread exits after this long with nothing to wait for
_EVENTS_MAX = _core._AIO_WAIT_WORDS_MAX - 1  # one word is the thread's own
# "auto": the loop's ring where the kernel allows it, else the thread;
# "thread": always the thread.
WAIT_MODE = os.environ.get("PYQUEUE_AIO_WAIT", "auto")
if WAIT_MODE not in ("auto", "thread"):
    raise ImportError(f"PYQUEUE_AIO_WAIT must be 'auto' or 'thread', not {WAIT_MODE!r}")


def _now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _resolve(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)


class _Reg:
    """One waiting coroutine: the event it waits on, the sequence value it
    saw when it registered, its future and loop, its deadline (monotonic
    ns), and the handle that keeps the event's segment mapped."""

    __slots__ = ("ev", "seq", "fut", "loop", "deadline", "fired", "keep")

    def __init__(self, ev: int, seq: int, fut: "asyncio.Future[None]",
                 loop: asyncio.AbstractEventLoop, deadline: int, keep: Any) -> None:
        self.ev = ev
        self.seq = seq
        self.fut = fut
        self.loop = loop
        self.deadline = deadline
        self.fired = False
        self.keep = keep


class _Waiter:
    """The process's waiter thread and its registrations."""

    def __init__(self) -> None:
        # Held only for list and dict updates, never across a park or a
        # call out of this module.
        self._lock = threading.Lock()
        self._regs: Dict[_Reg, None] = {}
        self._wake = _core._AioWakeWord()
        self._thread: Optional[threading.Thread] = None
        self._stop = False
        self.wakeups = 0  # waits that returned (for the tests: no polling)

    # ---------------------------------------------------------- loop side

    def register(self, ev: int, seq: int, deadline: int, keep: Any) -> _Reg:
        """Register the running loop's current coroutine on event ev (seq:
        what _core._aio_prepare returned); its future resolves when ev
        moves from seq, or at deadline (monotonic ns)."""
        loop = asyncio.get_running_loop()
        reg = _Reg(ev, seq, loop.create_future(), loop, deadline, keep)
        with self._lock:
            events = {r.ev for r in self._regs}
            if ev not in events and len(events) >= _EVENTS_MAX:
                raise PyQueueError(
                    f"pyqueue.asyncio waits on at most {_EVENTS_MAX} queues at once per process")
            self._regs[reg] = None
            self._stop = False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run_guarded,
                                                name="pyqueue-aio-waiter", daemon=True)
                self._thread.start()
        self._wake.bump()  # the thread parks on the new event from now on
        return reg

    def unregister(self, reg: _Reg) -> bool:
        """Take reg out (its coroutine stops waiting). True when the thread
        had already fired it: the wake-up it consumed must be passed on."""
        with self._lock:
            if reg.fired:
                return True
            self._regs.pop(reg, None)
            return False

    def stop(self, timeout: float = 5.0) -> bool:
        """Make an idle thread exit now (the tests: no thread left behind).
        True when no waiter thread runs any more."""
        with self._lock:
            if self._regs:
                return False
            self._stop = True
            thread = self._thread
        self._wake.bump()
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def after_fork_in_child(self) -> None:
        # The thread and the parent's loops are not in the child.
        self._lock = threading.Lock()
        self._regs = {}
        self._thread = None
        self._stop = False

    # -------------------------------------------------------- thread side

    def _fire(self, regs: List[_Reg]) -> None:
        for r in regs:
            try:
                r.loop.call_soon_threadsafe(_resolve, r.fut)
            except RuntimeError:
                pass  # its loop is closed: nobody awaits it any more

    def _take(self, pick: Any) -> List[_Reg]:
        """Under the lock: take out and mark fired the registrations pick
        chooses."""
        out = [r for r in self._regs if pick(r)]
        for r in out:
            r.fired = True
            del self._regs[r]
        return out

    def _run_guarded(self) -> None:
        """_run, and if it fails (it should not): every registration fires
        (each coroutine retries its call and meets what is wrong itself,
        instead of waiting for ever: deadlines are fired by this thread) and
        the next register() starts a new thread."""
        try:
            self._run()
        except BaseException:
            with self._lock:
                fire = self._take(lambda r: True)
                self._thread = None
            self._fire(fire)
            raise

    def _run(self) -> None:
        idle_since = _now_ns()
        rc, seen = 0, 0
        events: List[int] = []
        while True:
            with self._lock:
                # What the last park said: fire those woken.
                n = len(events)
                if 0 <= rc < n:  # that event was notified
                    ev = events[rc]
                    fire = self._take(lambda r: r.ev == ev)
                elif rc == n + 1 and n and self._wake.load() == seen:
                    # A word differed before the park, not ours: an event
                    # moved. Which one is not told: all retry.
                    woken = set(events)
                    fire = self._take(lambda r: r.ev in woken)
                elif rc < 0 and rc not in (-110, -4):
                    # -EFAULT (a handle closed under the wait) or worse:
                    # every coroutine retries and meets it itself.
                    fire = self._take(lambda r: True)
                else:
                    fire = []  # our own word, the deadline, a signal
                # The next park, computed before the fires so that the
                # thread parks (and lets go of the GIL) right after them.
                seen = self._wake.load()
                now = _now_ns()
                if self._stop or (not self._regs and now - idle_since >= IDLE_EXIT_S * 1e9):
                    self._thread = None
                    stop = True
                else:
                    stop = False
                    # Past their deadline: retry. Two registrations on one
                    # event that saw different values: the older is stale
                    # (sequence values only move on), retry it at once.
                    newest: Dict[int, int] = {}
                    for r in self._regs:
                        newest[r.ev] = r.seq
                    fire += self._take(lambda r: r.deadline <= now or r.seq != newest[r.ev])
                    if self._regs:
                        idle_since = now
                        deadline = min(r.deadline for r in self._regs)
                    else:
                        deadline = now + int(IDLE_EXIT_S * 1e9)
                    events = list({r.ev: None for r in self._regs})
                    expected = [newest[e] for e in events]
                    # The handles stay referenced (mapped) for the whole park.
                    keep = [r.keep for r in self._regs]
            self._fire(fire)
            if stop:
                return
            rc = _core._aio_wait(events, expected, self._wake, seen, deadline)
            self.wakeups += 1
            del keep


_waiter = _Waiter()
os.register_at_fork(after_in_child=_waiter.after_fork_in_child)


def _register(ev: int, seq: int, deadline: int, keep: Any) -> Any:
    """Register the running coroutine on event ev: on its loop's ring, or
    with the waiter thread. Returns (the waiter, the registration, the
    future to await), the future resolved when ev moves from seq or at
    deadline."""
    if WAIT_MODE == "auto":
        ring = _aio_ring.ring_for(asyncio.get_running_loop())
        if ring is not None:
            got = ring.register(ev, seq, deadline, keep)
            if got is not None:
                return ring, got[0], got[1]
    reg = _waiter.register(ev, seq, deadline, keep)
    return _waiter, reg, reg.fut


def registered() -> List[Any]:
    """Every registration of this process, on rings or with the thread
    (the tests)."""
    with _waiter._lock:
        regs: List[Any] = list(_waiter._regs)
    return regs + _aio_ring.registered()


def wakeups() -> int:
    """How many times a wait of this process returned (the tests: no
    polling)."""
    return _waiter.wakeups + _aio_ring.wakeups()


async def wait_event(handle: Any, which: Any, try_op: Any, again: Any,
                     deadline: Optional[int], unmaps_on_close: bool = False) -> Any:
    """Return try_op() once it stops raising again; between tries, wait
    for handle's event (which: the argument of its _event_address) to move.
    deadline: monotonic ns (None: none); past it, the last try's exception
    is raised. try_op runs on this loop's thread, synchronously: whatever it
    takes is returned at once, so a cancellation finds nothing taken."""
    # The fast path: no registration, no system call.
    try:
        return try_op()
    except again as e:
        last: BaseException = e
    # The spin phase of a blocking call (pq_spin_until), in loop turns: a
    # consumer that keeps up with its producer retries for up to SPIN_NS
    # while the loop runs its other work, and parks only past that (a
    # wake-up costs a thread hop: two through the waiter thread).
    if SPIN_NS:
        end = _now_ns() + SPIN_NS
        if deadline is not None and deadline < end:
            end = deadline
        while True:
            await asyncio.sleep(0)
            try:
                return try_op()
            except again as e:
                last = e
            if _now_ns() >= end:
                break
    while True:
        now = _now_ns()
        if deadline is not None and now >= deadline:
            raise last
        ev = handle._event_address() if which is None else handle._event_address(which)
        # A handle whose close() unmaps the event registers through itself:
        # a close under this wait ends the registration (the waiter count
        # goes down once, by the close or by the finally below).
        seq = handle._aio_prepare() if unmaps_on_close else _core._aio_prepare(ev)
        try:
            # Registered: a change made from now on bumps the sequence
            # word (pq_event_prepare's handshake). Look again first.
            try:
                return try_op()
            except again as e:
                last = e
            until = now + int(SLICE_S * 1e9)
            if deadline is not None and deadline < until:
                until = deadline
            waiter, reg, fut = _register(ev, seq, until, handle)
            try:
                await fut
            except BaseException:
                woken = waiter.unregister(reg)
                if not woken and waiter is _waiter:
                    # The thread may be out of its park on this event's wake
                    # and not yet have taken the registration: its word
                    # moved since we registered says a notify came, whose
                    # wake may be the one the thread now drops. Passed on
                    # (at worst one wake too many). The ring needs no such
                    # guess (its unregister reaps). A handle whose close()
                    # unmaps the event reads it itself (None once closed).
                    now_seq = handle._aio_seq() if unmaps_on_close else _core._aio_seq(ev)
                    woken = now_seq is not None and now_seq != seq
                if woken:
                    # Woken, but cancelled before taking anything: another
                    # waiter (of any process) gets the wake-up instead.
                    if unmaps_on_close:
                        handle._aio_notify(1)
                    else:
                        _core._aio_notify(ev, 1)
                raise
            try:
                return try_op()
            except again as e:
                last = e
        finally:
            if unmaps_on_close:
                handle._aio_finish()
            else:
                _core._aio_finish(ev)


def deadline_of(timeout: Optional[float]) -> Optional[int]:
    """A timeout in seconds as a monotonic deadline in ns (None: none),
    checked as every backend checks it (pyqueue._api.check_timeout: a
    negative one does not wait, as in multiprocessing)."""
    t = _api.check_timeout(timeout)
    if t is None:
        return None
    return _now_ns() + int(min(t, 9.2e9) * 1e9)
