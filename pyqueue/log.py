"""pyqueue.Log: a partitioned, replayable log with consumer groups.

    Log(name=None, *, partitions=1, ...)        memory mode: one shared-memory
                                                 segment, a ring per partition
    Log(path="/var/lib/app/events", ...)        directory mode: segment files
                                                 on disk, CRC32C per record

Keys pick partitions with Kafka's default partitioner (bit-exact); offsets
are dense per partition; records are read by offset without being
consumed, and consumer groups share the partitions among their members.
"""
from __future__ import annotations

import abc
import logging

import errno
import mmap
import os
import time
import weakref
from typing import (TYPE_CHECKING, Any, Callable, Dict, List, NamedTuple, Optional, Tuple,
                    TypeVar, Union)

from pyqueue import _api, _core, _log, _logdir, _segment
from pyqueue.consumer import Consumer, Members, close_consumers
from pyqueue.errors import PyQueueError, SegmentNotFound
from pyqueue.queues import Serializer, _check_serializer

_logger = logging.getLogger("pyqueue.log")

T = TypeVar("T")
_L = TypeVar("_L", bound="Log[Any]")
_R = TypeVar("_R")
#: A directory-mode log's path.
StrPath = Union[str, "os.PathLike[str]"]

DEFAULT_MEMORY_RETENTION_BYTES = 8 * 1024 * 1024
MIN_MEMORY_RETENTION_BYTES = 64 * 1024
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
DEFAULT_FSYNC_INTERVAL = 1.0
MAX_PARTITIONS = 256
FSYNC_POLICIES = {"never": 0, "interval": 1, "always": 2}
_KIND_LOG = 3
_RETENTION_CHECK_S = 1.0


class Record(NamedTuple):
    """One record of a Log, as read() and Consumer.poll() return it.

    Attributes:
        partition: The partition it is in.
        offset: Its offset in the partition (dense, from 0).
        timestamp: Its append time, in milliseconds since the epoch.
        key: Its key as bytes, or None.
        value: Its value (any type: a Log's type parameter is not carried
            by Record).
        headers: Its headers, str -> bytes (empty when none).
    """
    partition: int
    offset: int
    timestamp: int
    key: Optional[bytes]
    value: Any
    headers: Dict[str, bytes]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _check_int(what: str, v: Any, lo: int, hi: Optional[int] = None) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"{what} must be an int, not {type(v).__name__}")
    if v < lo or (hi is not None and v > hi):
        raise ValueError(f"{what} must be {lo}..{hi}" if hi is not None else
                         f"{what} must be at least {lo}")
    return v


def _check_partitions(partitions: Optional[int]) -> int:
    return 1 if partitions is None else _check_int("partitions", partitions, 1, MAX_PARTITIONS)


def _check_retention_ms(retention_ms: Optional[int]) -> Optional[int]:
    return None if retention_ms is None else _check_int("retention_ms", retention_ms, 1)


def _check_perm(perm: Any) -> int:
    if not isinstance(perm, int) or isinstance(perm, bool) or not 0 <= perm <= 0o777:
        raise ValueError("perm must be a permission mask such as 0o600")
    return perm


def _same(what: str, given: Any, stored: Any, where: str) -> None:
    if given is not None and given != stored:
        raise ValueError(f"{where} exists with {what}={stored!r}, not {given!r} (parameters "
                         "apply when a log is created)")


def _is_path(name_or_path: Any) -> bool:
    return isinstance(name_or_path, os.PathLike) or (
        isinstance(name_or_path, str) and os.sep in name_or_path)


# ABCMeta: as pyqueue.Queue (docs/design.md, "Backends").
class Log(_log.LogCoreBase[T], metaclass=abc.ABCMeta):
    """A multi-process partitioned, replayable log with consumer groups.

    ``Log(...)`` makes (or opens) a MemoryLog without path, a DirectoryLog
    with one. Generic in the value type for type checkers (``Log[dict]``
    types append()'s value; Record.value stays Any). Keys pick partitions
    with Kafka's default partitioner; offsets are dense per partition.
    Parameters apply when the log is created; opening an existing log with
    different ones is a ValueError.

    Args:
        name: Memory mode: the shared-memory segment's name (None: a fresh
            unnamed one). Directory mode: must be None.
        partitions: The number of partitions (1..256; default 1).
        path: None for memory mode, else the log's directory (made or
            opened).
        retention_bytes: Memory mode: each partition's ring (default 8 MiB).
            Directory mode: the bytes kept per partition (None: all).
        retention_ms: Records older than this are dropped (None: kept).
        segment_bytes: Directory mode: the size a segment file rolls at
            (default 64 MiB).
        fsync: Directory mode: "never", "interval" (at most every
            fsync_interval seconds) or "always" (before append returns).
        fsync_interval: Seconds between syncs with fsync="interval".
        perm: The permission mask of the segment or files (default 0o600).
        trust_owner: Open a log another user owns.
        serializer: A (dumps, loads) pair used instead of pickle for every
            value (bytes and str included): nothing in the log is ever
            unpickled, and a directory log holds what dumps makes (JSON,
            msgpack) for other languages. The log records it; every handle
            must pass one.

    Raises:
        ValueError: A bad parameter, or the log exists with other ones (a
            serializer passed for a log made without one included).
        TypeError: A parameter of the wrong type, or serializer is not a
            (dumps, loads) pair of callables.
        PyQueueError: The log was made with a custom serializer and none is
            given.
        SegmentMismatch: The name or directory holds something that is not
            a pyqueue log, or a damaged one.
        SegmentNotOwned: Memory mode: another user owns the segment.
        PermissionError: Directory mode: the directory belongs to another
            user or others may write it (unless trust_owner).
    """

    if TYPE_CHECKING:  # provided by the cores (pyqueue/_log.pyx)
        _closed: bool

        def __init__(self, name: Optional[str] = None, *, partitions: Optional[int] = None,
                     path: Optional[StrPath] = None, retention_bytes: Optional[int] = None,
                     retention_ms: Optional[int] = None, segment_bytes: Optional[int] = None,
                     fsync: Optional[str] = None, fsync_interval: Optional[float] = None,
                     perm: Optional[int] = 0o600, trust_owner: bool = False,
                     serializer: Optional[Serializer] = None) -> None: ...

        @property
        def name(self) -> str: ...

        @property
        def path(self) -> Optional[str]: ...

        def enforce_retention(self) -> int: ...

        def _bounds(self, partition: int) -> Tuple[int, int]: ...

        def _read(self, partition: int, offset: int, max_records: int, timeout: float,
                  make: Callable[..., _R]) -> List[_R]: ...

        def _wait_any(self, parts: List[int], offsets: List[int], groups: _log.GroupTable,
                      g: int, gen_seen: int, timeout: float) -> Any: ...

    _groups: Optional[_log.GroupTable]

    def __new__(cls, name: Optional[str] = None, *args: Any, path: Optional[StrPath] = None,
                **kwargs: Any) -> Log[T]:
        if cls is Log:
            cls = MemoryLog if path is None else DirectoryLog
        return super().__new__(cls)

    @classmethod
    def open(cls, name_or_path: StrPath, trust_owner: bool = False, *,
             serializer: Optional[Serializer] = None) -> Log[Any]:
        """Open an existing log.

        Args:
            name_or_path: A memory-mode log's name, or a directory-mode
                log's directory (a path-like object, or a str with a '/').
            trust_owner: Open a log another user owns.
            serializer: The (dumps, loads) pair it was made with, if any.

        Returns:
            A MemoryLog or a DirectoryLog.

        Raises:
            SegmentNotFound: No log has that name, or the directory holds
                none.
            SegmentMismatch: It is not a pyqueue log.
            SegmentNotOwned: Memory mode: another user owns it.
            PermissionError: Directory mode: the directory belongs to
                another user or others may write it.
        """
        if _is_path(name_or_path):
            return DirectoryLog.open(name_or_path, trust_owner, serializer=serializer)
        return MemoryLog.open(name_or_path, trust_owner,  # type: ignore[arg-type]
                              serializer=serializer)

    # append(value, key=None, headers=None) and append_many(values, key=None,
    # headers=None) are the cores' (pyqueue/_log.pyx, LogCoreBase).

    def _setup_common(self) -> None:
        self._groups = None
        self._consumers = Members()

    def close(self) -> None:
        """Close this handle and the consumers made from it in this
        process (they leave their groups; other handles and processes are
        unaffected); closing twice does nothing. The handle closes even
        when a consumer fails to leave.

        Raises:
            LockTimeout: A consumer's group lock stayed held by a stopped
                process (that member is removed once it looks silent).
        """
        close_consumers(self, super().close)  # type: ignore[misc]

    def read(self, partition: int, offset: int, max_records: int = 1000,
             timeout: Optional[float] = 0) -> List[Record]:
        """Read records of a partition from offset on, without consuming
        them.

        Args:
            partition: The partition.
            offset: The first offset to read.
            max_records: The most records returned.
            timeout: Seconds to wait for the first record (None: for ever,
                0: not at all).

        Returns:
            Up to max_records Records in offset order; an empty list when
            none came in time. A record that cannot be decoded or is
            damaged ends the list before it.

        Raises:
            OffsetOutOfRange: offset is before start_offset(partition)
                (dropped by retention) or beyond end_offset(partition).
            ShutDown: The log is shut down and offset is its end: nothing
                more will come (no wait, whatever the timeout).
            PoisonRecord: The record at offset cannot be decoded (it has
                .partition and .offset; read on from offset + 1 to skip it).
            CorruptRecord: The record at offset is damaged.
            ValueError: offset is not an int from 0 to 2**63-1, partition is out
                of range, max_records is not a positive int, timeout is
                NaN, or the log is closed.
            TypeError: partition is not an int, or timeout not a number.
        """
        # The arguments as every backend checks them (the partition's
        # range by the backend, after its closed check).
        partition = _api.check_partition(partition, self.partitions or None)
        offset = _api.check_offset(offset)
        max_records = _api.check_max_records(max_records)
        t = _api.check_timeout(timeout)
        return self._read(partition, offset, max_records, float("inf") if t is None else t,
                          Record)

    def shutdown(self, immediate: bool = False) -> None:
        """Shut the log down for every process (as queue.Queue.shutdown
        of Python 3.13): appends raise ShutDown from now on; reads and
        consumers read on to the end offset of each partition, and there
        a read or poll raises ShutDown instead of waiting (iterating over a
        consumer ends); every read or poll waiting in any process wakes.
        Nothing is removed: records stay readable by offset, and consumer
        groups can still commit.

        The flag lives in the shared segment (memory mode: for good; a
        directory log: in its control file, until the last handle closes:
        a directory opened again afresh takes appends again).

        Args:
            immediate: Not supported: a log discards nothing, so there is
                nothing for immediate=True to drop (use shutdown()).

        Raises:
            ValueError: immediate is true, or the log is closed.
        """
        if immediate:
            raise ValueError("Log.shutdown(immediate=True) is not supported: a log keeps every "
                             "record it committed; shutdown() stops appends and ends reads "
                             "at the end offset")
        self._shutdown(False)

    @property
    def is_shutdown(self) -> bool:
        """True once the log has been shut down (by any process)."""
        return bool(self._shutdown_state())

    def start_offset(self, partition: int) -> int:
        """The offset of the oldest record still in the partition.

        Args:
            partition: The partition.

        Returns:
            The offset.

        Raises:
            ValueError: partition is out of range, or the log is closed.
        """
        return self._bounds(_api.check_partition(partition, self.partitions or None))[0]

    def end_offset(self, partition: int) -> int:
        """The offset the next record appended to the partition will get.

        Args:
            partition: The partition.

        Returns:
            The offset.

        Raises:
            ValueError: partition is out of range, or the log is closed.
        """
        return self._bounds(_api.check_partition(partition, self.partitions or None))[1]

    # ---- consumer groups ----------------------------------------------

    def _group_table(self) -> _log.GroupTable:
        if self._groups is None:
            self._groups = super()._group_table()  # type: ignore[misc]
        return self._groups

    def consumer(self, group: str, *, auto_offset_reset: str = "earliest",
                 auto_commit: bool = False, auto_commit_interval: float = 5.0,
                 max_poll_interval: float = 300.0) -> Consumer:
        """Join consumer group `group` in this process.

        Args:
            group: The group's name (made when it does not exist).
            auto_offset_reset: As pyqueue.Consumer.
            auto_commit: As pyqueue.Consumer.
            auto_commit_interval: As pyqueue.Consumer.
            max_poll_interval: As pyqueue.Consumer.

        Returns:
            A new member of the group (a pyqueue.Consumer).

        Raises:
            ValueError: A bad option, or the log is closed.
            PyQueueError: The log has no room for another group, or the
                group for another member.
        """
        return Consumer(self, group, auto_offset_reset=auto_offset_reset,
                        auto_commit=auto_commit, auto_commit_interval=auto_commit_interval,
                        max_poll_interval=max_poll_interval)

    def groups(self) -> List[str]:
        """The names of the log's consumer groups, sorted.

        Raises:
            ValueError: The log is closed.
        """
        return sorted(name for _, name in self._group_table().names())

    def group_offsets(self, group: str) -> Dict[int, Dict[str, Any]]:
        """Where a consumer group stands in each partition.

        Args:
            group: The group's name.

        Returns:
            {partition: {"committed", "end", "lag", "owner_pid"}}: committed
            is None (and lag counts from the start) where nothing is
            committed; owner_pid is None for an unassigned partition.

        Raises:
            KeyError: The log has no such group.
        """
        gt, g = self._group_index(group)
        members = {m["member_id"]: m["pid"] for m in gt.members(g)}
        out: Dict[int, Dict[str, Any]] = {}
        for p in range(self.partitions):
            start, end = self._bounds(p)
            committed, _ms = gt.committed(g, p)
            at = start if committed is None else max(committed, start)
            out[p] = {"committed": committed, "end": end, "lag": max(0, end - at),
                      "owner_pid": members.get(gt.owner(g, p))}
        return out

    def group_members(self, group: str) -> List[Dict[str, Any]]:
        """The members of a consumer group.

        Args:
            group: The group's name.

        Returns:
            [{pid, alive, member_id, idle_s, partitions}], one per member.

        Raises:
            KeyError: The log has no such group.
        """
        gt, g = self._group_index(group)
        return gt.members(g)

    def delete_group(self, group: str) -> None:
        """Remove a consumer group and its committed offsets.

        Args:
            group: The group's name.

        Raises:
            KeyError: The log has no such group.
            PyQueueError: The group has live members.
        """
        gt, g = self._group_index(group)
        gt.delete(g)

    def _group_index(self, group: str) -> Tuple[_log.GroupTable, int]:
        gt = self._group_table()
        found = gt.find(group, False)
        if found is None:
            raise KeyError(f"no consumer group {group!r}")
        return gt, found[0]

    def __enter__(self: _L) -> _L:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# pq_log.h: PQ_LOG_PARAM_USER0, the binding's flags of a memory-mode log.
_PARAM_USER0 = 5


def _check_log_serializer(log: Any, serializer: Optional[Serializer], custom: bool,
                          where: str) -> None:
    """The serializer given against the log's flag (made with one or not),
    as Queue's rules: one for a log made without is a settings ValueError,
    none for a log made with one a PyQueueError."""
    if serializer is not None and not custom:
        raise ValueError(f"{where} exists with other settings: serializer=None, not a custom "
                         "serializer (settings apply when a log is created)")
    if serializer is None and custom:
        raise PyQueueError(f"{where} was created with a custom serializer: pass the same "
                           "serializer= to open it")
    log._set_serializer(serializer)


def _open_memory(name: str, serializer: Optional[Serializer]) -> MemoryLog[Any]:
    return MemoryLog.open(name, serializer=serializer)


def _open_directory(path: str, trust_owner: bool,
                    serializer: Optional[Serializer]) -> DirectoryLog[Any]:
    return DirectoryLog.open(path, trust_owner, serializer=serializer)


class MemoryLog(Log[T], _log.MemoryLogCore[T]):
    """A Log in one shared-memory segment (what ``Log(path=None)`` makes).

    Args:
        name: The segment's name (None: a fresh unnamed one).
        partitions: As Log.
        retention_bytes: Each partition's ring in bytes (rounded up to a
            power of two, at least 64 KiB; default 8 MiB).
        retention_ms: As Log.
        perm: As Log.
        path: Must be None.
        segment_bytes: Must be None (directory mode only).
        fsync: Must be None (directory mode only).
        fsync_interval: Must be None (directory mode only).
        trust_owner: As Log.
        serializer: As Log (kept in the segment's header).

    Raises:
        ValueError: A bad parameter, a directory-mode one, or the log exists
            with other ones.
        PyQueueError: It was made with a custom serializer and none is
            given.
        SegmentMismatch: The name is not a pyqueue log's.
        SegmentNotOwned: Another user owns it and trust_owner is false.
    """

    def __init__(self, name: Optional[str] = None, *, partitions: Optional[int] = None,
                 retention_bytes: Optional[int] = None, retention_ms: Optional[int] = None,
                 perm: Optional[int] = 0o600, path: Optional[StrPath] = None,
                 segment_bytes: Optional[int] = None, fsync: Optional[str] = None,
                 fsync_interval: Optional[float] = None, trust_owner: bool = False,
                 serializer: Optional[Serializer] = None, _open_only: bool = False) -> None:
        serializer = _check_serializer(serializer)
        if path is not None:
            raise ValueError("a MemoryLog has no path (use Log(path=...) for directory mode)")
        for what, v in (("segment_bytes", segment_bytes), ("fsync", fsync),
                        ("fsync_interval", fsync_interval)):
            if v is not None:
                raise ValueError(f"{what} applies to directory mode: give path=")
        parts = _check_partitions(partitions)
        capacity = self._ring_bytes(retention_bytes)
        retention = _check_retention_ms(retention_ms)
        _check_perm(perm)

        def init(mm: mmap.mmap) -> None:
            _log.memory_create_segment(mm, parts, capacity, retention or 0,
                                       _log.FLAG_CUSTOM_SERIALIZER if serializer else 0)

        name, mm, perm_now, created = _segment.create_or_open(
            name, _log.memory_segment_size(parts, capacity), perm, init, _KIND_LOG, trust_owner,
            _open_only)
        custom = bool(_core.segment_info(mm)["params"][_PARAM_USER0] &
                      _log.FLAG_CUSTOM_SERIALIZER)
        self._setup(name, mm, perm_now)
        self._serializer = serializer
        try:
            _check_log_serializer(self, serializer, custom, f"log {name!r}")
        except Exception:
            self.close()
            raise
        if not created:
            where = f"log {name!r}"
            _same("partitions", partitions, self.partitions, where)
            if retention_bytes is not None:
                _same("retention_bytes (rounded)", capacity, self.capacity_bytes, where)
            _same("retention_ms", retention, self.retention_ms, where)

    @staticmethod
    def _ring_bytes(retention_bytes: Optional[int]) -> int:
        if retention_bytes is None:
            return DEFAULT_MEMORY_RETENTION_BYTES
        n = max(_check_int("retention_bytes", retention_bytes, 1), MIN_MEMORY_RETENTION_BYTES)
        return 1 << (n - 1).bit_length()

    @classmethod
    def open(cls, name: str, trust_owner: bool = False, *,  # type: ignore[override]
             serializer: Optional[Serializer] = None) -> MemoryLog[Any]:
        """Open an existing memory-mode log.

        Args:
            name: The log's name.
            trust_owner: Open a log another user owns.
            serializer: The (dumps, loads) pair it was made with, if any.

        Returns:
            A new handle of the log.

        Raises:
            SegmentNotFound: No segment has that name.
            SegmentMismatch: It is not a pyqueue log.
            SegmentNotOwned: Another user owns it and trust_owner is false.
            ValueError: A serializer is given and it was made without one.
            PyQueueError: It was made with a custom serializer and none is
                given.
        """
        return cls(name, trust_owner=trust_owner, serializer=serializer, _open_only=True)

    def _setup(self, name: str, mm: mmap.mmap, perm: int = 0o600) -> None:
        self._name = name
        # pyqueue._oob names a large record's segment after the log's and
        # makes it with the log's mode ("Log: large records").
        self._shm_name = _segment.shm_name(name)
        self._mode = perm
        self._setup_common()
        self._attach(mm)

    def enforce_retention(self) -> int:
        """Drop the records older than retention_ms now (appends do it as
        they go).

        Returns:
            The number of records dropped.

        Raises:
            ValueError: The log is closed.
        """
        now = _now_ms()
        return sum(self._expire(p, now) for p in range(self.partitions))

    @property
    def name(self) -> str:
        """The segment's name."""
        return self._name

    @property
    def path(self) -> None:
        """None (a memory-mode log has no directory)."""
        return None

    def unlink(self) -> None:
        """Remove the log's name (processes that have it open keep it) and
        the segments of its large (out-of-band) records.

        A name that is gone already is left as it is.

        Raises:
            PermissionError: The name belongs to another user (in the
                sticky /dev/shm).
        """
        _segment.disown(self._name)
        _segment.unlink(self._name)

    def __reduce__(self) -> Tuple[Any, ...]:
        return (_open_memory, (self._name, self._serializer))

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<pyqueue.Log {self.__dict__.get('_name')!r} {state}>"


class DirectoryLog(Log[T], _log.DirLogCore[T]):
    """A Log in a directory of segment files (what ``Log(path=...)`` makes),
    CRC32C per record.

    Args:
        name: Must be None (the path names the log).
        path: The log's directory (made with its parents when missing).
        partitions: As Log.
        retention_bytes: Bytes kept per partition (None: all).
        retention_ms: As Log.
        segment_bytes: The size a segment file rolls at (default 64 MiB).
        fsync: "never" (default), "interval" or "always".
        fsync_interval: Seconds between syncs with fsync="interval"
            (default 1.0).
        perm: The files' permission mask (at least 0o600, not writable by
            others; default 0o600).
        trust_owner: Use a directory another user owns.

    Attributes:
        recovery: What opening the log repaired (one entry per repair).

    Raises:
        ValueError: A bad parameter, or the log exists with other ones.
        PermissionError: The directory belongs to another user, or others
            (or a group the log's perm does not allow) may write it.
        SegmentNotFound: Opening (open()) a directory that holds no log.
        OSError: The directory cannot be made or read.
    """

    recovery: List[Any]
    retention_bytes: Optional[int]
    retention_ms: Optional[int]
    fsync: str

    def __init__(self, name: Optional[str] = None, *, path: StrPath,
                 partitions: Optional[int] = None, retention_bytes: Optional[int] = None,
                 retention_ms: Optional[int] = None, segment_bytes: Optional[int] = None,
                 fsync: Optional[str] = None, fsync_interval: Optional[float] = None,
                 perm: Optional[int] = None, trust_owner: bool = False,
                 serializer: Optional[Serializer] = None, _open_only: bool = False) -> None:
        serializer = _check_serializer(serializer)
        if name is not None:
            raise ValueError("a directory-mode log is named by its path: give name or path, "
                             "not both")
        path = os.path.abspath(os.fspath(path))
        parts = _check_partitions(partitions)
        if retention_bytes is not None:
            _check_int("retention_bytes", retention_bytes, 1)
        retention = _check_retention_ms(retention_ms)
        seg = DEFAULT_SEGMENT_BYTES if segment_bytes is None else _check_int(
            "segment_bytes", segment_bytes, _log.MIN_SEGMENT_BYTES, _log.MAX_SEGMENT_BYTES)
        seg = -(-seg // 4096) * 4096
        if fsync is not None and fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {sorted(FSYNC_POLICIES)}, not {fsync!r}")
        if fsync_interval is not None and not (isinstance(fsync_interval, (int, float)) and
                                                fsync_interval > 0):
            raise ValueError("fsync_interval must be a positive number of seconds")
        if perm is not None:
            _check_perm(perm)
            if not perm & 0o600 == 0o600:
                raise ValueError("perm must give the owner read and write (0o600 at least)")
            if perm & 0o002:
                # Its directories would be writable by others, which every
                # opener refuses (they could plant files in it): say so
                # before anything is made.
                raise ValueError(f"perm {perm:#o} lets others write: a directory-mode log's "
                                 "directory may not be writable by others; share it through "
                                 "a group (0o660)")
        self._path = path
        self._trust_owner = bool(trust_owner)
        self._setup_common()
        self.recovery = []
        if not os.path.lexists(path):
            if _open_only:
                raise SegmentNotFound(f"no pyqueue log in {path!r}")
            parent = os.path.dirname(path)
            if parent:
                os.makedirs(parent, mode=0o700, exist_ok=True)
            try:
                _logdir.make_dir(path, _logdir.FILE_PERM if perm is None else perm, trust_owner)
            except FileExistsError:
                pass
        # Whoever can write the directory can plant links and files in it
        # (its group: checked against the log's perm once log.json is read).
        exists = os.path.lexists(os.path.join(path, _logdir.META))
        _logdir.check_dir(path, trust_owner, perm if perm is not None else
                          0o020 if exists else _logdir.FILE_PERM)
        if _open_only and _logdir.read_meta(path) is None:
            raise SegmentNotFound(f"no pyqueue log in {path!r}")
        with _logdir.OpenLock(path, _logdir.FILE_PERM if perm is None else perm):
            meta_owner: List[int] = []
            meta = _logdir.read_meta(path, meta_owner)
            if meta is None:
                if _open_only:
                    raise SegmentNotFound(f"no pyqueue log in {path!r}")
                meta = {"format": _logdir.FORMAT, "partitions": parts, "segment_bytes": seg,
                        "retention_bytes": retention_bytes, "retention_ms": retention,
                        "fsync": fsync or "never",
                        "fsync_interval": float(fsync_interval or DEFAULT_FSYNC_INTERVAL),
                        "perm": _logdir.FILE_PERM if perm is None else perm}
                if serializer is not None:
                    meta["serializer"] = "custom"
                _logdir.check_dir(path, trust_owner, meta["perm"])
                _logdir.create_layout(path, meta, meta["perm"], trust_owner)
            else:
                meta.setdefault("perm", _logdir.FILE_PERM)  # logs made before perm=
                _same("perm", perm, meta["perm"], path)
                # The group may write only where the log's perm says so, and
                # only a log.json of the directory's owner says it (a group
                # member could replace it with one that grants the group).
                if (not trust_owner and meta["perm"] & 0o020 and
                        meta_owner[0] != os.lstat(path).st_uid):
                    raise PermissionError(
                        errno.EPERM, f"refused: {_logdir.META} belongs to uid {meta_owner[0]}, "
                        "not to the directory's owner, and says the group may write the "
                        "directory; pass trust_owner=True to use it on purpose", str(path))
                _logdir.check_dir(path, trust_owner, meta["perm"])
                _same("partitions", partitions, meta["partitions"], path)
                _same("segment_bytes", None if segment_bytes is None else seg,
                      meta["segment_bytes"], path)
                _same("retention_bytes", retention_bytes, meta["retention_bytes"], path)
                _same("retention_ms", retention, meta["retention_ms"], path)
                _same("fsync", fsync, meta["fsync"], path)
                _same("fsync_interval", None if fsync_interval is None else
                      float(fsync_interval), meta["fsync_interval"], path)
            self._serializer = serializer
            _check_log_serializer(self, serializer, meta.get("serializer") is not None, path)
            self._meta = meta
            self._perm = meta["perm"]
            self.retention_bytes = meta["retention_bytes"]
            self.retention_ms = meta["retention_ms"]
            self.fsync = meta["fsync"]
            fd, alone = _logdir.take_users_lock(path, self._perm)
            self._users_fd = fd
            self._finalizer = weakref.finalize(self, os.close, fd)
            try:
                if alone:
                    self._recover()
                    _logdir.share_users_lock(fd)
                    for entry in self.recovery:
                        _logger.warning("log %s: recovery: %s", path, entry)
                else:
                    self._attach_control(_logdir.map_control(path), FSYNC_POLICIES[self.fsync],
                                         meta["fsync_interval"])
            except BaseException:
                self._close_control()
                self._finalizer()
                raise
        self._bases: Dict[int, Any] = {}
        if self.retention_ms is not None:  # by age between rolls too
            self._set_retention_hook(self._retention_from_append, _RETENTION_CHECK_S)

    def _retention_from_append(self, p):
        self._with_lock(p, lambda: self._retention_locked(p, False))

    @classmethod
    def open(cls, path: StrPath,
             trust_owner: bool = False, *,
             serializer: Optional[Serializer] = None) -> DirectoryLog[Any]:
        """Open an existing directory-mode log.

        Args:
            path: The log's directory.
            trust_owner: Use a directory another user owns.
            serializer: The (dumps, loads) pair it was made with, if any.

        Returns:
            A new handle of the log (recovered first when no other process
            has it open).

        Raises:
            SegmentNotFound: path holds no log.
            PermissionError: The directory belongs to another user or others
                may write it, unless trust_owner.
            ValueError: A serializer is given and it was made without one.
            PyQueueError: It was made with a custom serializer and none is
                given.
        """
        return cls(path=path, trust_owner=trust_owner, serializer=serializer, _open_only=True)

    def _recover(self):
        """Alone: rebuild the control file from the segment files (the
        groups' committed offsets are kept), recovering each partition."""
        meta, path = self._meta, self._path
        saved = _logdir.saved_state(path, meta["partitions"])
        self._attach_control(_logdir.new_control(path, meta["partitions"],
                                                 meta["segment_bytes"], self._perm),
                             FSYNC_POLICIES[self.fsync], meta["fsync_interval"])
        starts = {}
        for p in range(meta["partitions"]):
            old = None
            if saved is not None:
                old = saved[1].get(p)
            start, base, cursor, closed, m = _logdir.recover_partition(
                path, p, meta["segment_bytes"], old, self.recovery, self._perm,
                self._trust_owner)
            self._restore(p, start, base, cursor, closed)
            self._set_active(p, m)
            starts[p] = (start, cursor[1])
        if saved is not None:
            gt = self._group_table()
            for name, offsets in saved[0]:
                g = gt.find(name, True)[0]
                for p, (off, ms) in offsets.items():
                    start, end = starts[p]
                    gt.set_committed(g, p, min(max(off, start), end), ms)
        self._bases = {}
        for p in range(meta["partitions"]):
            self._with_lock(p, lambda p=p: self._retention_locked(p, False))  # type: ignore[misc]

    # ---- hooks of DirLogCore (called under the partition's lock where
    #      they change files) ----------------------------------------------

    def _map_segment(self, p, base, for_append):
        return _logdir.map_segment(self._path, p, base, for_append,
                                   self.segment_bytes if for_append else None, self._perm)

    def _forget_bases(self, p):
        self._bases.pop(p, None)

    def _allocate(self, file_path, start, upto):
        _logdir.allocate(file_path, start, upto)

    def _segment_bases(self, p, seg_gen):
        cached = self._bases.get(p)
        if cached is None or cached[0] != seg_gen:
            cached = (seg_gen, _logdir.list_bases(self._path, p))
            self._bases[p] = cached
        return cached[1]

    def _roll_locked(self, p, old, retention=True):
        """The active segment is full (or expired): make the next one and
        switch to it, then apply retention (unless told not to)."""
        snap = self._snapshot(p)
        # What rolls that died left past the active segment (never switched
        # to; appends went on in the old one) goes first.
        if _logdir.remove_strays(self._path, p, snap["active_base"]):
            self._forget_bases(p)
        new = _logdir.create_segment(self._path, p, snap["end_offset"], self.segment_bytes,
                                     self._perm)
        if self.fsync != "never":
            # Before the switch: once it is published, a reader thread of
            # this process maps the new active segment and unmaps old.
            try:
                old.sync(0, snap["end_pos"])
            except BaseException:
                new.close()
                raise
        try:
            self._roll_control(p, old)
        except BaseException:
            new.close()
            raise
        if self.fsync != "never":
            old.sync_index()
            _logdir._fsync_dir(_logdir.partition_dir(self._path, p))
        old_base = old.base_offset
        self._set_active(p, new)  # unmaps the old one before it shrinks
        _logdir.trim_segment(self._path, p, old_base, snap["end_pos"], snap["index_count"])
        if retention:
            self._retention_locked(p, False)
        return new

    def _retention_locked(self, p, roll_expired):
        """Remove the oldest closed segments beyond retention_bytes, or whose
        newest record is older than retention_ms (roll_expired: the active
        one too, when all of it has expired). Returns segments removed."""
        if self.retention_bytes is None and self.retention_ms is None:
            return 0
        now = _now_ms()
        snap = self._snapshot(p)
        if roll_expired and self.retention_ms is not None:
            max_ts, records, _ = self._active_stats(p)
            if records and max_ts < now - self.retention_ms:
                self._roll_locked(p, self._active_segment(p), retention=False)
                snap = self._snapshot(p)
        _, _, closed_bytes = self._active_stats(p)
        total = closed_bytes + snap["end_pos"]
        bases = [b for b in self._segment_bases(p, snap["seg_gen"]) if b < snap["active_base"]]
        drop, removed = [], 0
        for base in bases:
            h = _logdir.read_index_header(self._path, p, base)
            size = h["end_pos"] if h else _logdir.data_size(self._path, p, base)
            if self.retention_bytes is not None and total - removed - size >= self.retention_bytes:
                pass
            elif (self.retention_ms is not None and h is not None and
                  h["max_timestamp_ms"] < now - self.retention_ms):
                pass
            else:
                break
            drop.append(base)
            removed += size
        if not drop:
            return 0
        i = len(drop)
        new_start = bases[i] if i < len(bases) else snap["active_base"]
        self._set_start(p, new_start, removed)
        for base in drop:
            self._forget_closed(p, base)
            _logdir.remove_segment(self._path, p, base)
        return len(drop)

    def enforce_retention(self) -> int:
        """Apply retention_bytes and retention_ms now (rolls and, at most
        once a second, appends do it as they go).

        Returns:
            The number of segment files removed.

        Raises:
            ValueError: The log is closed.
            LockTimeout: A partition's lock stayed held by a stopped process.
        """
        return sum(self._with_lock(p, lambda p=p: self._retention_locked(p, True))  # type: ignore[misc]
                   for p in range(self.partitions))

    # ---- names --------------------------------------------------------

    @property
    def name(self) -> str:
        """The log's directory (absolute)."""
        return self._path

    @property
    def path(self) -> str:
        """The log's directory (absolute)."""
        return self._path

    def close(self) -> None:
        """Close the consumers made from this handle in this process (they
        leave their groups), unmap the log and let go of it (its files
        stay); closing twice does nothing. The handle closes even when a
        consumer fails to leave.

        Raises:
            LockTimeout: A consumer's group lock stayed held by a stopped
                process (that member is removed once it looks silent).
        """
        if not self._closed:
            close_consumers(self, self._close_files)

    def _close_files(self) -> None:
        self._close_control()
        self._finalizer()

    def __reduce__(self) -> Tuple[Any, ...]:
        return (_open_directory, (self._path, self._trust_owner, self._serializer))

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<pyqueue.Log path={self.__dict__.get('_path')!r} {state}>"
