"""What the Redis classes (Queue, WorkQueue, Topic, Log) share: the rules
of a name, its keys' prefix, the script that makes or opens a handle's
meta hash, its scripts, name/url, closing, pickling by URL and name.

A handle's keys all carry its name as hash tag ("pq:{NAME}:..."), so they
live in one cluster slot and its multi-key scripts stay legal on Redis
Cluster; the meta hash ("pq:{NAME}:meta") holds the kind, so one name is
one kind (SegmentMismatch across kinds, as on shared memory).
"""
from __future__ import annotations

import os
import secrets
from typing import TYPE_CHECKING, Any, ClassVar, List, Optional, Sequence, Tuple

if TYPE_CHECKING:
    from pyqueue.backends.redis import RedisBackend
    from pyqueue.backends.redis._codec import Serializer

from pyqueue import _api
from pyqueue.errors import SegmentMismatch, SegmentNotFound


def check_name(name: str) -> str:
    _api.check_name(name)
    if "{" in name or "}" in name:
        raise ValueError(f"invalid queue name {name!r} for Redis: no '{{' or '}}' (the name "
                         "is the hash tag that keeps a queue's keys in one cluster slot)")
    return name


def key_prefix(name: str) -> str:
    return f"pq:{{{name}}}:"


# KEYS: the handle's keys, then the sets (or sorted sets) that list the
# pyqueue.asyncio handles holding per-handle keys (their last ARGV[1]
# keys); ARGV: that count, the name's key prefix, then the suffixes of the
# per-handle keys (prefix .. suffix .. handle id). Removes them all in one
# step: no handle can add a reservation between the two (aio.py).
_UNLINK = """
local nsets = tonumber(ARGV[1])
for s = #KEYS - nsets + 1, #KEYS do
  local ids
  if redis.call('TYPE', KEYS[s]).ok == 'zset' then
    ids = redis.call('ZRANGE', KEYS[s], 0, -1)
  else
    ids = redis.call('SMEMBERS', KEYS[s])
  end
  for _, hid in ipairs(ids) do
    for i = 3, #ARGV do redis.call('DEL', ARGV[2] .. ARGV[i] .. hid) end
  end
end
redis.call('DEL', unpack(KEYS))
return 0
"""


def _rebuild(url: str, attr: str, name: str, serializer: Serializer) -> Any:
    from pyqueue.backends import connect
    return getattr(connect(url), attr).open(name, serializer=serializer)


class RedisHandle(_api.HandleAPI):
    """The base of the Redis classes. A subclass sets KIND (the kind in the
    meta hash), _what (its name in messages), and _name, _keys (its keys,
    the meta hash first), _serializer, _closed on each handle; the backend
    sets _backend and _attr (the backend attribute that makes the class)
    on the class it binds."""

    __slots__ = ()
    _backend: ClassVar[Optional[RedisBackend]] = None
    _attr: ClassVar[Optional[str]] = None
    KIND: ClassVar[Optional[str]] = None
    _what: ClassVar[Optional[str]] = None
    # What pyqueue.asyncio's handles of this kind keep on the server besides
    # _keys (aio.py): the keys (under key_prefix) that list the handles,
    # and the suffixes of each handle's own keys (suffix + handle id).
    _aio_sets: ClassVar[Tuple[str, ...]] = ()
    _aio_keys: ClassVar[Tuple[str, ...]] = ()
    # Each subclass has them in its __slots__.
    _name: str
    _keys: Tuple[str, ...]
    _serializer: Serializer
    _closed: bool

    @property
    def _bound(self) -> RedisBackend:
        """The backend this class is bound to (RedisBackend.Queue ...)."""
        b = self._backend
        if b is None:
            raise TypeError("a Redis class is made through its backend: "
                            "pyqueue.connect(url).Queue(...)")
        return b

    def _check_open(self) -> None:
        # HandleAPI's (pyqueue._api, not annotated), typed for these classes.
        if self._closed:
            raise ValueError(f"{type(self).__name__} {self.name!r} is closed")

    @staticmethod
    def _new_name(name: Optional[str]) -> str:
        """name, checked; a fresh unique one for None."""
        if name is None:
            name = f"anon-{os.getpid()}-{secrets.token_hex(8)}"
        return check_name(name)

    def _create_meta(self, source: str, how: str, args: Sequence[Any]) -> List[Any]:
        """Runs a create script on the meta hash (ARGV: how, KIND, *args;
        -> None when how is "open" and there is none, else {created,
        kind, settings...}): its reply, once it is this kind's."""
        b = self._bound
        r: Optional[List[Any]] = b.script(f"{self.KIND}_create", source)(
            keys=[key_prefix(self._name) + "meta"], args=[how, self.KIND, *args])
        if r is None:
            raise SegmentNotFound(f"no {self._what} {self._name!r} at {b.url}")
        kind = r[1].decode()
        if kind != self.KIND:
            raise SegmentMismatch(f"{self._name!r} at {b.url} is a {kind}, not a {self._what}")
        return r

    def _script(self, name: str, source: str, args: Sequence[Any] = ()) -> Any:
        """Runs a registered script over this handle's keys."""
        return self._bound.script(name, source)(keys=self._keys, args=list(args))

    @property
    def name(self) -> str:
        return self._name

    @property
    def url(self) -> str:
        return self._bound.url

    def close(self) -> None:
        """Close this handle (what it names stays on the server)."""
        self._closed = True  # type: ignore[misc]  # (in each subclass's __slots__)

    def unlink(self) -> None:
        """Remove it (its messages and counters) from the server, with what
        pyqueue.asyncio's handles keep there (their reservations)."""
        self._delete_keys()

    def _delete_keys(self) -> None:
        if not self._aio_sets:
            self._bound.client.delete(*self._keys)
            return
        p = key_prefix(self._name)
        self._bound.script("unlink_with_reservations", _UNLINK)(
            keys=[*self._keys, *(p + k for k in self._aio_sets)],
            args=[len(self._aio_sets), p, *self._aio_keys])

    def __reduce__(self) -> Tuple[Any, ...]:
        return (_rebuild, (self._bound.url, self._attr, self._name, self._serializer))
