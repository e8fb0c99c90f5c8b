"""Type stubs of the Cython binding pyqueue/_log.pyx (the Log cores: memory
mode, directory mode, consumer groups). Only LogCoreBase's public methods
are pyqueue.Log's API; the rest serves pyqueue.log and pyqueue.consumer."""
import mmap
from typing import (Any, Callable, Generic, Iterable, List, Literal, Mapping, Optional, Tuple,
                    TypeVar, overload)

from typing_extensions import disjoint_base

from pyqueue.errors import CommitFailed as CommitFailed
from pyqueue.errors import CorruptRecord as CorruptRecord
from pyqueue.errors import MessageTooLarge as MessageTooLarge
from pyqueue.errors import OffsetOutOfRange as OffsetOutOfRange
from pyqueue.errors import PoisonRecord as PoisonRecord
from pyqueue.errors import PyQueueError as PyQueueError
from pyqueue.errors import SegmentMismatch as SegmentMismatch

_T = TypeVar("_T")
_R = TypeVar("_R")

FLAG_CUSTOM_SERIALIZER: int
GROUP_MEMBERS: int
LOCK_BOUNDED_DEADLINE: int
MAX_GROUPS: int
MAX_SEGMENT_BYTES: int
MIN_SEGMENT_BYTES: int
RECORD_HEADER_BYTES: int

def kafka_partition(key: bytes | str, num_partitions: int) -> int: ...
def encode_headers(headers: Optional[Mapping[str, Any]]) -> bytes: ...
def decode_headers(blob: bytes) -> dict[str, bytes]: ...
def murmur2(key: bytes | str) -> int: ...
def control_size(partitions: int, max_groups: int) -> int: ...
def control_create(mm: mmap.mmap, partitions: int, segment_bytes: int,
                   max_groups: int) -> None: ...
def index_file_size(segment_bytes: int) -> int: ...
def index_header_of(head: bytes, file_size: int, base_offset: int,
                    what: str = "index") -> Optional[dict[str, Any]]: ...
def memory_create_segment(mm: mmap.mmap, partitions: int, capacity: int,
                          retention_ms: int, flags: int = ...) -> None: ...
def memory_segment_size(partitions: int, capacity: int) -> int: ...

class RawValue:
    """A record value left encoded (raw_values handles)."""
    type: str
    data: bytes
    def __init__(self, type: str, data: bytes) -> None: ...

@disjoint_base
class GroupTable:
    """The consumer groups of one log."""
    @overload
    def find(self, name: str, create: Literal[True]) -> Tuple[int, int]:
        """(index, incarnation) of group `name`; None when it does not
        exist and not create. PyQueueError when the log has no room for
        another group.
        """
    @overload
    def find(self, name: str, create: bool) -> Optional[Tuple[int, int]]:
        """(index, incarnation) of group `name`; None when it does not
        exist and not create. PyQueueError when the log has no room for
        another group.
        """
    def names(self) -> List[Tuple[int, str]]:
        """[(index, name)] of the groups that exist."""
    def delete(self, g: int) -> None: ...
    def join(self, g: int, incarnation: int, timeout: float) -> Optional[int]:
        """A new member id; None when the group was deleted since it was
        found (find it again).
        """
    def leave(self, g: int, member_id: int) -> None: ...
    def heartbeat(self, g: int, member_id: int) -> bool:
        """False when the member was removed from the group."""
    def reap(self, g: int, deadline: int = ...) -> int:
        """Remove dead and silent members. deadline (here and below): of
        the wait for the group lock, monotonic ns (-1: none, 0: a moment,
        LOCK_BOUNDED: the lock wait); LockTimeout when it passed.
        """
    def generation(self, g: int) -> int: ...
    def assignment(self, g: int, member_id: int,
                   deadline: int = ...) -> Optional[Tuple[int, dict[int, int]]]:
        """(generation, {partition: epoch}) of member_id; None when it is no
        longer a member.
        """
    def commit(self, g: int, member_id: int, items: List[Tuple[int, int, int]],
               deadline: int = ...) -> bool:
        """items: [(partition, offset, epoch)]; all or nothing. False when
        fenced (a partition moved on or the member was removed).
        """
    def committed(self, g: int, partition: int) -> Tuple[Optional[int], int]:
        """(offset or None, wall-clock ms of that commit)."""
    def set_committed(self, g: int, partition: int, offset: Optional[int],
                      ms: int = 0) -> None:
        """Set (or, with None, clear) a committed offset without fencing."""
    def owner(self, g: int, partition: int) -> int: ...
    def members(self, g: int) -> List[dict[str, Any]]: ...

@disjoint_base
class SegmentMap:
    """One mapped segment file of a directory-mode log (and its index)."""
    def __new__(cls, data_mm: Any, index_mm: Any, base_offset: int, path: str,
                writable: bool) -> SegmentMap: ...
    @property
    def path(self) -> str: ...
    @property
    def base_offset(self) -> int: ...
    @property
    def writable(self) -> bool: ...
    def close(self) -> None: ...
    @property
    def data_size(self) -> int: ...
    @property
    def has_index(self) -> bool: ...
    def index_init(self) -> None:
        """Write a fresh, unsealed index header."""
    def index_header(self) -> Optional[dict[str, Any]]:
        """The sealed index header as a dict; None when it is not sealed;
        CorruptRecord when it is damaged.
        """
    def seal(self, cursor: Tuple[Any, ...]) -> None: ...
    def scan(self, limit: int, rebuild_index: bool) -> Any:
        """Walk the valid records from the start: (cursor, torn)."""
    def dirty_bytes(self, start: int, to: int) -> int: ...
    def find_record(self, start: int, to: int, min_offset: int) -> Any:
        """The position of the first whole, CRC-valid record in [start, to)
        with an offset of at least min_offset (and at most one per 40
        bytes past it); None when there is none.
        """
    def read_bytes(self, start: int, to: int) -> bytes: ...
    def zero(self, start: int, to: int) -> None: ...
    def sync(self, start: int, to: int) -> None:
        """msync the data bytes [start, to). A map closed meanwhile (by a
        roll of another thread of this process, which synced the segment
        first, or by a close of the handle) has nothing left to sync here:
        an append that committed its records must not raise after it.
        """
    def sync_index(self) -> None: ...

@disjoint_base
class LogCoreBase(Generic[_T]):
    """Base class of the Log cores (generic in the record value type)."""
    raw_values: bool
    @property
    def _closed(self) -> bool: ...
    @property
    def _custom(self) -> bool: ...
    def _set_serializer(
            self, serializer: Optional[Tuple[Callable[[Any], Any], Callable[[bytes], Any]]]
    ) -> None: ...
    def _shutdown(self, immediate: bool) -> None: ...
    def _shutdown_state(self) -> bool: ...
    def append(self, value: _T, key: bytes | str | None = None,
               headers: Optional[Mapping[str, bytes]] = None) -> Tuple[int, int]:
        """Append one record.

        Args:
            value: The record's value (bytes and str as they are, anything
                else pickled).
            key: bytes or str: picks the partition with Kafka's default
                partitioner (bit-exact); None: round-robin per process.
            headers: A dict of str -> bytes, or None.

        Returns:
            (partition, offset) of the record.

        Raises:
            ShutDown: The log was shut down.
            MessageTooLarge: key, headers and value exceed max_record_bytes
                (memory mode: only when the key and headers leave no room
                for an out-of-band reference; a larger value travels out
                of band).
            TypeError: A key or header of the wrong type.
            ValueError: The log is closed.
            LockTimeout: A partition's lock stayed held by a stopped process,
                or (memory mode) the ring space the record needs stayed
                held by a record a stopped appender is still writing.
            PyQueueError: Memory mode: retention dropped the record before
                its commit (this process was judged dead); it is not in
                the log.
        """
    def append_many(self, values: Iterable[_T], key: bytes | str | None = None,
                    headers: Optional[Mapping[str, bytes]] = None) -> List[Tuple[int, int]]:
        """Append every value of an iterable to one partition (the key's,
        or the next round-robin one), in batched claims.

        Args:
            values: The records' values, in order.
            key: As append(); one key for all of them.
            headers: As append(); the same headers on each record.

        Returns:
            The (partition, offset) of each record, in order (an empty list
            for no values).

        Raises:
            ShutDown: The log was shut down (nothing of the batch was
                appended).
            MessageTooLarge: A record exceeds max_record_bytes (memory
                mode: its key and headers leave no room for an out-of-band
                reference; checked before anything is appended).
            TypeError: A key or header of the wrong type.
            ValueError: The log is closed.
            LockTimeout: A partition's lock stayed held by a stopped process
                (memory mode, after the first of several claims: its
                `appended` lists the records that went in).
        """
    def _append(self, partition: int, values: List[Any], key: bytes | str | None,
                headers: Optional[Mapping[str, bytes]], ts_ms: int) -> List[int]: ...
    @property
    def partitions(self) -> int:
        """The number of partitions."""
    @property
    def max_record_bytes(self) -> int:
        """The largest key + headers + value a record holds in place
        (memory mode: a larger value travels out of band)."""
    def partition_for(self, key: bytes | str) -> int:
        """The partition a key goes to (Kafka's default partitioner).

        Args:
            key: bytes or str.

        Returns:
            The partition number.

        Raises:
            TypeError: key is not bytes or str.
        """

@disjoint_base
class MemoryLogCore(LogCoreBase[_T]):
    """Base class of pyqueue.log.MemoryLog."""
    def _attach(self, mm: mmap.mmap) -> None: ...
    @property
    def capacity_bytes(self) -> int:
        """Bytes of each partition's ring (its retention by size)."""
    @property
    def retention_ms(self) -> Optional[int]:
        """Records older than this many milliseconds are dropped, or None."""
    def _group_table(self) -> GroupTable: ...
    def _bounds(self, partition: int) -> Tuple[int, int]: ...
    def _expire(self, partition: int, now_ms: int) -> int: ...
    def _oob_segments(self) -> Optional[set[str]]: ...
    def _read(self, partition: int, offset: int, max_records: int, timeout: float,
              make: Callable[..., _R]) -> List[_R]: ...
    def _wait_any(self, parts: List[int], offsets: List[int], groups: GroupTable, g: int,
                  gen_seen: int, timeout: float) -> Any: ...
    def close(self) -> None:
        """Close this handle (other handles and processes are unaffected)."""

@disjoint_base
class DirLogCore(LogCoreBase[_T]):
    """Base class of pyqueue.log.DirectoryLog."""
    @property
    def _fsync_mode(self) -> int: ...
    def _attach_control(self, mm: mmap.mmap, fsync_mode: int, fsync_interval: float) -> None: ...
    @property
    def segment_bytes(self) -> int:
        """The size a segment file rolls at, in bytes."""
    def _group_table(self) -> GroupTable: ...
    def _aio_prepare(self) -> int: ...
    def _aio_finish(self) -> None: ...
    def _aio_notify(self, n: int) -> None: ...
    def _aio_seq(self) -> int | None: ...
    def _aio_waiters(self) -> int: ...
    def _release_maps(self) -> None: ...
    def _close_control(self) -> None: ...
    def _restore(self, partition: int, start: int, active_base: int, cursor: Tuple[Any, ...],
                 closed_bytes: int) -> None: ...
    def _snapshot(self, partition: int) -> dict[str, Any]: ...
    def _active_stats(self, partition: int) -> Tuple[int, int, int]: ...
    def _with_lock(self, partition: int, fn: Callable[[], _R]) -> _R: ...
    def _roll_control(self, partition: int, old: SegmentMap) -> None: ...
    def _set_retention_hook(self, hook: Callable[..., Any], every: float) -> None: ...
    def _set_start(self, partition: int, start: int, removed_bytes: int) -> None: ...
    def _set_active(self, partition: int, m: SegmentMap) -> None: ...
    def _active_segment(self, partition: int) -> SegmentMap: ...
    def _forget_closed(self, partition: int, base: int) -> None: ...
    def _bounds(self, partition: int) -> Tuple[int, int]: ...
    def _read(self, partition: int, offset: int, max_records: int, timeout: float,
              make: Callable[..., _R]) -> List[_R]: ...
    def _wait_any(self, parts: List[int], offsets: List[int], groups: GroupTable, g: int,
                  gen_seen: int, timeout: float) -> Any: ...
