"""pyqueue.asyncio's Log and Consumer on the Redis backend, through
redis.asyncio.

``aq.connect(url).Log(...)`` (or ``aq.Log.from_sync(h)`` of a Redis Log)
gives RedisLog here; its ``consumer(group)`` a RedisConsumer. Nothing of
the sync classes is copied: the reads run the sync Log's _READ script
(pyqueue/backends/redis/log.py) on the redis.asyncio client of aio.py and
read its reply with the same helper (RedisLog._read_reply); a consumer is
a pyqueue.Consumer over the Log's RedisGroupTable (its join, commit,
fencing, seek, rebalance bookkeeping are the sync code), driven by an
async poll that runs the group's scripts (groups.py: _HEARTBEAT, _REAP)
and waits as the sync poll does (RedisLog._wait_plan: one XREAD BLOCK on
the partitions, their shutdown entries and the group's wake stream).
The documentation's Design page, "asyncio on Redis", has the why; in short:

* **A read has no state**: it reads the records at an offset the caller
  names; cancelled, it handed nothing out and the caller reads the same
  offset again. It waits in XREAD BLOCK (no polling) for the record at
  the offset, or the partition's shutdown entry.
* **A poll moves positions only when it hands records out.** The reads of
  a poll work on a copy of the consumer's positions; the new positions
  (and resets, skipped counts, the round-robin start) are applied with no
  await between that and the return, so a poll cancelled anywhere hands
  nothing out and moves nothing: the next poll returns the same records.
  If the consumer's positions or epochs changed under the reads (a
  rebalance followed by a commit's refresh, a seek, another poll of the
  same consumer), what was read is dropped and read again.
* **Membership**: the heartbeat and reap scripts are awaited; a rebalance
  (the group's generation moved) or a removal (its lease ran out) is
  followed by the sync consumer's _refresh (its round trips block the loop;
  rare). Leases are the sync ones: the session lease is renewed by the
  process's one heartbeat thread of the Log (RedisGroupTable: one per
  process and Log handle, not per consumer), the poll lease
  (max_poll_interval) only by polls, so a member whose loop stalls past
  max_poll_interval is removed and its commits fenced (CommitFailed),
  exactly as a sync member that stops polling.
"""
from __future__ import annotations

import time
import weakref
from typing import Any, Dict, List, Optional, Tuple, Type, TypeVar

from pyqueue import _api
from pyqueue import asyncio as _aq
from pyqueue.backends.redis import aio as _aio
from pyqueue.backends.redis import groups as _groups
from pyqueue.backends.redis import log as _rl
from pyqueue.backends.redis._handle import key_prefix
from pyqueue.consumer import Consumer as _SyncConsumer
from pyqueue.consumer import _REAP_INTERVAL
from pyqueue.errors import CorruptRecord, OffsetOutOfRange, PoisonRecord, ShutDown
from pyqueue.log import Record


class RedisLog(_aio._Handle, _aq.Log[Any]):
    """pyqueue.asyncio.Log over a Redis Log handle: ``await read()`` waits
    in XREAD BLOCK; append, end_offset and consumer() are the plain calls
    of the table in the documentation's "Behaviour in detail" page (one
    round trip each, on the sync client)."""

    _h: _rl.RedisLog
    _consumers: weakref.WeakSet[RedisConsumer]

    def _init(self) -> None:
        self._consumers = weakref.WeakSet()

    async def read(self, partition: int, offset: int, max_records: int = 1000,
                   timeout: Optional[float] = None) -> List[Record]:
        """As pyqueue.asyncio.Log.read: the records of a partition from
        offset on, waiting (XREAD BLOCK, without blocking the loop) for the
        first. Cancelled, it has handed nothing out (read the same offset
        again).

        Args:
            partition: The partition.
            offset: The first offset.
            max_records: The most records returned.
            timeout: Seconds to wait for the first (None: for ever).

        Returns:
            Up to max_records Records; [] when none came in time.

        Raises:
            OffsetOutOfRange: offset is out of the partition's range.
            ShutDown: The log is shut down and offset is the partition's end.
            PoisonRecord: The record at offset cannot be decoded.
            ValueError: A bad argument, or the log is closed (also while
                the read waits).
        """
        h = self._h
        partition = _api.check_partition(partition, h.partitions)
        offset = _api.check_offset(offset)
        max_records = _api.check_max_records(max_records)
        keys = h._read_keys(partition)
        until = _api.deadline(True, timeout)
        b = self._backend()
        while True:
            r = await _aio.script(b, _rl._READ, keys[:2], [offset, max_records, h._inc])
            h._check_open()     # closed under it: nothing handed out
            if int(r[0]) == -3:     # another log's partition (a plain call: rare)
                h._foreign_partition(partition)
                continue
            recs = h._read_reply(partition, offset, r, Record)
            if recs is not None:
                return recs
            left = _api.remaining(until)
            if left == 0.0:
                return []
            streams = h._read_wait(keys, offset)
            await self._wait_for(b, "XREAD", "COUNT", 1, "BLOCK", _aio._block_ms(left),
                                 "STREAMS", *streams.keys(), *streams.values())
            h._check_open()     # closed under this wait: ValueError
            self._check_closing()   # (its close() still running in another thread)

    def consumer(self, group: str, **kwargs: Any) -> RedisConsumer:
        """Join consumer group `group` (as pyqueue.Log.consumer; the join is
        a plain call).

        Args:
            group: The group's name.
            **kwargs: As pyqueue.Log.consumer.

        Returns:
            An asyncio Consumer (its poll awaits redis.asyncio).

        Raises:
            ValueError: A bad option, or the log is closed.
        """
        h: Any = self._h        # (pyqueue.Log.consumer, assigned to the Redis class)
        c = RedisConsumer.__new__(RedisConsumer)
        c._h = h.consumer(group, **kwargs)
        c._init()
        self._consumers.add(c)
        return c

    def _close(self) -> None:
        """Close this handle and the consumers made from it (they leave
        their groups; a poll waiting raises ValueError at once, not at the
        end of its wait slice); a read waiting raises ValueError."""
        self._cancel_waits()
        for c in list(self._consumers):
            c._cancel_waits()   # every waiting poll ends now, whatever a close below does
        first: Optional[Exception] = None
        for c in list(self._consumers):
            try:
                c.close()       # on its own loop's thread (_Handle.close)
            except Exception as e:
                first = first or e
        # The sync log's close() closes the sync consumers left (each one
        # tried, the first error raised after the log is closed); then the
        # first error of the async ones, as the sync close does.
        self._h.close()
        if first is not None:
            raise first


class RedisConsumer(_aio._Handle, _aq.Consumer):
    """pyqueue.asyncio.Consumer of a Redis Log's group: the sync
    pyqueue.Consumer (``sync``) with an async poll. commit, assignment and
    close are its plain calls (one round trip, fenced as the sync ones)."""

    def _init(self) -> None:
        pass

    def _backend(self) -> Any:
        return self._h._log._bound

    async def poll(self, max_records: int = 500, timeout: Optional[float] = 0.0) -> List[Record]:
        """As pyqueue.Consumer.poll, without blocking the loop: heartbeat,
        follow rebalances, read the assigned partitions, and wait (one
        XREAD BLOCK, cut at a third of the lease to heartbeat) for a record
        or a rebalance. Cancelled at any point, it hands nothing out and
        moves no position.

        Args:
            max_records: The most records returned (positive).
            timeout: Seconds to wait for the first (None: for ever).

        Returns:
            Up to max_records Records; [] when none came in time.

        Raises:
            PoisonRecord: A record cannot be decoded (as pyqueue.Consumer.poll).
            ShutDown: The log is shut down and every assigned partition is
                read to its end.
            ValueError: Bad max_records, or the consumer is closed (also
                while the poll waits).
        """
        c = self._h
        c._check()
        self._loop()
        max_records = _api.check_max_records(max_records)
        t = _api.check_timeout(timeout)
        deadline = float("inf") if t is None else time.monotonic() + t
        b = self._backend()
        if c._auto_commit and time.monotonic() >= c._next_auto_commit:
            c._commit_quietly()     # before a rebalance can take partitions away (sync)
        await self._keep_alive(b)
        while True:
            out, all_shut = await self._fetch(b, max_records)
            if out is None:
                continue            # the positions changed under the reads: again
            if out:
                return out
            if all_shut and await _aio.command(
                    b, "HGET", key_prefix(c._log.name) + "meta", "shutdown") is not None:
                raise ShutDown(f"log {c._log!r} is shut down")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            parts = sorted(c._positions)
            plan = c._log._wait_plan(parts, [c._positions[p] for p in parts], c._table, c._g,
                                     c._generation or 0, remaining)
            if plan is not None:
                streams: Dict[Any, Any] = plan[0]
                await self._wait_for(b, "XREAD", "COUNT", 1, "BLOCK", plan[1], "STREAMS",
                                     *streams.keys(), *streams.values())
            c._check()              # closed under this wait: ValueError
            self._check_closing()   # (its close() still running in another thread)
            await self._keep_alive(b)

    async def _keep_alive(self, b: Any) -> None:
        """The sync Consumer._keep_alive with its scripts awaited: renew the
        leases, reap now and then, follow a rebalance (or a removal: join
        again) with the sync _refresh."""
        c = self._h
        t = c._table
        keys = t.keys(c._g)
        member = c._member
        alive = await _aio.script(b, _groups._HEARTBEAT, keys, [t._parts, member])
        c._check()
        if alive != 1 and c._member == member:
            c._refresh()            # removed from the group: joins again
        now = time.monotonic()
        if now >= c._next_reap:
            await _aio.script(b, _groups._REAP, keys, [t._parts])
            c._next_reap = now + _REAP_INTERVAL
        gen = await _aio.command(b, "HGET", keys[0], "gen")
        c._check()
        if int(gen or 0) != c._generation:
            c._refresh()

    async def _fetch(self, b: Any, max_records: int
                     ) -> Tuple[Optional[List[Record]], bool]:
        """pyqueue.Consumer._fetch with its reads awaited, on a copy of the
        positions: (records, whether every assigned partition is at the end
        of a shut-down one); (None, False) when the positions or epochs
        changed under the reads (nothing applied). Applied, and handed out,
        with no await between."""
        c = self._h
        log: _rl.RedisLog = c._log
        positions: Dict[int, int] = dict(c._positions)
        epochs: Dict[int, int] = dict(c._epochs)
        parts = sorted(positions)
        if not parts:
            return [], True
        k = c._rr % len(parts)
        order = parts[k:] + parts[:k]   # a different first partition each time
        if c._bad in positions:         # a bad record met last time: named now
            order.remove(c._bad)
            order.insert(0, c._bad)
        moved: Dict[int, int] = {}
        skipped = 0
        bad: Optional[int] = None
        error: Optional[BaseException] = None
        shut = 0
        stop = False
        out: List[Record] = []
        for p in order:
            if len(out) >= max_records or stop or error is not None or bad is not None:
                break
            recs: List[Record] = []
            for _attempt in range(2):   # once more after a reset
                at = moved.get(p, positions[p])
                n = max_records - len(out)
                try:
                    keys = log._read_keys(p)
                    r = await _aio.script(b, _rl._READ, keys[:2], [at, n, log._inc])
                    if int(r[0]) == -3:     # another log's partition (a plain call: rare)
                        log._foreign_partition(p)
                        continue
                    recs = log._read_reply(p, at, r, Record) or []
                    break
                except ShutDown:
                    shut += 1               # at the end of a shut-down partition
                    break
                except (PoisonRecord, CorruptRecord) as e:
                    # The position stays at it; what this poll read is
                    # returned first, the next poll reads p first and raises.
                    if out:
                        bad = p
                    else:
                        error = e
                    break
                except OffsetOutOfRange as e:
                    start, end = int(e.start_offset or 0), int(e.end_offset or 0)
                    if at < start:          # retention overtook us
                        to = start if c._reset == "earliest" else end
                        skipped += to - at
                    else:
                        to = end
                    moved[p] = to
                except Exception as e:      # as the sync _fetch: out first, then it alone
                    if not out:
                        error = e
                    stop = True
                    break
            if recs:
                out.extend(recs)
                moved[p] = recs[-1].offset + 1
        # From here to the return: no await (a cancelled poll moved nothing).
        c._check()
        if c._positions != positions or c._epochs != epochs:
            return None, False
        c._positions.update(moved)
        c.skipped += skipped
        c._rr += 1
        c._bad = bad
        if error is not None:
            raise error
        return out, shut == len(parts)

    def _close(self) -> None:
        """Leave the group (committing first with auto_commit; a plain
        call); a poll waiting raises ValueError."""
        self._cancel_waits()
        self._h.close()


_OT = TypeVar("_OT", bound=_aq._Owner)


def wrap(cls: Type[_OT], h: Any) -> Optional[_OT]:
    """The class here for pyqueue.asyncio class `cls` and sync handle h (a
    Redis Log, or a Consumer of one), or None (aio.wrap's fallback)."""
    impl: Type[RedisLog] | Type[RedisConsumer]
    if isinstance(h, _rl.RedisLog):
        impl = RedisLog
    elif isinstance(h, _SyncConsumer) and isinstance(getattr(h, "_log", None), _rl.RedisLog):
        impl = RedisConsumer
    else:
        return None
    return _aio.make(cls, impl, h)
