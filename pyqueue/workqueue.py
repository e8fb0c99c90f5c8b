"""pyqueue.WorkQueue: a work queue whose messages are acknowledged.

A consumer gets a Delivery and settles it: ack() (done), nack() (deliver
again, maybe later), reject() (straight to the dead-letter queue); a
message that is not settled within the visibility timeout, or whose
consumer died, is delivered again with its delivery count raised, and
after max_deliveries it goes to the dead-letter queue with the reason. As
the records of a Kafka share group (KIP-932); the states live in shared
memory.
"""
from __future__ import annotations

import abc
import logging

import mmap
import time
from queue import Empty, Full
from typing import (Any, Dict, Generic, Iterable, Iterator, List, Literal, NamedTuple, Optional,
                    Sequence, Tuple, TypeVar, Union)

from pyqueue import _api, _oob, _segment, _workq
from pyqueue.errors import DeliveryExpired, MessageTooLarge, SegmentNotFound, ShutDown
from pyqueue.queues import (Serializer, _check_serializer, _Default, _round_capacity, _take,
                            check_settings)

DEFAULT_CAPACITY = 32 * 1024 * 1024
DEFAULT_MAX_IN_FLIGHT = 65536
DEFAULT_DEDUP_KEYS = 65536
DEFAULT_VISIBILITY_TIMEOUT = 30.0
DEFAULT_MAX_DELIVERIES = 5
DEFAULT_DEDUP_WINDOW = 300.0
_KIND_WORKQ = 5
_logger = logging.getLogger("pyqueue.workqueue")
# Room a DeadLetter needs around a message's bytes: its fields, with
# reason and last_error cut to DEAD_LETTER_TEXT characters (UTF-8: 4 bytes
# each at most) and the queue's name (200 characters at most), pickled.
# A queue with a dead-letter queue takes messages up to the dead-letter
# queue's max_message_bytes less this, so every message it takes fits in
# its dead-letter queue (tests/test_workqueue.py checks the bound).
DEAD_LETTER_OVERHEAD = 4096
DEAD_LETTER_TEXT = 256
_MIN_DEAD_LETTER_CAPACITY = 64 * 1024
T = TypeVar("T")
_W = TypeVar("_W", bound="WorkQueue[Any]")
_DV = TypeVar("_DV", bound="Delivery[Any]")


def _rebuild(name: str, serializer: Optional[Serializer]) -> "WorkQueue[Any]":
    return WorkQueue.open(name, serializer=serializer)


def _clip(text: object) -> Optional[str]:
    """reason / last_error as kept in a DeadLetter: str, at most
    DEAD_LETTER_TEXT characters."""
    if text is None:
        return None
    text = text if type(text) is str else str(text)
    if len(text) > DEAD_LETTER_TEXT:
        text = text[:DEAD_LETTER_TEXT - 15] + "...[truncated]"
    return text

__all__ = ["WorkQueue", "Delivery", "Batch", "DeadLetter", "Empty", "Full"]

Batch = _workq.Batch  # what get_many() returns (pyqueue/_workq_batch.pxi)



def _out_of_band(typ: Optional[int]) -> bool:
    """Whether a record's type says its payload is a reference to a
    segment of its own (pyqueue._oob). The Redis backend, which shares
    get() and the dead-letter move, has no types (None) and no such
    records."""
    return typ is not None and bool(typ & _workq.OOB_FLAG)

class DeadLetter(NamedTuple):
    """A message of a dead-letter queue: what came to it, and why.

    Attributes:
        value: The message (None when it could not be decoded: see raw).
        reason: Why, e.g. "rejected: ..." or "delivered 5 times, last:
            visibility timeout".
        attempts: The deliveries it had.
        last_error: The error text of the last nack or reject, or None.
        id: Its id in the queue it came from.
        enqueued_at: When it was put (seconds since the epoch).
        dead_lettered_at: When it was dead-lettered (seconds since the epoch).
        queue: The name of the queue it came from.
        raw: The payload's bytes when it could not be decoded, else None.
    """
    value: Any
    reason: str
    attempts: int
    last_error: Optional[str]
    id: int
    enqueued_at: float
    dead_lettered_at: float
    queue: str
    raw: Optional[bytes] = None


class Delivery(Generic[T]):
    """One delivery of a message (what WorkQueue.get() returns): settle it
    once with ack(), nack() or reject().

    As a context manager it acks when the block ends normally and nacks
    (with the exception's text as the error) when it raises. Not picklable:
    it belongs to the process that got it.

    Attributes:
        value: The message.
        id: The message's id in its queue.
        delivery_count: Which delivery this is (1 for the first).
        enqueued_at: When the message was put (seconds since the epoch).
        redelivered_because: None for a first delivery, else "nacked",
            "visibility timeout" or "consumer died".
    """

    value: T
    id: int
    delivery_count: int
    enqueued_at: float
    redelivered_because: Optional[str]

    __slots__ = ("value", "id", "delivery_count", "enqueued_at", "redelivered_because",
                 "_queue", "_settled", "_oob")

    def __init__(self, queue: WorkQueue[T], mid: int, deliveries: int, value: T,
                 enqueued_ms: int, reason: Optional[str], oob: Optional[bytes] = None) -> None:
        self.value = value
        self.id = mid
        self.delivery_count = deliveries
        self.enqueued_at = enqueued_ms / 1000.0
        self.redelivered_because = reason  # None, "nacked", "visibility timeout", "consumer died"
        self._queue = queue
        self._settled: Optional[str] = None
        # The reference of an out-of-band message: its segment is removed
        # by the ack that commits (only this delivery's holder's).
        self._oob = oob

    def _verb(self, what: str, rc: int) -> int:
        if rc == -_workq.ESTALE_CODE:
            raise DeliveryExpired(
                f"cannot {what} delivery {self.delivery_count} of message {self.id}: it is no "
                f"longer this consumer's (its visibility timeout passed and it was delivered "
                f"again, or it was settled already, or this is another process)")
        if rc < 0:
            _workq.raise_for(rc, what)
        return rc

    def ack(self) -> None:
        """Done: the message goes away.

        Raises:
            DeliveryExpired: The delivery is no longer this consumer's (its
                visibility timeout passed and it was delivered again, it was
                settled already, or this is another process).
            LockTimeout: The queue's lock stayed held by a stopped process.
        """
        self._verb("ack", self._queue._ack(self.id, self.delivery_count))
        self._settled = "acked"
        if self._oob is not None:
            _oob.discard(self._queue, self._oob)
            self._oob = None

    def nack(self, delay: float = 0.0, error: Optional[str] = None) -> None:
        """Deliver it again. On its last allowed delivery it goes to the
        dead-letter queue instead (see reject() for a full one).

        Args:
            delay: Seconds before it is available again.
            error: The error text kept in its DeadLetter if it is
                dead-lettered.

        Raises:
            DeliveryExpired: The delivery is no longer this consumer's.
            LockTimeout: The queue's lock stayed held by a stopped process.
        """
        rc = self._verb("nack", self._queue._nack(self.id, self.delivery_count,
                                                  _api.check_seconds(delay, "delay")))
        self._settled = "nacked"
        if rc == 1:
            self._queue._move_dead(self.id, self.delivery_count, self.enqueued_at,
                                   f"delivered {self.delivery_count} times, last: nacked", error)

    def reject(self, reason: str = "rejected") -> None:
        """Send it straight to the dead-letter queue (poison).

        When the dead-letter queue stays full for dead_letter_timeout
        seconds the message is parked (dead-pending,
        stats()["dead_letter_parked"]) and the next get() after
        dead_letter_retry seconds moves it: this returns all the same.

        Args:
            reason: Why, kept in its DeadLetter.

        Raises:
            DeliveryExpired: The delivery is no longer this consumer's.
            LockTimeout: The queue's lock stayed held by a stopped process.
        """
        self._verb("reject", self._queue._reject(self.id, self.delivery_count))
        self._settled = "rejected"
        self._queue._move_dead(self.id, self.delivery_count, self.enqueued_at,
                               f"rejected: {reason}", reason)

    def extend(self, seconds: float) -> None:
        """Keep it for `seconds` more from now (a longer job).

        Args:
            seconds: The new visibility timeout, from now.

        Raises:
            DeliveryExpired: The delivery is no longer this consumer's.
            ValueError: seconds is negative or not a number.
        """
        self._verb("extend", self._queue._extend(self.id, self.delivery_count,
                                                  _api.check_seconds(seconds, "seconds")))

    @property
    def settled(self) -> Optional[str]:
        """None, "acked", "nacked" or "rejected"."""
        return self._settled

    def __enter__(self: _DV) -> _DV:
        return self

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException],
                 tb: object) -> Literal[False]:
        if self._settled is None:
            if exc_type is None:
                self.ack()
            else:
                self.nack(error=f"{exc_type.__name__}: {exc}")
        return False

    def __reduce__(self) -> Any:
        raise TypeError("a Delivery belongs to the process that got it")

    def __repr__(self) -> str:
        return (f"<pyqueue.Delivery id={self.id} delivery={self.delivery_count} "
                f"{self._settled or 'held'}>")


def _same_setting(stored: Any, wanted: Any) -> bool:
    if isinstance(stored, float) and isinstance(wanted, float):
        return abs(stored - wanted) < 1e-6  # stored in ns
    return bool(stored == wanted)


_D_CAPACITY: Any = _Default(DEFAULT_CAPACITY)
_D_MAX_IN_FLIGHT: Any = _Default(DEFAULT_MAX_IN_FLIGHT)
_D_VISIBILITY: Any = _Default(DEFAULT_VISIBILITY_TIMEOUT)
_D_MAX_DELIVERIES: Any = _Default(DEFAULT_MAX_DELIVERIES)
_D_DEAD_LETTER: Any = _Default(None)
_D_DEDUP_WINDOW: Any = _Default(DEFAULT_DEDUP_WINDOW)
_D_DEDUP_KEYS: Any = _Default(DEFAULT_DEDUP_KEYS)
_D_PERM: Any = _Default(0o600)


# ABCMeta: as pyqueue.Queue (docs/design.md, "Backends").
class WorkQueue(_workq.WorkQueueCore[T], metaclass=abc.ABCMeta):
    """A multi-process work queue with acknowledgements, in shared memory.

    Generic in the message type for type checkers (``WorkQueue[dict]``).
    With the name of an existing work queue, the settings passed must be
    its own.

    Args:
        name: The queue's name in /dev/shm (None: a fresh unnamed one).
        capacity_bytes: The message ring's size (a power of two; default
            32 MiB).
        max_in_flight: The most messages not yet done (available, delayed,
            held): a power of two (default 65536).
        visibility_timeout: Seconds a delivery is held before the message
            is delivered again (default 30).
        max_deliveries: Deliveries before a message is dead-lettered
            (default 5; None: no limit).
        dead_letter: A WorkQueue, or the name of one (made if it does not
            exist), that gets the messages rejected or delivered
            max_deliveries times; None drops them (counted in
            stats()["dead_lettered"]). The queue then takes messages up to
            the dead-letter queue's max_message_bytes less
            DEAD_LETTER_OVERHEAD.
        dedup_window: Seconds within which a put of a key already put is
            dropped (default 300).
        dedup_keys: Room for the keys of put(key=...) within dedup_window (a
            power of two, 0: none; a new key waits when it is full).
        perm: The permission mask of the segment (default 0o600).
        trust_owner: Open a queue another user owns.
        serializer: A (dumps, loads) pair used instead of pickle for every
            value (bytes and str included): nothing in the queue is ever
            unpickled. The segment records it; every handle must pass one.

    Raises:
        ValueError: A bad setting, the named queue exists with other
            settings (a serializer passed for a queue made without one
            included), or the dead-letter queue is too small.
        TypeError: A setting of the wrong type, or serializer is not a
            (dumps, loads) pair of callables.
        PyQueueError: The queue was made with a custom serializer and none
            is given.
        SegmentMismatch: The name is not a pyqueue work queue's.
        SegmentNotOwned: Another user owns it and trust_owner is false.
    """

    # How long a move to a full dead-letter queue waits for room before the
    # message is parked, and when a get() tries to move it again (seconds).
    dead_letter_timeout = 1.0
    dead_letter_retry = 1.0

    def __init__(self, name: Optional[str] = None, *, capacity_bytes: int = _D_CAPACITY,
                 max_in_flight: int = _D_MAX_IN_FLIGHT,
                 visibility_timeout: float = _D_VISIBILITY,
                 max_deliveries: Optional[int] = _D_MAX_DELIVERIES,
                 dead_letter: Union[WorkQueue[Any], str, None] = _D_DEAD_LETTER,
                 dedup_window: float = _D_DEDUP_WINDOW, dedup_keys: int = _D_DEDUP_KEYS,
                 perm: int = _D_PERM, trust_owner: bool = False,
                 serializer: Optional[Serializer] = None,
                 _open_only: bool = False) -> None:
        serializer = _check_serializer(serializer)
        given: Dict[str, Any] = {}
        capacity_bytes = _take(capacity_bytes, given, "capacity_bytes")
        max_in_flight = _take(max_in_flight, given, "max_in_flight")
        visibility_timeout = _take(visibility_timeout, given, "visibility_timeout")
        max_deliveries = _take(max_deliveries, given, "max_deliveries")
        dead_letter = _take(dead_letter, given, "dead_letter")
        dedup_window = _take(dedup_window, given, "dedup_window")
        dedup_keys = _take(dedup_keys, given, "dedup_keys")
        perm = _take(perm, given, "perm")
        capacity = _round_capacity(capacity_bytes)
        slots, dedup = _api.check_workqueue_settings(max_in_flight, visibility_timeout,
                                                     max_deliveries, dedup_window, dedup_keys,
                                                     perm)
        self._dlq: Optional[WorkQueue[Any]] = None
        dlq_name = b""
        if dead_letter is not None:
            if isinstance(dead_letter, WorkQueue):
                self._dlq = dead_letter
                dlq_name = dead_letter.name.encode("utf-8")
            elif isinstance(dead_letter, str):
                _segment.check_name(dead_letter)
                dlq_name = dead_letter.encode("utf-8")
            else:
                raise TypeError("dead_letter must be a WorkQueue, a queue name, or None")
        max_payload = 0  # a quarter of capacity
        if dead_letter is not None and not _open_only:
            # Every message this queue takes must fit, as a DeadLetter, in
            # its dead-letter queue: known before the segment is made.
            if self._dlq is None:
                self._dlq = self._open_dead_letter(dead_letter, capacity)
            max_payload = min(capacity // 4, self._dead_letter_room(self._dlq))

        def init(mm: mmap.mmap) -> None:
            _workq.create_segment(mm, capacity, slots, dedup, float(visibility_timeout),
                                  max_deliveries or 0, float(dedup_window), max_payload,
                                  dlq_name, _workq.FLAG_CUSTOM_SERIALIZER if serializer else 0)

        name, mm, perm_now, created = _segment.create_or_open(
            name, _workq.segment_size(capacity, slots, dedup), perm, init, _KIND_WORKQ,
            trust_owner, _open_only)
        self._name = name
        self._shm_name = _segment.shm_name(name)  # pyqueue._oob names its segments after it
        self._mode = perm_now
        self._serializer = serializer
        self._attach(mm, serializer)
        if not created and serializer is not None and not (
                self._segment_flags() & _workq.FLAG_CUSTOM_SERIALIZER):
            self.close()
            check_settings("work queue", name, [("serializer", None, "a custom serializer")])
        if not created and given:
            stored = {"capacity_bytes": self.capacity_bytes, "max_in_flight": self.max_in_flight,
                      "visibility_timeout": self.visibility_timeout,
                      "max_deliveries": self.max_deliveries, "dedup_window": self.dedup_window,
                      "dedup_keys": self.dedup_keys, "perm": perm_now,
                      "dead_letter": self._user().decode("utf-8") or None}
            wanted = dict(given, capacity_bytes=capacity,
                          visibility_timeout=float(visibility_timeout),
                          dedup_window=float(dedup_window),
                          dead_letter=dlq_name.decode("utf-8") or None)
            differences = [(what, stored[what], wanted[what]) for what in given
                           if not _same_setting(stored[what], wanted[what])]
            try:
                check_settings("work queue", name, differences)
            except ValueError:
                self.close()
                raise
        if self._dlq is not None and self.max_message_bytes > self._dead_letter_room(self._dlq):
            self.close()  # an existing queue made for a larger dead-letter queue
            raise ValueError(
                f"work queue {name!r} takes messages of {self.max_message_bytes} bytes, which "
                f"do not fit in dead-letter queue {self._dlq.name!r} (max_message_bytes "
                f"{self._dlq.max_message_bytes}, less {DEAD_LETTER_OVERHEAD} for the DeadLetter)")

    @classmethod
    def open(cls: type[_W], name: str, trust_owner: bool = False, *,
             serializer: Optional[Serializer] = None) -> _W:
        """Open an existing work queue by name, with its settings (its
        dead-letter queue is the one it was made with).

        Args:
            name: The queue's name.
            trust_owner: Open a queue another user owns.
            serializer: The (dumps, loads) pair it was made with, if any.

        Returns:
            A new handle of the queue.

        Raises:
            SegmentNotFound: No segment has that name.
            SegmentMismatch: It is not a pyqueue work queue.
            SegmentNotOwned: Another user owns it and trust_owner is false.
            ValueError: A serializer is given and it was made without one.
            PyQueueError: It was made with a custom serializer and none is
                given.
        """
        return cls(name, trust_owner=trust_owner, serializer=serializer, _open_only=True)

    @staticmethod
    def _dead_letter_room(dlq):
        """The largest message a queue can dead-letter into dlq."""
        room = dlq.max_message_bytes - DEAD_LETTER_OVERHEAD
        if room < 1:
            raise ValueError(
                f"dead-letter queue {dlq.name!r} is too small: its max_message_bytes "
                f"({dlq.max_message_bytes}) leave no room after the {DEAD_LETTER_OVERHEAD} bytes "
                f"of a DeadLetter; give it capacity_bytes of {_MIN_DEAD_LETTER_CAPACITY} or more")
        return room

    @staticmethod
    def _open_dead_letter(name, capacity):
        try:
            return WorkQueue.open(name)
        except SegmentNotFound:
            pass
        try:
            return WorkQueue(name=name, capacity_bytes=max(capacity, _MIN_DEAD_LETTER_CAPACITY),
                             max_deliveries=None)
        except ValueError:  # made meanwhile by another process, with its settings
            return WorkQueue.open(name)

    @property
    def dead_letter(self) -> Optional[WorkQueue[Any]]:
        """The dead-letter queue (a WorkQueue), or None."""
        if self._dlq is None:
            name = self._user().decode("utf-8")
            if name:
                self._dlq = self._open_dead_letter(name, self.capacity_bytes)
        return self._dlq

    # ---- producing ------------------------------------------------------

    def put(self, obj: T, *, key: Union[bytes, str, None] = None, delay: float = 0.0,
            block: bool = True, timeout: Optional[float] = None) -> int:
        """Add a message. One larger than max_message_bytes travels out of
        band: a shared-memory segment of its own, named after the queue's,
        kept across redeliveries and removed by the ack that commits, the
        move to the dead-letter queue (a copy of the value goes there), or
        unlink().

        Args:
            obj: The message (pickled unless bytes or str).
            key: bytes or str: a put of a key already put within
                dedup_window seconds is dropped (and returns the first one's
                id); None: no deduplication.
            delay: Seconds before it is available.
            block: Wait for room (False: raise queue.Full at once).
            timeout: With block, the longest wait in seconds (None: for
                ever).

        Returns:
            The message's id.

        Raises:
            ShutDown: The work queue was shut down.
            queue.Full: No room (bytes, in-flight slots or dedup keys) in
                time.
            MessageTooLarge: Not raised for size any more: a message
                larger than max_message_bytes travels out of band (a
                segment of its own, removed when the message is acked or
                dead-lettered); only when max_message_bytes cannot hold
                even its reference.
            TypeError: key is not bytes, str or None.
            ValueError: delay is negative or NaN, timeout is NaN, or the handle
                is closed.
            TypeError: delay or timeout is not a number.
        """
        # (the default 0.0 checked by the core; anything else as on every backend)
        mid, _dup = self._put(obj, key, delay if delay.__class__ is float and delay >= 0.0
                              else _api.check_seconds(delay, "delay"), block, timeout)
        return mid

    def put_nowait(self, obj: T, *, key: Union[bytes, str, None] = None,
                   delay: float = 0.0) -> int:
        """put(obj, key=key, delay=delay, block=False).

        Args:
            obj: The message.
            key: As put().
            delay: As put().

        Returns:
            The message's id.

        Raises:
            queue.Full: No room now.
            MessageTooLarge: As put().
        """
        return self.put(obj, key=key, delay=delay, block=False)

    def put_many(self, objs: Iterable[T], *, keys: Optional[Sequence[Optional[str]]] = None,
                 delay: float = 0.0, block: bool = True,
                 timeout: Optional[float] = None) -> List[int]:
        """Put every object of objs, claiming room for many under one hold
        of the lock.

        Args:
            objs: The messages, in order.
            keys: None, or one dedup key (or None) per object, as
                put(key=).
            delay: Seconds before the messages can be delivered.
            block: Wait for room (False: queue.Full at once).
            timeout: Seconds to wait for room (None: for ever).

        Returns:
            The ids of the messages put (a message whose key was seen
            within the dedup window is not put again: the id of the first).

        Raises:
            ShutDown: The work queue was shut down (.ids: the messages put
                before).
            MessageTooLarge: Only when max_message_bytes cannot hold even
                the reference of an out-of-band message (a message over
                max_message_bytes travels out of band, as in put());
                nothing is put.
            queue.Full: No room in time; the messages before the first that
                did not fit stay put (the exception's .ids).
            ValueError: keys of another length than objs, or the queue is
                closed.
        """
        return self._put_many(objs, keys, _api.check_seconds(delay, "delay"), block, timeout)

    # ---- consuming ------------------------------------------------------

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Delivery[T]:
        """Take the oldest available message, held by this process for
        visibility_timeout seconds.

        A message out of deliveries, or that cannot be decoded, is
        dead-lettered on the way and not returned.

        Args:
            block: Wait for a message (False: raise queue.Empty at once).
            timeout: With block, the longest wait in seconds (None: for
                ever).

        Returns:
            A Delivery to settle with ack(), nack() or reject().

        Raises:
            ShutDown: The work queue was shut down and no message is ready
                (at once with shutdown(immediate=True)).
            queue.Empty: No message in time.
            ValueError: The handle is closed.
            LockTimeout: The queue's lock stayed held by a stopped process.
        """
        timeout = _api.check_timeout(timeout, block)
        end = None if timeout is None or not block else time.monotonic() + timeout
        while True:
            left = None if end is None else max(0.0, end - time.monotonic())
            kind, mid, n, raw, typ, enq_ms, reason = self._get(block, left)
            if kind == 1:  # out of deliveries (or its mover died, or parked): dead-letter it
                self._move_dead_quietly(mid, n, enq_ms / 1000.0,
                                        f"delivered {n} times, last: {reason or 'nacked'}"
                                        if reason != "rejected" else "rejected", None, raw, typ)
                continue
            try:
                value = self._decode(raw, typ)
            except Exception as e:  # a payload that cannot be decoded is poison
                if _out_of_band(typ) and isinstance(e, OSError):
                    # Its segment could not be mapped here (EMFILE, ENOMEM):
                    # this process's trouble, not the message's. It goes
                    # back (a nack, counted as a delivery; out of
                    # deliveries, dead-lettered with its segment kept) and
                    # the caller hears why.
                    if self._nack(mid, n, 0.0) == 1:
                        self._move_dead_quietly(mid, n, enq_ms / 1000.0,
                                                f"delivered {n} times, last: {type(e).__name__}",
                                                repr(e), raw, typ)
                    raise
                if self._reject(mid, n) == 0:
                    self._move_dead_quietly(mid, n, enq_ms / 1000.0,
                                            f"undecodable: {type(e).__name__}: {e}", repr(e),
                                            raw, typ)
                continue
            return Delivery(self, mid, n, value, enq_ms, reason,
                            raw if _out_of_band(typ) else None)

    def get_nowait(self) -> Delivery[T]:
        """get(block=False).

        Returns:
            A Delivery.

        Raises:
            queue.Empty: No message available now.
        """
        return self.get(block=False)

    def get_many(self, max_messages: int = 1024, block: bool = True,
                 timeout: Optional[float] = None) -> "Batch":
        """Up to max_messages available messages, taken under one hold of
        the lock, held by this process for visibility_timeout seconds.

        Settle them with batch.ack() / batch.nack() / batch.reject() (all,
        or chosen positions): one hold of the lock for all. It never waits
        for a batch to fill: what is there (at least one) comes at once. As
        get(), messages out of deliveries go to the dead-letter queue on
        the way, and undecodable ones are rejected there.

        Args:
            max_messages: The most messages taken.
            block: Wait for a message (False: queue.Empty at once).
            timeout: Seconds to wait (None: for ever).

        Returns:
            A Batch: values, ids, delivery_counts, and its ack/nack/reject/
            extend.

        Raises:
            ShutDown: The work queue was shut down and no message is ready
                (at once with shutdown(immediate=True)).
            queue.Empty: No message came in time.
            ValueError: max_messages below 1, timeout NaN, or the queue is
                closed.
            TypeError: max_messages is not an int, or timeout not a number.
        """
        max_messages = _api.check_max_messages(max_messages)
        timeout = _api.check_timeout(timeout, block)
        end = None if timeout is None or not block else time.monotonic() + timeout
        while True:
            left = None if end is None else max(0.0, end - time.monotonic())
            batch, dead, poison = self._get_many(max_messages, block, left)
            for mid, n, raw, typ, enq_ms, reason in dead:
                self._move_dead_quietly(mid, n, enq_ms / 1000.0,
                                        f"delivered {n} times, last: {reason or 'nacked'}"
                                        if reason != "rejected" else "rejected", None, raw, typ)
            for mid, n, raw, typ, enq_ms, e in poison:
                if self._reject(mid, n) == 0:
                    self._move_dead_quietly(mid, n, enq_ms / 1000.0,
                                            f"undecodable: {type(e).__name__}: {e}", repr(e),
                                            raw, typ)
            if len(batch):
                return batch

    def __iter__(self) -> Iterator[Delivery[T]]:
        """Deliveries as get() (no timeout) returns them, until the work
        queue is shut down (shutdown(), by any process) and no message is
        ready: then the iteration ends.

        Yields:
            Deliveries, to settle.

        Raises:
            ValueError: The handle is closed.
            LockTimeout: The queue's lock stayed held by a stopped process.
        """
        while True:
            try:
                d = self.get()
            except ShutDown:
                return
            yield d

    def _move_dead_quietly(self, *args):
        """_move_dead for get(): a message that cannot be moved now stays
        parked (counted), and get() goes on with the others."""
        try:
            self._move_dead(*args)
        except Exception:
            _logger.warning("work queue %r: message %d could not be moved to its dead-letter "
                            "queue; parked, tried again in %gs", self._name, args[0],
                            self.dead_letter_retry, exc_info=True)

    def _move_dead(self, mid, attempts, enqueued_at, reason, last_error, raw=None, typ=None):
        """A DEAD message this process owns: to the dead-letter queue, then
        done (a death in between puts it there twice at most). Its bytes are
        the ones that were put (not a value a consumer may have changed).
        The dead-letter queue full for dead_letter_timeout: parked (DEAD,
        no mover, handed to a get() from dead_letter_retry on), no error.
        Any other failure: parked, then raised."""
        try:
            dlq = self.dead_letter
            if raw is None:
                got = self._copy(mid)
                if got is None:
                    return  # not there any more (nothing to move)
                raw, typ = got[0], got[1]
            if dlq is None:
                # Its segment goes with the move that commits (a mover that
                # lost the message to another - parked and retried - not).
                if self._dead_done(mid) == 0 and _out_of_band(typ):
                    _oob.discard(self, raw)
                _logger.warning("work queue %r: message %d dropped after %d deliveries (no "
                                "dead-letter queue): %s%s", self._name, mid, attempts, reason,
                                f" ({_clip(last_error)})" if last_error else "")
                return
            keep_raw = None
            # Whether the payload itself goes into the DeadLetter (then an
            # out-of-band segment goes below, with the move that commits).
            copied = True
            try:
                value = self._decode(raw, typ)
            except Exception:
                value, keep_raw = None, raw
                if _out_of_band(typ):
                    # Out of band: the DeadLetter keeps the segment's bytes;
                    # a reference that cannot be followed here (removed,
                    # foreign, or no file descriptor or memory left) is
                    # kept as it is, and so is its segment.
                    try:
                        keep_raw = bytes(_oob.read(self, raw))
                    except Exception:
                        copied = False
            dl = DeadLetter(value, _clip(reason) or "", attempts, _clip(last_error), mid, enqueued_at,
                            time.time(), self._name, keep_raw)
            try:
                dlq.put(dl, timeout=self.dead_letter_timeout)
            except MessageTooLarge:
                if keep_raw is not None:
                    raise
                # Its value pickles larger than it was put: the bytes that
                # were put, which fit (max_message_bytes is less the room
                # of a DeadLetter).
                if keep_raw is None and _out_of_band(typ):
                    keep_raw = bytes(_oob.read(self, raw))  # the bytes, not the reference
                dlq.put(dl._replace(value=None, raw=keep_raw or raw),
                        timeout=self.dead_letter_timeout)
        except Full:
            self._dead_park(mid, self.dead_letter_retry)
            _logger.warning("work queue %r: dead-letter queue %r is full: message %d parked, "
                            "tried again in %gs", self._name, self._user().decode("utf-8"), mid,
                            self.dead_letter_retry)
            return
        except BaseException:
            self._dead_park(mid, self.dead_letter_retry)
            raise
        if self._dead_done(mid) == 0 and _out_of_band(typ) and copied:
            # Copied into the dead-letter queue (which sends it out of band
            # in its turn when it is large): this queue's segment goes.
            _oob.discard(self, raw)
        _logger.warning("work queue %r: message %d dead-lettered to %r after %d deliveries: %s%s",
                        self._name, mid, dlq.name, attempts, reason,
                        f" ({_clip(last_error)})" if last_error else "")

    # ---- the dead-letter side ---------------------------------------------

    def dead_letters(self, max_messages: Optional[int] = None) -> List[DeadLetter]:
        """The DeadLetters waiting in this queue (used as a dead-letter
        queue), without taking them.

        Args:
            max_messages: The most returned (None: all).

        Returns:
            The DeadLetters, oldest first.

        Raises:
            SegmentMismatch: The queue's indices are damaged.
            ValueError: The handle is closed, or max_messages is below 1.
            TypeError: max_messages is not an int or None.
        """
        if max_messages is not None:
            max_messages = _api.check_max_messages(max_messages)
        out: List[DeadLetter] = []
        head, tail = self._bounds()  # SegmentMismatch when more than max_in_flight
        for mid in range(head, tail):
            if max_messages is not None and len(out) >= max_messages:
                break
            got = self._copy(mid)
            if got is None or got[5] == "claimed":
                continue
            value = self._decode(got[0], got[1])
            if isinstance(value, DeadLetter):
                out.append(value)
        return out

    def requeue(self, max_messages: Optional[int] = None,
                to: Optional[WorkQueue[Any]] = None) -> int:
        """Take dead letters from this queue and put their values back into
        the queue each came from (or `to`).

        Args:
            max_messages: The most moved (None: all).
            to: The queue to put them in (None: the one each came from).

        Returns:
            The number moved.

        Raises:
            TypeError: A message of this queue is not a DeadLetter (it is
                nacked back).
            SegmentNotFound: The queue a dead letter came from is gone.

        A full target queue is waited for (its put has no timeout).
        """
        if max_messages is not None:
            max_messages = _api.check_max_messages(max_messages)
        moved = 0
        while max_messages is None or moved < max_messages:
            try:
                d = self.get(block=False)
            except Empty:
                break
            dl = d.value
            if not isinstance(dl, DeadLetter):
                d.nack()
                raise TypeError(f"message {d.id} of {self._name!r} is not a DeadLetter")
            target = to if to is not None else WorkQueue.open(dl.queue)
            target.put(dl.value if dl.raw is None else dl.raw)
            d.ack()
            moved += 1
        return moved

    # ---- the rest -----------------------------------------------------

    def stats(self) -> Dict[str, Any]:
        """The queue's counters and counts. Never waits for the lock more
        than a moment.

        Returns:
            A dict: depth (available now), delayed, in_flight (held),
            dead_pending (being moved, or parked), enqueued, acked,
            redelivered, dead_lettered, deduplicated, abandoned (producers
            that died in a put), dedup_keys_used (keys in the dedup table
            now), dedup_full (keyed puts that found it full),
            dead_letter_parked (moves to a full dead-letter queue put off),
            capacity, used_bytes, max_in_flight, dead_letter (its name or
            None); consistent: False when the queue's lock was held by
            another process (stopped?) and the counts were read without it
            (they may disagree with each other).

        Raises:
            ValueError: The handle is closed.
        """
        s = self._stats()
        s["dead_letter"] = self._user().decode("utf-8") or None
        return s

    def qsize(self) -> int:
        """Messages not done: available, delayed, held or being moved.

        Raises:
            ValueError: The handle is closed.
        """
        s = self._stats()
        return int(s["depth"] + s["delayed"] + s["in_flight"] + s["dead_pending"])

    def empty(self) -> bool:
        """Whether qsize() is 0.

        Raises:
            ValueError: The handle is closed.
        """
        return self.qsize() == 0

    @property
    def name(self) -> str:
        """The queue's name in /dev/shm."""
        return self._name

    def unlink(self) -> None:
        """Remove the queue's name (processes that have it open keep it).

        A name that is gone already is left as it is.

        Raises:
            PermissionError: The name belongs to another user (in the
                sticky /dev/shm).
        """
        _segment.disown(self._name)
        _segment.unlink(self._name)

    def __reduce__(self) -> Tuple[Any, ...]:
        return (_rebuild, (self._name, self._serializer))

    def __enter__(self: _W) -> _W:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<pyqueue.WorkQueue {self.__dict__.get('_name')!r} {state}>"
