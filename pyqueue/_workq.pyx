# cython: language_level=3
"""Cython binding of the acknowledged work queue (csrc/pq_wq.h): put is
claim (under the queue's lock) -> copy -> commit; get is acquire (under the
lock) -> copy out -> decode; the verbs of a delivery are one call each.
Blocking calls release the GIL in slices of at most 100 ms, check signals
between them, and look for dead holders (pq_wq_reap) after each slice.
Values: bytes/str raw, else pickle protocol 5 (pyqueue/_common.pxd); with
a serializer= every value is its dumps' output (T_CUSTOM), and a queue made
with one carries FLAG_CUSTOM_SERIALIZER: nothing in it is ever unpickled."""

cimport cython
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t, uintptr_t
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport EAGAIN, EINTR, ETIMEDOUT, EMSGSIZE, ESTALE, ENOENT, EINPROGRESS, ENOSPC

import pickle
import queue as _queue_mod
from types import GenericAlias as _GenericAlias
import time

from pyqueue._core import default_dumps as _default_dumps_py
from pyqueue.errors import MessageTooLarge, PyQueueError, SegmentMismatch
from pyqueue.errors import ShutDown
from pyqueue.errors import from_code as _from_code
from pyqueue import _events, _oob
from pyqueue._api import check_seconds as _check_seconds
from pyqueue._common cimport T_BYTES, T_STR, T_PICKLE, T_CUSTOM, T_PICKLE_BUFFERS, T_OOB
from pyqueue._common cimport encode_plain, deadline_ns as _deadline
from pyqueue._common cimport seconds_ns
from pyqueue._common cimport shutdown_how, is_shut_down, is_shut_down_now

cdef extern from "pq_wait.h" nogil:
    int64_t pq_monotonic_ns()

cdef extern from "pq_fault.h" nogil:
    # memcpy, split around the mid_copy fault point in fault builds only
    void pq_fault_copy(uint8_t* dst, uint64_t off, const void* src, size_t n, uint64_t total)

cdef extern from "pq_segment.h" nogil:
    ctypedef struct pq_segment_header:
        uint64_t params[16]

cdef extern from *:
    """
    #include "pq_wq.h"
    #define PQ_WQ_EVENT_ADDR(q, which) ((uintptr_t)((which) == 0 ? &(q)->ctl->readable : &(q)->ctl->writable))
    """
    uintptr_t PQ_WQ_EVENT_ADDR(void* q, int which)

cdef extern from "pq_wq.h" nogil:
    int PQ_WQ_PARAM_USER0
    ctypedef struct pq_wq_ctl:
        uint32_t user_len
        uint8_t user[512]
    ctypedef struct pq_wq:
        pq_segment_header* hdr
        pq_wq_ctl* ctl
        uint64_t capacity
        uint32_t nslots
        uint32_t dedup_slots
        int64_t visibility_ns
        uint32_t max_deliveries
        int64_t dedup_window_ns
        uint64_t max_payload
    ctypedef struct pq_wq_delivery:
        uint64_t id
        uint32_t deliveries
        uint32_t len
        const uint8_t* payload
        uint8_t type
        uint8_t reason
        uint8_t dead
        uint64_t enqueued_ms
        int64_t deadline_ns
    ctypedef struct pq_wq_stats:
        uint64_t available, delayed, in_flight, dead, claimed
        uint64_t counters[8]
        uint64_t capacity, used_bytes, slots
        uint64_t dedup_used
    int PQ_WQ_USER_BYTES
    int PQ_WQ_ENQUEUED, PQ_WQ_ACKED, PQ_WQ_REDELIVERED, PQ_WQ_DEAD_LETTERED
    int PQ_WQ_DEDUPED, PQ_WQ_ABANDONED, PQ_WQ_DEDUP_FULL, PQ_WQ_DEAD_PARKED
    int PQ_WQ_AVAILABLE, PQ_WQ_ACQUIRED, PQ_WQ_DEAD, PQ_WQ_CLAIMED
    uint64_t pq_wq_segment_size(uint64_t capacity, uint32_t slots, uint32_t dedup_slots)
    int pq_wq_create(void* base, size_t size, uint64_t capacity, uint32_t slots,
                     uint32_t dedup_slots, int64_t visibility_ns, uint32_t max_deliveries,
                     int64_t dedup_window_ns, uint64_t max_payload, uint64_t user_flags,
                     const void* user, uint32_t user_len)
    int pq_wq_open(pq_wq* q, void* base, size_t size)
    uint64_t pq_wq_key_hash(const void* key, size_t len)
    int pq_wq_claim(pq_wq* q, uint32_t len, uint8_t type, int64_t delay_ns, uint64_t key_hash,
                    uint64_t enqueued_ms, uint64_t* id, uint8_t** payload, uint64_t* seen)
    void pq_wq_commit(pq_wq* q, uint64_t id)
    int pq_wq_acquire(pq_wq* q, pq_wq_delivery* d, int64_t* wake_ns, uint64_t* seen)
    int pq_wq_ack(pq_wq* q, uint64_t id, uint32_t deliveries)
    int pq_wq_nack(pq_wq* q, uint64_t id, uint32_t deliveries, int64_t delay_ns)
    int pq_wq_reject(pq_wq* q, uint64_t id, uint32_t deliveries)
    int pq_wq_extend(pq_wq* q, uint64_t id, uint32_t deliveries, int64_t timeout_ns)
    int pq_wq_dead_done(pq_wq* q, uint64_t id)
    int pq_wq_dead_park(pq_wq* q, uint64_t id, int64_t retry_ns)
    int pq_wq_held(pq_wq* q, uint64_t id, uint32_t deliveries)
    int pq_wq_reap(pq_wq* q)
    int pq_wq_wait_readable(pq_wq* q, uint64_t seen, int64_t deadline_ns, uint32_t spin_ns)
    int pq_wq_shutdown(pq_wq* q, uint32_t how)
    int pq_wq_wait_writable(pq_wq* q, uint64_t seen, int64_t deadline_ns, uint32_t spin_ns)
    int pq_wq_copy_message(pq_wq* q, uint64_t id, void* buf, uint32_t buf_len,
                           pq_wq_delivery* d, uint32_t* state)
    int pq_wq_bounds(pq_wq* q, uint64_t* head, uint64_t* tail)
    int pq_wq_get_stats(pq_wq* q, pq_wq_stats* s)
    void pq_wq_peek_stats(pq_wq* q, pq_wq_stats* s)

cdef extern from *:
    """
    #include <stddef.h>
    #define PQ_WQ_TAIL_AT (PQ_WQ_CTL_OFFSET + offsetof(pq_wq_ctl, tail))
    """
    size_t PQ_WQ_TAIL_AT

# Where a segment keeps its tail (the next id): for the tests that damage it.
TAIL_OFFSET = PQ_WQ_TAIL_AT

DEF SLICE_NS = 100000000   # longest single park: signals and reaping run between
DEF SPIN_NS = 50000
DEF REAP_EVERY_NS = 100000000

# The segment's PQ_WQ_PARAM_USER0 bit: made with a custom serializer.
FLAG_CUSTOM_SERIALIZER = 1

REASONS = {0: None, 1: "nacked", 2: "visibility timeout", 3: "consumer died", 4: "rejected"}
STATES = {1: "claimed", 2: "available", 3: "in flight", 4: "dead"}

cdef object _loads_p = pickle.loads
cdef object _dumps_p = _default_dumps_py   # multiprocessing's pickler (pyqueue/_codec.pxi)

ESTALE_CODE = ESTALE
# The type bit of a message whose ring record is a reference to an
# out-of-band segment (pyqueue._oob).
OOB_FLAG = T_OOB

from pyqueue._common cimport (LockWait, lock_again, lock_timeout, lock_fail, set_lock_wait, pq_fault_rearm,
                              PQ_ERR_LOCK_BUSY, PQ_ERR_LOCK_DAMAGED, PQ_ENOTRECOVERABLE,
                              LOCK_BOUNDED)

set_lock_wait(None)


include "_module_hooks.pxi"




def raise_for(int rc, what):
    _check_rc(rc, what)


cdef int _check_rc(int rc, str what="") except -1:
    if rc >= 0:
        return rc
    raise _from_code(rc, what, "work queue")


def segment_size(uint64_t capacity, uint32_t slots, uint32_t dedup_slots):
    cdef uint64_t n = pq_wq_segment_size(capacity, slots, dedup_slots)
    if n == 0:
        raise ValueError("capacity, max_in_flight and dedup slots must be powers of two")
    return n


def create_segment(mm, uint64_t capacity, uint32_t slots, uint32_t dedup_slots,
                   double visibility, uint32_t max_deliveries, double dedup_window,
                   uint64_t max_payload, bytes user, uint64_t flags=0):
    cdef Py_buffer view
    if len(user) > PQ_WQ_USER_BYTES:
        raise ValueError("dead-letter queue name too long")
    cdef int64_t vis_ns = seconds_ns(visibility, "visibility_timeout")
    cdef int64_t window_ns = seconds_ns(dedup_window, "dedup_window")
    PyObject_GetBuffer(mm, &view, PyBUF_WRITABLE)
    try:
        _check_rc(pq_wq_create(view.buf, view.len, capacity, slots, dedup_slots, vis_ns,
                               max_deliveries, window_ns, max_payload, flags,
                               PyBytes_AS_STRING(user), <uint32_t>len(user)), "create")
    finally:
        PyBuffer_Release(&view)


cdef object _seconds(int64_t ns):
    """A time of the segment in seconds: inf for the saturated one."""
    return float("inf") if ns == 0x7fffffffffffffff else ns / 1e9


cdef object _decode(WorkQueueCore q, uint8_t typ, bytes b):
    """A payload as the value put: the codec checked against the handle
    first, so that a handle with a serializer never unpickles (a pickle
    planted in its segment is refused) and one without never calls a
    loads it lacks. An out-of-band message (T_OOB: b is a reference) is
    read from its segment, which stays (pyqueue._oob.read): only the type
    checked first, and only a segment named under this queue's prefix."""
    cdef uint8_t base = typ & ~T_OOB
    if base == T_BYTES or base == T_STR:
        if q._custom:
            raise PyQueueError("message was not encoded with this work queue's serializer")
    elif base == T_CUSTOM:
        if not q._custom:
            raise PyQueueError("message was encoded with a custom serializer this handle lacks")
    elif base == T_PICKLE or (base == T_PICKLE_BUFFERS and typ & T_OOB):
        if q._custom:
            raise PyQueueError("refusing to unpickle: this work queue uses a custom serializer")
    else:
        raise SegmentMismatch(f"unknown message type {typ}")
    if not typ & T_OOB:
        if base == T_BYTES:
            return b
        if base == T_STR:
            return b.decode("utf-8", "surrogatepass")
        if base == T_CUSTOM:
            return q._loads(b)
        return _loads_p(b)
    payload = _oob.read(q, b)
    if base == T_BYTES:
        return bytes(payload)
    if base == T_STR:
        return bytes(payload).decode("utf-8", "surrogatepass")
    if base == T_CUSTOM:
        return q._loads(bytes(payload))
    if base == T_PICKLE:
        return _loads_p(payload)
    return _oob.unframe_buffers(payload)


# no_gc_clear: the cycle collector must not clear the mapping (_mm, the
# buffer view) while the handle may still be used; a cycle through it is
# broken at the other objects in it.
@cython.no_gc_clear
cdef class WorkQueueCore:
    """A handle on a mapped work-queue segment (base of pyqueue.WorkQueue)."""
    __class_getitem__ = classmethod(_GenericAlias)
    cdef pq_wq _q
    cdef Py_buffer _view
    cdef bint _mapped
    cdef readonly bint _closed
    cdef object _mm
    cdef int64_t _next_reap
    cdef object _dumps
    cdef object _loads
    cdef readonly bint _custom
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        self._mapped = False
        self._closed = False
        self._next_reap = 0

    def __dealloc__(self):
        if self._mapped:
            PyBuffer_Release(&self._view)
            self._mapped = False
        if self._mm is not None:
            try:
                self._mm.close()
            except Exception:
                pass

    def _attach(self, mm, serializer=None):
        PyObject_GetBuffer(mm, &self._view, PyBUF_WRITABLE)
        self._mapped = True
        self._mm = mm
        _check_rc(pq_wq_open(&self._q, self._view.buf, self._view.len), "open")
        if serializer is not None:
            self._dumps, self._loads = serializer
            self._custom = True
        elif self._q.hdr.params[PQ_WQ_PARAM_USER0] & FLAG_CUSTOM_SERIALIZER:
            raise PyQueueError("this work queue was created with a custom serializer: pass "
                               "the same serializer= to open it")

    def _segment_flags(self):
        """The binding's flags of the segment (FLAG_CUSTOM_SERIALIZER)."""
        return self._q.hdr.params[PQ_WQ_PARAM_USER0]

    cdef object _encode(self, obj, uint8_t* typ):
        """A value's payload bytes; sets *typ. With a serializer, its
        dumps' output (bytes-like) for every value."""
        if self._custom:
            typ[0] = T_CUSTOM
            return bytes(self._dumps(obj))
        return encode_plain(obj, typ, _dumps_p)

    cdef inline int _check_open(self) except -1:
        if self._closed or not self._mapped:
            raise ValueError(f"{self!r} is closed")
        return 0

    @property
    def capacity_bytes(self):
        """The message ring's size in bytes."""
        return self._q.capacity

    @property
    def max_in_flight(self):
        """The most messages not yet done (available, delayed or held)."""
        return self._q.nslots

    @property
    def visibility_timeout(self):
        """Seconds a delivery is held before the message is delivered again."""
        return _seconds(self._q.visibility_ns)

    @property
    def max_deliveries(self):
        """Deliveries before a message is dead-lettered, or None (no limit)."""
        return self._q.max_deliveries or None

    @property
    def dedup_window(self):
        """Seconds within which a put of a key already put is dropped."""
        return _seconds(self._q.dedup_window_ns)

    @property
    def dedup_keys(self):
        """Room for keys in the dedup table (0: no deduplication)."""
        return self._q.dedup_slots

    @property
    def max_message_bytes(self):
        """The largest encoded message a put accepts."""
        return self._q.max_payload

    def _user(self):
        """The bytes the creator stored (the dead-letter queue's name)."""
        cdef uint32_t n = self._q.ctl.user_len
        return PyBytes_FromStringAndSize(<const char*>self._q.ctl.user, n)

    cdef void _reap_now(self, bint always):
        cdef int64_t now = pq_monotonic_ns()
        cdef int n
        if always or now >= self._next_reap:
            self._next_reap = now + REAP_EVERY_NS
            n = pq_wq_reap(&self._q)
            if n > 0:  # logged after the reap: a log handler runs Python code
                try:
                    _events.reaped(self, n)
                except Exception:
                    pass

    def _put(self, obj, key, double delay, bint block, timeout):
        """Put one message: (id, duplicate). One larger than
        max_message_bytes goes out of band (pyqueue._oob): a segment of
        its own, the ring holding a reference; the segment is removed when
        the put fails or is dropped as a duplicate, else when the message
        is acked or dead-lettered (pyqueue.workqueue)."""
        cdef tuple enc = self._encode_put_c(obj, key, delay)
        if not enc[1] & T_OOB:
            return self._put_encoded(enc[0], enc[1], enc[2], enc[3], block, timeout)
        try:
            mid, dup = self._put_encoded(enc[0], enc[1], enc[2], enc[3], block, timeout)
        except BaseException:
            self._drop_prepared(enc)  # never in the queue: nobody else removes it
            raise
        if dup:
            self._drop_prepared(enc)  # dropped: the first put's message stays
        return mid, dup

    def _encode_put(self, obj, key, double delay):
        """A put of obj encoded once, for _put_prepared (which an async put
        calls again on each retry): (ring bytes, type, key hash, delay ns).
        Out of band (type & T_OOB), the bytes reference a new segment: the
        caller gives the tuple to _drop_prepared unless a _put_prepared put
        it (and not as a duplicate)."""
        return self._encode_put_c(obj, key, delay)

    cdef tuple _encode_put_c(self, obj, key, double delay):
        cdef uint8_t typ
        cdef uint64_t kh = 0
        self._check_open()
        cdef int64_t delay_ns = seconds_ns(delay, "delay")
        if key is not None:
            if isinstance(key, str):
                kb = (<str>key).encode("utf-8")
            elif isinstance(key, (bytes, bytearray, memoryview)):
                kb = bytes(key)
            else:
                raise TypeError(f"key must be bytes or str, not {type(key).__name__}")
            kh = pq_wq_key_hash(PyBytes_AS_STRING(kb), len(kb))
        data = self._encode_ring(obj, &typ, True)
        return (data, typ, kh, delay_ns)

    def _put_prepared(self, tuple enc, bint block, timeout):
        """Put what _encode_put made: (id, duplicate). Frees nothing."""
        self._check_open()
        return self._put_encoded(enc[0], enc[1], enc[2], enc[3], block, timeout)

    def _drop_prepared(self, tuple enc):
        """Remove the out-of-band segment of what _encode_put made (if it
        has one): it was not put, or put as a duplicate."""
        if enc[1] & T_OOB:
            _oob.discard(self, enc[0])

    cdef bytes _encode_ring(self, obj, uint8_t* typ, bint check_shutdown):
        """What goes into the ring for obj: its payload, or (T_OOB set in
        *typ) the reference to a new out-of-band segment holding it, which
        the caller removes when the reference is not committed."""
        cdef list buffers = []
        cdef Py_ssize_t n
        t = type(obj)
        parts = None
        if self._custom or t is bytes or t is bytearray or t is memoryview or t is str:
            data = self._encode(obj, typ)
        else:
            # Pickled with its protocol 5 buffers apart (a NumPy array's
            # data): copied once, into the segment, when it goes out of band.
            data = _dumps_p(obj, buffers)
            typ[0] = T_PICKLE
            if buffers:
                parts = _oob.frame_buffers(data, buffers)
                total = sum([memoryview(x).nbytes for x in parts])
                if <uint64_t>total <= self._q.max_payload:
                    parts = None
                    data = _dumps_p(obj)  # small: in the ring, buffers in band
                else:
                    typ[0] = T_PICKLE_BUFFERS
            buffers = None
        if parts is None:
            n = len(data)
            if <uint64_t>n <= self._q.max_payload:
                return data
            parts, total = [data], n
        del data
        if check_shutdown and is_shut_down(self._q.hdr):  # no segment for nothing
            raise ShutDown(f"work queue {getattr(self, 'name', None)!r} is shut down")
        ref = _oob.put(self, parts, total)
        if <uint64_t>len(ref) > self._q.max_payload:
            _oob.discard(self, ref)
            raise MessageTooLarge(f"the work queue's max_message_bytes "
                                  f"({self._q.max_payload}) cannot hold even the "
                                  f"reference to an out-of-band message")
        typ[0] |= T_OOB
        return ref

    cdef object _put_encoded(self, bytes data, uint8_t typ, uint64_t kh, int64_t delay_ns,
                             bint block, timeout):
        cdef uint64_t mid, seen
        cdef uint8_t* dst
        cdef int rc
        cdef int64_t deadline, until
        cdef Py_ssize_t n = len(data)
        deadline = _deadline(block, timeout)
        cdef uint64_t now_ms = time.time_ns() // 1000000
        cdef LockWait lw = LockWait(0, 0)
        while True:
            # Shut down: no put (a waiting one wakes and raises here).
            if is_shut_down(self._q.hdr):
                raise ShutDown(f"work queue {getattr(self, 'name', None)!r} is shut down")
            rc = pq_wq_claim(&self._q, <uint32_t>n, typ, delay_ns, kh, now_ms,
                             &mid, &dst, &seen)
            # The lock held by another process: wait for it with the GIL
            # released (pyqueue/_common.pxd), until the put's deadline.
            while lock_again(rc, &lw, deadline):
                rc = pq_wq_claim(&self._q, <uint32_t>n, typ, delay_ns, kh, now_ms,
                                 &mid, &dst, &seen)
            if rc == PQ_ERR_LOCK_BUSY:
                raise _queue_mod.Full
            if rc == 1:
                return mid, True
            if rc == 0:
                if n:
                    pq_fault_copy(dst, 0, PyBytes_AS_STRING(data), n, n)
                pq_wq_commit(&self._q, mid)
                return mid, False
            if rc == -EINPROGRESS:
                # The key's first put is being written: wait until it is
                # committed (or its producer found dead), then look again.
                until = pq_monotonic_ns() + SLICE_NS
                with nogil:
                    rc = pq_wq_wait_readable(&self._q, seen, until, 0)
                if rc == -EINTR or rc == -ETIMEDOUT:
                    PyErr_CheckSignals()
                if rc == -ETIMEDOUT:
                    self._reap_now(False)
                continue
            if rc != -EAGAIN and rc != -ENOSPC:
                _check_rc(rc, "put")
            if deadline == 0 or (deadline > 0 and pq_monotonic_ns() >= deadline):
                self._reap_now(False)  # a dead consumer may hold the room
                if rc == -ENOSPC:
                    raise _queue_mod.Full(
                        f"the dedup table holds {self._q.dedup_slots} keys put within the last "
                        f"{_seconds(self._q.dedup_window_ns)} s (dedup_keys, dedup_window): a "
                        f"new key waits for the oldest to expire")
                raise _queue_mod.Full
            until = pq_monotonic_ns() + SLICE_NS
            if deadline > 0 and deadline < until:
                until = deadline
            with nogil:
                rc = pq_wq_wait_writable(&self._q, seen, until, 0)
            if rc == -EINTR or rc == -ETIMEDOUT:
                PyErr_CheckSignals()
            if rc == -ETIMEDOUT:
                self._reap_now(False)

    def _put_many(self, objs, keys, double delay, bint block, timeout):
        """Put many under few lock holds (_workq_batch.pxi): their ids."""
        return _wq_put_many(self, objs, keys, delay, block, timeout)

    def _get_many(self, Py_ssize_t max_messages, bint block, timeout):
        """Take many under one lock hold (_workq_batch.pxi): (Batch,
        dead, poison)."""
        return _wq_get_many(self, max_messages, block, timeout)

    def _get(self, bint block, timeout):
        """(kind, id, deliveries, value, enqueued_ms, reason): kind 0 a
        delivery this process holds, 1 a dead message for it to move.
        queue.Empty when none came in time."""
        cdef pq_wq_delivery d
        cdef int64_t wake, deadline, until, now
        cdef uint64_t seen
        cdef int rc
        cdef LockWait lw = LockWait(0, 0)
        self._check_open()
        deadline = _deadline(block, timeout)
        if is_shut_down_now(self._q.hdr):
            raise ShutDown(f"work queue {getattr(self, 'name', None)!r} is shut down")
        while True:
            rc = pq_wq_acquire(&self._q, &d, &wake, &seen)
            while lock_again(rc, &lw, deadline):
                rc = pq_wq_acquire(&self._q, &d, &wake, &seen)
            if rc == PQ_ERR_LOCK_BUSY:
                raise _queue_mod.Empty
            if rc >= 0:
                # The bytes stay until the message is done: copy, then decode.
                b = PyBytes_FromStringAndSize(<const char*>d.payload, d.len)
                if rc == 0 and pq_monotonic_ns() >= d.deadline_ns and \
                        self._held(d.id, d.deliveries) != 0:
                    continue  # the copy outlasted the deadline, and it went to another
                return rc, d.id, d.deliveries, b, d.type, d.enqueued_ms, REASONS.get(d.reason)
            if rc != -EAGAIN:
                _check_rc(rc, "get")
            now = pq_monotonic_ns()
            if is_shut_down(self._q.hdr):
                # Shut down, and nothing ready: once what dead consumers
                # held is back (one reap), the drain is over.
                if now >= self._next_reap:
                    self._reap_now(True)
                    continue
                raise ShutDown(f"work queue {getattr(self, 'name', None)!r} is shut down")
            if deadline == 0 or (deadline > 0 and now >= deadline):
                if now >= self._next_reap:  # a dead consumer may hold one
                    self._reap_now(True)
                    continue
                raise _queue_mod.Empty
            until = now + SLICE_NS
            if deadline > 0 and deadline < until:
                until = deadline
            if wake >= 0 and wake < until:
                until = wake  # a delayed message, or a deadline, comes due
            with nogil:
                rc = pq_wq_wait_readable(&self._q, seen, until, SPIN_NS)
            if rc == -EINTR or rc == -ETIMEDOUT:
                PyErr_CheckSignals()
            self._reap_now(False)

    def shutdown(self, immediate=False):
        """Shut the work queue down for every process (as
        queue.Queue.shutdown of Python 3.13): puts raise ShutDown from now
        on; gets raise it once no message is ready (what is ready is still
        delivered: a drain), and every put or get blocked in any process
        wakes. Iterating over the queue ends. The flag is kept in the
        segment (handles opened later see it) and never lowered.

        Nothing is discarded, even with immediate: a work queue's messages
        are committed work. Messages not ready when the getters stop
        (delayed, or in flight and nacked later) stay in the queue, counted
        by stats(); deliveries held can still be acked, nacked or rejected.

        Args:
            immediate: Make gets raise ShutDown at once, even when messages
                are ready (they stay in the queue).

        Raises:
            ValueError: The handle is closed.
        """
        self._check_open()
        _check_rc(pq_wq_shutdown(&self._q, shutdown_how(immediate)), "shutdown")

    @property
    def is_shutdown(self):
        """True once the work queue has been shut down (by any process)."""
        self._check_open()
        return is_shut_down(self._q.hdr)

    cdef int _held(self, uint64_t mid, uint32_t deliveries) except? -1:
        cdef LockWait lw = LockWait(0, 0)
        cdef int rc = pq_wq_held(&self._q, mid, deliveries)
        while lock_again(rc, &lw, LOCK_BOUNDED):
            rc = pq_wq_held(&self._q, mid, deliveries)
        return lock_fail(rc, &lw, "get")

    def _decode(self, bytes b, uint8_t typ):
        return _decode(self, typ, b)

    # The verbs return 0 (done), 1 (nack: it is dead now, to be moved) or
    # -ESTALE (the delivery is no longer this process's).

    def _ack(self, uint64_t mid, uint32_t deliveries):
        self._check_open()
        cdef LockWait lw = LockWait(0, 0)
        cdef int rc = pq_wq_ack(&self._q, mid, deliveries)
        while lock_again(rc, &lw, LOCK_BOUNDED):
            rc = pq_wq_ack(&self._q, mid, deliveries)
        return lock_fail(rc, &lw, "ack")

    def _nack(self, uint64_t mid, uint32_t deliveries, double delay):
        self._check_open()
        cdef int64_t delay_ns = seconds_ns(delay, "delay")
        cdef LockWait lw = LockWait(0, 0)
        cdef int rc = pq_wq_nack(&self._q, mid, deliveries, delay_ns)
        while lock_again(rc, &lw, LOCK_BOUNDED):
            rc = pq_wq_nack(&self._q, mid, deliveries, delay_ns)
        return lock_fail(rc, &lw, "nack")

    def _reject(self, uint64_t mid, uint32_t deliveries):
        self._check_open()
        cdef LockWait lw = LockWait(0, 0)
        cdef int rc = pq_wq_reject(&self._q, mid, deliveries)
        while lock_again(rc, &lw, LOCK_BOUNDED):
            rc = pq_wq_reject(&self._q, mid, deliveries)
        return lock_fail(rc, &lw, "reject")

    def _extend(self, uint64_t mid, uint32_t deliveries, double seconds):
        self._check_open()
        cdef int64_t ns = seconds_ns(seconds, "seconds")
        cdef LockWait lw = LockWait(0, 0)
        cdef int rc = pq_wq_extend(&self._q, mid, deliveries, ns)
        while lock_again(rc, &lw, LOCK_BOUNDED):
            rc = pq_wq_extend(&self._q, mid, deliveries, ns)
        return lock_fail(rc, &lw, "extend")

    def _dead_done(self, uint64_t mid):
        self._check_open()
        cdef LockWait lw = LockWait(0, 0)
        cdef int rc = pq_wq_dead_done(&self._q, mid)
        while lock_again(rc, &lw, LOCK_BOUNDED):
            rc = pq_wq_dead_done(&self._q, mid)
        return lock_fail(rc, &lw, "dead_done")

    def _dead_park(self, uint64_t mid, double retry):
        """A dead message this process could not move: again from retry
        seconds on, by whoever gets it then."""
        self._check_open()
        cdef int64_t ns = seconds_ns(retry, "retry")
        cdef LockWait lw = LockWait(0, 0)
        cdef int rc = pq_wq_dead_park(&self._q, mid, ns)
        while lock_again(rc, &lw, LOCK_BOUNDED):
            rc = pq_wq_dead_park(&self._q, mid, ns)
        return lock_fail(rc, &lw, "dead_park")

    def _reap(self):
        self._check_open()
        cdef LockWait lw = LockWait(0, 0)
        cdef int rc = pq_wq_reap(&self._q)
        while lock_again(rc, &lw, LOCK_BOUNDED):
            rc = pq_wq_reap(&self._q)
        return _check_rc(lock_fail(rc, &lw, "reap"), "reap")

    def _bounds(self):
        cdef uint64_t h, t
        self._check_open()
        _check_rc(pq_wq_bounds(&self._q, &h, &t), "bounds")
        return h, t

    def _copy(self, uint64_t mid):
        """(value bytes, type, deliveries, enqueued_ms, reason, state) of a
        message, unchanged; None when it is not there."""
        cdef pq_wq_delivery d
        cdef uint32_t st
        cdef int n, rc
        cdef LockWait lw = LockWait(0, 0)
        self._check_open()
        n = pq_wq_copy_message(&self._q, mid, NULL, 0, &d, &st)
        while lock_again(n, &lw, LOCK_BOUNDED):
            n = pq_wq_copy_message(&self._q, mid, NULL, 0, &d, &st)
        lock_fail(n, &lw, "copy")
        while n >= 0:
            buf = PyBytes_FromStringAndSize(NULL, n)
            rc = pq_wq_copy_message(&self._q, mid, PyBytes_AS_STRING(buf), n, &d, &st)
            while lock_again(rc, &lw, LOCK_BOUNDED):
                rc = pq_wq_copy_message(&self._q, mid, PyBytes_AS_STRING(buf), n, &d, &st)
            lock_fail(rc, &lw, "copy")
            if rc == n:
                return buf, d.type, d.deliveries, d.enqueued_ms, REASONS.get(d.reason), STATES.get(st)
            n = rc  # it changed in between: again
        if n == -ENOENT:
            return None
        _check_rc(n, "copy")

    def _stats(self):
        """The stats; under the lock when it comes within LOCK_NOWAIT_NS
        (consistent: True), else read without it (consistent: False): stats,
        qsize and pyqueue ls / stats never wait for a stopped holder."""
        cdef pq_wq_stats s
        cdef LockWait lw = LockWait(0, 0)
        self._check_open()
        cdef int rc = pq_wq_get_stats(&self._q, &s)
        try:
            while lock_again(rc, &lw, 0):
                rc = pq_wq_get_stats(&self._q, &s)
        except SegmentMismatch:  # the lock word is damaged
            rc = PQ_ERR_LOCK_BUSY
        cdef bint consistent = rc not in (PQ_ERR_LOCK_BUSY, PQ_ERR_LOCK_DAMAGED,
                                          -PQ_ENOTRECOVERABLE)
        if not consistent:
            pq_wq_peek_stats(&self._q, &s)
        else:
            _check_rc(rc, "stats")
        return {
            "consistent": consistent,
            "depth": s.available, "delayed": s.delayed, "in_flight": s.in_flight,
            "dead_pending": s.dead,
            "enqueued": s.counters[PQ_WQ_ENQUEUED], "acked": s.counters[PQ_WQ_ACKED],
            "redelivered": s.counters[PQ_WQ_REDELIVERED],
            "dead_lettered": s.counters[PQ_WQ_DEAD_LETTERED],
            "deduplicated": s.counters[PQ_WQ_DEDUPED],
            "abandoned": s.counters[PQ_WQ_ABANDONED],
            "dedup_keys_used": s.dedup_used, "dedup_full": s.counters[PQ_WQ_DEDUP_FULL],
            "dead_letter_parked": s.counters[PQ_WQ_DEAD_PARKED],
            "capacity": s.capacity, "used_bytes": s.used_bytes, "max_in_flight": s.slots,
        }

    def close(self):
        """Close this handle (other handles and processes are unaffected)."""
        self._closed = True

    def _event_address(self, int which):
        """The address of the queue's readable (0) or writable (1) event
        (pyqueue._aio). Valid while this handle lives: close() does not
        unmap."""
        self._check_open()
        if not 0 <= which <= 1:
            raise ValueError("no such event")
        return PQ_WQ_EVENT_ADDR(&self._q, which)


include "_workq_batch.pxi"
