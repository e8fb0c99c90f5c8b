# Included by _log.pyx: the directory-mode core (csrc/pq_dlog.h,
# csrc/pq_dseg.h). The files themselves (names, creation, trimming,
# listing, removal, recovery) are pyqueue/_logdir.py's; this file maps
# them for the C core: SegmentMap is one mapped segment, DirLogCore the
# control file plus the segments this process has mapped. Appends run
# under the partition's robust lock (DirLogCore._lock); a roll or retention
# runs Python code of the subclass under that lock.

def control_size(uint32_t partitions, uint32_t max_groups):
    cdef uint64_t n = pq_dlog_control_size(partitions, max_groups)
    if n == 0:
        raise ValueError("partitions must be 1..256")
    return n


def control_create(mm, uint32_t partitions, uint64_t segment_bytes, uint32_t max_groups):
    cdef Py_buffer view
    PyObject_GetBuffer(mm, &view, PyBUF_WRITABLE)
    try:
        _check_rc(pq_dlog_create(view.buf, view.len, partitions, segment_bytes, max_groups),
                  "create control")
    finally:
        PyBuffer_Release(&view)


def index_file_size(uint64_t segment_bytes):
    return pq_dseg_index_file_size(segment_bytes)


cdef object _index_header(const void* ix, uint64_t file_size, uint64_t base_offset, what):
    """The sealed header of an index file as a dict; None when it is not
    sealed; CorruptRecord when it is damaged."""
    cdef pq_dseg_index_header h
    rc = pq_dseg_index_read(ix, file_size, base_offset, &h)
    if rc == -ENODATA:
        return None
    if rc < 0:
        raise CorruptRecord(f"{what}: index header is corrupt", path=str(what))
    return {"entries": h.entries, "end_pos": h.end_pos, "records": h.records,
            "max_timestamp_ms": h.max_timestamp_ms}


def index_header_of(bytes head, uint64_t file_size, uint64_t base_offset, what="index"):
    """_index_header of an index file from its first 64 bytes (head) and
    its size (read without mapping it)."""
    if len(head) < 64:
        raise CorruptRecord(f"{what}: index file is truncated", path=str(what))
    return _index_header(PyBytes_AS_STRING(head), file_size, base_offset, what)


cdef tuple _cursor_tuple(pq_dseg_cursor* c):
    return (c.pos, c.next_offset, c.index_count, c.last_index_pos, c.records,
            c.max_timestamp_ms)


cdef void _cursor_from(pq_dseg_cursor* c, tuple t):
    c.pos, c.next_offset, c.index_count, c.last_index_pos, c.records, c.max_timestamp_ms = t


@cython.no_gc_clear
cdef class SegmentMap:
    """One mapped segment: its data file and (optionally) its index file.
    The mappings are the caller's mmap objects; the C core reads and writes
    through them."""
    cdef pq_dseg s
    cdef Py_buffer _dv
    cdef Py_buffer _iv
    cdef bint _dmapped
    cdef bint _imapped
    cdef object _dmm
    cdef object _imm
    cdef readonly object path
    cdef readonly uint64_t base_offset
    cdef readonly bint writable

    def __cinit__(self, data_mm, index_mm, uint64_t base_offset, path, bint writable):
        cdef int flags = PyBUF_WRITABLE if writable else PyBUF_SIMPLE
        self._dmapped = False
        self._imapped = False
        memset(&self.s, 0, sizeof(self.s))
        PyObject_GetBuffer(data_mm, &self._dv, flags)
        self._dmapped = True
        self._dmm = data_mm
        self.s.data = <uint8_t*>self._dv.buf
        self.s.data_size = self._dv.len
        self.s.base_offset = base_offset
        self.base_offset = base_offset
        self.path = path
        self.writable = writable
        if index_mm is not None:
            PyObject_GetBuffer(index_mm, &self._iv, flags)
            self._imapped = True
            self._imm = index_mm
            self.s.ix = <pq_dseg_index_header*>self._iv.buf
            self.s.ix_cap = (self._iv.len - 64) // 8 if self._iv.len >= 64 else 0
            if self._iv.len < 64:
                self.s.ix = NULL

    def __dealloc__(self):
        self._release()

    cdef void _release(self):
        if self._dmapped:
            PyBuffer_Release(&self._dv)
            self._dmapped = False
        if self._imapped:
            PyBuffer_Release(&self._iv)
            self._imapped = False
        self.s.data = NULL
        self.s.ix = NULL

    def close(self):
        self._release()
        for mm in (self._dmm, self._imm):
            if mm is not None:
                try:
                    mm.close()
                except Exception:
                    pass
        self._dmm = self._imm = None

    @property
    def data_size(self):
        return self.s.data_size

    @property
    def has_index(self):
        return self.s.ix != NULL

    def index_init(self):
        """Write a fresh, unsealed index header."""
        if not self._imapped:
            raise ValueError("no index mapped")
        _check_rc(pq_dseg_index_init(self._iv.buf, self._iv.len, self.s.base_offset),
                  "index init")

    def index_header(self):
        """The sealed index header as a dict; None when it is not sealed;
        CorruptRecord when it is damaged."""
        if not self._imapped:
            return None
        return _index_header(self._iv.buf, self._iv.len, self.s.base_offset, self.path)

    def seal(self, tuple cursor):
        cdef pq_dseg_cursor c
        _cursor_from(&c, cursor)
        _check_rc(pq_dseg_index_seal(&self.s, &c), "seal")

    def scan(self, uint64_t limit, bint rebuild_index):
        """Walk the valid records from the start: (cursor, torn)."""
        cdef pq_dseg_cursor c
        cdef int torn = 0
        if limit > self.s.data_size:
            limit = self.s.data_size
        pq_dseg_cursor_empty(&c, self.s.base_offset)
        _check_rc(pq_dseg_scan(&self.s, limit, &c, rebuild_index, &torn), "scan")
        return _cursor_tuple(&c), bool(torn)

    def dirty_bytes(self, uint64_t start, uint64_t to):
        if to > self.s.data_size:
            to = self.s.data_size
        return pq_dseg_dirty_bytes(self.s.data, start, to)

    def find_record(self, uint64_t start, uint64_t to, uint64_t min_offset):
        """The position of the first whole, CRC-valid record in [start, to)
        with an offset of at least min_offset (and at most one per 40
        bytes past it); None when there is none."""
        cdef uint64_t pos = 0
        if to > self.s.data_size:
            to = self.s.data_size
        if start >= to:
            return None
        rc = pq_dseg_find_record(&self.s, start, to, min_offset,
                                 min_offset + (to - start) // PQ_DSEG_REC_HDR, &pos)
        _check_rc(rc, "find record")
        return pos if rc == 1 else None

    def read_bytes(self, uint64_t start, uint64_t to):
        if to > self.s.data_size:
            to = self.s.data_size
        if start >= to:
            return b""
        return PyBytes_FromStringAndSize(<char*>self.s.data + start, to - start)

    def zero(self, uint64_t start, uint64_t to):
        if to > self.s.data_size:
            to = self.s.data_size
        if start < to:
            memset(self.s.data + start, 0, to - start)

    def sync(self, uint64_t start, uint64_t to):
        """msync the data bytes [start, to). A map closed meanwhile (by a
        roll of another thread of this process, which synced the segment
        first, or by a close of the handle) has nothing left to sync here:
        an append that committed its records must not raise after it."""
        cdef int rc
        cdef Py_buffer hold
        if to > self.s.data_size:
            to = self.s.data_size
        if start >= to or self.s.data == NULL:
            return
        # The export keeps the mapping while the GIL is let go: another
        # thread's close() cannot unmap it under the msync.
        PyObject_GetBuffer(self._dmm, &hold, PyBUF_SIMPLE)
        try:
            with nogil:
                rc = pq_sync_range(hold.buf, start, to)
        finally:
            PyBuffer_Release(&hold)
        _check_rc(rc, "sync")

    def sync_index(self):
        cdef int rc
        cdef Py_buffer hold
        if self._imapped:  # as sync: kept mapped by an export while the GIL is let go
            PyObject_GetBuffer(self._imm, &hold, PyBUF_SIMPLE)
            try:
                with nogil:
                    rc = pq_sync_range(hold.buf, 0, hold.len)
            finally:
                PyBuffer_Release(&hold)
            _check_rc(rc, "sync index")


@cython.no_gc_clear
cdef class DirLogCore(LogCoreBase):
    """A handle on a directory-mode log: the mapped control file and the
    segments mapped so far (base of pyqueue.log.DirectoryLog, which
    provides _map_segment, _allocate, _roll_locked and _segment_bases)."""
    cdef pq_dlog _d
    cdef Py_buffer _view
    cdef bint _mapped
    cdef object _mm
    cdef list _active       # per partition: the SegmentMap of the active segment, or None
    cdef dict _closed_maps  # (partition, base) -> SegmentMap of a closed segment
    cdef readonly int _fsync_mode    # 0 never, 1 interval, 2 always
    cdef int64_t _fsync_interval_ns
    cdef object _retention_hook      # called at most every _retention_every_ns from appends
    cdef int64_t _retention_every_ns
    cdef int64_t _retention_next_ns
    # pyqueue._aio's registrations on the log's event (_aio_prepare) not
    # finished yet, by this process (_fork_generation _aio_gen): close()
    # finishes them before it unmaps the event.
    cdef uint32_t _aio_prepared
    cdef unsigned long _aio_gen

    def __cinit__(self, *args, **kwargs):
        self._mapped = False
        self._active = []
        self._closed_maps = {}

    def __dealloc__(self):
        if self._mapped:
            PyBuffer_Release(&self._view)
            self._mapped = False

    def _attach_control(self, mm, int fsync_mode, double fsync_interval):
        PyObject_GetBuffer(mm, &self._view, PyBUF_WRITABLE)
        self._mapped = True
        self._mm = mm
        _check_rc(pq_dlog_open(&self._d, self._view.buf, self._view.len), "open control")
        self._nparts = self._d.partitions
        self._max_record = self._d.segment_bytes - PQ_DSEG_REC_HDR
        self._active = [None] * self._nparts
        self._fsync_mode = fsync_mode
        self._fsync_interval_ns = <int64_t>(fsync_interval * 1e9)

    def _shutdown(self, bint immediate):
        self._check_open()
        _check_rc(pq_dlog_shutdown(&self._d, shutdown_how(immediate)), "shutdown")

    def _shutdown_state(self):
        self._check_open()
        return is_shut_down(self._d.hdr)

    @property
    def segment_bytes(self):
        """The size a segment file rolls at, in bytes."""
        return self._d.segment_bytes

    def _group_table(self):
        self._check_open()
        return GroupTable._of(self, &self._d.groups)

    def _event_address(self):
        """The address of the log-wide event, notified on every append and
        every rebalance (pyqueue._aio). close() unmaps it: valid until
        then only."""
        self._check_open()
        return PQ_LOG_APPENDED_ADDR(&self._d)

    # pyqueue._aio registers on the event through these, not _core's
    # functions: close() unmaps the event, so a coroutine waiting then can
    # no longer unregister itself. Each checks and acts with the GIL held
    # and no Python code between, so a close() from another thread comes
    # before or after, never between.

    cdef inline pq_event* _aio_event(self):
        if self._aio_gen != _fork_generation:  # a fork's child: the parent's are not its own
            self._aio_gen = _fork_generation
            self._aio_prepared = 0
        return <pq_event*>PQ_LOG_APPENDED_ADDR(&self._d)

    def _aio_prepare(self):
        """Register as a waiter on the log's event (its shared waiter count
        up by one), counted by the handle; the sequence value to park on."""
        self._check_open()
        cdef pq_event* ev = self._aio_event()
        self._aio_prepared += 1
        return pq_event_prepare(ev)

    def _aio_finish(self):
        """End a registration made by _aio_prepare, once: nothing when
        close() has ended it already (the handle is closed)."""
        if self._closed or not self._mapped:
            return
        cdef pq_event* ev = self._aio_event()
        if self._aio_prepared:
            self._aio_prepared -= 1
            pq_event_finish(ev)

    def _aio_seq(self):
        """The log's event sequence value now; None once closed (its
        event unmapped)."""
        if self._closed or not self._mapped:
            return None
        return pq_event_seq(self._aio_event())

    def _aio_notify(self, int n):
        """Wake up to n waiters of the log's event (a wake-up a cancelled
        coroutine received, passed on); nothing once closed."""
        if not self._closed and self._mapped:
            pq_event_notify(self._aio_event(), n)

    def _aio_waiters(self):
        """The waiters registered on the log's event now, of every process
        (the tests)."""
        self._check_open()
        return pq_event_waiters(<pq_event*>PQ_LOG_APPENDED_ADDR(&self._d))

    def _release_maps(self):
        """Unmap every segment (close, or after a fork's child is done)."""
        for m in self._active:
            if m is not None:
                m.close()
        self._active = [None] * self._nparts
        for m in self._closed_maps.values():
            m.close()
        self._closed_maps.clear()

    def _close_control(self):
        cdef pq_event* ev
        if self._mapped and not self._closed:
            # Coroutines still registered (waiting under this close): their
            # registrations end here, as the event goes; theirs see
            # _closed and do nothing. Their parks are woken while the word
            # is still mapped (pq_event_wake_all: every waiter of the log,
            # of any process, re-checks), so that they retry now and meet
            # the close (a loop's io_uring wait outlives the mapping and
            # would otherwise wait out its slice).
            ev = self._aio_event()
            if self._aio_prepared:
                pq_event_wake_all(ev)
            while self._aio_prepared:
                self._aio_prepared -= 1
                pq_event_finish(ev)
        self._release_maps()
        if self._mapped:
            PyBuffer_Release(&self._view)
            self._mapped = False
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        self._closed = True

    # ---- the control file ---------------------------------------------

    def _restore(self, uint32_t partition, uint64_t start, uint64_t active_base, tuple cursor,
                 uint64_t closed_bytes):
        cdef pq_dseg_cursor c
        _cursor_from(&c, cursor)
        _check_rc(pq_dlog_restore(&self._d, partition, start, active_base, &c, closed_bytes),
                  "restore")

    cdef int _take_view(self, uint32_t partition, pq_dlog_view* v) except -1:
        """A consistent view of a partition, taken without its lock. When a
        roll stays half-published (seqlock odd) the core takes the lock to
        finish a dead roller's roll; a live roller may hold it for a moment
        (a roll creates a file): wait for it as any call that does not
        block by its API does (LOCK_BOUNDED), not give up at once."""
        cdef LockWait lw = LockWait(0, 0)
        cdef int rc = pq_dlog_snapshot(&self._d, partition, v)
        while lock_again(rc, &lw, LOCK_BOUNDED):
            rc = pq_dlog_snapshot(&self._d, partition, v)
        return _check_rc(lock_fail(rc, &lw, "snapshot"), "snapshot")

    def _snapshot(self, uint32_t partition):
        cdef pq_dlog_view v
        self._check_part(partition)
        self._take_view(partition, &v)
        return {"start_offset": v.start_offset, "end_offset": v.end_offset,
                "active_base": v.active_base, "end_pos": v.end_pos,
                "index_count": v.index_count, "seg_gen": v.seg_gen}

    def _active_stats(self, uint32_t partition):
        cdef uint64_t ts, recs, closed
        _check_rc(pq_dlog_active_stats(&self._d, partition, &ts, &recs, &closed), "stats")
        return ts, recs, closed

    cdef int _lock(self, uint32_t partition) except -1:
        """Take the partition's lock: a try with the GIL held (no GIL
        round trip when nobody holds it), else a wait with it released (so
        that another thread of this process that holds it can finish, and
        Ctrl-C works), bounded: LockTimeout (pyqueue/_common.pxd)."""
        cdef LockWait lw = LockWait(0, 0)
        cdef int rc = pq_dlog_lock(&self._d, partition)
        while lock_again(rc, &lw, LOCK_BOUNDED):
            rc = pq_dlog_lock(&self._d, partition)
        return _check_rc(lock_fail(rc, &lw, "lock"), "lock")

    def _with_lock(self, uint32_t partition, fn):
        """fn() under the partition's lock."""
        self._check_open()
        self._check_part(partition)
        self._lock(partition)
        try:
            return fn()
        finally:
            pq_dlog_unlock(&self._d, partition)

    def _roll_control(self, uint32_t partition, SegmentMap old):
        """Under the lock: seal old and make the next segment active; the
        new base offset."""
        cdef uint64_t nb
        _check_rc(pq_dlog_roll(&self._d, partition, &old.s, &nb), "roll")
        return nb

    def _set_retention_hook(self, hook, double every):
        """hook(partition) runs from appends at most every `every` seconds
        (retention by age between rolls); None: never."""
        self._retention_hook = hook
        self._retention_every_ns = <int64_t>(every * 1e9)
        self._retention_next_ns = pq_monotonic_ns() + self._retention_every_ns

    def _set_start(self, uint32_t partition, uint64_t start, uint64_t removed_bytes):
        _check_rc(pq_dlog_set_start(&self._d, partition, start, removed_bytes), "retention")

    def _set_active(self, uint32_t partition, SegmentMap m):
        old = self._active[partition]
        self._active[partition] = m
        if old is not None and old is not m:
            old.close()

    cdef SegmentMap _active_map(self, uint32_t partition, uint64_t base, bint for_append):
        """The mapping of the active segment `base` (writable, the file grown
        to segment_bytes, when for_append: then under the lock)."""
        cdef SegmentMap m = self._active[partition]
        if (m is None or m.s.base_offset != base or m.s.data == NULL or
                (for_append and not m.writable)):
            m = self._map_segment(partition, base, for_append)
            if m is None:
                raise SegmentMismatch(f"log: the active segment {base} of partition "
                                      f"{partition} is missing")
            self._set_active(partition, m)
        return m

    def _active_segment(self, uint32_t partition):
        """Under the lock: the writable mapping of the active segment."""
        cdef pq_dlog_view v
        _check_rc(pq_dlog_snapshot(&self._d, partition, &v), "snapshot")
        return self._active_map(partition, v.active_base, True)

    def _forget_closed(self, uint32_t partition, uint64_t base):
        """Unmap a closed segment (before its files are removed)."""
        m = self._closed_maps.pop((partition, base), None)
        if m is not None:
            m.close()

    # ---- append -------------------------------------------------------

    cdef int _append_datas(self, uint32_t partition, list datas, bytes kb, bytes hb,
                           uint64_t ts_ms, list out) except -1:
        """Append encoded values under the partition's lock (rolling when
        the active segment is full), then sync as the fsync policy says:
        their offsets into out."""
        if is_shut_down(self._d.hdr):
            raise ShutDown(f"log {getattr(self, 'path', None)!r} is shut down")
        if (self._retention_hook is not None and
                pq_monotonic_ns() >= self._retention_next_ns):
            self._retention_next_ns = pq_monotonic_ns() + self._retention_every_ns
            self._retention_hook(partition)
        cdef list touched = []  # (SegmentMap, from, to): what this append wrote
        cdef bint sync_due = False
        self._lock(partition)
        try:
            self._append_locked(partition, datas, kb, hb, ts_ms, out, touched)
            sync_due = (self._fsync_mode == 1 and
                        pq_dlog_sync_due(&self._d, partition, self._fsync_interval_ns) == 1)
        finally:
            pq_dlog_unlock(&self._d, partition)
        pq_dlog_notify(&self._d, partition)
        # Outside the lock: the bytes below the end never change, and a
        # segment removed meanwhile stays mapped.
        if self._fsync_mode == 2:
            for m, a, b in touched:
                (<SegmentMap>m).sync(a, b)
        elif sync_due:
            m, a, b = touched[len(touched) - 1]
            (<SegmentMap>m).sync(0, b)
        return 0

    cdef _append_locked(self, uint32_t partition, list datas, bytes kb, bytes hb,
                        uint64_t ts_ms, list out, list touched):
        cdef pq_log_entry ents[APPEND_MAX]
        cdef pq_dlog_view v
        cdef uint64_t first, start_pos, need = 0, upto
        cdef Py_ssize_t i = 0, j, n = len(datas)
        cdef int rc
        cdef SegmentMap m
        _check_rc(pq_dlog_snapshot(&self._d, partition, &v), "snapshot")
        m = self._active_map(partition, v.active_base, True)
        start_pos = v.end_pos
        while i < n:
            j = self._fill_entries(ents, datas, i, kb, hb, <uint64_t>-1)
            rc = pq_dlog_append(&self._d, partition, &m.s, ents, <uint32_t>j, ts_ms, &first,
                                &need)
            if rc == -ENOBUFS:  # give the file its next disk blocks (ENOSPC raises here)
                upto = min((need + GROW_BYTES - 1) // GROW_BYTES * GROW_BYTES, m.s.data_size)
                self._allocate(m.path, pq_dlog_allocated(&self._d, partition), upto)
                _check_rc(pq_dlog_set_allocated(&self._d, partition, upto), "allocate")
                continue
            if rc == -ESTALE:  # another process rolled: map the new active segment
                _check_rc(pq_dlog_snapshot(&self._d, partition, &v), "snapshot")
                m = self._active_map(partition, v.active_base, True)
                start_pos = v.end_pos
                continue
            if rc == 0:  # full: roll, and go on in the new segment
                if self._fsync_mode != 0:
                    _check_rc(pq_dlog_snapshot(&self._d, partition, &v), "snapshot")
                    touched.append((m, start_pos, v.end_pos))
                m = self._roll_locked(partition, m)
                start_pos = 0
                continue
            _check_rc(rc, "append")
            if rc == 1:
                out.append(first)
            else:
                out.extend(range(first, first + rc))
            i += rc
        if self._fsync_mode != 0:  # what to sync once the lock is let go
            _check_rc(pq_dlog_snapshot(&self._d, partition, &v), "snapshot")
            touched.append((m, start_pos, v.end_pos))

    # ---- read ---------------------------------------------------------

    def _bounds(self, partition):
        cdef pq_dlog_view v
        self._check_open()
        self._check_part(partition)
        self._take_view(partition, &v)
        return v.start_offset, v.end_offset

    cdef tuple _closed_segment(self, uint32_t partition, uint64_t offset, pq_dlog_view* v):
        """(SegmentMap, end, index entries, next base) of the closed segment
        holding offset; (None, first, past) when the offsets [first, past)
        have no segment file (removed by retention since the snapshot, or
        gone)."""
        # Only bases below the active one: a file past it is a roll in
        # progress or one that died (never switched to), not a segment yet.
        bases = [b for b in self._segment_bases(partition, v.seg_gen) if b < v.active_base]
        # the last base <= offset, below the active one
        lo, hi = 0, len(bases)
        while lo < hi:
            mid = (lo + hi) // 2
            if bases[mid] <= offset:
                lo = mid + 1
            else:
                hi = mid
        if lo == 0:
            return None, offset, bases[0] if bases else v.active_base
        base = bases[lo - 1]
        nxt = bases[lo] if lo < len(bases) else v.active_base
        key = (partition, base)
        m = self._closed_maps.get(key)
        if m is None:
            try:
                m = self._map_segment(partition, base, False)
            except SegmentMismatch:  # its data file is empty: its records are gone
                m = None
            if m is None:
                return None, base, nxt
            if len(self._closed_maps) >= 32:  # keep few closed segments mapped
                old = self._closed_maps.pop(next(iter(self._closed_maps)))
                old.close()
            self._closed_maps[key] = m
        try:
            h = m.index_header()
        except CorruptRecord:
            h = None  # a damaged index only loses its hints: walk the records
        if h is None:  # not sealed: bounded by the file, found by a walk
            return m, (<SegmentMap>m).s.data_size, 0, nxt
        return m, min(h["end_pos"], (<SegmentMap>m).s.data_size), h["entries"], nxt

    cdef object _missing(self, uint32_t partition, uint64_t offset, uint64_t first,
                         uint64_t past):
        e = CorruptRecord(
            f"log: offsets {first}..{past - 1} of partition {partition} are missing (their "
            f"segment file is gone or cut short); reading offset {offset}: seek past {past - 1} "
            f"to go on", path=getattr(self, "_path", None), partition=partition,
            offset=offset)
        e.missing = (first, past)
        return e

    def _read(self, uint32_t partition, uint64_t offset, Py_ssize_t max_records, double timeout,
              make):
        """As MemoryLogCore._read, from the segment files."""
        cdef pq_log_record recs[BATCH_MAX]   # this call's, never the handle's
        cdef uint8_t types[BATCH_MAX]
        cdef uint8_t undecoded[BATCH_MAX]
        cdef pq_dlog_view v
        cdef int rc, i, missing = 0
        cdef int64_t deadline, until
        cdef uint64_t nxt, bad, end, ixc, next_base
        cdef Py_ssize_t first
        cdef Py_buffer hold
        cdef SegmentMap m
        self._check_open()
        self._check_part(partition)
        if max_records <= 0:
            raise ValueError("max_records must be positive")
        _check_make(make)
        deadline = _deadline_of(timeout)
        cdef list out = []
        while True:
            self._take_view(partition, &v)
            if offset < v.start_offset or offset > v.end_offset:
                if out:
                    return out
                raise self._out_of_range(partition, offset, v.start_offset, v.end_offset)
            if offset == v.end_offset:
                if not out and is_shut_down(self._d.hdr):
                    raise ShutDown(f"log {getattr(self, 'name', None)!r} is shut down")  # read to the end of a shut-down log
                if out or not _time_left(deadline):
                    return out
                until = _slice_end(deadline)
                with nogil:
                    rc = pq_dlog_wait(&self._d, partition, offset, until, SPIN_NS)
                if rc == -EINTR or rc == -ETIMEDOUT:
                    PyErr_CheckSignals()
                continue
            if offset >= v.active_base:
                m = self._active_map(partition, v.active_base, False)
                end, ixc, next_base = v.end_pos, v.index_count, v.end_offset
            else:
                found = self._closed_segment(partition, offset, &v)
                if found[0] is None:
                    # removed by retention since the snapshot (the next one
                    # says so), or missing from the directory: never skipped
                    if out:
                        return out
                    missing += 1
                    if missing > 3:
                        raise self._missing(partition, offset, found[1], found[2])
                    self._forget_bases(partition)
                    continue
                m, end, ixc, next_base = found
            # Not past the end offset of the snapshot: the end position may
            # already cover the next append's records (appends publish the
            # position first), and a record returned beyond end_offset would
            # make the next read look past the end.
            want = <uint32_t>min(max_records - len(out), BATCH_MAX, v.end_offset - offset)
            if m.s.data == NULL:  # unmapped by another thread of this process meanwhile
                self._check_open()
                continue
            # Copy first, with no Python code while m is read (another
            # thread may close m once Python code runs; the export keeps
            # the mapping until the copy is done), then decode.
            first = len(out)
            PyObject_GetBuffer(m._dmm, &hold, PyBUF_SIMPLE)
            try:
                rc = pq_dseg_peek(&m.s, end, ixc, offset, recs, want, &nxt, &bad)
                if rc > 0:
                    for i in range(rc):
                        types[i] = recs[i].type
                    self._make_records(recs, rc, partition, make, out, undecoded)
            finally:
                PyBuffer_Release(&hold)
            if rc == PQ_ERR_CORRUPT:
                if out:
                    return out
                raise CorruptRecord(
                    f"{m.path}: the record at byte {bad} fails its check (CRC32C or format); "
                    f"partition {partition}, reading offset {offset}",
                    path=str(m.path), position=bad, partition=partition, offset=offset)
            _check_rc(rc, "read")
            if rc == 0:
                if offset >= v.active_base:
                    raise SegmentMismatch(f"log: partition {partition} has no record at "
                                          f"offset {offset} below its end (corrupt?)")
                if offset < next_base:  # the segment ends short of the next one
                    if out:
                        return out
                    missing += 1
                    if missing > 3:
                        try:
                            h = m.index_header()
                        except CorruptRecord:
                            h = None
                        first = offset if h is None else min(offset, m.base_offset + h["records"])
                        raise self._missing(partition, offset, first, next_base)
                    self._forget_bases(partition)
                    continue
                offset = next_base  # nothing more in that segment
                continue
            if self._decode_records(out, first, rc, make, types, undecoded):
                return out  # an undecodable record next: the next read raises
            offset = nxt
            if len(out) >= max_records:
                return out

    def _wait_any(self, list parts, list offsets, GroupTable groups, uint32_t g,
                  uint64_t gen_seen, double timeout):
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
            rc = pq_dlog_wait_any(&self._d, pv, ov, n, gen, gen_seen, until, SPIN_NS)
        if rc == -EINTR or rc == -ETIMEDOUT:
            PyErr_CheckSignals()
        return 0 if rc == -EINTR else rc
