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
                        commit, ms)
    pq:{N//G}:g.exp     zset: member id -> lease expiry (server ms)
    pq:{N//G}:g.info    hash: member id -> "timeout_ms pid host"
    pq:{N//G}:g.wake    stream, MAXLEN 1: id "GEN-1" after the rebalance
                        that made generation GEN (pollers wait on it)
    pq:{N}:groups       set of the log's group names (the log's slot)

Every change of membership is one script that removes the members whose
lease expired, then rebalances as the shared-memory table does (sticky:
partitions stay with their owner up to its quota, the rest go in partition
order; a moved partition gets the new generation as its epoch). A lease is
max_poll_interval, renewed by each poll (the Consumer heartbeats): hosts
share no pid space, so a dead member is removed when its lease expires.
A commit checks, in its script, that the member's lease holds and that
every partition still has it as owner at the epoch it names: all or
nothing, else CommitFailed.
"""
import os
import random
import socket

from pyqueue.backends.redis.queue import key_prefix
from pyqueue.errors import PyQueueError

MAX_MEMBERS = 64          # as the shared-memory table (PQ_GROUP_MEMBERS)
NAME_MAX = 64             # bytes, as PQ_GROUP_NAME_MAX (the NUL included there)

_HEAD = """
local S, E, I, W = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- members whose lease expired are removed: the count
local function remove_gone()
  local gone = redis.call('ZRANGEBYSCORE', E, '-inf', '(' .. now)
  for _, id in ipairs(gone) do
    redis.call('ZREM', E, id)
    redis.call('HDEL', I, id)
  end
  return #gone
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
  local exp = redis.call('ZSCORE', E, id)
  return exp and tonumber(exp) >= now
end
"""

# ARGV: partitions, timeout ms, pid, host, max members, a random id -> the
# member id, -1 (full) or -2 (a live member has that id: draw another)
_JOIN = _HEAD + """
local P = tonumber(ARGV[1])
local gone = remove_gone()
if redis.call('ZCARD', E) >= tonumber(ARGV[5]) then
  if gone > 0 then rebalance(P) end
  return -1
end
local id = ARGV[6]
if redis.call('ZSCORE', E, id) then return -2 end
redis.call('ZADD', E, now + tonumber(ARGV[2]), id)
redis.call('HSET', I, id, ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[4])
rebalance(P)
return id
"""

# ARGV: partitions, member id
_LEAVE = _HEAD + """
local gone = remove_gone()
local left = redis.call('ZREM', E, ARGV[2])
redis.call('HDEL', I, ARGV[2])
if gone + left > 0 then rebalance(tonumber(ARGV[1])) end
return left
"""

# ARGV: partitions, member id -> 1, or 0 when it is no longer a member
_HEARTBEAT = _HEAD + """
if not is_member(ARGV[2]) then
  if remove_gone() > 0 then rebalance(tonumber(ARGV[1])) end
  return 0
end
local info = redis.call('HGET', I, ARGV[2])
redis.call('ZADD', E, now + tonumber(string.match(info, '^(%d+)')), ARGV[2])
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
return redis.call('DEL', S, E, I, W) > 0 and 1 or 0
"""

# -> {now, id, expiry, info, ...}
_MEMBERS = _HEAD + """
local out = {now}
for _, e in ipairs(redis.call('ZRANGE', E, 0, -1, 'WITHSCORES')) do out[#out + 1] = e end
local r = {now}
for i = 2, #out, 2 do
  r[#r + 1] = out[i]
  r[#r + 1] = out[i + 1]
  r[#r + 1] = redis.call('HGET', I, out[i]) or ''
end
return r
"""


def check_group(name):
    if not isinstance(name, str):
        raise TypeError(f"group must be a str, not {type(name).__name__}")
    b = name.encode("utf-8")
    if not 1 <= len(b) < NAME_MAX or b"\0" in b:
        raise ValueError(f"group name must be 1..{NAME_MAX - 1} bytes of UTF-8 without NUL")
    return name


class RedisGroupTable:
    """The consumer groups of one Redis Log (pyqueue.consumer uses it)."""

    # leave() from a consumer's finalizer ignores these (the server is gone)
    quiet_errors = ()

    def __init__(self, log):
        import redis
        self.quiet_errors = (redis.RedisError,)
        self._log = log
        self._b = log._backend
        self._registry = key_prefix(log.name) + "groups"
        self._host = socket.gethostname()
        self._leases = {}   # group -> the shortest lease of this process's members (s)

    def keys(self, g):
        p = key_prefix(f"{self._log.name}//{g}")
        return [p + "g.state", p + "g.exp", p + "g.info", p + "g.wake"]

    def _run(self, name, source, g, args):
        self._log._check_open()
        return self._b.script("group_" + name, source)(keys=self.keys(g), args=args)

    @property
    def _parts(self):
        return self._log.partitions

    def find(self, name, create):
        """(name, 0): a Redis group is named by its name (made by its first
        join); None when it does not exist and not create."""
        check_group(name)
        self._log._check_open()
        if create:
            self._b.client.sadd(self._registry, name)
            return name, 0
        if not self._b.client.exists(self.keys(name)[0]):
            return None
        return name, 0

    def names(self):
        """[(name, name)] of the groups that exist."""
        self._log._check_open()
        c = self._b.client
        out = []
        for raw in sorted(c.smembers(self._registry)):
            name = raw.decode("utf-8")
            if c.exists(self.keys(name)[0]):
                out.append((name, name))
        return out

    def delete(self, g):
        r = self._run("delete", _DELETE, g, [self._parts])
        if r == -1:
            raise PyQueueError("the group has live members: close their consumers first")
        c = self._b.client
        c.srem(self._registry, g)
        if c.exists(self.keys(g)[0]):   # a member joined again meanwhile: keep it listed
            c.sadd(self._registry, g)

    def join(self, g, incarnation, timeout):
        while True:
            # Random 52-bit ids (exact in Lua's doubles), not a counter
            # that restarts: a removed member's id then matches nobody
            # (but with odds of 2**-52) also after the group was deleted
            # and made again or a failover lost the last joins, so its
            # heartbeats and commits are refused.
            mid = self._run("join", _JOIN, g, [self._parts, max(1, int(timeout * 1000)),
                                              os.getpid(), self._host, MAX_MEMBERS,
                                              random.SystemRandom().randrange(1, 1 << 52)])
            if mid != -2:
                break
        if mid == -1:
            raise PyQueueError(f"the group has {MAX_MEMBERS} live members already")
        self._b.client.sadd(self._registry, g)   # listed (again, after a delete)
        self._leases[g] = min(timeout, self._leases.get(g, timeout))
        return int(mid)

    def leave(self, g, member_id):
        self._run("leave", _LEAVE, g, [self._parts, member_id])

    def heartbeat(self, g, member_id):
        """False when the member was removed from the group (its lease expired)."""
        return self._run("heartbeat", _HEARTBEAT, g, [self._parts, member_id]) == 1

    def reap(self, g, deadline=None):
        """Remove the members whose lease expired (deadline: unused, the
        scripts take no lock)."""
        return self._run("reap", _REAP, g, [self._parts])

    def generation(self, g):
        self._log._check_open()
        return int(self._b.client.hget(self.keys(g)[0], "gen") or 0)

    def assignment(self, g, member_id, deadline=None):
        r = self._run("assignment", _ASSIGNMENT, g, [self._parts, member_id])
        if r is None:
            return None
        return int(r[0]), {int(p): int(e) for p, e in zip(r[1::2], r[2::2])}

    def commit(self, g, member_id, items, deadline=None):
        args = [member_id]
        for p, off, epoch in items:
            args += [p, off, epoch]
        return self._run("commit", _COMMIT, g, args) == 1

    def _check_part(self, partition):
        if not 0 <= partition < self._parts:
            raise ValueError(f"partition {partition} out of range")

    def committed(self, g, partition):
        """(offset or None, server ms of that commit)."""
        self._check_part(partition)
        self._log._check_open()
        off, ms = self._b.client.hmget(self.keys(g)[0], f"c:{partition}", f"t:{partition}")
        return (None if off is None else int(off)), int(ms or 0)

    def set_committed(self, g, partition, offset, ms=0):
        """Set (or, with None, clear) a committed offset without fencing."""
        self._check_part(partition)
        self._log._check_open()
        key = self.keys(g)[0]
        if offset is None:
            self._b.client.hdel(key, f"c:{partition}", f"t:{partition}")
        else:
            self._b.client.hset(key, mapping={f"c:{partition}": int(offset),
                                              f"t:{partition}": int(ms)})

    def owner(self, g, partition):
        self._check_part(partition)
        return int(self._b.client.hget(self.keys(g)[0], f"o:{partition}") or 0)

    def members(self, g):
        r = self._run("members", _MEMBERS, g, [])
        now = int(r[0])
        owned = {}
        for p in range(self._parts):
            o = self.owner(g, p)
            owned[o] = owned.get(o, 0) + 1
        out = []
        for i in range(1, len(r), 3):
            mid, exp, info = int(r[i]), float(r[i + 1]), r[i + 2].decode()
            timeout_ms, pid, host = (info.split(" ", 2) + ["0", "0", ""])[:3]
            out.append({"pid": int(pid), "host": host, "alive": exp >= now, "member_id": mid,
                        "idle_s": max(0.0, (now - (exp - int(timeout_ms))) / 1000),
                        "partitions": owned.get(mid, 0)})
        return out

    def lease(self, g):
        """The shortest lease (s) of this process's members of group g."""
        return self._leases.get(g, 1.0)

    def wait_keys(self, g):
        """The key a poller waits on for a rebalance (its entry ids are
        "GEN-1")."""
        return self.keys(g)[3]
