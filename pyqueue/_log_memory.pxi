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

    # --- large records: out of band (docs/design.md, "Log: large records") ---

    cdef list _encode_batch(self, list values, bytes kb, bytes hb):
        """[(encoded value, type)]: a value larger than max_record_bytes
        (less key and headers) goes to a segment of its own
        (pyqueue._oob) and its record holds the reference (T_OOB set).
        Those segments are unlinked again if encoding a later value
        fails."""
        cdef uint8_t typ
        cdef list datas = []
        cdef Py_ssize_t room = <Py_ssize_t>self._max_record - (
            (0 if kb is None else len(kb)) + len(hb))
        try:
            for v in values:
                d = self._encode_value(v, room, &typ)
                datas.append((d, typ))
        except BaseException:
            self._discard_datas(datas, 0)
            raise
        return datas

    cdef object _encode_value(self, obj, Py_ssize_t room, uint8_t* typ):
        """What goes into the ring for obj when room bytes are left for a
        value: its encoding, or the reference to a new out-of-band segment
        holding it (T_OOB set in *typ). Pickled with its protocol 5 buffers
        apart (a NumPy array's data): copied once, into the segment, when
        it goes out of band."""
        cdef list buffers
        t = type(obj)
        if self._dumps is not None:
            typ[0] = T_CUSTOM
            data = bytes(self._dumps(obj))
            if len(data) <= room:
                return data
            return self._out_of_band([data], len(data), room, typ)
        if t is bytearray or t is memoryview:
            with memoryview(obj) as mv:
                n = mv.nbytes
            if n > room:
                typ[0] = T_BYTES
                return self._out_of_band([obj], n, room, typ)  # no bytes() copy first
        if t is bytes or t is bytearray or t is memoryview or t is str:
            data = encode_plain(obj, typ, _dumps_p)
            if len(data) <= room:
                return data
            return self._out_of_band([data], len(data), room, typ)
        buffers = []
        data = _dumps_p(obj, buffers)
        typ[0] = T_PICKLE
        if buffers:
            parts = _oob.frame_buffers(data, buffers)
            total = sum([memoryview(x).nbytes for x in parts])
            if total > room:
                typ[0] = T_PICKLE_BUFFERS
                return self._out_of_band(parts, total, room, typ)
            parts = None
            data = _dumps_p(obj)  # small: in the ring, buffers in band
        buffers = None
        if len(data) <= room:
            return data
        return self._out_of_band([data], len(data), room, typ)

    cdef bytes _out_of_band(self, list parts, Py_ssize_t total, Py_ssize_t room, uint8_t* typ):
        """Write a value's parts into a new out-of-band segment; the
        reference padded with zeros to room bytes, T_OOB set in *typ. The
        caller unlinks it if the record is not appended."""
        if is_shut_down(self._l.hdr):  # no segment for nothing
            raise ShutDown(f"log {getattr(self, 'name', None)!r} is shut down")
        ref = _oob.put(self, parts, total)
        if len(ref) > room or len(ref) > REF_MAX:
            _oob.discard(self, ref)
            raise MessageTooLarge(
                f"the log's max_record_bytes ({self._max_record}) less the key and headers "
                f"({max(room, 0)} bytes left) cannot hold even the reference to an "
                "out-of-band value")
        typ[0] |= T_OOB
        # The record takes the ring space of the largest inline record
        # (zeros after the reference): retention by size then counts a
        # large record as one of the largest, so a partition keeps at most
        # a few segments (about 4), not one per reference-sized record
        # (thousands of large segments: /dev/shm full).
        return ref + bytes(room - len(ref))

    cdef int _discard_datas(self, list datas, Py_ssize_t start) except -1:
        """Unlink the segments of the out-of-band values of datas[start:]
        (never appended)."""
        cdef Py_ssize_t k
        for k in range(start, len(datas)):
            d, typ = datas[k]
            if <uint8_t>typ & T_OOB:
                _oob.discard(self, d[:REF_MAX])
        return 0

    cdef int _discard_refs(self, pq_refs* refs) except -1:
        """Unlink the segments of the out-of-band records an append or an
        expiry dropped (reported by the core, the start already past them:
        no read of them validates any more). A reference that does not
        name one of this log's segments is skipped (pyqueue._oob.discard).
        refs.reclaim is left as the core set it: the next append or expiry
        with these refs tells the core they are unlinked; interrupted here
        (KeyboardInterrupt, SIGKILL), they stay a pending reclaim that the
        next append or expiry of any process reports again (pq_refs.h)."""
        cdef uint32_t i, n = refs.count
        refs.count = 0
        for i in range(n):
            _oob.discard(self, PyBytes_FromStringAndSize(
                <const char*>refs.items[i].bytes, min(refs.items[i].len, REF_MAX)))
        return 0

    def _oob_segments(self):
        """The /dev/shm entries of the out-of-band segments named by the
        committed records still retained (for `pyqueue gc`: these are
        live), or None when a partition could not be read (its lock stayed
        busy)."""
        cdef pq_ref items[REFS_MAX]
        cdef pq_refs refs
        cdef uint64_t frm
        cdef LockWait lw
        cdef int rc
        cdef uint32_t i, part
        self._check_open()
        refs.items = items
        refs.max = REFS_MAX
        refs.reclaim = 0
        out = set()
        for part in range(self._nparts):
            frm = 0
            # Bounded: each page but the last reports REFS_MAX records.
            for _ in range(self._l.capacity // 16 // REFS_MAX + 2):
                refs.count = 0
                lw = LockWait(0, 0)
                rc = pq_log_scan_refs(&self._l, part, &frm, &refs)
                while lock_again(rc, &lw, LOCK_BOUNDED):
                    rc = pq_log_scan_refs(&self._l, part, &frm, &refs)
                if rc == PQ_ERR_LOCK_BUSY:
                    return None
                _check_rc(rc, "scan")
                for i in range(refs.count):
                    try:
                        _, name = _oob._parse(self, PyBytes_FromStringAndSize(
                            <const char*>refs.items[i].bytes, min(refs.items[i].len, REF_MAX)))
                    except SegmentMismatch:
                        continue
                    out.add(name.lstrip("/"))
                if rc == 0:
                    break
            else:
                return None
        return out

    cdef int _append_datas(self, uint32_t partition, list datas, bytes kb, bytes hb,
                           uint64_t ts_ms, list out) except -1:
        """Append encoded values, one claim per APPEND_MAX (and per half a
        ring): their offsets into out. The segments of the out-of-band
        records the appends drop are unlinked after each claim; those of
        values not appended (an error) before raising."""
        cdef pq_log_entry ents[APPEND_MAX]
        cdef pq_ref items[REFS_MAX]   # this call's, never the handle's
        cdef pq_refs refs
        cdef uint64_t first, s, e
        cdef Py_ssize_t i = 0, j, k, n = len(datas)
        cdef int rc
        cdef LockWait lw = LockWait(0, 0)
        cdef pq_log_writer wr
        cdef int64_t wstart = 0, wuntil = 0, now, until
        refs.items = items
        refs.max = REFS_MAX
        refs.reclaim = 0
        refs.count = 0
        try:
            if is_shut_down(self._l.hdr):
                raise ShutDown(f"log {getattr(self, 'name', None)!r} is shut down")
            while i < n:
                j = self._fill_entries(ents, datas, i, kb, hb, self._l.capacity // 2)
                # -ENOBUFS: out-of-band records dropped (or left pending
                # by a caller that died, or still being unlinked by
                # another) were reported, and nothing was appended: unlink
                # them, append again with the token, which ends (or moves
                # on) that reclaim. Each turn of this process moves a
                # reclaim on; a turn can repeat another appender's report
                # while that one unlinks (progress for the partition as a
                # whole, not a bound per call).
                # PQ_ERR_LOG_WRITER: the space is held by a record a live
                # appender is still writing (retention never passes it):
                # nothing changed; wait for its commit, with the GIL
                # released, in slices (Ctrl-C works), for as long as a
                # lock (LOCK_BOUNDED), then LockTimeout naming it.
                while True:
                    rc = pq_log_append_ex(&self._l, partition, ents, <uint32_t>j, ts_ms,
                                          &first, &refs, &wr)
                    while lock_again(rc, &lw, LOCK_BOUNDED):
                        rc = pq_log_append_ex(&self._l, partition, ents, <uint32_t>j, ts_ms,
                                              &first, &refs, &wr)
                    if rc == -ENOBUFS:
                        self._discard_refs(&refs)
                        continue
                    if rc != PQ_ERR_LOG_WRITER:
                        break
                    now = pq_monotonic_ns()
                    if wstart == 0:
                        wstart = now
                        wuntil = now + pq_lock_bounded_wait()
                    if now >= wuntil:
                        break
                    until = min(now + LOCK_SLICE_NS, wuntil)
                    with nogil:
                        pq_log_wait_writer(&self._l, partition, &wr, until)
                    PyErr_CheckSignals()
                    if is_shut_down(self._l.hdr):
                        raise ShutDown(f"log {getattr(self, 'name', None)!r} is shut down")
                if rc == PQ_ERR_LOG_WRITER:
                    from pyqueue.errors import writer_timeout, partial_append
                    err = writer_timeout("append", partition, wr.offset, wr.pid,
                                         (pq_monotonic_ns() - wstart) / 1e9)
                    raise partial_append(err, partition, out, n) if i > 0 else err
                if rc == PQ_ERR_LOCK_BUSY and i > 0:
                    # The claims before this one went in (each takes the lock
                    # anew): "nothing was changed, retry" would append them twice.
                    from pyqueue.errors import partial_append
                    raise partial_append(lock_timeout("append", &lw), partition, out, n)
                if rc != -ESTALE:
                    _check_rc(lock_fail(rc, &lw, "append"), "append")
                if j == 1:
                    out.append(first)
                else:
                    out.extend(range(first, first + j))
                i += j
                # A record dropped before its commit (a lap of the ring
                # while it was copied) was passed unreported: its own
                # segment goes now (no read of it validates).
                pq_log_bounds(&self._l, partition, &s, &e)
                if s > first:
                    for k in range(j):
                        if first + <uint64_t>k < s and <uint8_t>datas[i - j + k][1] & T_OOB:
                            _oob.discard(self, datas[i - j + k][0][:REF_MAX])
                if rc == -ESTALE:
                    # Claimed, but a record was dropped before its commit
                    # (this appender judged dead: pq_log_append_ex), whose
                    # commit left the newer header alone: not in the log.
                    from pyqueue.errors import PyQueueError
                    raise PyQueueError(
                        f"append: retention dropped a record of partition {partition} "
                        f"(offsets {first}..{first + j - 1}) before its commit (this process "
                        f"was judged dead): the offsets below {s} are not in the log")
        except BaseException:
            # (References reported and not yet unlinked stay a pending
            # reclaim: the next append or expiry unlinks them.)
            self._discard_datas(datas, i)
            raise
        return 0

    def _bounds(self, partition):
        cdef uint64_t s, e
        self._check_open()
        self._check_part(partition)
        pq_log_bounds(&self._l, partition, &s, &e)
        return s, e

    def _expire(self, uint32_t partition, uint64_t now_ms):
        """Retention by age without an append: the count dropped (the
        segments of the out-of-band records dropped are unlinked)."""
        self._check_open()
        self._check_part(partition)
        cdef pq_ref items[REFS_MAX]
        cdef pq_refs refs
        cdef LockWait lw
        cdef int rc
        refs.items = items
        refs.max = REFS_MAX
        refs.reclaim = 0
        total = 0
        # Bounded: each turn that reports references drops up to REFS_MAX
        # records (or reports a pending reclaim, which the next ends).
        for _ in range(2 * (self._l.capacity // 16 // REFS_MAX) + 4):
            refs.count = 0
            lw = LockWait(0, 0)
            rc = pq_log_expire_refs(&self._l, partition, now_ms, &refs)
            while lock_again(rc, &lw, LOCK_BOUNDED):
                rc = pq_log_expire_refs(&self._l, partition, now_ms, &refs)
            total += _check_rc(lock_fail(rc, &lw, "expire"), "expire")
            if refs.reclaim == 0:
                break  # nothing reported: nothing pending of ours
            # again once unlinked: with refs.reclaim, the reclaim ends
            # (and there may be more)
            self._discard_refs(&refs)
        return total

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
                oob = False
                for i in range(rc):
                    types[i] = recs[i].type
                    if recs[i].type & T_OOB:
                        oob = True
                self._make_records(recs, rc, partition, make, out, undecoded)
                if oob:
                    # Map each out-of-band segment before validating: an
                    # append or an expiry may drop the record and unlink
                    # its segment at any time (the mapping stays valid).
                    # Gone already (ENOENT) with a validation that then
                    # fails: the record was dropped, peek again (out of
                    # range); with one that passes: removed by hand, that
                    # record's PoisonRecord. Any other failure (EMFILE,
                    # ENOMEM) raises, the offset read again next time.
                    self._map_segments(out, first, rc, types)
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

    cdef int _map_segments(self, list out, Py_ssize_t first, int n,
                           const uint8_t* types) except -1:
        """Replace the reference of each out-of-band record of out[first:
        first + n] with a private mapping of its segment (or the
        PyQueueError met mapping it, raised when it is decoded)."""
        cdef Py_ssize_t k
        for i in range(n):
            if types[i] & T_OOB:
                k = first + i
                rec = out[k]
                try:
                    mv = _oob.read(self, rec[4])
                except PyQueueError as exc:
                    mv = exc
                out[k] = _new_record(type(rec), rec[0], rec[1], rec[2], rec[3], mv, rec[5])
        return 0

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
