# cython: language_level=3
"""Cython binding of the topic core (csrc/pq_topic.h): publish with
claim -> copy -> commit, subscriptions with peek -> copy -> advance.

Codec (the record type byte, as pyqueue._core): bytes and str raw, a custom
serializer's output, else pickle protocol 5 (buffers in band). Waiting
releases the GIL, in slices of at most 100 ms with signals checked between
them; a publisher blocked for a slice evicts dead subscribers, a subscriber
blocked for a slice repairs a dead publisher's record."""

cimport cython
from libc.stdint cimport uint8_t, int32_t, uint32_t, uint64_t, int64_t, uintptr_t
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport EAGAIN, EINTR, ETIMEDOUT, EMSGSIZE, EINPROGRESS, ESTALE, ENOSPC, ENOBUFS

import collections
import os
import pickle
import queue as _queue_mod
from types import GenericAlias as _GenericAlias

from pyqueue._core import default_dumps as _default_dumps_py
from pyqueue.errors import PyQueueError, SegmentMismatch, MessageTooLarge, UndecodableMessage
from pyqueue.errors import from_code as _from_code
from pyqueue import _events, _oob
from pyqueue.errors import ShutDown

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)

cdef extern from "<errno.h>" nogil:
    int EOWNERDEAD

cdef extern from "pq_wait.h" nogil:
    int64_t pq_monotonic_ns()

cdef extern from "pq_segment.h" nogil:
    ctypedef struct pq_segment_header:
        uint64_t params[16]
    int PQ_ERR_NOT_PYQUEUE, PQ_ERR_VERSION, PQ_ERR_KIND, PQ_ERR_TRUNCATED, PQ_ERR_CORRUPT

cdef extern from *:
    """
    #include "pq_topic.h"
    #define PQ_TOPIC_EVENT_ADDR(t, which) ((uintptr_t)((which) == 0 ? &(t)->ctl->readable : &(t)->ctl->writable))
    """
    uintptr_t PQ_TOPIC_EVENT_ADDR(void* t, int which)

cdef extern from "pq_topic.h" nogil:
    ctypedef struct pq_topic:
        pq_segment_header* hdr
        uint64_t capacity
        uint64_t max_payload
        int mode
    ctypedef struct pq_topic_sub:
        int slot
        uint64_t cursor
        uint64_t msgs
        uint64_t lost
    ctypedef struct pq_topic_record:
        uint64_t pos
        const uint8_t* payload
        uint32_t len
        uint8_t type
    ctypedef struct pq_topic_batch:
        uint64_t start
        uint64_t next
        uint32_t count
    ctypedef struct pq_topic_stats:
        uint64_t published, retained, capacity
        uint32_t subscribers, waiting_publishers, waiting_subscribers
    int PQ_TOPIC_PARAM_USER0
    uint64_t pq_topic_segment_size(uint64_t capacity)
    int pq_topic_create(void* base, size_t size, uint64_t capacity, int mode,
                        const uint64_t* user_params, int n_user_params)
    int pq_topic_open(pq_topic* t, void* base, size_t size)
    int pq_topic_claim(pq_topic* t, const uint32_t* lens, uint32_t n, uint64_t* pos_out,
                       uint64_t* needed_head)
    uint8_t* pq_topic_payload(const pq_topic* t, uint64_t pos)
    void pq_topic_commit(pq_topic* t, uint64_t pos, uint8_t type)
    void pq_topic_notify_readable(pq_topic* t)
    int pq_topic_wait_writable(pq_topic* t, uint64_t needed_head, int64_t deadline_ns,
                               uint32_t spin_ns)
    int pq_topic_evict_dead(pq_topic* t, uint64_t needed_head)
    int pq_topic_subscribe(pq_topic* t, pq_topic_sub* s, int start)
    int pq_topic_unsubscribe(pq_topic* t, pq_topic_sub* s)
    int pq_topic_peek(pq_topic* t, pq_topic_sub* s, pq_topic_record* out, uint32_t max,
                      pq_topic_batch* b)
    int pq_topic_advance(pq_topic* t, pq_topic_sub* s, const pq_topic_batch* b)
    int pq_topic_shutdown(pq_topic* t, uint32_t how)
    int pq_topic_wait_readable(pq_topic* t, const pq_topic_sub* s, int64_t deadline_ns,
                               uint32_t spin_ns)
    int pq_topic_repair(pq_topic* t, const pq_topic_sub* s)
    uint64_t pq_topic_lag(const pq_topic* t, const pq_topic_sub* s)
    void pq_topic_get_stats(const pq_topic* t, pq_topic_stats* st)
    ctypedef struct pq_topic_sub_stats:
        int32_t pid
        uint64_t lag, lost, read
    int PQ_TOPIC_SUBS
    int pq_topic_get_sub_stats(const pq_topic* t, int slot, pq_topic_sub_stats* out)
    int PQ_TOPIC_TYPE_OOB
    int PQ_TOPIC_REF_MAX
    ctypedef struct pq_topic_ref:
        uint32_t len
        uint8_t bytes[320]
    ctypedef struct pq_topic_refs:
        pq_topic_ref* items
        uint32_t max
        uint32_t count
        uint64_t reclaim
    int pq_topic_claim_refs(pq_topic* t, const uint32_t* lens, uint32_t n, uint64_t* pos_out,
                            uint64_t* needed_head, pq_topic_refs* refs)
    int pq_topic_trim(pq_topic* t, uint64_t limit, pq_topic_refs* refs)
    int pq_topic_scan_refs(pq_topic* t, uint64_t* frm, pq_topic_refs* refs)

from pyqueue._common cimport T_BYTES, T_STR, T_PICKLE, T_CUSTOM, T_PICKLE_BUFFERS, T_OOB
from pyqueue._common cimport encode_plain

# The core's out-of-band type bit is the codec's (pyqueue/_common.pxd).
assert PQ_TOPIC_TYPE_OOB == T_OOB and PQ_TOPIC_REF_MAX == 320

DEF BATCH_MAX = 256
DEF REFS_MAX = 16
DEF SLICE_NS = 100000000

LOSSLESS = 0
LOSSY = 1
FLAG_CUSTOM_SERIALIZER = 1
# The type bit of a record that names an out-of-band segment (pyqueue._oob).
OOB_FLAG = T_OOB

cdef uint32_t _spin = int(os.environ.get("PYQUEUE_SPIN_NS", "50000"))
cdef object _Empty = _queue_mod.Empty
cdef object _Full = _queue_mod.Full
cdef object _loads_p = pickle.loads
cdef object _dumps_p = _default_dumps_py   # multiprocessing's pickler (pyqueue/_codec.pxi)


_TOPIC_CODES = {
    ENOSPC: "all 64 subscriber slots of the topic are held by live subscribers",
    EOWNERDEAD: "this subscription was evicted",
}


cdef int _check_rc(int rc, str what="") except -1:
    """C return code -> exception, through pyqueue.errors.from_code (the one
    translation point), with the topic's own meanings of two codes."""
    if rc >= 0:
        return rc
    if rc == -EMSGSIZE:
        raise MessageTooLarge(f"{what}: message does not fit in the topic "
                              "(at most a quarter of capacity_bytes)")
    raise _from_code(rc, what, "topic", _TOPIC_CODES)


from pyqueue._common cimport deadline_ns as _deadline, check_max_messages
from pyqueue._common cimport shutdown_how, is_shut_down, is_shut_down_now
from pyqueue._common cimport (LockWait, lock_again, lock_timeout, set_lock_wait, pq_fault_rearm,
                              PQ_ERR_LOCK_BUSY, LOCK_BOUNDED)

set_lock_wait(None)


include "_module_hooks.pxi"


cdef inline int64_t _slice_end(int64_t deadline):
    cdef int64_t until = pq_monotonic_ns() + SLICE_NS
    if deadline >= 0 and deadline < until:
        return deadline
    return until


def create_segment(mm, uint64_t capacity, int mode, uint64_t flags):
    cdef Py_buffer view
    cdef uint64_t params[1]
    params[0] = flags
    PyObject_GetBuffer(mm, &view, PyBUF_WRITABLE)
    try:
        _check_rc(pq_topic_create(view.buf, view.len, capacity, mode, params, 1), "create")
    finally:
        PyBuffer_Release(&view)


def segment_size(uint64_t capacity):
    return pq_topic_segment_size(capacity)


# no_gc_clear (TopicCore, SubscriptionCore): the cycle collector must not
# clear the mapping (or a subscription's topic) before __dealloc__ is done
# with it; a cycle through them is broken at the other objects in it.
@cython.no_gc_clear
cdef class TopicCore:
    """A handle on a mapped topic segment (base of pyqueue.Topic).

    Subscriptable (``TopicCore[bytes]``) for type annotations only.
    """
    __class_getitem__ = classmethod(_GenericAlias)
    cdef pq_topic _t
    cdef Py_buffer _view
    cdef bint _mapped
    cdef readonly bint _closed
    cdef object _mm
    cdef object _dumps
    cdef object _loads
    cdef bint _custom
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        self._mapped = False
        self._closed = False

    def __dealloc__(self):
        if self._mapped:
            PyBuffer_Release(&self._view)
            self._mapped = False
        if self._mm is not None:
            try:
                self._mm.close()
            except Exception:
                pass

    def _attach(self, mm, serializer):
        PyObject_GetBuffer(mm, &self._view, PyBUF_WRITABLE)
        self._mapped = True
        self._mm = mm
        _check_rc(pq_topic_open(&self._t, self._view.buf, self._view.len), "open")
        flags = self._t.hdr.params[PQ_TOPIC_PARAM_USER0]
        if serializer is not None:
            self._dumps, self._loads = serializer
            self._custom = True
        elif flags & FLAG_CUSTOM_SERIALIZER:
            raise PyQueueError("this topic was created with a custom serializer: pass the "
                               "same serializer= to open it")

    cdef inline int _check_open(self) except -1:
        if self._closed or not self._mapped:
            raise ValueError(f"Topic {self!r} is closed")
        return 0

    cdef object _encode(self, obj, uint8_t* typ):
        if self._custom:
            typ[0] = T_CUSTOM
            return bytes(self._dumps(obj))
        return encode_plain(obj, typ, _dumps_p)

    cdef bytes _out_of_band(self, list parts, Py_ssize_t total, uint8_t* typ):
        """Write a message's parts into a new out-of-band segment
        (pyqueue._oob); the reference to put in the ring, T_OOB set in
        *typ. The caller unlinks it if the reference is not committed."""
        if is_shut_down(self._t.hdr):  # no segment for nothing
            raise ShutDown(f"topic {getattr(self, 'name', None)!r} is shut down")
        ref = _oob.put(self, parts, total)
        if <uint64_t>len(ref) > self._t.max_payload or len(ref) > PQ_TOPIC_REF_MAX:
            _oob.discard(self, ref)
            raise MessageTooLarge(f"the topic's max_message_bytes ({self._t.max_payload}) "
                                  "cannot hold even the reference to an out-of-band message")
        typ[0] |= T_OOB
        # The reference record takes the ring space of the largest inline
        # message (zeros after the reference): a lossless topic's
        # back-pressure, a lossy one's overwrite and the retention for
        # `start="earliest"` then count a large message as one of the
        # largest, so a topic holds at most a few segments (about
        # capacity / max_message_bytes), not one per reference-sized
        # record (thousands of segments: /dev/shm full).
        return ref + bytes(<Py_ssize_t>self._t.max_payload - len(ref))

    cdef bytes _encode_ring(self, obj, uint8_t* typ):
        """What goes into the ring for obj: its payload, or (T_OOB set in
        *typ) the reference to a new out-of-band segment holding it when
        it is larger than max_message_bytes. Pickled with its protocol 5
        buffers apart (a NumPy array's data): copied once, into the
        segment, when it goes out of band."""
        cdef list buffers
        t = type(obj)
        if not self._custom and (t is bytearray or t is memoryview):
            with memoryview(obj) as mv:
                n = mv.nbytes
            if <uint64_t>n > self._t.max_payload:
                typ[0] = T_BYTES
                return self._out_of_band([obj], n, typ)  # no bytes() copy first
        if self._custom or t is bytes or t is bytearray or t is memoryview or t is str:
            data = self._encode(obj, typ)
            if <uint64_t>len(data) <= self._t.max_payload:
                return data
            return self._out_of_band([data], len(data), typ)
        buffers = []
        data = _dumps_p(obj, buffers)
        typ[0] = T_PICKLE
        if buffers:
            parts = _oob.frame_buffers(data, buffers)
            total = sum([memoryview(x).nbytes for x in parts])
            if <uint64_t>total > self._t.max_payload:
                typ[0] = T_PICKLE_BUFFERS
                return self._out_of_band(parts, total, typ)
            parts = None
            data = _dumps_p(obj)  # small: in the ring, buffers in band
        buffers = None
        if <uint64_t>len(data) <= self._t.max_payload:
            return data
        return self._out_of_band([data], len(data), typ)

    def _oob_segments(self):
        """The /dev/shm entries of the out-of-band segments named by the
        committed records still in the ring (for `pyqueue gc`: these are
        live), or None when the ring could not be read to its end (the
        lock stayed busy, publishers kept ahead)."""
        cdef pq_topic_ref items[REFS_MAX]
        cdef pq_topic_refs refs
        cdef uint64_t frm = 0
        cdef LockWait lw
        cdef int rc
        cdef uint32_t i
        cdef uint64_t turns
        self._check_open()
        refs.items = items
        refs.max = REFS_MAX
        refs.reclaim = 0
        out = set()
        for turns in range(self._t.capacity // 16 // REFS_MAX + 2):
            refs.count = 0
            lw = LockWait(0, 0)
            rc = pq_topic_scan_refs(&self._t, &frm, &refs)
            while lock_again(rc, &lw, LOCK_BOUNDED):
                rc = pq_topic_scan_refs(&self._t, &frm, &refs)
            if rc == PQ_ERR_LOCK_BUSY:
                return None
            _check_rc(rc, "scan")
            for i in range(refs.count):
                # A padded record: the reference is its first bytes.
                try:
                    _, name = _oob._parse(self, PyBytes_FromStringAndSize(
                        <const char*>refs.items[i].bytes,
                        min(refs.items[i].len, PQ_TOPIC_REF_MAX)))
                except SegmentMismatch:
                    continue
                out.add(name.lstrip("/"))
            if rc == 0:
                return out
        return None

    cdef int _discard_refs(self, pq_topic_refs* refs) except -1:
        """Unlink the segments of the out-of-band records head passed (the
        claim or the trim reported them: no subscriber reads them any
        more). A reference that does not name one of this topic's
        segments is skipped (pyqueue._oob.discard). refs.reclaim is left
        as the core set it: the next claim or trim with these refs tells
        the core they are unlinked. Interrupted here (KeyboardInterrupt,
        SIGKILL), they stay a pending reclaim that the next claim or trim
        of any process reports again (pq_topic.h)."""
        cdef uint32_t i
        for i in range(refs.count):
            # A padded record: the reference is its first bytes (cut at
            # PQ_TOPIC_REF_MAX by the core; the reference itself is shorter).
            _oob.discard(self, PyBytes_FromStringAndSize(
                <const char*>refs.items[i].bytes, min(refs.items[i].len, PQ_TOPIC_REF_MAX)))
        refs.count = 0
        return 0

    cdef int _trim(self, uint64_t limit) except -1:
        """Release the out-of-band records every subscriber has passed
        (pq_topic_trim): their segments are unlinked. The lock is waited
        for as a non-blocking call's (LOCK_NOWAIT_NS, GIL released): a get
        or a close is not held up by a stopped lock holder; still busy,
        nothing is done (the next trim, or the claim that reclaims the
        records, does it)."""
        cdef pq_topic_ref items[REFS_MAX]
        cdef pq_topic_refs refs
        cdef LockWait lw
        cdef int rc
        refs.items = items
        refs.max = REFS_MAX
        refs.reclaim = 0
        while True:
            refs.count = 0
            lw = LockWait(0, 0)
            rc = pq_topic_trim(&self._t, limit, &refs)
            while lock_again(rc, &lw, 0):
                rc = pq_topic_trim(&self._t, limit, &refs)
            if rc == PQ_ERR_LOCK_BUSY:
                return 0
            _check_rc(rc, "release out-of-band messages")
            if refs.reclaim == 0:
                return 0  # nothing reported, nothing pending of ours
            self._discard_refs(&refs)
            # again: with refs.reclaim, the reclaim ends (and there may be more)

    cdef int _claim(self, uint32_t* lens, uint32_t n, uint64_t* pos, int64_t deadline,
                    pq_topic_refs* refs) except -1:
        """Claim room for n records. The out-of-band records the claim
        passes are reported first (-ENOBUFS, nothing claimed): their
        segments are unlinked here and the claim made again, which ends
        that reclaim (pq_topic.h). The caller commits - no Python code
        between claim and commit."""
        cdef int rc
        cdef uint64_t needed = 0
        cdef LockWait lw = LockWait(0, 0)
        refs.count = 0
        while True:
            # Shut down: no publish (a waiting one wakes and raises here).
            if is_shut_down(self._t.hdr):
                raise ShutDown(f"topic {getattr(self, 'name', None)!r} is shut down")
            rc = pq_topic_claim_refs(&self._t, lens, n, pos, &needed, refs)
            # The claim lock held by another publisher: wait for it with
            # the GIL released (pyqueue/_common.pxd), until the deadline.
            while lock_again(rc, &lw, deadline):
                rc = pq_topic_claim_refs(&self._t, lens, n, pos, &needed, refs)
            if rc == 0:
                return 0
            if rc == -ENOBUFS:
                # Out-of-band records passed (or left pending by a caller
                # that died): unlink them, claim again.
                self._discard_refs(refs)
                continue
            if rc == PQ_ERR_LOCK_BUSY:
                raise _Full
            if rc != -EAGAIN:
                _check_rc(rc, "publish")
            if deadline == 0 or (deadline > 0 and pq_monotonic_ns() >= deadline):
                raise _Full
            until = _slice_end(deadline)
            with nogil:
                rc = pq_topic_wait_writable(&self._t, needed, until, _spin)
            if rc == -EINTR or rc == -ETIMEDOUT:
                PyErr_CheckSignals()
            if rc == -ETIMEDOUT:
                # Blocked for a whole slice: a subscriber behind may be dead.
                if pq_topic_evict_dead(&self._t, needed) > 0:
                    _events.evicted(self, 1, "a lossless publisher waited on it")
                    self._trim(~(<uint64_t>0))

    def publish(self, obj, block=True, timeout=None):
        """Publish obj to every current subscriber.

        A message larger than max_message_bytes goes out of band: one
        shared-memory segment of its own that every subscriber maps (a
        NumPy array pickled with protocol 5 is copied once, into it), the
        ring holding a reference; the segment is removed once every
        subscriber has passed the message, or the ring drops it.

        Args:
            obj: The message (bytes and str as they are, anything else
                pickled or encoded by the topic's serializer).
            block: In a lossless topic, wait for the slowest live
                subscriber to make room (False: raise queue.Full at once).
                A lossy topic never waits.
            timeout: With block, wait at most this many seconds (None: for
                ever).

        Raises:
            ShutDown: The topic was shut down.
            queue.Full: No room in time (lossless topic).
            MessageTooLarge: max_message_bytes cannot hold even the
                reference to an out-of-band message (a tiny ring).
            ValueError: The topic handle is closed, or timeout is negative.
        """
        cdef uint8_t typ
        cdef uint32_t length
        cdef uint64_t pos
        cdef Py_ssize_t n
        cdef const char* ptr
        cdef pq_topic_ref items[REFS_MAX]
        cdef pq_topic_refs refs
        refs.items = items
        refs.max = REFS_MAX
        refs.reclaim = 0
        refs.count = 0
        self._check_open()
        cdef int64_t deadline = _deadline(block, timeout)
        if not self._custom and type(obj) is str:
            try:
                ptr = PyUnicode_AsUTF8AndSize(obj, &n)
                data = obj
            except UnicodeEncodeError:  # lone surrogates: kept, as encode_plain does
                data = (<str>obj).encode("utf-8", "surrogatepass")
                ptr = PyBytes_AS_STRING(data)
                n = PyBytes_GET_SIZE(data)
            typ = T_STR
            if <uint64_t>n > self._t.max_payload:
                data = self._out_of_band([PyBytes_FromStringAndSize(ptr, n)], n, &typ)
                ptr = PyBytes_AS_STRING(data)
                n = PyBytes_GET_SIZE(data)
        else:
            data = self._encode_ring(obj, &typ)
            ptr = PyBytes_AS_STRING(data)
            n = PyBytes_GET_SIZE(data)
        length = <uint32_t>n
        try:
            self._claim(&length, 1, &pos, deadline, &refs)
        except BaseException:
            if typ & T_OOB:
                _oob.discard(self, data)  # never in the ring: nobody else removes it
            raise
        # No Python code between claim and commit.
        memcpy(pq_topic_payload(&self._t, pos), ptr, n)
        pq_topic_commit(&self._t, pos, typ)
        pq_topic_notify_readable(&self._t)

    def publish_many(self, objs, block=True, timeout=None):
        """Publish every object of an iterable, in batched claims.

        Args:
            objs: The messages, in order.
            block: As publish().
            timeout: As publish(), for the whole call.

        Returns:
            The number of messages published.

        Raises:
            ShutDown: The topic was shut down.
            queue.Full: No room in time; the messages before the one that did
                not fit are published.
            MessageTooLarge: max_message_bytes cannot hold even the
                reference to an out-of-band message (a tiny ring).
            ValueError: The topic handle is closed.
        """
        cdef uint32_t lens[BATCH_MAX]
        cdef uint8_t types[BATCH_MAX]
        cdef uint64_t pos[BATCH_MAX]
        cdef uint32_t k = 0, i
        cdef uint64_t total = 0, rec
        cdef uint8_t typ
        cdef Py_ssize_t done = 0
        self._check_open()
        cdef int64_t deadline = _deadline(block, timeout)
        cdef list batch = []
        try:
            for obj in objs:
                data = self._encode_ring(obj, &typ)
                n = len(data)
                rec = 16 + ((n + 15) & ~15)
                if k == BATCH_MAX or (k > 0 and total + rec > self._t.capacity // 4):
                    try:
                        done += self._publish_batch(batch, lens, types, pos, k, deadline)
                    except BaseException:
                        # This message is in no batch yet: its segment too.
                        if typ & T_OOB:
                            _oob.discard(self, data)
                        raise
                    batch = []
                    k = 0
                    total = 0
                batch.append(data)
                lens[k] = <uint32_t>n
                types[k] = typ
                total += rec
                k += 1
            if k:
                done += self._publish_batch(batch, lens, types, pos, k, deadline)
                batch = []
        except BaseException:
            # The out-of-band segments of messages not published.
            for i in range(len(batch)):
                if types[i] & T_OOB:
                    _oob.discard(self, batch[i])
            raise
        return done

    cdef Py_ssize_t _publish_batch(self, list batch, uint32_t* lens, uint8_t* types,
                                   uint64_t* pos, uint32_t k, int64_t deadline) except -1:
        cdef uint32_t i
        cdef pq_topic_ref items[REFS_MAX]
        cdef pq_topic_refs refs
        refs.items = items
        refs.max = REFS_MAX
        refs.reclaim = 0
        refs.count = 0
        self._claim(lens, k, pos, deadline, &refs)
        # No Python code between claim and commit.
        for i in range(k):
            memcpy(pq_topic_payload(&self._t, pos[i]), PyBytes_AS_STRING(<bytes>batch[i]), lens[i])
            pq_topic_commit(&self._t, pos[i], types[i])
        pq_topic_notify_readable(&self._t)
        for i in range(k):
            types[i] = 0  # committed: publish_many's cleanup must not unlink their segments
        return k

    def _subscribe(self, int start, cls):
        self._check_open()
        cdef SubscriptionCore s = cls.__new__(cls)
        s._topic = self
        cdef LockWait lw = LockWait(0, 0)
        cdef int evicted
        cdef int rc = pq_topic_subscribe(&self._t, &s._s, start)
        while lock_again(rc, &lw, LOCK_BOUNDED):
            rc = pq_topic_subscribe(&self._t, &s._s, start)
        if rc == -ENOSPC:
            # Every slot held: free those of dead subscribers (a process
            # SIGKILLed before it closed its subscription; pid + start
            # time, so a reused pid is not taken for the dead one) and try
            # again.
            evicted = pq_topic_evict_dead(&self._t, ~(<uint64_t>0))
            while lock_again(evicted, &lw, LOCK_BOUNDED):
                evicted = pq_topic_evict_dead(&self._t, ~(<uint64_t>0))
            if evicted == PQ_ERR_LOCK_BUSY:
                raise lock_timeout("subscribe", &lw)
            if evicted < 0:
                _check_rc(evicted, "subscribe")
            if evicted > 0:
                _events.evicted(self, evicted, "its slot was wanted by a new subscriber")
                self._trim(~(<uint64_t>0))
                rc = pq_topic_subscribe(&self._t, &s._s, start)
                while lock_again(rc, &lw, LOCK_BOUNDED):
                    rc = pq_topic_subscribe(&self._t, &s._s, start)
            # else rc stays -ENOSPC: every slot is held by a live subscriber
        if rc == PQ_ERR_LOCK_BUSY:
            raise lock_timeout("subscribe", &lw)
        if rc == -ENOSPC:
            _events.subscribers_full(self, PQ_TOPIC_SUBS)
        _check_rc(rc, "subscribe")
        s._pid = os.getpid()
        return s

    def shutdown(self, immediate=False):
        """Shut the topic down for every process (as queue.Queue.shutdown
        of Python 3.13): publishes raise ShutDown from now on; each
        subscription's gets raise it once it has read everything published
        (a drain), and iterating over a subscription ends; every publish or
        get blocked in any process wakes. The flag is kept in the segment
        (handles opened later see it) and never lowered.

        Args:
            immediate: Make gets raise ShutDown at once, even with messages
                left unread (they are not erased: a topic's records go only
                when overwritten).

        Raises:
            ValueError: The handle is closed.
        """
        self._check_open()
        _check_rc(pq_topic_shutdown(&self._t, shutdown_how(immediate)), "shutdown")

    @property
    def is_shutdown(self):
        """True once the topic has been shut down (by any process)."""
        self._check_open()
        return is_shut_down(self._t.hdr)

    def stats(self):
        """The topic's counters.

        Returns:
            A dict: published, retained, capacity, subscribers,
            waiting_publishers, waiting_subscribers.

        Raises:
            ValueError: The topic handle is closed.
        """
        cdef pq_topic_stats st
        self._check_open()
        pq_topic_get_stats(&self._t, &st)
        return {"published": st.published, "retained": st.retained,
                "capacity": st.capacity, "subscribers": st.subscribers,
                "waiting_publishers": st.waiting_publishers,
                "waiting_subscribers": st.waiting_subscribers}

    def _subscribers(self):
        """Every held subscriber slot, for monitoring: a list of dicts
        {slot, pid, lag, lost, read}. Lock-free (a snapshot; a dead
        subscriber shows until a publisher or subscribe evicts it)."""
        cdef pq_topic_sub_stats st
        cdef int i
        self._check_open()
        out = []
        for i in range(PQ_TOPIC_SUBS):
            if pq_topic_get_sub_stats(&self._t, i, &st) == 0:
                out.append({"slot": i, "pid": st.pid, "lag": st.lag, "lost": st.lost,
                            "read": st.read})
        return out

    @property
    def capacity_bytes(self):
        """The ring's size in bytes."""
        return self._t.capacity

    @property
    def mode_code(self):
        """The delivery mode as the C core's code (see Topic.mode)."""
        return self._t.mode

    @property
    def max_message_bytes(self):
        """The largest encoded message a publish accepts."""
        return self._t.max_payload

    def close(self):
        """Close this handle (subscriptions made from it stop working;
        other handles and processes are unaffected)."""
        self._closed = True

    def _event_address(self, int which):
        """The address of the topic's readable (0) or writable (1) event
        (pyqueue._aio). Valid while this handle lives: close() does not
        unmap."""
        self._check_open()
        if not 0 <= which <= 1:
            raise ValueError("no such event")
        return PQ_TOPIC_EVENT_ADDR(&self._t, which)


@cython.no_gc_clear
cdef class SubscriptionCore:
    """One process's subscription to a topic (base of pyqueue.Subscription).

    Subscriptable (``SubscriptionCore[bytes]``) for type annotations only.
    """
    __class_getitem__ = classmethod(_GenericAlias)
    cdef pq_topic_sub _s
    cdef TopicCore _topic
    cdef object _pid
    cdef object _held              # deque: messages taken, for the next gets (see _read)
    cdef uint64_t _undecodable  # messages reported as UndecodableMessage

    def __cinit__(self, *args, **kwargs):
        self._held = collections.deque()

    def __dealloc__(self):
        if self._topic is not None and self._s.slot >= 0 and self._pid == os.getpid() \
                and self._topic._mapped:
            # Waits (bounded) for a lock another process holds; given up,
            # the slot is freed as a dead subscriber's once this process
            # has exited.
            try:
                self._unsubscribe()
            except BaseException:
                pass

    cdef int _unsubscribe(self) except -1:
        """Give the slot back, waiting (bounded, GIL released) for the
        topic's lock: a publisher holds it for a moment, and a busy lock
        must not leave the slot held (it would hold back a lossless topic
        for as long as this process lives). LockTimeout: still held."""
        cdef LockWait lw = LockWait(0, 0)
        cdef int rc = pq_topic_unsubscribe(&self._topic._t, &self._s)
        while lock_again(rc, &lw, LOCK_BOUNDED):
            rc = pq_topic_unsubscribe(&self._topic._t, &self._s)
        if rc == PQ_ERR_LOCK_BUSY:
            raise lock_timeout("close", &lw)
        _check_rc(rc, "close")
        return 0

    def _event_address(self):
        """The address of the topic's readable event (pyqueue._aio). Valid
        while this subscription lives (it keeps its topic handle)."""
        self._check()
        return PQ_TOPIC_EVENT_ADDR(&self._topic._t, 0)

    cdef inline int _check(self) except -1:
        if self._s.slot < 0 or self._topic is None:
            raise ValueError("subscription is closed")
        if self._topic._closed:
            raise ValueError("the topic of this subscription is closed")
        if self._pid != os.getpid():
            raise PyQueueError("a subscription belongs to the process that made it; "
                               "subscribe again in this process")
        return 0

    cdef object _decode(self, uint8_t typ, const uint8_t* p, uint32_t n):
        if typ == T_STR:
            try:
                return PyUnicode_DecodeUTF8(<const char*>p, n, "surrogatepass")
            except UnicodeDecodeError:
                pass  # torn (lapped: advance fails) or damaged (_finish reports it)
        return PyBytes_FromStringAndSize(<const char*>p, n)

    cdef object _finish_oob(self, uint8_t typ, obj):
        """An out-of-band message from the mapping of its segment (obj: a
        memoryview; or the exception met mapping it, raised here)."""
        cdef TopicCore t = self._topic
        cdef uint8_t base = typ & ~T_OOB
        if isinstance(obj, BaseException):
            raise obj
        if base == T_BYTES or base == T_STR:
            if t._custom:
                raise PyQueueError("message was not encoded with this topic's serializer")
            return bytes(obj) if base == T_BYTES else str(obj, "utf-8", "surrogatepass")
        if base == T_CUSTOM:
            if not t._custom:
                raise PyQueueError("message was encoded with a custom serializer this handle lacks")
            return t._loads(bytes(obj))
        if base == T_PICKLE or base == T_PICKLE_BUFFERS:
            if t._custom:
                raise PyQueueError("refusing to unpickle: this topic uses a custom serializer")
            if base == T_PICKLE:
                return _loads_p(obj)
            return _oob.unframe_buffers(obj)
        raise SegmentMismatch(f"unknown message type {typ}")

    cdef object _finish(self, uint8_t typ, obj):
        cdef TopicCore t = self._topic
        if typ & T_OOB:
            return self._finish_oob(typ, obj)
        if typ == T_BYTES or typ == T_STR:
            if t._custom:
                raise PyQueueError("message was not encoded with this topic's serializer")
            if typ == T_STR and type(obj) is not str:
                return (<bytes>obj).decode("utf-8", "surrogatepass")
            return obj
        if typ == T_CUSTOM:
            if not t._custom:
                raise PyQueueError("message was encoded with a custom serializer this handle lacks")
            return t._loads(obj)
        if typ == T_PICKLE:
            if t._custom:
                raise PyQueueError("refusing to unpickle: this topic uses a custom serializer")
            return _loads_p(obj)
        raise SegmentMismatch(f"unknown message type {typ}")

    cdef object _finish_one(self, uint8_t typ, obj, uint64_t pos):
        """_finish; any Exception of the decoder becomes UndecodableMessage
        (counted in undecodable)."""
        try:
            return self._finish(typ, obj)
        except Exception as e:
            self._undecodable += 1
            raw = obj.encode("utf-8", "surrogatepass") if type(obj) is str else obj
            raise UndecodableMessage(
                f"message at position {pos} of the topic cannot be decoded (type {typ}): "
                f"{type(e).__name__}: {e}",
                position=pos, type_code=typ, raw=raw, cause=e) from e

    cdef int _hold(self, list items) except -1:
        self._held.extendleft(reversed(items))
        return 0

    cdef object _take_held(self, Py_ssize_t max_messages):
        """What an earlier call took and kept (as RingQueue._take_held):
        a list, or raises the UndecodableMessage that is next; None when
        nothing is held. Items: (0, type, payload, position) to decode,
        (1, object) decoded, (2, exception) to raise."""
        cdef list out = []
        while len(out) < max_messages:
            try:
                item = self._held.popleft()
            except IndexError:
                break
            kind = item[0]
            if kind == 1:
                out.append(item[1])
                continue
            if kind == 2:
                if out:
                    self._hold([item])
                    return out
                raise item[1]
            try:
                out.append(self._finish_one(item[1], item[2], item[3]))
            except UndecodableMessage as e:
                if out:
                    self._hold([(2, e)])
                    return out
                raise
            except BaseException:
                self._hold([(1, o) for o in out] + [item])
                raise
        return out if out else None

    cdef list _read(self, uint32_t want, int64_t deadline):
        """Up to want messages (at least one unless deadline passes:
        raises queue.Empty). An undecodable message is raised alone: when
        it is not the first, the ones before it are returned and it is held
        (raised by the next call), with the ones after it."""
        cdef pq_topic_record recs[BATCH_MAX]   # this call's, never the handle's
        cdef pq_topic_batch b
        cdef int rc, i, j
        cdef TopicCore t = self._topic
        cdef list raw, out
        cdef int64_t until
        cdef LockWait lw = LockWait(0, 0)
        if is_shut_down_now(t._t.hdr):
            raise ShutDown(f"topic {getattr(t, 'name', None)!r} is shut down")
        while True:
            rc = pq_topic_peek(&t._t, &self._s, recs, want, &b)
            # A lapped reader of a lossy topic takes the topic's lock for a
            # moment (pq_topic_jump: head and its count as a pair), which a
            # publisher may hold: wait for it with the GIL released, until
            # the read's deadline (nothing was changed: the peek is simply
            # made again), then queue.Empty as for no message in time.
            while lock_again(rc, &lw, deadline):
                rc = pq_topic_peek(&t._t, &self._s, recs, want, &b)
            if rc == PQ_ERR_LOCK_BUSY:
                raise _Empty
            if rc >= 0:
                raw = [None] * rc
                oob = False
                for i in range(rc):
                    if recs[i].type & T_OOB:  # the reference; no copy of its padding
                        raw[i] = PyBytes_FromStringAndSize(<const char*>recs[i].payload,
                                                           min(recs[i].len, PQ_TOPIC_REF_MAX))
                    else:
                        raw[i] = self._decode(recs[i].type, recs[i].payload, recs[i].len)
                    if recs[i].type & T_OOB:
                        oob = True
                if oob:
                    # Map each out-of-band segment before the cursor passes
                    # its record: from then on a publisher or a trim may
                    # unlink it (the mapping stays valid). A segment gone
                    # already (a lossy topic lapped us: the advance fails;
                    # else removed by hand) is the message's error; any
                    # other failure (EMFILE, ENOMEM) raises with the cursor
                    # left where it is.
                    for i in range(rc):
                        if recs[i].type & T_OOB:
                            try:
                                raw[i] = _oob.read(t, raw[i])
                            except PyQueueError as e:
                                raw[i] = e
                if pq_topic_advance(&t._t, &self._s, &b) != 0:
                    continue  # lapped while copying (lossy), or another thread advanced
                if oob:
                    # The last subscriber to pass one frees it. Best effort
                    # (the next trim or the claim that reclaims it frees it
                    # otherwise); interrupted, the records read are kept.
                    try:
                        t._trim(self._s.cursor)
                    except Exception:
                        pass
                    except BaseException:
                        self._hold([(0, recs[j].type, raw[j], recs[j].pos) for j in range(rc)])
                        raise
                if rc == 0:
                    continue
                out = []
                for i in range(rc):
                    try:
                        out.append(self._finish_one(recs[i].type, raw[i], recs[i].pos))
                    except UndecodableMessage as e:
                        rest = [(0, recs[j].type, raw[j], recs[j].pos) for j in range(i + 1, rc)]
                        if not out:
                            self._hold(rest)
                            raise
                        self._hold([(2, e)] + rest)
                        return out
                    except BaseException:
                        self._hold([(1, o) for o in out] +
                                   [(0, recs[j].type, raw[j], recs[j].pos) for j in range(i, rc)])
                        raise
                return out
            if rc != -EAGAIN and rc != -EINPROGRESS:
                _check_rc(rc, "get")
            if rc == -EAGAIN and is_shut_down(t._t.hdr):
                raise ShutDown(f"topic {getattr(t, 'name', None)!r} is shut down")  # read to the end of a shut-down topic
            if deadline == 0 or (deadline > 0 and pq_monotonic_ns() >= deadline):
                if rc == -EINPROGRESS and deadline == 0:
                    if pq_topic_repair(&t._t, &self._s) > 0:
                        _events.repaired("topic", t)
                        continue
                raise _Empty
            until = _slice_end(deadline)
            with nogil:
                rc = pq_topic_wait_readable(&t._t, &self._s, until, _spin)
            if rc == -EINTR or rc == -ETIMEDOUT:
                PyErr_CheckSignals()
            if rc == -ETIMEDOUT:
                if _check_rc(pq_topic_repair(&t._t, &self._s), "repair") > 0:
                    _events.repaired("topic", t)

    def get(self, block=True, timeout=None):
        """Take the next message.

        Args:
            block: Wait for a message (False: raise queue.Empty at once).
            timeout: With block, wait at most this many seconds (None: for
                ever).

        Returns:
            The message.

        Raises:
            ShutDown: The topic was shut down and this subscription read
                everything (at once with shutdown(immediate=True)).
            queue.Empty: No message in time.
            UndecodableMessage: The message cannot be decoded (it is not
                given again).
            ValueError: The subscription or its topic handle is closed.
            PyQueueError: Used in another process than the one that
                subscribed.
        """
        self._check()
        cdef int64_t deadline = _deadline(block, timeout)
        if self._held:
            held = self._take_held(1)
            if held is not None:
                return held[0]
        return self._read(1, deadline)[0]

    def get_many(self, max_messages=1024, block=True, timeout=None):
        """Take up to max_messages messages; waits for at least one.

        Args:
            max_messages: The most messages returned (positive).
            block: Wait for the first message (False: raise queue.Empty at
                once).
            timeout: With block, wait at most this many seconds (None: for
                ever).

        Returns:
            A non-empty list of messages, in publish order.

        Raises:
            ShutDown: The topic was shut down and this subscription read
                everything (at once with shutdown(immediate=True)).
            queue.Empty: No message in time.
            UndecodableMessage: Raised alone by the call that reaches an
                undecodable message: the ones before it are returned, the
                ones after it come with the next calls.
            ValueError: max_messages is not positive, or the subscription is
                closed.
            PyQueueError: Used in another process.
        """
        self._check()
        cdef Py_ssize_t nmax = check_max_messages(max_messages)
        cdef int64_t deadline = _deadline(block, timeout)
        if self._held:
            held = self._take_held(nmax)
            if held is not None:
                return held
        cdef list out = self._read(<uint32_t>min(nmax, BATCH_MAX), deadline)
        while len(out) < nmax and not self._held:
            try:
                out += self._read(<uint32_t>min(nmax - len(out), BATCH_MAX), 0)
            except _queue_mod.Empty:
                break
            except UndecodableMessage as e:
                self._hold([(2, e)])  # raised by the next call, alone
                break
            except Exception:
                # What was read is returned (the cursor is past it); the
                # error (damage, eviction) is met again by the next call.
                break
        return out

    def close(self):
        """Give the subscription's slot back (closing twice does nothing).

        Raises:
            LockTimeout: The topic's lock stayed held by another process for
                the whole lock wait (a stopped peer): the subscription is
                still open; close again.
        """
        if self._topic is not None and self._s.slot >= 0:
            if self._pid == os.getpid() and self._topic._mapped:
                self._unsubscribe()
                self._s.slot = -1
                # It may have been the last subscriber behind an
                # out-of-band message: release what the others passed.
                try:
                    self._topic._trim(~(<uint64_t>0))
                except Exception:
                    pass  # best effort (a damaged ring: the next publish or get reports it)
            self._s.slot = -1

    @property
    def closed(self):
        """Whether the subscription is closed."""
        return self._s.slot < 0

    @property
    def lag(self):
        """Messages published and not yet read by this subscription.

        Raises:
            ValueError: The subscription is closed.
        """
        self._check()
        return pq_topic_lag(&self._topic._t, &self._s)

    @property
    def undecodable(self):
        """Messages this subscription reported as UndecodableMessage."""
        return self._undecodable

    @property
    def lost(self):
        """Messages this subscription missed (a lossy topic lapped it)."""
        return self._s.lost
