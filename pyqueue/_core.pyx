# cython: language_level=3
"""Cython binding of the pyqueue C core.

Thin by intent: the ring protocol lives in csrc/. What is here:
- `RingQueue`, the base class of pyqueue.Queue with the hot paths (put/get
  and their batch forms) so that a put or get is one C call from Python;
- the one place where C return codes become Python exceptions (_check_rc);
- blocking: the GIL is released while spinning or parked, the wait is cut
  into slices so that signals (Ctrl-C) are handled and a dead producer's
  record is repaired within a bounded time.

Thread safety: the claim -> copy -> commit and peek -> copy -> consume
sequences run with the GIL held and call no Python code in between, so
threads of one process never interleave inside them. What a get learns
from a peek (types, positions, the copied payloads) lives in the call's own
stack and locals, never in the handle: decoding runs Python code (pickle),
which may let another thread of this process use the same handle.
"""

cimport cython
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t, uintptr_t
from libc.stdlib cimport malloc, free
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE, PyBUF_ANY_CONTIGUOUS
from cpython.exc cimport PyErr_CheckSignals
from cpython.list cimport PyList_New
from cpython.bytearray cimport PyByteArray_FromStringAndSize
from libc.errno cimport EAGAIN, EINTR, ETIMEDOUT, EMSGSIZE, EINVAL, EINPROGRESS, ESTALE, ENOBUFS, ENOSPC

import collections
import os
import pickle
import queue as _queue_mod
from types import GenericAlias as _GenericAlias

from pyqueue.errors import PyQueueError, SegmentMismatch, MessageTooLarge, UndecodableMessage
from pyqueue.errors import ShutDown
from pyqueue.errors import from_code as _from_code
from pyqueue import _events

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)

cdef extern from "pq_fault.h" nogil:
    int PQ_FAULT_ENABLED, PQ_FAULT_NPOINTS
    const char* pq_fault_name(int id)
    # memcpy, split around the mid_copy fault point in fault builds only
    void pq_fault_copy(uint8_t* dst, uint64_t off, const void* src, size_t n, uint64_t total)

cdef extern from "pq_wait.h" nogil:
    int64_t pq_monotonic_ns()

cdef extern from "pq_segment.h" nogil:
    unsigned int PQ_LAYOUT_VERSION
    ctypedef struct pq_segment_header:
        uint64_t magic
        uint32_t layout_version
        uint32_t kind
        uint64_t segment_size
        uint64_t data_offset
        uint64_t data_size
        int creator_pid
        uint64_t creator_start_time
        uint64_t created_unix_ns
        uint64_t params[16]
    int pq_segment_check(const void* base, size_t size, uint32_t kind)
    int PQ_ERR_NOT_PYQUEUE, PQ_ERR_VERSION, PQ_ERR_KIND, PQ_ERR_TRUNCATED, PQ_ERR_CORRUPT
    int PQ_KIND_QUEUE

cdef extern from "pq_ring.h" nogil:
    ctypedef struct pq_ring:
        pq_segment_header* hdr
        uint64_t capacity
        uint64_t maxsize
        uint64_t max_payload
        uint64_t reserve_need
        uint64_t span
        int trim_wanted
    ctypedef struct pq_ring_record:
        uint64_t pos
        const uint8_t* payload
        uint32_t len
        uint8_t type
    ctypedef struct pq_ring_batch:
        uint64_t head
        uint64_t next
        uint32_t count
        uint32_t skipped
    ctypedef struct pq_ring_stats:
        uint64_t enqueued, dequeued, rejected, dropped, abandoned
        uint64_t depth, depth_bytes, capacity, maxsize
        uint32_t waiting_producers, waiting_consumers
        int64_t unfinished_tasks
        uint64_t abandoned_taken
    int PQ_RING_PARAM_USER0, PQ_RECORD_HEADER
    int PQ_COUNT_REJECTED, PQ_COUNT_DROPPED
    uint64_t pq_ring_segment_size(uint64_t capacity)
    uint64_t pq_ring_growable_size(uint64_t capacity)
    int pq_ring_trim(pq_ring* r)
    uint64_t pq_ring_record_size(uint64_t length)
    int pq_ring_create(void* base, size_t size, uint64_t capacity, uint64_t maxsize,
                       const uint64_t* user_params, int n_user_params)
    int pq_ring_create_backed(void* base, size_t size, uint64_t capacity, uint64_t maxsize,
                              const uint64_t* user_params, int n_user_params, uint64_t backed)
    int pq_ring_reserve(pq_ring* r, uint64_t need)
    int pq_ring_populate_supported()
    uint64_t PQ_RING_RESERVE_CHUNK
    int pq_ring_open(pq_ring* r, void* base, size_t size)
    int pq_ring_claim(pq_ring* r, const uint32_t* lens, uint32_t n, uint64_t* pos_out)
    uint8_t* pq_ring_payload(const pq_ring* r, uint64_t pos)
    void pq_ring_commit(pq_ring* r, uint64_t pos, uint8_t type)
    void pq_ring_notify_readable(pq_ring* r, uint32_t n)
    int pq_ring_peek(pq_ring* r, pq_ring_record* out, uint32_t max, pq_ring_batch* batch)
    int pq_ring_consume(pq_ring* r, const pq_ring_batch* batch)
    void pq_ring_peek_abandon(pq_ring* r, const pq_ring_batch* batch)
    int pq_ring_take(pq_ring* r, const pq_ring_batch* batch)
    void pq_ring_taken_done(pq_ring* r)
    int pq_ring_reap_dead_consumers(pq_ring* r)
    void pq_ring_release_slot(pq_ring* r)
    int pq_ring_repair_head(pq_ring* r)
    int pq_ring_wait_readable(pq_ring* r, int64_t deadline_ns, uint32_t spin_ns)
    int pq_ring_wait_writable(pq_ring* r, uint64_t seen_head, int64_t deadline_ns, uint32_t spin_ns)
    uint64_t pq_ring_head(const pq_ring* r)
    void pq_ring_tasks_add(pq_ring* r, int64_t n)
    int pq_ring_task_done(pq_ring* r)
    int pq_ring_wait_tasks_done(pq_ring* r, int64_t deadline_ns)
    int pq_ring_shutdown(pq_ring* r, uint32_t how)
    void pq_ring_count(pq_ring* r, int which, uint64_t n)
    void pq_ring_get_stats(const pq_ring* r, pq_ring_stats* s)
    uint64_t pq_ring_depth(const pq_ring* r)
    void pq_ring_mark_shared(pq_ring* r)
    int pq_ring_is_shared(const pq_ring* r)

cdef extern from *:
    """
    #define PQ_RING_EVENT_ADDR(r, which) ((uintptr_t)((which) == 0 ? &(r)->ctl->readable : (which) == 1 ? &(r)->ctl->writable : &(r)->ctl->tasks_done))
    #define PQ_RING_HEAD_FILE_OFFSET (PQ_RING_CTL_OFFSET + offsetof(pq_ring_ctl, head))
    #define PQ_RING_TAIL_FILE_OFFSET (PQ_RING_CTL_OFFSET + offsetof(pq_ring_ctl, tail))
    #define PQ_RING_EPOCH_FILE_OFFSET (PQ_RING_CTL_OFFSET + offsetof(pq_ring_ctl, epoch))
    #define PQ_RING_EPOCHS_FILE_OFFSET (PQ_RING_CTL_OFFSET + offsetof(pq_ring_ctl, epochs))
    """
    size_t PQ_RING_HEAD_FILE_OFFSET
    uintptr_t PQ_RING_EVENT_ADDR(pq_ring* r, int which)
    size_t PQ_RING_TAIL_FILE_OFFSET
    size_t PQ_RING_EPOCH_FILE_OFFSET
    size_t PQ_RING_EPOCHS_FILE_OFFSET
    size_t PQ_RING_DATA_OFFSET
    int PQ_RING_EPOCHS

# Where a queue segment keeps its cursors and data (for tools such as
# `pyqueue gc` that read a segment file without attaching to it).
RING_HEAD_OFFSET = PQ_RING_HEAD_FILE_OFFSET
RING_TAIL_OFFSET = PQ_RING_TAIL_FILE_OFFSET
# The epoch table (pq_ring.h): the current epoch's number, then
# RING_EPOCHS entries of (start position, level), epoch k at k % RING_EPOCHS.
RING_EPOCH_OFFSET = PQ_RING_EPOCH_FILE_OFFSET
RING_EPOCHS_OFFSET = PQ_RING_EPOCHS_FILE_OFFSET
RING_EPOCHS = PQ_RING_EPOCHS
RING_DATA_OFFSET = PQ_RING_DATA_OFFSET

# Payload types (the record header's type byte): pyqueue/_common.pxd.
from pyqueue._common cimport T_BYTES, T_STR, T_PICKLE, T_PICKLE_BUFFERS, T_CUSTOM, T_OOB

# Overflow strategies (segment parameter USER0).
OVERFLOW_BLOCK = 0
OVERFLOW_REJECT = 1
OVERFLOW_DROP_OLDEST = 2

# Parameters kept in the segment after the ring's own (USER0..).
PARAM_OVERFLOW = 0
PARAM_MAX_MESSAGE = 1
PARAM_FLAGS = 2
FLAG_CUSTOM_SERIALIZER = 1

DEF BATCH_MAX = 256           # records per peek/claim in the batch calls
DEF SLICE_NS = 100000000      # longest single park: signals and repair run between

# Spin-then-yield budget before parking, in ns (see pq_spin_until).
cdef uint32_t _spin = int(os.environ.get("PYQUEUE_SPIN_NS", "50000"))

# Test-only fault injection (csrc/pq_fault.h): True in a build made with
# PYQUEUE_FAULT_INJECTION=1, where PYQUEUE_FAULT=<point>[:N] stops the
# process with SIGSTOP at the N-th hit of that point.
FAULT_INJECTION = bool(PQ_FAULT_ENABLED)
# The segment layout this build reads and writes (csrc/pq_segment.h): the
# CLI's plain header reads compare with it.
LAYOUT_VERSION = PQ_LAYOUT_VERSION
FAULT_POINTS = tuple(pq_fault_name(i).decode("ascii") for i in range(1, PQ_FAULT_NPOINTS))

cdef object _Empty = _queue_mod.Empty
cdef object _Full = _queue_mod.Full
cdef object _pickle_loads = pickle.loads
cdef object _PickleBuffer = pickle.PickleBuffer

include "_codec.pxi"

# What a handle holds for its next calls after an undecodable message
# (RingQueue._held): (kind, a, b, c).
DEF HELD_RAW = 0      # a taken message not decoded yet: (type, copied payload, position)
DEF HELD_OBJ = 1      # a decoded message: (object, -, -)
DEF HELD_ERR = 2      # an UndecodableMessage to raise: (exception, -, -)


cdef int _check_rc(int rc, str what="") except -1:
    """C return code -> exception, through pyqueue.errors.from_code (the one
    translation point); a non-negative code is returned as it is."""
    if rc >= 0:
        return rc
    raise _from_code(rc, what, "queue")


from pyqueue._common cimport deadline_ns as _deadline, check_max_messages
from pyqueue._common cimport LockWait, lock_again, set_lock_wait, pq_fault_rearm, PQ_ERR_LOCK_BUSY
from pyqueue._common cimport shutdown_how, is_shut_down, is_shut_down_now

set_lock_wait(None)


include "_module_hooks.pxi"
include "_aio.pxi"


RESERVE_CHUNK = PQ_RING_RESERVE_CHUNK


def populate_supported():
    """True when segments can be created sparse and backed as they fill
    (pq_ring_reserve: Linux >= 5.14); else every page is reserved at creation."""
    return bool(pq_ring_populate_supported())


def create_segment(mm, uint64_t capacity, uint64_t maxsize, int overflow,
                   uint64_t max_message, uint64_t flags, uint64_t backed=<uint64_t>-1):
    """Initialize a fresh zeroed mapping as a queue segment whose data area
    has pages behind its first `backed` bytes (default: all of it)."""
    cdef Py_buffer view
    cdef uint64_t params[3]
    params[0] = overflow
    params[1] = max_message
    params[2] = flags
    PyObject_GetBuffer(mm, &view, PyBUF_WRITABLE)
    try:
        _check_rc(pq_ring_create_backed(view.buf, view.len, capacity, maxsize, params, 3, backed),
                  "create")
    finally:
        PyBuffer_Release(&view)


def backed_size(uint64_t backed):
    """Bytes of a queue's file from its start that have pages when its
    data area is backed up to `backed` bytes (the reservation at creation)."""
    return pq_ring_segment_size(backed)


def segment_size(uint64_t capacity, bint growable=True):
    """The file size of a queue whose ring starts with `capacity` bytes
    and grows (sparse: pages come as the ring uses them), or, not
    growable, keeps that size (a claim that finds it full waits)."""
    return pq_ring_growable_size(capacity) if growable else pq_ring_segment_size(capacity)


def check_segment(mm, uint32_t kind=0):
    """0 when mm holds a ready pyqueue segment (of `kind`), -EAGAIN while
    it is being created; raises SegmentMismatch otherwise."""
    cdef Py_buffer view
    PyObject_GetBuffer(mm, &view, PyBUF_SIMPLE)
    try:
        rc = pq_segment_check(view.buf, view.len, kind)
    finally:
        PyBuffer_Release(&view)
    if rc == -EAGAIN:
        return rc
    return _check_rc(rc, "open")


def segment_info(mm):
    """Header fields of a mapped (valid) segment, as a dict."""
    cdef Py_buffer view
    cdef pq_segment_header* h
    PyObject_GetBuffer(mm, &view, PyBUF_SIMPLE)
    try:
        _check_rc(pq_segment_check(view.buf, view.len, 0), "open")
        h = <pq_segment_header*>view.buf
        return {
            "kind": h.kind, "layout_version": h.layout_version,
            "segment_size": h.segment_size, "data_size": h.data_size,
            "creator_pid": h.creator_pid, "creator_start_time": h.creator_start_time,
            "created_unix_ns": h.created_unix_ns,
            "params": [h.params[i] for i in range(16)],
        }
    finally:
        PyBuffer_Release(&view)


cdef object _utf8_or_bytes(str s):
    """s itself when it has a UTF-8 form (CPython caches it: no copy), else
    its UTF-8 bytes with lone surrogates kept (surrogatepass, as the decoder
    reads them back): every str travels, as it does through pickle."""
    cdef Py_ssize_t n
    try:
        PyUnicode_AsUTF8AndSize(s, &n)
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass")


cdef inline const char* _raw_ptr(obj, Py_ssize_t* n) except NULL:
    """The bytes of a str that has a UTF-8 form, or of a bytes object."""
    if type(obj) is str:
        return PyUnicode_AsUTF8AndSize(obj, n)
    n[0] = PyBytes_GET_SIZE(obj)
    return PyBytes_AS_STRING(obj)


cdef inline object _str_bytes(obj):
    """_raw_ptr's bytes as a bytes object (for the out-of-band path)."""
    if type(obj) is str:
        return (<str>obj).encode("utf-8")
    return obj


cdef object _unwrap(e):
    """What get() raises for an UndecodableMessage: the decoder's own
    exception (as multiprocessing.Queue.get), noted with where the message
    was; an UndecodableMessage without a cause as it is."""
    cause = e.cause
    if cause is None:
        return e
    try:
        cause.add_note(f"pyqueue: {e}")
    except Exception:
        pass
    return cause


cdef object _as_bytes(obj):
    """A copied payload as bytes (for UndecodableMessage.raw)."""
    if obj is None or type(obj) is bytes:
        return obj
    if type(obj) is str:
        return (<str>obj).encode("utf-8", "surrogatepass")
    try:
        return bytes(obj)
    except Exception:
        return None


# no_gc_clear: the cycle collector must not clear _mm or the buffer view
# (that unmaps the segment) before __dealloc__ releases this handle's slot
# in it; a cycle through a handle is broken at the other objects in it.
@cython.no_gc_clear
cdef class RingQueue:
    """Base class of pyqueue.Queue: a handle on a mapped queue segment.

    Its put/get side is pyqueue.Queue's; it is subscriptable
    (``RingQueue[bytes]``) for type annotations only.
    """
    __class_getitem__ = classmethod(_GenericAlias)
    cdef pq_ring _r
    cdef Py_buffer _view
    cdef bint _mapped
    cdef readonly bint _closed
    cdef object _mm
    cdef object _dumps
    cdef object _loads
    cdef bint _custom
    cdef bint _joinable
    cdef int _overflow
    cdef uint64_t _max_message     # 0 = no cap
    cdef uint64_t _inline_max      # larger payloads travel out of band
    cdef object __weakref__
    cdef object _held              # deque: messages taken, for the next gets (HELD_*)
    cdef uint64_t _undecodable     # messages this handle reported as UndecodableMessage
    cdef object _oob               # pyqueue._oob module hooks (put, get)
    cdef uint64_t _stuck_head      # head a non-blocking get found in progress
    cdef int64_t _stuck_since      # when it first did (0: none)

    def __cinit__(self, *args, **kwargs):
        self._mapped = False
        self._closed = False
        self._held = collections.deque()

    def __dealloc__(self):
        if self._mapped:
            pq_ring_release_slot(&self._r)
            PyBuffer_Release(&self._view)
            self._mapped = False
        if self._mm is not None:
            try:
                self._mm.close()
            except Exception:
                pass

    def _attach(self, mm, serializer, bint joinable, oob):
        """Bind this handle to a mapped, created segment."""
        cdef int rc
        PyObject_GetBuffer(mm, &self._view, PyBUF_WRITABLE)
        self._mapped = True
        self._mm = mm
        rc = pq_ring_open(&self._r, self._view.buf, self._view.len)
        _check_rc(rc, "open")
        cdef uint64_t* params = &self._r.hdr.params[PQ_RING_PARAM_USER0]
        if params[PARAM_OVERFLOW] > OVERFLOW_DROP_OLDEST:
            raise SegmentMismatch("open: unknown overflow strategy in segment")
        self._overflow = <int>params[PARAM_OVERFLOW]
        self._max_message = params[PARAM_MAX_MESSAGE]
        self._inline_max = self._r.capacity // 4 - PQ_RECORD_HEADER
        self._joinable = joinable
        if serializer is not None:
            self._dumps, self._loads = serializer
            self._custom = True
        elif params[PARAM_FLAGS] & FLAG_CUSTOM_SERIALIZER:
            raise PyQueueError(
                "this queue was created with a custom serializer: pass the same "
                "serializer= to open it")
        self._oob = oob

    # ------------------------------------------------------------ helpers

    cdef inline int _check_open(self) except -1:
        if self._closed or not self._mapped:
            raise ValueError(f"Queue {self!r} is closed")
        return 0

    cdef int _park(self, bint writable, uint64_t seen_head, int64_t deadline) except -1:
        """Wait (GIL released) for at most one slice until something may be
        readable (or, writable: until head moves from seen_head). Returns 1
        when worth retrying, 0 at the deadline. Between slices signals are
        handled (Ctrl-C) and dead processes' leftovers repaired."""
        cdef int64_t now, until
        cdef int rc, repaired
        now = pq_monotonic_ns()
        if deadline >= 0 and now >= deadline:
            return 0
        until = now + SLICE_NS
        if deadline >= 0 and deadline < until:
            until = deadline
        with nogil:
            if writable:
                rc = pq_ring_wait_writable(&self._r, seen_head, until, _spin)
            else:
                rc = pq_ring_wait_readable(&self._r, until, _spin)
        if rc == -EINTR or rc == -ETIMEDOUT:
            PyErr_CheckSignals()
        if rc == -ETIMEDOUT:
            # A whole slice without progress: the oldest record's producer
            # may be dead. Bounded repair latency: one slice. Consumers that
            # died holding messages are counted on the same occasion.
            repaired = _check_rc(pq_ring_repair_head(&self._r), "repair")
            pq_ring_reap_dead_consumers(&self._r)
            if repaired > 0:  # logged last: a log handler runs Python code
                _events.repaired("queue", self)
            if deadline >= 0 and pq_monotonic_ns() >= deadline:
                return 0
        return 1

    cdef int _repair_if_stuck(self, uint64_t head) except -1:
        """A non-blocking get found the oldest record still being written.
        A blocking get checks its producer after every parked slice; a
        get_nowait never parks, so it checks when the same record was
        already in progress at least a slice ago (at most one /proc read
        per slice). Without this, consumers that only poll would never get
        past a dead producer's record. 1 when repaired: peek again."""
        cdef int64_t now = pq_monotonic_ns()
        if self._stuck_since == 0 or head != self._stuck_head:
            self._stuck_head = head
            self._stuck_since = now
            return 0
        if now - self._stuck_since < SLICE_NS:
            return 0
        self._stuck_since = now
        pq_ring_reap_dead_consumers(&self._r)
        if _check_rc(pq_ring_repair_head(&self._r), "repair") > 0:
            _events.repaired("queue", self)
            return 1
        return 0

    cdef int _drop_oldest(self) except -1:
        """Discard the oldest readable record(s) to make room. 1 when
        something was dropped, 0 when nothing could be. pq_ring_consume,
        not pq_ring_take: dropped records are counted as dropped, and a
        producer that dies with them is not counted as a consumer."""
        cdef pq_ring_record rec
        cdef pq_ring_batch b
        cdef int rc
        while True:
            rc = pq_ring_peek(&self._r, &rec, 1, &b)
            if rc == -ESTALE:
                continue
            if rc < 0:
                if rc == -EAGAIN or rc == -EINPROGRESS:
                    return 0
                _check_rc(rc, "drop_oldest")
            if b.count and (rec.type & T_OOB):
                try:
                    ref = PyBytes_FromStringAndSize(<const char*>rec.payload, rec.len)
                except BaseException:
                    # (MemoryError) not dropped: a stale read marked (get's)
                    pq_ring_peek_abandon(&self._r, &b)
                    raise
            else:
                ref = None
            if pq_ring_consume(&self._r, &b) == 0:
                if b.count:
                    pq_ring_count(&self._r, PQ_COUNT_DROPPED, b.count)
                    if ref is not None:
                        self._oob.discard(self, ref)
                    return 1

    cdef int _claim(self, const uint32_t* lens, uint32_t n, uint64_t* pos,
                    int64_t deadline) except -1:
        """Claim room for n records, applying the overflow strategy.
        Raises queue.Full when there is no room in time."""
        cdef int rc
        cdef uint64_t seen
        cdef LockWait lw = LockWait(0, 0)
        while True:
            # Shut down: no put, whether it waited or not (also after a
            # park: a waiting put wakes and raises).
            if is_shut_down(self._r.hdr):
                raise ShutDown(f"queue {getattr(self, 'name', None)!r} is shut down")
            seen = pq_ring_head(&self._r)
            rc = pq_ring_claim(&self._r, lens, n, pos)
            # The claim lock held by another producer: wait for it with the
            # GIL released (pyqueue/_common.pxd), until the put's deadline.
            while lock_again(rc, &lw, deadline):
                rc = pq_ring_claim(&self._r, lens, n, pos)
            if rc == 0:
                return 0
            if rc == -ENOBUFS:
                self._reserve()  # back the next chunk (ENOSPC raises), then claim again
                continue
            if rc == PQ_ERR_LOCK_BUSY:
                raise _Full
            if rc != -EAGAIN:
                _check_rc(rc, "put")
            if self._overflow == OVERFLOW_REJECT:
                pq_ring_count(&self._r, PQ_COUNT_REJECTED, n)
                raise _Full
            if self._overflow == OVERFLOW_DROP_OLDEST:
                if self._drop_oldest():
                    # A dropped message is never got: its task is done
                    # (else join() waited for ever; the Redis backend's
                    # put script does the same).
                    if self._joinable:
                        pq_ring_task_done(&self._r)
                    continue
            if deadline == 0 or not self._park(True, seen, deadline):
                raise _Full

    cdef int _reserve(self) except -1:
        """A claim needs more of the data area backed (its first lap, see
        pq_ring_reserve): give it pages, with the GIL released (no lock is
        held here). A full /dev/shm is OSError(ENOSPC) for this put; the
        message is not enqueued and nothing else changes."""
        cdef int rc
        cdef uint64_t need = self._r.reserve_need
        with nogil:
            rc = pq_ring_reserve(&self._r, need)
        if rc == -ENOSPC:
            from pyqueue import _segment
            note = _segment.shm_size_note()
            raise OSError(ENOSPC, (
                f"{_segment.SHM_DIR} has no room to back more of the ring of queue "
                f"{getattr(self, 'name', None)!r} (capacity_bytes={self._r.capacity}; the ring "
                f"is given memory {PQ_RING_RESERVE_CHUNK >> 20} MiB at a time as it fills and "
                f"grows; "
                f"{os.strerror(ENOSPC)}{'; ' + note if note else ''}): the message was not "
                f"put; get messages out, lower capacity_bytes (the ring's size) or make "
                f"{_segment.SHM_DIR} "
                f"bigger (docker run --shm-size=...)"))
        return _check_rc(rc, "put")

    cdef int _trim(self) noexcept:
        """A take emptied the queue in a grown epoch or left one: give the
        regions no longer used back (pq_ring_trim), GIL released. Never
        raises: the message just taken must reach its caller; a damaged
        segment is reported by the next peek."""
        self._r.trim_wanted = 0
        with nogil:
            pq_ring_trim(&self._r)
        return 0

    cdef int _put_raw(self, const char* ptr, Py_ssize_t n, uint8_t typ,
                      int64_t deadline) except -1:
        cdef uint32_t length = <uint32_t>n
        cdef uint64_t pos
        self._claim(&length, 1, &pos, deadline)
        # No Python code between claim and commit (see module docstring).
        pq_fault_copy(pq_ring_payload(&self._r, pos), 0, ptr, n, n)
        pq_ring_commit(&self._r, pos, typ)
        pq_ring_notify_readable(&self._r, 1)
        return 0

    cdef int _put_parts(self, list parts, uint8_t typ, int64_t deadline) except -1:
        """Put one message made of several bytes-like parts, copied in
        place one after the other (pickle protocol 5 buffers: one copy)."""
        cdef Py_ssize_t nparts = len(parts), i, total = 0, off = 0
        cdef Py_buffer* views = <Py_buffer*>malloc(nparts * sizeof(Py_buffer))
        cdef Py_ssize_t got = 0
        cdef uint32_t length
        cdef uint64_t pos
        cdef uint8_t* dst
        if views == NULL:
            raise MemoryError()
        try:
            for i in range(nparts):
                PyObject_GetBuffer(parts[i], &views[i], PyBUF_ANY_CONTIGUOUS)
                got += 1
                total += views[i].len
            self._check_size(total)
            if <uint64_t>total > self._inline_max:
                ref = self._oob.put(self, parts, total)
                try:
                    self._put_raw(PyBytes_AS_STRING(ref), PyBytes_GET_SIZE(ref), typ | T_OOB, deadline)
                except BaseException:
                    self._oob.discard(self, ref)
                    raise
                return 0
            length = <uint32_t>total
            self._claim(&length, 1, &pos, deadline)
            dst = pq_ring_payload(&self._r, pos)
            for i in range(nparts):
                pq_fault_copy(dst, off, views[i].buf, views[i].len, total)
                off += views[i].len
            pq_ring_commit(&self._r, pos, typ)
            pq_ring_notify_readable(&self._r, 1)
            return 0
        finally:
            for i in range(got):
                PyBuffer_Release(&views[i])
            free(views)

    cdef inline int _check_size(self, Py_ssize_t n) except -1:
        if self._max_message and <uint64_t>n > self._max_message:
            raise MessageTooLarge(
                f"message of {n} bytes exceeds max_message_bytes={self._max_message}")
        if n > 0xffffffff - 64:
            raise MessageTooLarge(f"message of {n} bytes exceeds the 4 GiB limit of one message")
        return 0

    cdef object _encode(self, obj, uint8_t* typ):
        """Encode a message that is not on the fast path: returns a list of
        bytes-like parts and sets *typ."""
        if self._custom:
            typ[0] = T_CUSTOM
            return [self._dumps(obj)]
        # Exact types only: a subclass (a StrEnum member, a bytes
        # subclass) is pickled and comes back as itself.
        t = type(obj)
        if t is bytes or t is bytearray or t is memoryview:
            typ[0] = T_BYTES
            return [obj]
        if t is str:
            typ[0] = T_STR
            return [(<str>obj).encode("utf-8", "surrogatepass")]
        buffers = []
        data = mp_dumps(obj, buffers)
        if not buffers:
            typ[0] = T_PICKLE
            return [data]
        typ[0] = T_PICKLE_BUFFERS
        return self._oob.frame_buffers(data, buffers)

    # ------------------------------------------------------------ producers

    def put(self, obj, block=True, timeout=None):
        """Put obj into the queue (as multiprocessing.Queue.put does).

        bytes and str travel as they are; any other object is pickled (or
        encoded by the queue's serializer). Large messages travel out of
        band in a segment of their own.

        Args:
            obj: The message.
            block: Wait for room when the queue is full (False: raise
                queue.Full at once).
            timeout: With block, wait at most this many seconds (None: for
                ever).

        Raises:
            ShutDown: The queue was shut down (shutdown(), by any process).
            queue.Full: No room in time (overflow="block"), or at once
                with overflow="reject".
            MessageTooLarge: The encoded message is larger than
                max_message_bytes, or than the ring can ever hold.
            ValueError: The handle is closed, or timeout is negative.
            Exception: Whatever pickling (or the serializer's dumps) raises.
        """
        cdef const char* ptr
        cdef Py_ssize_t n
        cdef uint8_t typ
        cdef int64_t deadline
        self._check_open()
        deadline = _deadline(block, timeout)
        if self._joinable:
            pq_ring_tasks_add(&self._r, 1)
        try:
            if not self._custom and type(obj) is bytes:
                ptr = PyBytes_AS_STRING(obj)
                n = PyBytes_GET_SIZE(obj)
                typ = T_BYTES
            elif not self._custom and type(obj) is str:
                obj = _utf8_or_bytes(obj)
                ptr = _raw_ptr(obj, &n)
                typ = T_STR
            else:
                parts = self._encode(obj, &typ)
                self._put_parts(parts, typ, deadline)
                return
            self._check_size(n)
            if <uint64_t>n > self._inline_max:
                self._put_parts([_str_bytes(obj)], typ, deadline)
                return
            self._put_raw(ptr, n, typ, deadline)
        except BaseException:
            if self._joinable:
                pq_ring_task_done(&self._r)
            raise

    def put_nowait(self, obj):
        """put(obj, block=False).

        Args:
            obj: The message.

        Raises:
            ShutDown: The queue was shut down (shutdown(), by any process).
            queue.Full: No room now.
            MessageTooLarge: The message can never fit.
            ValueError: The handle is closed.
        """
        return self.put(obj, False)

    def put_many(self, objs, block=True, timeout=None):
        """Put every object of an iterable, claiming room for up to 256
        records at once.

        Args:
            objs: The messages, in order.
            block: Wait for room (False: raise queue.Full at once).
            timeout: With block, the longest wait in seconds for the whole
                call (None: for ever).

        Returns:
            The number of messages put.

        Raises:
            ShutDown: The queue was shut down (shutdown(), by any process).
            queue.Full: No room in time; the messages before the one that did
                not fit stay put.
            MessageTooLarge: A message can never fit (the ones before it stay
                put).
            ValueError: The handle is closed.
        """
        cdef uint32_t lens[BATCH_MAX]
        cdef uint8_t types[BATCH_MAX]
        cdef const char* ptrs[BATCH_MAX]
        cdef uint64_t pos[BATCH_MAX]
        cdef uint32_t k = 0
        cdef uint64_t bytes_in_batch = 0, rec
        cdef Py_ssize_t n, total = 0
        cdef const char* ptr
        cdef uint8_t typ
        cdef int64_t deadline
        cdef list keep = []        # keeps the objects behind ptrs alive
        self._check_open()
        deadline = _deadline(block, timeout)
        for item in objs:
            if not self._custom and type(item) is bytes:
                typ = T_BYTES
            elif not self._custom and type(item) is str:
                typ = T_STR
            else:
                item = self._encode_single(item, &typ)
            if type(item) is str:
                item = _utf8_or_bytes(item)
            ptr = _raw_ptr(item, &n)
            self._check_size(n)
            if <uint64_t>n > self._inline_max:
                total += self._put_batch(ptrs, lens, types, pos, k, deadline)
                k = 0
                bytes_in_batch = 0
                keep = []
                self._put_one_counted(_str_bytes(item), typ, deadline)
                total += 1
                continue
            rec = pq_ring_record_size(n)
            # One claim per batch where it fits: never more records than
            # maxsize allows at once, nor more than half the ring.
            if (k == BATCH_MAX or (self._r.maxsize and k >= self._r.maxsize)
                    or bytes_in_batch + rec > self._r.capacity // 2):
                total += self._put_batch(ptrs, lens, types, pos, k, deadline)
                k = 0
                bytes_in_batch = 0
                keep = []
            keep.append(item)
            ptrs[k] = ptr
            lens[k] = <uint32_t>n
            types[k] = typ
            bytes_in_batch += rec
            k += 1
        total += self._put_batch(ptrs, lens, types, pos, k, deadline)
        return total

    cdef object _encode_single(self, obj, uint8_t* typ):
        """_encode, joined into one bytes object (batch path)."""
        parts = self._encode(obj, typ)
        if len(parts) == 1 and type(parts[0]) is bytes:
            return parts[0]
        return b"".join(parts)

    cdef int _put_one_counted(self, obj, uint8_t typ, int64_t deadline) except -1:
        if self._joinable:
            pq_ring_tasks_add(&self._r, 1)
        try:
            self._put_parts([obj], typ, deadline)
        except BaseException:
            if self._joinable:
                pq_ring_task_done(&self._r)
            raise
        return 0

    cdef Py_ssize_t _put_batch(self, const char** ptrs, uint32_t* lens, uint8_t* types,
                               uint64_t* pos, uint32_t k, int64_t deadline) except -1:
        cdef uint32_t i
        if k == 0:
            return 0
        if self._joinable:
            pq_ring_tasks_add(&self._r, k)
        try:
            self._claim(lens, k, pos, deadline)
        except BaseException:
            if self._joinable:
                pq_ring_tasks_add(&self._r, -<int64_t>k)
            raise
        for i in range(k):
            pq_fault_copy(pq_ring_payload(&self._r, pos[i]), 0, ptrs[i], lens[i], lens[i])
            pq_ring_commit(&self._r, pos[i], types[i])
        pq_ring_notify_readable(&self._r, k)
        return k

    # ------------------------------------------------------------ consumers

    cdef object _decode_fast(self, const pq_ring_record* rec):
        """Copy a record out of the ring before the consume CAS. Returns the
        final object for bytes and str, else the raw bytes to finish later
        (also for a str whose bytes are not UTF-8: torn under a stale head,
        then the CAS fails and we retry; or damaged, then _decode_finish
        reports it)."""
        cdef uint8_t typ = rec.type
        if typ == T_STR:
            try:
                return PyUnicode_DecodeUTF8(<const char*>rec.payload, rec.len, "surrogatepass")
            except UnicodeDecodeError:
                pass
        if typ == T_PICKLE_BUFFERS:
            # Mutable, so that arrays rebuilt on it are writable as with
            # multiprocessing.Queue.
            return PyByteArray_FromStringAndSize(<const char*>rec.payload, rec.len)
        return PyBytes_FromStringAndSize(<const char*>rec.payload, rec.len)

    cdef object _decode_finish(self, uint8_t typ, obj):
        """After the consume CAS: turn copied bytes into the message. The
        codec is checked against this handle before anything else is done
        with the payload (an out-of-band reference is only followed for a
        type this handle would decode)."""
        cdef uint8_t base = typ & ~T_OOB
        if base == T_BYTES or base == T_STR:
            if self._custom:
                raise PyQueueError("message was not encoded with this queue's serializer")
        elif base == T_CUSTOM:
            if not self._custom:
                raise PyQueueError("message was encoded with a custom serializer this handle lacks")
        elif base == T_PICKLE or base == T_PICKLE_BUFFERS:
            if self._custom:
                raise PyQueueError("refusing to unpickle: this queue uses a custom serializer")
        else:
            raise SegmentMismatch(f"unknown message type {typ}")
        if typ & T_OOB:
            obj = self._oob.get(self, obj)
        if base == T_BYTES:
            return obj if type(obj) is bytes else bytes(obj)
        if base == T_STR:
            return obj if type(obj) is str else bytes(obj).decode("utf-8", "surrogatepass")
        if base == T_CUSTOM:
            return self._loads(obj)
        if base == T_PICKLE:
            return _pickle_loads(obj)
        return self._oob.unframe_buffers(obj)

    cdef object _finish_one(self, uint8_t typ, obj, uint64_t pos):
        """_decode_finish of one taken message; any Exception of the
        decoder becomes UndecodableMessage (counted)."""
        try:
            return self._decode_finish(typ, obj)
        except Exception as e:
            self._undecodable += 1
            raise UndecodableMessage(
                f"message at position {pos} of queue {self!r} cannot be decoded "
                f"(type {typ}): {type(e).__name__}: {e}",
                position=pos, type_code=typ, raw=_as_bytes(obj), cause=e) from e

    cdef int _hold(self, list items) except -1:
        """Put items (HELD_* tuples) in front of what this handle holds,
        in their order. A held out-of-band message is mapped now, and its
        segment's name removed, as a get does (_oob.get): what the handle
        holds is then freed with it, and a handle closed, collected or whose
        process exits with messages held leaves no segment behind. One that
        cannot be mapped stays a reference: decoding it reports why."""
        cdef list out = []
        cdef uint8_t typ
        for item in items:
            if item[0] == HELD_RAW and (<uint8_t>item[1] & T_OOB):
                typ = item[1]
                try:
                    item = (HELD_RAW, typ & ~T_OOB, self._oob.get(self, item[2]), item[3])
                except Exception:
                    pass
            out.append(item)
        self._held.extendleft(reversed(out))
        return 0

    cdef object _take_held(self, Py_ssize_t max_messages):
        """Messages an earlier call of this handle took and kept (after an
        undecodable one, or an exception while decoding): a list of up to
        max_messages, or raises the UndecodableMessage that is next. None
        when nothing is held."""
        cdef list out = []
        while len(out) < max_messages:
            try:
                item = self._held.popleft()
            except IndexError:
                break
            kind = item[0]
            if kind == HELD_OBJ:
                out.append(item[1])
                continue
            if kind == HELD_ERR:
                if out:
                    self._hold([item])
                    return out
                raise item[1]
            try:
                out.append(self._finish_one(item[1], item[2], item[3]))
            except UndecodableMessage as e:
                if out:
                    self._hold([(HELD_ERR, e, None, None)])
                    return out
                raise
            except BaseException:
                self._hold([(HELD_OBJ, o, None, None) for o in out] + [item])
                raise
        return out if out else None

    def get(self, block=True, timeout=None):
        """Remove and return the oldest message (as multiprocessing.Queue.get).

        Args:
            block: Wait for a message when the queue is empty (False: raise
                queue.Empty at once).
            timeout: With block, wait at most this many seconds (None: for
                ever).

        Returns:
            The message (bytes and str as they were put, anything else
            unpickled or decoded by the serializer).

        Raises:
            ShutDown: The queue was shut down and is empty (at once with
                shutdown(immediate=True)).
            queue.Empty: No message in time.
            UndecodableMessage: The message was taken but cannot be decoded
                (it is not given again; see its attributes).
            ValueError: The handle is closed, or timeout is negative.
            SegmentMismatch: The ring is damaged.
        """
        cdef pq_ring_record rec      # this call's: never the handle's (module docstring)
        cdef pq_ring_batch b
        cdef int rc
        cdef int64_t deadline
        cdef uint8_t typ
        cdef uint64_t pos
        self._check_open()
        deadline = _deadline(block, timeout)
        if self._held:
            try:
                held = self._take_held(1)
            except UndecodableMessage as e:
                raise _unwrap(e)
            if held is not None:
                return held[0]
        if is_shut_down_now(self._r.hdr):
            self._discard()
            raise ShutDown(f"queue {getattr(self, 'name', None)!r} is shut down")
        while True:
            rc = pq_ring_peek(&self._r, &rec, 1, &b)
            if rc > 0:
                typ = rec.type
                pos = rec.pos
                try:
                    obj = self._decode_fast(&rec)
                except BaseException:
                    # (MemoryError: the copy out failed; nothing of
                    # Python's ran) not taken: a stale read is marked
                    pq_ring_peek_abandon(&self._r, &b)
                    raise
                if pq_ring_take(&self._r, &b) == 0:
                    if self._r.trim_wanted:
                        self._trim()
                    # Taken: until pq_ring_taken_done, a death of this
                    # process counts the message as abandoned.
                    if typ == T_BYTES and not self._custom:
                        pq_ring_taken_done(&self._r)
                        return obj
                    try:
                        return self._finish_one(typ, obj, pos)
                    except UndecodableMessage as e:
                        # As multiprocessing.Queue.get: the decoder's own
                        # exception (position etc. in its notes).
                        raise _unwrap(e)
                    except BaseException:
                        # Interrupted while decoding (Ctrl-C): the message
                        # is kept for the next get, not lost.
                        self._hold([(HELD_RAW, typ, obj, pos)])
                        raise
                    finally:
                        pq_ring_taken_done(&self._r)
                continue
            if rc == 0:            # only abandoned/padding records: pass them
                pq_ring_consume(&self._r, &b)
                continue
            if rc == -ESTALE:
                continue
            if rc != -EAGAIN and rc != -EINPROGRESS:
                _check_rc(rc, "get")
            if rc == -EAGAIN and is_shut_down(self._r.hdr):
                # Shut down and drained (a record still being written is
                # waited for like any other).
                raise ShutDown(f"queue {getattr(self, 'name', None)!r} is shut down")
            if deadline == 0:
                if rc == -EINPROGRESS and self._repair_if_stuck(b.head):
                    continue
                raise _Empty
            if not self._park(False, 0, deadline):
                raise _Empty

    def get_nowait(self):
        """get(block=False).

        Returns:
            The oldest message.

        Raises:
            ShutDown: The queue was shut down and is empty (at once with
                shutdown(immediate=True)).
            queue.Empty: The queue is empty now.
            UndecodableMessage: The message cannot be decoded.
            ValueError: The handle is closed.
        """
        return self.get(False)

    cdef bint _finish_batch(self, list out, const pq_ring_record* recs, list raw, int n) except -1:
        """Decode the n taken messages raw[:n] (types and positions in
        this call's recs) into out. An undecodable one is reported alone:
        raised now when out is empty, else held to be raised by the next
        call (returns True: out is to be returned as it is); the ones after
        it are held for the next calls. Nothing taken is dropped: on any
        other exception (Ctrl-C) out and the rest are held again."""
        cdef int i, j
        for i in range(n):
            try:
                out.append(self._finish_one(recs[i].type, raw[i], recs[i].pos))
            except UndecodableMessage as e:
                rest = [(HELD_RAW, recs[j].type, raw[j], recs[j].pos) for j in range(i + 1, n)]
                if not out:
                    self._hold(rest)
                    raise
                self._hold([(HELD_ERR, e, None, None)] + rest)
                return True
            except BaseException:
                rest = [(HELD_RAW, recs[j].type, raw[j], recs[j].pos) for j in range(i, n)]
                self._hold([(HELD_OBJ, o, None, None) for o in out] + rest)
                del out[:]
                raise
        return False

    def get_many(self, max_messages=1024, block=True, timeout=None):
        """Take up to max_messages messages: waits (unless block is false)
        for at least one, then takes what is there, with one consume per up
        to 256 records.

        Args:
            max_messages: The most messages returned (at least 1).
            block: Wait for the first message (False: raise queue.Empty at
                once when there is none).
            timeout: With block, wait at most this many seconds (None: for
                ever).

        Returns:
            A non-empty list of messages, oldest first.

        Raises:
            ShutDown: The queue was shut down and is empty (at once with
                shutdown(immediate=True)).
            queue.Empty: No message in time.
            UndecodableMessage: Raised alone by the call that reaches an
                undecodable message first: the messages before it are
                returned by that call, the ones after it by the next calls.
            ValueError: max_messages is below 1, or the handle is closed.
        """
        cdef pq_ring_record recs[BATCH_MAX]   # this call's (module docstring)
        cdef pq_ring_batch b
        cdef int rc, i
        cdef int64_t deadline
        cdef uint32_t want
        cdef list out, raw
        cdef bint slow
        self._check_open()
        cdef Py_ssize_t nmax = check_max_messages(max_messages)
        deadline = _deadline(block, timeout)
        if self._held:
            held = self._take_held(nmax)
            if held is not None:
                return held
        if is_shut_down_now(self._r.hdr):
            self._discard()
            raise ShutDown(f"queue {getattr(self, 'name', None)!r} is shut down")
        out = []
        # The batches taken accumulate in this process's slot until they
        # are returned (pq_ring_taken_done): a death in between counts
        # them all as abandoned.
        try:
            while True:
                want = <uint32_t>min(nmax - len(out), BATCH_MAX)
                # (made before the peek: a container's allocation may run
                # the garbage collector, and so finalizers, Python code;
                # the copies below make bytes and str only, which do not)
                raw = PyList_New(0)
                rc = pq_ring_peek(&self._r, recs, want, &b)
                if rc > 0:
                    slow = False
                    try:
                        for i in range(rc):
                            o = self._decode_fast(&recs[i])
                            raw.append(o)
                            if recs[i].type != T_BYTES and (recs[i].type != T_STR
                                                            or type(o) is not str):
                                slow = True
                    except BaseException:
                        # (MemoryError: a copy out failed; as get's: this
                        # batch not taken, a stale read marked) What the
                        # batches before took is returned; the next call
                        # meets the failure again, with nothing taken.
                        pq_ring_peek_abandon(&self._r, &b)
                        if out:
                            return out
                        raise
                    if pq_ring_take(&self._r, &b) != 0:
                        continue
                    if self._r.trim_wanted:
                        self._trim()
                    if slow or self._custom:
                        if self._finish_batch(out, recs, raw, rc):
                            return out
                    else:
                        out.extend(raw)
                    if len(out) >= nmax:
                        return out
                    continue
                if rc == 0:
                    pq_ring_consume(&self._r, &b)
                    continue
                if rc == -ESTALE:
                    continue
                if out:
                    # What was taken is returned, whatever the next peek
                    # found (damage past it is raised by the next call).
                    return out
                if rc != -EAGAIN and rc != -EINPROGRESS:
                    _check_rc(rc, "get_many")
                if rc == -EAGAIN and is_shut_down(self._r.hdr):
                    raise ShutDown(f"queue {getattr(self, 'name', None)!r} is shut down")
                if deadline == 0:
                    if rc == -EINPROGRESS and self._repair_if_stuck(b.head):
                        continue
                    raise _Empty
                if not self._park(False, 0, deadline):
                    raise _Empty
        finally:
            pq_ring_taken_done(&self._r)

    # ------------------------------------------------------------ shutdown

    cdef int _discard(self) except -1:
        """Drop every readable message (shutdown(immediate=True), and a
        get that finds one committed after it): counted as dropped, one
        task done each for a JoinableQueue, as queue.Queue.shutdown does.
        Bounded: puts are refused once the flag is up."""
        while self._drop_oldest():
            if self._joinable:
                pq_ring_task_done(&self._r)
        return 0

    def shutdown(self, immediate=False):
        """Shut the queue down for every process (queue.Queue.shutdown of
        Python 3.13): puts raise ShutDown from now on, gets raise it once
        the queue is empty; every put and get blocked in any process wakes
        (and raises it, unless a message is there for a get). The flag is
        kept in the segment: handles opened later see it too. It is never
        lowered.

        Args:
            immediate: Also make gets raise ShutDown at once: the messages
                left are dropped (counted as dropped; one task_done each for
                a JoinableQueue, so that join() can return).

        Raises:
            ValueError: The handle is closed.
        """
        self._check_open()
        _check_rc(pq_ring_shutdown(&self._r, shutdown_how(immediate)), "shutdown")
        if immediate:
            self._discard()

    @property
    def is_shutdown(self):
        """True once the queue has been shut down (by any process)."""
        self._check_open()
        return is_shut_down(self._r.hdr)

    # ------------------------------------------------------------ state

    def qsize(self):
        """The exact number of messages in the queue.

        Counts the messages claimed and not yet taken, plus those this
        handle took and holds for its next get/get_many (after an
        undecodable one): a drain loop on empty() must not stop before them.

        Returns:
            The number of messages.

        Raises:
            ValueError: The queue is not attached.
        """
        if not self._mapped:
            raise ValueError("queue is not attached")
        return pq_ring_depth(&self._r) + len(self._held)

    def empty(self):
        """Whether qsize() is 0.

        Returns:
            True when the queue holds no message.

        Raises:
            ValueError: The queue is not attached.
        """
        return self.qsize() == 0

    def full(self):
        """Whether a put would find no room now.

        Returns:
            True at maxsize messages, or when not even a small message
            fits in the ring's free bytes.

        Raises:
            ValueError: The queue is not attached.
        """
        if not self._mapped:
            raise ValueError("queue is not attached")
        if self._r.maxsize and pq_ring_depth(&self._r) >= self._r.maxsize:
            return True
        cdef pq_ring_stats s
        pq_ring_get_stats(&self._r, &s)
        # The ring grows while the data area has room: full only when not
        # even a small message fits in what is left of it.
        return s.depth_bytes + pq_ring_record_size(64) * 2 > self._r.span

    def close(self):
        """Close this handle (other handles and processes are unaffected)."""
        self._closed = True
        if self._mapped:
            pq_ring_release_slot(&self._r)

    def _event_address(self, int which):
        """The address of one of the ring's events (pyqueue._aio): 0
        readable, 1 writable, 2 tasks done. Valid while this handle lives."""
        self._check_open()
        if not 0 <= which <= 2:
            raise ValueError("no such event")
        return PQ_RING_EVENT_ADDR(&self._r, which)

    def stats(self):
        """The queue's counters (all processes') and this handle's.

        Returns:
            A dict: enqueued, dequeued, rejected, dropped, abandoned
            (messages of producers that died in a put),
            abandoned_by_consumers, depth, depth_bytes, capacity_bytes,
            maxsize, waiting_producers, waiting_consumers, unfinished_tasks,
            and this handle's undecodable and held counts.

        Raises:
            ValueError: The queue is not attached.
        """
        cdef pq_ring_stats s
        if not self._mapped:
            raise ValueError("queue is not attached")
        # Count what consumers that died took with them (a /proc read per
        # consumer inside a take right now; nothing when none is).
        pq_ring_reap_dead_consumers(&self._r)
        pq_ring_get_stats(&self._r, &s)
        return {
            "enqueued": s.enqueued, "dequeued": s.dequeued,
            "rejected": s.rejected, "dropped": s.dropped, "abandoned": s.abandoned,
            "abandoned_by_consumers": s.abandoned_taken,
            "depth": s.depth, "depth_bytes": s.depth_bytes,
            "capacity_bytes": s.capacity, "maxsize": s.maxsize,
            "waiting_producers": s.waiting_producers,
            "waiting_consumers": s.waiting_consumers,
            "unfinished_tasks": s.unfinished_tasks,
            # this handle's: messages it reported as UndecodableMessage, and
            # messages it took and holds for its next get/get_many (after
            # an undecodable one); both are in dequeued
            "undecodable": self._undecodable, "held": len(self._held),
        }

    def _mark_shared(self):
        """A handle of this queue may now exist outside its creating
        handle (pickled, or opened by name): its creator's close() must not
        unlink an unnamed queue's name."""
        if self._mapped:
            pq_ring_mark_shared(&self._r)

    def _is_shared(self):
        if not self._mapped:
            return True
        return bool(pq_ring_is_shared(&self._r))

    @property
    def capacity_bytes(self):
        """The ring's size in bytes (a power of two)."""
        return self._r.capacity

    @property
    def maxsize(self):
        """The most messages the queue holds (0: no count limit)."""
        return self._r.maxsize

    @property
    def overflow_code(self):
        """The overflow policy as the C core's code (see Queue.overflow)."""
        return self._overflow

    @property
    def max_message_bytes(self):
        """The largest encoded message accepted, or None (no cap)."""
        return self._max_message or None

    @property
    def inline_max(self):
        """Messages larger than this many bytes travel out of band."""
        return self._inline_max

    # ------------------------------------------------------------ joinable

    def _task_done(self):
        if pq_ring_task_done(&self._r) < 0:
            raise ValueError("task_done() called too many times")

    def _join(self, timeout=None):
        cdef int64_t deadline = _deadline(True, timeout)
        cdef int64_t until
        cdef int rc
        while True:
            until = pq_monotonic_ns() + SLICE_NS
            if deadline >= 0 and deadline < until:
                until = deadline
            with nogil:
                rc = pq_ring_wait_tasks_done(&self._r, until)
            if rc == 0:
                return True
            if rc == -EINTR or rc == -ETIMEDOUT:
                PyErr_CheckSignals()
            if deadline >= 0 and pq_monotonic_ns() >= deadline:
                return False
