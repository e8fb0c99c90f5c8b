"""pyqueue.Topic: publish-subscribe over a shared-memory broadcast ring.

Every subscriber gets every message published after it subscribed, in
publish order per publisher.
"""
from __future__ import annotations

import abc

import mmap
from typing import Any, Dict, Optional, Tuple, TypeVar

from pyqueue import _core, _segment, _topic
from pyqueue.errors import ShutDown
from pyqueue.queues import (Serializer, _check_serializer, _Default, _round_capacity, _take,
                            check_settings)

T = TypeVar("T")
_S = TypeVar("_S", bound="Subscription[Any]")
_TP = TypeVar("_TP", bound="Topic[Any]")

DEFAULT_CAPACITY = 8 * 1024 * 1024
_MODES = {"lossless": _topic.LOSSLESS, "lossy": _topic.LOSSY}
_MODE_NAMES = {v: k for k, v in _MODES.items()}
_STARTS = {"latest": 0, "earliest": 1}
_KIND_TOPIC = 2


def _rebuild(name: str, serializer: Optional[Serializer],
             trust_owner: bool = False) -> Topic[Any]:
    return Topic.open(name, serializer=serializer, trust_owner=trust_owner)


_D_CAPACITY: Any = _Default(DEFAULT_CAPACITY)
_D_MODE: Any = _Default("lossless")
_D_PERM: Any = _Default(0o600)


# ABCMeta: as pyqueue.Queue (docs/design.md, "Backends").
class Subscription(_topic.SubscriptionCore[T], metaclass=abc.ABCMeta):
    """One process's cursor on a topic (made by Topic.subscribe()): get,
    get_many, iteration, close, lag, lost.

    Not picklable and not usable in another process (a forked child must
    subscribe for itself). Iterating it gets messages (get() with no
    timeout) until the topic is shut down and the subscription has read
    everything: then the iteration ends.
    """

    def __iter__(self: _S) -> _S:
        return self

    def __next__(self) -> T:
        try:
            return self.get()
        except ShutDown:
            raise StopIteration from None

    def __reduce__(self) -> Tuple[Any, ...]:
        raise TypeError("a Subscription belongs to the process that made it and cannot be "
                        "pickled; pass the Topic and subscribe in the other process")

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<pyqueue.Subscription {'closed' if self.closed else 'open'}>"


class Topic(_topic.TopicCore[T], metaclass=abc.ABCMeta):
    """A multi-process publish-subscribe topic in shared memory.

    Generic in the message type for type checkers (``Topic[dict]``). With
    the name of an existing topic, the settings passed must be the topic's.

    Args:
        name: The topic's name in /dev/shm (None: a fresh unnamed topic).
        capacity_bytes: The ring's size (rounded up to a power of two;
            default 8 MiB).
        mode: The delivery mode: "lossless" (publishers wait for the
            slowest live subscriber) or "lossy" (publishers never wait; a
            lapped subscriber skips ahead and counts what it missed in
            `lost`).
        serializer: A (dumps, loads) pair used instead of pickle.
        perm: The permission mask of the segment (Queue's `mode=`).
        trust_owner: Open a topic another user owns.

    Raises:
        ValueError: A bad setting, or the named topic exists with other
            settings (the message names what differs).
        TypeError: capacity_bytes is not an int, or serializer is not a pair
            of callables.
        SegmentMismatch: The name belongs to something that is not a topic.
        SegmentNotOwned: Another user owns the topic and trust_owner is
            false.
    """

    def __init__(self, name: Optional[str] = None, *, capacity_bytes: int = _D_CAPACITY,
                 mode: str = _D_MODE, serializer: Optional[Serializer] = None,
                 perm: int = _D_PERM, trust_owner: bool = False) -> None:
        given: Dict[str, Any] = {}
        capacity_bytes = _take(capacity_bytes, given, "capacity_bytes")
        mode = _take(mode, given, "mode")
        perm = _take(perm, given, "perm")
        capacity = _round_capacity(capacity_bytes)
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {sorted(_MODES)}, not {mode!r}")
        serializer = _check_serializer(serializer)
        if not isinstance(perm, int) or isinstance(perm, bool) or not 0 <= perm <= 0o777:
            raise ValueError("perm must be a permission mask such as 0o600")
        flags = _topic.FLAG_CUSTOM_SERIALIZER if serializer is not None else 0

        def init(mm: mmap.mmap) -> None:
            _topic.create_segment(mm, capacity, _MODES[mode], flags)

        name, mm, perm_now, created = _segment.create_or_open(
            name, _topic.segment_size(capacity), perm, init, _KIND_TOPIC, trust_owner)
        custom = bool(_core.segment_info(mm)["params"][2] & _topic.FLAG_CUSTOM_SERIALIZER)
        self._setup(name, mm, serializer, perm_now, trust_owner)
        if not created:
            stored = {"capacity_bytes": self.capacity_bytes, "mode": self.mode,
                      "perm": perm_now}
            wanted = dict(given, capacity_bytes=capacity)
            differences = [(what, stored[what], wanted[what]) for what in given
                           if stored[what] != wanted[what]]
            if serializer is not None and not custom:
                differences.append(("serializer", None, "a custom serializer"))
            try:
                check_settings("topic", name, differences)
            except ValueError:
                self.close()
                raise

    @classmethod
    def open(cls: type[_TP], name: str, *, serializer: Optional[Serializer] = None,
             trust_owner: bool = False) -> _TP:
        """Open an existing topic by name, with its settings.

        Args:
            name: The topic's name.
            serializer: The (dumps, loads) pair it was made with, if any.
            trust_owner: Open a topic another user owns.

        Returns:
            A new handle of the topic.

        Raises:
            SegmentNotFound: No segment has that name.
            SegmentMismatch: It is not a pyqueue topic.
            SegmentNotOwned: Another user owns it and trust_owner is false.
            PyQueueError: It was made with a custom serializer and none is
                given.
        """
        _segment.check_name(name)
        serializer = _check_serializer(serializer)
        mm, perm = _segment.open_existing(name, _KIND_TOPIC, trust_owner)
        self = cls.__new__(cls)
        self._setup(name, mm, serializer, perm, trust_owner)
        return self

    def _setup(self, name: str, mm: mmap.mmap, serializer: Optional[Serializer], perm: int,
               trust_owner: bool = False) -> None:
        self._name = name
        self._perm = perm
        # pyqueue._oob names a large message's segment after the topic's
        # and creates it with the topic's permissions.
        self._shm_name = _segment.shm_name(name)
        self._mode = perm
        self._serializer = serializer
        self._trust_owner = trust_owner
        self._attach(mm, serializer)

    def subscribe(self, start: str = "latest") -> Subscription[T]:
        """Subscribe this process to the topic.

        Args:
            start: "latest" (every message published from now on) or
                "earliest" (from the oldest message still in the ring).

        Returns:
            A Subscription of this process.

        Raises:
            ValueError: start is neither, or the topic handle is closed.
            PyQueueError: All 64 subscriber slots are taken.
            LockTimeout: The topic's lock stayed held by a stopped process.
        """
        if start not in _STARTS:
            raise ValueError(f"start must be 'latest' or 'earliest', not {start!r}")
        sub: Subscription[T] = self._subscribe(_STARTS[start], Subscription)
        return sub

    @property
    def name(self) -> str:
        """The topic's name in /dev/shm."""
        return self._name

    @property
    def mode(self) -> str:
        """The delivery mode: "lossless" or "lossy"."""
        return _MODE_NAMES[self.mode_code]

    def unlink(self) -> None:
        """Remove the topic's name (processes that have it open keep it).

        A name that is gone already is left as it is.

        Raises:
            PermissionError: The name belongs to another user (in the
                sticky /dev/shm).
        """
        _segment.disown(self._name)
        _segment.unlink(self._name)

    def __reduce__(self) -> Tuple[Any, ...]:
        return (_rebuild, (self._name, self._serializer,
                           self.__dict__.get("_trust_owner", False)))

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<pyqueue.Topic {self.__dict__.get('_name')!r} {state}>"

    def __enter__(self: _TP) -> _TP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
