# Batches of the work queue (included by _workq.pyx): put_many claims room
# for many messages under one hold of the queue's lock (pq_wq_claim_many),
# get_many takes many (pq_wq_acquire_many), and a Batch settles what it
# holds under one hold (pq_wq_ack_many / pq_wq_nack_many).
#
# Threads sharing a handle: every array here is the call's own (or the
# Batch's, made for that call): nothing of the handle but the mapping is
# used, and Python code (unpickling, the dead-letter moves) runs only after
# the C calls are over.

from libc.stdlib cimport malloc, free
from libc.string cimport memset
from libc.stdint cimport int32_t

cdef extern from "pq_wq.h" nogil:
    ctypedef struct pq_wq_put:
        uint32_t len
        uint8_t type
        uint64_t key_hash
        uint64_t id
        uint8_t* payload
    int pq_wq_claim_many(pq_wq* q, pq_wq_put* p, uint32_t n, int64_t delay_ns,
                         uint64_t enqueued_ms, uint32_t* done, uint64_t* seen)
    void pq_wq_commit_many(pq_wq* q, const pq_wq_put* p, uint32_t n)
    int pq_wq_acquire_many(pq_wq* q, pq_wq_delivery* d, uint32_t max, uint32_t* got,
                           int64_t* wake_ns, uint64_t* seen)
    int pq_wq_ack_many(pq_wq* q, const uint64_t* ids, const uint32_t* deliveries, uint32_t n,
                       int32_t* results)
    int pq_wq_nack_many(pq_wq* q, const uint64_t* ids, const uint32_t* deliveries, uint32_t n,
                        int64_t delay_ns, int32_t* results)

DEF PUT_CHUNK = 1024   # claims per hold of the lock in put_many

# Batch._state values
DEF HELD = 0
DEF ACKED = 1
DEF NACKED = 2
DEF REJECTED = 3
_SETTLED_NAMES = (None, "acked", "nacked", "rejected")  # as pyqueue._api.SETTLED_NAMES
_DROPPED = object()


cdef bytes _key_bytes(key):
    if isinstance(key, str):
        return (<str>key).encode("utf-8")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise TypeError(f"key must be bytes or str, not {type(key).__name__}")


cdef object _wq_put_many(WorkQueueCore self, objs, keys, double delay, bint block, timeout):
    """Put every object of objs (keys: None, or one key or None per
    object): the list of their ids (a duplicate's: the first one's). On
    queue.Full the messages before the first that did not fit stay put
    (the exception's .ids lists them)."""
    cdef list datas = [], ids = []
    cdef bytes d
    cdef Py_ssize_t n, i, k, start = 0
    cdef uint8_t typ
    cdef uint32_t done
    cdef uint64_t seen
    cdef int rc
    cdef int64_t deadline, until
    cdef LockWait lw
    cdef pq_wq_put* p = NULL
    self._check_open()
    cdef int64_t delay_ns = seconds_ns(delay, "delay")
    items = list(objs)
    n = len(items)
    if keys is not None:
        keys = list(keys)
        if len(keys) != n:
            raise ValueError(f"put_many got {n} objects and {len(keys)} keys")
    if n == 0:
        return ids
    p = <pq_wq_put*>malloc(n * sizeof(pq_wq_put))
    if p == NULL:
        raise MemoryError()
    # position -> reference of a message sent out of band: its segment is
    # removed here unless its reference is committed (and not a duplicate).
    cdef dict oob = {}
    try:
        # Everything encoded (Python code) before anything is put; one
        # larger than max_message_bytes goes out of band (as put()).
        for i in range(n):
            o = items[i]
            if type(o) is bytes and not self._custom and \
                    <uint64_t>PyBytes_GET_SIZE(o) <= self._q.max_payload:
                d = o
                typ = T_BYTES
            else:
                d = self._encode_ring(o, &typ, False)
                if typ & T_OOB:
                    oob[i] = d
            datas.append(d)
            p[i].len = <uint32_t>PyBytes_GET_SIZE(d)
            p[i].type = typ
            p[i].key_hash = 0
            if keys is not None and keys[i] is not None:
                kb = _key_bytes(keys[i])
                p[i].key_hash = pq_wq_key_hash(PyBytes_AS_STRING(kb), len(kb))
        deadline = _deadline(block, timeout)
        now_ms = time.time_ns() // 1000000
        while True:
            k = n - start
            if k > PUT_CHUNK:
                k = PUT_CHUNK
            if is_shut_down(self._q.hdr):
                _raise_shutdown(self, ids)
            lw = LockWait(0, 0)
            rc = pq_wq_claim_many(&self._q, p + start, <uint32_t>k, delay_ns, now_ms, &done, &seen)
            while lock_again(rc, &lw, deadline):
                rc = pq_wq_claim_many(&self._q, p + start, <uint32_t>k, delay_ns, now_ms,
                                      &done, &seen)
            # Copy and commit what was claimed: no Python code in between.
            for i in range(start, start + done):
                if p[i].payload != NULL and p[i].len:
                    d = datas[i]
                    pq_fault_copy(p[i].payload, 0, PyBytes_AS_STRING(d), p[i].len, p[i].len)
            if done:
                pq_wq_commit_many(&self._q, p + start, done)
                for i in range(start, start + done):
                    ids.append(p[i].id)
                    ref = oob.pop(i, None)
                    if ref is not None and p[i].payload == NULL:
                        _oob.discard(self, ref)  # a duplicate: the first one stays
                start += done
            if start == n:
                return ids
            if rc == 0:
                continue  # a chunk done: the next one
            if rc == PQ_ERR_LOCK_BUSY:
                _raise_full(ids, None)
            if rc == -EINPROGRESS:
                # A key's first put is being written (maybe by this call:
                # committed above): wait until it is, then look again.
                until = pq_monotonic_ns() + SLICE_NS
                with nogil:
                    rc = pq_wq_wait_readable(&self._q, seen, until, 0)
                if rc == -EINTR or rc == -ETIMEDOUT:
                    PyErr_CheckSignals()
                if rc == -ETIMEDOUT:
                    self._reap_now(False)
                continue
            if rc != -EAGAIN and rc != -ENOSPC:
                _check_rc(rc, "put_many")
            if done:
                continue  # room may have come meanwhile
            if deadline == 0 or (deadline > 0 and pq_monotonic_ns() >= deadline):
                self._reap_now(False)  # a dead consumer may hold the room
                _raise_full(ids, "the dedup table is full (dedup_keys, dedup_window)"
                            if rc == -ENOSPC else None)
            until = pq_monotonic_ns() + SLICE_NS
            if deadline > 0 and deadline < until:
                until = deadline
            with nogil:
                rc = pq_wq_wait_writable(&self._q, seen, until, 0)
            if rc == -EINTR or rc == -ETIMEDOUT:
                PyErr_CheckSignals()
            if rc == -ETIMEDOUT:
                self._reap_now(False)
    except BaseException:
        for ref in oob.values():  # not committed: nobody else will remove them
            _oob.discard(self, ref)
        raise
    finally:
        free(p)


cdef int _raise_shutdown(WorkQueueCore self, list ids) except -1:
    e = ShutDown(f"work queue {getattr(self, 'name', None)!r} is shut down"
                 + (f" ({len(ids)} messages of put_many were put before)" if ids else ""))
    e.ids = ids
    raise e


cdef int _raise_full(list ids, why) except -1:
    from pyqueue._api import put_many_full  # the text every backend gives
    raise put_many_full(ids, why)


cdef object _wq_get_many(WorkQueueCore self, Py_ssize_t max_messages, bint block, timeout):
    """(batch, dead, poison): a Batch of up to max_messages deliveries this
    process holds (waits for one at least, as _get), the dead messages it
    got to move (kind 1 of _get: (id, deliveries, raw, type, enqueued_ms,
    reason)), and the undecodable ones ((id, deliveries, raw, type,
    enqueued_ms, exception), still held: to reject). queue.Empty when none
    came in time."""
    cdef pq_wq_delivery* d = NULL
    cdef int64_t wake, deadline, until, now
    cdef uint64_t seen
    cdef uint32_t got = 0, want, i
    cdef int rc
    cdef LockWait lw = LockWait(0, 0)
    cdef list dead = [], poison = [], values
    cdef Batch batch
    cdef Py_ssize_t k
    self._check_open()
    if max_messages < 1:
        raise ValueError("max_messages must be at least 1")
    want = self._q.nslots if <uint64_t>max_messages > self._q.nslots else <uint32_t>max_messages
    deadline = _deadline(block, timeout)
    d = <pq_wq_delivery*>malloc(want * sizeof(pq_wq_delivery))
    if d == NULL:
        raise MemoryError()
    try:
        if is_shut_down_now(self._q.hdr):
            raise ShutDown(f"work queue {getattr(self, 'name', None)!r} is shut down")
        while True:
            rc = pq_wq_acquire_many(&self._q, d, want, &got, &wake, &seen)
            while lock_again(rc, &lw, deadline):
                rc = pq_wq_acquire_many(&self._q, d, want, &got, &wake, &seen)
            if rc == PQ_ERR_LOCK_BUSY:
                raise _queue_mod.Empty
            if rc >= 0:
                break
            if rc != -EAGAIN:
                _check_rc(rc, "get_many")
            now = pq_monotonic_ns()
            if is_shut_down(self._q.hdr):
                if now >= self._next_reap:  # what dead consumers held first
                    self._reap_now(True)
                    continue
                raise ShutDown(f"work queue {getattr(self, 'name', None)!r} is shut down")
            if deadline == 0 or (deadline > 0 and now >= deadline):
                if now >= self._next_reap:  # a dead consumer may hold some
                    self._reap_now(True)
                    continue
                raise _queue_mod.Empty
            until = now + SLICE_NS
            if deadline > 0 and deadline < until:
                until = deadline
            if wake >= 0 and wake < until:
                until = wake
            with nogil:
                rc = pq_wq_wait_readable(&self._q, seen, until, SPIN_NS)
            if rc == -EINTR or rc == -ETIMEDOUT:
                PyErr_CheckSignals()
            self._reap_now(False)
        # The bytes stay until each message is done: copy them all out
        # before anything else (no Python code runs in these copies), into
        # the Batch made for this call.
        batch = Batch._new(self, got)
        values = batch.values
        now = pq_monotonic_ns()
        k = 0
        for i in range(got):
            raw = PyBytes_FromStringAndSize(<const char*>d[i].payload, d[i].len)
            if d[i].dead:
                dead.append((d[i].id, d[i].deliveries, raw, d[i].type, d[i].enqueued_ms,
                             REASONS.get(d[i].reason)))
                continue
            if now >= d[i].deadline_ns and self._held(d[i].id, d[i].deliveries) != 0:
                continue  # the copy outlasted the deadline, and it went to another
            batch._ids[k] = d[i].id
            batch._dels[k] = d[i].deliveries
            batch._enq_ms[k] = d[i].enqueued_ms
            batch._reasons[k] = d[i].reason
            batch._types[k] = d[i].type
            values.append(raw)
            k += 1
        batch._n = k
    finally:
        free(d)
    # From here on Python code runs (unpickling): only this call's objects.
    batch._decode_values(poison)
    return batch, dead, poison


@cython.final
cdef class Batch:
    """Deliveries taken together by WorkQueue.get_many(): values[i] is
    message ids[i], delivery delivery_counts[i]. Settle them together -
    ack() / nack() settle every one not settled yet under one hold of the
    queue's lock - or some of them (ack(indices) ...). As a context
    manager it acks what is left when the block ends normally and nacks it
    (with the exception's text) when it raises."""
    cdef uint64_t* _ids
    cdef uint32_t* _dels
    cdef uint64_t* _enq_ms
    cdef uint8_t* _reasons
    cdef uint8_t* _types
    cdef uint8_t* _state
    cdef Py_ssize_t _n
    cdef Py_ssize_t _held_n    # how many are HELD
    cdef readonly list values
    cdef WorkQueueCore _queue
    cdef dict _oob             # position -> reference of an out-of-band message

    def __cinit__(self):
        self._ids = NULL
        self._dels = NULL
        self._enq_ms = NULL
        self._reasons = NULL
        self._types = NULL
        self._state = NULL
        self._n = 0
        self._held_n = 0

    def __dealloc__(self):
        free(self._ids)
        free(self._dels)
        free(self._enq_ms)
        free(self._reasons)
        free(self._types)
        free(self._state)

    def __init__(self):
        raise TypeError("a Batch comes from WorkQueue.get_many()")

    @staticmethod
    cdef Batch _new(WorkQueueCore q, Py_ssize_t room):
        """An empty batch with room for `room` messages."""
        cdef Batch b = Batch.__new__(Batch)
        b._queue = q
        b.values = []
        if room < 1:
            room = 1
        b._ids = <uint64_t*>malloc(room * sizeof(uint64_t))
        b._dels = <uint32_t*>malloc(room * sizeof(uint32_t))
        b._enq_ms = <uint64_t*>malloc(room * sizeof(uint64_t))
        b._reasons = <uint8_t*>malloc(room)
        b._types = <uint8_t*>malloc(room)
        b._state = <uint8_t*>malloc(room)
        if (b._ids == NULL or b._dels == NULL or b._enq_ms == NULL or b._reasons == NULL or
                b._types == NULL or b._state == NULL):
            raise MemoryError()
        memset(b._state, HELD, room)
        return b

    cdef int _decode_values(self, list poison) except -1:
        """values[i] from its raw bytes (T_BYTES: as they are); an
        undecodable one is dropped from the batch into poison as (id,
        deliveries, raw, type, enqueued_ms, exception), still held."""
        cdef Py_ssize_t i, k = 0
        cdef list values = self.values
        cdef dict oob = {}
        for i in range(self._n):
            ref = values[i]
            if self._types[i] != T_BYTES or self._queue._custom:
                try:
                    values[i] = _decode(self._queue, self._types[i], values[i])
                except Exception as e:
                    poison.append((self._ids[i], self._dels[i], values[i], self._types[i],
                                   self._enq_ms[i], e))
                    values[i] = _DROPPED
                    continue
            if k != i:
                self._ids[k] = self._ids[i]
                self._dels[k] = self._dels[i]
                self._enq_ms[k] = self._enq_ms[i]
                self._reasons[k] = self._reasons[i]
                self._types[k] = self._types[i]
            if self._types[k] & T_OOB:
                oob[k] = ref  # removed when acked (ack())
            k += 1
        if k != self._n:
            self.values = [v for v in values if v is not _DROPPED]
        self._n = k
        self._held_n = k
        self._oob = oob
        return 0

    def __len__(self):
        return self._n

    def __iter__(self):
        return iter(self.values)

    def __getitem__(self, i):
        return self.values[i]

    def __bool__(self):
        return self._n > 0

    @property
    def ids(self):
        return [self._ids[i] for i in range(self._n)]

    @property
    def delivery_counts(self):
        return [self._dels[i] for i in range(self._n)]

    @property
    def enqueued_at(self):
        return [self._enq_ms[i] / 1000.0 for i in range(self._n)]

    @property
    def redelivered_because(self):
        """Per message: None, "nacked", "visibility timeout", "consumer died"."""
        return [REASONS.get(self._reasons[i]) for i in range(self._n)]

    @property
    def settled(self):
        """Per message: None (held), "acked", "nacked" or "rejected"."""
        return [_SETTLED_NAMES[self._state[i]] for i in range(self._n)]

    cdef list _pick(self, indices):
        """The positions to settle: every one held (indices None; None
        when that is all of them), or the
        given ones (IndexError, ValueError for one settled already: nothing
        is settled then)."""
        cdef Py_ssize_t i
        if indices is None:
            if self._held_n == self._n:
                return None  # all of them, in order (_settle's fast path)
            return [i for i in range(self._n) if self._state[i] == HELD]
        out = []
        for j in indices:
            i = j
            if i < 0:
                i += self._n
            if not 0 <= i < self._n:
                raise IndexError(f"batch index {j} out of range (len {self._n})")
            if self._state[i] != HELD:
                raise ValueError(f"message {self._ids[i]} of the batch was "
                                 f"{_SETTLED_NAMES[self._state[i]]} already")
            out.append(i)
        return out

    cdef int _settle(self, list pick, int verb, int64_t delay_ns, list stale,
                     list to_move) except -1:
        """ack (verb ACKED) or nack (NACKED) the positions in pick (None:
        all) under one hold of the lock; fills stale (positions no longer
        this process's) and to_move (nacked on their last delivery: dead,
        to move)."""
        cdef bint whole = pick is None
        cdef Py_ssize_t m = self._n if whole else len(pick), j, i
        cdef uint64_t* ids = NULL
        cdef uint32_t* dels = NULL
        cdef int32_t* res = NULL
        cdef int rc
        cdef LockWait lw = LockWait(0, 0)
        if m == 0:
            return 0
        self._queue._check_open()
        res = <int32_t*>malloc(m * sizeof(int32_t))
        try:
            if res == NULL:
                raise MemoryError()
            if whole:  # all of them, in order: the batch's own arrays
                ids, dels = self._ids, self._dels
            else:
                ids = <uint64_t*>malloc(m * sizeof(uint64_t))
                dels = <uint32_t*>malloc(m * sizeof(uint32_t))
                if ids == NULL or dels == NULL:
                    raise MemoryError()
                for j in range(m):
                    i = pick[j]
                    ids[j] = self._ids[i]
                    dels[j] = self._dels[i]
            if verb == ACKED:
                rc = pq_wq_ack_many(&self._queue._q, ids, dels, <uint32_t>m, res)
                while lock_again(rc, &lw, LOCK_BOUNDED):
                    rc = pq_wq_ack_many(&self._queue._q, ids, dels, <uint32_t>m, res)
                _check_rc(lock_fail(rc, &lw, "ack"), "ack")
            else:
                rc = pq_wq_nack_many(&self._queue._q, ids, dels, <uint32_t>m, delay_ns, res)
                while lock_again(rc, &lw, LOCK_BOUNDED):
                    rc = pq_wq_nack_many(&self._queue._q, ids, dels, <uint32_t>m, delay_ns, res)
                _check_rc(lock_fail(rc, &lw, "nack"), "nack")
            for j in range(m):
                i = j if whole else pick[j]
                if res[j] < 0:
                    stale.append(i)
                    continue
                self._state[i] = verb
                self._held_n -= 1
                if res[j] == 1:
                    to_move.append(i)
        finally:
            free(res)
            if not whole:
                free(ids)
                free(dels)
        return 0

    cdef _expired(self, str what, list stale):
        from pyqueue._api import batch_expired  # the text every backend gives
        return batch_expired(what, self.ids, stale)

    def ack(self, indices=None):
        """Done: the messages go away - every one not settled yet, or those
        at the given positions. DeliveryExpired (its .indices: the
        positions) for those no longer this consumer's; the rest are acked
        all the same."""
        cdef list stale = [], to_move = []
        cdef Py_ssize_t i
        self._settle(self._pick(indices), ACKED, 0, stale, to_move)
        if self._oob:
            # Only the acks that committed (this consumer's deliveries):
            # their out-of-band segments go (the stale ones are another's).
            for i in list(self._oob):
                if self._state[i] == ACKED:
                    _oob.discard(self._queue, self._oob.pop(i))
        if stale:
            raise self._expired("ack", stale)

    def nack(self, indices=None, delay=0.0, error=None):
        """Deliver them again (from delay seconds on); those on their last
        allowed delivery go to the dead-letter queue instead, with error.
        DeliveryExpired as for ack()."""
        cdef list stale = [], to_move = []
        cdef int64_t delay_ns = seconds_ns(_check_seconds(delay, "delay"), "delay")
        self._settle(self._pick(indices), NACKED, delay_ns, stale, to_move)
        first = None
        for i in to_move:
            n = self._dels[i]
            try:
                self._queue._move_dead(self._ids[i], n, self._enq_ms[i] / 1000.0,
                                       f"delivered {n} times, last: nacked", error)
            except BaseException as e:  # parked by _move_dead: the others still go
                if first is None:
                    first = e
        if first is not None:
            raise first
        if stale:
            raise self._expired("nack", stale)

    def reject(self, indices=None, reason="rejected"):
        """Straight to the dead-letter queue (poison), with reason, as
        Delivery.reject (one lock hold each)."""
        cdef list stale = []
        cdef Py_ssize_t i
        pick = self._pick(indices)
        for i in (range(self._n) if pick is None else pick):
            rc = self._queue._reject(self._ids[i], self._dels[i])
            if rc < 0:
                stale.append(i)
                continue
            self._state[i] = REJECTED
            self._held_n -= 1
            self._queue._move_dead(self._ids[i], self._dels[i], self._enq_ms[i] / 1000.0,
                                   f"rejected: {reason}", reason)
        if stale:
            raise self._expired("reject", stale)

    def extend(self, seconds, indices=None):
        """Keep the messages not settled (or those given) for `seconds`
        more from now."""
        cdef list stale = []
        cdef Py_ssize_t i
        cdef double s = _check_seconds(seconds, "seconds")
        pick = self._pick(indices)
        for i in (range(self._n) if pick is None else pick):
            if self._queue._extend(self._ids[i], self._dels[i], s) < 0:
                stale.append(i)
        if stale:
            raise self._expired("extend", stale)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.ack()
        else:
            self.nack(error=f"{exc_type.__name__}: {exc}")
        return False

    def __reduce__(self):
        raise TypeError("a Batch belongs to the process that got it")

    def __repr__(self):
        return f"<pyqueue.Batch of {self._n} messages, {self._held_n} held>"
