"""Exceptions of pyqueue, and the one translation of the C core's -errno
codes into them (from_code). `queue.Full` and `queue.Empty` are used as in
the standard library."""
import errno as _errno
import os as _os


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
    its start (dropped by retention) or beyond its end. Attributes:
    partition, offset, start_offset, end_offset."""

    def __init__(self, message, partition=None, offset=None, start_offset=None,
                 end_offset=None):
        super().__init__(message)
        self.partition = partition
        self.offset = offset
        self.start_offset = start_offset
        self.end_offset = end_offset

    def __reduce__(self):
        return (type(self), (str(self), self.partition, self.offset, self.start_offset,
                             self.end_offset))


class CorruptRecord(SegmentMismatch):
    """A log record (or index) failed its check: in directory mode its
    CRC32C or format (the data on disk is damaged), in memory mode the
    record headers or offset fields of the ring. Attributes: path (None in
    memory mode), position (byte offset in the file), partition, offset
    (the offset being read). No record of the damaged bytes is ever
    returned; the records before it in the same read are returned first,
    and a consumer can skip it with seek(partition, offset + 1)."""

    def __init__(self, message, path=None, position=None, partition=None, offset=None):
        super().__init__(message)
        self.path = path
        self.position = position
        self.partition = partition
        self.offset = offset

    def __reduce__(self):
        return (type(self), (str(self), self.path, self.position, self.partition, self.offset))


class PoisonRecord(PyQueueError, ValueError):
    """A Log record that cannot be decoded: its pickle fails to load (a
    class this process lacks, a damaged payload), its headers are malformed
    or its type code is unknown. Attributes: partition, offset (the
    record's), and __cause__ (the decoder's own error). The record stays in
    the log and nothing around it is lost: a read or poll that meets it
    returns the records before it first, and raises this at the next call,
    as long as the position is that record's. Skip it with
    consumer.seek(partition, offset + 1) (or read on from offset + 1);
    StreamProcessor(on_error=...) does it for you."""

    def __init__(self, message, partition=None, offset=None):
        super().__init__(message)
        self.partition = partition
        self.offset = offset

    def __reduce__(self):
        return (type(self), (str(self), self.partition, self.offset))


class DeliveryExpired(PyQueueError):
    """A WorkQueue delivery was settled (ack, nack, reject, extend) after
    it stopped being this consumer's: its visibility timeout passed and the
    message was delivered again, or it was settled already, or the Delivery
    is used in another process. The message itself is not lost."""


class CommitFailed(PyQueueError):
    """A consumer's commit was fenced: a partition in it was assigned to
    another member of the group (after a rebalance), or the consumer was
    removed from the group (dead, or silent past max_poll_interval).
    Nothing of that commit was written. Attribute: partitions (the ones
    lost). The consumer has its new assignment already; its next poll()
    reads the partitions it owns now."""

    def __init__(self, message, partitions=()):
        super().__init__(message)
        self.partitions = tuple(partitions)

    def __reduce__(self):
        return (type(self), (str(self), self.partitions))


# The C core's validation codes (csrc/pq_segment.h, PQ_ERR_*).
_SEGMENT_CODES = {
    _errno.EPROTO: "not a pyqueue segment",
    _errno.EPROTONOSUPPORT: "pyqueue segment of another layout version",
    _errno.EMEDIUMTYPE: "pyqueue segment of another kind (not a {kind})",
    _errno.ERANGE: "segment is truncated or its sizes are inconsistent",
    _errno.EBADMSG: "{kind} indices or records are corrupt",
}


def from_code(rc, what="", kind="queue", extra=None):
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
    return OSError(code, _os.strerror(code) + (f" ({what})" if what else ""))
