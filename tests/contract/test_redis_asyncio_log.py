"""pyqueue.asyncio's Log and Consumer on the Redis backend (one
redis-server, and a cluster), through redis.asyncio
(pyqueue/backends/redis/aio_log.py; docs/design.md, "asyncio on Redis").

The claims tested:
- an awaiting read waits in XREAD (not polling) and is woken by an append
  from another process, or by a shutdown; timeouts return [] (timeout=)
  or raise TimeoutError (wait_for, asyncio.timeout);
- a cancelled read or poll hands nothing out and moves no position:
  thousands cancelled at random moments while another process appends,
  every record is handed out exactly once;
- two async members share the partitions and follow rebalances (join,
  close); a SIGKILLed member's partitions move to the live one (fork and
  spawn); a member whose loop stalls past max_poll_interval is removed and
  its commit fenced (CommitFailed), nothing committed.
"""
import asyncio
import os
import pickle
import random
import signal
import threading
import time
import uuid

import pytest

import pyqueue.asyncio as aq
from pyqueue.errors import CommitFailed, OffsetOutOfRange, ShutDown
from tests import _aio_log_workers as workers
from tests.test_asyncio import _storm

pytestmark = [pytest.mark.redis, pytest.mark.timeout(300)]

P = 4   # partitions


@pytest.fixture
def lg(ab):
    lg = ab.Log(name=f"arl-{uuid.uuid4().hex[:10]}", partitions=P)
    yield lg
    lg.close()
    lg.sync.unlink()


async def _until(cond, what, timeout=30.0):
    """Awaits cond() (a coroutine function) turning true, up to timeout."""
    end = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"


def test_log_kinds_read_and_timeouts(ab, lg):
    """aq.Log on a Redis handle (connect(url).Log, from_sync), its read,
    append and end_offset; the timeouts of a read at the end."""
    async def main():
        assert isinstance(lg, aq.Log) and type(lg).__module__.endswith("aio_log")
        assert type(aq.Log.from_sync(lg.sync.__class__.open(lg.name))).__name__ == "RedisLog"
        assert lg.append("a", key="k") == (lg.sync.partition_for("k"), 0)
        p = lg.sync.partition_for("k")
        lg.sync.append_many(["b", "c"], key="k")
        assert lg.end_offset(p) == 3
        recs = await lg.read(p, 0)
        assert [(r.offset, r.value, r.key) for r in recs] == [(0, "a", b"k"), (1, "b", b"k"),
                                                             (2, "c", b"k")]
        assert [r.value for r in await lg.read(p, 1, max_records=1)] == ["b"]
        assert await lg.read(p, 3, timeout=0.2) == []
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(lg.read(p, 3), 0.2)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await lg.read(p, 3)
        with pytest.raises(OffsetOutOfRange):
            await lg.read(p, 4)
        for bad in (-1, True, "0"):
            with pytest.raises(ValueError):
                await lg.read(p, bad)
        with pytest.raises(ValueError):
            await lg.read(P, 0)
        with pytest.raises(ValueError):
            await lg.read(p, 0, max_records=0)
        # the consumer kinds: Log.consumer and from_sync of a sync consumer
        c = lg.consumer("g")
        assert isinstance(c, aq.Consumer) and type(c).__name__ == "RedisConsumer"
        for bad in (0, True, "1"):
            with pytest.raises(ValueError):
                await c.poll(bad)
        c.close()
        with pytest.raises(ValueError, match="closed"):
            await c.poll()
        # pickled (to a child), the same log as an asyncio handle
        again = pickle.loads(pickle.dumps(lg))
        assert type(again) is type(lg) and again.name == lg.name
        assert [r.value for r in await again.read(p, 0, max_records=1)] == ["a"]
        again.close()
        sc = lg.sync.consumer("g2")
        c2 = aq.Consumer.from_sync(sc)
        assert type(c2).__name__ == "RedisConsumer"
        c2.close()

    asyncio.run(main())


def test_read_waits_and_is_woken_by_another_process(lg, ctx, procs):
    """A read at the end waits in XREAD BLOCK (listed as the handle's wait)
    and returns the record another process appends."""
    async def main():
        p = lg.sync.partition_for("w")
        task = asyncio.ensure_future(lg.read(p, 0, timeout=None))

        async def waiting():
            await asyncio.sleep(0.01)
            return bool(lg._waits())
        await _until(waiting, "the read to wait in XREAD")
        child = procs.start(ctx, workers.append_values, lg.sync, ["woke"], ["w"])
        recs = await asyncio.wait_for(task, 60)
        assert [(r.partition, r.offset, r.value) for r in recs] == [(p, 0, "woke")]
        child.join(30)
        assert child.exitcode == 0

    asyncio.run(main())


def test_shutdown_wakes_a_waiting_read_and_ends_a_poll(lg):
    """A read waiting at the end raises ShutDown when the log is shut down
    (by the sync handle); a consumer read to the end raises it too."""
    async def main():
        lg.append(1, key="k")
        p = lg.sync.partition_for("k")
        c = lg.consumer("g")
        assert [r.value for r in await c.poll(timeout=5)] == [1]
        task = asyncio.ensure_future(lg.read(p, 1, timeout=None))

        async def waiting():
            await asyncio.sleep(0.01)
            return bool(lg._waits())
        await _until(waiting, "the read to wait")
        lg.sync.shutdown()
        with pytest.raises(ShutDown):
            await asyncio.wait_for(task, 30)
        with pytest.raises(ShutDown):
            await c.poll(timeout=None)
        c.close()

    asyncio.run(main())


def test_close_under_a_waiting_read_and_poll(lg):
    """Closing the handle while a read (or the consumer while a poll) waits
    makes it raise ValueError (closed)."""
    async def main():
        c = lg.consumer("g")
        poll = asyncio.ensure_future(c.poll(timeout=None))
        read = asyncio.ensure_future(lg.read(0, 0, timeout=None))

        async def waiting():
            await asyncio.sleep(0.01)
            return bool(lg._waits()) and bool(c._waits())
        await _until(waiting, "the read and the poll to wait")
        c.close()
        with pytest.raises(ValueError, match="closed"):
            await asyncio.wait_for(poll, 30)
        lg.close()
        with pytest.raises(ValueError, match="closed"):
            await asyncio.wait_for(read, 30)

    asyncio.run(main())


def test_closing_the_log_closes_its_consumers(ab, lg):
    """Closing the async Log closes the consumers made from it: a poll
    waiting raises ValueError, and the member leaves its group there and
    then (a consumer closed after its log used to raise ValueError and stay
    a member until its lease ran out). Consumers of another handle of the
    same log are not touched."""
    other = ab.Log(name=lg.sync.name, partitions=P)

    async def main():
        c = lg.consumer("g")
        keep = other.consumer("g")
        poll = asyncio.ensure_future(c.poll(timeout=None))

        async def waiting():
            await asyncio.sleep(0.01)
            return bool(c._waits())
        await _until(waiting, "the poll to wait")
        table = other.sync._group_table()
        assert len(table.members("g")) == 2
        lg.close()
        assert len(table.members("g")) == 1     # left at once: no lease to wait out
        with pytest.raises(ValueError, match="closed"):
            await asyncio.wait_for(poll, 30)
        c.close()                               # closed already: nothing to do
        assert await keep.poll(timeout=0) == []
        keep.close()

    try:
        asyncio.run(main())
    finally:
        other.close()


N = 600


def test_cancel_storm_read(lg, ctx, procs):
    """Reads cancelled at random moments (before their script, while its
    reply is on the way, while waiting in XREAD) while another process
    appends: the caller moves its offset only with what a read returned,
    and gets every record once, in order."""
    p = 1
    key = next(k for k in (f"k{i}" for i in range(1000)) if lg.sync.partition_for(k) == p)
    child = procs.start(ctx, workers.append_values, lg.sync, list(range(N)), [key])
    state = {"at": 0}

    async def get():
        recs = await lg.read(p, state["at"], max_records=random.randint(1, 7), timeout=None)
        state["at"] = recs[-1].offset + 1       # no await since the reply
        return [(r.offset, r.value) for r in recs]

    def done():
        return child.exitcode is not None and state["at"] == N

    got, cancelled = asyncio.run(_storm(get, done, random.Random(5), 1000, calm=True))
    assert child.exitcode == 0
    assert cancelled >= 1000
    assert [x for batch in got for x in batch] == [(i, i) for i in range(N)]


def test_cancel_storm_poll(lg, ctx, procs):
    """Polls cancelled at random moments while another process appends to
    every partition: every record is handed out exactly once (a poll moves
    positions only with the records it returns), and the positions commit."""
    c = lg.consumer("storm")
    keys = [f"k{i}" for i in range(16)]
    child = procs.start(ctx, workers.append_values, lg.sync, list(range(N)), keys)
    rng = random.Random(9)

    async def get():
        return await c.poll(max_records=rng.randint(1, 9), timeout=None)

    def done():
        return child.exitcode is not None and sum(c.sync.lag().values()) == 0

    async def main():
        got, cancelled = await _storm(get, done, random.Random(11), 1000, calm=True)
        c.commit()
        return got, cancelled

    got, cancelled = asyncio.run(main())
    assert child.exitcode == 0
    assert cancelled >= 1000
    recs = [r for batch in got for r in batch]
    assert sorted(r.value for r in recs) == list(range(N))
    ids = [(r.partition, r.offset) for r in recs]
    assert len(set(ids)) == N
    for p in range(P):
        assert c.sync.committed(p) == lg.end_offset(p)
    c.close()


def test_concurrent_polls_on_one_consumer(lg, ctx, procs):
    """Eight tasks poll the same async consumer at once (each call cut
    short at random) while another process appends: every record is handed
    out once (a poll whose positions changed under its reads drops them)."""
    from tests.contract.test_redis_asyncio import _racing_gets
    c = lg.consumer("race")
    child = procs.start(ctx, workers.append_values, lg.sync, list(range(N)),
                        [f"k{i}" for i in range(16)])
    rng = random.Random(13)

    async def get():
        return await c.poll(max_records=rng.randint(1, 9), timeout=None)

    def done():
        return child.exitcode is not None and sum(c.sync.lag().values()) == 0

    got = asyncio.run(_racing_gets(get, 8, done, random.Random(5)))
    assert child.exitcode == 0
    recs = [r for batch in got for r in batch]
    assert sorted(r.value for r in recs) == list(range(N))
    assert len({(r.partition, r.offset) for r in recs}) == N
    c.close()


def test_two_async_members_rebalance(lg):
    """Two async members of one group: the second's join rebalances (the
    first follows it in its poll: disjoint assignments covering every
    partition), the records are consumed once between them, and the
    first gets every partition back when the second closes."""
    def beaters():
        return sum(t.name == "pyqueue-group-heartbeat" for t in threading.enumerate())

    async def main():
        n0 = beaters()
        c1 = lg.consumer("g")
        assert await c1.poll(timeout=0) == []
        assert c1.assignment() == list(range(P))
        c2 = lg.consumer("g")
        assert beaters() <= n0 + 1      # one heartbeat thread per process and log, not per member

        async def split():
            await c1.poll(timeout=0.05)
            await c2.poll(timeout=0.05)
            a1, a2 = set(c1.sync._positions), set(c2.sync._positions)
            return a1 and a2 and not a1 & a2 and a1 | a2 == set(range(P))
        await _until(split, "the rebalance")
        n = 200
        for i in range(n):
            lg.append(i, key=f"k{i}")
        got = []

        async def all_read():
            for c in (c1, c2):
                got.extend(await c.poll(timeout=0.05))
            return len(got) >= n
        await _until(all_read, "every record")
        assert sorted(r.value for r in got) == list(range(n))
        assert len({(r.partition, r.offset) for r in got}) == n
        c1.commit()
        c2.commit()
        c2.close()

        async def all_back():
            await c1.poll(timeout=0.05)
            return c1.assignment() == list(range(P))
        await _until(all_back, "the partitions back")
        assert await c1.poll(timeout=0.1) == []   # from the committed offsets: nothing again
        c1.close()

    asyncio.run(main())


def test_sigkilled_member_partitions_move(lg, ctx, procs):
    """An async member in another process (fork and spawn) holds partitions;
    SIGKILLed, its session lease runs out and its partitions move to the
    live async member, which commits them."""
    report = ctx.Queue()
    try:
        async def main():
            c = lg.consumer("g", max_poll_interval=30.0)
            child = procs.start(ctx, workers.async_member, lg.sync, "g", report, 2.0)

            async def child_holds():
                await c.poll(timeout=0.05)
                return not report.empty()
            await _until(child_holds, "the child's partitions", timeout=60)
            theirs = report.get(timeout=5)
            assert theirs and not set(theirs) & set(c.assignment())
            os.kill(child.pid, signal.SIGKILL)
            child.join(30)
            assert child.exitcode == -signal.SIGKILL

            async def all_mine():
                await c.poll(timeout=0.1)
                return c.assignment() == list(range(P))
            await _until(all_mine, "the dead member's partitions", timeout=60)
            c.commit({p: 0 for p in range(P)})      # owned: not fenced
            assert [m["pid"] for m in lg.sync.group_members("g")] == [os.getpid()]
            c.close()

        asyncio.run(main())
    finally:
        report.close()
        report.join_thread()


def test_a_member_whose_loop_stalls_is_fenced(lg):
    """A member whose loop stalls past max_poll_interval (no poll) has lost
    its lease: its commit raises CommitFailed and writes nothing, even
    before any other member reaped it (the lease is the line); its next
    poll joins again and shares the partitions with a new member."""
    async def main():
        for i in range(20):
            lg.append(i, key=f"k{i}")
        c1 = lg.consumer("g", max_poll_interval=1.0)
        got = []
        while len(got) < 20:
            got += await c1.poll(timeout=1)
        c1.commit({0: 1})
        before = c1.sync.member_id
        time.sleep(1.5)         # the stall under test: the loop blocked past the poll lease
        with pytest.raises(CommitFailed):
            c1.commit()
        assert c1.sync.committed(0) == 1         # nothing of the fenced commit
        assert all(c1.sync.committed(p) is None for p in range(1, P))
        c2 = lg.consumer("g")

        async def split():
            await c1.poll(timeout=0.05)
            await c2.poll(timeout=0.05)
            a1, a2 = set(c1.sync._positions), set(c2.sync._positions)
            return a1 and a2 and not a1 & a2 and a1 | a2 == set(range(P))
        await _until(split, "the partitions shared with the new member")
        assert c1.sync.member_id != before       # it joined again
        c1.close()
        c2.close()

    asyncio.run(main())
