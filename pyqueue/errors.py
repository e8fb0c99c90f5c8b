"""Exceptions of pyqueue. `queue.Full` and `queue.Empty` are used as in the
standard library."""


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
