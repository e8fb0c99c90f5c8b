"""Consumer groups of a Log on Redis: the coordinator is the server.

A RedisGroupTable has the interface of the shared-memory GroupTable
(pyqueue/_log_groups.pxi: find/join/leave/heartbeat/reap/generation/
assignment/commit/committed/set_committed/owner/members/names/delete), so
pyqueue.Consumer runs unchanged over it (one Consumer class, two backends).
A group is named by its name (the shared-memory table's `g` is an index).

Keys of group G of log N (one hash tag, "N//G", so every key of a group is
in one cluster slot, apart from the log's partitions: the scripts touch
only these keys; records are read from the partitions directly):

    pq:{N//G}:g.state   hash: gen (the generation), o:P / e:P (owner member id and the epoch
                        at which it got partition P), c:P / t:P (the
                        committed offset of P and the server time of that
                        commit, ms), inc (the incarnation id of the log
                        whose handle made the group: a removed log's
                        group, left by a join beside the unlink, is never
                        the group of the log made again under the name)
    pq:{N//G}:g.exp     zset: member id -> poll lease expiry (server ms)
    pq:{N//G}:g.sess    zset: member id -> session lease expiry (server ms)
    pq:{N//G}:g.info    hash: member id -> "poll_ms session_ms pid host"
    pq:{N//G}:g.wake    stream, MAXLEN 1: id "GEN-1" after the rebalance
                        that made generation GEN (pollers wait on it)
    pq:{N}:groups       set of the log's group names (the log's slot)

Every change of membership is one script that removes the members whose
lease expired, then rebalances as the shared-memory table does (sticky:
partitions stay with their owner up to its quota, the rest go in partition
order; a moved partition gets the new generation as its epoch). Hosts
share no pid space, so a member has two leases: max_poll_interval, renewed
by each poll (the Consumer heartbeats), and a session lease
(SESSION_TIMEOUT, or max_poll_interval if shorter), renewed also by a
thread of its process: a member is removed when either runs out.
A commit checks, in its script, that the member's lease holds and that
every partition still has it as owner at the epoch it names: all or
nothing, else CommitFailed.
"""
from __future__ import annotations

import os
import random
import socket
import threading
import weakref
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Tuple

from pyqueue.backends.redis import ConnectionLost
from pyqueue.backends.redis._handle import key_prefix
from pyqueue.errors import PyQueueError, SegmentNotFound

if TYPE_CHECKING:
    from pyqueue.backends.redis.log import RedisLog

MAX_MEMBERS = 64          # as the shared-memory table (PQ_GROUP_MEMBERS)
SESSION_TIMEOUT = 10.0    # s: a member whose process stops heartbeating is removed
                          # after this (or max_poll_interval, if shorter)
_LOCK_WAIT = 10.0         # s: the most a heartbeat registry change waits for its lock
NAME_MAX = 64             # bytes, as PQ_GROUP_NAME_MAX (the NUL included there)

_HEAD = """
local S, E, I, W, X = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- members whose poll lease (E) or session lease (X) expired are
-- removed: the count
local function remove_gone()
  local n = 0
  for _, Z in ipairs({E, X}) do
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', Z, '-inf', '(' .. now)) do
      redis.call('ZREM', E, id)
      redis.call('ZREM', X, id)
      redis.call('HDEL', I, id)
      n = n + 1
    end
  end
  return n
end
-- renews both leases of a member (its info: "poll_ms session_ms pid host")
local function renew(id)
  local poll_ms, session_ms = string.match(redis.call('HGET', I, id), '^(%d+) (%d+)')
  redis.call('ZADD', E, now + tonumber(poll_ms), id)
  redis.call('ZADD', X, now + tonumber(session_ms), id)
end
local function members()
  local ids = redis.call('ZRANGE', E, 0, -1)
  for i = 1, #ids do ids[i] = tonumber(ids[i]) end
  table.sort(ids)
  return ids
end
-- pq_group_rebalance (csrc/pq_group.c), over the hash
local function rebalance(P)
  local gen = redis.call('HINCRBY', S, 'gen', 1)
  local ids = members()
  local n = #ids
  local idx, counts = {}, {}
  for k = 1, n do idx[ids[k]] = k; counts[k] = 0 end
  local owner = {}
  for p = 0, P - 1 do
    local o = tonumber(redis.call('HGET', S, 'o:' .. p) or '0')
    if o ~= 0 and idx[o] then
      owner[p] = o
      counts[idx[o]] = counts[idx[o]] + 1
    else
      owner[p] = 0
      redis.call('HDEL', S, 'o:' .. p, 'e:' .. p)
    end
  end
  if n > 0 then
    local order = {}
    for k = 1, n do order[k] = k end
    -- most held first; stable (by member id) among equals
    table.sort(order, function(a, b)
      if counts[a] ~= counts[b] then return counts[a] > counts[b] end
      return a < b
    end)
    local quota = {}
    for r = 1, n do
      quota[order[r]] = math.floor(P / n) + ((r <= P % n) and 1 or 0)
    end
    for p = P - 1, 0, -1 do
      local o = owner[p]
      if o ~= 0 and counts[idx[o]] > quota[idx[o]] then
        counts[idx[o]] = counts[idx[o]] - 1
        owner[p] = 0
        redis.call('HDEL', S, 'o:' .. p, 'e:' .. p)
      end
    end
    local k = 1
    for p = 0, P - 1 do
      if owner[p] == 0 then
        while counts[k] >= quota[k] do k = k % n + 1 end
        counts[k] = counts[k] + 1
        redis.call('HSET', S, 'o:' .. p, ids[k], 'e:' .. p, gen)
      end
    end
  end
  redis.call('XADD', W, 'MAXLEN', 1, gen .. '-1', 'g', gen)
  return gen
end
local function is_member(id)
  local exp, sess = redis.call('ZSCORE', E, id), redis.call('ZSCORE', X, id)
  return exp and sess and tonumber(exp) >= now and tonumber(sess) >= now
end
"""

# ARGV: partitions, poll lease ms, pid, host, max members, a random id,
# session lease ms -> the
# member id, -1 (full) or -2 (a live member has that id: draw another)
_JOIN = _HEAD + """
local inc = redis.call('HGET', S, 'inc')
if inc and ARGV[8] ~= '' and inc ~= ARGV[8] then return -3 end
if not inc and ARGV[8] ~= '' and redis.call('EXISTS', S) == 0 then
  redis.call('HSET', S, 'inc', ARGV[8])     -- (made here: which log's it is)
end
local P = tonumber(ARGV[1])
local gone = remove_gone()
if redis.call('ZCARD', E) >= tonumber(ARGV[5]) then
  if gone > 0 then rebalance(P) end
  return -1
end
local id = ARGV[6]
if redis.call('ZSCORE', E, id) then return -2 end
redis.call('HSET', I, id, ARGV[2] .. ' ' .. ARGV[7] .. ' ' .. ARGV[3] .. ' ' .. ARGV[4])
renew(id)
rebalance(P)
return id
"""

# ARGV: an incarnation id (not ''), as the Log's _DROP_PART: deletes the
# group when its state has exactly that id -> 1 if deleted (made by this
# handle's join while its log was being removed: its own id; left by a
# removed log's handle: the id the caller saw there). A group made by an
# earlier pyqueue, without an id, is never deleted here.
_DROP = """
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'inc') == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
  return 1
end
return 0
"""

# ARGV: partitions, member id
_LEAVE = _HEAD + """
local gone = remove_gone()
local left = redis.call('ZREM', E, ARGV[2])
redis.call('ZREM', X, ARGV[2])
redis.call('HDEL', I, ARGV[2])
if gone + left > 0 then rebalance(tonumber(ARGV[1])) end
return left
"""

# A poll. ARGV: partitions, member id -> 1, or 0 when it is no longer a member
_HEARTBEAT = _HEAD + """
if not is_member(ARGV[2]) then
  if remove_gone() > 0 then rebalance(tonumber(ARGV[1])) end
  return 0
end
renew(ARGV[2])
return 1
"""

# The session heartbeat (a thread of the member's process). ARGV: member
# id -> 1, or 0 when it is no longer a member
_SESSION = _HEAD + """
if not is_member(ARGV[1]) then return 0 end
local session_ms = string.match(redis.call('HGET', I, ARGV[1]), '^%d+ (%d+)')
redis.call('ZADD', X, now + tonumber(session_ms), ARGV[1])
return 1
"""

# ARGV: partitions -> members removed
_REAP = _HEAD + """
local gone = remove_gone()
if gone > 0 then rebalance(tonumber(ARGV[1])) end
return gone
"""

# ARGV: partitions, member id -> {generation, p, epoch, ...}, or false
_ASSIGNMENT = _HEAD + """
local P = tonumber(ARGV[1])
if not is_member(ARGV[2]) then
  if remove_gone() > 0 then rebalance(P) end
  return false
end
local out = {tonumber(redis.call('HGET', S, 'gen') or '0')}
for p = 0, P - 1 do
  if redis.call('HGET', S, 'o:' .. p) == ARGV[2] then
    out[#out + 1] = p
    out[#out + 1] = tonumber(redis.call('HGET', S, 'e:' .. p))
  end
end
return out
"""

# ARGV: member id, then partition, offset, epoch, ... -> 1, or 0 (fenced)
_COMMIT = _HEAD + """
local id = ARGV[1]
if not is_member(id) then return 0 end
for i = 2, #ARGV, 3 do
  local p = ARGV[i]
  if redis.call('HGET', S, 'o:' .. p) ~= id or redis.call('HGET', S, 'e:' .. p) ~= ARGV[i + 2] then
    return 0
  end
end
for i = 2, #ARGV, 3 do
  redis.call('HSET', S, 'c:' .. ARGV[i], ARGV[i + 1], 't:' .. ARGV[i], now)
end
return 1
"""

# ARGV: partitions -> 1 deleted, 0 none, -1 live members
_DELETE = _HEAD + """
local gone = remove_gone()
if redis.call('ZCARD', E) > 0 then
  if gone > 0 then rebalance(tonumber(ARGV[1])) end
  return -1
end
return redis.call('DEL', S, E, I, W, X) > 0 and 1 or 0
"""

# -> {now, id, poll lease expiry, session lease expiry, info, ...}
_MEMBERS = _HEAD + """
local r = {now}
for _, id in ipairs(redis.call('ZRANGE', E, 0, -1)) do
  r[#r + 1] = id
  r[#r + 1] = redis.call('ZSCORE', E, id)
  r[#r + 1] = redis.call('ZSCORE', X, id) or '0'
  r[#r + 1] = redis.call('HGET', I, id) or ''
end
return r
"""


def check_group(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"group must be a str, not {type(name).__name__}")
    b = name.encode("utf-8")
    if not 1 <= len(b) < NAME_MAX or b"\0" in b:
        raise ValueError(f"group name must be 1..{NAME_MAX - 1} bytes of UTF-8 without NUL")
    return name


class RedisGroupTable:
    """The consumer groups of one Redis Log (pyqueue.consumer uses it)."""

    # leave() from a consumer's finalizer ignores these (the server is gone)
    quiet_errors: Tuple[type, ...] = ()

    def __init__(self, log: RedisLog) -> None:
        import redis
        self.quiet_errors = (redis.RedisError,)
        self._log = log
        self._b = log._bound
        self._registry = key_prefix(log.name) + "groups"
        self._host = socket.gethostname()
        # group -> the shortest lease of this process's members (s)
        self._leases: Dict[str, float] = {}
        self._forked()

    def _forked(self) -> None:
        """A fresh heartbeat registry (made, and again in a forked child:
        a child must not keep its parent's members alive)."""
        self._pid = os.getpid()
        # (group, member id) -> session lease (s), heartbeated by a thread
        self._beating: Dict[Tuple[str, int], float] = {}
        self._beat_lock = threading.Lock()
        self._beater: Optional[threading.Thread] = None
        self._stop = threading.Event()

    def _beat_change(self, key: Tuple[str, int], session: Optional[float]) -> None:
        """Adds (session: its lease) or removes (None) a member heartbeated
        by this process's thread; starts the thread when it is not running."""
        if os.getpid() != self._pid:
            self._forked()
        if not self._beat_lock.acquire(timeout=_LOCK_WAIT):
            raise PyQueueError("the consumer-group heartbeat registry stayed locked")
        try:
            if session is None:
                self._beating.pop(key, None)
                return
            self._beating[key] = session
            if self._beater is None:
                self._beater = threading.Thread(target=_heartbeats,
                                                args=(weakref.ref(self), self._stop),
                                                name="pyqueue-group-heartbeat", daemon=True)
                self._beater.start()
        finally:
            self._beat_lock.release()

    def keys(self, g: str) -> List[str]:
        p = key_prefix(f"{self._log.name}//{g}")
        return [p + "g.state", p + "g.exp", p + "g.info", p + "g.wake", p + "g.sess"]

    def _run(self, name: str, source: str, g: str, args: List[Any]) -> Any:
        self._log._check_open()
        return self._b.script("group_" + name, source)(keys=self.keys(g), args=args)

    @property
    def _parts(self) -> int:
        return self._log.partitions

    def find(self, name: str, create: bool) -> Optional[Tuple[str, int]]:
        """(name, 0): a Redis group is named by its name (made by its first
        join); None when it does not exist and not create."""
        check_group(name)
        self._log._check_open()
        if create:
            self._log._check_same_log()   # (a removed log's handle makes no group)
            self._b.client.sadd(self._registry, name)
            return name, 0
        while True:
            inc: Any = self._b.client.hget(self.keys(name)[0], "inc")
            if inc is None or not self._log._inc or inc.decode() == self._log._inc:
                break
            self._foreign(name)     # (then looked at again)
        if not self._b.client.exists(self.keys(name)[0]):
            return None
        return name, 0

    def _drop(self, g: str, inc: str) -> None:
        """_DROP, as a plain EVAL (no WAIT under min_replicas: as the Log's
        _drop_partition)."""
        self._log._check_open()
        keys = self.keys(g)
        self._b.call(keys, "EVAL", _DROP, len(keys), *keys, inc)

    def _foreign(self, g: str) -> None:
        """A group whose state had another log's incarnation id (the caller
        saw it): SegmentNotFound when this handle's log was removed; else
        it was left by a removed log's handle (a join beside its unlink,
        that handle's process killed before it could delete it), and is
        dropped - only if it still has the id read here, first."""
        seen: Any = self._b.client.hget(self.keys(g)[0], "inc")
        if seen is None or seen.decode() == self._log._inc:
            return
        self._log._check_same_log()
        self._drop(g, seen.decode())

    def names(self) -> List[Tuple[str, str]]:
        """[(name, name)] of the groups that exist."""
        self._log._check_open()
        c = self._b.client
        out = []
        raw: Any
        for raw in sorted(c.smembers(self._registry)):
            name = raw.decode("utf-8")
            if c.exists(self.keys(name)[0]):
                out.append((name, name))
        return out

    def delete(self, g: str) -> None:
        r = self._run("delete", _DELETE, g, [self._parts])
        if r == -1:
            raise PyQueueError("the group has live members: close their consumers first")
        c = self._b.client
        c.srem(self._registry, g)
        if c.exists(self.keys(g)[0]):   # a member joined again meanwhile: keep it listed
            c.sadd(self._registry, g)

    def join(self, g: str, incarnation: Any, timeout: float) -> int:
        session = min(SESSION_TIMEOUT, timeout)
        self._log._check_same_log()
        while True:
            # Random 52-bit ids (exact in Lua's doubles), not a counter
            # that restarts: a removed member's id then matches nobody
            # (but with odds of 2**-52) also after the group was deleted
            # and made again or a failover lost the last joins, so its
            # heartbeats and commits are refused.
            mid = self._run("join", _JOIN, g, [self._parts, max(1, int(timeout * 1000)),
                                              os.getpid(), self._host, MAX_MEMBERS,
                                              random.SystemRandom().randrange(1, 1 << 52),
                                              max(1, int(session * 1000)), self._log._inc])
            if mid == -3:       # another log's group of that name
                self._foreign(g)
                continue
            if mid != -2:
                break
        if mid == -1:
            raise PyQueueError(f"the group has {MAX_MEMBERS} live members already")
        # Joined (the group made, maybe): unless the log is still there (and
        # not being removed) after it, an unlink ran between the check above
        # and the join, and may have deleted the groups before: this one is
        # deleted again (only if of this handle's log), not left behind.
        try:
            self._log._check_same_log()
        except SegmentNotFound:
            self._drop(g, self._log._inc)
            raise
        except BaseException:
            # The check lost (its node unreachable, an interrupt): the
            # member leaves again, best effort, rather than hold its
            # partitions, heartbeat by nobody, until its session runs out.
            try:
                self._run("leave", _LEAVE, g, [self._parts, int(mid)])
            except Exception:
                pass        # (then its lease ends it, as a member whose join reply was lost)
            raise
        self._b.client.sadd(self._registry, g)   # listed (again, after a delete)
        self._leases[g] = min(session, self._leases.get(g, session))
        self._beat_change((g, int(mid)), session)
        return int(mid)

    def leave(self, g: str, member_id: int) -> None:
        self._beat_change((g, member_id), None)
        self._run("leave", _LEAVE, g, [self._parts, member_id])

    def heartbeat(self, g: str, member_id: int) -> bool:
        """False when the member was removed from the group (its lease expired)."""
        return bool(self._run("heartbeat", _HEARTBEAT, g, [self._parts, member_id]) == 1)

    def reap(self, g: str, deadline: Optional[float] = None) -> int:
        """Remove the members whose lease expired (deadline: unused, the
        scripts take no lock)."""
        return int(self._run("reap", _REAP, g, [self._parts]))

    def generation(self, g: str) -> int:
        self._log._check_open()
        return int(self._b.client.hget(self.keys(g)[0], "gen") or 0)

    def assignment(self, g: str, member_id: int, deadline: Optional[float] = None
                   ) -> Optional[Tuple[int, Dict[int, int]]]:
        r = self._run("assignment", _ASSIGNMENT, g, [self._parts, member_id])
        if r is None:
            return None
        return int(r[0]), {int(p): int(e) for p, e in zip(r[1::2], r[2::2])}

    def commit(self, g: str, member_id: int, items: Iterable[Tuple[int, int, int]],
               deadline: Optional[float] = None) -> bool:
        args = [member_id]
        for p, off, epoch in items:
            args += [p, off, epoch]
        return bool(self._run("commit", _COMMIT, g, args) == 1)

    def _check_part(self, partition: int) -> None:
        if not 0 <= partition < self._parts:
            raise ValueError(f"partition {partition} out of range")

    def committed(self, g: str, partition: int) -> Tuple[Optional[int], int]:
        """(offset or None, server ms of that commit)."""
        self._check_part(partition)
        self._log._check_open()
        off, ms = self._b.client.hmget(self.keys(g)[0], f"c:{partition}", f"t:{partition}")
        return (None if off is None else int(off)), int(ms or 0)

    def set_committed(self, g: str, partition: int, offset: Optional[int], ms: int = 0
                      ) -> None:
        """Set (or, with None, clear) a committed offset without fencing."""
        self._check_part(partition)
        self._log._check_open()
        key = self.keys(g)[0]
        if offset is None:
            self._b.client.hdel(key, f"c:{partition}", f"t:{partition}")
        else:
            self._b.client.hset(key, mapping={f"c:{partition}": int(offset),
                                              f"t:{partition}": int(ms)})

    def owner(self, g: str, partition: int) -> int:
        self._check_part(partition)
        return int(self._b.client.hget(self.keys(g)[0], f"o:{partition}") or 0)

    def members(self, g: str) -> List[Dict[str, Any]]:
        r = self._run("members", _MEMBERS, g, [])
        now = int(r[0])
        owned: Dict[int, int] = {}
        for p in range(self._parts):
            o = self.owner(g, p)
            owned[o] = owned.get(o, 0) + 1
        out = []
        for i in range(1, len(r), 4):
            mid, exp, sess = int(r[i]), float(r[i + 1]), float(r[i + 2])
            poll_ms, _session_ms, pid, host = (r[i + 3].decode().split(" ", 3)
                                               + ["0", "0", "0", ""])[:4]
            out.append({"pid": int(pid), "host": host, "alive": min(exp, sess) >= now,
                        "member_id": mid,
                        "idle_s": max(0.0, (now - (exp - int(poll_ms))) / 1000),
                        "partitions": owned.get(mid, 0)})
        return sorted(out, key=lambda m: m["member_id"])

    def lease(self, g: str) -> float:
        """The shortest lease (s) of this process's members of group g."""
        return self._leases.get(g, 1.0)

    def wait_keys(self, g: str) -> str:
        """The key a poller waits on for a rebalance (its entry ids are
        "GEN-1")."""
        return self.keys(g)[3]


def _heartbeats(ref: weakref.ReferenceType[RedisGroupTable], stop: threading.Event) -> None:
    """The heartbeat thread of a process's members of one log's groups:
    renews each one's session lease every third of the shortest lease,
    until none is left (or the table is gone). A member that the server
    no longer has is dropped (its Consumer finds out at its next poll and
    joins again)."""
    import redis
    while True:
        t = ref()
        if t is None:
            return
        if not t._beat_lock.acquire(timeout=_LOCK_WAIT):
            continue
        try:
            items = list(t._beating.items())
            if not items or t._pid != os.getpid():
                t._beater = None
                return
        finally:
            t._beat_lock.release()
        period = min(session for _, session in items) / 3
        for (g, mid), _session in items:
            try:
                if t._run("session", _SESSION, g, [mid]) != 1:
                    t._beating.pop((g, mid), None)
            except ValueError:           # the log was closed: its members go with their leases
                t._beating.pop((g, mid), None)
            except (redis.RedisError, ConnectionLost):   # unreachable: the next beat tries again
                pass
        del t
        if stop.wait(period):
            return
