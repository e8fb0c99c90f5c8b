"""asyncio versions of pyqueue's kinds, on the shared-memory backend (and
Queue, JoinableQueue, WorkQueue, Topic and Log on the Redis backend: ``connect(url)``
below, or ``from_sync`` of a Redis handle).

A module of classes that mirror the synchronous ones, as ``zmq.asyncio``
and ``redis.asyncio`` do::

    import pyqueue.asyncio as aq

    q = aq.Queue(maxsize=100)
    await q.put("job")
    item = await q.get()

Each class owns a synchronous handle (``.sync``) on the same segment, so
an async handle talks to sync handles of other processes (and of this
one) as any two handles do; ``from_sync`` wraps one that exists, and
pickling sends the same queue to a child (which gets an async handle).

A call that finds its message (or its room) does it at once, with no
wait, thread hop or system call. One that has to wait registers on the
segment's event and awaits a future that the process's one waiter thread
resolves when the event moves; it then takes the message itself, in one
synchronous step on the event loop's thread. So **cancellation is safe**:
a cancelled (or timed-out) ``await q.get()`` has taken nothing, and no
message is lost or delivered twice. ``asyncio.wait_for`` and
``asyncio.timeout`` work, as does the ``timeout=`` of each call (which
raises what the synchronous call raises: ``queue.Empty``, ``queue.Full``).

Calls that never wait (``put_nowait``, ``get_nowait``, ``qsize``, ``ack``
and the other settlements of a delivery) run synchronously; the
settlements are coroutines all the same, for the Redis backend's sake.
"""
from __future__ import annotations

import queue as _queue
from typing import (TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Dict, Generic,
                    Iterable, List, Mapping, Optional, Tuple, Type, TypeVar, Union)

from . import _aio, _api
from .errors import ShutDown
from .consumer import Consumer as _SyncConsumer
from .log import Log as _SyncLog
from .log import Record
from .queues import JoinableQueue as _SyncJoinableQueue
from .queues import Queue as _SyncQueue
from .topic import Subscription as _SyncSubscription
from .topic import Topic as _SyncTopic
from .workqueue import Batch as _SyncBatch
from .workqueue import Delivery as _SyncDelivery
from .workqueue import WorkQueue as _SyncWorkQueue

if TYPE_CHECKING:
    from .backends import Backend

__all__ = ["Queue", "JoinableQueue", "Topic", "Subscription", "Log", "Consumer", "WorkQueue",
           "Delivery", "Batch", "AsyncBackend"]

T = TypeVar("T")
_V = TypeVar("_V")  # the message type of the handle a from_sync wraps
_Item = TypeVar("_Item")  # what an `async for` yields

_READABLE = 0
_WRITABLE = 1
_TASKS_DONE = 2


class _Again(Exception):
    """A non-blocking try found nothing (internal)."""


_OT = TypeVar("_OT", bound="_Owner")
_HT = TypeVar("_HT", bound="_Handle")


class _Owner:
    """What every asyncio class here shares: it owns one synchronous handle
    (``sync``), the one from_sync wrapped or the constructor made; close()
    closes it, and so does leaving a ``with`` block."""

    _sync_class: Any = object
    _h: Any

    @classmethod
    def from_sync(cls: Type[_OT], h: Any) -> _OT:
        """Wrap a synchronous handle (owned from now on: close() closes it).

        Args:
            h: A handle of the synchronous class of the same name
                (pyqueue.Queue for Queue, pyqueue.Subscription for
                Subscription, ...).

        Returns:
            An asyncio handle on the same object.

        Raises:
            TypeError: h is not of the synchronous kind of this class.
        """
        if not isinstance(h, cls._sync_class):
            raise TypeError(f"{cls.__name__}.from_sync needs a pyqueue."
                            f"{cls._sync_class.__name__}, not {type(h).__name__}")
        if type(h).__module__.startswith("pyqueue.backends.redis") or type(
                getattr(h, "_log", None)).__module__.startswith("pyqueue.backends.redis"):
            # A Redis handle: the Redis subclass of this class (its waits
            # are redis.asyncio's; pyqueue/backends/redis/aio.py).
            from .backends.redis import aio as _redis_aio
            made: Optional[_OT] = _redis_aio.wrap(cls, h)
            if made is None:
                raise TypeError(f"pyqueue.asyncio.{cls.__name__} is not available on the "
                                f"Redis backend yet (Queue, JoinableQueue, WorkQueue, "
                                f"Topic and Log are)")
            return made
        self = cls.__new__(cls)
        self._h = h
        return self

    @property
    def sync(self) -> Any:
        """The synchronous handle this one owns."""
        return self._h

    def close(self) -> None:
        """Close this handle (other handles and processes are unaffected)."""
        self._h.close()

    def __enter__(self: _OT) -> _OT:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<pyqueue.asyncio.{type(self).__name__} of {self._h!r}>"


class _Handle(_Owner):
    """An _Owner of a named object (a queue, topic, log or work queue): made
    with the synchronous class's arguments, opened by name, pickled as its
    synchronous handle is."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._h = self._sync_class(*args, **kwargs)

    @classmethod
    def open(cls: Type[_HT], name: Any, **kwargs: Any) -> _HT:
        """Open an existing one (as the synchronous class's open).

        Args:
            name: Its name (a directory log: its path).
            **kwargs: As the synchronous class's open (serializer=, ...).

        Returns:
            An asyncio handle on it.

        Raises:
            SegmentNotFound: No such object.
            SegmentMismatch: It is not of this kind.
        """
        return cls.from_sync(cls._sync_class.open(name, **kwargs))

    @property
    def name(self) -> str:
        """Its name (in /dev/shm; a directory log's path)."""
        name: str = self._h.name
        return name

    def unlink(self) -> None:
        """Remove its name (as the synchronous class's unlink).

        Raises:
            PermissionError: The name belongs to another user.
            AttributeError: A directory log (remove its directory instead).
        """
        self._h.unlink()

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self).from_sync, (self._h,))


class Queue(_Handle, Generic[T]):
    """An asyncio handle on a pyqueue.Queue (the same segment, any process).

    Args:
        *args: As pyqueue.Queue (maxsize, capacity_bytes, name, ...).
        **kwargs: As pyqueue.Queue.

    Raises:
        ValueError: A bad setting (as pyqueue.Queue).
        PyQueueError: The segment cannot be made (as pyqueue.Queue).
    """

    _sync_class: Any = _SyncQueue

    if TYPE_CHECKING:  # for type checkers only: from_sync and sync keep the type parameter
        @classmethod
        def from_sync(cls, h: _SyncQueue[_V]) -> Queue[_V]: ...

        @property
        def sync(self) -> _SyncQueue[T]: ...

    async def put(self, obj: T, block: bool = True, timeout: Optional[float] = None) -> None:
        """Add a message, waiting (without blocking the loop) for room.

        Args:
            obj: The message.
            block: Wait for room (False: raise queue.Full at once).
            timeout: With block, the longest wait in seconds (None: for ever).

        Raises:
            queue.Full: No room in time.
            MessageTooLarge: The encoded message is too large for the queue.
            ValueError: The handle is closed, or timeout is NaN.
            TypeError: timeout is not a number.
        """
        if timeout is not None:  # (checked before the fast path acts)
            _api.check_timeout(timeout, block)
        try:  # the fast path: one C call, no wait
            self._h.put(obj, False)
            return
        except _queue.Full:
            if not block:
                raise
        await _aio.wait_event(self._h, _WRITABLE, lambda: self._h.put(obj, False),
                                     _queue.Full, _aio.deadline_of(timeout))

    def put_nowait(self, obj: T) -> None:
        """put(obj, block=False), synchronously.

        Args:
            obj: The message.

        Raises:
            queue.Full: No room now.
            ValueError: The handle is closed.
        """
        self._h.put_nowait(obj)

    async def get(self, block: bool = True, timeout: Optional[float] = None) -> T:
        """Remove and return the oldest message, waiting (without blocking
        the loop) for one. Cancellation-safe: cancelled, it has taken nothing.

        Args:
            block: Wait for a message (False: raise queue.Empty at once).
            timeout: With block, the longest wait in seconds (None: for ever).

        Returns:
            The message.

        Raises:
            queue.Empty: No message in time.
            UndecodableMessage: The message was taken but cannot be decoded.
            ValueError: The handle is closed, or timeout is NaN.
            TypeError: timeout is not a number.
        """
        if timeout is not None:  # (checked before the fast path acts)
            _api.check_timeout(timeout, block)
        try:  # the fast path: one C call, no wait
            return self._h.get(False)  # type: ignore[no-any-return]
        except _queue.Empty:
            if not block:
                raise
        return await _aio.wait_event(  # type: ignore[no-any-return]
            self._h, _READABLE, self._h.get_nowait, _queue.Empty, _aio.deadline_of(timeout))

    def get_nowait(self) -> T:
        """get(block=False), synchronously.

        Returns:
            The oldest message.

        Raises:
            queue.Empty: The queue is empty now.
            ValueError: The handle is closed.
        """
        return self._h.get_nowait()  # type: ignore[no-any-return]

    async def get_many(self, max_messages: int = 1024,
                       timeout: Optional[float] = None) -> List[T]:
        """Wait for at least one message, then take what is there (up to
        max_messages), in one synchronous step.

        Args:
            max_messages: The most messages returned (at least 1).
            timeout: The longest wait for the first one (None: for ever).

        Returns:
            The messages, oldest first.

        Raises:
            queue.Empty: No message in time.
            ValueError: The handle is closed, or max_messages < 1.
        """
        max_messages = _api.check_max_messages(max_messages)  # (the arguments in order)
        return await _aio.wait_event(  # type: ignore[no-any-return]
            self._h, _READABLE, lambda: self._h.get_many(max_messages, block=False),
            _queue.Empty, _aio.deadline_of(timeout))

    def qsize(self) -> int:
        """The number of messages in the queue now.

        Returns:
            The count.

        Raises:
            ValueError: The handle is closed.
        """
        return self._h.qsize()  # type: ignore[no-any-return]

    def empty(self) -> bool:
        """Whether the queue is empty now.

        Returns:
            True when empty.

        Raises:
            ValueError: The handle is closed.
        """
        return self._h.empty()  # type: ignore[no-any-return]

    def full(self) -> bool:
        """Whether the queue is full now.

        Returns:
            True when full.

        Raises:
            ValueError: The handle is closed.
        """
        return self._h.full()  # type: ignore[no-any-return]

    def stats(self) -> Dict[str, Any]:
        """The queue's statistics (as pyqueue.Queue.stats; waiting
        consumers and producers count the coroutines that wait).

        Returns:
            A dict of counters.

        Raises:
            ValueError: The handle is closed.
        """
        return self._h.stats()  # type: ignore[no-any-return]

    def __aiter__(self) -> AsyncIterator[T]:
        return _until_shutdown(self.get)


async def _until_shutdown(get: Callable[[], Awaitable[_Item]]) -> AsyncIterator[_Item]:
    """`async for` over a handle: what get() returns until a shutdown,
    then the end (as the sync `for` over a queue, a work queue or a
    subscription)."""
    while True:
        try:
            item = await get()
        except ShutDown:
            return
        yield item


class JoinableQueue(Queue[T]):
    """An asyncio handle on a pyqueue.JoinableQueue: task_done() and an
    awaitable join().

    Args:
        *args: As pyqueue.JoinableQueue.
        **kwargs: As pyqueue.JoinableQueue.

    Raises:
        ValueError: A bad setting.
    """

    _sync_class = _SyncJoinableQueue

    if TYPE_CHECKING:  # for type checkers only: from_sync and sync keep the type parameter
        # (narrower than Queue.from_sync's argument, as at run time: it
        # takes a pyqueue.JoinableQueue, not any pyqueue.Queue)
        @classmethod
        def from_sync(  # type: ignore[override]
                cls, h: _SyncJoinableQueue[_V]) -> JoinableQueue[_V]: ...

        @property
        def sync(self) -> _SyncJoinableQueue[T]: ...

    def task_done(self) -> None:
        """Mark a message taken from the queue done (as queue.Queue).

        Raises:
            ValueError: Called more times than messages were put.
        """
        self._h.task_done()

    async def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until every message put has been marked done (by any
        process).

        Args:
            timeout: The longest wait in seconds (None: for ever).

        Returns:
            True when all are done; False at the timeout.

        Raises:
            ValueError: The handle is closed, or timeout is NaN.
            TypeError: timeout is not a number.
        """

        def done() -> bool:
            if not self._h._join(0):
                raise _Again
            return True

        try:
            return await _aio.wait_event(self._h, _TASKS_DONE, done, _Again,  # type: ignore[no-any-return]
                                         _aio.deadline_of(timeout))
        except _Again:
            return False


class Subscription(_Owner, Generic[T]):
    """An asyncio cursor on a topic (made by Topic.subscribe()): ``await
    get()``, ``get_many``, ``async for``.

    Raises:
        TypeError: Made directly (use Topic.subscribe or from_sync).
    """

    _sync_class = _SyncSubscription

    if TYPE_CHECKING:  # for type checkers only: from_sync and sync keep the type parameter
        @classmethod
        def from_sync(cls, h: _SyncSubscription[_V]) -> Subscription[_V]: ...

        @property
        def sync(self) -> _SyncSubscription[T]: ...

    def __init__(self, sub: Any) -> None:
        if not isinstance(sub, _SyncSubscription):
            raise TypeError("a Subscription is made by Topic.subscribe()")
        self._h = sub

    async def get(self, timeout: Optional[float] = None) -> T:
        """The next message, waiting (without blocking the loop) for one.
        Cancellation-safe: cancelled, it has taken nothing.

        Args:
            timeout: The longest wait in seconds (None: for ever).

        Returns:
            The message.

        Raises:
            queue.Empty: No message in time.
            UndecodableMessage: The next message cannot be decoded.
            ValueError: The subscription or its topic is closed.
        """
        if timeout is not None:  # (checked before the fast path acts)
            _api.check_timeout(timeout)
        try:  # the fast path: one C call, no wait
            return self._h.get(False)  # type: ignore[no-any-return]
        except _queue.Empty:
            pass
        return await _aio.wait_event(  # type: ignore[no-any-return]
            self._h, None, lambda: self._h.get(False), _queue.Empty,
            _aio.deadline_of(timeout))

    def get_nowait(self) -> T:
        """The next message now, synchronously.

        Returns:
            The message.

        Raises:
            queue.Empty: None now.
        """
        return self._h.get(False)  # type: ignore[no-any-return]

    async def get_many(self, max_messages: int = 1024,
                       timeout: Optional[float] = None) -> List[T]:
        """Wait for one message, then take what is there (up to max_messages).

        Args:
            max_messages: The most messages returned.
            timeout: The longest wait for the first (None: for ever).

        Returns:
            The messages in order.

        Raises:
            queue.Empty: None in time.
            ValueError: The subscription is closed.
        """
        max_messages = _api.check_max_messages(max_messages)  # (the arguments in order)
        return await _aio.wait_event(  # type: ignore[no-any-return]
            self._h, None, lambda: self._h.get_many(max_messages, False),
            _queue.Empty, _aio.deadline_of(timeout))

    @property
    def lag(self) -> int:
        """Messages published and not read yet by this subscription."""
        return self._h.lag  # type: ignore[no-any-return]

    @property
    def lost(self) -> int:
        """Messages this subscription missed (it fell behind a lossy topic)."""
        return self._h.lost  # type: ignore[no-any-return]

    def __aiter__(self) -> AsyncIterator[T]:
        return _until_shutdown(self.get)


class Topic(_Handle, Generic[T]):
    """An asyncio handle on a pyqueue.Topic.

    Args:
        *args: As pyqueue.Topic.
        **kwargs: As pyqueue.Topic.

    Raises:
        ValueError: A bad setting.
    """

    _sync_class = _SyncTopic

    if TYPE_CHECKING:  # for type checkers only: from_sync and sync keep the type parameter
        @classmethod
        def from_sync(cls, h: _SyncTopic[_V]) -> Topic[_V]: ...

        @property
        def sync(self) -> _SyncTopic[T]: ...

    async def publish(self, obj: T, timeout: Optional[float] = None) -> None:
        """Publish a message; on a lossless topic, wait (without blocking
        the loop) for the slowest subscriber to make room.

        Args:
            obj: The message.
            timeout: The longest wait for room (None: for ever).

        Raises:
            queue.Full: No room in time (lossless topic).
            MessageTooLarge: The message is too large.
            ValueError: The handle is closed.
        """
        await _aio.wait_event(self._h, _WRITABLE, lambda: self._h.publish(obj, False),
                              _queue.Full, _aio.deadline_of(timeout))

    def subscribe(self, start: str = "latest") -> Subscription[T]:
        """Subscribe this process (as pyqueue.Topic.subscribe).

        Args:
            start: "latest" or "earliest".

        Returns:
            An asyncio Subscription.

        Raises:
            ValueError: A bad start, or the handle is closed.
            PyQueueError: No subscriber slot is free.
        """
        return Subscription(self._h.subscribe(start))

class Delivery(Generic[T]):
    """One delivery of a WorkQueue message (what ``await
    WorkQueue.get()`` returns): settle it once with ``await ack()``,
    ``nack()`` or ``reject()``. ``async with`` acks on success and nacks on
    an exception. The settlements never wait: they run at once.

    Attributes:
        value: The message.
        id: Its id in the queue.
        delivery_count: Which delivery this is (1 for the first).

    Raises:
        TypeError: Made directly (it comes from WorkQueue.get).
    """

    __slots__ = ("_d", "value", "id", "delivery_count")

    def __init__(self, d: Any) -> None:
        if not isinstance(d, _SyncDelivery):
            raise TypeError("a Delivery comes from WorkQueue.get()")
        self._d: Any = d
        self.value: T = d.value
        self.id: int = d.id
        self.delivery_count: int = d.delivery_count

    @property
    def sync(self) -> _SyncDelivery[T]:
        """The synchronous pyqueue.Delivery."""
        return self._d  # type: ignore[no-any-return]

    @property
    def enqueued_at(self) -> float:
        """When the message was put (seconds since the epoch)."""
        return self._d.enqueued_at  # type: ignore[no-any-return]

    @property
    def redelivered_because(self) -> Optional[str]:
        """None, "nacked", "visibility timeout" or "consumer died"."""
        return self._d.redelivered_because  # type: ignore[no-any-return]

    @property
    def settled(self) -> Optional[str]:
        """None (held), "acked", "nacked" or "rejected"."""
        return self._d.settled  # type: ignore[no-any-return]

    async def ack(self) -> None:
        """Done: the message goes away.

        Raises:
            DeliveryExpired: It is no longer this consumer's.
            ValueError: Already settled.
        """
        self._d.ack()

    async def nack(self, delay: float = 0.0, error: Optional[str] = None) -> None:
        """Deliver it again (from delay seconds on), or dead-letter it on
        its last allowed delivery.

        Args:
            delay: Seconds before it is available again.
            error: Why (kept with a dead letter).

        Raises:
            DeliveryExpired: It is no longer this consumer's.
            ValueError: Already settled, or delay is negative.
        """
        self._d.nack(delay, error)

    async def reject(self, reason: str = "rejected") -> None:
        """Dead-letter it now.

        Args:
            reason: Kept with the dead letter.

        Raises:
            DeliveryExpired: It is no longer this consumer's.
            ValueError: Already settled.
        """
        self._d.reject(reason)

    async def extend(self, seconds: float) -> None:
        """Keep it for seconds more from now.

        Args:
            seconds: The new visibility timeout from now.

        Raises:
            DeliveryExpired: It is no longer this consumer's.
            ValueError: Already settled, or seconds is not positive.
        """
        self._d.extend(seconds)

    async def __aenter__(self) -> "Delivery[T]":
        return self

    async def __aexit__(self, exc_type: Optional[type], exc: Optional[BaseException],
                        tb: Any) -> None:
        self._d.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"<pyqueue.asyncio.Delivery of {self._d!r}>"


class Batch:
    """Deliveries taken together (what ``await WorkQueue.get_many()``
    returns): ``values``, ``ids``, and awaitable ack/nack/reject/extend of
    all or of chosen positions (see pyqueue's Batch).

    Raises:
        TypeError: Made directly.
    """

    def __init__(self, batch: Any) -> None:
        self._b: Any = batch

    @property
    def sync(self) -> _SyncBatch:
        """The synchronous Batch."""
        return self._b  # type: ignore[no-any-return]

    @property
    def values(self) -> List[Any]:
        """The messages."""
        return self._b.values  # type: ignore[no-any-return]

    @property
    def ids(self) -> List[int]:
        """Their ids."""
        return self._b.ids  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return len(self._b)

    def __iter__(self) -> Any:
        return iter(self._b)

    def __getitem__(self, i: int) -> Any:
        return self._b[i]

    async def ack(self, indices: Optional[Iterable[int]] = None) -> None:
        """Ack every message not settled yet, or those at indices.

        Args:
            indices: Positions (None: all unsettled).

        Raises:
            DeliveryExpired: Some are no longer this consumer's.
        """
        self._b.ack(indices)

    async def nack(self, indices: Optional[Iterable[int]] = None, delay: float = 0.0,
                   error: Optional[str] = None) -> None:
        """Deliver them again (from delay seconds on).

        Args:
            indices: Positions (None: all unsettled).
            delay: Seconds before they are available again.
            error: Why (kept with dead letters).

        Raises:
            DeliveryExpired: Some are no longer this consumer's.
        """
        self._b.nack(indices, delay, error)

    async def reject(self, indices: Optional[Iterable[int]] = None,
                     reason: str = "rejected") -> None:
        """Dead-letter them now.

        Args:
            indices: Positions (None: all unsettled).
            reason: Kept with the dead letters.

        Raises:
            DeliveryExpired: Some are no longer this consumer's.
        """
        self._b.reject(indices, reason)

    async def extend(self, seconds: float, indices: Optional[Iterable[int]] = None) -> None:
        """Keep them for seconds more from now.

        Args:
            seconds: The new visibility timeout from now.
            indices: Positions (None: all unsettled).

        Raises:
            DeliveryExpired: Some are no longer this consumer's.
        """
        self._b.extend(seconds, indices)


class WorkQueue(_Handle, Generic[T]):
    """An asyncio handle on a pyqueue.WorkQueue: ``await get()`` gives a
    Delivery with awaitable ack/nack/reject.

    Args:
        *args: As pyqueue.WorkQueue.
        **kwargs: As pyqueue.WorkQueue.

    Raises:
        ValueError: A bad setting.
    """

    _sync_class = _SyncWorkQueue

    if TYPE_CHECKING:  # for type checkers only: from_sync and sync keep the type parameter
        @classmethod
        def from_sync(cls, h: _SyncWorkQueue[_V]) -> WorkQueue[_V]: ...

        @property
        def sync(self) -> _SyncWorkQueue[T]: ...

    async def put(self, obj: T, *, key: Union[bytes, str, None] = None, delay: float = 0.0,
                  timeout: Optional[float] = None) -> int:
        """Add a message, waiting (without blocking the loop) for room.

        Args:
            obj: The message.
            key: A deduplication key (as pyqueue.WorkQueue.put).
            delay: Seconds before it is available.
            timeout: The longest wait for room (None: for ever).

        Returns:
            The message's id.

        Raises:
            queue.Full: No room in time.
            MessageTooLarge: The message is too large.
            ValueError: delay is negative or NaN, timeout is NaN, or the handle is
                closed.
            TypeError: delay or timeout is not a number.
        """
        h = self._h
        deadline = _aio.deadline_of(timeout)
        # Encoded once (a large message: its out-of-band segment written
        # once), put again on each retry; the segment goes when the put
        # does not commit it (Full, cancelled, closed, shut down) or is a
        # duplicate.
        enc = h._encode_put(obj, key, _api.check_seconds(delay, "delay"))
        try:
            mid, dup = await _aio.wait_event(
                h, _WRITABLE, lambda: h._put_prepared(enc, False, None), _queue.Full, deadline)
        except BaseException:
            h._drop_prepared(enc)
            raise
        if dup:
            h._drop_prepared(enc)
        return mid  # type: ignore[no-any-return]

    async def get(self, timeout: Optional[float] = None) -> Delivery[T]:
        """Take the oldest available message, waiting (without blocking the
        loop) for one. Cancellation-safe: cancelled, it has taken nothing.

        Args:
            timeout: The longest wait in seconds (None: for ever).

        Returns:
            A Delivery to settle.

        Raises:
            queue.Empty: No message in time.
            ValueError: The handle is closed.
            LockTimeout: The queue's lock stayed held by a stopped process.
        """
        if timeout is not None:  # (checked before the fast path acts)
            _api.check_timeout(timeout)
        try:  # the fast path: no wait
            return Delivery(self._h.get(False))
        except _queue.Empty:
            pass
        d = await _aio.wait_event(self._h, _READABLE, self._h.get_nowait, _queue.Empty,
                                  _aio.deadline_of(timeout))
        return Delivery(d)

    def get_nowait(self) -> Delivery[T]:
        """A delivery now, synchronously.

        Returns:
            A Delivery.

        Raises:
            queue.Empty: None available now.
        """
        return Delivery(self._h.get_nowait())

    async def get_many(self, max_messages: int = 1024,
                       timeout: Optional[float] = None) -> Batch:
        """Wait for one message, then take what is available (up to
        max_messages) as a Batch.

        Args:
            max_messages: The most messages taken.
            timeout: The longest wait for the first (None: for ever).

        Returns:
            A Batch.

        Raises:
            queue.Empty: None in time.
            ValueError: The handle is closed.
        """
        max_messages = _api.check_max_messages(max_messages)  # (the arguments in order)
        b = await _aio.wait_event(self._h, _READABLE,
                                  lambda: self._h.get_many(max_messages, block=False),
                                  _queue.Empty, _aio.deadline_of(timeout))
        return Batch(b)

    def qsize(self) -> int:
        """Messages not done: available, delayed, held or being moved.

        Returns:
            The count.

        Raises:
            ValueError: The handle is closed.
        """
        return self._h.qsize()  # type: ignore[no-any-return]

    def stats(self) -> Dict[str, Any]:
        """As pyqueue.WorkQueue.stats.

        Returns:
            A dict of counters.

        Raises:
            ValueError: The handle is closed.
        """
        return self._h.stats()  # type: ignore[no-any-return]

    def __aiter__(self) -> AsyncIterator[Delivery[T]]:
        return _until_shutdown(self.get)


def _log_unmaps(log: Any) -> bool:
    # A directory log's close() unmaps its control file (its event).
    from .log import DirectoryLog
    return isinstance(log, DirectoryLog)


class Consumer(_Owner):
    """An asyncio member of a Log's consumer group: ``await poll()`` and
    ``async for``; the rest as pyqueue.Consumer (through ``sync``).

    Raises:
        TypeError: Made directly (use Log.consumer or from_sync).
    """

    _sync_class = _SyncConsumer

    if TYPE_CHECKING:  # for type checkers only
        @property
        def sync(self) -> _SyncConsumer: ...

    def __init__(self, consumer: Any) -> None:
        if not isinstance(consumer, _SyncConsumer):
            raise TypeError("a Consumer comes from Log.consumer()")
        self._h = consumer

    async def poll(self, max_records: int = 500, timeout: Optional[float] = 0.0) -> List[Record]:
        """Records of the assigned partitions, waiting (without blocking
        the loop) for the first (heartbeating and following rebalances
        between waits, at least every 0.1 s).

        Args:
            max_records: The most records returned.
            timeout: Seconds to wait for the first (None: for ever).

        Returns:
            Up to max_records Records; [] when none came in time.

        Raises:
            PoisonRecord: A record cannot be decoded (as pyqueue.Consumer.poll).
            ValueError: Bad max_records, or the consumer is closed.
        """

        def fetch() -> List[Record]:
            out: List[Record] = self._h.poll(max_records, timeout=0)
            if not out:
                raise _Again
            return out

        log = self._h._log
        try:
            return await _aio.wait_event(  # type: ignore[no-any-return]
                log, None, fetch, _Again, _aio.deadline_of(timeout), _log_unmaps(log))
        except _Again:
            return []

    def commit(self, offsets: Optional[Mapping[int, int]] = None) -> None:
        """Commit positions (as pyqueue.Consumer.commit).

        Args:
            offsets: {partition: next offset} (None: the current positions).

        Raises:
            CommitFailed: The group rebalanced.
        """
        self._h.commit(offsets)

    def assignment(self) -> List[int]:
        """The partitions assigned to this member now.

        Returns:
            Partition numbers.

        Raises:
            ValueError: The consumer is closed.
        """
        return self._h.assignment()  # type: ignore[no-any-return]

    def __aiter__(self) -> AsyncIterator[Record]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Record]:
        # Ends once every assigned partition is read to the end of a
        # shut-down log, as the sync `for r in consumer` does.
        async for records in _until_shutdown(lambda: self.poll(timeout=None)):
            for r in records:
                yield r

class Log(_Handle, Generic[T]):
    """An asyncio handle on a pyqueue.Log (memory or directory mode):
    ``await read()`` waits for records, ``consumer()`` makes an asyncio
    Consumer; appends never wait and run at once.

    Args:
        *args: As pyqueue.Log.
        **kwargs: As pyqueue.Log.

    Raises:
        ValueError: A bad setting.
    """

    _sync_class = _SyncLog

    if TYPE_CHECKING:  # for type checkers only: from_sync and sync keep the type parameter
        @classmethod
        def from_sync(cls, h: _SyncLog[_V]) -> Log[_V]: ...

        @property
        def sync(self) -> _SyncLog[T]: ...

    def append(self, value: T, key: Any = None, headers: Any = None) -> Tuple[int, int]:
        """Append a record (as pyqueue.Log.append; it never waits).

        Args:
            value: The record's value.
            key: Its key (picks the partition).
            headers: Its headers.

        Returns:
            (partition, offset).

        Raises:
            MessageTooLarge: The record is too large.
            ValueError: The log is closed.
        """
        return self._h.append(value, key=key, headers=headers)  # type: ignore[no-any-return]

    async def read(self, partition: int, offset: int, max_records: int = 1000,
                   timeout: Optional[float] = None) -> List[Record]:
        """Records of a partition from offset on, waiting (without blocking
        the loop) for the first.

        Args:
            partition: The partition.
            offset: The first offset.
            max_records: The most records returned.
            timeout: Seconds to wait for the first (None: for ever).

        Returns:
            Up to max_records Records; [] when none came in time.

        Raises:
            OffsetOutOfRange: offset is out of the partition's range.
            PoisonRecord: The record at offset cannot be decoded.
            ValueError: A bad argument, or the log is closed.
        """

        # The arguments in order, as the sync read checks them, then the
        # timeout (before, the timeout was checked first).
        partition = _api.check_partition(partition, self._h.partitions or None)
        offset = _api.check_offset(offset)
        max_records = _api.check_max_records(max_records)

        def fetch() -> List[Record]:
            out: List[Record] = self._h.read(partition, offset, max_records, timeout=0)
            if not out:
                raise _Again
            return out

        try:
            return await _aio.wait_event(  # type: ignore[no-any-return]
                self._h, None, fetch, _Again, _aio.deadline_of(timeout), _log_unmaps(self._h))
        except _Again:
            return []

    def consumer(self, group: str, **kwargs: Any) -> Consumer:
        """Join consumer group `group` (as pyqueue.Log.consumer).

        Args:
            group: The group's name.
            **kwargs: As pyqueue.Log.consumer.

        Returns:
            An asyncio Consumer.

        Raises:
            ValueError: A bad option, or the log is closed.
        """
        return Consumer(self._h.consumer(group, **kwargs))

    def end_offset(self, partition: int) -> int:
        """The offset the next record of the partition gets.

        Args:
            partition: The partition.

        Returns:
            The offset.

        Raises:
            ValueError: Bad partition, or the log is closed.
        """
        return self._h.end_offset(partition)  # type: ignore[no-any-return]


class _Maker:
    """One kind of an AsyncBackend: called, it makes the sync handle with
    the same arguments and wraps it; ``open(name)`` opens one."""

    def __init__(self, cls: Any, make: Any) -> None:
        self._cls = cls
        self._make = make

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._cls.from_sync(self._make(*args, **kwargs))

    def open(self, name: str, **kwargs: Any) -> Any:
        """Open an existing one by name (as the backend's class's open).

        Args:
            name: Its name.
            **kwargs: As the synchronous open (serializer=, ...).

        Returns:
            An asyncio handle on it.
        """
        return self._cls.from_sync(self._make.open(name, **kwargs))


class AsyncBackend:
    """What ``connect(url)`` returns: Queue, JoinableQueue, WorkQueue, Topic and
    Log that make asyncio handles on that backend (``sync``: the backend of
    pyqueue.connect).

    Args:
        url: As pyqueue.connect ("shm://", "redis://...", ...; None:
            $PYQUEUE_URL, else "shm://").
    """

    def __init__(self, url: Optional[str] = None) -> None:
        from . import backends
        self.sync: Backend = backends.connect(url)
        self.Queue = _Maker(Queue, self.sync.Queue)
        self.JoinableQueue = _Maker(JoinableQueue, self.sync.JoinableQueue)
        self.WorkQueue = _Maker(WorkQueue, self.sync.WorkQueue)
        self.Topic = _Maker(Topic, self.sync.Topic)
        self.Log = _Maker(Log, self.sync.Log)


def connect(url: Optional[str] = None) -> AsyncBackend:
    """The asyncio classes on a backend: ``await aq.connect("redis://h:6379/0")
    .Queue(name="jobs").get()`` (on Redis through redis.asyncio; Queue,
    JoinableQueue, WorkQueue, Topic and Log so far).

    Args:
        url: As pyqueue.connect (None: $PYQUEUE_URL, else "shm://").

    Returns:
        An AsyncBackend.

    Raises:
        ValueError: Not a URL pyqueue knows.
    """
    return AsyncBackend(url)
