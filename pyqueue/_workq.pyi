"""Type stubs of the Cython binding pyqueue/_workq.pyx (the WorkQueue core)."""
import mmap
from typing import (Any, Callable, Generic, Iterable, Iterator, List, Optional, Sequence, Tuple,
                    TypeVar, final)

from typing_extensions import disjoint_base

from pyqueue.errors import MessageTooLarge as MessageTooLarge
from pyqueue.errors import PyQueueError as PyQueueError
from pyqueue.errors import SegmentMismatch as SegmentMismatch

_T = TypeVar("_T")

ESTALE_CODE: int
OOB_FLAG: int
REASONS: dict[int, Optional[str]]
STATES: dict[int, str]
TAIL_OFFSET: int
FLAG_CUSTOM_SERIALIZER: int

def create_segment(mm: mmap.mmap, capacity: int, slots: int, dedup_slots: int,
                   visibility: float, max_deliveries: int, dedup_window: float,
                   max_payload: int, user: bytes, flags: int = ...) -> None: ...
def segment_size(capacity: int, slots: int, dedup_slots: int) -> int: ...
def raise_for(rc: int, what: str) -> None: ...

@disjoint_base
class WorkQueueCore(Generic[_T]):
    """Base class of pyqueue.WorkQueue (generic in the message type)."""
    @property
    def _closed(self) -> bool: ...
    @property
    def _custom(self) -> bool: ...
    def _attach(self, mm: mmap.mmap,
                serializer: Optional[Tuple[Callable[[Any], Any], Callable[[bytes], Any]]] = ...
                ) -> None: ...
    def _segment_flags(self) -> int: ...
    def shutdown(self, immediate: bool = False) -> None:
        """Shut the work queue down for every process (as
        queue.Queue.shutdown of Python 3.13): puts raise ShutDown from now
        on; gets raise it once no message is ready (what is ready is still
        delivered: a drain), and every put or get blocked in any process
        wakes. Iterating over the queue ends. The flag is kept in the
        segment (handles opened later see it) and never lowered.

        Nothing is discarded, even with immediate: a work queue's messages
        are committed work. Messages not ready when the getters stop
        (delayed, or in flight and nacked later) stay in the queue, counted
        by stats(); deliveries held can still be acked, nacked or rejected.

        Args:
            immediate: Make gets raise ShutDown at once, even when messages
                are ready (they stay in the queue).

        Raises:
            ValueError: The handle is closed.
        """
    @property
    def is_shutdown(self) -> bool:
        """True once the work queue has been shut down (by any process)."""
    @property
    def capacity_bytes(self) -> int:
        """The message ring's size in bytes."""
    @property
    def max_in_flight(self) -> int:
        """The most messages not yet done (available, delayed or held)."""
    @property
    def visibility_timeout(self) -> float:
        """Seconds a delivery is held before the message is delivered again."""
    @property
    def max_deliveries(self) -> Optional[int]:
        """Deliveries before a message is dead-lettered, or None (no limit)."""
    @property
    def dedup_window(self) -> float:
        """Seconds within which a put of a key already put is dropped."""
    @property
    def dedup_keys(self) -> int:
        """Room for keys in the dedup table (0: no deduplication)."""
    @property
    def max_message_bytes(self) -> int:
        """The largest encoded message a put accepts."""
    def _user(self) -> bytes: ...
    def _put_many(self, objs: Iterable[Any], keys: Optional[Sequence[Optional[str]]],
                  delay: float, block: bool, timeout: Optional[float]) -> List[int]: ...
    def _get_many(self, max_messages: int, block: bool,
                  timeout: Optional[float]) -> Tuple[Batch, List[Any], List[Any]]: ...
    def _put(self, obj: object, key: object, delay: float, block: bool,
             timeout: Optional[float]) -> Tuple[int, bool]: ...
    def _encode_put(self, obj: object, key: object,
                    delay: float) -> Tuple[bytes, int, int, int]: ...
    def _put_prepared(self, enc: Tuple[bytes, int, int, int], block: bool,
                      timeout: Optional[float]) -> Tuple[int, bool]: ...
    def _drop_prepared(self, enc: Tuple[bytes, int, int, int]) -> None: ...
    def _get(self, block: bool,
             timeout: Optional[float]) -> Tuple[int, int, int, bytes, int, int, Optional[str]]: ...
    def _decode(self, b: bytes, typ: int) -> Any: ...
    def _ack(self, mid: int, deliveries: int) -> int: ...
    def _nack(self, mid: int, deliveries: int, delay: float) -> int: ...
    def _reject(self, mid: int, deliveries: int) -> int: ...
    def _extend(self, mid: int, deliveries: int, seconds: float) -> int: ...
    def _dead_done(self, mid: int) -> int: ...
    def _dead_park(self, mid: int, retry: float) -> int: ...
    def _reap(self) -> int: ...
    def _bounds(self) -> Tuple[int, int]: ...
    def _copy(self, mid: int) -> Optional[Tuple[Any, ...]]: ...
    def _stats(self) -> dict[str, Any]: ...
    def close(self) -> None:
        """Close this handle (other handles and processes are unaffected)."""


@final
class Batch:
    values: List[Any]
    def __init__(self, *args: Any, **kwargs: Any) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Any]: ...
    def __getitem__(self, key: int, /) -> Any: ...
    def __bool__(self) -> bool: ...
    @property
    def ids(self) -> List[int]: ...
    @property
    def delivery_counts(self) -> List[int]: ...
    @property
    def enqueued_at(self) -> List[float]: ...
    @property
    def redelivered_because(self) -> List[Optional[str]]:
        """Per message: None, "nacked", "visibility timeout", "consumer died"."""
    @property
    def settled(self) -> List[Optional[str]]:
        """Per message: None (held), "acked", "nacked" or "rejected"."""
    def ack(self, indices: Optional[Iterable[int]] = None) -> None:
        """Done: the messages go away - every one not settled yet, or those
        at the given positions. DeliveryExpired (its .indices: the
        positions) for those no longer this consumer's; the rest are acked
        all the same.
        """
    def nack(self, indices: Optional[Iterable[int]] = None, delay: float = 0.0,
             error: Optional[str] = None) -> None:
        """Deliver them again (from delay seconds on); those on their last
        allowed delivery go to the dead-letter queue instead, with error.
        DeliveryExpired as for ack().
        """
    def reject(self, indices: Optional[Iterable[int]] = None, reason: str = "rejected") -> None:
        """Straight to the dead-letter queue (poison), with reason, as
        Delivery.reject (one lock hold each).
        """
    def extend(self, seconds: float, indices: Optional[Iterable[int]] = None) -> None:
        """Keep the messages not settled (or those given) for `seconds`
        more from now.
        """
    def __enter__(self) -> Batch: ...
    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None: ...
