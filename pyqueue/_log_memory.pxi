# Included by _log.pyx: the memory-mode core (csrc/pq_log.h). Append is
# claim -> copy -> commit in C; a read is peek -> copy -> validate (an
# appender may overwrite what was copied: then peek again); a reader
# blocked for a slice repairs a record left CLAIMED by a dead appender.

def memory_create_segment(mm, uint32_t partitions, uint64_t capacity, uint64_t retention_ms,
                          uint64_t flags=0):
    cdef Py_buffer view
    PyObject_GetBuffer(mm, &view, PyBUF_WRITABLE)
    try:
        _check_rc(pq_log_create(view.buf, view.len, partitions, capacity, retention_ms, flags),
                  "create")
    finally:
        PyBuffer_Release(&view)


def memory_segment_size(uint32_t partitions, uint64_t capacity):
    cdef uint64_t n = pq_log_segment_size(partitions, capacity)
    if n == 0:
        raise ValueError("partitions must be 1..256")
    return n


# no_gc_clear: the cycle collector must not clear the mapping (_mm, the
# buffer view) of a core something may still read through; a cycle through
# it is broken at the other objects in it.
@cython.no_gc_clear
cdef class MemoryLogCore(LogCoreBase):
    """A handle on a mapped memory-mode log segment (base of
    pyqueue.log.MemoryLog)."""
    cdef pq_log _l
    cdef Py_buffer _view
    cdef bint _mapped
    cdef object _mm

    def __cinit__(self, *args, **kwargs):
        self._mapped = False

    def __dealloc__(self):
        if self._mapped:
            PyBuffer_Release(&self._view)
            self._mapped = False
        if self._mm is not None:
            try:
                self._mm.close()
            except Exception:
                pass

    def _attach(self, mm):
        PyObject_GetBuffer(mm, &self._view, PyBUF_WRITABLE)
        self._mapped = True
        self._mm = mm
        _check_rc(pq_log_open(&self._l, self._view.buf, self._view.len), "open")
        self._nparts = self._l.partitions
        self._max_record = self._l.max_payload - 24

    @property
    def capacity_bytes(self):
        """Bytes of each partition's ring (its retention by size)."""
        return self._l.capacity

    @property
    def retention_ms(self):
        """Records older than this many milliseconds are dropped, or None."""
        return self._l.retention_ms or None

    def _group_table(self):
        self._check_open()
        return GroupTable._of(self, &self._l.groups)

    cdef int _append_datas(self, uint32_t partition, list datas, bytes kb, bytes hb,
                           uint64_t ts_ms, list out) except -1:
        """Append encoded values, one claim per APPEND_MAX (and per half a
        ring): their offsets into out."""
        cdef pq_log_entry ents[APPEND_MAX]
        cdef uint64_t first
        cdef Py_ssize_t i = 0, j, n = len(datas)
        cdef int rc
        cdef LockWait lw = LockWait(0, 0)
        if is_shut_down(self._l.hdr):
            raise ShutDown(f"log {getattr(self, 'name', None)!r} is shut down")
        while i < n:
            j = self._fill_entries(ents, datas, i, kb, hb, self._l.capacity // 2)
            rc = pq_log_append(&self._l, partition, ents, <uint32_t>j, ts_ms, &first)
            while lock_again(rc, &lw, LOCK_BOUNDED):
                rc = pq_log_append(&self._l, partition, ents, <uint32_t>j, ts_ms, &first)
            if rc == PQ_ERR_LOCK_BUSY and i > 0:
                # The claims before this one went in (each takes the lock
                # anew): "nothing was changed, retry" would append them twice.
                from pyqueue.errors import partial_append
                raise partial_append(lock_timeout("append", &lw), partition, out, n)
            _check_rc(lock_fail(rc, &lw, "append"), "append")
            if j == 1:
                out.append(first)
            else:
                out.extend(range(first, first + j))
            i += j
        return 0

    def _bounds(self, partition):
        cdef uint64_t s, e
        self._check_open()
        self._check_part(partition)
        pq_log_bounds(&self._l, partition, &s, &e)
        return s, e

    def _expire(self, uint32_t partition, uint64_t now_ms):
        """Retention by age without an append: the count dropped."""
        self._check_open()
        self._check_part(partition)
        cdef LockWait lw = LockWait(0, 0)
        cdef int rc = pq_log_expire(&self._l, partition, now_ms)
        while lock_again(rc, &lw, LOCK_BOUNDED):
            rc = pq_log_expire(&self._l, partition, now_ms)
        return _check_rc(lock_fail(rc, &lw, "expire"), "expire")

    def _read(self, uint32_t partition, uint64_t offset, Py_ssize_t max_records, double timeout,
              make):
        """Records from offset (waits up to timeout seconds for the first:
        an empty list when none came). make(partition, offset, ts, key,
        value, headers) builds each record."""
        cdef pq_log_record recs[BATCH_MAX]   # this call's, never the handle's
        cdef uint8_t types[BATCH_MAX]
        cdef pq_log_batch b
        cdef int rc, i
        cdef int64_t deadline, until
        cdef uint32_t want
        cdef uint64_t s, e
        cdef uint8_t undecoded[BATCH_MAX]
        cdef Py_ssize_t first
        self._check_open()
        self._check_part(partition)
        if max_records <= 0:
            raise ValueError("max_records must be positive")
        _check_make(make)
        deadline = _deadline_of(timeout)
        cdef list out = []
        while True:
            want = <uint32_t>min(max_records - len(out), BATCH_MAX)
            rc = pq_log_peek(&self._l, partition, offset, recs, want, &b)
            if rc >= 0:
                first = len(out)
                for i in range(rc):
                    types[i] = recs[i].type
                self._make_records(recs, rc, partition, make, out, undecoded)
                if pq_log_validate(&self._l, partition, &b) != 0:
                    del out[first:]
                    continue  # overwritten while copying: peek again (may be out of range)
                if self._decode_records(out, first, rc, make, types, undecoded):
                    return out  # an undecodable record next: the next read raises
                offset = b.next_offset
                if len(out) >= max_records:
                    return out
                continue
            if rc == PQ_ERR_OFFSET_RANGE:
                if out:
                    return out  # dropped after what we returned: the next read says so
                pq_log_bounds(&self._l, partition, &s, &e)
                raise self._out_of_range(partition, offset, s, e)
            if rc == PQ_ERR_CORRUPT:
                if out:
                    return out  # the good ones first; the next read names it
                raise CorruptRecord(
                    f"log: the record at offset {offset} of partition {partition} (or the ring "
                    f"headers before it) is corrupt; skip it with seek({partition}, "
                    f"{offset + 1})", partition=partition, offset=offset)
            if rc != -EAGAIN and rc != -EINPROGRESS:
                _check_rc(rc, "read")
            if out:
                return out
            if rc == -EAGAIN and is_shut_down(self._l.hdr):
                raise ShutDown(f"log {getattr(self, 'name', None)!r} is shut down")  # read to the end of a shut-down log
            if not _time_left(deadline):
                if rc == -EINPROGRESS and pq_log_repair(&self._l, partition, offset) > 0:
                    _events.repaired("log", self, f" in partition {partition}")
                    continue
                return out
            until = _slice_end(deadline)
            with nogil:
                rc = pq_log_wait(&self._l, partition, offset, until, SPIN_NS)
            if rc == -EINTR or rc == -ETIMEDOUT:
                PyErr_CheckSignals()
            if rc == -ETIMEDOUT:
                if _check_rc(pq_log_repair(&self._l, partition, offset), "repair") > 0:
                    _events.repaired("log", self, f" in partition {partition}")

    def _wait_any(self, list parts, list offsets, GroupTable groups, uint32_t g,
                  uint64_t gen_seen, double timeout):
        """Wait (one slice at most) until a partition has a record at its
        offset or group g rebalances. 0, or -ETIMEDOUT; signals raise."""
        cdef uint32_t pv[MAX_PARTITIONS]
        cdef uint64_t ov[MAX_PARTITIONS]
        cdef int n = _fill_waits(parts, offsets, pv, ov)
        cdef const pq_gen_word* gen = NULL
        cdef int rc
        self._check_open()
        if groups is not None:
            gen = pq_group_generation_word(groups.t, g)
        cdef int64_t until = _slice_end(_deadline_of(timeout))
        with nogil:
            rc = pq_log_wait_any(&self._l, pv, ov, n, gen, gen_seen, until, SPIN_NS)
        if rc == -EINTR or rc == -ETIMEDOUT:
            PyErr_CheckSignals()
        if rc == -ETIMEDOUT:
            for i in range(n):  # a dead appender's record blocks nobody
                if pq_log_repair(&self._l, pv[i], ov[i]) > 0:
                    _events.repaired("log", self, f" in partition {pv[i]}")
        return 0 if rc == -EINTR else rc

    def _shutdown(self, bint immediate):
        self._check_open()
        _check_rc(pq_log_shutdown(&self._l, shutdown_how(immediate)), "shutdown")

    def _shutdown_state(self):
        self._check_open()
        return is_shut_down(self._l.hdr)

    def _event_address(self):
        """The address of the log-wide event, notified on every append and
        every rebalance (pyqueue._aio). Valid while this handle lives:
        close() does not unmap."""
        self._check_open()
        return PQ_LOG_APPENDED_ADDR(&self._l)

    def close(self):
        """Close this handle (other handles and processes are unaffected)."""
        self._closed = True
