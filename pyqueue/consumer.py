"""pyqueue.Consumer: a member of a consumer group of a Log.

The partitions of the log are shared among the live members of the group
(a sticky, balanced assignment made in shared memory, or by Lua scripts on
a Redis server: the log's group table, pyqueue/backends/redis/groups.py).
Each member reads its partitions from the group's committed offsets on and
commits how far it got; a commit is fenced by the epoch at which the member
got each partition, so once a partition has moved to another member, the
former owner's commit fails (CommitFailed) and two members never commit the
same partition.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, cast, Dict, Iterable, Iterator, List, Mapping, Optional, TypeVar

if TYPE_CHECKING:
    from pyqueue.log import Log, Record

_C = TypeVar("_C", bound="Consumer")

from pyqueue import _api
from pyqueue._log import LOCK_BOUNDED_DEADLINE as _BOUNDED
from pyqueue.errors import (CommitFailed, CorruptRecord, LockTimeout, OffsetOutOfRange,
                            PoisonRecord, PyQueueError, ShutDown)

_logger = logging.getLogger("pyqueue.log")

OFFSET_RESETS = ("earliest", "latest")
_REAP_INTERVAL = 0.25  # how often a member looks for dead or silent ones
_LOCK_MOMENT = 0.02    # a poll shorter than this still waits this long for the group lock


def _lock_deadline(timeout):
    """The deadline (monotonic ns, as the bindings take it) of the group
    lock waits of a poll with this timeout: its own, so that a member
    stopped inside the group lock delays a poll by its timeout, not by the
    lock wait. -1: none (timeout None); 0: a moment (a short timeout)."""
    if timeout is None:
        return -1
    if timeout < _LOCK_MOMENT:
        return 0
    return time.monotonic_ns() + int(timeout * 1e9)


class Members:
    """The consumers made from one log handle in this process (weakly
    held), and the lock that orders their joins with the handle's close():
    a consumer joins and is listed under it, and close() closes the listed
    ones and then the handle under it, so none joins unseen in between (a
    review: a consumer made in one thread while another closed the log
    stayed a member)."""

    __slots__ = ("_lock", "_pid", "consumers")

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self.consumers: weakref.WeakSet[Consumer] = weakref.WeakSet()

    @property
    def lock(self) -> threading.Lock:
        if self._pid != os.getpid():   # a forked child: a fresh lock (another thread may hold ours)
            self._pid, self._lock = os.getpid(), threading.Lock()
        return self._lock


def close_consumers(log: Any, close_log: Callable[[], None]) -> None:
    """Close the consumers made from LOG in this process (they leave their
    groups, committing first with auto_commit) while LOG can still reach
    them, then close_log(): each log's close() calls it, since a consumer
    cannot leave through a closed log. Every consumer is tried and the log
    is closed whatever happens; the first error is raised after."""
    members = log._consumers
    first = None
    with members.lock:
        try:
            for c in list(members.consumers):
                try:
                    c.close()
                except BaseException as e:  # (Ctrl-C included: raised after the rest)
                    if first is None:
                        first = e
            members.consumers.clear()
        finally:
            close_log()
    if first is not None:
        raise first


def _leave_quietly(table, g, member_id, pid):
    # A consumer dropped without close(): leave the group from its own
    # process (a forked child's copy must not remove its parent's member).
    if os.getpid() != pid:
        return
    try:
        table.leave(g, member_id)
    except (ValueError, OSError, *getattr(table, "quiet_errors", ())):
        pass  # the log is closed already (or its server gone): the member goes with the process


class Consumer:
    """A member of consumer group `group` of `log`, in this process (also
    made by log.consumer(group)).

    Not picklable, and usable only in the process that made it.

    Args:
        log: The Log.
        group: The group's name (made when it does not exist).
        auto_offset_reset: Where to start a partition that has no committed
            offset, or whose committed offset retention has removed:
            "earliest" (the oldest record kept) or "latest" (the end).
        auto_commit: Commit the positions reached at most every
            auto_commit_interval seconds from poll(), and on close().
        auto_commit_interval: Seconds between automatic commits.
        max_poll_interval: A member that does not poll for that many
            seconds is removed from the group (its partitions go to the
            others); a member whose process dies is removed at once on
            shared memory, on Redis when its session lease (10 s, or
            this if shorter; renewed by a thread of its process) runs
            out (hosts share no pids).

    Attributes:
        skipped: Offsets passed over by resets (records retention removed
            before this member read them).

    Raises:
        ValueError: A bad option, or the log is closed.
        PyQueueError: No room for another group or member.
    """

    skipped: int
    _g: Any               # the group: its index (shared memory) or name (Redis)
    _member: Any          # the member id (None until joined)
    _generation: Any      # the assignment generation followed (None: none yet)
    _finalizer: Any       # weakref.finalize leaving the group
    _bad: Optional[int]

    def __init__(self, log: Log[Any], group: str, *, auto_offset_reset: str = "earliest",
                 auto_commit: bool = False, auto_commit_interval: float = 5.0,
                 max_poll_interval: float = 300.0) -> None:
        if auto_offset_reset not in OFFSET_RESETS:
            raise ValueError(f"auto_offset_reset must be one of {OFFSET_RESETS}, "
                             f"not {auto_offset_reset!r}")
        for what, v in (("auto_commit_interval", auto_commit_interval),
                        ("max_poll_interval", max_poll_interval)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise ValueError(f"{what} must be a positive number of seconds")
        from pyqueue.log import Record  # (pyqueue.log imports this module)
        self._record = Record
        self._log = log
        self._group = group
        self._table = log._group_table()
        self._reset = auto_offset_reset
        self._auto_commit = bool(auto_commit)
        self._auto_commit_interval = float(auto_commit_interval)
        self._max_poll_interval = float(max_poll_interval)
        self._pid = os.getpid()
        self._closed = False
        self._positions: Dict[int, int] = {}  # partition -> the next offset poll() returns
        self._epochs: Dict[int, int] = {}     # partition -> the epoch at which this member got it
        self._generation = None
        self._member = None
        self._finalizer = None
        self.skipped = 0      # offsets passed over by resets (removed by retention)
        self._rr = 0
        self._bad = None      # a partition whose bad record the next poll names
        self._next_reap = 0.0
        self._next_auto_commit = time.monotonic() + self._auto_commit_interval
        members = log._consumers
        with members.lock:           # not while log.close() runs (Members)
            if log._closed:
                raise ValueError("the log is closed")
            self._join()
            members.consumers.add(self)  # log.close() closes it (close_consumers)

    # ---- membership ---------------------------------------------------

    def _join(self):
        while True:
            g, incarnation = self._table.find(self._group, True)
            member = self._table.join(g, incarnation, self._max_poll_interval)
            if member is not None:  # else deleted since it was found: again
                break
        if self._finalizer is not None:
            self._finalizer.detach()
        self._g, self._member = g, member
        self._finalizer = weakref.finalize(self, _leave_quietly, self._table, g, member,
                                           self._pid)
        self._positions.clear()
        self._epochs.clear()
        self._generation = None
        self._refresh()

    def _refresh(self, deadline=_BOUNDED):
        """Take the group's current assignment: new partitions start at the
        committed offset, lost ones are forgotten. LockTimeout (nothing
        changed) when the group lock is still held at deadline."""
        got = self._table.assignment(self._g, self._member, deadline)
        if got is None:  # removed from the group (looked dead, or silent)
            if self._closed:  # closed meanwhile by another thread (log.close()): no rejoin
                raise ValueError("the consumer is closed")
            _logger.warning("consumer group %r of log %r: member %s (pid %d) was removed from "
                            "the group (it looked dead or silent past max_poll_interval=%gs); "
                            "joining again", self._group, self._log.name, self._member,
                            self._pid, self._max_poll_interval)
            self._join()
            return
        generation, epochs = got
        if generation != self._generation and self._generation is not None:
            held, now = set(self._epochs), set(epochs)
            _logger.info("consumer group %r of log %r: rebalance to generation %d: member %s "
                         "(pid %d) holds partitions %s (gained %s, lost %s)", self._group,
                         self._log.name, generation, self._member, self._pid, sorted(now),
                         sorted(now - held), sorted(held - now))
        for p in list(self._epochs):
            if epochs.get(p) != self._epochs[p]:
                del self._epochs[p]
                self._positions.pop(p, None)
        for p, epoch in epochs.items():
            if p not in self._epochs:
                self._epochs[p] = epoch
                self._positions[p] = self._start_position(p)
        self._generation = generation

    def _start_position(self, p):
        committed, _ms = self._table.committed(self._g, p)
        start, end = self._log._bounds(p)
        if committed is None:
            return start if self._reset == "earliest" else end
        if committed < start:
            at = start if self._reset == "earliest" else end
            self.skipped += at - committed
            return at
        return min(committed, end)

    def _check(self):
        if self._closed:
            raise ValueError("the consumer is closed")
        if os.getpid() != self._pid:
            raise PyQueueError("a Consumer belongs to the process that made it: make one in "
                               "each process (log.consumer(group))")

    def _keep_alive(self, deadline=_BOUNDED):
        """Heartbeat, look for gone members now and then, follow rebalances.
        LockTimeout when the group lock is still held at deadline (the
        heartbeat went out; what needs the lock waits for the next call)."""
        t, g = self._table, self._g
        if not t.heartbeat(g, self._member):
            self._refresh(deadline)  # removed: join again
        now = time.monotonic()
        if now >= self._next_reap:
            t.reap(g, deadline)
            self._next_reap = now + _REAP_INTERVAL
        if t.generation(g) != self._generation:
            self._refresh(deadline)

    # ---- reading ------------------------------------------------------

    def poll(self, max_records: int = 500, timeout: Optional[float] = 0.0) -> List[Record]:
        """Read the next records of the partitions assigned to this member
        (heartbeating, and following rebalances).

        Args:
            max_records: The most records returned (positive).
            timeout: Seconds to wait for the first record (None: for ever).

        Returns:
            Up to max_records Records (records of one partition in offset
            order); an empty list when none came in time.

        Raises:
            PoisonRecord: A record cannot be decoded. It is raised on its
                own, with .partition and .offset: the records polled before
                it are returned first, and the position stays at it (each
                poll raises again) until seek(partition, offset + 1).
            CorruptRecord: A record is damaged (as PoisonRecord).
            ShutDown: The log is shut down and every assigned partition is
                read to its end (no wait, whatever the timeout).
            ValueError: max_records is not a positive int, or the consumer
                is closed.
            PyQueueError: Used in another process than the one that made it.
        """
        self._check()
        max_records = _api.check_max_records(max_records)
        timeout = _api.check_timeout(timeout)
        deadline = float("inf") if timeout is None else time.monotonic() + timeout
        # The group lock is waited for until the poll's own deadline (a
        # member stopped inside it delays this poll by its timeout, and it
        # returns what it has); with the lock, the poll goes on.
        lock_deadline = _lock_deadline(timeout)
        try:
            if self._auto_commit and time.monotonic() >= self._next_auto_commit:
                self._commit_quietly(lock_deadline)  # before a rebalance can take partitions away
            self._keep_alive(lock_deadline)
        except LockTimeout:
            return []
        while True:
            out = self._fetch(max_records)
            if out:
                return out
            if self._log.is_shutdown and all(
                    at >= self._log.end_offset(p) for p, at in self._positions.items()):
                # Every assigned partition read to its end (a record still
                # being written is waited for): nothing more will come.
                # Commits still work.
                raise ShutDown(f"log {self._log!r} is shut down")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return out
            parts = sorted(self._positions)
            self._log._wait_any(parts, [self._positions[p] for p in parts], self._table,
                                self._g, self._generation or 0, remaining)
            try:
                self._keep_alive(lock_deadline)
            except LockTimeout:
                return []

    def _fetch(self, max_records: int) -> List[Record]:
        parts = sorted(self._positions)
        if not parts:
            return []
        k = self._rr % len(parts)
        self._rr += 1
        order = parts[k:] + parts[:k]  # a different first partition each time
        if self._bad in self._positions:  # a bad record met last time: named now
            order.remove(self._bad)
            order.insert(0, self._bad)
        self._bad = None
        out: List[Record] = []
        for p in order:
            if len(out) >= max_records:
                break
            for _attempt in range(2):  # once more after a reset
                at = self._positions[p]
                try:
                    recs = self._log._read(p, at, max_records - len(out), 0.0, self._record)
                    break
                except ShutDown:
                    recs = []  # at the end of a shut-down log
                except (PoisonRecord, CorruptRecord):
                    # The position stays at the bad record. What this poll
                    # took already is returned; the next poll reads this
                    # partition first and raises.
                    if out:
                        self._bad = p
                        return out
                    raise
                except OffsetOutOfRange as e:
                    start, end = cast(int, e.start_offset), cast(int, e.end_offset)
                    if at < start:  # retention overtook us
                        to = start if self._reset == "earliest" else end
                        self.skipped += to - at
                    else:
                        to = end
                    self._positions[p] = to
                    recs = []
                except Exception:
                    # A record that cannot be read or decoded (it names its
                    # partition and offset): the records of the partitions
                    # before it are returned first (their positions moved
                    # already), and the next poll raises it alone.
                    if out:
                        return out
                    raise
            if recs:
                out.extend(recs)
                self._positions[p] = recs[-1].offset + 1
        return out

    def __iter__(self) -> Iterator[Record]:
        """Records as poll (no timeout) returns them, until the log is shut
        down and every assigned partition is read to its end: then the
        iteration ends. Ctrl-C interrupts.

        Yields:
            Records.

        Raises:
            PoisonRecord: A record cannot be decoded (see poll).
            CorruptRecord: A record is damaged.
        """
        while True:
            try:
                recs = self.poll(timeout=None)
            except ShutDown:
                return
            yield from recs

    # ---- offsets ------------------------------------------------------

    def commit(self, offsets: Optional[Mapping[int, int]] = None) -> None:
        """Commit positions for partitions this member owns, all or nothing.

        Args:
            offsets: {partition: next offset to read}; None: the positions
                poll() reached.

        Raises:
            CommitFailed: Nothing was written: a partition in it has been
                assigned to another member, or this member was removed from
                the group (.partitions names the ones lost).
            ValueError: Nothing was written: a partition the log does not
                have, an offset that is not an int from 0 to 2**63-1, or the
                consumer is closed.
            TypeError: Nothing was written: a partition that is not an int
                (a bool included), as seek() and position().
            PyQueueError: Used in another process.
            LockTimeout: Nothing was written: another member held the
                group's lock for the whole lock wait (stopped inside it).
        """
        self._commit(offsets, _BOUNDED)

    def _commit(self, offsets: Optional[Mapping[int, int]], deadline: int) -> None:
        self._check()
        if offsets is None:
            offsets = dict(self._positions)
        items, lost = [], []
        nparts = self._log.partitions
        for p, off in offsets.items():
            # (the same partition check as seek, position and committed:
            # any integer, a bool refused)
            p = _api.check_partition(p, nparts)
            off = _api.check_offset(off)
            if p in self._epochs:
                items.append((p, off, self._epochs[p]))
            else:
                lost.append(p)
        if not lost and (not items or self._table.commit(self._g, self._member, items,
                                                         deadline)):
            return
        self._refresh_keeping_positions(deadline)
        lost = sorted(set(lost) | {p for p, _, e in items if self._epochs.get(p) != e})
        _logger.warning("consumer group %r of log %r: commit of member %s (pid %d) fenced: "
                        "partition(s) %s moved to another member; nothing was committed",
                        self._group, self._log.name, self._member, self._pid, lost)
        raise CommitFailed(f"commit fenced: partition(s) {lost} of group {self._group!r} are "
                           "no longer assigned to this consumer (a rebalance moved them); "
                           "nothing was committed", lost)

    def _refresh_keeping_positions(self, deadline=_BOUNDED):
        """_refresh, keeping the positions of the partitions held at the
        same epoch throughout (also across a rejoin, which clears them). A
        partition lost and given back since (a new epoch) starts at the
        committed offset like any new one: meanwhile another member may
        have read and committed it."""
        kept = {p: (at, self._epochs.get(p)) for p, at in self._positions.items()}
        self._refresh(deadline)
        for p, (at, epoch) in kept.items():
            if p in self._positions and self._epochs.get(p) == epoch:
                self._positions[p] = at

    def _commit_quietly(self, deadline=_BOUNDED):
        """auto_commit: what this member still owns (a partition that moved
        goes on from its last commit with its new owner). LockTimeout: not
        committed, tried again at the next poll."""
        self._check()
        try:
            self._commit(None, deadline)
        except CommitFailed:
            try:
                self._commit(None, deadline)  # the assignment is fresh now
            except CommitFailed:
                pass
        self._next_auto_commit = time.monotonic() + self._auto_commit_interval

    def committed(self, partition: int) -> Optional[int]:
        """The group's committed offset of a partition.

        Args:
            partition: The partition.

        Returns:
            The offset, or None when nothing is committed.

        Raises:
            ValueError: The consumer is closed, or partition is out of range.
            TypeError: partition is not an int.
        """
        self._check()
        partition = _api.check_partition(partition, self._log.partitions)
        return self._table.committed(self._g, partition)[0]

    def position(self, partition: int) -> int:
        """The offset the next poll() returns for an assigned partition.

        Args:
            partition: A partition assigned to this member.

        Returns:
            The offset.

        Raises:
            ValueError: The partition is not assigned to this member, or the
                consumer is closed.
            TypeError: partition is not an int.
        """
        self._check()
        return self._positions[self._require(partition)]

    def seek(self, partition: int, offset: int) -> None:
        """Read an assigned partition from offset on.

        Args:
            partition: A partition assigned to this member.
            offset: The next offset to read (out of range: reset by
                auto_offset_reset at the next poll).

        Raises:
            ValueError: The partition is not assigned to this member, offset
                is not an int from 0 to 2**63-1, or the consumer is closed.
            TypeError: partition is not an int.
        """
        self._check()
        partition = self._require(partition)
        self._positions[partition] = _api.check_offset(offset)

    def seek_to_beginning(self, partitions: Optional[Iterable[int]] = None) -> None:
        """Read partitions from their oldest record kept.

        Args:
            partitions: Assigned partitions (None: all of them).

        Raises:
            ValueError: A partition is not assigned to this member, or the
                consumer is closed.
        """
        self._seek_to(partitions, 0)

    def seek_to_end(self, partitions: Optional[Iterable[int]] = None) -> None:
        """Read partitions from their end (only records appended later).

        Args:
            partitions: Assigned partitions (None: all of them).

        Raises:
            ValueError: A partition is not assigned to this member, or the
                consumer is closed.
        """
        self._seek_to(partitions, 1)

    def _seek_to(self, partitions, which):
        self._check()
        for p in sorted(self._positions) if partitions is None else partitions:
            p = self._require(p)
            self._positions[p] = self._log._bounds(p)[which]

    def _require(self, partition):
        partition = _api.check_partition(partition, self._log.partitions)
        if partition not in self._positions:
            raise ValueError(f"partition {partition!r} is not assigned to this consumer "
                             f"(assignment: {self.assignment()})")
        return partition

    def assignment(self) -> List[int]:
        """The partitions this member owns now, sorted.

        Raises:
            ValueError: The consumer is closed.
        """
        self._check()
        if self._table.generation(self._g) != self._generation:
            self._refresh_keeping_positions()
        return sorted(self._positions)

    def lag(self) -> Dict[int, int]:
        """{partition: records between the position and the end} of the
        assigned partitions.

        Raises:
            ValueError: The consumer is closed.
        """
        self._check()
        return {p: max(0, self._log._bounds(p)[1] - at)
                for p, at in sorted(self._positions.items())}

    @property
    def group(self) -> str:
        """The group's name."""
        return self._group

    @property
    def member_id(self) -> Optional[int]:
        """This member's id in the group (it changes when it rejoins)."""
        return cast(Optional[int], self._member)

    @property
    def generation(self) -> Optional[int]:
        """The group's assignment generation this member follows."""
        return cast(Optional[int], self._generation)

    # ---- life ---------------------------------------------------------

    def close(self) -> None:
        """Leave the group (committing first with auto_commit); the
        partitions go to the other members. Closing twice does nothing.

        Raises:
            LockTimeout: The group's lock stayed held by a stopped process.
        """
        if self._closed:
            return
        if os.getpid() != self._pid:
            self._closed = True
            return
        try:
            if self._auto_commit:
                self._commit_quietly()
        finally:
            self._closed = True
            self._finalizer.detach()
            self._table.leave(self._g, self._member)

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError("a Consumer belongs to the process that made it and cannot be "
                        "pickled; pass the Log and call log.consumer(group) there")

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"partitions {sorted(self._positions)}"
        return f"<pyqueue.Consumer group={self._group!r} {state}>"
