"""pyqueue.Queue, JoinableQueue and SimpleQueue: drop-ins for the
multiprocessing ones over a shared-memory ring."""
import os
import queue as _stdqueue

from pyqueue import _core, _oob, _segment
from pyqueue.errors import SegmentMismatch

# 32 MiB (~720,000 small messages), reserved lazily: a new queue gets pages
# for its control block and the first 1 MiB of its ring only (created in
# ~0.3 ms), and the ring's first lap backs the rest a chunk at a time as it
# fills (pq_ring_reserve), so idle and small queues cost ~1 MiB of /dev/shm
# and a handful of them fit in Docker's 64 MiB; docs/design.md, "Footprint".
DEFAULT_CAPACITY = 32 * 1024 * 1024
MIN_CAPACITY = 64 * 1024
_OVERFLOWS = {"block": _core.OVERFLOW_BLOCK, "reject": _core.OVERFLOW_REJECT,
              "drop_oldest": _core.OVERFLOW_DROP_OLDEST}
_OVERFLOW_NAMES = {v: k for k, v in _OVERFLOWS.items()}
_FLAG_JOINABLE = 2
_KIND_QUEUE = 1

Full = _stdqueue.Full
Empty = _stdqueue.Empty


def _round_capacity(n):
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError("capacity_bytes must be an int")
    if n <= 0:
        raise ValueError("capacity_bytes must be positive")
    n = max(n, MIN_CAPACITY)
    return 1 << (n - 1).bit_length()


def _check_serializer(serializer):
    if serializer is None:
        return None
    try:
        dumps, loads = serializer
    except (TypeError, ValueError):
        raise TypeError("serializer must be a (dumps, loads) pair") from None
    if not callable(dumps) or not callable(loads):
        raise TypeError("serializer must be a (dumps, loads) pair of callables")
    return (dumps, loads)


def _rebuild(cls, name, serializer, trust_owner=False):
    return cls.open(name, serializer=serializer, trust_owner=trust_owner)


class _Default:
    """The default of a creation setting the caller did not pass: over an
    existing segment only the settings passed are compared."""
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return repr(self.value)


def _take(v, given, what):
    """The value of setting `what`, recording it in `given` when passed."""
    if isinstance(v, _Default):
        return v.value
    given[what] = v
    return v


def check_settings(kind, name, differences):
    """ValueError naming every setting passed that differs from the
    existing segment's: (setting, stored, given) triples."""
    if differences:
        diff = "; ".join(f"{what}={stored!r}, not {given!r}" for what, stored, given in differences)
        raise ValueError(f"{kind} {name!r} exists with other settings: {diff} (settings apply "
                         f"when a {kind} is created: open it without them, or unlink it first)")


_D_MAXSIZE = _Default(0)
_D_CAPACITY = _Default(DEFAULT_CAPACITY)
_D_MAX_MESSAGE = _Default(None)
_D_OVERFLOW = _Default("block")
_D_MODE = _Default(0o600)


class Queue(_core.RingQueue):
    """A multi-process FIFO queue in shared memory; see docs/api.md.

    Queue(maxsize=0, *, capacity_bytes=32 MiB, max_message_bytes=None,
          name=None, overflow="block", serializer=None, mode=0o600,
          trust_owner=False)

    With the name of an existing queue, the settings passed must be the
    queue's (ValueError naming what differs); those not passed are its.
    """

    _create_flags = 0

    def __init__(self, maxsize=_D_MAXSIZE, *, capacity_bytes=_D_CAPACITY,
                 max_message_bytes=_D_MAX_MESSAGE, name=None, overflow=_D_OVERFLOW,
                 serializer=None, mode=_D_MODE, trust_owner=False):
        given = {}
        maxsize = _take(maxsize, given, "maxsize")
        capacity_bytes = _take(capacity_bytes, given, "capacity_bytes")
        max_message_bytes = _take(max_message_bytes, given, "max_message_bytes")
        overflow = _take(overflow, given, "overflow")
        mode = _take(mode, given, "mode")
        if not isinstance(maxsize, int) or isinstance(maxsize, bool):
            raise TypeError("maxsize must be an int")
        capacity = _round_capacity(capacity_bytes)
        if overflow not in _OVERFLOWS:
            raise ValueError(f"overflow must be one of {sorted(_OVERFLOWS)}, not {overflow!r}")
        if max_message_bytes is not None:
            if not isinstance(max_message_bytes, int) or max_message_bytes <= 0:
                raise ValueError("max_message_bytes must be a positive int or None")
        serializer = _check_serializer(serializer)
        if not isinstance(mode, int) or not 0 <= mode <= 0o777:
            raise ValueError("mode must be a permission mask such as 0o600")
        flags = self._create_flags | (1 if serializer is not None else 0)

        # Pages now for the control block and the ring's first chunk only
        # (all of it on kernels that cannot back pages later without a
        # SIGBUS risk); the rest is backed as the ring first fills.
        backed = (min(capacity, _core.RESERVE_CHUNK) if _core.populate_supported()
                  else capacity)

        def init(mm):
            _core.create_segment(mm, capacity, max(maxsize, 0), _OVERFLOWS[overflow],
                                 max_message_bytes or 0, flags, backed)

        # The ring grows while memory allows (docs/design.md, "Unbounded
        # queues") when a full ring would make a put wait; with "reject" or
        # "drop_oldest", capacity_bytes stays the bound on the bytes queued
        # (their point is a bounded footprint).
        growable = overflow == "block"
        unnamed = name is None
        hint = (f"lower capacity_bytes (the ring's size, {capacity} bytes here) or make "
                f"{_segment.SHM_DIR} bigger (docker run --shm-size=...)")
        name, mm, mode_now, created = _segment.create_or_open(
            name, _core.segment_size(capacity, growable), mode, init, _KIND_QUEUE, trust_owner,
            hint=hint,
            reserve_bytes=_core.backed_size(backed))
        self._setup(name, mm, serializer, mode_now)
        self._trust_owner = trust_owner
        # The process whose close()/collection of this handle unlinks an
        # unnamed queue's name (see _release_name); 0: none.
        self._creator_pid = os.getpid() if unnamed else 0
        if not created:
            self._mark_shared()   # an existing segment, opened by name
        if not created:
            stored = {"maxsize": self.maxsize, "capacity_bytes": self.capacity_bytes,
                      "max_message_bytes": self.max_message_bytes, "overflow": self.overflow,
                      "mode": mode_now}
            wanted = dict(given, maxsize=max(maxsize, 0), capacity_bytes=capacity)
            differences = [(what, stored[what], wanted[what]) for what in given
                           if stored[what] != wanted[what]]
            if serializer is not None and not self._custom_segment:
                differences.append(("serializer", None, "a custom serializer"))
            try:
                check_settings("queue", name, differences)
            except ValueError:
                self.close()
                raise

    @classmethod
    def open(cls, name, *, serializer=None, trust_owner=False):
        """Open an existing queue by name (SegmentNotFound if missing,
        SegmentMismatch if it is not a pyqueue queue, or a plain queue
        opened as a JoinableQueue; SegmentNotOwned if another user owns it
        and trust_owner is false)."""
        _segment.check_name(name)
        serializer = _check_serializer(serializer)
        mm, mode = _segment.open_existing(name, _KIND_QUEUE, trust_owner)
        self = cls.__new__(cls)
        self._setup(name, mm, serializer, mode)
        self._trust_owner = trust_owner
        self._creator_pid = 0
        self._mark_shared()
        return self

    def _setup(self, name, mm, serializer, mode):
        self._name = name
        self._shm_name = _segment.shm_name(name)
        self._mode = mode
        self._serializer = serializer
        info = _core.segment_info(mm)
        flags = info["params"][2 + _core.PARAM_FLAGS]
        joinable = bool(flags & _FLAG_JOINABLE)
        self._custom_segment = bool(flags & _core.FLAG_CUSTOM_SERIALIZER)
        if self._create_flags & _FLAG_JOINABLE and not joinable:
            mm.close()
            raise SegmentMismatch(f"queue {name!r} is a plain queue, not a JoinableQueue "
                                  "(task_done() and join() need a queue created as one)")
        self._attach(mm, serializer, joinable, _oob)

    @property
    def name(self):
        return self._name

    @property
    def overflow(self):
        return _OVERFLOW_NAMES[self.overflow_code]

    def unlink(self):
        """Remove the queue's name (processes that have it open keep it)."""
        self._creator_pid = 0
        _segment.disown(self._name)
        _segment.unlink(self._name)

    def close(self):
        """Close this handle (other handles and processes are unaffected).
        The creator's handle of an unnamed queue that was never pickled nor
        opened by name also removes the name: nobody else can reach it."""
        super().close()
        self._release_name()

    def __del__(self):
        try:
            self._release_name()
        except Exception:
            pass

    def _release_name(self):
        if self.__dict__.get("_creator_pid") == os.getpid() and not self._is_shared():
            self._creator_pid = 0
            _segment.release_unnamed(self._name)

    def join_thread(self):
        # No feeder thread: everything put is already in shared memory.
        if not self._closed:
            raise AssertionError(f"Queue {self!r} not closed")

    def cancel_join_thread(self):
        pass

    def __reduce__(self):
        # From here a handle may live elsewhere: the creator's close() keeps
        # the name (removed when the creator exits, or by unlink()).
        self._mark_shared()
        return (_rebuild, (type(self), self._name, self._serializer,
                           self.__dict__.get("_trust_owner", False)))

    def __repr__(self):
        state = "closed" if self._closed else "open"
        return f"<pyqueue.{type(self).__name__} {self.__dict__.get('_name')!r} {state}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class JoinableQueue(Queue):
    """Queue with task_done() and join(), counted in shared memory so that
    they work across processes."""

    _create_flags = _FLAG_JOINABLE

    def task_done(self):
        self._task_done()

    def join(self):
        self._join(None)


class SimpleQueue(Queue):
    """Unbounded-count queue with put/get/empty/close (like
    multiprocessing.SimpleQueue). Closed, its put, get and empty raise
    OSError("handle is closed"), as multiprocessing's do."""

    def __init__(self, *, capacity_bytes=_D_CAPACITY, name=None, serializer=None,
                 mode=_D_MODE, trust_owner=False):
        super().__init__(_D_MAXSIZE, capacity_bytes=capacity_bytes, name=name,
                         serializer=serializer, mode=mode, trust_owner=trust_owner)

    def _check_handle(self):
        if self._closed:
            raise OSError("handle is closed")

    def put(self, obj, block=True, timeout=None):
        self._check_handle()
        return super().put(obj, block, timeout)

    def get(self, block=True, timeout=None):
        self._check_handle()
        return super().get(block, timeout)

    def empty(self):
        self._check_handle()
        return super().empty()
