"""The backend-independent half of pyqueue's public classes.

One place for the pure-Python behaviour every backend shares
(the documentation's Design page, "Backends"):

* argument checks (`check_timeout`, `check_seconds`, `check_max_messages`,
  `check_max_records`, `check_partition`, `check_offset`, `check_name`,
  `check_workqueue_settings`, and the creation-setting checks re-exported from pyqueue.queues:
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
import operator
import queue as _stdqueue
import time

from pyqueue import _segment
from pyqueue.errors import ShutDown
from pyqueue.queues import _OVERFLOWS as OVERFLOWS  # noqa: F401  (one list of modes)
from pyqueue.queues import _check_serializer as check_serializer  # noqa: F401
from pyqueue.queues import check_settings  # noqa: F401

Empty = _stdqueue.Empty
Full = _stdqueue.Full


# A timeout this long (31 years) or longer is no deadline, as None: a
# deadline that far would overflow a time_t or a Redis block time.
FOREVER = 1e9

# The most messages or records one call takes: a larger count saturates
# (a Redis count is a C long; the shared-memory cores' a Py_ssize_t).
MAX_COUNT = (1 << 31) - 1


def _real(value):
    """value as a float when it is a number to a C double (what has
    __float__ or __index__: float, int, bool, Decimal, Fraction, numpy
    scalars), else None (a str or bytes is not one: never parsed)."""
    cls = value.__class__
    if cls is float or cls is int:
        return float(value)
    if isinstance(value, (str, bytes, bytearray)) or not (
            hasattr(cls, "__float__") or hasattr(cls, "__index__")):
        return None
    return float(value)


def _count(value):
    """value as an int when it is an integer (what has __index__: int,
    numpy integers), not a bool; else None."""
    if value.__class__ is int:
        return value
    if isinstance(value, bool) or not hasattr(value.__class__, "__index__"):
        return None
    return operator.index(value)


def check_timeout(timeout, block=True):
    """None, or the timeout as a float >= 0 (negative behaves like 0, as
    in multiprocessing). What the shared-memory classes take (a C double,
    as multiprocessing's SemLock.acquire converts it): a real number, bool
    and int included; a str or other object is a TypeError, with or
    without block; NaN is a ValueError when the call would wait; inf (and
    anything from FOREVER on) is None, no deadline."""
    if timeout is None:
        return None
    t = _real(timeout)
    if t is None:
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    if t != t:
        if block:
            raise ValueError("'timeout' must be a number, not NaN")
        return 0.0
    if t >= FOREVER:
        return None
    return t if t > 0.0 else 0.0


def check_seconds(seconds, what):
    """A delay or duration in seconds as a float: a number as check_timeout
    takes one, but not a bool (TypeError); NaN or negative is a
    ValueError; inf stays inf (never). The same check on every backend."""
    s = None if isinstance(seconds, bool) else _real(seconds)
    if s is None:
        raise TypeError(f"{what} must be a number of seconds, not {type(seconds).__name__}")
    if s != s or s < 0:
        raise ValueError(f"{what} must be a number of seconds >= 0, not {seconds!r}")
    return s


def check_partition(partition, partitions):
    """A partition of a log of `partitions` as an int: an integer (a bool
    is not one: TypeError) in 0..partitions-1 (ValueError); partitions
    None (a closed handle's): the type and the sign only, the backend's
    closed check follows."""
    p = _count(partition)
    if p is None:
        raise TypeError(f"partition must be an int, not {type(partition).__name__}")
    if partitions is None:
        if not 0 <= p <= 0xFFFFFFFF:
            raise ValueError(f"partition must be 0 or more, not {partition!r}")
        return p
    if not 0 <= p < partitions:
        raise ValueError(f"partition must be 0..{partitions - 1}, not {partition!r}")
    return p


# The largest log offset any call takes (a read from, a seek to, a
# commit of): an int64, which every backend stores exactly (the
# shared-memory cores' offsets are uint64, Redis keeps a commit as the
# decimal string it was given).
MAX_OFFSET = (1 << 63) - 1


def check_offset(offset):
    """A log offset as a plain int: an integer (what has __index__: int,
    numpy integers, an IntEnum member as the int it is; a bool is not
    one), 0..MAX_OFFSET; else ValueError (naming the offset). The same
    check on every backend: before, 2**64 was an OverflowError on shared
    memory and went through on Redis, and an IntEnum member, taken on
    shared memory, was a TypeError of Redis's command packer."""
    off = _count(offset)
    if off is None or not 0 <= off <= MAX_OFFSET:
        raise ValueError(f"offset must be a non-negative int of at most 2**63-1, "
                         f"not {offset!r}")
    return off


def check_max_records(max_records):
    """A read's or poll's max_records as an int: a positive integer (a
    bool is not one), else ValueError; past MAX_COUNT it saturates."""
    n = _count(max_records)
    if n is None or n < 1:
        raise ValueError(f"max_records must be a positive int, not {max_records!r}")
    return n if n < MAX_COUNT else MAX_COUNT


def deadline(block, timeout):
    """The monotonic deadline of a call: None (wait forever), or a time
    (now for block=False). The timeout is checked even when not blocking."""
    timeout = check_timeout(timeout, block)
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
    """A get_many's max_messages as an int: an integer (a bool is not one:
    TypeError), at least 1 (ValueError); past MAX_COUNT it saturates."""
    n = _count(max_messages)
    if n is None:
        raise TypeError("max_messages must be an int")
    if n < 1:
        raise ValueError("max_messages must be at least 1")
    return n if n < MAX_COUNT else MAX_COUNT


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


def _power_of_two(what, v, lo):
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError(f"{what} must be an int")
    if v < lo or v > 1 << 24 or (v and v & (v - 1)):
        raise ValueError(f"{what} must be a power of two, {max(lo, 1)} .. 2**24")
    return v


def check_workqueue_settings(max_in_flight, visibility_timeout, max_deliveries, dedup_window,
                             dedup_keys, perm):
    """The checks of a WorkQueue's creation settings, the same on every
    backend (TypeError / ValueError); (max_in_flight, dedup_keys)."""
    slots = _power_of_two("max_in_flight", max_in_flight, 2)
    dedup = _power_of_two("dedup_keys", dedup_keys, 0)
    for what, v in (("visibility_timeout", visibility_timeout),
                    ("dedup_window", dedup_window)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0 or (
                what == "visibility_timeout" and not v > 0):
            raise ValueError(f"{what} must be a positive number of seconds")
    if max_deliveries is not None and (
            not isinstance(max_deliveries, int) or isinstance(max_deliveries, bool) or
            not 1 <= max_deliveries < 1 << 31):
        raise ValueError("max_deliveries must be a positive int, or None (no limit)")
    if not isinstance(perm, int) or isinstance(perm, bool) or not 0 <= perm <= 0o777:
        raise ValueError("perm must be a permission mask such as 0o600")
    return slots, dedup


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

    def shutdown(self, immediate=False):
        """The default of a class without shutdown (every shared-memory and
        Redis class has its own: the documentation's "Behaviour in detail"
        page, "Shutdown"): raises NotImplementedError, and changes nothing."""
        raise NotImplementedError(
            f"{type(self).__name__}.shutdown() is not supported by this class; see "
            f"\"Shutdown\" in the documentation's \"Behaviour in detail\" page")

    @property
    def is_shutdown(self):
        """False: a handle of this backend cannot be shut down (shutdown()
        raises NotImplementedError)."""
        return False


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

    def __iter__(self):
        """The messages as get() returns them, until the queue is shut down
        and drained (as pyqueue.Queue's)."""
        while True:
            try:
                yield self.get()
            except ShutDown:
                return

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
        """Deliveries, waiting for each, until the work queue is shut down
        and nothing is ready (as pyqueue.WorkQueue's)."""
        while True:
            try:
                yield self.get()
            except ShutDown:
                return

    def __repr__(self):
        state = "closed" if self._closed else "open"
        return f"<pyqueue.{type(self).__name__} {getattr(self, '_name', None)!r} {state}>"


# -- batches of a work queue ----------------------------------------------
# What a Batch (WorkQueue.get_many) does in Python, once for every backend:
# the shared-memory Batch is a Cython class (its arrays are C arrays, its
# settles one hold of the lock) and uses batch_expired/put_many_full; a
# backend's Batch written in Python (pyqueue.backends.redis) subclasses
# BatchAPI and supplies the one primitive it needs, _settle.

HELD, ACKED, NACKED, REJECTED = 0, 1, 2, 3
SETTLED_NAMES = (None, "acked", "nacked", "rejected")


def batch_expired(what, ids, stale):
    """The DeliveryExpired a Batch's `what` raises for the positions in
    stale (no longer this consumer's); .indices lists them."""
    from pyqueue.errors import DeliveryExpired
    e = DeliveryExpired(
        f"cannot {what} {len(stale)} of the batch's messages (ids "
        f"{[ids[i] for i in stale[:10]]}{'...' if len(stale) > 10 else ''}): they "
        f"are no longer this consumer's (their visibility timeout passed and they were "
        f"delivered again, or they were settled already, or this is another process); "
        f"the others were settled")
    e.indices = stale
    return e


def put_many_full(ids, why=None):
    """The queue.Full of a put_many that put `ids` and no more in time."""
    e = Full(f"put_many: {len(ids)} put, no room for the rest in time"
             + (f" ({why})" if why else ""))
    e.ids = ids
    return e


class BatchAPI:
    """A Batch's behaviour in terms of one primitive of its backend.

    A subclass sets values, _ids, _dels (delivery counts), _enq_ms,
    _reasons (why each was redelivered, or None), _state (HELD ... per
    position) and _queue (the work queue: _check_open, _move_dead), and
    defines _seconds(value, what) (a time argument as the backend takes
    it; TypeError or ValueError when bad, as check_seconds) and
    _settle(verb, positions, arg): settle the positions (verb ACKED,
    NACKED with arg = delay, REJECTED, or HELD for extend with arg =
    seconds) in one step, returning per position 0
    (done), 1 (nacked on its last delivery or rejected: dead, for the
    caller to move to the dead-letter queue) or < 0 (no longer this
    consumer's)."""

    __slots__ = ()

    def __len__(self):
        return len(self._ids)

    def __iter__(self):
        return iter(self.values)

    def __getitem__(self, i):
        return self.values[i]

    def __bool__(self):
        return bool(self._ids)

    @property
    def ids(self):
        """Per message: its id."""
        return list(self._ids)

    @property
    def delivery_counts(self):
        """Per message: its deliveries so far, this one included."""
        return list(self._dels)

    @property
    def enqueued_at(self):
        """Per message: when it was put (seconds since the epoch)."""
        return [ms / 1000.0 for ms in self._enq_ms]

    @property
    def redelivered_because(self):
        """Per message: None, "nacked", "visibility timeout", "consumer died"."""
        return list(self._reasons)

    @property
    def settled(self):
        """Per message: None (held), "acked", "nacked" or "rejected"."""
        return [SETTLED_NAMES[s] for s in self._state]

    def _pick(self, indices):
        """The positions to settle: every one held (indices None), or the
        given ones (IndexError, ValueError for one settled already:
        nothing is settled then)."""
        state = self._state
        n = len(state)
        if indices is None:
            return [i for i in range(n) if state[i] == HELD]
        out = []
        for j in indices:
            i = j.__index__()
            if i < 0:
                i += n
            if not 0 <= i < n:
                raise IndexError(f"batch index {j} out of range (len {n})")
            if state[i] != HELD:
                raise ValueError(f"message {self._ids[i]} of the batch was "
                                 f"{SETTLED_NAMES[state[i]]} already")
            out.append(i)
        return out

    def _apply(self, verb, pick, arg):
        """_settle, then the states: (stale positions, dead ones to move)."""
        stale, to_move = [], []
        if not pick:
            return stale, to_move
        self._queue._check_open()
        results = self._settle(verb, pick, arg)
        for i, r in zip(pick, results):
            if r < 0:
                stale.append(i)
                continue
            if verb != HELD:
                self._state[i] = verb
            if r == 1:
                to_move.append(i)
        return stale, to_move

    def _move(self, to_move, reason, error):
        """Each of to_move to the dead-letter queue; the first failure
        raised after the others were tried (each is parked by _move_dead)."""
        first = None
        for i in to_move:
            n = self._dels[i]
            try:
                self._queue._move_dead(self._ids[i], n, self._enq_ms[i] / 1000.0,
                                       reason(n), error)
            except BaseException as e:
                if first is None:
                    first = e
        if first is not None:
            raise first

    def ack(self, indices=None):
        """Done: the messages go away - every one not settled yet, or those
        at the given positions - in one step.

        Args:
            indices: Positions in the batch (negative from the end), or
                None for every one not settled yet.

        Raises:
            DeliveryExpired: Some are no longer this consumer's (its
                .indices: their positions); the rest are acked all the same.
            IndexError: A position out of range (nothing is settled).
            ValueError: A position settled already (nothing is settled),
                or the queue is closed.
        """
        stale, _ = self._apply(ACKED, self._pick(indices), None)
        if stale:
            raise batch_expired("ack", self._ids, stale)

    def nack(self, indices=None, delay=0.0, error=None):
        """Deliver them again (from delay seconds on); those on their last
        allowed delivery go to the dead-letter queue instead, with error.

        Args:
            indices: As ack().
            delay: Seconds before they can be delivered again.
            error: The last error, kept in a DeadLetter.

        Raises:
            DeliveryExpired: As ack().
            IndexError: As ack().
            ValueError: delay negative or NaN; as ack().
            TypeError: delay is not a number.
        """
        arg = self._seconds(delay, "delay")
        stale, to_move = self._apply(NACKED, self._pick(indices), arg)
        self._move(to_move, lambda n: f"delivered {n} times, last: nacked", error)
        if stale:
            raise batch_expired("nack", self._ids, stale)

    def reject(self, indices=None, reason="rejected"):
        """Straight to the dead-letter queue (poison), with reason.

        Args:
            indices: As ack().
            reason: Why, kept in the DeadLetter.

        Raises:
            DeliveryExpired: As ack().
            IndexError: As ack().
            ValueError: As ack().
        """
        stale, to_move = self._apply(REJECTED, self._pick(indices), None)
        self._move(to_move, lambda n: f"rejected: {reason}", reason)
        if stale:
            raise batch_expired("reject", self._ids, stale)

    def extend(self, seconds, indices=None):
        """Keep the messages not settled (or those given) for `seconds`
        more from now.

        Args:
            seconds: The new visibility deadline, from now (inf: never).
            indices: As ack().

        Raises:
            DeliveryExpired: As ack().
            IndexError: As ack().
            ValueError: seconds negative or NaN; as ack().
            TypeError: seconds is not a number.
        """
        arg = self._seconds(seconds, "seconds")
        stale, _ = self._apply(HELD, self._pick(indices), arg)
        if stale:
            raise batch_expired("extend", self._ids, stale)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.ack()
        else:
            self.nack(error=f"{exc_type.__name__}: {exc}")
        return False

    def __reduce__(self):
        raise TypeError("a Batch belongs to the process that got it")

    def __repr__(self):
        held = sum(1 for s in self._state if s == HELD)
        return f"<pyqueue.Batch of {len(self._ids)} messages, {held} held>"
