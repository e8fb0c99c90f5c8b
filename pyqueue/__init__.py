"""pyqueue: fast, crash-safe multi-process queues over POSIX shared memory.

    from pyqueue import Queue      # instead of multiprocessing.Queue
"""
from queue import Empty, Full

from pyqueue.consumer import Consumer
from pyqueue.errors import (CommitFailed, CorruptRecord, MessageTooLarge, OffsetOutOfRange,
                            PyQueueError, SegmentMismatch, SegmentNotFound, SegmentNotOwned)
from pyqueue.log import Log, Record
from pyqueue.queues import JoinableQueue, Queue, SimpleQueue
from pyqueue.topic import Subscription, Topic

__version__ = "0.1.0"

__all__ = [
    "Queue", "JoinableQueue", "SimpleQueue", "Topic", "Subscription", "Log", "Record",
    "Consumer",
    "Empty", "Full",
    "PyQueueError", "SegmentNotFound", "SegmentMismatch", "SegmentNotOwned", "MessageTooLarge",
    "OffsetOutOfRange", "CommitFailed", "CorruptRecord",
]
