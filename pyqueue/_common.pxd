# cython: language_level=3
"""Inline helpers shared by the Cython modules (_core, _topic, _log):
cimported, compiled into each, no module of their own."""
from libc.stdint cimport int64_t, uint8_t, uint32_t, INT64_MAX

import pickle


# The codec of a payload: the type byte of its record header (docs/design.md,
# "Records"), the same in queues, topics and logs.
cdef enum:
    T_BYTES = 1
    T_STR = 2
    T_PICKLE = 3
    T_PICKLE_BUFFERS = 4
    T_CUSTOM = 5
    T_OOB = 0x80  # flag: the payload names an out-of-band segment


cdef inline object encode_plain(obj, uint8_t* typ, object dumps):
    """The default codec without out-of-band buffers: exact bytes,
    bytearray and memoryview raw (as bytes), exact str as UTF-8 (lone
    surrogates kept: surrogatepass both ways, so every str travels, as
    through pickle), anything else - subclasses of those included, so that
    a StrEnum member or a bytes subclass comes back as itself - with dumps
    (pyqueue._core.default_dumps: multiprocessing's pickler, protocol 5).
    Sets *typ."""
    t = type(obj)
    if t is bytes:
        typ[0] = T_BYTES
        return obj
    if t is bytearray or t is memoryview:
        typ[0] = T_BYTES
        return bytes(obj)
    if t is str:
        typ[0] = T_STR
        return (<str>obj).encode("utf-8", "surrogatepass")
    typ[0] = T_PICKLE
    return dumps(obj)


cdef extern from "pq_wait.h" nogil:
    int64_t pq_monotonic_ns()


cdef extern from "pq_shutdown.h" nogil:
    # The segment's shutdown flag (docs/design.md, "Shutdown"): one relaxed
    # load, the only cost shutdown adds to a put or a get.
    unsigned int PQ_SHUTDOWN_DRAIN, PQ_SHUTDOWN_IMMEDIATE
    unsigned int pq_shutdown_state(const void* base)


cdef inline uint32_t shutdown_how(bint immediate) noexcept nogil:
    """The `how` of a kind's pq_*_shutdown for shutdown(immediate)."""
    return PQ_SHUTDOWN_DRAIN | (PQ_SHUTDOWN_IMMEDIATE if immediate else 0)


cdef inline bint is_shut_down(const void* hdr) noexcept nogil:
    """The segment at hdr has been shut down (drain or immediate)."""
    return pq_shutdown_state(hdr) != 0


cdef inline bint is_shut_down_now(const void* hdr) noexcept nogil:
    """The segment at hdr has been shut down with immediate=True: gets
    raise ShutDown at once."""
    return (pq_shutdown_state(hdr) & PQ_SHUTDOWN_IMMEDIATE) != 0


cdef inline int64_t seconds_ns(double s, str what) except? -1:
    """A non-negative number of seconds in ns, saturated at INT64_MAX for
    inf and anything past ~9.2e9 s (the cast of such a double to int64 is
    undefined). NaN and negative: ValueError naming `what`."""
    if s != s or s < 0:
        raise ValueError(f"{what} must be a number of seconds >= 0, not {s!r}")
    if s >= 9.2e9:
        return INT64_MAX
    return <int64_t>(s * 1e9)


cdef inline Py_ssize_t check_max_messages(object n) except -1:
    """A get_many's max_messages as every backend checks it
    (pyqueue._api.check_max_messages): an integer, not a bool
    (TypeError), at least 1 (ValueError); past 2**31 - 1 it saturates."""
    if type(n) is not int:
        if isinstance(n, bool) or not hasattr(type(n), "__index__"):
            raise TypeError("max_messages must be an int")
        n = type(n).__index__(n)  # (a numpy integer)
    if n < 1:
        raise ValueError("max_messages must be at least 1")
    return n if n < 0x7FFFFFFF else 0x7FFFFFFF  # pyqueue._api.MAX_COUNT


cdef inline double odd_timeout(object timeout) except? -1.0:
    """A timeout that is not an int or a float, as a C double (what has
    __float__ or __index__), else the TypeError every backend raises."""
    try:
        return timeout
    except TypeError:
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}") from None


cdef inline int64_t deadline_ns(bint block, object timeout) except? -2:
    """Absolute CLOCK_MONOTONIC deadline in ns of a blocking call's
    (block, timeout): -1 = none, 0 = do not wait (also for a negative
    timeout, as multiprocessing does)."""
    if timeout is None:
        return -1 if block else 0
    # A C double conversion, as multiprocessing's SemLock.acquire does: a
    # str (or other non-number) is a TypeError, never parsed, with or
    # without block (named as pyqueue._api.check_timeout names it).
    cdef double t
    if isinstance(timeout, float) or isinstance(timeout, int):
        t = timeout
    else:
        t = odd_timeout(timeout)
    if not block:
        return 0
    if t != t:
        raise ValueError("'timeout' must be a number, not NaN")
    if t <= 0:
        return 0
    cdef int64_t now = pq_monotonic_ns()
    cdef int64_t ns = seconds_ns(t, "timeout")
    return INT64_MAX if ns > INT64_MAX - now else now + ns


# ---- Waiting for a lock (csrc/pq_lock.h) ----------------------------------
# The core's verbs only try their locks (the module calls
# pq_lock_set_core_wait(0) when imported): a busy lock is PQ_ERR_LOCK_BUSY
# and nothing changed. The binding then waits for it here with the GIL
# released, in slices with signals handled between them, and calls the
# verb again with the GIL held; the verb's lock site takes over the lock
# acquired for it. Every call site has this shape:
#
#     cdef LockWait lw = LockWait(0, 0)
#     rc = pq_verb(...)
#     while lock_again(rc, &lw, deadline):
#         rc = pq_verb(...)
#     (rc == PQ_ERR_LOCK_BUSY: still held at the deadline)

from cpython.exc cimport PyErr_CheckSignals as _lock_check_signals
from libc.errno cimport ETIMEDOUT as _LOCK_ETIMEDOUT

cdef extern from "pq_fault.h" nogil:
    void pq_fault_rearm "PQ_FAULT_REARM" ()

cdef extern from "pq_lock.h" nogil:
    int PQ_ERR_LOCK_BUSY
    int PQ_ERR_LOCK_DAMAGED
    int PQ_ENOTRECOVERABLE "ENOTRECOVERABLE"
    void pq_lock_set_core_wait(int64_t ns)
    int pq_lock_wait_busy(int64_t deadline_ns)
    void pq_lock_drop()
    int pq_lock_busy_holder()
    int64_t pq_lock_bounded_wait()
    void pq_lock_set_bounded_wait(int64_t ns)

cdef enum:
    # The longest wait with the GIL released before signals are handled.
    LOCK_SLICE_NS = 50000000
    # A non-blocking call (block=False, *_nowait) waits this long for a
    # lock that is only being held for a moment, then gives its usual
    # answer (Full, Empty).
    LOCK_NOWAIT_NS = 20000000
    # deadline of a call that does not block by its API (ack, commit,
    # append...): it waits pq_lock_bounded_wait() (10 s unless
    # PYQUEUE_LOCK_WAIT / pyqueue._locks.set_lock_wait said otherwise), then
    # raises LockTimeout.
    LOCK_BOUNDED = -2

cdef struct LockWait:
    int64_t started  # when the first wait began (ns); 0: none yet
    int64_t until    # its end (ns); -1: none


cdef inline int lock_again(int rc, LockWait* w, int64_t deadline) except -1:
    """After a verb answered rc: 1 when it is to be called again (the lock
    it found busy is now held by this thread for that call), 0 when rc is
    its answer (PQ_ERR_LOCK_BUSY: the lock was still held at the deadline).
    deadline: the call's (deadline_ns(): -1 none, 0 LOCK_NOWAIT_NS) or
    LOCK_BOUNDED. KeyboardInterrupt (or what a signal handler raises) ends
    the wait with no lock held."""
    cdef int64_t now, until
    cdef int r
    if w.started:
        pq_lock_drop()  # acquired for the last call, which returned before taking it
    if rc != PQ_ERR_LOCK_BUSY:
        return 0
    now = pq_monotonic_ns()
    if not w.started:
        w.started = now
        if deadline == 0:
            w.until = now + LOCK_NOWAIT_NS
        elif deadline == LOCK_BOUNDED:
            w.until = now + pq_lock_bounded_wait()
        else:
            w.until = deadline
    while True:
        if w.until >= 0 and now >= w.until:
            return 0
        until = now + LOCK_SLICE_NS
        if w.until >= 0 and w.until < until:
            until = w.until
        with nogil:
            r = pq_lock_wait_busy(until)
        if r == 0:
            return 1
        if r != -_LOCK_ETIMEDOUT:
            from pyqueue.errors import from_code
            raise from_code(r, "lock", "segment")
        _lock_check_signals()
        now = pq_monotonic_ns()


cdef inline object lock_timeout(str what, LockWait* w):
    """The LockTimeout of a LOCK_BOUNDED call that gave up."""
    from pyqueue.errors import lock_timeout as make
    return make(what, pq_lock_busy_holder(), (pq_monotonic_ns() - w.started) / 1e9)


cdef inline int lock_fail(int rc, LockWait* w, str what) except? -1:
    """rc, unless the lock was still busy at the deadline: LockTimeout."""
    if rc == PQ_ERR_LOCK_BUSY:
        raise lock_timeout(what, w)
    return rc


cdef inline int set_lock_wait(object seconds) except -1:
    """Set up this module's copy of the core: the binding waits for locks
    itself (lock_again), and LOCK_BOUNDED calls wait `seconds` (None: the
    environment's PYQUEUE_LOCK_WAIT, else the default of 10 s)."""
    cdef double s = 0
    if seconds is None:
        import os
        try:
            s = float(os.environ.get("PYQUEUE_LOCK_WAIT") or 0)
        except ValueError:
            s = 0
    else:
        s = float(seconds)
    if not s > 0 or s > 1e9:
        s = 0
    pq_lock_set_core_wait(0)
    pq_lock_set_bounded_wait(<int64_t>(s * 1e9))
    return 0
