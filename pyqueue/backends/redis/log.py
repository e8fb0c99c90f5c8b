"""Log on Redis (memory mode's semantics): a stream per partition.

Keys of log NAME:

    pq:{NAME}:meta        hash: kind, partitions, retention, perm, inc (the
                          log's incarnation id: a log made again under the
                          name has another; a handle checks that its own is
                          there before it makes a partition or a group),
                          removing (set by unlink() before it deletes
                          anything: no partition or group is made any more)
    pq:{NAME/P}:l.meta    hash of partition P: next (the next offset),
                          start (the oldest offset kept), bytes (kept);
                          made by the partition's first append, once the
                          log's meta hash was seen (never for a removed log),
                          with inc: an append of another log's handle (one
                          removed since) is refused
    pq:{NAME/P}:l.stream  stream of partition P: the record at offset O has
                          id O-1; fields v (value), t (append time, ms,
                          the server's clock), k (key), h (headers)

Each partition has a hash tag of its own ("NAME/P": "/" is never in a
name, so it is no other queue's tag), so a cluster spreads the partitions
of a log over its masters, and each append (its retention included) is one
script on one slot. Keys pick the partition with Kafka's partitioner
(pyqueue._log.kafka_partition, the shared-memory Log's); keyless records go
round-robin per process, from a per-process start. Retention as memory
mode: retention_bytes per partition (rounded up to a power of two, at
least 64 KiB, 8 MiB by default) drops the oldest whole records; records
older than retention_ms are dropped by appends and enforce_retention().
Consumer groups: pyqueue.Consumer over a RedisGroupTable (groups.py), the
coordination in Lua scripts on the group's own keys.

Shutdown: each partition's hash gets a "shutdown" field and its stream
pq:{NAME/P}:l.shut an entry, in one script per partition (one slot each);
then the log's meta hash gets the field (what is_shutdown reads, so a
process that sees it finds every partition refusing appends). An append
reads its partition's flag in its script (ShutDown); a read at the end
offset of a shut-down partition raises ShutDown instead of waiting; a
reader or consumer waiting in XREAD also waits on l.shut, so the entry
wakes it. Records stay readable and groups keep committing.
"""
from __future__ import annotations

import math
import os
import secrets
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from pyqueue import _api, _log
from pyqueue import log as _shm_log
from pyqueue.backends.redis import ConnectionLost, _codec
from pyqueue.backends.redis.groups import RedisGroupTable
from pyqueue.backends.redis._codec import Serializer
from pyqueue.backends.redis._handle import RedisHandle, key_prefix
from pyqueue.queues import _check_serializer
from pyqueue.errors import (MessageTooLarge, OffsetOutOfRange, PoisonRecord,
                            SegmentNotFound, ShutDown)
from pyqueue.consumer import Members, close_consumers
from pyqueue.log import Record

KIND = "log"
_BATCH = 1000
_CLUSTER_WAIT_SLICE = 0.05  # a cluster poller's wait on partitions of several slots

# ARGV[8]: a fresh incarnation id ("inc"): which log of that name a handle
# opened (a log removed and made again under the name has another; a log
# made by an earlier pyqueue has none: '').
_CREATE = """
local M = KEYS[1]
if redis.call('EXISTS', M) == 0 then
  if ARGV[1] == 'open' then return false end
  redis.call('HSET', M, 'kind', ARGV[2], 'partitions', ARGV[3], 'retention_bytes', ARGV[4],
             'retention_ms', ARGV[5], 'perm', ARGV[6], 'custom', ARGV[7], 'inc', ARGV[8])
  return {1, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]}
end
local m = redis.call('HMGET', M, 'kind', 'partitions', 'retention_bytes', 'retention_ms', 'perm',
                     'custom', 'inc')
return {0, m[1], m[2], m[3], m[4], m[5], m[6] or '0', m[7] or ''}
"""

_HEAD = """
local PM, S = KEYS[1], KEYS[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local m = redis.call('HMGET', PM, 'next', 'start', 'bytes', 'shutdown', 'inc')
local nxt, start, bytes = tonumber(m[1] or '0'), tonumber(m[2] or '0'), tonumber(m[3] or '0')
-- whether the partition is another log's of that name than the one of the
-- handle's incarnation id inc ('': a log made before ids, not fenced)
local function foreign(inc)
  return m[5] and inc ~= '' and m[5] ~= inc
end
local function size_of(fields)
  local n = 0
  for i = 2, #fields, 2 do n = n + #fields[i] end
  return n
end
-- drops the oldest records while over max_bytes or older than the age
-- limit (0: none); at most `limit` of them
local function expire(max_bytes, max_age, limit)
  local dropped = 0
  if bytes <= max_bytes and max_age == 0 then return 0 end   -- nothing to read
  while dropped < limit do
    local oldest = redis.call('XRANGE', S, '-', '+', 'COUNT', 1)
    if #oldest == 0 then break end
    local f = oldest[1][2]
    local ts = 0
    for i = 1, #f, 2 do if f[i] == 't' then ts = tonumber(f[i + 1]) end end
    if bytes <= max_bytes and (max_age == 0 or ts >= now - max_age) then break end
    redis.call('XDEL', S, oldest[1][1])
    bytes = bytes - size_of(f)
    start = tonumber(string.match(oldest[1][1], '^(%d+)')) + 1
    dropped = dropped + 1
  end
  return dropped
end
"""

# ARGV: retention bytes, retention ms (0: none), key ('' none, else '=' and
# the key: an empty key is a key), headers ('' none), '1' when the
# partition may be made here (the caller saw the log's meta hash, with its
# incarnation), the handle's incarnation id, values... -> the first
# offset; -1: the partition is shut down; -2: the partition has no hash
# yet (its first append; or the log was removed: the caller looks at the
# log's meta hash, in another slot, and sends '1' or raises
# SegmentNotFound, so that a handle of a removed log never makes it
# again); -3: the partition is another log's of that name (made again
# since this handle opened its log: SegmentNotFound)
_APPEND = _HEAD + """
if m[5] and m[5] ~= ARGV[6] then return -3 end
if m[4] then return -1 end
if not m[1] and ARGV[5] ~= '1' and redis.call('EXISTS', PM) == 0 then return -2 end
local key, hdr = ARGV[3], ARGV[4]
local first = nxt
-- one field table for the whole call (only the value changes) and the
-- other fields' size (size_of) counted once: the loop is one XADD a record
local ts = tostring(now)
local fields = {'v', '', 't', ts}
if key ~= '' then fields[#fields + 1] = 'k'; fields[#fields + 1] = key:sub(2) end
if hdr ~= '' then fields[#fields + 1] = 'h'; fields[#fields + 1] = hdr end
local extra = size_of(fields)
local call = redis.call
for i = 7, #ARGV do
  local v = ARGV[i]
  fields[2] = v
  call('XADD', S, nxt .. '-1', unpack(fields))
  bytes = bytes + extra + #v
  nxt = nxt + 1
end
expire(tonumber(ARGV[1]), tonumber(ARGV[2]), 1000000)
if m[1] or ARGV[6] == '' then
  redis.call('HSET', PM, 'next', nxt, 'start', start, 'bytes', bytes)
else   -- (made here: which log's it is)
  redis.call('HSET', PM, 'next', nxt, 'start', start, 'bytes', bytes, 'inc', ARGV[6])
end
return first
"""

# KEYS: the partition's meta, stream, shut. ARGV: an incarnation id (not
# ''). Deletes the partition when its hash has exactly that id -> 1 if
# deleted: a partition this handle made while its log was being removed
# (its own id), or one left by a removed log's handle, found by the log
# made again under the name (the id it saw there: a partition made since
# by the new log has another, and is never deleted by a call that saw the
# old one).
_DROP_PART = """
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'inc') == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  return 1
end
return 0
"""

# KEYS: the log's meta hash. Marks the log as being removed (unlink's
# first step; a removed log's meta hash is not made again) -> 1 if marked.
# Sent as a plain EVAL (no WAIT under min_replicas: an unlink is not
# stopped half-way by a lagging replica).
_MARK_REMOVING = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'removing', 1)
return 1
"""

# KEYS: the partition's meta, stream, shut; ARGV: the handle's incarnation
# id -> 1; -3: the partition is another log's of that name (_APPEND)
_SHUTDOWN_PART = """
local inc = redis.call('HGET', KEYS[1], 'inc')
if inc and ARGV[1] ~= '' and inc ~= ARGV[1] then return -3 end
if redis.call('HEXISTS', KEYS[1], 'shutdown') == 0 then
  if not inc and ARGV[1] ~= '' and redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('HSET', KEYS[1], 'inc', ARGV[1])   -- (made here: which log's it is)
  end
  redis.call('HSET', KEYS[1], 'shutdown', 1)
  redis.call('XADD', KEYS[3], 'MAXLEN', 1, '*', 'x', 1)
end
return 1
"""

# KEYS: the log's meta hash; ARGV: the handle's incarnation id. The
# shutdown's last step: the flag set only on the handle's own log, there
# and not being removed -> 1; 0: not (a shutdown beside an unlink set it
# on a meta hash made of that flag alone, which no open could read, or on
# the log made again under the name). A plain EVAL, as the HSET it
# replaces (no WAIT).
_SHUTDOWN_META = """
local m = redis.call('HMGET', KEYS[1], 'kind', 'inc', 'removing')
if not m[1] or m[3] or (m[2] or '') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'shutdown', 1)
return 1
"""

# ARGV: retention bytes, retention ms, the handle's incarnation id ->
# records dropped; -3: the partition is another log's of that name
_EXPIRE = _HEAD + """
if foreign(ARGV[3]) then return -3 end
local n = expire(tonumber(ARGV[1]), tonumber(ARGV[2]), 1000000)
if n > 0 then redis.call('HSET', PM, 'start', start, 'bytes', bytes) end
return n
"""

# ARGV: offset, max, the handle's incarnation id -> {start, next, shut
# down (0|1), id, fields, id, fields...}; {-3}: the partition is another
# log's of that name (see _APPEND)
_READ = _HEAD + """
if foreign(ARGV[3]) then return {-3} end
local out = {start, nxt, 0}
if m[4] then out[3] = 1 end
local off = tonumber(ARGV[1])
if off < start or off >= nxt then return out end
for _, e in ipairs(redis.call('XRANGE', S, off .. '-1', '+', 'COUNT', tonumber(ARGV[2]))) do
  out[#out + 1] = e[1]
  out[#out + 1] = e[2]
end
return out
"""


def _wrote(first: Any) -> bool:
    """Whether an append step's reply says it wrote (min_replicas: what to
    confirm): -1 (shut down) and -2 (its partition not made yet) wrote
    nothing."""
    return bool(first >= 0)


class RedisLog(RedisHandle):
    """pyqueue.Log (memory mode's semantics) on Redis; made by
    `pyqueue.connect(url).Log(...)`. serializer=(dumps, loads) as on
    shared memory: the log's own setting (a flag in its meta hash), every
    value through it both ways, nothing else ever unpickled."""

    __slots__ = ("_name", "_closed", "_settings", "_rr", "_rr_pid", "_groups", "_consumers",
                 "_serializer", "raw_values", "_inc", "__weakref__")
    KIND = KIND
    _what = "log"
    _settings: Dict[str, Any]
    _rr: int
    _rr_pid: int
    _groups: Optional[RedisGroupTable]
    raw_values: bool

    def __init__(self, name: Optional[str] = None, *, partitions: Optional[int] = None,
                 retention_bytes: Optional[int] = None, retention_ms: Optional[int] = None,
                 perm: int = 0o600, path: Optional[str] = None,
                 segment_bytes: Optional[int] = None, fsync: Optional[str] = None,
                 fsync_interval: Optional[float] = None, trust_owner: bool = False,
                 serializer: Serializer = None, _open_only: bool = False) -> None:
        if path is not None:
            raise ValueError("a Log on Redis has no path (directory mode is shared memory's)")
        for what, v in (("segment_bytes", segment_bytes), ("fsync", fsync),
                        ("fsync_interval", fsync_interval)):
            if v is not None:
                raise ValueError(f"{what} applies to directory mode, not to a Log on Redis")
        parts = _shm_log._check_partitions(partitions)
        capacity = _shm_log.MemoryLog._ring_bytes(retention_bytes)
        retention = _shm_log._check_retention_ms(retention_ms)
        _shm_log._check_perm(perm)
        serializer = _check_serializer(serializer)
        name = self._new_name(name)
        self._name = name
        self._closed = False
        self._rr_pid = 0
        self._groups = None
        self._consumers = Members()
        self._serializer = None
        self.raw_values = False      # pyqueue tail: pickles left encoded (RawValue)
        r = self._create_meta(_CREATE, "open" if _open_only else "create",
                              [parts, capacity, retention or 0, perm, int(serializer is not None),
                               secrets.token_hex(8)])
        self._inc = r[7].decode()
        self._settings = {"partitions": int(r[2]), "capacity": int(r[3]),
                          "retention_ms": int(r[4]) or None, "perm": int(r[5])}
        _shm_log._check_log_serializer(self, serializer, r[6] == b"1", f"log {name!r}")
        if r[0] != 1:
            where = f"log {name!r}"
            _shm_log._same("partitions", partitions, self.partitions, where)
            if retention_bytes is not None:
                _shm_log._same("retention_bytes (rounded)", capacity, self.capacity_bytes, where)
            _shm_log._same("retention_ms", retention, self.retention_ms, where)

    @classmethod
    def open(cls, name_or_path: str, trust_owner: bool = False, *,
             serializer: Serializer = None) -> RedisLog:
        """Open an existing log (SegmentNotFound if missing); serializer:
        the one it was made with, if any. (pyqueue.Log.open's parameters:
        a Redis log has a name, never a path.)"""
        return cls(name_or_path, serializer=serializer, _open_only=True)

    def _set_serializer(self, serializer: Serializer) -> None:
        self._serializer = serializer

    @property
    def path(self) -> None:
        return None

    @property
    def partitions(self) -> int:
        return int(self._settings["partitions"])

    @property
    def capacity_bytes(self) -> int:
        return int(self._settings["capacity"])

    @property
    def retention_ms(self) -> Optional[int]:
        r: Optional[int] = self._settings["retention_ms"]
        return r

    @property
    def max_record_bytes(self) -> int:
        return int(self._settings["capacity"]) // 4 - 24

    def _pkeys(self, partition: int) -> List[str]:
        partition = _api.check_partition(partition, self.partitions)
        p = key_prefix(f"{self._name}/{partition}")
        return [p + "l.meta", p + "l.stream", p + "l.shut"]

    def partition_for(self, key: Any) -> int:
        """The partition of a key: Kafka's default partitioner."""
        return int(_log.kafka_partition(key, self.partitions))

    def _choose(self, key: Any) -> int:
        if key is not None:
            return self.partition_for(key)
        if self._rr_pid != os.getpid():      # per process, from a per-process start
            self._rr_pid = os.getpid()
            self._rr = os.getpid() % self.partitions
        p = self._rr
        self._rr = (p + 1) % self.partitions
        return p

    def _append(self, partition: int, values: Sequence[Any], key: Any,
                headers: Optional[Dict[str, Any]]) -> List[Tuple[int, int]]:
        self._check_open()
        kb = b"" if key is None else _codec.as_bytes(key, "key")
        hb = _log.encode_headers(headers)
        # ('' is no key; a key, even an empty one, goes with a mark)
        karg = b"" if key is None else b"=" + kb
        serializer = self._serializer
        datas = [_codec.encode(v, serializer) for v in values]
        room = self.max_record_bytes - len(kb) - len(hb)
        if datas and max(map(len, datas)) > room:
            d = next(d for d in datas if len(d) > room)
            raise MessageTooLarge(f"record of {len(d) + len(kb) + len(hb)} bytes does not "
                                  f"fit in the log's partition (max_record_bytes "
                                  f"{self.max_record_bytes})")
        script = self._bound.script("log_append", _APPEND)
        keys = self._pkeys(partition)
        out: List[Tuple[int, int]] = []
        for i in range(0, len(datas), _BATCH):
            chunk = datas[i:i + _BATCH]
            try:
                first = script(keys=keys[:2], args=[self.capacity_bytes,
                                                    self.retention_ms or 0, karg, hb, b"0",
                                                    self._inc, *chunk],
                               confirm=_wrote)    # (what failed wrote nothing to confirm)
                if first == -3:
                    # The partition is another log's of this name: this
                    # handle's log was removed (SegmentNotFound), or the
                    # partition was left by a handle of a log removed
                    # before this one was made (dropped: it is this log's
                    # to make).
                    self._foreign_partition(partition)
                    first = -2
                if first == -2:
                    # The partition's first append, or the log was removed:
                    # only the log this handle opened gets the partition
                    # made (this chunk only: the next one is checked again).
                    self._check_same_log()
                    first = script(keys=keys[:2], args=[self.capacity_bytes,
                                                        self.retention_ms or 0, karg, hb, b"1",
                                                        self._inc, *chunk], confirm=_wrote)
                    if first >= 0:
                        # Made here: unless the log is still there (and not
                        # being removed) after it, an unlink ran between the
                        # check and the make, and may have deleted the
                        # partitions before: this one is dropped again, not
                        # left for the log made next under the name.
                        try:
                            self._check_same_log()
                        except SegmentNotFound:
                            self._drop_partition(partition, self._inc)
                            raise
                        except ConnectionLost as e:
                            # (the chunk is in: said, with its ids)
                            out += [(partition, first + j) for j in range(len(chunk))]
                            raise ConnectionLost(
                                f"log {self._name!r}: the records were appended (offsets "
                                f"{first} to {first + len(chunk) - 1} of partition "
                                f"{partition}); the check of the log after making the "
                                f"partition was lost: {e}", sent=True, ids=out) from e
                if first == -3:
                    raise SegmentNotFound(f"log {self._name!r} was removed from "
                                          f"{self._bound.url} (and made again since)")
            except ConnectionLost as e:
                e.ids = out                # committed; this chunk: all or nothing
                raise
            if first < 0:
                shut = ShutDown(f"log {self._name!r} is shut down")
                shut.ids = out  # type: ignore[attr-defined]  # (what was committed)
                raise shut
            out += [(partition, first + j) for j in range(len(chunk))]
        return out

    def append(self, value: Any, key: Any = None,
               headers: Optional[Dict[str, Any]] = None) -> Tuple[int, int]:
        """Append one record; (partition, offset)."""
        return self._append(self._choose(key), [value], key, headers)[0]

    def append_many(self, values: Iterable[Any], key: Any = None,
                    headers: Optional[Dict[str, Any]] = None) -> List[Tuple[int, int]]:
        """Append every value to one partition (the key's, or the next
        round-robin one): one round trip per 1000 records."""
        values = list(values)
        if not values:
            return []
        return self._append(self._choose(key), values, key, headers)

    read = _shm_log.Log.read

    def _read(self, partition: int, offset: int, max_records: int, timeout: float,
              record: Callable[..., Any]) -> List[Any]:
        keys = self._read_keys(partition)
        until = None if timeout == float("inf") else time.monotonic() + max(0.0, timeout)
        while True:
            r: List[Any] = self._partition_step(partition, "log_read", _READ,
                                                [offset, max_records, self._inc])
            recs = self._read_reply(partition, offset, r, record)
            if recs is not None:
                return recs
            left = _api.remaining(until)
            if left == 0.0:
                return []
            # A record at offset, or the shutdown's entry, wakes it.
            ms = 0 if left is None else max(1, math.ceil(left * 1000))
            self._bound.xread_block(self._read_wait(keys, offset), ms)

    def _read_keys(self, partition: int) -> List[str]:
        """The keys of a read (checked: open, partition; max_records by the
        callers: Log.read, Consumer.poll and their asyncio forms)."""
        self._check_open()
        return self._pkeys(partition)

    @staticmethod
    def _read_wait(keys: Sequence[str], offset: int) -> Dict[Any, Any]:
        """The streams (and ids) an XREAD waits on for a record at offset
        of the partition of keys, or for its shutdown's entry."""
        return {keys[1]: f"{offset - 1}-1" if offset else "0-0", keys[2]: "0-0"}

    def _read_reply(self, partition: int, offset: int, r: List[Any],
                    record: Callable[..., Any]) -> Optional[List[Any]]:
        """The records of a _READ reply r for offset (None: none yet).
        OffsetOutOfRange, or ShutDown at the end of a shut-down partition;
        pyqueue.asyncio's Redis Log (aio_log.py) reads through it too.
        (A -3 reply, a partition of another log of the name, is the
        caller's: _foreign_partition, then the read again.)"""
        start, end = int(r[0]), int(r[1])
        if offset < start or offset > end:
            raise OffsetOutOfRange(
                f"offset {offset} of partition {partition} of log {self._name!r} is out of "
                f"range: records are kept from {start} to {end - 1}",
                partition=partition, offset=offset, start_offset=start, end_offset=end)
        if len(r) > 3:
            return self._records(partition, r[3:], record)
        if r[2] == 1:
            raise ShutDown(f"log {self._name!r} is shut down: offset {offset} is the end "
                           f"of partition {partition}")
        return None

    def _records(self, partition: int, flat: List[Any],
                 record: Callable[..., Any]) -> List[Any]:
        out: List[Any] = []
        for rid, fields in zip(flat[::2], flat[1::2]):
            offset = int(rid.split(b"-")[0])
            f = dict(zip(fields[::2], fields[1::2]))
            try:
                value = _codec.decode(f[b"v"], self._serializer, self.raw_values)
                # (the log's own format, as on shared memory: a record's
                # headers are never unpickled)
                headers = _log.decode_headers(f[b"h"]) if b"h" in f else {}
            except Exception as e:
                if out:
                    break
                raise PoisonRecord(f"record {offset} of partition {partition} of log "
                                   f"{self._name!r} cannot be decoded: {e!r}",
                                   partition=partition, offset=offset, raw=f.get(b"v"),
                                   cause=e) from e
            out.append(record(partition, offset, int(f[b"t"]), f.get(b"k"), value, headers))
        return out

    def _bounds(self, partition: int) -> Tuple[int, int]:
        self._check_open()
        while True:
            r: List[Any] = self._bound.client.hmget(self._pkeys(partition)[0], "start",
                                                    "next", "inc")
            if r[2] is None or not self._inc or r[2].decode() == self._inc:
                return int(r[0] or 0), int(r[1] or 0)
            self._foreign_partition(partition)     # (as a read's: _READ's -3)

    start_offset = _shm_log.Log.start_offset
    end_offset = _shm_log.Log.end_offset

    def enforce_retention(self) -> int:
        """Drop the records older than retention_ms now: the count dropped."""
        return sum(int(self._partition_step(p, "log_expire", _EXPIRE,
                                            [self.capacity_bytes, self.retention_ms or 0,
                                             self._inc]))
                   for p in range(self.partitions))

    # ---- consumer groups: pyqueue.Log's methods over a RedisGroupTable ----

    def _group_table(self) -> RedisGroupTable:
        if self._groups is None:
            self._groups = RedisGroupTable(self)
        return self._groups

    consumer = _shm_log.Log.consumer

    groups = _shm_log.Log.groups
    group_offsets = _shm_log.Log.group_offsets
    group_members = _shm_log.Log.group_members
    delete_group = _shm_log.Log.delete_group
    _group_index = _shm_log.Log._group_index

    def close(self) -> None:
        """Close this handle and the consumers made from it in this process
        (they leave their groups); what it names stays on the server. The
        handle closes even when a consumer fails to leave.

        Raises:
            redis.exceptions.RedisError: A consumer could not reach the
                server to leave (its session lease removes it).
        """
        close_consumers(self, lambda: RedisHandle.close(self))

    def _wait_any(self, parts: Sequence[int], offsets: Sequence[int],
                  groups: Optional[RedisGroupTable], g: Any, gen_seen: int,
                  timeout: float) -> None:
        """Waits (up to timeout seconds) for a record at offsets[i] of one
        of parts, or a rebalance of group g after generation gen_seen
        (_wait_plan's XREAD)."""
        plan = self._wait_plan(parts, offsets, groups, g, gen_seen, timeout)
        if plan is not None:
            self._bound.xread_block(plan[0], plan[1])

    def _wait_plan(self, parts: Sequence[int], offsets: Sequence[int],
                   groups: Optional[RedisGroupTable], g: Any, gen_seen: int,
                   timeout: float) -> Optional[Tuple[Dict[Any, Any], int]]:
        """The XREAD BLOCK of a poller's wait: (streams, block ms), None
        when there is nothing to wait on.

        One XREAD BLOCK on every partition's stream and the group's wake
        stream; on a cluster that needs them in one slot, else (partitions
        on several slots) the wait is on the wake stream in slices of
        _CLUSTER_WAIT_SLICE seconds (the caller reads again after each).
        A member's wait is at most a third of its lease, so the poll loop
        renews it. The sync consumer (_wait_any) and the asyncio one
        (aio_log.py) wait the same way."""
        self._check_open()
        streams: Dict[Any, Any] = {}
        for p, o in zip(parts, offsets):
            streams.update(self._read_wait(self._pkeys(p), o))  # its shutdown's entry too
        left = timeout
        if groups is not None:
            streams[groups.wait_keys(g)] = f"{gen_seen}-1"
            left = min(left, groups.lease(g) / 3)
        if not streams:
            return None
        b = self._bound
        if b.cluster:
            from redis.crc import key_slot
            if len({key_slot(k.encode()) for k in streams}) > 1:
                left = min(left, _CLUSTER_WAIT_SLICE)
                streams = ({groups.wait_keys(g): f"{gen_seen}-1"} if groups is not None
                           else dict([next(iter(streams.items()))]))
        if left == float("inf"):
            ms = 0
        else:
            ms = max(1, math.ceil(left * 1000))
        return streams, ms

    def shutdown(self, immediate: bool = False) -> None:
        """As pyqueue.Log.shutdown, for every process and host: appends
        raise ShutDown; a read at a partition's end offset raises it instead
        of waiting; consumers end once every assigned partition is read to
        its end; records stay readable, commits work. immediate=True:
        ValueError (a log discards nothing committed)."""
        self._check_open()
        if immediate:
            raise ValueError("Log.shutdown(immediate=True) is not supported: a log keeps every "
                             "record it committed; shutdown() stops appends and ends reads "
                             "at the end offset")
        self._check_same_log()      # (a removed log's handle shuts nothing down)
        for p in range(self.partitions):
            self._partition_step(p, "log_shutdown_part", _SHUTDOWN_PART, [self._inc])
        # Last: a process that sees is_shutdown finds every partition refusing.
        if not self._bound.call([self._meta_key], "EVAL", _SHUTDOWN_META, 1, self._meta_key,
                                self._inc):
            # The log was removed (or is being removed) under this call: the
            # partitions' flags it set, made after the unlink deleted them,
            # go again (only with this log's id), not left to the next log.
            if self._inc:
                for p in range(self.partitions):
                    self._drop_partition(p, self._inc)
            raise SegmentNotFound(f"log {self._name!r} was removed from {self._bound.url} "
                                  "(under its shutdown)")

    @property
    def is_shutdown(self) -> bool:
        """Whether the log was shut down (by any process)."""
        return self._bound.client.hget(key_prefix(self._name) + "meta",
                                         "shutdown") is not None

    def unlink(self) -> None:
        """Remove the log (every partition) from the server. First its
        meta hash is marked (removing): from then on no handle makes a
        partition or a group of it (SegmentNotFound); a partition a handle
        made just before is deleted below, or by that handle, which checks
        the mark after making one. The meta hash goes last, so that an
        unlink cut short (a lost connection, a killed process) leaves a
        log that can be opened and removed again (until then, its handles
        make no partition or group). A handle's append that finds its
        partition gone afterwards finds the log gone (SegmentNotFound),
        never makes it again. It removes the log of the name, as on shared
        memory (where it removes the name): a removed log's handle removes
        the log made again under the name. The mark is a plain command (no
        WAIT under min_replicas, as the deletes: a lagging replica does not
        stop an unlink half-way)."""
        c = self._bound.client
        self._bound.call([self._meta_key], "EVAL", _MARK_REMOVING, 1, self._meta_key)
        groups = RedisGroupTable(self)
        raw: Any
        for raw in c.smembers(key_prefix(self._name) + "groups"):
            c.delete(*groups.keys(raw.decode("utf-8")))
        for p in range(self.partitions):
            c.delete(*self._pkeys(p))
        c.delete(self._meta_key, key_prefix(self._name) + "groups")

    @property
    def _meta_key(self) -> str:
        return key_prefix(self._name) + "meta"

    def _check_same_log(self) -> None:
        """SegmentNotFound unless the log's meta hash is there and of the
        log this handle opened (its incarnation id): a removed log's handle
        makes nothing of it again, nor of a log made again under its name
        (their keys are in other slots than the meta hash, so their
        scripts cannot look)."""
        kind, inc, removing = self._bound.call([self._meta_key], "HMGET", self._meta_key,
                                               "kind", "inc", "removing")
        if kind is None or (inc or b"").decode() != self._inc:
            raise SegmentNotFound(f"log {self._name!r} was removed from {self._bound.url}"
                                  + ("" if kind is None else " (and made again since)"))
        if removing is not None:
            raise SegmentNotFound(f"log {self._name!r} is being removed from {self._bound.url} "
                                  "(by an unlink() under way, or cut short: unlink() again)")

    def _partition_step(self, partition: int, name: str, source: str,
                        args: List[Any]) -> Any:
        """One script on a partition's keys that refuses a partition of
        another log of the name (_READ, _EXPIRE, _SHUTDOWN_PART: -3, or
        {-3}) -> its reply; after such a refusal, _foreign_partition, then
        the script again."""
        script = self._bound.script(name, source)
        keys = self._pkeys(partition)
        while True:
            r = script(keys=keys, args=args)
            if (r[0] if isinstance(r, list) else r) != -3:
                return r
            self._foreign_partition(partition)

    def _foreign_partition(self, partition: int) -> None:
        """A partition whose hash had another log's incarnation id (the
        caller saw it): SegmentNotFound when this handle's log was removed
        (a log made again under the name has that id); else it was left by
        a removed log's handle, and is dropped - only if it still has the
        id read here, first (one made meanwhile by this log is kept). The
        caller then looks again."""
        seen: Any = self._bound.client.hget(self._pkeys(partition)[0], "inc")
        if seen is None or seen.decode() == self._inc:
            return          # dropped or made again meanwhile: this log's, or none
        self._check_same_log()
        self._drop_partition(partition, seen.decode())

    def _drop_partition(self, partition: int, inc: str) -> None:
        """_DROP_PART: the partition deleted if its hash has exactly the
        incarnation id inc. A plain EVAL (no WAIT under min_replicas: a
        lagging replica must not fail the call that drops a left partition
        before it does its own step - an append would raise NotReplicated
        with nothing appended)."""
        keys = self._pkeys(partition)
        self._bound.call(keys, "EVAL", _DROP_PART, len(keys), *keys, inc)

    def __repr__(self) -> str:
        return f"<pyqueue.Log {self._name!r} {'closed' if self._closed else 'open'}>"
