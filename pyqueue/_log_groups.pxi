# Included by _log.pyx: consumer groups (csrc/pq_group.h) of either kind of
# log. A GroupTable points into its core's mapping and keeps the core alive.

cdef class GroupTable:
    """The consumer groups of one log (pyqueue.consumer uses it)."""
    cdef pq_group_table* t
    cdef LogCoreBase _core

    @staticmethod
    cdef GroupTable _of(LogCoreBase core, pq_group_table* t):
        cdef GroupTable gt = GroupTable.__new__(GroupTable)
        gt.t = t
        gt._core = core
        return gt

    cdef inline int _check(self, uint32_t g) except -1:
        if self._core._closed:
            raise ValueError("the log is closed")
        if g >= self.t.max_groups:
            raise ValueError("bad group index")
        return 0

    def find(self, name, bint create):
        """(index, incarnation) of group `name`; None when it does not
        exist and not create. PyQueueError when the log has no room for
        another group."""
        if not isinstance(name, str):
            raise TypeError(f"group must be a str, not {type(name).__name__}")
        cdef bytes b = name.encode("utf-8")
        if not 1 <= len(b) < PQ_GROUP_NAME_MAX or b"\0" in b:
            raise ValueError(f"group name must be 1..{PQ_GROUP_NAME_MAX - 1} bytes of UTF-8 "
                             "without NUL")
        if self._core._closed:
            raise ValueError("the log is closed")
        cdef uint64_t inc = 0
        cdef LockWait lw = LockWait(0, 0)
        cdef int rc = pq_group_find(self.t, b, create, &inc)
        while lock_again(rc, &lw, LOCK_BOUNDED):
            rc = pq_group_find(self.t, b, create, &inc)
        lock_fail(rc, &lw, "find group")
        if rc == -ENOENT:
            return None
        if rc == -ENOSPC:
            raise PyQueueError(f"the log has no room for another consumer group (it holds "
                               f"{self.t.max_groups}; delete_group() frees one)")
        return _check_rc(rc, "group"), inc

    def names(self):
        """[(index, name)] of the groups that exist."""
        cdef char buf[64]
        cdef LockWait lw = LockWait(0, 0)
        cdef int rc
        out = []
        if self._core._closed:
            raise ValueError("the log is closed")
        for g in range(self.t.max_groups):
            rc = pq_group_name(self.t, g, buf)
            while lock_again(rc, &lw, LOCK_BOUNDED):
                rc = pq_group_name(self.t, g, buf)
            lock_fail(rc, &lw, "group names")
            if rc == 0:
                out.append((g, buf.decode("utf-8", "replace")))
        return out

    def delete(self, uint32_t g):
        self._check(g)
        cdef LockWait lw = LockWait(0, 0)
        cdef int rc = pq_group_delete(self.t, g)
        while lock_again(rc, &lw, LOCK_BOUNDED):
            rc = pq_group_delete(self.t, g)
        lock_fail(rc, &lw, "delete group")
        if rc == -EBUSY:
            raise PyQueueError("the group has live members: close their consumers first")
        _check_rc(rc, "delete group")

    def join(self, uint32_t g, uint64_t incarnation, double timeout):
        """A new member id; None when the group was deleted since it was
        found (find it again)."""
        cdef uint64_t mid
        self._check(g)
        cdef LockWait lw = LockWait(0, 0)
        cdef int rc = pq_group_join(self.t, g, incarnation, <int64_t>(timeout * 1e9), &mid)
        while lock_again(rc, &lw, LOCK_BOUNDED):
            rc = pq_group_join(self.t, g, incarnation, <int64_t>(timeout * 1e9), &mid)
        lock_fail(rc, &lw, "join")
        if rc == -ENOENT:
            return None
        if rc == -EUSERS:
            raise PyQueueError(f"the group has {PQ_GROUP_MEMBERS} live members already")
        _check_rc(rc, "join")
        return mid

    def leave(self, uint32_t g, uint64_t member_id):
        self._check(g)
        cdef LockWait lw = LockWait(0, 0)
        cdef int rc = pq_group_leave(self.t, g, member_id)
        while lock_again(rc, &lw, LOCK_BOUNDED):
            rc = pq_group_leave(self.t, g, member_id)
        _check_rc(lock_fail(rc, &lw, "leave"), "leave")

    def heartbeat(self, uint32_t g, uint64_t member_id):
        """False when the member was removed from the group."""
        self._check(g)
        return pq_group_heartbeat(self.t, g, member_id) == 0

    def reap(self, uint32_t g, int64_t deadline=LOCK_BOUNDED):
        """Remove dead and silent members. deadline (here and below): of
        the wait for the group lock, monotonic ns (-1: none, 0: a moment,
        LOCK_BOUNDED: the lock wait); LockTimeout when it passed."""
        self._check(g)
        cdef LockWait lw = LockWait(0, 0)
        cdef int rc = pq_group_reap(self.t, g)
        while lock_again(rc, &lw, deadline):
            rc = pq_group_reap(self.t, g)
        return _check_rc(lock_fail(rc, &lw, "reap"), "reap")

    def generation(self, uint32_t g):
        self._check(g)
        return pq_group_generation(self.t, g)

    def assignment(self, uint32_t g, uint64_t member_id, int64_t deadline=LOCK_BOUNDED):
        """(generation, {partition: epoch}) of member_id; None when it is no
        longer a member."""
        cdef uint64_t epochs[MAX_PARTITIONS]
        cdef uint64_t gen
        self._check(g)
        cdef LockWait lw = LockWait(0, 0)
        cdef int rc = pq_group_assignment(self.t, g, member_id, epochs, &gen)
        while lock_again(rc, &lw, deadline):
            rc = pq_group_assignment(self.t, g, member_id, epochs, &gen)
        lock_fail(rc, &lw, "assignment")
        if rc == -ESTALE:
            return None
        _check_rc(rc, "assignment")
        return gen, {p: epochs[p] for p in range(self.t.partitions) if epochs[p] != 0}

    def commit(self, uint32_t g, uint64_t member_id, list items, int64_t deadline=LOCK_BOUNDED):
        """items: [(partition, offset, epoch)]; all or nothing. False when
        fenced (a partition moved on or the member was removed)."""
        cdef uint32_t pv[MAX_PARTITIONS]
        cdef uint64_t ov[MAX_PARTITIONS]
        cdef uint64_t ev[MAX_PARTITIONS]
        cdef Py_ssize_t n = len(items)
        self._check(g)
        if n > MAX_PARTITIONS:
            raise ValueError("too many partitions")
        for i in range(n):
            pv[i], ov[i], ev[i] = items[i]
        cdef uint64_t now_ms = time.time_ns() // 1000000
        cdef LockWait lw = LockWait(0, 0)
        cdef int rc = pq_group_commit(self.t, g, member_id, pv, ov, ev, <uint32_t>n, now_ms)
        while lock_again(rc, &lw, deadline):
            rc = pq_group_commit(self.t, g, member_id, pv, ov, ev, <uint32_t>n, now_ms)
        lock_fail(rc, &lw, "commit")
        if rc == -ESTALE:
            return False
        _check_rc(rc, "commit")
        return True

    def committed(self, uint32_t g, uint32_t partition):
        """(offset or None, wall-clock ms of that commit)."""
        cdef uint64_t off, ms
        self._check(g)
        if partition >= self.t.partitions:
            raise ValueError(f"partition {partition} out of range")
        cdef int rc = pq_group_committed(self.t, g, partition, &off, &ms)
        if rc == -ENODATA:
            return None, ms
        _check_rc(rc, "committed")
        return off, ms

    def set_committed(self, uint32_t g, uint32_t partition, offset, uint64_t ms=0):
        """Set (or, with None, clear) a committed offset without fencing."""
        self._check(g)
        if partition >= self.t.partitions:
            raise ValueError(f"partition {partition} out of range")
        cdef uint64_t off = PQ_GROUP_NO_OFFSET if offset is None else offset
        cdef LockWait lw = LockWait(0, 0)
        cdef int rc = pq_group_set_committed(self.t, g, partition, off, ms)
        while lock_again(rc, &lw, LOCK_BOUNDED):
            rc = pq_group_set_committed(self.t, g, partition, off, ms)
        _check_rc(lock_fail(rc, &lw, "set committed"), "set committed")

    def owner(self, uint32_t g, uint32_t partition):
        self._check(g)
        return pq_group_owner(self.t, g, partition)

    def members(self, uint32_t g):
        cdef pq_group_member_info info[64]
        self._check(g)
        cdef LockWait lw = LockWait(0, 0)
        cdef int n = pq_group_members(self.t, g, info, 64)
        while lock_again(n, &lw, LOCK_BOUNDED):
            n = pq_group_members(self.t, g, info, 64)
        _check_rc(lock_fail(n, &lw, "members"), "members")
        return [{"pid": info[i].pid, "alive": info[i].alive == 1,
                 "member_id": info[i].member_id, "idle_s": info[i].idle_ns / 1e9,
                 "partitions": info[i].partitions} for i in range(n)]
