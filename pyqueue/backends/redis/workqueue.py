"""WorkQueue on Redis: hashes and sorted sets, every step one Lua script.

Keys of work queue NAME (all in hash tag {NAME}: one cluster slot; the
meta key is the one a Queue of that name has, so one name is one kind):

    pq:{NAME}:meta     hash: kind, settings, counters, next_id
    pq:{NAME}:wq.msg      hash: id -> encoded message (until it is done)
    pq:{NAME}:wq.cnt      hash: id -> deliveries so far
    pq:{NAME}:wq.enq      hash: id -> enqueued at (ms since the epoch, server clock)
    pq:{NAME}:wq.why      hash: id -> why its last delivery ended ("nacked",
                       "visibility timeout", "rejected")
    pq:{NAME}:wq.ready    zset: available messages, score = id (oldest first)
    pq:{NAME}:wq.delayed  zset: score = when it becomes available (ms)
    pq:{NAME}:wq.held     zset: delivered, score = its visibility deadline (ms)
    pq:{NAME}:wq.dead     zset: dead-pending (to move to the dead-letter queue),
                       score = until when its mover holds it (ms)
    pq:{NAME}:wq.dkeys    zset: dedup keys, score = expiry (ms)
    pq:{NAME}:wq.dids     hash: dedup key -> the id its first put got
    pq:{NAME}:wq.wake     stream (MAXLEN 1): a message became available
    pq:{NAME}:wq.space    stream (MAXLEN 1): a message was done in a full queue

The meta hash's "shutdown" field (absent: in use; 1: shut down; 2: with
immediate=True) is set by the shutdown script, which adds an entry to
wq.wake and wq.space: every get and put waiting in XREAD wakes and runs its
script again, which reads the flag (puts refused; gets deliver what is
ready, then ShutDown; at once with immediate). Nothing is discarded.

Times are the server's (TIME inside the scripts), so consumers on several
hosts share one clock. The visibility timeout is checked lazily, by the
next get (as XAUTOCLAIM would): a waiting get wakes at the earliest
deadline of a held, delayed or dead-pending message. Moving a message to
the dead-letter queue (another queue: another slot on a cluster) takes
three steps, as on shared memory: mark it dead-pending (held by its mover
for a lease), put the DeadLetter into the dead-letter queue, remove it. A
mover that dies leaves it dead-pending until the lease ends, then the next
get moves it (so a message may reach the dead-letter queue twice, never
zero times). The Delivery and DeadLetter classes, and get()'s,
get_many()'s, put_many()'s and the dead-letter move's logic, are
pyqueue.workqueue's, run over these primitives; a batch's settles are one
script for many messages, each fenced as the single verb's, under the
Python half every backend's Batch shares (pyqueue._api.BatchAPI).
The documentation's Design page, "Backends".
"""
from __future__ import annotations

import math
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from pyqueue import _api, _workq
from pyqueue import workqueue as _shm
from pyqueue.backends.redis import ConnectionLost, _codec
from pyqueue.backends.redis._codec import Serializer
from pyqueue.backends.redis._handle import RedisHandle, check_name, key_prefix
from pyqueue.errors import MessageTooLarge, PyQueueError, SegmentNotFound, ShutDown
from pyqueue.queues import _check_serializer, _Default, _round_capacity, _take, check_settings
from pyqueue.workqueue import (DEAD_LETTER_OVERHEAD, DEFAULT_CAPACITY, DEFAULT_DEDUP_KEYS,
                               DEFAULT_DEDUP_WINDOW, DEFAULT_MAX_DELIVERIES,
                               DEFAULT_MAX_IN_FLIGHT, DEFAULT_VISIBILITY_TIMEOUT, DeadLetter,
                               Delivery)

KIND = "workqueue"
NEVER_MS = 1 << 52          # "inf": saturated (exact in Lua's doubles, with now added)
ESTALE = _workq.ESTALE_CODE
_KEYS = ("meta", "msg", "cnt", "enq", "why", "ready", "delayed", "held", "dead", "dkeys",
         "dids", "wake", "space")
_SCAN = 100                 # entries one script moves at most per step (bounded scans)
_PUT_CHUNK = 256            # messages per script of put_many (one atomic step each)

_LUA_HEAD = """
local M, P, C, E, R, Q, D, F, X, K, KI, W, S =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9],
  KEYS[10], KEYS[11], KEYS[12], KEYS[13]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function last_id(stream)
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #last > 0 then return last[1][1] end
  return '0-0'
end
local function forget(id)
  redis.call('HDEL', P, id)
  redis.call('HDEL', C, id)
  redis.call('HDEL', E, id)
  redis.call('HDEL', R, id)
end
local function done(id, counter)
  local before = redis.call('HLEN', P)
  forget(id)
  redis.call('HINCRBY', M, counter, 1)
  local cap = tonumber(redis.call('HGET', M, 'max_in_flight'))
  if before >= cap then redis.call('XADD', S, 'MAXLEN', 1, '*', 's', 1) end
end
-- id becomes available after delay ms (0: now); true when now
local function offer(id, delay)
  if delay > 0 then
    redis.call('ZADD', D, now + delay, id)
    return false
  end
  redis.call('ZADD', Q, id, id)
  return true
end
local function held_by(id, n)
  if not redis.call('ZSCORE', F, id) then return false end
  return redis.call('HGET', C, id) == n
end
-- a variadic command over the elements of t, 1000 a call (unpack's bound)
local function bulk(cmd, key, t)
  for i = 1, #t, 1000 do redis.call(cmd, key, unpack(t, i, math.min(i + 999, #t))) end
end
-- HMGET / ZMSCORE of the ids, 1000 a call: the replies, in order
local function multi(cmd, key, ids)
  local out = {}
  for i = 1, #ids, 1000 do
    for _, v in ipairs(redis.call(cmd, key, unpack(ids, i, math.min(i + 999, #ids)))) do
      out[#out + 1] = v
    end
  end
  return out
end
"""

_CREATE = """
local M = KEYS[1]
if redis.call('EXISTS', M) == 0 then
  if ARGV[1] == 'open' then return false end
  redis.call('HSET', M, 'kind', ARGV[2], 'capacity', ARGV[3], 'max_in_flight', ARGV[4],
             'vis_ms', ARGV[5], 'max_deliveries', ARGV[6], 'dedup_ms', ARGV[7],
             'dedup_keys', ARGV[8], 'perm', ARGV[9], 'dead_letter', ARGV[10],
             'max_payload', ARGV[11], 'custom', ARGV[12], 'next_id', 0, 'enqueued', 0, 'acked', 0,
             'redelivered', 0, 'dead_lettered', 0, 'deduplicated', 0, 'dedup_full', 0,
             'dead_letter_parked', 0)
  return {1, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9],
          ARGV[10], ARGV[11], ARGV[12]}
end
local m = redis.call('HMGET', M, 'kind', 'capacity', 'max_in_flight', 'vis_ms',
                     'max_deliveries', 'dedup_ms', 'dedup_keys', 'perm', 'dead_letter',
                     'max_payload', 'custom')
return {0, m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9], m[10], m[11] or '0'}
"""

# ARGV: delay ms, then (payload, key or '') per message -> {0, 0, id...}
# all put (a duplicate key's: the first one's id, also of a key earlier in
# the same call) | {-1} no queue | {-2, ms until the oldest key expires,
# id...} dedup table full | {-3, last space id, id...} no room: the ids of
# those before the one that did not fit, which stay put (message after
# message, in one call; a put is one message's call) | {-5} shut down
_PUT_MANY = _LUA_HEAD + """
local m = redis.call('HMGET', M, 'max_in_flight', 'dedup_keys', 'dedup_ms', 'shutdown')
if not m[1] then return {-1} end
if m[4] then return {-5} end
local cap, dedup_keys, dedup_ms = tonumber(m[1]), tonumber(m[2]), tonumber(m[3])
local delay = tonumber(ARGV[1])
local out = {0, 0}
local put, dups, ready = 0, 0, false
local purged = false
-- the writes of the new messages are gathered and made after the loop
-- (one command per key): nothing in the loop reads them back, the
-- in-flight count and the last id are kept here
local inflight = redis.call('HLEN', P)
local next_id = tonumber(redis.call('HGET', M, 'next_id') or '0')
local pay, cnt, enq, rdy, dly = {}, {}, {}, {}, {}
for i = 2, #ARGV, 2 do
  local key = ARGV[i + 1]
  local first = false
  local keyed = key ~= '' and dedup_keys > 0
  if keyed then
    if not purged then
      purged = true
      local old = redis.call('ZRANGEBYSCORE', K, '-inf', now, 'LIMIT', 0, 1000)
      if #old > 0 then
        redis.call('ZREM', K, unpack(old))
        redis.call('HDEL', KI, unpack(old))
      end
    end
    first = redis.call('HGET', KI, key)
    if not first and redis.call('ZCARD', K) >= dedup_keys then
      redis.call('HINCRBY', M, 'dedup_full', 1)
      local oldest = redis.call('ZRANGE', K, 0, 0, 'WITHSCORES')
      out[1], out[2] = -2, math.max(1, tonumber(oldest[2]) - now)
      break
    end
  end
  if first then
    dups = dups + 1
    out[#out + 1] = tonumber(first)
  else
    if inflight >= cap then
      out[1], out[2] = -3, last_id(S)
      break
    end
    next_id = next_id + 1
    inflight = inflight + 1
    local id = next_id
    pay[#pay + 1] = id; pay[#pay + 1] = ARGV[i]
    cnt[#cnt + 1] = id; cnt[#cnt + 1] = 0
    enq[#enq + 1] = id; enq[#enq + 1] = now
    if delay > 0 then     -- (offer's two cases)
      dly[#dly + 1] = now + delay; dly[#dly + 1] = id
    else
      rdy[#rdy + 1] = id; rdy[#rdy + 1] = id
      ready = true
    end
    if keyed then
      redis.call('ZADD', K, now + dedup_ms, key)
      redis.call('HSET', KI, key, id)
    end
    put = put + 1
    out[#out + 1] = id
  end
end
if put > 0 then
  bulk('HSET', P, pay)
  bulk('HSET', C, cnt)
  bulk('HSET', E, enq)
  bulk('ZADD', Q, rdy)
  bulk('ZADD', D, dly)
  redis.call('HSET', M, 'next_id', next_id)
  redis.call('HINCRBY', M, 'enqueued', put)
end
if dups > 0 then redis.call('HINCRBY', M, 'deduplicated', dups) end
if ready then redis.call('XADD', W, 'MAXLEN', 1, '*', 'w', 1) end
return out
"""

# ARGV: mover's lease ms, max -> {0, then 6 fields per message: 0|1, id,
# deliveries, payload, enqueued ms, why} (0: a delivery held by the caller;
# 1: dead, for the caller to move) | {-1} no queue | {-4, last wake id, ms
# until the next deadline or -1}. A get and a get_many alike (max 1 for a
# get): the delayed messages now due and the held ones past their
# visibility deadline become available (at most %(scan)d of each: bounded);
# then the dead-pending ones whose mover's lease is over are taken, then
# the oldest available, those out of deliveries made dead on the way; when
# nothing comes, the ms until the next deadline (-1: none) for the caller
# to wait. {-5}: shut down and nothing available (at once when shut down
# with immediate=True).
_ACQUIRE = _LUA_HEAD + """
local m = redis.call('HMGET', M, 'vis_ms', 'max_deliveries', 'shutdown')
if not m[1] then return {-1} end
if m[3] == '2' then return {-5} end
local lease = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', D, '-inf', now, 'LIMIT', 0, %(scan)d)
for _, id in ipairs(due) do
  redis.call('ZREM', D, id)
  redis.call('ZADD', Q, id, id)
end
local expired = redis.call('ZRANGEBYSCORE', F, '-inf', now, 'LIMIT', 0, %(scan)d)
for _, id in ipairs(expired) do
  redis.call('ZREM', F, id)
  redis.call('HSET', R, id, 'visibility timeout')
  redis.call('ZADD', Q, id, id)
end
local out = {0}
local function add(kind, id, n)
  out[#out + 1] = kind
  out[#out + 1] = id
  out[#out + 1] = n
  out[#out + 1] = redis.call('HGET', P, id)
  out[#out + 1] = redis.call('HGET', E, id)
  out[#out + 1] = redis.call('HGET', R, id)
end
local dead = redis.call('ZRANGEBYSCORE', X, '-inf', now, 'LIMIT', 0, want)
for _, id in ipairs(dead) do
  redis.call('ZADD', X, now + lease, id)
  add(1, id, redis.call('HGET', C, id))
end
local room = want - #dead
if room > 0 then
  local top = redis.call('ZPOPMIN', Q, room)
  local vis, maxd = tonumber(m[1]), tonumber(m[2])
  local again = 0
  -- one HMGET per hash for what was popped, one HSET and one ZADD for
  -- the deliveries (add's reads, made once for all)
  local ids = {}
  for i = 1, #top, 2 do ids[#ids + 1] = top[i] end
  local ns, pays = multi('HMGET', C, ids), multi('HMGET', P, ids)
  local enqs, whys = multi('HMGET', E, ids), multi('HMGET', R, ids)
  local cset, fadd = {}, {}
  for j, id in ipairs(ids) do
    local n = tonumber(ns[j])
    local kind = 1
    if maxd > 0 and n >= maxd then
      redis.call('ZADD', X, now + lease, id)
    else
      kind = 0
      n = n + 1
      cset[#cset + 1] = id; cset[#cset + 1] = n
      if n > 1 then again = again + 1 end
      fadd[#fadd + 1] = now + vis; fadd[#fadd + 1] = id
    end
    out[#out + 1] = kind
    out[#out + 1] = id
    out[#out + 1] = n
    out[#out + 1] = pays[j]
    out[#out + 1] = enqs[j]
    out[#out + 1] = whys[j]
  end
  bulk('HSET', C, cset)
  bulk('ZADD', F, fadd)
  if again > 0 then redis.call('HINCRBY', M, 'redelivered', again) end
end
if #out > 1 then return out end
if m[3] then return {-5} end
local nxt = -1
for _, z in ipairs({D, F, X}) do
  local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  if #first > 0 then
    local ms = math.max(0, tonumber(first[2]) - now)
    if nxt < 0 or ms < nxt then nxt = ms end
  end
end
return {-4, last_id(W), nxt}
""" % {"scan": _SCAN}

# ARGV: 1 (shutdown) or 2 (immediate) -> the state before; -1: no queue.
# Wakes every get (wake) and put (space) waiting in XREAD.
_SHUTDOWN = """
local m = redis.call('HMGET', KEYS[1], 'kind', 'shutdown')
if not m[1] then return -1 end
local old = tonumber(m[2] or '0')
local new = tonumber(ARGV[1])
if new <= old then return old end
redis.call('HSET', KEYS[1], 'shutdown', new)
redis.call('XADD', KEYS[12], 'MAXLEN', 1, '*', 'w', 1)
redis.call('XADD', KEYS[13], 'MAXLEN', 1, '*', 's', 1)
return old
"""

# The settles: a Delivery's verb and a Batch's alike (one message or many,
# in one call), each message fenced by its delivery count (held_by), as
# the shared-memory core's. ARGV: verb (ack|nack|reject|extend), estale,
# the verb's ms (nack: delay; extend: the new visibility timeout), the
# mover's lease ms, then (id, deliveries) per message -> per message: 0
# (done; nack: available again), 1 (dead: the caller moves it), -ESTALE
_SETTLE = _LUA_HEAD + """
local estale, arg, lease = -tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local m = redis.call('HMGET', M, 'max_deliveries', 'max_in_flight')
local maxd, cap = tonumber(m[1]), tonumber(m[2])
local before = redis.call('HLEN', P)
local ready, acked = false, 0
local function release(id, why)
  redis.call('ZREM', F, id)
  redis.call('HSET', R, id, why)
end
local function dead(id)
  redis.call('ZADD', X, now + lease, id)
  return 1
end
local verbs = {
  ack = function(id)
    redis.call('ZREM', F, id)
    forget(id)
    acked = acked + 1
    return 0
  end,
  nack = function(id, n)
    release(id, 'nacked')
    if maxd > 0 and tonumber(n) >= maxd then return dead(id) end
    if offer(id, arg) then ready = true end
    return 0
  end,
  reject = function(id)
    release(id, 'rejected')
    return dead(id)
  end,
  extend = function(id)
    redis.call('ZADD', F, now + arg, id)
    return 0
  end,
}
local verb = verbs[ARGV[1]]
local out = {}
if ARGV[1] == 'ack' then
  -- held_by of every id at once (ZMSCORE, HMGET), then one ZREM and one
  -- HDEL per hash (verbs.ack's writes) for those held; an id twice in
  -- the call is stale the second time, as after verbs.ack
  local ids, want = {}, {}
  for i = 5, #ARGV, 2 do ids[#ids + 1] = ARGV[i]; want[#want + 1] = ARGV[i + 1] end
  local scores, ns = multi('ZMSCORE', F, ids), multi('HMGET', C, ids)
  local gone, seen = {}, {}
  for j, id in ipairs(ids) do
    if scores[j] and ns[j] == want[j] and not seen[id] then
      seen[id] = true
      gone[#gone + 1] = id
      out[j] = 0
    else
      out[j] = estale
    end
  end
  bulk('ZREM', F, gone)
  for _, h in ipairs({P, C, E, R}) do bulk('HDEL', h, gone) end
  acked = #gone
else
  for i = 5, #ARGV, 2 do
    if held_by(ARGV[i], ARGV[i + 1]) then
      out[#out + 1] = verb(ARGV[i], ARGV[i + 1])
    else
      out[#out + 1] = estale
    end
  end
end
if ready then redis.call('XADD', W, 'MAXLEN', 1, '*', 'w', 1) end
if acked > 0 then
  redis.call('HINCRBY', M, 'acked', acked)
  if before >= cap then redis.call('XADD', S, 'MAXLEN', 1, '*', 's', 1) end
end
return out
"""

# ARGV: id -> 0 (removed) | 1 (not dead-pending: someone else finished it)
_DEAD_DONE = _LUA_HEAD + """
if not redis.call('ZSCORE', X, ARGV[1]) then return 1 end
redis.call('ZREM', X, ARGV[1])
done(ARGV[1], 'dead_lettered')
return 0
"""

# ARGV: id, retry ms
_DEAD_PARK = _LUA_HEAD + """
if not redis.call('ZSCORE', X, ARGV[1]) then return 1 end
redis.call('ZADD', X, now + tonumber(ARGV[2]), ARGV[1])
redis.call('HINCRBY', M, 'dead_letter_parked', 1)
return 0
"""

_STATS = _LUA_HEAD + """
return {redis.call('HGETALL', M), redis.call('ZCARD', Q), redis.call('ZCARD', D),
        redis.call('ZCARD', F), redis.call('ZCARD', X), redis.call('HLEN', P),
        redis.call('ZCARD', K)}
"""

# ARGV: max -> {id, payload, ...} of the messages not done, oldest first
_LIST = _LUA_HEAD + """
local ids = redis.call('HKEYS', P)
local nums = {}
for i, id in ipairs(ids) do nums[i] = tonumber(id) end
table.sort(nums)
local out = {}
local limit = tonumber(ARGV[1])
for i, id in ipairs(nums) do
  if limit >= 0 and i > limit then break end
  if not redis.call('ZSCORE', X, id) then
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGET', P, id)
  end
end
return out
"""


def _ms(seconds: object, what: str) -> int:
    """Seconds as whole ms for the scripts: inf saturates (never); NaN or
    negative is a ValueError."""
    s = _api.check_seconds(seconds, what)
    return NEVER_MS if s * 1000 >= NEVER_MS else int(math.ceil(s * 1000))


def _key_bytes(key: Any) -> bytes:
    """A dedup key as the scripts take it: b"" for none, the empty key b"\\0"."""
    if key is None:
        return b""
    return _codec.as_bytes(key, "key") or b"\0"  # the empty key is a key


class RedisWorkQueue(RedisHandle, _api.WorkQueueAPI):
    """pyqueue.WorkQueue on Redis; made by `pyqueue.connect(url).WorkQueue(...)`
    (the same signature; capacity_bytes bounds the message size as on shared
    memory, a quarter of it, and max_in_flight the messages not done)."""

    __slots__ = ("_name", "_keys", "_closed", "_dlq", "_settings", "_serializer", "__weakref__")
    KIND = KIND
    _what = "work queue"
    # pyqueue.asyncio's reserved deliveries (aio.py): unlink() removes them.
    _aio_sets = ("wq.rsv",)
    _aio_keys = ("wq.res:",)
    dead_letter_timeout = 1.0
    dead_letter_retry = 1.0
    _dlq: Optional[RedisWorkQueue]
    _settings: Dict[str, Any]

    def __init__(self, name: Optional[str] = None, *,
                 capacity_bytes: Any = _Default(DEFAULT_CAPACITY),
                 max_in_flight: Any = _Default(DEFAULT_MAX_IN_FLIGHT),
                 visibility_timeout: Any = _Default(DEFAULT_VISIBILITY_TIMEOUT),
                 max_deliveries: Any = _Default(DEFAULT_MAX_DELIVERIES),
                 dead_letter: Any = _Default(None),
                 dedup_window: Any = _Default(DEFAULT_DEDUP_WINDOW),
                 dedup_keys: Any = _Default(DEFAULT_DEDUP_KEYS), perm: Any = _Default(0o600),
                 trust_owner: bool = False, serializer: Serializer = None,
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
        name = self._new_name(name)
        self._init_handle(name)
        self._serializer = serializer
        dlq_name = ""
        if dead_letter is not None:
            if isinstance(dead_letter, RedisWorkQueue):
                if dead_letter._backend is not self._backend:
                    raise ValueError("the dead-letter queue must be on the same backend")
                self._dlq = dead_letter
                dlq_name = dead_letter.name
            elif isinstance(dead_letter, str):
                check_name(dead_letter)
                dlq_name = dead_letter
            else:
                raise TypeError("dead_letter must be a WorkQueue, a queue name, or None")
        max_payload = capacity // 4
        if dead_letter is not None and not _open_only:
            if self._dlq is None:
                self._dlq = self._open_dead_letter(dead_letter, capacity)
            max_payload = min(max_payload, _shm.WorkQueue._dead_letter_room(self._dlq))
        created = self._create(
            "open" if _open_only else "create", capacity, slots,
            _ms(visibility_timeout, "visibility_timeout"), max_deliveries or 0,
            _ms(dedup_window, "dedup_window"), dedup, perm, dlq_name, max_payload,
            int(serializer is not None))
        # The serializer against the queue's flag, as on shared memory.
        if serializer is not None and not self._settings["custom"]:
            check_settings("work queue", name, [("serializer", None, "a custom serializer")])
        if serializer is None and self._settings["custom"]:
            raise PyQueueError(f"work queue {name!r} was created with a custom serializer: pass "
                               "the same serializer= to open it")
        if not created and given:
            st = self._settings
            stored: Dict[str, Any] = {"capacity_bytes": st["capacity"], "max_in_flight": st["max_in_flight"],
                      "visibility_timeout": st["vis_ms"] / 1000.0,
                      "max_deliveries": st["max_deliveries"] or None,
                      "dedup_window": st["dedup_ms"] / 1000.0, "dedup_keys": st["dedup_keys"],
                      "perm": st["perm"], "dead_letter": st["dead_letter"] or None}
            wanted = dict(given, capacity_bytes=capacity,
                          visibility_timeout=_ms(visibility_timeout, "") / 1000.0,
                          dedup_window=_ms(dedup_window, "") / 1000.0,
                          dead_letter=dlq_name or None)
            differences = [(what, stored[what], wanted[what]) for what in given
                           if not _shm._same_setting(stored[what], wanted[what])]
            check_settings("work queue", name, differences)
        if self._dlq is not None and self.max_message_bytes > _shm.WorkQueue._dead_letter_room(
                self._dlq):
            raise ValueError(
                f"work queue {name!r} takes messages of {self.max_message_bytes} bytes, which "
                f"do not fit in dead-letter queue {self._dlq.name!r} (max_message_bytes "
                f"{self._dlq.max_message_bytes}, less {DEAD_LETTER_OVERHEAD} for the DeadLetter)")

    @classmethod
    def open(cls, name: str, trust_owner: bool = False, *,
             serializer: Serializer = None) -> RedisWorkQueue:
        """Open an existing work queue by name (SegmentNotFound if missing)."""
        return cls(name, serializer=serializer, _open_only=True)

    def _init_handle(self, name: str) -> None:
        self._name = name
        self._closed = False
        self._dlq = None
        # The meta key is the one a Queue of that name would have: one name,
        # one kind (SegmentMismatch across kinds, as on shared memory).
        self._keys = tuple(key_prefix(name) + ("meta" if k == "meta" else "wq." + k)
                           for k in _KEYS)

    def _create(self, how: str, capacity: int, slots: int, vis_ms: int, max_deliveries: int,
                dedup_ms: int, dedup: int, perm: int, dlq_name: str, max_payload: int,
                custom: int) -> bool:
        r = self._create_meta(_CREATE, how, [capacity, slots, vis_ms, max_deliveries, dedup_ms,
                                             dedup, perm, dlq_name, max_payload, custom])
        names = ("capacity", "max_in_flight", "vis_ms", "max_deliveries", "dedup_ms",
                 "dedup_keys", "perm")
        self._settings = {k: int(v) for k, v in zip(names, r[2:9])}
        self._settings["dead_letter"] = r[9].decode()
        self._settings["max_payload"] = int(r[10])
        self._settings["custom"] = int(r[11])
        return bool(r[0] == 1)

    def _script(self, name: str, source: str, args: Sequence[Any] = ()) -> Any:
        self._check_open()
        return super()._script(name, source, args)

    # -- settings ----------------------------------------------------------
    @property
    def capacity_bytes(self) -> int:
        return int(self._settings["capacity"])

    @property
    def max_in_flight(self) -> int:
        return int(self._settings["max_in_flight"])

    @property
    def visibility_timeout(self) -> float:
        return float(self._settings["vis_ms"]) / 1000.0

    @property
    def max_deliveries(self) -> Optional[int]:
        return int(self._settings["max_deliveries"]) or None

    @property
    def dedup_window(self) -> float:
        return float(self._settings["dedup_ms"]) / 1000.0

    @property
    def dedup_keys(self) -> int:
        return int(self._settings["dedup_keys"])

    @property
    def max_message_bytes(self) -> int:
        return int(self._settings["max_payload"])

    def _lease_ms(self) -> int:
        # How long a mover holds a dead-pending message before another
        # get may move it: the visibility timeout, and at least the time
        # a move may wait for room in the dead-letter queue.
        return max(int(self._settings["vis_ms"]),
                   _ms(self.dead_letter_timeout + self.dead_letter_retry, "lease"))

    def _open_dead_letter(self, name: str, capacity: int) -> RedisWorkQueue:
        cls = self._bound.WorkQueue
        try:
            q: RedisWorkQueue = cls.open(name)
        except SegmentNotFound:
            q = cls(name=name, capacity_bytes=max(capacity, 64 * 1024), max_deliveries=None)
        return q

    @property
    def dead_letter(self) -> Optional[RedisWorkQueue]:
        """The dead-letter queue (a WorkQueue of this backend), or None."""
        if self._dlq is None and self._settings["dead_letter"]:
            self._dlq = self._open_dead_letter(self._settings["dead_letter"],
                                               self.capacity_bytes)
        return self._dlq

    # -- producing ---------------------------------------------------------
    def put(self, obj: Any, *, key: Any = None, delay: float = 0.0, block: bool = True,
            timeout: Optional[float] = None) -> int:
        """Add a message (available from delay seconds on); its id. With a
        key (bytes or str), a put of a key already put within dedup_window
        seconds is dropped and returns the first one's id. queue.Full when
        there is no room in time (block=False: at once)."""
        self._check_open()
        delay_ms = _ms(delay, "delay")
        data = _codec.encode(obj, self._serializer)
        if len(data) - 1 > self.max_message_bytes:
            raise MessageTooLarge(f"message of {len(data) - 1} bytes exceeds the work queue's "
                                  f"limit of {self.max_message_bytes} bytes (max_message_bytes)")
        return self._put_encoded([data, _key_bytes(key)], delay_ms, block, timeout, True)[0]

    # put_many() is pyqueue.WorkQueue's, over _put_many below (its `self`
    # is typed as the shared-memory class: Any here).
    put_many: Any = _shm.WorkQueue.put_many

    def _put_many(self, objs: Iterable[Any], keys: Optional[Iterable[Any]], delay: float,
                  block: bool, timeout: Optional[float]) -> List[int]:
        """The ids of objs put, _PUT_CHUNK messages per script (each chunk
        one atomic step); queue.Full (.ids: those put) when the rest has
        no room in time."""
        self._check_open()
        delay_ms = _ms(delay, "delay")
        items = list(objs)
        n = len(items)
        key_list = None if keys is None else list(keys)
        if key_list is not None and len(key_list) != n:
            raise ValueError(f"put_many got {n} objects and {len(key_list)} keys")
        # Everything encoded and checked before anything is put.
        args: List[Any] = []
        limit = self.max_message_bytes
        for i, obj in enumerate(items):
            data = _codec.encode(obj, self._serializer)
            if len(data) - 1 > limit:
                raise MessageTooLarge(
                    f"message {i} of put_many has {len(data) - 1} bytes, more than the work "
                    f"queue's limit of {limit} bytes (max_message_bytes); nothing was put")
            args.append(data)
            args.append(_key_bytes(None if key_list is None else key_list[i]))
        return self._put_encoded(args, delay_ms, block, timeout, False)

    def _put_encoded(self, args: List[Any], delay_ms: int, block: bool,
                     timeout: Optional[float], one: bool) -> List[int]:
        """Puts the (payload, key) pairs of args, _PUT_CHUNK per script,
        waiting for room or for a dedup key to expire up to the deadline;
        their ids. queue.Full when the rest has no room in time (of a
        put_many: with .ids, those put; one: put's own message)."""
        n = len(args) // 2
        ids: List[int] = []
        until = _api.deadline(block, timeout)
        b = self._bound
        start = 0
        while start < n:
            chunk = args[2 * start:2 * min(n, start + _PUT_CHUNK)]
            try:
                r: List[Any] = self._script("wq_put_many", _PUT_MANY, [delay_ms] + chunk)
            except ConnectionLost as e:
                e.ids = ids                # committed; this chunk: all or nothing
                raise
            if r[0] == -1:
                raise SegmentNotFound(f"work queue {self._name!r} was removed from {b.url}")
            if r[0] == -5:
                shut = ShutDown(f"work queue {self._name!r} is shut down")
                shut.ids = ids  # type: ignore[attr-defined]  # (what was committed)
                raise shut
            ids.extend(int(x) for x in r[2:])
            start += len(r) - 2
            if r[0] == 0:
                continue
            left = _api.remaining(until)
            if r[0] == -2:
                if left == 0.0 or (left is not None and left < r[1] / 1000.0):
                    if one:
                        raise Full(f"the dedup table holds {self.dedup_keys} keys put within "
                                   f"the last {self.dedup_window} s (dedup_keys, "
                                   f"dedup_window): a new key waits for the oldest to expire")
                    raise _api.put_many_full(ids, "the dedup table is full (dedup_keys, "
                                                  "dedup_window)")
                time.sleep(r[1] / 1000.0)  # until the oldest key expires (a deadline)
                continue
            if left == 0.0:
                raise Full() if one else _api.put_many_full(ids)
            b.wait_stream(self._keys[12], r[1], left)
        return ids

    # -- shutdown -----------------------------------------------------------
    def shutdown(self, immediate: bool = False) -> None:
        """As pyqueue.WorkQueue.shutdown, for every process and host: puts
        raise ShutDown; gets deliver what is ready, then raise it (at once
        with immediate=True); nothing is discarded; every waiting get and
        put wakes."""
        self._check_open()
        if self._script("wq_shutdown", _SHUTDOWN, [2 if immediate else 1]) < 0:
            raise SegmentNotFound(f"work queue {self._name!r} was removed from "
                                  f"{self._bound.url}")

    @property
    def is_shutdown(self) -> bool:
        """Whether the work queue was shut down (by any process)."""
        return self._bound.client.hget(self._keys[0], "shutdown") is not None

    # -- consuming ---------------------------------------------------------
    # get() is pyqueue.WorkQueue's (delivers, moves dead messages, rejects
    # the undecodable), over _get/_reject/_decode below.
    # (Their `self` is typed as the shared-memory class: Any here.)
    get: Any = _shm.WorkQueue.get
    _move_dead: Any = _shm.WorkQueue._move_dead
    _move_dead_quietly: Any = _shm.WorkQueue._move_dead_quietly

    def _get(self, block: bool, timeout: Optional[float]) -> Tuple[Any, ...]:
        """(kind, id, deliveries, raw, type, enqueued_ms, reason) as
        pyqueue.WorkQueue's core returns it; queue.Empty in time."""
        r = self._acquire(1, block, timeout)
        reason = r[6].decode() if r[6] is not None else None
        return (r[1], int(r[2]), int(r[3]), r[4], None, int(r[5]), reason)

    def _acquire(self, want: int, block: bool, timeout: Optional[float]) -> List[Any]:
        """_ACQUIRE's reply with up to `want` messages (one at least),
        waiting for one up to the deadline; queue.Empty in time."""
        until = _api.deadline(block, timeout)
        b = self._bound
        while True:
            r: List[Any] = self._script("wq_acquire", _ACQUIRE, [self._lease_ms(), want])
            if r[0] == 0:
                return r
            if r[0] == -1:
                raise SegmentNotFound(f"work queue {self._name!r} was removed from {b.url}")
            if r[0] == -5:
                raise ShutDown(f"work queue {self._name!r} is shut down")
            left = _api.remaining(until)
            if left == 0.0:
                raise Empty()
            if r[2] >= 0:
                due = r[2] / 1000.0
                left = due if left is None else min(left, due)
            b.wait_stream(self._keys[11], r[1], left)

    # get_many() is pyqueue.WorkQueue's too, over _get_many.
    get_many: Any = _shm.WorkQueue.get_many

    def _get_many(self, max_messages: int, block: bool, timeout: Optional[float]
                  ) -> Tuple[Batch, List[Any], List[Any]]:
        """(batch, dead, poison) as pyqueue.WorkQueue's core returns them:
        up to max_messages taken by one script (waits for one at least);
        queue.Empty in time."""
        self._check_open()
        want = min(_api.check_max_messages(max_messages), self.max_in_flight)
        r = self._acquire(want, block, timeout)
        # From here on Python code runs (unpickling): only this call's objects.
        batch = Batch._new(self)
        dead: List[Any] = []
        poison: List[Any] = []
        for j in range(1, len(r), 6):
            kind, mid, n, raw, enq, why = r[j:j + 6]
            mid, n, enq = int(mid), int(n), int(enq)
            reason = why.decode() if why is not None else None
            if kind == 1:
                dead.append((mid, n, raw, None, enq, reason))
                continue
            try:
                value = self._decode(raw, None)
            except Exception as e:  # poison: still held, to reject
                poison.append((mid, n, raw, None, enq, e))
                continue
            batch._add(value, mid, n, enq, reason)
        return batch, dead, poison

    def _decode(self, raw: bytes, typ: Any) -> Any:
        return _codec.decode(raw, self._serializer)

    # The verbs return 0 (done), 1 (nack: it is dead now, to be moved) or
    # -ESTALE (the delivery is no longer this handle's), as the core's.
    def _settle(self, verb: str, ms: int, pairs: List[Any]) -> List[int]:
        """_SETTLE's results for the (id, deliveries) pairs."""
        return [int(x) for x in self._script("wq_settle", _SETTLE, [verb, ESTALE, ms, self._lease_ms()] + pairs)]

    def _ack(self, mid: int, deliveries: int) -> int:
        return self._settle("ack", 0, [mid, deliveries])[0]

    def _nack(self, mid: int, deliveries: int, delay: float) -> int:
        return self._settle("nack", _ms(delay, "delay"), [mid, deliveries])[0]

    def _reject(self, mid: int, deliveries: int) -> int:
        r = self._settle("reject", 0, [mid, deliveries])[0]
        return 0 if r == 1 else r       # the core's: 0 is "dead, to be moved"

    def _extend(self, mid: int, deliveries: int, seconds: float) -> int:
        return self._settle("extend", _ms(seconds, "seconds"), [mid, deliveries])[0]

    def _dead_done(self, mid: int) -> Any:
        return self._script("wq_dead_done", _DEAD_DONE, [mid])

    def _dead_park(self, mid: int, retry: float) -> Any:
        return self._script("wq_dead_park", _DEAD_PARK, [mid, _ms(retry, "retry")])

    def _copy(self, mid: int) -> Optional[Tuple[Any, None]]:
        raw = self._bound.client.hget(self._keys[1], mid)
        return None if raw is None else (raw, None)

    # -- the dead-letter side ----------------------------------------------
    def dead_letters(self, max_messages: Optional[int] = None) -> List[DeadLetter]:
        """The DeadLetters waiting in this queue (used as a dead-letter
        queue), without taking them."""
        if max_messages is not None:
            max_messages = _api.check_max_messages(max_messages)
        r: List[Any] = self._script("wq_list", _LIST,
                                    [-1 if max_messages is None else max_messages])
        out: List[DeadLetter] = []
        for raw in r[1::2]:
            value = self._decode(raw, None)
            if isinstance(value, DeadLetter):
                out.append(value)
        return out

    def requeue(self, max_messages: Optional[int] = None, to: Any = None) -> int:
        """Take dead letters from this queue and put their values back into
        the queue each came from (or `to`); the count moved."""
        if max_messages is not None:
            max_messages = _api.check_max_messages(max_messages)
        moved = 0
        while max_messages is None or moved < max_messages:
            try:
                d: Any = self.get(block=False)
            except Empty:
                break
            dl = d.value
            if not isinstance(dl, DeadLetter):
                d.nack()
                raise TypeError(f"message {d.id} of {self._name!r} is not a DeadLetter")
            target = to if to is not None else self._bound.WorkQueue.open(dl.queue)
            target.put(dl.value if dl.raw is None else dl.raw)
            d.ack()
            moved += 1
        return moved

    # -- the rest ------------------------------------------------------------
    def stats(self) -> Dict[str, Any]:
        """pyqueue.WorkQueue's stats() keys (abandoned is always 0 here: a
        put is one script), plus backend and url."""
        r: List[Any] = self._script("wq_stats", _STATS)
        meta = dict(zip(r[0][::2], r[0][1::2]))
        if not meta:
            raise SegmentNotFound(f"work queue {self._name!r} was removed from "
                                  f"{self._bound.url}")
        s: Dict[str, Any] = {k: int(meta[k.encode()]) for k in ("enqueued", "acked", "redelivered",
                                                "dead_lettered", "deduplicated", "dedup_full",
                                                "dead_letter_parked")}
        s.update(depth=r[1], delayed=r[2], in_flight=r[3], dead_pending=r[4], abandoned=0,
                 dedup_keys_used=r[6], capacity=self.capacity_bytes, used_bytes=None,
                 max_in_flight=self.max_in_flight, consistent=True,
                 dead_letter=self._settings["dead_letter"] or None, backend="redis",
                 url=self._bound.url)
        return s

    def qsize(self) -> int:
        """Messages not done: available, delayed, held or being moved."""
        self._check_open()
        return int(self._bound.client.hlen(self._keys[1]))


class Batch(_api.BatchAPI):
    """What RedisWorkQueue.get_many() returns: pyqueue.Batch's interface
    (pyqueue._api.BatchAPI), each settle of many one script, fenced per
    message as a Delivery's verbs are."""

    __slots__ = ("values", "_ids", "_dels", "_enq_ms", "_reasons", "_state", "_queue")
    values: List[Any]
    _ids: List[int]
    _dels: List[int]
    _enq_ms: List[int]
    _reasons: List[Optional[str]]
    _state: List[Any]
    _queue: RedisWorkQueue

    def __init__(self) -> None:
        raise TypeError("a Batch comes from WorkQueue.get_many()")

    @classmethod
    def _new(cls, queue: RedisWorkQueue) -> Batch:
        b = object.__new__(cls)
        b._queue = queue
        b.values, b._ids, b._dels, b._enq_ms, b._reasons, b._state = [], [], [], [], [], []
        return b

    def _add(self, value: Any, mid: int, deliveries: int, enqueued_ms: int,
             reason: Optional[str]) -> None:
        self.values.append(value)
        self._ids.append(mid)
        self._dels.append(deliveries)
        self._enq_ms.append(enqueued_ms)
        self._reasons.append(reason)
        self._state.append(_api.HELD)

    @staticmethod
    def _seconds(value: object, what: str) -> int:
        return _ms(value, what)

    def _settle(self, verb: Any, pick: Iterable[int], arg: Any) -> List[int]:
        pairs: List[Any] = []
        for i in pick:
            pairs.append(self._ids[i])
            pairs.append(self._dels[i])
        return self._queue._settle(_VERBS[verb], arg or 0, pairs)


_VERBS = {_api.ACKED: "ack", _api.NACKED: "nack", _api.REJECTED: "reject", _api.HELD: "extend"}

Empty = _api.Empty
Full = _api.Full
