"""pyqueue: fast, crash-safe multi-process queues over POSIX shared memory.

    from pyqueue import Queue      # instead of multiprocessing.Queue
"""
# What this interpreter must offer, checked before anything else is imported
# (pyqueue/_platform.py): Linux, the GIL, and the built extension modules.
from pyqueue import _platform

_platform.check()

import logging

# Operators' events (repairs, evictions, rebalances, dead letters, recovery,
# crashed workers) go to the "pyqueue" logger and its children; nothing is
# printed unless the application configures logging (docs/operations.md).
logging.getLogger("pyqueue").addHandler(logging.NullHandler())

from queue import Empty, Full

from pyqueue._version import __version__ as __version__  # re-exported (PEP 484)
from pyqueue.backends import connect
from pyqueue.consumer import Consumer
from pyqueue.errors import (CommitFailed, CorruptRecord, DeliveryExpired, LockTimeout,
                            MessageTooLarge, OffsetOutOfRange, PoisonRecord, PyQueueError,
                            SegmentMismatch, SegmentNotFound, SegmentNotOwned, ShutDown,
                            UndecodableMessage, WorkerLost)
from pyqueue.log import Log, Record
from pyqueue.pool import Executor, Pool
from pyqueue.queues import JoinableQueue, Queue, SimpleQueue
from pyqueue.stream import StreamProcessor
from pyqueue.topic import Subscription, Topic
from pyqueue.workqueue import DeadLetter, Delivery, WorkQueue

__all__ = [
    "Queue", "JoinableQueue", "SimpleQueue", "Topic", "Subscription", "Log", "Record",
    "Consumer", "WorkQueue", "Delivery", "DeadLetter", "StreamProcessor", "Pool", "Executor",
    "Empty", "Full", "connect",
    "PyQueueError", "SegmentNotFound", "SegmentMismatch", "SegmentNotOwned", "MessageTooLarge",
    "OffsetOutOfRange", "CommitFailed", "CorruptRecord", "PoisonRecord", "DeliveryExpired",
    "LockTimeout", "UndecodableMessage", "ShutDown", "WorkerLost",
]
