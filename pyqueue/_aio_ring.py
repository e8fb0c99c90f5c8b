"""One event loop's io_uring of futex waits: a wake-up with one thread hop.

Where the kernel runs futex waits on an io_uring (Linux 6.7+), a coroutine
that must wait registers here instead of with the process's waiter thread
(pyqueue/_aio.py). Its loop owns a ring (csrc/pq_uring_futex.h) whose fd
the loop's selector watches (add_reader): the registration submits an
IORING_OP_FUTEX_WAIT on the event's sequence word for the value it saw;
a producer's futex wake completes it and the loop's thread wakes from its
own epoll_wait - no thread in between, so one wake-up instead of two
(docs/design.md, "asyncio").

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
CQ_ENTRIES = 2 * WAITS_MAX  # room for every wait's completion and a cancel's
IDLE_CLOSE_S = 1.0  # a ring with nothing registered closes after this long

_log = logging.getLogger("pyqueue.asyncio")


def _resolve(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)


class _Wait:
    """One submitted futex wait: its tag and the registrations on it."""

    __slots__ = ("tag", "key", "regs", "cancelled")

    def __init__(self, tag: int, key: Tuple[int, int]) -> None:
        self.tag = tag
        self.key = key
        self.regs: Dict[RingReg, None] = {}
        self.cancelled = False  # a cancel was submitted for it


class RingReg:
    """One waiting coroutine: its future, its wait, its deadline's timer,
    and whether it was fired (woken, or at its deadline)."""

    __slots__ = ("fut", "wait", "timer", "fired", "ev")

    def __init__(self, fut: "asyncio.Future[None]", wait: _Wait, ev: int) -> None:
        self.fut = fut
        self.wait = wait
        self.timer: Optional[asyncio.TimerHandle] = None
        self.fired = False
        self.ev = ev


class LoopRing:
    """The ring of one event loop (on one thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._ring = _core._AioRing(CQ_ENTRIES)
        self._fd = self._ring.fileno()
        # Weakly: the rings are kept by loop in a weak dictionary, and a
        # ring holding its loop would keep its own key alive.
        self._loop_ref = weakref.ref(loop)
        self.thread = threading.get_ident()
        self._waits: Dict[Tuple[int, int], _Wait] = {}
        self._by_tag: Dict[int, _Wait] = {}
        self._next_tag = 1  # 0 is a cancel's own completion
        self._idle: Optional[asyncio.TimerHandle] = None
        self.closed = False
        try:
            loop.add_reader(self._fd, self._on_ready)
        except BaseException:
            self._ring.close()
            raise

    # ------------------------------------------------------------ waiting

    def register(self, ev: int, seq: int, deadline: int) -> Optional[RingReg]:
        """Register the running coroutine on event ev for as long as its
        sequence word holds seq (what _core._aio_prepare returned), until
        deadline (monotonic ns). None when this ring cannot take it (full,
        or the submission refused): the caller uses the waiter thread."""
        key = (ev, seq)
        w = self._waits.get(key)
        if w is None:
            if len(self._waits) >= WAITS_MAX:
                return None
            tag = self._next_tag
            self._next_tag += 1
            if self._ring.wait(ev, seq, tag) < 0:
                return None
            w = self._waits[key] = self._by_tag[tag] = _Wait(tag, key)
        loop = asyncio.get_running_loop()
        reg = RingReg(loop.create_future(), w, ev)
        w.regs[reg] = None
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        reg.timer = loop.call_later(max(0, deadline - now) / 1e9, self._expire, reg)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        return reg

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
            w.cancelled = True
            self._ring.cancel(w.tag)
            self._reap()
            if reg.fired:
                return True
        self._drop(reg)
        return False

    def registered(self) -> "list[RingReg]":
        return [r for w in self._waits.values() for r in w.regs]

    # ----------------------------------------------------------- firing

    def _drop(self, reg: RingReg) -> None:
        """reg leaves its wait; a wait left with nobody is cancelled."""
        if reg.timer is not None:
            reg.timer.cancel()
            reg.timer = None
        w = reg.wait
        w.regs.pop(reg, None)
        if not w.regs and self._by_tag.pop(w.tag, None) is not None:
            del self._waits[w.key]
            # Its completion (-ECANCELED, or woken meanwhile) finds no tag
            # and is dropped. A refused cancel leaves the wait queued until
            # its word moves or the ring closes: nothing waits on it.
            if not w.cancelled:
                w.cancelled = True
                self._ring.cancel(w.tag)
        self._maybe_idle()

    def _fire(self, reg: RingReg) -> None:
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

    def _reap(self) -> None:
        for tag, res in self._ring.reap():
            w = self._by_tag.pop(tag, None)
            if w is None:
                continue  # a cancel's completion, or a cancelled wait's
            del self._waits[w.key]
            # Woken (0), the word already differed (-EAGAIN), or worse
            # (-EFAULT: its handle was closed before the submission): every
            # coroutine on it retries and meets what there is.
            if res == -errno.ECANCELED and w.cancelled:
                continue  # unregister's own cancel: its one coroutine leaves
            for reg in w.regs:
                if reg.timer is not None:
                    reg.timer.cancel()
                    reg.timer = None
                self._fire(reg)
            w.regs.clear()
        self._maybe_idle()

    # ---------------------------------------------------------- closing

    def _maybe_idle(self) -> None:
        loop = self._loop_ref()
        if not self._waits and self._idle is None and not self.closed and loop is not None:
            self._idle = loop.call_later(IDLE_CLOSE_S, self._close_if_idle)

    def _close_if_idle(self) -> None:
        self._idle = None
        if not self._waits:
            self.close()

    def close(self) -> None:
        """Close the ring (its loop's thread, or the loop is closed).
        Registrations still on it retry at their deadlines."""
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
        self._ring.close()

    def loop_closed(self) -> bool:
        loop = self._loop_ref()
        return loop is None or loop.is_closed()

    def close_in_child(self) -> None:
        # After fork: the parent's loop is not run here, and its selector's
        # epoll is shared with the parent: only this process's copy of the
        # ring goes.
        self.closed = True
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
        if e.errno in (errno.ENOMEM, errno.EMFILE, errno.ENFILE):
            return None  # this once: the thread waits instead
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
    with _lock:
        for loop, mine in list(_rings.items()):
            if mine is r:
                del _rings[loop]


def registered() -> "list[RingReg]":
    """Every registration on a ring of this process (the tests)."""
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
