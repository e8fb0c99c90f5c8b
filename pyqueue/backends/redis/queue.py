"""Queue and JoinableQueue on Redis: a list per queue.

Keys (the name in a hash tag, so that all of a queue's keys are in one
cluster slot and its Lua scripts stay legal on Redis Cluster):

    pq:{NAME}:meta   hash: kind, joinable, settings, counters, unfinished
    pq:{NAME}:list   list of encoded messages, oldest at the head (RPUSH/LPOP)
    pq:{NAME}:space  stream (MAXLEN 1): an entry each time a get takes from a
                     full bounded queue; a blocked put waits on it (XREAD BLOCK)
    pq:{NAME}:zero   stream (MAXLEN 1): an entry each time the unfinished count
                     of a JoinableQueue reaches 0; join() waits on it
    pq:{NAME}:shut   list of wake tokens: shutdown() pushes one per get
                     blocked at that moment (the meta hash's "waiting"
                     count); a get blocks in BLPOP on list and shut
    pq:{NAME}:down   stream (MAXLEN 1): an entry when the queue is shut down
                     (the wake of pyqueue.asyncio's gets, which wait in
                     BLMOVE on list and XREAD on down: aio.py)
    pq:{NAME}:res:H  list: handle H's reservation (pyqueue.asyncio, aio.py);
    pq:{NAME}:resn:H its count of messages handed out; pq:{NAME}:rsv the set
                     of handles that hold one; pq:{NAME}:rsv.lease a sorted
                     set: handle -> its lease's deadline (server ms), past
                     which its reservation is reaped (unlink() removes them)

The meta hash's "shutdown" field (absent: in use; 1: shut down; 2: shut
down with immediate=True) is set by the shutdown script, read by the put
script (refusing) and by the take script (ShutDown once the list is
empty); the take script that finds the list empty, not shut down, counts
the get in "waiting" before it blocks, and the call after the BLPOP counts
it out, so a shutdown pushes a token for every get blocked then (a
waiter that died leaves the count one high: one token too many,
harmless). The count may also end low: the cluster client and
min_replicas= send a script again when its reply was lost, and a take
script sent twice counts its get out twice. So the shutdown pushes at
least one token, and a get woken by a token pushes it back (in the
script that counts it out): every get blocked is woken, one after the
other if need be. The tokens left are as many as pushed, and never read
once the flag is set (a get reads it before it blocks). A token taken
by a get killed before it passed it on is lost; so a get waits in
slices of WAIT_SLICE seconds, each ended by a plain read of the flag
(no write: nothing for min_replicas to confirm, no count to keep).
The documentation's Design page, "Shutdown".

Every step that reads and writes is one Lua script (atomic), or for a
batch of TRANSACTION_FROM messages or more one MULTI/EXEC of a plain RPUSH
or LPOP beside its script (_PUT_PUSHED, _TAKE_COUNTED); a waiting put
or join reads its stream's last id in the same script that found the queue
full (or the count non-zero), then blocks in XREAD from that id: an event
after the check always wakes it, and nothing spins. A get that finds the
list empty blocks in BLPOP. The documentation's Design page, "Backends".
"""
from __future__ import annotations

import collections
import os
from typing import Any, Deque, Dict, Iterable, List, Optional, Sequence, Tuple

from pyqueue import _api
from pyqueue.backends.redis import ConnectionLost, _codec
from pyqueue.backends.redis._handle import (RedisHandle, check_name,  # noqa: F401 (re-exported)
                                            key_prefix)
from pyqueue.errors import (MessageTooLarge, SegmentMismatch, SegmentNotFound, ShutDown,
                            UndecodableMessage)
from pyqueue.queues import (_D_CAPACITY, _D_MAX_MESSAGE, _D_MAXSIZE, _D_MODE, _D_OVERFLOW,
                            _check_serializer, _round_capacity, _take, check_settings)
from pyqueue.backends.redis._codec import Serializer

KIND = "queue"
BATCH = 1000          # messages per script call of put_many
# A get waiting with no timeout (or a long one) looks at the shutdown flag
# at least this often (seconds): the shutdown's wake tokens are the fast
# path, and one can be lost with the get that took it (module docstring).
WAIT_SLICE = 5.0
NO_ID = b"0-0"

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  if ARGV[1] == 'open' then return false end
  redis.call('HSET', KEYS[1], 'kind', ARGV[2], 'joinable', ARGV[3], 'maxsize', ARGV[4],
             'overflow', ARGV[5], 'max_message', ARGV[6], 'custom', ARGV[7],
             'capacity', ARGV[8], 'mode', ARGV[9], 'unfinished', 0, 'enqueued', 0,
             'dequeued', 0, 'dropped', 0, 'rejected', 0)
  return {1, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]}
end
local m = redis.call('HMGET', KEYS[1], 'kind', 'joinable', 'maxsize', 'overflow',
                     'max_message', 'custom', 'capacity', 'mode')
return {0, m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8]}
"""

# The put, in two forms that share its decision (what fits, what is
# dropped, the counts): _PUT carries the messages in ARGV and pushes them
# itself; _PUT_PUSHED runs right after a plain RPUSH of them in one
# MULTI/EXEC (put_many's batches: Lua copies each message in and out,
# three times the server's cost of the RPUSH) and takes back what does
# not go in. KEYS: meta, list, space, zero.
# -> {accepted, last id of space (when not all were accepted)}; {-1}: no
# queue; {-2}: shut down (nothing put)
_PUT_HEAD = """
local m = redis.call('HMGET', KEYS[1], 'maxsize', 'overflow', 'joinable', 'unfinished',
                     'shutdown')
"""
_PUT_DECIDE = """
local maxsize = tonumber(m[1])
local from, to, accepted, dropped = 1, n, n, 0
if maxsize > 0 and len + n > maxsize then
  if m[2] == 'drop_oldest' then
    dropped = len + n - maxsize
  else
    to = math.max(0, maxsize - len)
    accepted = to
  end
end
"""
_PUT_COUNT = """
if accepted > 0 then redis.call('HINCRBY', KEYS[1], 'enqueued', accepted) end
if dropped > 0 then redis.call('HINCRBY', KEYS[1], 'dropped', dropped) end
if m[3] == '1' then
  -- a dropped message is never got: it counts as done
  local before = tonumber(m[4])
  local after = redis.call('HINCRBY', KEYS[1], 'unfinished', accepted - dropped)
  if after <= 0 then
    if after < 0 then redis.call('HSET', KEYS[1], 'unfinished', 0) end
    if before > 0 then redis.call('XADD', KEYS[4], 'MAXLEN', 1, '*', 'z', 1) end
  end
end
if accepted < n then
  if m[2] == 'reject' then redis.call('HINCRBY', KEYS[1], 'rejected', n - accepted) end
  local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
  if #last > 0 then return {accepted, last[1][1]} end
  return {accepted, '0-0'}
end
return {accepted}
"""
# ARGV: the encoded messages.
_PUT = _PUT_HEAD + """
if not m[1] then return {-1} end
if m[5] then return {-2} end
local n = #ARGV
-- (the length matters only to a bounded queue: an unbounded one's put is
-- one command less)
local len = 0
if tonumber(m[1]) > 0 then len = redis.call('LLEN', KEYS[2]) end
""" + _PUT_DECIDE + """
if dropped > 0 then
  local old = math.min(dropped, len)
  if old > 0 then redis.call('LTRIM', KEYS[2], old, -1) end
  from = 1 + dropped - old
end
local i = from
while i <= to do
  local j = math.min(i + 999, to)
  redis.call('RPUSH', KEYS[2], unpack(ARGV, i, j))
  i = j + 1
end
""" + _PUT_COUNT
# ARGV: n, the number of messages the RPUSH before it appended (they are
# the list's last n): what does not go in is trimmed off again (the
# oldest for drop_oldest, else the last of them), all of them when the
# queue is gone or shut down - and when the meta hash cannot be read (a
# key made by hand in its place: checked before anything is written, so
# that a script error never leaves the batch in the list unchecked).
_PUT_PUSHED = """
local n = tonumber(ARGV[1])
local len = redis.call('LLEN', KEYS[2]) - n
local ok, m = pcall(redis.call, 'HMGET', KEYS[1], 'maxsize', 'overflow', 'joinable',
                    'unfinished', 'shutdown')
local damaged = not ok or (m[1] and (not tonumber(m[1]) or (m[3] == '1' and not tonumber(m[4]))))
if damaged or not m[1] or m[5] then
  if len > 0 then redis.call('LTRIM', KEYS[2], 0, len - 1) else redis.call('DEL', KEYS[2]) end
  if damaged then
    return redis.error_reply('ERR pyqueue: the meta hash ' .. KEYS[1] .. ' is damaged (nothing put)')
  end
  if not m[1] then return {-1} end
  return {-2}
end
""" + _PUT_DECIDE + """
if dropped > 0 then
  redis.call('LTRIM', KEYS[2], dropped, -1)
elseif accepted < n then
  if len + accepted > 0 then redis.call('LTRIM', KEYS[2], 0, len + accepted - 1)
  else redis.call('DEL', KEYS[2]) end
end
""" + _PUT_COUNT

# KEYS: meta, list, space, shut; ARGV: max messages, messages already taken
# (by BLPOP), "+" (count this get in "waiting" if it will block), "-" (it
# blocked: count it out), "t" (it blocked and BLPOP gave it a shutdown's
# wake token: count it out and push the token back, for the next get
# blocked) or "".
# Takes up to ARGV[1] messages, counts ARGV[2] + those, and tells a waiting
# put when the queue was full. -> {0, messages...}; {1}: empty and shut
# down; {2}: no queue (removed). Two forms, as the put: _TAKE pops the
# messages itself; _TAKE_COUNTED only counts the min(ARGV[1], length)
# that the plain LPOP right after it in one MULTI/EXEC pops
# (get_many's batches) -> {0, count}, {1}, {2}. (A list whose meta hash
# was deleted by hand would still be popped by that LPOP: pyqueue's own
# removal deletes every key in one command.)
_TAKE_TEMPLATE = """
local function damaged()
  return redis.error_reply('ERR pyqueue: the keys of ' .. KEYS[1] .. ' are damaged (nothing taken)')
end
local ok, m = pcall(redis.call, 'HMGET', KEYS[1], 'maxsize', 'shutdown')
if ok and not m[1] then return {2} end
local maxsize = ok and tonumber(m[1])
if not maxsize then return damaged() end
-- The length before this take: a bounded queue's (was it full?) and the
-- counted form's; an unbounded queue's plain take pops without it.
local len, okl = 0, true
if maxsize > 0 or %(need_len)s then okl, len = pcall(redis.call, 'LLEN', KEYS[2]) end
if not okl then return damaged() end
-- (before the pop: one of these that fails - a key made by hand - ends
-- the script before it took anything; the get that waited is counted
-- out, and a token passed on, whether the pop then succeeds or not)
if ARGV[3] == '-' or ARGV[3] == 't' then redis.call('HINCRBY', KEYS[1], 'waiting', -1) end
if ARGV[3] == 't' then redis.call('RPUSH', KEYS[4], 'w') end
local want = tonumber(ARGV[1])
local before = tonumber(ARGV[2])
%(pop)s
local taken = got + before
if taken > 0 then
  redis.call('HINCRBY', KEYS[1], 'dequeued', taken)
  if maxsize > 0 and len + before >= maxsize then
    redis.call('XADD', KEYS[3], 'MAXLEN', 1, '*', 's', 1)
  end
elseif m[2] then
  return {1}
elseif ARGV[3] == '+' then
  redis.call('HINCRBY', KEYS[1], 'waiting', 1)
end
%(reply)s
"""
_TAKE = _TAKE_TEMPLATE % {
    "need_len": "false",
    # (a list of another type, made by hand: refused, nothing taken)
    "pop": """local items = {}
if want > 0 then
  local okp, popped = pcall(redis.call, 'LPOP', KEYS[2], want)
  if not okp then return damaged() end
  if popped then items = popped end
end
local got = #items""",
    "reply": """table.insert(items, 1, 0)
return items"""}
_TAKE_COUNTED = _TAKE_TEMPLATE % {
    "need_len": "true",
    "pop": "local got = math.min(want, len)",
    "reply": "return {0, got}"}
# Batches from this many messages on go through MULTI/EXEC (_PUT_PUSHED,
# _TAKE_COUNTED); smaller ones through the one script (a transaction costs
# more than Lua's copies of a few messages).
TRANSACTION_FROM = 16

# KEYS: meta, list, space, zero, shut, down; ARGV: 1 (shutdown) or 2 (immediate).
# -> the state before; -1: no queue. Sets the flag; immediate drops what is
# queued (counted as dropped, one task_done each); wakes the puts waiting
# for room (space) and pushes a token for each get blocked in BLPOP.
_SHUTDOWN = """
local m = redis.call('HMGET', KEYS[1], 'kind', 'shutdown', 'joinable', 'unfinished', 'waiting')
if not m[1] then return -1 end
local old = tonumber(m[2] or '0')
local new = tonumber(ARGV[1])
if new <= old then return old end
redis.call('HSET', KEYS[1], 'shutdown', new)
if new == 2 then
  local n = redis.call('LLEN', KEYS[2])
  if n > 0 then
    redis.call('DEL', KEYS[2])
    redis.call('HINCRBY', KEYS[1], 'dropped', n)
    if m[3] == '1' then
      local before = tonumber(m[4])
      local after = redis.call('HINCRBY', KEYS[1], 'unfinished', -n)
      if after <= 0 then
        if after < 0 then redis.call('HSET', KEYS[1], 'unfinished', 0) end
        if before > 0 then redis.call('XADD', KEYS[4], 'MAXLEN', 1, '*', 'z', 1) end
      end
    end
  end
end
if old == 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', 1, '*', 's', 1)
  redis.call('XADD', KEYS[6], 'MAXLEN', 1, '*', 'd', 1)
  local w = math.max(tonumber(m[5] or '0'), 1)
  while w > 0 do
    local k = math.min(w, 1000)
    local t = {}
    for i = 1, k do t[i] = 'w' end
    redis.call('RPUSH', KEYS[5], unpack(t))
    w = w - k
  end
end
return old
"""

# KEYS: meta, zero -> the unfinished count after; -1: it was already 0
_TASK_DONE = """
local u = tonumber(redis.call('HGET', KEYS[1], 'unfinished') or '0')
if u <= 0 then return -1 end
u = redis.call('HINCRBY', KEYS[1], 'unfinished', -1)
if u == 0 then redis.call('XADD', KEYS[2], 'MAXLEN', 1, '*', 'z', 1) end
return u
"""

# KEYS: meta, zero -> {1} when nothing is unfinished, else {0, last id of zero}
_JOIN = """
local u = tonumber(redis.call('HGET', KEYS[1], 'unfinished') or '0')
if u <= 0 then return {1} end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #last > 0 then return {0, last[1][1]} end
return {0, '0-0'}
"""


# Forks of this process so far: the creator's close() of an unnamed queue
# removes it only if no child may hold a handle of it (a forked child
# inherits handles without pickling them).
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_parent=_count_fork)


# KEYS: meta. A get that stops waiting counts itself out of "waiting",
# unless the queue was removed (a HINCRBY would make its meta hash again).
_COUNT_OUT = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HINCRBY', KEYS[1], 'waiting', -1) end
"""


def _took(reply: Any) -> bool:
    """Whether a take's reply ({0, messages...}, {1}, {2}) took messages."""
    return isinstance(reply, list) and len(reply) > 1


def _count_out(b: Any, meta: str) -> None:
    """_COUNT_OUT, at most once and never raising (a get's own error is
    what it raises; a count left one high is harmless: the module's
    docstring)."""
    try:
        b.call([meta], "EVAL", _COUNT_OUT, 1, meta)
    except Exception:  # noqa: BLE001 - a best effort (redis' own errors included)
        pass


def _raise_error(reply: Any) -> None:
    """A reply from a transaction's list: raised when it is an error."""
    if isinstance(reply, Exception):
        raise reply


class RedisQueue(RedisHandle, _api.QueueAPI):
    """pyqueue.Queue on Redis; made by `pyqueue.connect(url).Queue(...)`
    (same signature as pyqueue.Queue; capacity_bytes and mode are stored
    and compared like the shared-memory queue's, but bound nothing here)."""

    __slots__ = ("_name", "_serializer", "_keys", "_maxsize", "_overflow", "_max_message",
                 "_custom", "_capacity", "_mode", "_closed", "_held", "_creator_pid",
                 "_shared", "_joinable", "_forks_then", "_undecodable", "__weakref__")
    KIND = KIND
    _what = "queue"
    # pyqueue.asyncio's reservations (aio.py): unlink() removes them too.
    _aio_sets = ("rsv", "rsv.lease")
    _aio_keys = ("res:", "resn:")
    _attr = "Queue"
    _want_joinable = False
    _maxsize: int
    _overflow: str
    _max_message: Optional[int]
    _custom: bool
    _capacity: int
    _mode: int
    _held: Deque[bytes]
    _creator_pid: int
    _shared: bool
    _joinable: bool
    _forks_then: int
    _undecodable: int

    def __init__(self, maxsize: int = _D_MAXSIZE, *, capacity_bytes: int = _D_CAPACITY,
                 max_message_bytes: Optional[int] = _D_MAX_MESSAGE, name: Optional[str] = None,
                 overflow: str = _D_OVERFLOW, serializer: Serializer = None, mode: int = _D_MODE,
                 trust_owner: bool = False) -> None:
        given: Dict[str, Any] = {}
        maxsize = _api.check_maxsize(_take(maxsize, given, "maxsize"))
        capacity = _round_capacity(_take(capacity_bytes, given, "capacity_bytes"))
        max_message = _api.check_max_message_bytes(
            _take(max_message_bytes, given, "max_message_bytes"))
        overflow = _api.check_overflow(_take(overflow, given, "overflow"))
        mode = _take(mode, given, "mode")
        if not isinstance(mode, int) or not 0 <= mode <= 0o777:
            raise ValueError("mode must be a permission mask such as 0o600")
        serializer = _check_serializer(serializer)
        unnamed = name is None
        name = self._new_name(name)
        self._init_handle(name, serializer)
        created, stored = self._create(
            "create", maxsize, overflow, max_message or 0, int(serializer is not None),
            capacity, mode)
        self._creator_pid = os.getpid() if unnamed and created else 0
        self._forks_then = _forks
        if not created:
            wanted = dict(given, maxsize=maxsize, capacity_bytes=capacity)
            now: Dict[str, Any] = {"maxsize": self._maxsize, "capacity_bytes": self._capacity,
                   "max_message_bytes": self._max_message, "overflow": self._overflow,
                   "mode": self._mode}
            differences = [(what, now[what], wanted[what]) for what in given
                           if now[what] != wanted[what]]
            if serializer is not None and not self._custom:
                differences.append(("serializer", None, "a custom serializer"))
            check_settings("queue", name, differences)

    @classmethod
    def open(cls, name: str, *, serializer: Serializer = None,
             trust_owner: bool = False) -> RedisQueue:
        """Open an existing queue by name (SegmentNotFound if there is none,
        SegmentMismatch if it is not a queue, or a plain queue opened as a
        JoinableQueue)."""
        check_name(name)
        self = cls.__new__(cls)
        self._init_handle(name, _check_serializer(serializer))
        self._creator_pid = 0
        self._create("open", 0, "block", 0, 0, 0, 0)
        return self

    def _init_handle(self, name: str, serializer: Serializer) -> None:
        self._name = name
        self._serializer = serializer
        self._closed = False
        self._held = collections.deque()
        self._undecodable = 0
        self._shared = False
        p = key_prefix(name)
        self._keys = (p + "meta", p + "list", p + "space", p + "zero", p + "shut", p + "down")

    def _create(self, how: str, maxsize: int, overflow: str, max_message: int, custom: int,
                capacity: int, mode: int) -> Tuple[bool, List[Any]]:
        r = self._create_meta(_CREATE, how, [int(self._want_joinable), maxsize, overflow,
                                             max_message, custom, capacity, mode])
        created = bool(r[0] == 1)
        joinable = bool(r[2] == b"1")
        if self._want_joinable and not joinable:
            raise SegmentMismatch(f"queue {self._name!r} is a plain queue, not a JoinableQueue "
                                  "(task_done() and join() need a queue created as one)")
        self._joinable = joinable
        self._maxsize = int(r[3])
        self._overflow = r[4].decode()
        self._max_message = int(r[5]) or None
        self._custom = bool(r[6] == b"1")
        self._capacity = int(r[7])
        self._mode = int(r[8])
        return created, r

    # -- properties -------------------------------------------------------
    @property
    def maxsize(self) -> int:
        return self._maxsize

    @property
    def overflow(self) -> str:
        return self._overflow

    @property
    def max_message_bytes(self) -> Optional[int]:
        return self._max_message

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    # -- put --------------------------------------------------------------
    def _encode(self, obj: Any) -> bytes:
        data = _codec.encode(obj, self._serializer)
        if self._max_message is not None and len(data) - 1 > self._max_message:
            raise MessageTooLarge(f"message of {len(data) - 1} bytes encoded, over "
                                  f"max_message_bytes={self._max_message}")
        return data

    def _put_encoded(self, items: List[bytes], block: bool, until: Optional[float]) -> int:
        """Stores items (in order); returns how many before Full."""
        b = self._bound
        put = b.script("queue_put", _PUT)
        keys = self._keys[:4]
        done = 0
        while done < len(items):
            chunk = items[done:done + BATCH]
            if len(chunk) < TRANSACTION_FROM:
                r = put(keys=keys, args=chunk)
            else:
                pushed, r = b.transaction(keys, ("RPUSH", keys[1], *chunk),
                                          ("EVAL", _PUT_PUSHED, 4, *keys, len(chunk)))
                _raise_error(pushed)
                _raise_error(r)
            if r[0] == -2:
                raise ShutDown(f"queue {self._name!r} is shut down")
            if r[0] < 0:
                raise SegmentNotFound(f"queue {self._name!r} was removed from {b.url}")
            done += int(r[0])
            if r[0] == len(chunk):
                continue
            if self._overflow == "reject" or not block:
                raise Full()
            left = _api.remaining(until)
            if left == 0.0:
                raise Full()
            b.wait_stream(self._keys[2], r[1], left)
        return done

    def put(self, obj: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        self._check_open()
        until = _api.deadline(block, timeout)
        self._put_encoded([self._encode(obj)], block, until)

    def put_many(self, objs: Iterable[Any], block: bool = True,
                 timeout: Optional[float] = None) -> int:
        """Put every message of objs in order; one round trip per 1000
        messages while there is room. Returns the number put; on Full the
        messages that fit stay put."""
        self._check_open()
        until = _api.deadline(block, timeout)
        encode, serializer = _codec.encode, self._serializer
        if serializer is None:
            # (_encode's, the check once; bytes, the common case, without
            # a call: _codec.encode's first case)
            tb = _codec.T_BYTES
            items = [tb + o if type(o) is bytes else encode(o, None) for o in objs]
        else:
            items = [encode(o, serializer) for o in objs]
        if not items:
            return 0
        if self._max_message is not None and max(map(len, items)) - 1 > self._max_message:
            data = next(d for d in items if len(d) - 1 > self._max_message)
            raise MessageTooLarge(f"message of {len(data) - 1} bytes encoded, over "
                                  f"max_message_bytes={self._max_message}")
        return self._put_encoded(items, block, until)

    # -- get --------------------------------------------------------------
    def _take(self, max_messages: int, block: bool, until: Optional[float]) -> List[bytes]:
        """Raw messages: up to max_messages, at least one (else Empty, or
        ShutDown once shut down and empty)."""
        b = self._bound
        left = _api.remaining(until) if block else 0.0
        waits = left is None or left > 0.0
        keys = self._keys[:3] + self._keys[4:5]    # meta, list, space, shut
        r: List[Any] = self._take_step(keys, max_messages, 0, "+" if waits else "")
        if len(r) > 1:
            return r[1:]
        self._check_take(r)
        if not waits:
            raise Empty()
        # Counted in "waiting": a shutdown from here on pushes a token. The
        # wait is cut in slices: a token can be lost (its get killed between
        # its BLPOP and the script that passes it on), and a plain read of
        # the flag at each slice's end finds it instead (no write: nothing
        # for min_replicas to confirm, no count to keep in step).
        try:
            while True:
                left = _api.remaining(until)
                popped = b.blpop_any([self._keys[1], self._keys[4]],
                                     WAIT_SLICE if left is None else min(left, WAIT_SLICE))
                if popped is not None:
                    break
                if _api.remaining(until) == 0.0:
                    raise Empty()
                kind, shut = b.call([self._keys[0]], "HMGET", self._keys[0], "kind",
                                    "shutdown")
                if kind is None:
                    raise SegmentNotFound(f"queue {self._name!r} was removed from {b.url}")
                if shut is not None:
                    break
        except BaseException:
            _count_out(b, self._keys[0])
            raise
        if popped is None:
            # Shut down, seen at a slice's end: counted out by the take,
            # which drains what is left, then ShutDown.
            r = self._take_step(keys, max_messages, 0, "-")
            if len(r) > 1:
                return r[1:]
            self._check_take(r)
            raise ShutDown(f"queue {self._name!r} is shut down")
        key, first = popped
        if key == self._keys[4].encode():
            # A shutdown's token: what is left is drained, then ShutDown;
            # the token goes back for the next get blocked (the count may
            # be low: see the module's docstring).
            r = self._take_step(keys, max_messages, 0, "t")
            if len(r) > 1:
                return r[1:]
            self._check_take(r)
            raise ShutDown(f"queue {self._name!r} is shut down")
        # Counted, and a put waiting for room told, by the same script.
        try:
            rest: List[Any] = self._take_step(keys, max_messages - 1, 1, "-")
        except ConnectionLost:
            self._held.append(first)     # in hand: the next get returns it
            raise
        return [first] + rest[1:]

    def _take_step(self, keys: Sequence[str], want: int, before: int,
                   mode: str) -> List[Any]:
        """One take (_TAKE's reply: {0, messages...}, {1}, {2}); a batch
        of TRANSACTION_FROM or more as _TAKE_COUNTED + LPOP in one
        transaction (the messages do not pass through Lua)."""
        b = self._bound
        # With min_replicas, a take that took nothing (it may have counted
        # the get in "waiting") has nothing to confirm: no NotReplicated
        # from a get that then waits, or ends Empty. One that counts a
        # message its BLPOP popped (before) has: that pop is a write.
        if want < TRANSACTION_FROM:
            r: List[Any] = b.script("queue_take", _TAKE)(
                keys=keys, args=[want, before, mode],
                confirm=None if before else _took)
            return r
        # (A refused script: nothing counted, and the LPOP's messages go
        # back below, with the script's error; nothing to confirm.)
        counted, popped = b.transaction(
            keys, ("EVAL", _TAKE_COUNTED, 4, *keys, want, before, mode),
            ("LPOP", keys[1], want),
            confirm=lambda replies: not isinstance(replies[0], Exception) and bool(
                before or replies[1]))
        if isinstance(counted, Exception):
            # The script refused (a key of another type, made by hand: it
            # checks before it writes, so nothing was counted; its error
            # says why, the LPOP's WRONGTYPE does not), and the LPOP ran
            # anyway: its messages go back to the head, in order (a best
            # effort: another get may take later ones meanwhile).
            if popped and not isinstance(popped, Exception):
                b.call(keys, "LPUSH", keys[1], *reversed(popped))
            raise counted
        _raise_error(popped)
        if counted[0] != 0:
            return [counted[0]]
        return [0, *(popped or ())]

    def _check_take(self, r: List[Any]) -> None:
        """A take's reply without messages: ShutDown (1), SegmentNotFound
        (2: the queue was removed), or nothing (0)."""
        if r[0] == 1:
            raise ShutDown(f"queue {self._name!r} is shut down")
        if r[0] == 2:
            raise SegmentNotFound(f"queue {self._name!r} was removed from {self._bound.url}")

    def _decode(self, raw: bytes) -> Any:
        return _codec.decode(raw, self._serializer)

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        self._check_open()
        until = _api.deadline(block, timeout)
        raw = self._held.popleft() if self._held else self._take(1, block, until)[0]
        try:
            return self._decode(raw)
        except Exception:
            self._undecodable += 1
            raise
        except BaseException:
            # An interrupt (Ctrl-C) while decoding: the message is kept for
            # the next get, and the interrupt goes on (as pyqueue.Queue).
            self._held.appendleft(raw)
            raise

    def get_many(self, max_messages: int = 1024, block: bool = True,
                 timeout: Optional[float] = None) -> List[Any]:
        """Up to max_messages messages already in the queue (one round trip),
        waiting for the first unless block is false. A message that cannot
        be decoded is reported by its own call (as pyqueue.Queue does)."""
        self._check_open()
        max_messages = _api.check_max_messages(max_messages)
        until = _api.deadline(block, timeout)
        if self._held:
            raws = [self._held.popleft() for _ in range(min(max_messages, len(self._held)))]
        else:
            raws = self._take(max_messages, block, until)
        out: List[Any] = []
        append, decode, serializer = out.append, _codec.decode, self._serializer
        try:
            if serializer is None:
                tb = _codec.T_BYTES
                for raw in raws:
                    # (self._decode; bytes, the common case, without a call:
                    # _codec.decode's first case)
                    append(raw[1:] if raw[:1] == tb else decode(raw, None))
            else:
                for raw in raws:
                    append(decode(raw, serializer))
        except BaseException as e:
            if not isinstance(e, Exception):
                # An interrupt (Ctrl-C) while decoding: the whole batch is
                # kept for the next call, in order, and the interrupt goes
                # on (as pyqueue.Queue; before, the messages decoded were
                # returned and the interrupt swallowed, or, on the first,
                # that message lost).
                self._held.extendleft(reversed(raws))
                raise
            i = len(out)                                  # the one that failed
            self._undecodable += 1
            if i == 0:
                self._held.extendleft(reversed(raws[1:]))
                # As pyqueue.Queue.get_many: the bad one alone, wrapped.
                raise UndecodableMessage(
                    f"a message of queue {self._name!r} cannot be decoded: "
                    f"{type(e).__name__}: {e}", raw=raws[0], cause=e) from e
            self._held.extendleft(reversed(raws[i:]))
        return out

    # -- shutdown ---------------------------------------------------------
    def shutdown(self, immediate: bool = False) -> None:
        """As pyqueue.Queue.shutdown, for every process and host: puts raise
        ShutDown; gets drain what is left, then raise it (immediate=True:
        what is left is dropped, one task_done each); every get or put
        blocked now wakes."""
        self._check_open()
        b = self._bound
        r = b.script("queue_shutdown", _SHUTDOWN)(keys=self._keys,
                                                  args=[2 if immediate else 1])
        if r < 0:
            raise SegmentNotFound(f"queue {self._name!r} was removed from {b.url}")

    @property
    def is_shutdown(self) -> bool:
        """Whether the queue was shut down (by any process)."""
        return self._bound.client.hget(self._keys[0], "shutdown") is not None

    # -- size, stats ------------------------------------------------------
    def qsize(self) -> int:
        self._check_open()
        return int(self._bound.client.llen(self._keys[1])) + len(self._held)

    def stats(self) -> Dict[str, Any]:
        self._check_open()
        b = self._bound
        meta: Dict[Any, Any] = b.client.hgetall(self._keys[0])
        if not meta:
            raise SegmentNotFound(f"queue {self._name!r} was removed from {b.url}")
        depth = b.client.llen(self._keys[1])
        s: Dict[str, Any] = {k: int(meta[k.encode()]) for k in ("enqueued", "dequeued", "rejected", "dropped")}
        # The shared-memory keys, with None for what Redis does not track:
        # depth_bytes, waiting producers, consumers killed after their BLPOP
        # (abandoned_by_consumers); a put is one script, never half done
        # (abandoned is 0). waiting_consumers is the "waiting" count the
        # shutdown uses: the gets of every client blocked (or about to
        # block) in BLPOP; a get killed while blocked (SIGKILL, a host or
        # its connection lost for good) is never counted out and leaves it
        # one too high for the queue's life, as on shared memory.
        s.update(depth=depth, maxsize=self._maxsize, capacity_bytes=self._capacity,
                 held=len(self._held), abandoned=0, abandoned_by_consumers=None,
                 depth_bytes=None, waiting_producers=None,
                 waiting_consumers=max(0, int(meta.get(b"waiting", 0))),
                 undecodable=self._undecodable, backend="redis", url=b.url)
        s["unfinished_tasks"] = int(meta[b"unfinished"])   # 0 for a plain queue
        return s

    # -- lifetime ---------------------------------------------------------
    def close(self) -> None:
        """Close this handle (the queue stays). The creator's handle of an
        unnamed queue that was never pickled, in a process that forked no
        child since it was made, also removes the queue: nobody else can
        reach it."""
        if self._closed:
            return
        self._closed = True
        if (self._creator_pid == os.getpid() and not self._shared
                and self._forks_then == _forks):
            self._creator_pid = 0
            self._delete_keys()

    def unlink(self) -> None:
        """Remove the queue (its messages and counters) from the server."""
        self._creator_pid = 0
        super().unlink()

    def __reduce__(self) -> Tuple[Any, ...]:
        self._shared = True
        return super().__reduce__()


class RedisJoinableQueue(RedisQueue):
    """pyqueue.JoinableQueue on Redis: the unfinished count is in the
    queue's hash, so task_done() and join() work across processes and
    hosts."""

    __slots__ = ()
    _attr = "JoinableQueue"
    _want_joinable = True

    def task_done(self) -> None:
        self._check_open()
        r = self._bound.script("queue_task_done", _TASK_DONE)(
            keys=[self._keys[0], self._keys[3]])
        if r < 0:
            raise ValueError("task_done() called too many times")

    def join(self) -> None:
        self._check_open()
        b = self._bound
        check = b.script("queue_join", _JOIN)
        r = check(keys=[self._keys[0], self._keys[3]])
        if r[0] == 1:
            return
        # Returns when the count reaches 0 after the check (an entry after
        # the id the check read), even if puts raise it again at once.
        while not b.wait_stream(self._keys[3], r[1], None):
            pass


Empty = _api.Empty
Full = _api.Full
