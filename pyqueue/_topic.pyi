"""Type stubs of the Cython binding pyqueue/_topic.pyx (the Topic ring)."""
import mmap
from typing import Any, Callable, Generic, Iterable, Optional, Tuple, Type, TypeVar

from typing_extensions import disjoint_base

from pyqueue.errors import MessageTooLarge as MessageTooLarge
from pyqueue.errors import PyQueueError as PyQueueError
from pyqueue.errors import SegmentMismatch as SegmentMismatch
from pyqueue.errors import UndecodableMessage as UndecodableMessage

_T = TypeVar("_T")
_S = TypeVar("_S", bound="SubscriptionCore[Any]")

FLAG_CUSTOM_SERIALIZER: int
OOB_FLAG: int
LOSSLESS: int
LOSSY: int

def create_segment(mm: mmap.mmap, capacity: int, mode: int, flags: int) -> None: ...
def segment_size(capacity: int) -> int: ...

@disjoint_base
class TopicCore(Generic[_T]):
    """Base class of pyqueue.Topic (generic in the message type)."""
    @property
    def _closed(self) -> bool: ...
    def _attach(self, mm: mmap.mmap,
                serializer: Optional[Tuple[Callable[[Any], Any], Callable[[Any], Any]]]) -> None: ...
    def _subscribe(self, start: int, cls: Type[_S]) -> _S: ...
    def publish(self, obj: _T, block: bool = True, timeout: Optional[float] = None) -> None:
        """Publish obj to every current subscriber.

        A message larger than max_message_bytes goes out of band: one
        shared-memory segment of its own that every subscriber maps (a
        NumPy array pickled with protocol 5 is copied once, into it), the
        ring holding a reference; the segment is removed once every
        subscriber has passed the message, or the ring drops it.

        Args:
            obj: The message (bytes and str as they are, anything else
                pickled or encoded by the topic's serializer).
            block: In a lossless topic, wait for the slowest live
                subscriber to make room (False: raise queue.Full at once).
                A lossy topic never waits.
            timeout: With block, wait at most this many seconds (None: for
                ever).

        Raises:
            ShutDown: The topic was shut down.
            queue.Full: No room in time (lossless topic).
            MessageTooLarge: max_message_bytes cannot hold even the
                reference to an out-of-band message (a tiny ring).
            ValueError: The topic handle is closed, or timeout is negative.
        """
    def publish_many(self, objs: Iterable[_T], block: bool = True,
                     timeout: Optional[float] = None) -> int:
        """Publish every object of an iterable, in batched claims.

        Args:
            objs: The messages, in order.
            block: As publish().
            timeout: As publish(), for the whole call.

        Returns:
            The number of messages published.

        Raises:
            ShutDown: The topic was shut down.
            queue.Full: No room in time; the messages before the one that did
                not fit are published.
            MessageTooLarge: max_message_bytes cannot hold even the
                reference to an out-of-band message (a tiny ring).
            ValueError: The topic handle is closed.
        """
    def shutdown(self, immediate: bool = False) -> None:
        """Shut the topic down for every process (as queue.Queue.shutdown
        of Python 3.13): publishes raise ShutDown from now on; each
        subscription's gets raise it once it has read everything published
        (a drain), and iterating over a subscription ends; every publish or
        get blocked in any process wakes. The flag is kept in the segment
        (handles opened later see it) and never lowered.

        Args:
            immediate: Make gets raise ShutDown at once, even with messages
                left unread (they are not erased: a topic's records go only
                when overwritten).

        Raises:
            ValueError: The handle is closed.
        """
    @property
    def is_shutdown(self) -> bool:
        """True once the topic has been shut down (by any process)."""
    def stats(self) -> dict[str, int]:
        """The topic's counters.

        Returns:
            A dict: published, retained, capacity, subscribers,
            waiting_publishers, waiting_subscribers.

        Raises:
            ValueError: The topic handle is closed.
        """
    def _subscribers(self) -> list[dict[str, int]]: ...
    def _oob_segments(self) -> Optional[set[str]]: ...
    @property
    def capacity_bytes(self) -> int:
        """The ring's size in bytes."""
    @property
    def mode_code(self) -> int:
        """The delivery mode as the C core's code (see Topic.mode)."""
    @property
    def max_message_bytes(self) -> int:
        """The largest encoded message a publish accepts."""
    def close(self) -> None:
        """Close this handle (subscriptions made from it stop working;
        other handles and processes are unaffected).
        """

@disjoint_base
class SubscriptionCore(Generic[_T]):
    """Base class of pyqueue.Subscription (generic in the message type)."""
    def get(self, block: bool = True, timeout: Optional[float] = None) -> _T:
        """Take the next message.

        Args:
            block: Wait for a message (False: raise queue.Empty at once).
            timeout: With block, wait at most this many seconds (None: for
                ever).

        Returns:
            The message.

        Raises:
            ShutDown: The topic was shut down and this subscription read
                everything (at once with shutdown(immediate=True)).
            queue.Empty: No message in time.
            UndecodableMessage: The message cannot be decoded (it is not
                given again).
            ValueError: The subscription or its topic handle is closed.
            PyQueueError: Used in another process than the one that
                subscribed.
        """
    def get_many(self, max_messages: int = 1024, block: bool = True,
                 timeout: Optional[float] = None) -> list[_T]:
        """Take up to max_messages messages; waits for at least one.

        Args:
            max_messages: The most messages returned (positive).
            block: Wait for the first message (False: raise queue.Empty at
                once).
            timeout: With block, wait at most this many seconds (None: for
                ever).

        Returns:
            A non-empty list of messages, in publish order.

        Raises:
            ShutDown: The topic was shut down and this subscription read
                everything (at once with shutdown(immediate=True)).
            queue.Empty: No message in time.
            UndecodableMessage: Raised alone by the call that reaches an
                undecodable message: the ones before it are returned, the
                ones after it come with the next calls.
            ValueError: max_messages is not positive, or the subscription is
                closed.
            PyQueueError: Used in another process.
        """
    def close(self) -> None:
        """Give the subscription's slot back (closing twice does nothing).

        Raises:
            LockTimeout: The topic's lock stayed held by another process for
                the whole lock wait (a stopped peer): the subscription is
                still open; close again.
        """
    @property
    def closed(self) -> bool:
        """Whether the subscription is closed."""
    @property
    def lag(self) -> int:
        """Messages published and not yet read by this subscription.

        Raises:
            ValueError: The subscription is closed.
        """
    @property
    def undecodable(self) -> int:
        """Messages this subscription reported as UndecodableMessage."""
    @property
    def lost(self) -> int:
        """Messages this subscription missed (a lossy topic lapped it)."""
