"""The backend-independent half of pyqueue's public classes.

One place for the pure-Python behaviour every backend shares
(docs/design.md, "Backends"):

* argument checks (`check_timeout`, `check_max_messages`, `check_name`,
  and the creation-setting checks re-exported from pyqueue.queues:
  `check_serializer`, `check_settings`, `OVERFLOWS`);
* `QueueAPI` / `WorkQueueAPI`: the methods defined in terms of a backend's
  primitives (`put_nowait`, `get_nowait`, `empty`, `full`, iteration, the
  context manager, `join_thread`/`cancel_join_thread`, closed-handle
  checks);
* `deadline()` / `remaining()`: one way to turn `block`/`timeout` into a
  deadline.

The shared-memory classes subclass their Cython cores, which implement
`put_nowait`/`get_nowait`/... in C for speed; they are registered with
nothing here and get no extra Python layer on their hot path. A backend
class written in Python (pyqueue.backends.redis) inherits these mixins, and
registers itself as a virtual subclass of the public class
(`pyqueue.Queue.register(RedisQueue)`), so that `isinstance(q, pyqueue.Queue)`
holds for a queue of any backend.
"""
import numbers
import queue as _stdqueue
import time

from pyqueue import _segment
from pyqueue.queues import _OVERFLOWS as OVERFLOWS  # noqa: F401  (one list of modes)
from pyqueue.queues import _check_serializer as check_serializer  # noqa: F401
from pyqueue.queues import check_settings  # noqa: F401

Empty = _stdqueue.Empty
Full = _stdqueue.Full


def check_timeout(timeout):
    """None, or the timeout as a float >= 0 (negative behaves like 0, as
    in multiprocessing); TypeError for what is not a real number."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    return max(0.0, float(timeout))


def deadline(block, timeout):
    """The monotonic deadline of a call: None (wait forever), or a time
    (now for block=False). The timeout is checked even when not blocking."""
    timeout = check_timeout(timeout)
    if not block:
        return time.monotonic()
    if timeout is None:
        return None
    return time.monotonic() + timeout


def remaining(until):
    """Seconds left before `until` (None: no deadline), never negative."""
    if until is None:
        return None
    return max(0.0, until - time.monotonic())


def check_max_messages(max_messages):
    if isinstance(max_messages, bool) or not isinstance(max_messages, int):
        raise TypeError("max_messages must be an int")
    if max_messages < 1:
        raise ValueError("max_messages must be at least 1")
    return max_messages


def check_maxsize(maxsize):
    if not isinstance(maxsize, int) or isinstance(maxsize, bool):
        raise TypeError("maxsize must be an int")
    return max(maxsize, 0)


def check_overflow(overflow):
    if overflow not in OVERFLOWS:
        raise ValueError(f"overflow must be one of {sorted(OVERFLOWS)}, not {overflow!r}")
    return overflow


def check_max_message_bytes(max_message_bytes):
    if max_message_bytes is not None:
        if (isinstance(max_message_bytes, bool) or not isinstance(max_message_bytes, int)
                or max_message_bytes <= 0):
            raise ValueError("max_message_bytes must be a positive int or None")
    return max_message_bytes


def check_name(name):
    """The rules of a queue name, the same on every backend."""
    return _segment.check_name(name)


class HandleAPI:
    """Closing and the context manager."""

    __slots__ = ()
    _closed = False

    def _check_open(self):
        if self._closed:
            raise ValueError(f"{type(self).__name__} {self.name!r} is closed")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class QueueAPI(HandleAPI):
    """What pyqueue.Queue's API defines in terms of put/get/qsize/maxsize."""

    __slots__ = ()

    def put_nowait(self, obj):
        return self.put(obj, False)

    def get_nowait(self):
        return self.get(False)

    def empty(self):
        return self.qsize() == 0

    def full(self):
        return 0 < self.maxsize <= self.qsize()

    def join_thread(self):
        # No feeder thread: what put returned from is stored.
        if not self._closed:
            raise AssertionError(f"Queue {self!r} not closed")

    def cancel_join_thread(self):
        pass

    def __repr__(self):
        state = "closed" if self._closed else "open"
        return f"<pyqueue.{type(self).__name__} {getattr(self, '_name', None)!r} {state}>"


class WorkQueueAPI(HandleAPI):
    """What pyqueue.WorkQueue's API defines in terms of put/get/qsize."""

    __slots__ = ()

    def put_nowait(self, obj, *, key=None, delay=0.0):
        return self.put(obj, key=key, delay=delay, block=False)

    def get_nowait(self):
        return self.get(False)

    def empty(self):
        return self.qsize() == 0

    def __iter__(self):
        """Deliveries, waiting for each, forever (break out of the loop)."""
        while True:
            yield self.get()

    def __repr__(self):
        state = "closed" if self._closed else "open"
        return f"<pyqueue.{type(self).__name__} {getattr(self, '_name', None)!r} {state}>"
