"""Exceptions of pyqueue, and the one translation of the C core's -errno
codes into them (from_code). `queue.Full` and `queue.Empty` are used as in
the standard library."""
from __future__ import annotations

import errno as _errno
import os as _os
import sys
from typing import Any, Dict, Iterable, List, Optional, Tuple


class PyQueueError(Exception):
    """Base class of pyqueue's own exceptions."""


class SegmentNotFound(PyQueueError, FileNotFoundError):
    """No queue (segment) of that name exists."""


class SegmentMismatch(PyQueueError, ValueError):
    """The segment exists but is not a usable pyqueue segment of the
    expected kind: another program's, another layout version, truncated or
    corrupt."""


class MessageTooLarge(PyQueueError, ValueError):
    """The encoded message is larger than max_message_bytes allows."""


class SegmentNotOwned(PyQueueError, PermissionError):
    """The segment exists but belongs to another user: opening it would
    trust that user (pickle runs their code). Pass trust_owner=True to
    share a queue between users on purpose."""


class OffsetOutOfRange(PyQueueError, LookupError):
    """A Log read asked for an offset that is not in the partition: before
    its start (dropped by retention) or beyond its end.

    Attributes:
        partition: The partition read.
        offset: The offset asked for.
        start_offset: The partition's oldest offset then.
        end_offset: The offset its next record will get.
    """

    partition: Optional[int]
    offset: Optional[int]
    start_offset: Optional[int]
    end_offset: Optional[int]

    def __init__(self, message: str, partition: Optional[int] = None,
                 offset: Optional[int] = None, start_offset: Optional[int] = None,
                 end_offset: Optional[int] = None) -> None:
        super().__init__(message)
        self.partition = partition
        self.offset = offset
        self.start_offset = start_offset
        self.end_offset = end_offset

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self), (str(self), self.partition, self.offset, self.start_offset,
                             self.end_offset))


class CorruptRecord(SegmentMismatch):
    """A log record (or index) failed its check: in directory mode its
    CRC32C or format (the data on disk is damaged), in memory mode the
    record headers or offset fields of the ring. No record of the damaged
    bytes is ever returned; the records before it in the same read are
    returned first, and a consumer can skip it with seek(partition,
    offset + 1).

    Attributes:
        path: The damaged file (None in memory mode).
        position: The byte offset in the file.
        partition: The partition read.
        offset: The offset being read.
    """

    path: Optional[str]
    position: Optional[int]
    partition: Optional[int]
    offset: Optional[int]

    def __init__(self, message: str, path: Optional[str] = None,
                 position: Optional[int] = None, partition: Optional[int] = None,
                 offset: Optional[int] = None) -> None:
        super().__init__(message)
        self.path = path
        self.position = position
        self.partition = partition
        self.offset = offset

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self), (str(self), self.path, self.position, self.partition, self.offset))


class UndecodableMessage(PyQueueError):
    """One message (or log record) could not be decoded: its pickle fails,
    its codec is not this handle's, or its out-of-band segment is gone.
    It is reported alone, by its own call: a batch call (get_many, a Log
    read) returns the messages before it, and the messages after it stay
    for the next calls. The message itself has been taken (a Queue or a
    Subscription does not give it again; a Log keeps it, and the next read
    at that offset raises again).

    Attributes:
        position: The record's position: the ring position of a Queue or
            Topic record, the offset of a Log record.
        partition: The Log partition (None for a Queue or Topic).
        type_code: The record's codec byte.
        raw: The payload bytes as stored.
        cause: The exception the decoder raised (also __cause__).
    """

    position: Optional[int]
    partition: Optional[int]
    type_code: Optional[int]
    raw: Optional[bytes]
    cause: Optional[BaseException]

    def __init__(self, message: str, position: Optional[int] = None,
                 partition: Optional[int] = None, type_code: Optional[int] = None,
                 raw: Optional[bytes] = None, cause: Optional[BaseException] = None) -> None:
        super().__init__(message)
        self.position = position
        self.partition = partition
        self.type_code = type_code
        self.raw = raw
        self.cause = cause
        if cause is not None:
            self.__cause__ = cause

    @property
    def offset(self) -> Optional[int]:
        """A Log record's offset (the same as position)."""
        return self.position

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self), (str(self), self.position, self.partition, self.type_code,
                             self.raw, None))


class PoisonRecord(UndecodableMessage, ValueError):
    """A Log record that cannot be decoded: its pickle fails to load (a
    class this process lacks, a damaged payload), its headers are malformed
    or its type code is unknown. The record stays in the log and nothing
    around it is lost: a read or poll that meets it returns the records
    before it first, and raises this at the next call, as long as the
    position is that record's. Skip it with consumer.seek(partition,
    offset + 1) (or read on from offset + 1); StreamProcessor(on_error=...)
    does it for you.

    Attributes:
        partition: The record's partition.
        offset: The record's offset (also position).
        type_code: The record's codec byte.
        raw: The payload bytes as stored.
        cause: The decoder's own error (also __cause__).
    """

    def __init__(self, message: str, partition: Optional[int] = None,
                 offset: Optional[int] = None, type_code: Optional[int] = None,
                 raw: Optional[bytes] = None, cause: Optional[BaseException] = None) -> None:
        super().__init__(message, position=offset, partition=partition, type_code=type_code,
                         raw=raw, cause=cause)

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self), (str(self), self.partition, self.offset, self.type_code, self.raw,
                             None))


class DeliveryExpired(PyQueueError):
    """A WorkQueue delivery was settled (ack, nack, reject, extend) after
    it stopped being this consumer's: its visibility timeout passed and the
    message was delivered again, or it was settled already, or the Delivery
    is used in another process. The message itself is not lost."""


class CommitFailed(PyQueueError):
    """A consumer's commit was fenced: a partition in it was assigned to
    another member of the group (after a rebalance), or the consumer was
    removed from the group (dead, or silent past max_poll_interval).
    Nothing of that commit was written. The consumer has its new assignment
    already; its next poll() reads the partitions it owns now.

    Attributes:
        partitions: The partitions lost, sorted.
    """

    partitions: Tuple[int, ...]

    def __init__(self, message: str, partitions: Iterable[int] = ()) -> None:
        super().__init__(message)
        self.partitions = tuple(partitions)

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self), (str(self), self.partitions))


class WorkerLost(PyQueueError):
    """A pyqueue.Pool (or Executor) task whose worker process died while
    running it (SIGKILL, the OOM killer, os._exit, a segfault) on every
    allowed try (1 + max_task_retries): it fails alone, with this error;
    the pool goes on with the other tasks.

    Attributes:
        pid: The pid of the worker that died on the last try, or None.
        exitcode: How it ended, as multiprocessing.Process.exitcode
            (-N: killed by signal N), or None when not known.
        attempts: How many times the task was run.
    """

    pid: Optional[int]
    exitcode: Optional[int]
    attempts: int

    def __init__(self, message: str, pid: Optional[int] = None,
                 exitcode: Optional[int] = None, attempts: int = 0) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.attempts = attempts

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self), (str(self), self.pid, self.exitcode, self.attempts))


if sys.version_info >= (3, 13):
    from queue import ShutDown as _ShutDownBase
else:
    class _ShutDownBase(Exception):
        """Stands for queue.ShutDown before Python 3.13."""


class ShutDown(PyQueueError, _ShutDownBase):
    """The queue (topic, log, work queue) has been shut down, by this or
    another process (shutdown()): raised by puts, by gets once nothing is
    left to drain (at once after shutdown(immediate=True)), and by every
    put or get that was blocked when it happened. On Python 3.13 and later
    a subclass of queue.ShutDown, so `except queue.ShutDown` catches it; on
    older Pythons a backport of it (catch pyqueue.ShutDown)."""


class LockTimeout(PyQueueError, TimeoutError):
    """A lock inside a segment stayed held by another process for longer
    than the call may wait: its holder is alive but not running (stopped
    with SIGSTOP or Ctrl-Z, in a debugger, in a frozen cgroup) or hung.
    Raised by calls that do not block by their API (WorkQueue ack/nack/...,
    Log append and commit, group changes) after waiting LOCK_WAIT seconds
    with the GIL released; blocking calls with a timeout raise their usual
    queue.Full / queue.Empty instead. Nothing was changed by the call: retry
    it. One exception: a memory-mode Log.append_many larger than one claim
    (256 records, or half the ring) whose first claims went in before a
    later one gave up; its `appended` says which records are in the log
    (retry the others only).

    Attributes:
        pid: The holder's process id (None when unknown).
        tid: The holder's thread id (None when unknown).
        state: The holder's /proc state, e.g. "T (stopped)".
        waited: Seconds the call waited.
        appended: None (nothing was changed), or the (partition, offset) of
            each record of an append_many that went in before it gave up,
            in order: they are the first len(appended) values.
    """

    pid: Optional[int]
    tid: Optional[int]
    state: Optional[str]
    waited: Optional[float]
    appended: Optional[List[Tuple[int, int]]]

    def __init__(self, message: str, pid: Optional[int] = None, tid: Optional[int] = None,
                 state: Optional[str] = None, waited: Optional[float] = None,
                 appended: Optional[List[Tuple[int, int]]] = None) -> None:
        super().__init__(message)
        self.pid = pid
        self.tid = tid
        self.state = state
        self.waited = waited
        self.appended = appended

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self), (str(self), self.pid, self.tid, self.state, self.waited,
                             self.appended))


def _holder_of(tid: int) -> Tuple[Optional[int], Optional[str]]:
    """(pid, state) of thread tid from /proc; (None, None) when it does
    not exist (or /proc cannot say)."""
    try:
        with open(f"/proc/{int(tid)}/status", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except (OSError, ValueError):
        return None, None
    pid = state = None
    for line in text.splitlines():
        if line.startswith("State:"):
            state = line.split(":", 1)[1].strip()
        elif line.startswith("Tgid:"):
            try:
                pid = int(line.split(":", 1)[1])
            except ValueError:
                pass
    return pid, state


def lock_timeout(what: str, tid: int, waited: float) -> LockTimeout:
    """The LockTimeout of a call (`what`) that gave up after `waited`
    seconds on a lock whose word names thread `tid` (0: unknown)."""
    pid, state = _holder_of(tid) if tid else (None, None)
    prefix = f"{what}: " if what else ""
    if pid is not None:
        holder = f"process {pid}" + (f" (thread {tid})" if tid != pid else "")
        holder += f", state {state}" if state else ""
    elif tid:
        holder = (f"thread {tid}, which does not exist here (a damaged lock word, or a "
                  "holder in another pid namespace)")
    else:
        holder = "another process"
    return LockTimeout(f"{prefix}gave up after {waited:.2f} s waiting for a lock held by "
                       f"{holder}; nothing was changed, the call may be retried",
                       pid, tid or None, state, waited)


def writer_timeout(what: str, partition: int, offset: int, pid: int,
                   waited: float) -> LockTimeout:
    """The LockTimeout of a memory-mode Log append (`what`) that gave up
    after `waited` seconds waiting for process `pid` to commit the record
    at `offset` of `partition`, whose ring space it needs (retention never
    overwrites a record still being written)."""
    _, state = _holder_of(pid) if pid > 0 else (None, None)
    who = f"process {pid}" + (f", state {state}" if state else "")
    at = f"partition {partition} offset {offset}" if offset >= 0 and offset < 2**63 \
        else f"partition {partition}"
    return LockTimeout(f"{what + ': ' if what else ''}gave up after {waited:.2f} s waiting for {who} to "
                       f"finish writing the record at {at}, whose space retention needs "
                       "(a record still being written is never overwritten); nothing was "
                       "changed, the call may be retried",
                       pid if pid > 0 else None, None, state, waited)


def partial_append(e: LockTimeout, partition: int, offsets: List[int],
                   total: int) -> LockTimeout:
    """The LockTimeout `e` of an append_many that gave up after its first
    claims went in (their `offsets`, of `total` records): it says so, and
    which, instead of "nothing was changed"."""
    msg = str(e).replace("; nothing was changed, the call may be retried", "")
    return LockTimeout(f"{msg}; the first {len(offsets)} of the {total} records were appended "
                       f"(partition {partition}, offsets {offsets[0]}..{offsets[-1]}), the "
                       "others not: retry only those", e.pid, e.tid, e.state, e.waited,
                       [(partition, o) for o in offsets])


# The C core's validation codes (csrc/pq_segment.h, PQ_ERR_*).
_SEGMENT_CODES = {
    _errno.EPROTO: "not a pyqueue segment",
    _errno.EPROTONOSUPPORT: "pyqueue segment of another layout version",
    _errno.EMEDIUMTYPE: "pyqueue segment of another kind (not a {kind})",
    _errno.ERANGE: "segment is truncated or its sizes are inconsistent",
    _errno.EBADMSG: "{kind} indices or records are corrupt",
}


def from_code(rc: int, what: str = "", kind: str = "queue",
              extra: Optional[Dict[int, str]] = None) -> Exception:
    """The exception for a negative return code of the C core: the one
    place where those codes become Python exceptions (the Cython modules'
    _check_rc call it). extra: {errno: message} a caller adds for codes
    that mean something particular to it, raised as PyQueueError."""
    code = -rc
    prefix = f"{what}: " if what else ""
    if extra and code in extra:
        return PyQueueError(prefix + extra[code])
    if code in _SEGMENT_CODES:
        return SegmentMismatch(prefix + _SEGMENT_CODES[code].format(kind=kind))
    if code == _errno.EMSGSIZE:
        return MessageTooLarge(f"{prefix}message does not fit in the {kind}")
    if code == _errno.EUCLEAN:
        return SegmentMismatch(f"{prefix}a lock of the {kind} is damaged (its lock word cannot "
                               "be a lock: the segment is corrupt)")
    if code == _errno.ENOLCK:
        return lock_timeout(what, 0, 0.0)
    return OSError(code, _os.strerror(code) + (f" ({what})" if what else ""))
