"""pyqueue.Log: a partitioned, replayable log in shared memory (memory
mode). Records are kept per partition in a ring; appends never wait: when a
partition's ring is full, its oldest whole records are dropped (retention
by capacity) and reading them raises OffsetOutOfRange. See docs/api.md
("Log") and docs/design.md ("Log (memory mode)")."""
import os
import time
from typing import NamedTuple

from pyqueue import _log, _segment
from pyqueue.queues import _round_capacity

DEFAULT_CAPACITY = 8 * 1024 * 1024
MAX_PARTITIONS = 256
_KIND_LOG = 3


class Record(NamedTuple):
    partition: int
    offset: int
    timestamp: int  # milliseconds since the epoch (append time)
    key: object     # bytes, or None
    value: object
    headers: dict   # str -> bytes


def _rebuild(name):
    return Log.open(name)


def _now_ms():
    return time.time_ns() // 1_000_000


class Log(_log.LogCore):
    """A multi-process partitioned log in shared memory.

    Log(name=None, *, partitions=1, capacity_bytes=8 MiB (per partition),
        path=None, perm=0o600)

    path: directory mode is not built yet (NotImplementedError).
    """

    def __init__(self, name=None, *, partitions=1, capacity_bytes=DEFAULT_CAPACITY, path=None,
                 perm=0o600):
        if path is not None:
            raise NotImplementedError("directory mode is not built yet")
        if not isinstance(partitions, int) or isinstance(partitions, bool):
            raise TypeError("partitions must be an int")
        if not 1 <= partitions <= MAX_PARTITIONS:
            raise ValueError(f"partitions must be 1..{MAX_PARTITIONS}")
        capacity = _round_capacity(capacity_bytes)
        if not isinstance(perm, int) or isinstance(perm, bool) or not 0 <= perm <= 0o777:
            raise ValueError("perm must be a permission mask such as 0o600")

        def init(mm):
            _log.create_segment(mm, partitions, capacity)

        size = _log.segment_size(partitions, capacity)
        if name is None:
            name = _segment.unique_name()
            mm = _segment.create(name, size, perm, init)
            _segment.own(name)
        else:
            _segment.check_name(name)
            mm = _segment.create(name, size, perm, init)
            if mm is None:
                mm, perm = _segment.open_existing(name, _KIND_LOG)
        self._setup(name, mm)

    @classmethod
    def open(cls, name):
        """Open an existing log by name (SegmentNotFound if missing,
        SegmentMismatch if it is not a pyqueue log)."""
        _segment.check_name(name)
        mm, _perm = _segment.open_existing(name, _KIND_LOG)
        self = cls.__new__(cls)
        self._setup(name, mm)
        return self

    def _setup(self, name, mm):
        self._name = name
        self._rr_pid = None
        self._rr = 0
        self._attach(mm)

    def _next_partition(self):
        # Keyless records: round-robin per process, starting at a
        # per-process place so that processes spread out.
        pid = os.getpid()
        if self._rr_pid != pid:
            self._rr_pid = pid
            self._rr = pid % self.partitions
        p = self._rr
        self._rr = (p + 1) % self.partitions
        return p

    def _choose(self, key):
        return self._next_partition() if key is None else self.partition_for(key)

    def append(self, value, key=None, headers=None):
        """Append one record; returns (partition, offset). key (bytes or
        str) picks the partition with Kafka's default partitioner; without
        a key records go round-robin. headers: a dict of str -> bytes."""
        p = self._choose(key)
        return p, self._append(p, [value], key, headers, _now_ms())[0]

    def append_many(self, values, key=None, headers=None):
        """Append every value of an iterable to one partition (the key's,
        or the next round-robin one), in batched claims. Returns the list of
        (partition, offset)."""
        values = list(values)
        if not values:
            return []
        p = self._choose(key)
        return [(p, o) for o in self._append(p, values, key, headers, _now_ms())]

    def read(self, partition, offset, max_records=1000, timeout=0):
        """Up to max_records Records of a partition from offset on, without
        consuming them. Waits up to timeout seconds for the first one (an
        empty list when none comes). OffsetOutOfRange when offset is before
        start_offset(partition) (dropped) or beyond end_offset(partition)."""
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise ValueError("offset must be a non-negative int")
        if timeout is None:
            timeout = 1e9
        return self._read(partition, offset, max_records, float(timeout), Record)

    def start_offset(self, partition):
        """The offset of the oldest record still in the partition."""
        return self._bounds(partition)[0]

    def end_offset(self, partition):
        """The offset the next record appended to the partition will get."""
        return self._bounds(partition)[1]

    @property
    def name(self):
        return self._name

    @property
    def path(self):
        return None

    def unlink(self):
        """Remove the log's name (processes that have it open keep it)."""
        _segment.disown(self._name)
        _segment.unlink(self._name)

    def __reduce__(self):
        return (_rebuild, (self._name,))

    def __repr__(self):
        state = "closed" if self._closed else "open"
        return f"<pyqueue.Log {self.__dict__.get('_name')!r} {state}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
