"""asyncio versions of pyqueue's kinds, on the shared-memory backend.

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
from typing import (Any, AsyncIterator, Dict, Generic, Iterable, List, Mapping, Optional,
                    Tuple, Type, TypeVar, Union)

from . import _aio
from .consumer import Consumer as _SyncConsumer
from .log import Log as _SyncLog
from .log import Record
from .queues import JoinableQueue as _SyncJoinableQueue
from .queues import Queue as _SyncQueue
from .topic import Subscription as _SyncSubscription
from .topic import Topic as _SyncTopic
from .workqueue import Delivery as _SyncDelivery
from .workqueue import WorkQueue as _SyncWorkQueue

__all__ = ["Queue", "JoinableQueue", "Topic", "Subscription", "Log", "Consumer", "WorkQueue",
           "Delivery", "Batch"]

T = TypeVar("T")

_READABLE = 0
_WRITABLE = 1
_TASKS_DONE = 2


class _Again(Exception):
    """A non-blocking try found nothing (internal)."""


_QT = TypeVar("_QT", bound="Queue[Any]")


class Queue(Generic[T]):
    """An asyncio handle on a pyqueue.Queue (the same segment, any process).

    Args:
        *args: As pyqueue.Queue (maxsize, capacity_bytes, name, ...).
        **kwargs: As pyqueue.Queue.

    Raises:
        ValueError: A bad setting (as pyqueue.Queue).
        PyQueueError: The segment cannot be made (as pyqueue.Queue).
    """

    _sync_class: Any = _SyncQueue

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._q: Any = self._sync_class(*args, **kwargs)

    @classmethod
    def open(cls: Type[_QT], name: str, **kwargs: Any) -> _QT:
        """Open an existing queue by name (as pyqueue.Queue.open).

        Args:
            name: The queue's name.
            **kwargs: As pyqueue.Queue.open (serializer=, ...).

        Returns:
            An asyncio handle on it.

        Raises:
            SegmentNotFound: No such queue.
            SegmentMismatch: It is not a queue of this kind.
        """
        return cls.from_sync(cls._sync_class.open(name, **kwargs))

    @classmethod
    def from_sync(cls: Type[_QT], q: Any) -> _QT:
        """Wrap a synchronous handle (it is owned from now on: close() closes it).

        Args:
            q: A pyqueue.Queue (a JoinableQueue for JoinableQueue).

        Returns:
            An asyncio handle on the same queue.

        Raises:
            TypeError: q is not of the synchronous kind of this class.
        """
        if not isinstance(q, cls._sync_class):
            raise TypeError(f"{cls.__name__}.from_sync needs a {cls._sync_class.__name__}, "
                            f"not {type(q).__name__}")
        self = cls.__new__(cls)
        self._q = q
        return self

    @property
    def sync(self) -> Any:
        """The synchronous handle this one owns."""
        return self._q

    @property
    def name(self) -> str:
        """The queue's name in /dev/shm."""
        name: str = self._q.name
        return name

    async def put(self, obj: T, block: bool = True, timeout: Optional[float] = None) -> None:
        """Add a message, waiting (without blocking the loop) for room.

        Args:
            obj: The message.
            block: Wait for room (False: raise queue.Full at once).
            timeout: With block, the longest wait in seconds (None: for ever).

        Raises:
            queue.Full: No room in time.
            MessageTooLarge: The encoded message is too large for the queue.
            ValueError: The handle is closed, or timeout is negative.
        """
        try:  # the fast path: one C call, no wait
            self._q.put(obj, False)
            return
        except _queue.Full:
            if not block:
                raise
        await _aio.wait_event(self._q, _WRITABLE, lambda: self._q.put(obj, False),
                                     _queue.Full, _aio.deadline_of(timeout))

    def put_nowait(self, obj: T) -> None:
        """put(obj, block=False), synchronously.

        Args:
            obj: The message.

        Raises:
            queue.Full: No room now.
            ValueError: The handle is closed.
        """
        self._q.put_nowait(obj)

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
            ValueError: The handle is closed, or timeout is negative.
        """
        try:  # the fast path: one C call, no wait
            return self._q.get(False)  # type: ignore[no-any-return]
        except _queue.Empty:
            if not block:
                raise
        return await _aio.wait_event(  # type: ignore[no-any-return]
            self._q, _READABLE, self._q.get_nowait, _queue.Empty, _aio.deadline_of(timeout))

    def get_nowait(self) -> T:
        """get(block=False), synchronously.

        Returns:
            The oldest message.

        Raises:
            queue.Empty: The queue is empty now.
            ValueError: The handle is closed.
        """
        return self._q.get_nowait()  # type: ignore[no-any-return]

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
        return await _aio.wait_event(  # type: ignore[no-any-return]
            self._q, _READABLE, lambda: self._q.get_many(max_messages, block=False),
            _queue.Empty, _aio.deadline_of(timeout))

    def qsize(self) -> int:
        """The number of messages in the queue now.

        Returns:
            The count.

        Raises:
            ValueError: The handle is closed.
        """
        return self._q.qsize()  # type: ignore[no-any-return]

    def empty(self) -> bool:
        """Whether the queue is empty now.

        Returns:
            True when empty.

        Raises:
            ValueError: The handle is closed.
        """
        return self._q.empty()  # type: ignore[no-any-return]

    def full(self) -> bool:
        """Whether the queue is full now.

        Returns:
            True when full.

        Raises:
            ValueError: The handle is closed.
        """
        return self._q.full()  # type: ignore[no-any-return]

    def stats(self) -> Dict[str, Any]:
        """The queue's statistics (as pyqueue.Queue.stats; waiting
        consumers and producers count the coroutines that wait).

        Returns:
            A dict of counters.

        Raises:
            ValueError: The handle is closed.
        """
        return self._q.stats()  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close this handle (other handles and processes are unaffected)."""
        self._q.close()

    def unlink(self) -> None:
        """Remove the queue's name (as pyqueue.Queue.unlink).

        Raises:
            PermissionError: The name belongs to another user.
        """
        self._q.unlink()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        while True:
            yield await self.get()

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self).from_sync, (self._q,))

    def __enter__(self: "_QT") -> "_QT":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<pyqueue.asyncio.{type(self).__name__} of {self._q!r}>"



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

    def task_done(self) -> None:
        """Mark a message taken from the queue done (as queue.Queue).

        Raises:
            ValueError: Called more times than messages were put.
        """
        self._q.task_done()

    async def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until every message put has been marked done (by any
        process).

        Args:
            timeout: The longest wait in seconds (None: for ever).

        Returns:
            True when all are done; False at the timeout.

        Raises:
            ValueError: The handle is closed, or timeout is negative.
        """

        def done() -> bool:
            if not self._q._join(0):
                raise _Again
            return True

        try:
            return await _aio.wait_event(self._q, _TASKS_DONE, done, _Again,  # type: ignore[no-any-return]
                                         _aio.deadline_of(timeout))
        except _Again:
            return False


class Subscription(Generic[T]):
    """An asyncio cursor on a topic (made by Topic.subscribe()): ``await
    get()``, ``get_many``, ``async for``.

    Raises:
        TypeError: Made directly (use Topic.subscribe or from_sync).
    """

    def __init__(self, sub: Any) -> None:
        if not isinstance(sub, _SyncSubscription):
            raise TypeError("a Subscription is made by Topic.subscribe()")
        self._s: Any = sub

    @classmethod
    def from_sync(cls, sub: Any) -> "Subscription[Any]":
        """Wrap a synchronous pyqueue.Subscription (owned from now on).

        Args:
            sub: The subscription.

        Returns:
            An asyncio handle on it.

        Raises:
            TypeError: sub is not a pyqueue.Subscription.
        """
        return cls(sub)

    @property
    def sync(self) -> Any:
        """The synchronous subscription this one owns."""
        return self._s

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
        try:  # the fast path: one C call, no wait
            return self._s.get(False)  # type: ignore[no-any-return]
        except _queue.Empty:
            pass
        return await _aio.wait_event(  # type: ignore[no-any-return]
            self._s, None, lambda: self._s.get(False), _queue.Empty,
            _aio.deadline_of(timeout))

    def get_nowait(self) -> T:
        """The next message now, synchronously.

        Returns:
            The message.

        Raises:
            queue.Empty: None now.
        """
        return self._s.get(False)  # type: ignore[no-any-return]

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
        return await _aio.wait_event(  # type: ignore[no-any-return]
            self._s, None, lambda: self._s.get_many(max_messages, False),
            _queue.Empty, _aio.deadline_of(timeout))

    @property
    def lag(self) -> int:
        """Messages published and not read yet by this subscription."""
        return self._s.lag  # type: ignore[no-any-return]

    @property
    def lost(self) -> int:
        """Messages this subscription missed (it fell behind a lossy topic)."""
        return self._s.lost  # type: ignore[no-any-return]

    def close(self) -> None:
        """Unsubscribe."""
        self._s.close()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        while True:
            yield await self.get()

    def __enter__(self) -> "Subscription[T]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Topic(Generic[T]):
    """An asyncio handle on a pyqueue.Topic.

    Args:
        *args: As pyqueue.Topic.
        **kwargs: As pyqueue.Topic.

    Raises:
        ValueError: A bad setting.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._t: Any = _SyncTopic(*args, **kwargs)

    @classmethod
    def open(cls, name: str, **kwargs: Any) -> "Topic[Any]":
        """Open an existing topic (as pyqueue.Topic.open).

        Args:
            name: The topic's name.
            **kwargs: As pyqueue.Topic.open.

        Returns:
            An asyncio handle.

        Raises:
            SegmentNotFound: No such topic.
        """
        return cls.from_sync(_SyncTopic.open(name, **kwargs))

    @classmethod
    def from_sync(cls, t: Any) -> "Topic[Any]":
        """Wrap a synchronous pyqueue.Topic (owned from now on).

        Args:
            t: The topic handle.

        Returns:
            An asyncio handle.

        Raises:
            TypeError: t is not a pyqueue.Topic.
        """
        if not isinstance(t, _SyncTopic):
            raise TypeError(f"Topic.from_sync needs a pyqueue.Topic, not {type(t).__name__}")
        self = cls.__new__(cls)
        self._t = t
        return self

    @property
    def sync(self) -> Any:
        """The synchronous handle this one owns."""
        return self._t

    @property
    def name(self) -> str:
        """The topic's name in /dev/shm."""
        return self._t.name  # type: ignore[no-any-return]

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
        await _aio.wait_event(self._t, _WRITABLE, lambda: self._t.publish(obj, False),
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
        return Subscription(self._t.subscribe(start))

    def close(self) -> None:
        """Close this handle."""
        self._t.close()

    def unlink(self) -> None:
        """Remove the topic's name (as pyqueue.Topic.unlink).

        Raises:
            PermissionError: The name belongs to another user.
        """
        self._t.unlink()

    def __reduce__(self) -> Tuple[Any, ...]:
        return (Topic.from_sync, (self._t,))

    def __enter__(self) -> "Topic[T]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    def sync(self) -> Any:
        """The synchronous pyqueue.Delivery."""
        return self._d

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
    def sync(self) -> Any:
        """The synchronous Batch."""
        return self._b

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


class WorkQueue(Generic[T]):
    """An asyncio handle on a pyqueue.WorkQueue: ``await get()`` gives a
    Delivery with awaitable ack/nack/reject.

    Args:
        *args: As pyqueue.WorkQueue.
        **kwargs: As pyqueue.WorkQueue.

    Raises:
        ValueError: A bad setting.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._q: Any = _SyncWorkQueue(*args, **kwargs)

    @classmethod
    def open(cls, name: str, **kwargs: Any) -> "WorkQueue[Any]":
        """Open an existing work queue (as pyqueue.WorkQueue.open).

        Args:
            name: Its name.
            **kwargs: As pyqueue.WorkQueue.open.

        Returns:
            An asyncio handle.

        Raises:
            SegmentNotFound: No such work queue.
        """
        return cls.from_sync(_SyncWorkQueue.open(name, **kwargs))

    @classmethod
    def from_sync(cls, q: Any) -> "WorkQueue[Any]":
        """Wrap a synchronous pyqueue.WorkQueue (owned from now on).

        Args:
            q: The handle.

        Returns:
            An asyncio handle.

        Raises:
            TypeError: q is not a pyqueue.WorkQueue.
        """
        if not isinstance(q, _SyncWorkQueue):
            raise TypeError(f"WorkQueue.from_sync needs a pyqueue.WorkQueue, not "
                            f"{type(q).__name__}")
        self = cls.__new__(cls)
        self._q = q
        return self

    @property
    def sync(self) -> Any:
        """The synchronous handle this one owns."""
        return self._q

    @property
    def name(self) -> str:
        """The work queue's name."""
        return self._q.name  # type: ignore[no-any-return]

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
            ValueError: delay or timeout is negative, or the handle is closed.
        """
        return await _aio.wait_event(  # type: ignore[no-any-return]
            self._q, _WRITABLE, lambda: self._q.put_nowait(obj, key=key, delay=delay),
            _queue.Full, _aio.deadline_of(timeout))

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
        try:  # the fast path: no wait
            return Delivery(self._q.get(False))
        except _queue.Empty:
            pass
        d = await _aio.wait_event(self._q, _READABLE, self._q.get_nowait, _queue.Empty,
                                  _aio.deadline_of(timeout))
        return Delivery(d)

    def get_nowait(self) -> Delivery[T]:
        """A delivery now, synchronously.

        Returns:
            A Delivery.

        Raises:
            queue.Empty: None available now.
        """
        return Delivery(self._q.get_nowait())

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
        b = await _aio.wait_event(self._q, _READABLE,
                                  lambda: self._q.get_many(max_messages, block=False),
                                  _queue.Empty, _aio.deadline_of(timeout))
        return Batch(b)

    def qsize(self) -> int:
        """Messages not done: available, delayed, held or being moved.

        Returns:
            The count.

        Raises:
            ValueError: The handle is closed.
        """
        return self._q.qsize()  # type: ignore[no-any-return]

    def stats(self) -> Dict[str, Any]:
        """As pyqueue.WorkQueue.stats.

        Returns:
            A dict of counters.

        Raises:
            ValueError: The handle is closed.
        """
        return self._q.stats()  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close this handle."""
        self._q.close()

    def unlink(self) -> None:
        """Remove the work queue's name (as pyqueue.WorkQueue.unlink).

        Raises:
            PermissionError: The name belongs to another user.
        """
        self._q.unlink()

    def __aiter__(self) -> AsyncIterator[Delivery[T]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Delivery[T]]:
        while True:
            yield await self.get()

    def __reduce__(self) -> Tuple[Any, ...]:
        return (WorkQueue.from_sync, (self._q,))

    def __enter__(self) -> "WorkQueue[T]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _log_unmaps(log: Any) -> bool:
    # A directory log's close() unmaps its control file (its event).
    from .log import DirectoryLog
    return isinstance(log, DirectoryLog)


class Consumer:
    """An asyncio member of a Log's consumer group: ``await poll()`` and
    ``async for``; the rest as pyqueue.Consumer (through ``sync``).

    Raises:
        TypeError: Made directly (use Log.consumer or from_sync).
    """

    def __init__(self, consumer: Any) -> None:
        if not isinstance(consumer, _SyncConsumer):
            raise TypeError("a Consumer comes from Log.consumer()")
        self._c: Any = consumer

    @classmethod
    def from_sync(cls, consumer: Any) -> "Consumer":
        """Wrap a synchronous pyqueue.Consumer (owned from now on).

        Args:
            consumer: The consumer.

        Returns:
            An asyncio handle.

        Raises:
            TypeError: consumer is not a pyqueue.Consumer.
        """
        return cls(consumer)

    @property
    def sync(self) -> Any:
        """The synchronous consumer this one owns."""
        return self._c

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
            out: List[Record] = self._c.poll(max_records, timeout=0)
            if not out:
                raise _Again
            return out

        log = self._c._log
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
        self._c.commit(offsets)

    def assignment(self) -> List[int]:
        """The partitions assigned to this member now.

        Returns:
            Partition numbers.

        Raises:
            ValueError: The consumer is closed.
        """
        return self._c.assignment()  # type: ignore[no-any-return]

    def close(self) -> None:
        """Leave the group."""
        self._c.close()

    def __aiter__(self) -> AsyncIterator[Record]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Record]:
        while True:
            for r in await self.poll(timeout=None):
                yield r

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Log(Generic[T]):
    """An asyncio handle on a pyqueue.Log (memory or directory mode):
    ``await read()`` waits for records, ``consumer()`` makes an asyncio
    Consumer; appends never wait and run at once.

    Args:
        *args: As pyqueue.Log.
        **kwargs: As pyqueue.Log.

    Raises:
        ValueError: A bad setting.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._l: Any = _SyncLog(*args, **kwargs)

    @classmethod
    def open(cls, name_or_path: Any, **kwargs: Any) -> "Log[Any]":
        """Open an existing log (as pyqueue.Log.open).

        Args:
            name_or_path: A memory log's name or a directory log's path.
            **kwargs: As pyqueue.Log.open.

        Returns:
            An asyncio handle.

        Raises:
            SegmentNotFound: No such log.
        """
        return cls.from_sync(_SyncLog.open(name_or_path, **kwargs))

    @classmethod
    def from_sync(cls, log: Any) -> "Log[Any]":
        """Wrap a synchronous pyqueue.Log (owned from now on).

        Args:
            log: The log handle.

        Returns:
            An asyncio handle.

        Raises:
            TypeError: log is not a pyqueue.Log.
        """
        if not isinstance(log, _SyncLog):
            raise TypeError(f"Log.from_sync needs a pyqueue.Log, not {type(log).__name__}")
        self = cls.__new__(cls)
        self._l = log
        return self

    @property
    def sync(self) -> Any:
        """The synchronous handle this one owns."""
        return self._l

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
        return self._l.append(value, key=key, headers=headers)  # type: ignore[no-any-return]

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

        def fetch() -> List[Record]:
            out: List[Record] = self._l.read(partition, offset, max_records, timeout=0)
            if not out:
                raise _Again
            return out

        try:
            return await _aio.wait_event(  # type: ignore[no-any-return]
                self._l, None, fetch, _Again, _aio.deadline_of(timeout), _log_unmaps(self._l))
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
        return Consumer(self._l.consumer(group, **kwargs))

    def end_offset(self, partition: int) -> int:
        """The offset the next record of the partition gets.

        Args:
            partition: The partition.

        Returns:
            The offset.

        Raises:
            ValueError: Bad partition, or the log is closed.
        """
        return self._l.end_offset(partition)  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close this handle."""
        self._l.close()

    def unlink(self) -> None:
        """Remove a memory log's name (as pyqueue.Log.unlink).

        Raises:
            PermissionError: The name belongs to another user.
            AttributeError: A directory log (remove its directory instead).
        """
        self._l.unlink()

    def __enter__(self) -> "Log[T]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
