"""pyqueue.Queue, JoinableQueue and SimpleQueue: drop-ins for the
multiprocessing ones over a shared-memory ring."""
from __future__ import annotations

import abc

import mmap
import os
import queue as _stdqueue
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Type, TypeVar

from pyqueue import _core, _oob, _segment
from pyqueue.errors import SegmentMismatch, ShutDown

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

T = TypeVar("T")
_Q = TypeVar("_Q", bound="Queue[Any]")
#: A (dumps, loads) pair: dumps(obj) -> bytes-like, loads(bytes) -> obj.
Serializer = Tuple[Callable[[Any], Any], Callable[[bytes], Any]]


def _round_capacity(n: int) -> int:
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError("capacity_bytes must be an int")
    if n <= 0:
        raise ValueError("capacity_bytes must be positive")
    n = max(n, MIN_CAPACITY)
    return 1 << (n - 1).bit_length()


def _check_serializer(serializer: Optional[Serializer]) -> Optional[Serializer]:
    if serializer is None:
        return None
    try:
        dumps, loads = serializer
    except (TypeError, ValueError):
        raise TypeError("serializer must be a (dumps, loads) pair") from None
    if not callable(dumps) or not callable(loads):
        raise TypeError("serializer must be a (dumps, loads) pair of callables")
    return (dumps, loads)


def _rebuild(cls: Type[_Q], name: str, serializer: Optional[Serializer],
             trust_owner: bool = False) -> _Q:
    return cls.open(name, serializer=serializer, trust_owner=trust_owner)


class _Default:
    """The default of a creation setting the caller did not pass: over an
    existing segment only the settings passed are compared."""
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def _take(v: Any, given: Dict[str, Any], what: str) -> Any:
    """The value of setting `what`, recording it in `given` when passed."""
    if isinstance(v, _Default):
        return v.value
    given[what] = v
    return v


def check_settings(kind: str, name: str, differences: Any) -> None:
    """ValueError naming every setting passed that differs from the
    existing segment's: (setting, stored, given) triples."""
    if differences:
        diff = "; ".join(f"{what}={stored!r}, not {given!r}" for what, stored, given in differences)
        raise ValueError(f"{kind} {name!r} exists with other settings: {diff} (settings apply "
                         f"when a {kind} is created: open it without them, or unlink it first)")


# Typed Any: a signature shows the setting's type, its default is one of
# these markers (see _Default).
_D_MAXSIZE: Any = _Default(0)
_D_CAPACITY: Any = _Default(DEFAULT_CAPACITY)
_D_MAX_MESSAGE: Any = _Default(None)
_D_OVERFLOW: Any = _Default("block")
_D_MODE: Any = _Default(0o600)


# ABCMeta: other backends' queues register as virtual subclasses
# (pyqueue.backends.redis); no per-call cost: docs/design.md, "Backends".
class Queue(_core.RingQueue[T], metaclass=abc.ABCMeta):
    """A multi-process FIFO queue in shared memory, a drop-in for
    multiprocessing.Queue (no feeder thread: a put is in shared memory when
    it returns).

    Generic in the message type for type checkers: ``Queue[bytes]``,
    ``Queue[dict]`` (nothing is checked at run time).

    With the name of an existing queue, the settings passed must be the
    queue's; those not passed are its.

    Args:
        maxsize: The most messages the queue holds (0 or less: no count
            limit, only the ring's bytes).
        capacity_bytes: The ring's size (rounded up to a power of two, at
            least 64 KiB; default 32 MiB, backed lazily in /dev/shm).
        max_message_bytes: The largest encoded message accepted (None: as
            large as the ring allows; larger ones travel out of band).
        name: The queue's name in /dev/shm (None: a fresh unnamed queue,
            reachable by pickling the handle).
        overflow: "block" (put waits for room), "reject" (put raises
            queue.Full at once) or "drop_oldest" (the oldest message goes).
        serializer: A (dumps, loads) pair used instead of pickle.
        mode: The permission mask of the segment (default 0o600).
        trust_owner: Open a queue another user owns (pickle runs their code).

    Raises:
        TypeError: maxsize or capacity_bytes is not an int, or serializer is
            not a pair of callables.
        ValueError: A bad setting, or the named queue exists with other
            settings (the message names what differs).
        SegmentMismatch: The name belongs to something that is not a pyqueue
            queue (or a plain queue opened as a JoinableQueue).
        SegmentNotOwned: The queue belongs to another user and trust_owner is
            false.
        OSError: /dev/shm is full or cannot be written.
    """

    _create_flags = 0

    def __init__(self, maxsize: int = _D_MAXSIZE, *, capacity_bytes: int = _D_CAPACITY,
                 max_message_bytes: Optional[int] = _D_MAX_MESSAGE, name: Optional[str] = None,
                 overflow: str = _D_OVERFLOW, serializer: Optional[Serializer] = None,
                 mode: int = _D_MODE, trust_owner: bool = False) -> None:
        given: Dict[str, Any] = {}
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

        def init(mm: mmap.mmap) -> None:
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
    def open(cls: Type[_Q], name: str, *, serializer: Optional[Serializer] = None,
             trust_owner: bool = False) -> _Q:
        """Open an existing queue by name, with its settings.

        Args:
            name: The queue's name.
            serializer: The (dumps, loads) pair the queue was made with, if
                it was made with one.
            trust_owner: Open a queue another user owns.

        Returns:
            A new handle of the queue (of the class it is called on).

        Raises:
            SegmentNotFound: No segment has that name.
            SegmentMismatch: It is not a pyqueue queue, or a plain queue
                opened as a JoinableQueue.
            SegmentNotOwned: Another user owns it and trust_owner is false.
            PyQueueError: It was made with a custom serializer and none is
                given.
            ValueError: The name is not a valid queue name.
        """
        return cls._open(name, serializer, trust_owner, True)

    @classmethod
    def _open(cls: Type[_Q], name: str, serializer: Optional[Serializer], trust_owner: bool,
              shared: bool) -> _Q:
        """open(); shared false for a handle that only reads the counters
        and is closed at once (pyqueue stats, top, metrics: pyqueue._inspect):
        it must not keep an unnamed queue's name alive past its creator's
        close() (that name would then stay in /dev/shm until the creator
        exits: a service making unnamed queues while it is watched)."""
        _segment.check_name(name)
        serializer = _check_serializer(serializer)
        mm, mode = _segment.open_existing(name, _KIND_QUEUE, trust_owner)
        self = cls.__new__(cls)
        self._setup(name, mm, serializer, mode)
        self._trust_owner = trust_owner
        self._creator_pid = 0
        if shared:
            self._mark_shared()
        return self

    def _setup(self, name: str, mm: mmap.mmap, serializer: Optional[Serializer],
               mode: int) -> None:
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
    def name(self) -> str:
        """The queue's name in /dev/shm (made up for an unnamed queue)."""
        return self._name

    @property
    def overflow(self) -> str:
        """The overflow policy: "block", "reject" or "drop_oldest"."""
        return _OVERFLOW_NAMES[self.overflow_code]

    def unlink(self) -> None:
        """Remove the queue's name (processes that have it open keep it).

        A name that is gone already is left as it is.

        Raises:
            PermissionError: The name belongs to another user (in the
                sticky /dev/shm).
        """
        self._creator_pid = 0
        _segment.disown(self._name)
        _segment.unlink(self._name)

    def close(self) -> None:
        """Close this handle (other handles and processes are unaffected).

        The creator's handle of an unnamed queue that was never pickled nor
        opened by name also removes the name: nobody else can reach it.
        Closing twice does nothing.
        """
        super().close()
        self._release_name()

    def __del__(self) -> None:
        try:
            self._release_name()
        except Exception:
            pass

    def _release_name(self) -> None:
        if self.__dict__.get("_creator_pid") == os.getpid() and not self._is_shared():
            self._creator_pid = 0
            _segment.release_unnamed(self._name)

    def join_thread(self) -> None:
        """multiprocessing.Queue's: returns at once (there is no feeder
        thread; everything put is already in shared memory).

        Raises:
            AssertionError: The handle is not closed (as multiprocessing).
        """
        if not self._closed:
            raise AssertionError(f"Queue {self!r} not closed")

    def cancel_join_thread(self) -> None:
        """multiprocessing.Queue's: does nothing (no feeder thread)."""

    def __iter__(self) -> Iterator[T]:
        """Iterate over the messages as get() returns them, blocking for
        each, until the queue is shut down (shutdown(), by any process) and
        drained: then the iteration ends.

        Yields:
            The messages, oldest first.

        Raises:
            UndecodableMessage: A message cannot be decoded.
            ValueError: The handle is closed.
        """
        while True:
            try:
                yield self.get()
            except ShutDown:
                return

    def __reduce__(self) -> Tuple[Any, ...]:
        # From here a handle may live elsewhere: the creator's close() keeps
        # the name (removed when the creator exits, or by unlink()).
        self._mark_shared()
        return (_rebuild, (type(self), self._name, self._serializer,
                           self.__dict__.get("_trust_owner", False)))

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<pyqueue.{type(self).__name__} {self.__dict__.get('_name')!r} {state}>"

    def __enter__(self: _Q) -> _Q:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JoinableQueue(Queue[T]):
    """A Queue with task_done() and join(), counted in shared memory so that
    they work across processes (as multiprocessing.JoinableQueue).

    Takes Queue's arguments; opening a plain queue's name as a
    JoinableQueue raises SegmentMismatch.
    """

    _create_flags = _FLAG_JOINABLE

    def task_done(self) -> None:
        """Mark one message taken by get() as processed.

        Raises:
            ValueError: Called more times than messages were put.
        """
        self._task_done()

    def join(self) -> None:
        """Block until every message put has been taken and task_done()
        called for it (in any process). As with queue.Queue, a shutdown
        does not end the wait by itself: shutdown(immediate=True) counts
        every message it drops as done, so join() returns once the
        messages already taken are done too."""
        self._join(None)


class SimpleQueue(Queue[T]):
    """An unbounded-count queue with put/get/empty/close (as
    multiprocessing.SimpleQueue).

    Closed, its put, get and empty raise OSError("handle is closed"), as
    multiprocessing's do.

    Args:
        capacity_bytes: As Queue's.
        name: As Queue's.
        serializer: As Queue's.
        mode: As Queue's.
        trust_owner: As Queue's.

    Raises:
        ValueError: As Queue's.
        SegmentMismatch: As Queue's.
        SegmentNotOwned: As Queue's.
    """

    def __init__(self, *, capacity_bytes: int = _D_CAPACITY, name: Optional[str] = None,
                 serializer: Optional[Serializer] = None, mode: int = _D_MODE,
                 trust_owner: bool = False) -> None:
        super().__init__(_D_MAXSIZE, capacity_bytes=capacity_bytes, name=name,
                         serializer=serializer, mode=mode, trust_owner=trust_owner)

    def _check_handle(self) -> None:
        if self._closed:
            raise OSError("handle is closed")

    def put(self, obj: T, block: bool = True, timeout: Optional[float] = None) -> None:
        """Put obj into the queue (see Queue.put).

        Args:
            obj: The message.
            block: Wait for room (False: raise queue.Full at once).
            timeout: With block, the longest wait in seconds (None: for ever).

        Raises:
            ShutDown: The queue was shut down (shutdown(), by any process).
            OSError: The handle is closed.
            queue.Full: No room in time.
            MessageTooLarge: The message can never fit.
        """
        self._check_handle()
        return super().put(obj, block, timeout)

    def get(self, block: bool = True, timeout: Optional[float] = None) -> T:
        """Remove and return the oldest message (see Queue.get).

        Args:
            block: Wait for a message (False: raise queue.Empty at once).
            timeout: With block, the longest wait in seconds (None: for ever).

        Returns:
            The message.

        Raises:
            ShutDown: The queue was shut down and is empty (at once with
                shutdown(immediate=True)).
            OSError: The handle is closed.
            queue.Empty: No message in time.
            UndecodableMessage: The message cannot be decoded.
        """
        self._check_handle()
        return super().get(block, timeout)

    def empty(self) -> bool:
        """Whether the queue holds no message.

        Returns:
            True when it is empty.

        Raises:
            OSError: The handle is closed.
        """
        self._check_handle()
        return super().empty()
