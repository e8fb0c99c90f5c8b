"""Topic on Redis: a stream per topic, read by each subscriber from its own
position.

Keys of topic NAME (hash tag {NAME}: one cluster slot):

    pq:{NAME}:meta       hash: kind, settings, seq (last message number),
                         bytes (payload bytes retained), published
    pq:{NAME}:t.stream   stream: message number N has id 0-N, fields d
                         (payload) and n (its size)
    pq:{NAME}:t.pos      hash: subscription id -> number of the last message
                         it read
    pq:{NAME}:t.subs     zset: subscription id -> until when it counts as
                         live (ms, server clock; every read renews it)
    pq:{NAME}:t.space    stream (MAXLEN 1): a lossless subscriber read, so a
                         blocked publisher may have room

Retention is by bytes, as the shared-memory ring: a publish removes the
oldest messages while the retained payload bytes would exceed
capacity_bytes. In "lossless" mode it never removes a message that a live
subscription has not read: it waits (XREAD on t.space) or raises
queue.Full. In "lossy" mode it removes them, and the subscription counts
what it missed in `lost` (message numbers are dense). A subscription whose
process died is known only by its lease running out
(`subscriber_timeout`, renewed by each read; a subscription that stays
subscribed without reading for longer is evicted, and counts what it then
missed in `lost`). A subscriber waits in XREAD BLOCK on the stream itself
and on t.shut.

    pq:{NAME}:t.shut     stream: one entry, added by shutdown(), so that
                         every subscriber waiting in XREAD wakes

The meta hash's "shutdown" field (absent: in use; 1: shut down; 2: with
immediate=True) is set by the shutdown script with that entry and one on
t.space (publishers waiting for room wake): publish refuses, a read
returns what its subscription has not read and then ShutDown (at once
with immediate=True; nothing is erased).
"""
from __future__ import annotations

import math
import os
import secrets
import weakref
from typing import Any, Dict, Iterable, List, Optional, Tuple

from pyqueue import _api
from pyqueue.backends.redis import _codec
from pyqueue.backends.redis._codec import Serializer
from pyqueue.backends.redis._handle import RedisHandle, check_name, key_prefix
from pyqueue.errors import (MessageTooLarge, PyQueueError, SegmentNotFound, ShutDown,
                            UndecodableMessage)
from pyqueue.queues import _check_serializer, _Default, _round_capacity, _take, check_settings

KIND = "topic"
DEFAULT_CAPACITY = 8 * 1024 * 1024
MAX_SUBSCRIBERS = 64
SUBSCRIBER_TIMEOUT = 30.0
_MODES = ("lossless", "lossy")
_KEYS = ("meta", "t.stream", "t.pos", "t.subs", "t.space", "t.shut")

_HEAD = """
local M, S, P, L, W = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function evict_expired()
  local gone = redis.call('ZRANGEBYSCORE', L, '-inf', now, 'LIMIT', 0, 64)
  for _, id in ipairs(gone) do
    redis.call('ZREM', L, id)
    redis.call('HDEL', P, id)
  end
end
"""

_CREATE = """
local M = KEYS[1]
if redis.call('EXISTS', M) == 0 then
  if ARGV[1] == 'open' then return false end
  redis.call('HSET', M, 'kind', ARGV[2], 'capacity', ARGV[3], 'mode', ARGV[4], 'perm', ARGV[5],
             'custom', ARGV[6], 'sub_ms', ARGV[7], 'seq', 0, 'bytes', 0, 'published', 0)
  return {1, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]}
end
local m = redis.call('HMGET', M, 'kind', 'capacity', 'mode', 'perm', 'custom', 'sub_ms')
return {0, m[1], m[2], m[3], m[4], m[5], m[6]}
"""

# ARGV: payloads -> {published, last space id (when not all were)} | {-1}
# | {-2} shut down
_PUBLISH = _HEAD + """
local m = redis.call('HMGET', M, 'capacity', 'mode', 'bytes', 'shutdown')
if not m[1] then return {-1} end
if m[4] then return {-2} end
local cap, lossless, bytes = tonumber(m[1]), m[2] == 'lossless', tonumber(m[3])
local done = 0
local evicted = false
for i = 1, #ARGV do
  local size = #ARGV[i]
  while bytes + size > cap do
    local oldest = redis.call('XRANGE', S, '-', '+', 'COUNT', 1)
    if #oldest == 0 then break end
    local num = tonumber(string.sub(oldest[1][1], 3))
    if lossless then
      if not evicted then evict_expired(); evicted = true end
      local behind = false
      for _, pos in ipairs(redis.call('HVALS', P)) do
        if tonumber(pos) < num then behind = true; break end
      end
      if behind then
        if done > 0 then
          redis.call('HSET', M, 'bytes', bytes)
          redis.call('HINCRBY', M, 'published', done)
        end
        local last = redis.call('XREVRANGE', W, '+', '-', 'COUNT', 1)
        if #last > 0 then return {done, last[1][1]} end
        return {done, '0-0'}
      end
    end
    redis.call('XDEL', S, oldest[1][1])
    bytes = bytes - tonumber(oldest[1][2][4])
  end
  local seq = redis.call('HINCRBY', M, 'seq', 1)
  redis.call('XADD', S, '0-' .. seq, 'd', ARGV[i], 'n', size)
  bytes = bytes + size
  done = done + 1
end
redis.call('HSET', M, 'bytes', bytes)
redis.call('HINCRBY', M, 'published', done)
return {done}
"""

# ARGV: id, start ('latest' | 'earliest'), max subscribers, lease ms -> 1 | -1 | -2 (full)
_SUBSCRIBE = _HEAD + """
if redis.call('EXISTS', M) == 0 then return -1 end
evict_expired()
if redis.call('ZCARD', L) >= tonumber(ARGV[3]) then return -2 end
local pos = tonumber(redis.call('HGET', M, 'seq'))
if ARGV[2] == 'earliest' then
  local oldest = redis.call('XRANGE', S, '-', '+', 'COUNT', 1)
  if #oldest > 0 then pos = tonumber(string.sub(oldest[1][1], 3)) - 1 end
end
redis.call('HSET', P, ARGV[1], pos)
redis.call('ZADD', L, now + tonumber(ARGV[4]), ARGV[1])
return 1
"""

# ARGV: id, max messages, lease ms, position this handle last knew ->
# {lost, position after, seq, shut down (0|1), payloads...} | {-1}; shut
# down is 1 only when no payload is returned
_READ = _HEAD + """
local m = redis.call('HMGET', M, 'seq', 'mode', 'shutdown')
if not m[1] then return {-1} end
if m[3] == '2' then return {0, tonumber(ARGV[4]), tonumber(m[1]), 1} end
local pos = redis.call('HGET', P, ARGV[1])
if not pos then pos = tonumber(ARGV[4]) else pos = tonumber(pos) end
local lost = 0
local oldest = redis.call('XRANGE', S, '-', '+', 'COUNT', 1)
if #oldest > 0 then
  local first = tonumber(string.sub(oldest[1][1], 3))
  if first > pos + 1 then
    lost = first - pos - 1
    pos = first - 1
  end
elseif tonumber(m[1]) > pos then
  lost = tonumber(m[1]) - pos
  pos = tonumber(m[1])
end
local got = redis.call('XRANGE', S, '(0-' .. pos, '+', 'COUNT', tonumber(ARGV[2]))
local out = {lost, 0, tonumber(m[1]), 0}
if #got == 0 and m[3] then out[4] = 1 end
for _, e in ipairs(got) do
  out[#out + 1] = e[2][2]
  pos = tonumber(string.sub(e[1], 3))
end
out[2] = pos
redis.call('HSET', P, ARGV[1], pos)
redis.call('ZADD', L, now + tonumber(ARGV[3]), ARGV[1])
if #got > 0 and m[2] == 'lossless' then
  redis.call('XADD', W, 'MAXLEN', 1, '*', 'r', 1)
end
return out
"""

# ARGV: 1 (shutdown) or 2 (immediate) -> the state before | -1 (no topic)
_SHUTDOWN = """
local m = redis.call('HMGET', KEYS[1], 'kind', 'shutdown')
if not m[1] then return -1 end
local old = tonumber(m[2] or '0')
local new = tonumber(ARGV[1])
if new <= old then return old end
redis.call('HSET', KEYS[1], 'shutdown', new)
redis.call('XADD', KEYS[6], 'MAXLEN', 1, '*', 'x', new)
redis.call('XADD', KEYS[5], 'MAXLEN', 1, '*', 'r', 1)
return old
"""

# ARGV: id
_UNSUBSCRIBE = _HEAD + """
redis.call('HDEL', P, ARGV[1])
redis.call('ZREM', L, ARGV[1])
redis.call('XADD', W, 'MAXLEN', 1, '*', 'r', 1)
return 1
"""


class RedisTopic(RedisHandle):
    """pyqueue.Topic on Redis; made by `pyqueue.connect(url).Topic(...)`
    (the same signature, plus subscriber_timeout: how long a subscription
    that does not read counts as live)."""

    __slots__ = ("_name", "_keys", "_closed", "_serializer", "_settings", "__weakref__")
    KIND = KIND
    _what = "topic"
    _settings: Dict[str, Any]

    def __init__(self, name: Optional[str] = None, *,
                 capacity_bytes: Any = _Default(DEFAULT_CAPACITY),
                 mode: Any = _Default("lossless"), serializer: Serializer = None,
                 perm: Any = _Default(0o600), trust_owner: bool = False,
                 subscriber_timeout: Any = _Default(SUBSCRIBER_TIMEOUT)) -> None:
        given: Dict[str, Any] = {}
        capacity = _round_capacity(_take(capacity_bytes, given, "capacity_bytes"))
        mode = _take(mode, given, "mode")
        perm = _take(perm, given, "perm")
        sub_timeout = _take(subscriber_timeout, given, "subscriber_timeout")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {sorted(_MODES)}, not {mode!r}")
        if not isinstance(perm, int) or isinstance(perm, bool) or not 0 <= perm <= 0o777:
            raise ValueError("perm must be a permission mask such as 0o600")
        if (isinstance(sub_timeout, bool) or not isinstance(sub_timeout, (int, float))
                or not sub_timeout > 0):
            raise ValueError("subscriber_timeout must be a positive number of seconds")
        serializer = _check_serializer(serializer)
        name = self._new_name(name)
        self._init_handle(name, serializer)
        created = self._create("create", capacity, mode, perm, int(serializer is not None),
                               int(sub_timeout * 1000))
        if not created:
            st = self._settings
            stored: Dict[str, Any] = {"capacity_bytes": st["capacity"], "mode": st["mode"], "perm": st["perm"],
                      "subscriber_timeout": st["sub_ms"] / 1000.0}
            wanted = dict(given, capacity_bytes=capacity)
            if "subscriber_timeout" in given:
                wanted["subscriber_timeout"] = int(sub_timeout * 1000) / 1000.0
            differences = [(what, stored[what], wanted[what]) for what in given
                           if stored[what] != wanted[what]]
            if serializer is not None and not st["custom"]:
                differences.append(("serializer", None, "a custom serializer"))
            check_settings("topic", name, differences)

    @classmethod
    def open(cls, name: str, *, serializer: Serializer = None,
             trust_owner: bool = False) -> RedisTopic:
        """Open an existing topic by name (SegmentNotFound if missing)."""
        check_name(name)
        self = cls.__new__(cls)
        self._init_handle(name, _check_serializer(serializer))
        self._create("open", 0, "lossless", 0, 0, 0)
        return self

    def _init_handle(self, name: str, serializer: Serializer) -> None:
        self._name = name
        self._serializer = serializer
        self._closed = False
        self._keys = tuple(key_prefix(name) + k for k in _KEYS)

    def _create(self, how: str, capacity: int, mode: str, perm: int, custom: int,
                sub_ms: int) -> bool:
        r = self._create_meta(_CREATE, how, [capacity, mode, perm, custom, sub_ms])
        self._settings = {"capacity": int(r[2]), "mode": r[3].decode(), "perm": int(r[4]),
                          "custom": r[5] == b"1", "sub_ms": int(r[6])}
        return bool(r[0] == 1)

    @property
    def mode(self) -> str:
        return str(self._settings["mode"])

    @property
    def capacity_bytes(self) -> int:
        return int(self._settings["capacity"])

    @property
    def max_message_bytes(self) -> int:
        return int(self._settings["capacity"]) // 4

    @property
    def subscriber_timeout(self) -> float:
        return float(self._settings["sub_ms"]) / 1000.0

    def _encode(self, obj: Any) -> bytes:
        data = _codec.encode(obj, self._serializer)
        if len(data) > self.max_message_bytes:
            raise MessageTooLarge(f"message of {len(data)} bytes exceeds the topic's limit of "
                                  f"{self.max_message_bytes} bytes (a quarter of capacity_bytes)")
        return data

    def _take_dropped(self) -> List[str]:
        """The ids of this process's subscriptions of this topic dropped
        without close() (_dropped), taken: the caller unsubscribes them
        (a forked child's copies of its parent's are forgotten: they are
        the parent's)."""
        if not _dropped:
            return []
        got = _dropped.pop((self._bound.url, self._name), None)
        pid = os.getpid()
        return [sid for p, sid in got or () if p == pid]

    def _give_back_dropped(self) -> None:
        """Unsubscribe what _take_dropped gives (a best effort: one that
        cannot be given back now ends with its lease)."""
        for sid in self._take_dropped():
            try:
                self._script("topic_unsubscribe", _UNSUBSCRIBE, [sid])
            except Exception:  # noqa: BLE001 - gone, or the connection: its lease ends it
                pass

    def _publish_encoded(self, items: List[bytes], block: bool, until: Optional[float]) -> int:
        b = self._bound
        done = 0
        while done < len(items):
            self._give_back_dropped()
            r: List[Any] = self._script("topic_publish", _PUBLISH, items[done:done + 1000])
            if r[0] == -2:
                raise ShutDown(f"topic {self._name!r} is shut down")
            if r[0] < 0:
                raise SegmentNotFound(f"topic {self._name!r} was removed from {b.url}")
            done += int(r[0])
            if len(r) == 1:
                continue
            left = _api.remaining(until)
            if not block or left == 0.0:
                raise Full()
            # Wakes when a subscriber reads or leaves, or when a dead one's
            # lease runs out (its expiry is the longest wait needed).
            lease = self._settings["sub_ms"] / 1000.0
            b.client.hincrby(self._keys[0], "waiting_publishers", 1)
            try:
                b.wait_stream(self._keys[4], r[1], lease if left is None else min(left, lease))
            finally:
                b.client.hincrby(self._keys[0], "waiting_publishers", -1)
        return done

    def publish(self, obj: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        """Publish to every live subscription (lossless: queue.Full when a
        subscription that has not read the oldest message leaves no room in
        time)."""
        self._check_open()
        until = _api.deadline(block, timeout)
        self._publish_encoded([self._encode(obj)], block, until)

    def publish_many(self, objs: Iterable[Any], block: bool = True,
                     timeout: Optional[float] = None) -> int:
        self._check_open()
        until = _api.deadline(block, timeout)
        items = [self._encode(o) for o in objs]
        return self._publish_encoded(items, block, until) if items else 0

    def shutdown(self, immediate: bool = False) -> None:
        """As pyqueue.Topic.shutdown, for every process and host: publish
        raises ShutDown; each subscription reads what it has not read, then
        its get raises ShutDown (at once with immediate=True; nothing is
        erased); every waiting subscriber and publisher wakes."""
        self._check_open()
        if self._script("topic_shutdown", _SHUTDOWN, [2 if immediate else 1]) < 0:
            raise SegmentNotFound(f"topic {self._name!r} was removed from {self._bound.url}")

    @property
    def is_shutdown(self) -> bool:
        """Whether the topic was shut down (by any process)."""
        return self._bound.client.hget(self._keys[0], "shutdown") is not None

    def subscribe(self, start: str = "latest") -> RedisSubscription:
        """A Subscription that receives every message published from now on
        ("latest") or from the oldest message still retained ("earliest")."""
        self._check_open()
        if start not in ("latest", "earliest"):
            raise ValueError(f"start must be 'latest' or 'earliest', not {start!r}")
        self._give_back_dropped()
        sid = f"{os.getpid()}-{secrets.token_hex(8)}"
        r = self._script("topic_subscribe", _SUBSCRIBE,
                         [sid, start, MAX_SUBSCRIBERS, self._settings["sub_ms"]])
        if r == -1:
            raise SegmentNotFound(f"topic {self._name!r} was removed from {self._bound.url}")
        if r == -2:
            raise PyQueueError(f"topic {self._name!r} has {MAX_SUBSCRIBERS} subscriptions, "
                               "held by live subscribers")
        return RedisSubscription(self, sid)

    def stats(self) -> Dict[str, Any]:
        self._check_open()
        c = self._bound.client
        meta: Dict[Any, Any] = c.hgetall(self._keys[0])
        if not meta:
            raise SegmentNotFound(f"topic {self._name!r} was removed from {self._bound.url}")
        return {"published": int(meta[b"published"]), "retained": c.xlen(self._keys[1]),
                "retained_bytes": int(meta[b"bytes"]), "capacity": self.capacity_bytes,
                "subscribers": c.zcard(self._keys[3]),
                # publishers waiting for room (one SIGKILLed while waiting
                # stays counted, as on shared memory)
                "waiting_publishers": int(meta.get(b"waiting_publishers", 0)),
                "waiting_subscribers": None,   # not tracked on Redis
                "backend": "redis",
                "url": self._bound.url}

    def __repr__(self) -> str:
        return f"<pyqueue.Topic {self._name!r} {'closed' if self._closed else 'open'}>"


# Subscriptions dropped without close(): (backend URL, topic name) ->
# [(pid, id)], noted by their finalizer (a dict and list append: no I/O
# and no lock, safe in whatever thread and call the garbage collector runs
# it), taken by the next publish or subscribe of that topic in that
# process, which unsubscribes them. (A subscription's slot holds a
# lossless topic's oldest message for its readers: on shared memory one
# dropped gives it back at once; before this, on Redis only its lease's
# end did, subscriber_timeout later, while publishers waited for room.)
# An entry lost (taken and not given back: an interrupt, a connection
# lost) ends with its lease, as a killed subscriber's.
_dropped: Dict[Tuple[str, str], List[Tuple[int, str]]] = {}


def _note_dropped(where: Tuple[str, str], pid: int, sid: str) -> None:
    _dropped.setdefault(where, []).append((pid, sid))


class RedisSubscription:
    """One cursor on a topic: get, get_many, iteration, close, lag, lost."""

    def __init__(self, topic: RedisTopic, sid: str) -> None:
        self._topic = topic
        self._sid = sid
        self._pid = os.getpid()
        self._pos: Optional[int] = None   # the last message number read, once known
        self._seq = 0             # the topic's last message number at the last read
        self._buf: List[bytes] = []   # messages read and not yet returned
        self.lost = 0
        self.undecodable = 0
        self.closed = False
        self._dropped = weakref.finalize(self, _note_dropped, (topic._bound.url, topic._name),
                                         self._pid, sid)
        self._dropped.atexit = False    # (the process's end: its lease ends it)

    def _read(self, max_messages: int, block: bool, until: Optional[float]) -> List[bytes]:
        t = self._topic
        b = t._bound
        while True:
            r: List[Any] = t._script("topic_read", _READ, [self._sid, max_messages, t._settings["sub_ms"],
                                                 -1 if self._pos is None else self._pos])
            if r[0] == -1 and len(r) == 1:
                raise SegmentNotFound(f"topic {t._name!r} was removed from {b.url}")
            self.lost += r[0]
            self._pos, self._seq = r[1], r[2]
            if len(r) > 4:
                return r[4:]
            if r[3] == 1:
                raise ShutDown(f"topic {t._name!r} is shut down")
            left = _api.remaining(until)
            if not block or left == 0.0:
                raise Empty()
            # Wake on a message after our position (it lands on the stream
            # itself) or on the shutdown's entry; renew the lease before it
            # runs out.
            lease = t._settings["sub_ms"] / 2000.0
            left = lease if left is None else min(left, lease)
            b.xread_block({t._keys[1]: f"0-{self._pos}", t._keys[5]: "0-0"},
                         max(1, math.ceil(left * 1000)))

    def _check(self) -> None:
        # (as pyqueue.Topic's subscriptions)
        if self.closed:
            raise ValueError("subscription is closed")
        if self._topic._closed:
            raise ValueError("the topic of this subscription is closed")
        if self._pid != os.getpid():
            raise PyQueueError("a subscription belongs to the process that made it; "
                               "subscribe again in this process")

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        self._check()
        until = _api.deadline(block, timeout)
        if not self._buf:
            self._buf = self._read(1, block, until)
        raw = self._buf.pop(0)
        try:
            return self._decode(raw)
        except Exception as e:
            raise self._undecodable(raw, e) from e
        except BaseException:
            # An interrupt (Ctrl-C) while decoding: the message is kept for
            # the next get, and the interrupt goes on (as pyqueue.Topic).
            self._buf.insert(0, raw)
            raise

    def get_many(self, max_messages: int = 1024, block: bool = True,
                 timeout: Optional[float] = None) -> List[Any]:
        self._check()
        max_messages = _api.check_max_messages(max_messages)
        until = _api.deadline(block, timeout)
        raws, self._buf = self._buf[:max_messages], self._buf[max_messages:]
        if not raws:
            raws = self._read(max_messages, block, until)
        out: List[Any] = []
        try:
            for raw in raws:
                out.append(self._decode(raw))
        except Exception as e:
            # An undecodable message is reported alone (as pyqueue.Topic):
            # the ones before it are returned now, the ones after it by the
            # next calls.
            i = len(out)
            if i == 0:
                self._buf[:0] = raws[1:]
                raise self._undecodable(raws[0], e) from e
            self._buf[:0] = raws[i:]
        except BaseException:
            # An interrupt (Ctrl-C) while decoding: the whole batch is kept
            # for the next call, in order, and the interrupt goes on.
            self._buf[:0] = raws
            raise
        return out

    def _decode(self, raw: bytes) -> Any:
        return _codec.decode(raw, self._topic._serializer)

    def _undecodable(self, raw: bytes, e: Exception) -> UndecodableMessage:
        """What an undecodable message raises (counted in undecodable)."""
        self.undecodable += 1
        return UndecodableMessage(f"a message of topic {self._topic._name!r} cannot be decoded: "
                                  f"{type(e).__name__}: {e}", raw=raw, cause=e)

    @property
    def lag(self) -> int:
        """Messages published and not yet read by this subscription."""
        self._check()
        t = self._topic
        seq = int(t._bound.client.hget(t._keys[0], "seq") or 0)
        stored = t._bound.client.hget(t._keys[2], self._sid)
        pos = self._pos if stored is None else int(stored)
        return max(0, seq - (pos or 0)) + len(self._buf)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._dropped.detach()
            # (a forked child's copy only closes here: the subscription is
            # its parent's)
            if self._pid == os.getpid():
                t = self._topic
                t._script("topic_unsubscribe", _UNSUBSCRIBE, [self._sid])

    def __iter__(self) -> RedisSubscription:
        return self

    def __next__(self) -> Any:
        try:
            return self.get()
        except ShutDown:
            raise StopIteration from None

    def __enter__(self) -> RedisSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Tuple[Any, ...]:
        raise TypeError("a Subscription belongs to the process that made it and cannot be "
                        "pickled; pass the Topic and subscribe in the other process")

    def __repr__(self) -> str:
        return f"<pyqueue.Subscription {'closed' if self.closed else 'open'}>"


Empty = _api.Empty
Full = _api.Full
