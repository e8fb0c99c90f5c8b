"""Type stubs of the Cython binding pyqueue/_core.pyx (the Queue ring)."""
import mmap
from typing import Any, Callable, Generic, Iterable, Optional, Tuple, TypeVar

from typing_extensions import disjoint_base

from pyqueue.errors import MessageTooLarge as MessageTooLarge
from pyqueue.errors import PyQueueError as PyQueueError
from pyqueue.errors import SegmentMismatch as SegmentMismatch
from pyqueue.errors import UndecodableMessage as UndecodableMessage

_T = TypeVar("_T")

RING_HEAD_OFFSET: int
RING_TAIL_OFFSET: int
RING_DATA_OFFSET: int
OVERFLOW_BLOCK: int
OVERFLOW_REJECT: int
OVERFLOW_DROP_OLDEST: int
PARAM_OVERFLOW: int
PARAM_MAX_MESSAGE: int
PARAM_FLAGS: int
FLAG_CUSTOM_SERIALIZER: int
LAYOUT_VERSION: int
FAULT_INJECTION: bool
FAULT_POINTS: Tuple[str, ...]
RESERVE_CHUNK: int
RING_EPOCH_OFFSET: int
RING_EPOCHS_OFFSET: int
RING_EPOCHS: int

def populate_supported() -> bool: ...
def create_segment(mm: mmap.mmap, capacity: int, maxsize: int, overflow: int,
                   max_message: int, flags: int, backed: int = ...) -> None: ...
def segment_size(capacity: int, growable: bool = True) -> int: ...
def backed_size(backed: int) -> int: ...
def check_segment(mm: mmap.mmap, kind: int = 0) -> int: ...
def segment_info(mm: mmap.mmap) -> dict[str, Any]: ...
def default_dumps(obj: object, buffers: Optional[list[Any]] = None) -> bytes: ...

_Serializer = Tuple[Callable[[Any], Any], Callable[[Any], Any]]

# pyqueue._aio's primitives (_aio.pxi): private.
_AIO_WAIT_WORDS_MAX: int
def _aio_prepare(ev: int) -> int: ...
def _aio_finish(ev: int) -> None: ...
def _aio_notify(ev: int, n: int) -> None: ...
def _aio_seq(ev: int) -> int: ...
@disjoint_base
class _AioWakeWord:
    def bump(self) -> None: ...
    def load(self) -> int: ...
    def address(self) -> int: ...
def _aio_wait(events: list[int], expected: list[int], wake: _AioWakeWord, wake_seen: int,
              deadline_ns: int) -> int: ...
@disjoint_base
class _AioRing:
    def __new__(cls, cq_entries: int) -> _AioRing: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...
    def wait(self, ev: int, expected: int, tag: int) -> int:
        """Submit a wait on event ev's sequence word while it holds
        expected; 0 or -errno (then nothing was submitted).
        """
    def cancel(self, tag: int) -> int:
        """Cancel the wait of tag (its completion comes with -ECANCELED
        unless it had come already); 0 or -errno.
        """
    def reap(self) -> list[tuple[int, int]]:
        """The completions queued now, as a list of (tag, res)."""

@disjoint_base
class RingQueue(Generic[_T]):
    """Base class of pyqueue.Queue (generic in the message type)."""
    @property
    def _closed(self) -> bool: ...
    def _attach(self, mm: mmap.mmap, serializer: Optional[_Serializer], joinable: bool,
                oob: Any) -> None: ...
    def put(self, obj: _T, block: bool = True, timeout: Optional[float] = None) -> None:
        """Put obj into the queue (as multiprocessing.Queue.put does).

        bytes and str travel as they are; any other object is pickled (or
        encoded by the queue's serializer). Large messages travel out of
        band in a segment of their own.

        Args:
            obj: The message.
            block: Wait for room when the queue is full (False: raise
                queue.Full at once).
            timeout: With block, wait at most this many seconds (None: for
                ever).

        Raises:
            ShutDown: The queue was shut down (shutdown(), by any process).
            queue.Full: No room in time (overflow="block"), or at once
                with overflow="reject".
            MessageTooLarge: The encoded message is larger than
                max_message_bytes, or than the ring can ever hold.
            ValueError: The handle is closed, or timeout is negative.
            Exception: Whatever pickling (or the serializer's dumps) raises.
        """
    def put_nowait(self, obj: _T) -> None:
        """put(obj, block=False).

        Args:
            obj: The message.

        Raises:
            ShutDown: The queue was shut down (shutdown(), by any process).
            queue.Full: No room now.
            MessageTooLarge: The message can never fit.
            ValueError: The handle is closed.
        """
    def put_many(self, objs: Iterable[_T], block: bool = True,
                 timeout: Optional[float] = None) -> int:
        """Put every object of an iterable, claiming room for up to 256
        records at once.

        Args:
            objs: The messages, in order.
            block: Wait for room (False: raise queue.Full at once).
            timeout: With block, the longest wait in seconds for the whole
                call (None: for ever).

        Returns:
            The number of messages put.

        Raises:
            ShutDown: The queue was shut down (shutdown(), by any process).
            queue.Full: No room in time; the messages before the one that did
                not fit stay put.
            MessageTooLarge: A message can never fit (the ones before it stay
                put).
            ValueError: The handle is closed.
        """
    def get(self, block: bool = True, timeout: Optional[float] = None) -> _T:
        """Remove and return the oldest message (as multiprocessing.Queue.get).

        Args:
            block: Wait for a message when the queue is empty (False: raise
                queue.Empty at once).
            timeout: With block, wait at most this many seconds (None: for
                ever).

        Returns:
            The message (bytes and str as they were put, anything else
            unpickled or decoded by the serializer).

        Raises:
            ShutDown: The queue was shut down and is empty (at once with
                shutdown(immediate=True)).
            queue.Empty: No message in time.
            UndecodableMessage: The message was taken but cannot be decoded
                (it is not given again; see its attributes).
            ValueError: The handle is closed, or timeout is negative.
            SegmentMismatch: The ring is damaged.
        """
    def get_nowait(self) -> _T:
        """get(block=False).

        Returns:
            The oldest message.

        Raises:
            ShutDown: The queue was shut down and is empty (at once with
                shutdown(immediate=True)).
            queue.Empty: The queue is empty now.
            UndecodableMessage: The message cannot be decoded.
            ValueError: The handle is closed.
        """
    def get_many(self, max_messages: int = 1024, block: bool = True,
                 timeout: Optional[float] = None) -> list[_T]:
        """Take up to max_messages messages: waits (unless block is false)
        for at least one, then takes what is there, with one consume per up
        to 256 records.

        Args:
            max_messages: The most messages returned (at least 1).
            block: Wait for the first message (False: raise queue.Empty at
                once when there is none).
            timeout: With block, wait at most this many seconds (None: for
                ever).

        Returns:
            A non-empty list of messages, oldest first.

        Raises:
            ShutDown: The queue was shut down and is empty (at once with
                shutdown(immediate=True)).
            queue.Empty: No message in time.
            UndecodableMessage: Raised alone by the call that reaches an
                undecodable message first: the messages before it are
                returned by that call, the ones after it by the next calls.
            ValueError: max_messages is below 1, or the handle is closed.
        """
    def qsize(self) -> int:
        """The exact number of messages in the queue.

        Counts the messages claimed and not yet taken, plus those this
        handle took and holds for its next get/get_many (after an
        undecodable one): a drain loop on empty() must not stop before them.

        Returns:
            The number of messages.

        Raises:
            ValueError: The queue is not attached.
        """
    def empty(self) -> bool:
        """Whether qsize() is 0.

        Returns:
            True when the queue holds no message.

        Raises:
            ValueError: The queue is not attached.
        """
    def full(self) -> bool:
        """Whether a put would find no room now.

        Returns:
            True at maxsize messages, or when not even a small message
            fits in the ring's free bytes.

        Raises:
            ValueError: The queue is not attached.
        """
    def shutdown(self, immediate: bool = False) -> None:
        """Shut the queue down for every process (queue.Queue.shutdown of
        Python 3.13): puts raise ShutDown from now on, gets raise it once
        the queue is empty; every put and get blocked in any process wakes
        (and raises it, unless a message is there for a get). The flag is
        kept in the segment: handles opened later see it too. It is never
        lowered.

        Args:
            immediate: Also make gets raise ShutDown at once: the messages
                left are dropped (counted as dropped; one task_done each for
                a JoinableQueue, so that join() can return).

        Raises:
            ValueError: The handle is closed.
        """
    @property
    def is_shutdown(self) -> bool:
        """True once the queue has been shut down (by any process)."""
    def close(self) -> None:
        """Close this handle (other handles and processes are unaffected)."""
    def stats(self) -> dict[str, int]:
        """The queue's counters (all processes') and this handle's.

        Returns:
            A dict: enqueued, dequeued, rejected, dropped, abandoned
            (messages of producers that died in a put),
            abandoned_by_consumers, depth, depth_bytes, capacity_bytes,
            maxsize, waiting_producers, waiting_consumers, unfinished_tasks,
            and this handle's undecodable and held counts.

        Raises:
            ValueError: The queue is not attached.
        """
    def _mark_shared(self) -> None: ...
    def _is_shared(self) -> bool: ...
    @property
    def capacity_bytes(self) -> int:
        """The ring's size in bytes (a power of two)."""
    @property
    def maxsize(self) -> int:
        """The most messages the queue holds (0: no count limit)."""
    @property
    def overflow_code(self) -> int:
        """The overflow policy as the C core's code (see Queue.overflow)."""
    @property
    def max_message_bytes(self) -> Optional[int]:
        """The largest encoded message accepted, or None (no cap)."""
    @property
    def inline_max(self) -> int:
        """Messages larger than this many bytes travel out of band."""
    def _task_done(self) -> None: ...
    def _join(self, timeout: Optional[float] = None) -> bool: ...
