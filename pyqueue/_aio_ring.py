"""One event loop's io_uring of futex waits: a wake-up with one thread hop.

Where the kernel runs futex waits on an io_uring (Linux 6.7+), a coroutine
that must wait registers here instead of with the process's waiter thread
(pyqueue/_aio.py). Its loop owns a ring (csrc/pq_uring_futex.h) whose fd
the loop's selector watches (add_reader): the registration submits an
IORING_OP_FUTEX_WAIT on the event's sequence word for the value it saw;
a producer's futex wake completes it and the loop's thread wakes from its
own epoll_wait - no thread in between, so one wake-up instead of two
(the documentation's Design page, "asyncio").

Everything here runs on the loop's thread: the kernel wakes the thread
that submitted a wait, and the registrations are only touched there, so
nothing is locked. Registrations of one loop on the same event and value
share one submitted wait; its completion resolves them all (each
coroutine retries its non-blocking call). A registration's deadline is a
timer of the loop. A wait nobody is registered on any more is cancelled.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
import time
import weakref
from typing import Any, Dict, Optional, Tuple

from . import _core

WAITS_MAX = 1024  # submitted waits per loop; past it a registration goes to the thread
# The completion queue: every wait reserves room for its own completion and
# its cancel's until both are reaped (a dropped wait leaves _waits at once,
# its two completions come later), so it never overflows from waits alone.
CQ_ENTRIES = 2 * WAITS_MAX
IDLE_CLOSE_S = 1.0  # a ring with nothing registered closes after this long
# Errors of the ring's setup that say the kernel will never give one (the
# process then waits through the thread for good); any other is this once.
_REFUSALS = (errno.ENOSYS, errno.EPERM, errno.EACCES, errno.EINVAL, errno.EOPNOTSUPP)

_log = logging.getLogger("pyqueue.asyncio")


def _resolve(fut: "Optional[asyncio.Future[None]]") -> None:
    # A future whose coroutine is gone (None), or of a closed loop (whose
    # call_soon raises): its coroutine will not run again.
    if fut is not None and not fut.done() and not fut.get_loop().is_closed():
        fut.set_result(None)


class _Wait:
    """One submitted futex wait: its tag, its key, the registrations on
    it, and the handle whose segment holds the word (kept referenced, so
    that its id in the key is not reused by another handle while the wait
    lives: a segment mapped later at the same address, whose event starts
    at the same value, is another wait)."""

    __slots__ = ("tag", "key", "regs", "cancelled", "handle")

    def __init__(self, tag: int, key: Tuple[int, int, int], handle: Any) -> None:
        self.tag = tag
        self.key = key
        self.handle = handle
        self.regs: Dict[RingReg, None] = {}
        self.cancelled = False  # a cancel was submitted for it


class RingReg:
    """One waiting coroutine: its future, its wait, its deadline's timer,
    and whether it was fired (woken, or at its deadline).

    The future is held weakly: its coroutine holds it (awaiting it), and a
    ring that held it would keep the coroutine's task alive through the
    future's callbacks - for ever, when its loop was closed with the task
    parked (no timer runs there any more). Collected instead, the
    coroutine's unregistration and finish run: the waiter count goes back,
    and the ring, seeing its loop closed, closes."""

    __slots__ = ("_fut", "wait", "timer", "fired", "ev")

    def __init__(self, fut: "asyncio.Future[None]", wait: _Wait, ev: int) -> None:
        self._fut = weakref.ref(fut)
        self.wait = wait
        self.timer: Optional[asyncio.TimerHandle] = None
        self.fired = False
        self.ev = ev

    @property
    def fut(self) -> "Optional[asyncio.Future[None]]":
        return self._fut()


class LoopRing:
    """The ring of one event loop (on one thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._ring = _core._AioRing(CQ_ENTRIES)
        self._fd = self._ring.fileno()
        # Weakly: the rings are kept by loop in a weak dictionary, and a
        # ring holding its loop would keep its own key alive.
        self._loop_ref = weakref.ref(loop)
        self.thread = threading.get_ident()
        self._waits: Dict[Tuple[int, int, int], _Wait] = {}
        self._by_tag: Dict[int, _Wait] = {}
        self._next_tag = 1  # 0 is a cancel's own completion
        self._reserved = 0  # completions submitted (or reserved for a cancel), not yet reaped
        self.cq_room = CQ_ENTRIES  # the most completions it may have reserved at once
        self._idle: Optional[asyncio.TimerHandle] = None
        self.closed = False
        try:
            loop.add_reader(self._fd, self._on_ready)
        except BaseException:
            self._ring.close()
            raise

    # ------------------------------------------------------------ waiting

    def register(self, ev: int, seq: int, deadline: int,
                 handle: Any) -> "Optional[Tuple[RingReg, asyncio.Future[None]]]":
        """Register the running coroutine on event ev of handle for as
        long as its sequence word holds seq (what _core._aio_prepare
        returned), until deadline (monotonic ns): the registration and
        the future to await (the caller holds it). None when this ring
        cannot take it (full, its loop closed, the submission refused):
        the caller uses the waiter thread."""
        loop = self._loop_ref()  # the running loop: ring_for chose this ring by it
        if self.closed or loop is None:
            return None
        key = (id(handle), ev, seq)
        w = self._waits.get(key)
        if w is None:
            if len(self._waits) >= WAITS_MAX or self._reserved + 2 > self.cq_room:
                return None
            tag = self._next_tag
            self._next_tag += 1
            if self._ring.wait(ev, seq, tag) < 0:
                return None
            self._reserved += 2  # its completion, and its cancel's
            w = self._waits[key] = self._by_tag[tag] = _Wait(tag, key, handle)
        fut = loop.create_future()
        reg = RingReg(fut, w, ev)
        w.regs[reg] = None
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        reg.timer = loop.call_later(max(0, deadline - now) / 1e9, self._expire, reg)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        return reg, fut

    def unregister(self, reg: RingReg) -> bool:
        """Take reg out (its coroutine stops waiting). True when it had
        been fired: the wake-up it consumed must be passed on."""
        if reg.fired:
            return True
        w = reg.wait
        if len(w.regs) == 1 and w.tag in self._by_tag:
            # The last coroutine on this wait leaves: cancel the wait
            # first. The submission is a system call, on whose return the
            # kernel runs this thread's pending task work, so a wake that
            # completed the wait before the cancel is in the ring now.
            # Reaped, it fires reg, and its coroutine passes the wake-up on
            # (else it was lost to the event's other waiters, in any
            # process, until their next slice).
            self._cancel(w)
            if reg in self._reap():
                return True
        self._drop(reg)
        return False

    def registered(self) -> "list[RingReg]":
        return [r for w in self._waits.values() for r in w.regs]

    # ----------------------------------------------------------- firing

    def _cancel(self, w: _Wait) -> None:
        if not w.cancelled:
            w.cancelled = True
            if self._ring.cancel(w.tag) < 0:
                # Refused (the ring closed, or full): the wait stays queued
                # until its word moves or the ring closes; nobody waits on
                # it. Its cancel's reserved completion will not come.
                self._reserved -= 1

    @staticmethod
    def _stop_timer(reg: RingReg) -> None:
        if reg.timer is not None:
            reg.timer.cancel()
            reg.timer = None

    def _drop(self, reg: RingReg) -> None:
        """reg leaves its wait; a wait left with nobody is cancelled."""
        self._stop_timer(reg)
        w = reg.wait
        w.regs.pop(reg, None)
        if not w.regs and self._by_tag.pop(w.tag, None) is not None:
            # Its completion (-ECANCELED, or woken meanwhile) finds no tag
            # and is dropped.
            del self._waits[w.key]
            self._cancel(w)
        self._maybe_idle()

    def _fire(self, reg: RingReg) -> None:
        self._stop_timer(reg)
        reg.fired = True
        _resolve(reg.fut)

    def _expire(self, reg: RingReg) -> None:
        # The deadline: the coroutine retries, as after a blocking slice.
        reg.timer = None
        if not reg.fired:
            _count_wakeup()
            self._fire(reg)
            self._drop(reg)

    def _on_ready(self) -> None:
        _count_wakeup()
        self._reap()

    def _reap(self) -> "list[RingReg]":
        """Fire the registrations of the completed waits; returns them."""
        fired: "list[RingReg]" = []
        for tag, res in self._ring.reap():
            self._reserved -= 1
            w = self._by_tag.pop(tag, None)
            if w is None:
                continue  # a cancel's completion, or a cancelled wait's
            del self._waits[w.key]
            if not w.cancelled:
                self._reserved -= 1  # no cancel will be sent for it
            if res == -errno.ECANCELED and w.cancelled:
                continue  # unregister's own cancel: its one coroutine leaves
            # Woken (0), the word already differed (-EAGAIN), or worse
            # (-EFAULT: its handle was closed before the submission): every
            # coroutine on it retries and meets what there is.
            for reg in w.regs:
                self._fire(reg)
                fired.append(reg)
            w.regs.clear()
        self._maybe_idle()
        return fired

    # ---------------------------------------------------------- closing

    def _maybe_idle(self) -> None:
        if self._waits or self._idle is not None or self.closed:
            return
        loop = self._loop_ref()
        if loop is None or loop.is_closed():
            # Its loop is gone: its timers never run, so nothing would close
            # the ring (and its queued waits would take wake-ups meant for
            # other waiters).
            self.close()
        else:
            self._idle = loop.call_later(IDLE_CLOSE_S, self._close_if_idle)

    def _close_if_idle(self) -> None:
        self._idle = None
        if not self._waits:
            self.close()

    def close(self) -> None:
        """Close the ring: its queued waits end with it. Called on its
        loop's thread, or once the loop is closed (whose coroutines will not
        run again: their registrations are dropped)."""
        if self.closed:
            return
        self.closed = True
        _forget(self)
        loop = self._loop_ref()
        if loop is not None and not loop.is_closed():
            try:
                loop.remove_reader(self._fd)
            except (ValueError, RuntimeError, OSError):
                pass
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        for w in self._waits.values():
            for reg in w.regs:
                self._fire(reg)  # its coroutine retries, if its loop is open
        self._waits.clear()
        self._by_tag.clear()
        self._ring.close()

    def loop_closed(self) -> bool:
        loop = self._loop_ref()
        return loop is None or loop.is_closed()

    def close_in_child(self) -> None:
        # After fork: the parent's loop is not run here, and its selector's
        # epoll is shared with the parent: only this process's copy of the
        # ring goes.
        self.closed = True
        self._waits.clear()
        self._by_tag.clear()
        self._ring.close()


# --------------------------------------------------------------- rings

_lock = threading.Lock()  # held only for the dictionary, never across a call out
_rings: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopRing]" = \
    weakref.WeakKeyDictionary()
_refused: Optional[str] = None  # why the kernel refused a ring (then never asked again)


def ring_for(loop: asyncio.AbstractEventLoop) -> Optional[LoopRing]:
    """The ring of loop, opened on first use; None where the kernel
    refuses io_uring futex waits, where the loop cannot watch a
    descriptor, or on a thread that is not the one the ring was opened
    on."""
    global _refused
    with _lock:
        r = _rings.get(loop)
    if r is not None and not r.closed:
        return r if r.thread == threading.get_ident() else None
    if _refused is not None:
        return None
    _close_rings_of_closed_loops()
    try:
        r = LoopRing(loop)
    except OSError as e:
        if e.errno not in _REFUSALS:
            return None  # this once (no memory, no descriptor): the thread waits instead
        _refused = f"{errno.errorcode.get(e.errno or 0, e.errno)}: {e.strerror}"
        _log.info("io_uring futex waits refused here (%s): pyqueue.asyncio waits "
                  "through its waiter thread", _refused)
        return None
    except NotImplementedError:
        return None  # a loop without add_reader
    with _lock:
        _rings[loop] = r
    return r


def _close_rings_of_closed_loops() -> None:
    # A loop closed with its ring open (asyncio.run ends within a second of
    # the last wait) keeps the ring until the loop is collected; the next
    # ring opened closes it.
    with _lock:
        stale = [r for r in _rings.values() if r.loop_closed()]
    for r in stale:
        r.close()


def _forget(r: LoopRing) -> None:
    loop = r._loop_ref()
    with _lock:
        if loop is not None and _rings.get(loop) is r:
            del _rings[loop]  # a collected loop's entry went with it


def registered() -> "list[RingReg]":
    """Every registration on a ring of this process whose loop is open
    (the tests)."""
    _close_rings_of_closed_loops()
    with _lock:
        rings = list(_rings.values())
    return [reg for r in rings for reg in r.registered()]


_wakeups = 0  # reader callbacks and deadlines of every ring (the tests: no polling)


def _count_wakeup() -> None:
    global _wakeups
    _wakeups += 1


def wakeups() -> int:
    return _wakeups


def _after_fork_in_child() -> None:
    global _rings, _lock
    old = list(_rings.values())
    _lock = threading.Lock()
    _rings = weakref.WeakKeyDictionary()
    for r in old:
        r.close_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
