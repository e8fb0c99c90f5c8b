"""pyqueue.Topic: publish-subscribe over a shared-memory broadcast ring.

Every subscriber gets every message published after it subscribed, in
publish order per publisher. See docs/api.md ("Topic") and docs/design.md.
"""
import abc

from pyqueue import _core, _segment, _topic
from pyqueue.queues import _check_serializer, _Default, _round_capacity, _take, check_settings

DEFAULT_CAPACITY = 8 * 1024 * 1024
_MODES = {"lossless": _topic.LOSSLESS, "lossy": _topic.LOSSY}
_MODE_NAMES = {v: k for k, v in _MODES.items()}
_STARTS = {"latest": 0, "earliest": 1}
_KIND_TOPIC = 2


def _rebuild(name, serializer, trust_owner=False):
    return Topic.open(name, serializer=serializer, trust_owner=trust_owner)


_D_CAPACITY = _Default(DEFAULT_CAPACITY)
_D_MODE = _Default("lossless")
_D_PERM = _Default(0o600)


# ABCMeta: as pyqueue.Queue (docs/design.md, "Backends").
class Subscription(_topic.SubscriptionCore, metaclass=abc.ABCMeta):
    """One process's cursor on a topic: get, get_many, iteration, close,
    lag, lost. Not picklable and not usable in another process (a forked
    child must subscribe for itself)."""

    def __iter__(self):
        return self

    def __next__(self):
        return self.get()

    def __reduce__(self):
        raise TypeError("a Subscription belongs to the process that made it and cannot be "
                        "pickled; pass the Topic and subscribe in the other process")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<pyqueue.Subscription {'closed' if self.closed else 'open'}>"


class Topic(_topic.TopicCore, metaclass=abc.ABCMeta):
    """A multi-process publish-subscribe topic in shared memory.

    Topic(name=None, *, capacity_bytes=8 MiB, mode="lossless", serializer=None,
          perm=0o600, trust_owner=False)

    mode is the delivery mode ("lossless": publishers wait for the slowest
    live subscriber; "lossy": publishers never wait, a lapped subscriber
    skips ahead and counts what it missed in `lost`); perm is the permission
    mask of the shared-memory segment (Queue's `mode=`). A topic of another
    user is refused (SegmentNotOwned) unless trust_owner=True. With the name
    of an existing topic, the settings passed must be the topic's
    (ValueError naming what differs).
    """

    def __init__(self, name=None, *, capacity_bytes=_D_CAPACITY, mode=_D_MODE,
                 serializer=None, perm=_D_PERM, trust_owner=False):
        given = {}
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

        def init(mm):
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
    def open(cls, name, *, serializer=None, trust_owner=False):
        """Open an existing topic by name (SegmentNotFound if missing,
        SegmentMismatch if it is not a pyqueue topic, SegmentNotOwned if
        another user owns it and trust_owner is false)."""
        _segment.check_name(name)
        serializer = _check_serializer(serializer)
        mm, perm = _segment.open_existing(name, _KIND_TOPIC, trust_owner)
        self = cls.__new__(cls)
        self._setup(name, mm, serializer, perm, trust_owner)
        return self

    def _setup(self, name, mm, serializer, perm, trust_owner=False):
        self._name = name
        self._perm = perm
        self._serializer = serializer
        self._trust_owner = trust_owner
        self._attach(mm, serializer)

    def subscribe(self, start="latest"):
        """A Subscription that receives every message published from now on
        ("latest") or from the oldest message still in the ring ("earliest")."""
        if start not in _STARTS:
            raise ValueError(f"start must be 'latest' or 'earliest', not {start!r}")
        return self._subscribe(_STARTS[start], Subscription)

    @property
    def name(self):
        return self._name

    @property
    def mode(self):
        return _MODE_NAMES[self.mode_code]

    def unlink(self):
        """Remove the topic's name (processes that have it open keep it)."""
        _segment.disown(self._name)
        _segment.unlink(self._name)

    def __reduce__(self):
        return (_rebuild, (self._name, self._serializer,
                           self.__dict__.get("_trust_owner", False)))

    def __repr__(self):
        state = "closed" if self._closed else "open"
        return f"<pyqueue.Topic {self.__dict__.get('_name')!r} {state}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
