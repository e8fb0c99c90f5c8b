"""pyqueue.asyncio on the Redis backend (one redis-server, and a cluster),
through redis.asyncio (pyqueue/backends/redis/aio.py; docs/design.md,
"asyncio on Redis").

The claims tested (docs/guarantees.md):
- a cancelled get of a Queue or a WorkQueue never loses or duplicates a
  message: thousands of gets cancelled at random moments while producers
  in other processes (fork and spawn) put, every message arrives exactly
  once (a WorkQueue's each delivered once: none waits for its visibility
  timeout);
- a get whose reply was lost (what a cancellation after the server ran the
  step leaves) is found by the next get of the handle, and a closed
  handle gives it back at once (not counted as a delivery);
- timeouts (timeout=, asyncio.wait_for, asyncio.timeout), a put on a full
  queue awaiting room, JoinableQueue.join, a shutdown from another process
  waking an awaiting get, WorkQueue ack/nack.
"""
import asyncio
import os
import queue
import random
import signal
import threading
import time
import uuid

import pytest

import pyqueue
import pyqueue.asyncio as aq
from tests import _aio_workers as workers
from tests.test_asyncio import _in_thread, _storm

pytestmark = [pytest.mark.redis, pytest.mark.timeout(300)]


def _name(kind):
    return f"ar-{kind}-{uuid.uuid4().hex[:10]}"


def _closing(*handles):
    for h in handles:
        h.close()
        h.sync.unlink()


def _leftovers(b, name):
    """Keys of queue `name` left on the server (a reservation is one)."""
    prefix = f"pq:{{{name}}}:"
    if b.cluster:
        node = b.client.get_node_from_key(prefix + "meta")
        return sorted(k.decode() for k in b.client.keys(prefix + "*", target_nodes=node))
    return sorted(k.decode() for k in b.client.keys(prefix + "*"))


async def _drain(get):
    out = []
    while True:
        try:
            out.append(await get(timeout=0))
        except queue.Empty:
            return out


def test_put_get_round_trip_and_kinds(ab):
    async def main():
        q = ab.Queue(name=_name("q"))
        try:
            assert isinstance(q, aq.Queue)
            for m in ["a", b"b", {"c": [1, 2]}, 4]:
                await q.put(m)
            assert [await q.get() for _ in range(4)] == ["a", b"b", {"c": [1, 2]}, 4]
            with pytest.raises(queue.Empty):
                await q.get(block=False)
        finally:
            _closing(q)
        # the Log too (tests/contract/test_redis_asyncio_log.py)
        lg = ab.sync.Log(name=_name("l"))
        try:
            assert type(aq.Log.from_sync(lg)).__module__.endswith("redis.aio_log")
        finally:
            lg.close()
            lg.unlink()

    asyncio.run(main())


def test_timeouts(ab):
    """timeout=, asyncio.wait_for and asyncio.timeout end a waiting get (and
    a put waiting for room) with what the sync call raises or the
    TimeoutError of asyncio; nothing is taken."""
    async def main():
        q = ab.Queue(1, name=_name("q"))
        try:
            with pytest.raises(queue.Empty):
                await q.get(timeout=0.2)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(q.get(), 0.2)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await q.get()
            await q.put("only")
            with pytest.raises(queue.Full):
                await q.put("no room", timeout=0.2)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(q.put("no room"), 0.2)
            assert await q.get(timeout=5) == "only"
            assert await _drain(q.get) == []
        finally:
            _closing(q)

    asyncio.run(main())


def test_get_woken_by_other_process_and_put_awaits_room(ab, ctx, procs):
    """A get waiting in BLMOVE is woken by another process's put; a put on a
    full queue waits (XREAD on space) until another process takes."""
    async def main():
        q = ab.Queue(2, name=_name("q"))
        out = ab.sync.Queue(name=_name("out"))
        try:
            p = procs.start(ctx, workers.put_range, q.sync, 0, 10)
            got = [await q.get(timeout=60) for _ in range(10)]
            assert got == list(range(10))
            p.join(30)
            assert p.exitcode == 0
            await q.put(1)
            await q.put(2)
            p = procs.start(ctx, workers.take, q.sync, 4, out)
            await q.put(3, timeout=60)
            await q.put(4, timeout=60)
            assert sorted(out.get(timeout=60)) == [1, 2, 3, 4]
            p.join(30)
            assert p.exitcode == 0
        finally:
            _closing(q)
            out.close()
            out.unlink()

    asyncio.run(main())


def test_a_blmove_from_a_full_queue_tells_a_put_waiting_for_room(ab, ctx, procs):
    """A waiting get's BLMOVE can land on a full queue (filled between its
    step and its BLMOVE): the server moves the head, telling nobody. The
    step that hands that message out tells the put waiting for room (in
    another process, with no timeout: only that wake ends it)."""
    from pyqueue.backends.redis import aio
    from tests.contract.test_redis_shutdown import _blocked, _wait_blocked

    async def main():
        q = ab.Queue(2, name=_name("q"))
        try:
            await q.put("x")
            await q.put("y")
            base = _blocked(ab.sync)
            p = procs.start(ctx, workers.put_one, q.sync, "z")
            _wait_blocked(ab.sync, base)        # its put waits for room
            keys = q._rkeys()
            # what a waiting get's BLMOVE does when puts filled the queue first
            assert await aio.command(q._backend(), "BLMOVE", keys[1], keys[3], "LEFT",
                                     "RIGHT", 1) is not None
            assert await q.get(timeout=5) == "x"
            p.join(30)
            assert p.exitcode == 0
            assert [await q.get(timeout=5) for _ in range(2)] == ["y", "z"]
        finally:
            _closing(q)

    asyncio.run(main())


N_PRODUCERS = 2
PER_PRODUCER = 600


def test_cancel_storm_queue(ab, ctx, procs):
    """Thousands of gets cancelled at random moments (before the script was
    sent, while its reply is on the way, while waiting in BLMOVE, just
    after the move) while two processes put into a small bounded queue:
    every message arrives exactly once, and the handle leaves no
    reservation behind."""
    name = _name("storm")
    q = ab.Queue(50, name=name)   # small: producers also wait for room
    try:
        ps = [procs.start(ctx, workers.put_range, q.sync, k * PER_PRODUCER, PER_PRODUCER)
              for k in range(N_PRODUCERS)]

        def done():
            return all(p.exitcode is not None for p in ps) and q.sync.qsize() == 0

        async def main():
            got, cancelled = await _storm(q.get, done, random.Random(12), 1500, calm=True)
            # what the last cancelled gets reserved comes first now
            return got + await _drain(q.get), cancelled

        got, cancelled = asyncio.run(main())
        assert [p.exitcode for p in ps] == [0] * N_PRODUCERS
        assert cancelled >= 1500
        assert sorted(got) == list(range(N_PRODUCERS * PER_PRODUCER))
        q.close()
        other = ab.sync.Queue.open(name)
        assert other.stats()["dequeued"] == N_PRODUCERS * PER_PRODUCER
        other.close()
        assert not [k for k in _leftovers(ab.sync, name) if ":res" in k or k.endswith(":rsv")]
    finally:
        _closing(q)


@pytest.mark.parametrize("call", ["get", "get_many"])
def test_cancel_storm_workqueue(ab, ctx, procs, call):
    """The storm on a WorkQueue, of get and of get_many (batches of up to
    7): every message delivered once (a delivery lost to a cancellation
    would only come back after its visibility timeout, counted twice)."""
    q = ab.WorkQueue(name=_name("wstorm"), visibility_timeout=120.0)
    try:
        n = 400
        ps = [procs.start(ctx, workers.put_range, q.sync, k * n, n) for k in range(2)]

        def done():
            s = q.sync.stats()
            return all(p.exitcode is not None for p in ps) and s["depth"] == 0

        async def main():
            if call == "get":
                deliveries, cancelled = await _storm(q.get, done, random.Random(7), 1000, calm=True)
                deliveries += await _drain(q.get)
                for d in deliveries:
                    await d.ack()
                return [(d.value, d.delivery_count) for d in deliveries], cancelled
            batches, cancelled = await _storm(lambda: q.get_many(7), done,
                                              random.Random(8), 1000, calm=True)
            while True:     # what the last cancelled call recorded, then nothing
                try:
                    batches.append(await q.get_many(7, timeout=0))
                except queue.Empty:
                    break
            got = []
            for b in batches:
                assert isinstance(b, aq.Batch) and 1 <= len(b) <= 7
                got += zip(b.values, b.sync.delivery_counts)
                await b.ack()
            return got, cancelled

        got, cancelled = asyncio.run(main())
        assert cancelled >= 1000
        assert sorted(v for v, _ in got) == list(range(2 * n))
        assert {c for _, c in got} == {1}
        s = q.sync.stats()
        assert (s["in_flight"], s["redelivered"], s["acked"]) == (0, 0, 2 * n)
    finally:
        _closing(q)


def test_cancel_storm_subscription(ab, ctx, procs):
    """The storm on a topic subscription: every message published (by
    another process) is read once, in order; none counted lost."""
    t = ab.Topic(name=_name("tstorm"), capacity_bytes=1 << 20)
    try:
        sub = t.subscribe("earliest")
        assert isinstance(sub, aq.Subscription)
        n = 800
        p = procs.start(ctx, workers.publish_range, t.sync, 0, n)

        def done():
            return p.exitcode is not None and sub.lag == 0

        got, cancelled = asyncio.run(_storm(sub.get, done, random.Random(3), 1000, calm=True))
        assert p.exitcode == 0
        assert cancelled >= 1000
        assert got == list(range(n))  # in order, none lost or repeated
        assert sub.lost == 0
        sub.close()
    finally:
        _closing(t)


def test_topic_publish_subscribe_timeouts_and_lossless_room(ab):
    """Subscription get/get_many/async for, timeouts; a publish on a full
    lossless topic waits for the subscriber's read (or times out)."""
    async def main():
        # (a subscriber's lease far beyond the waits below: its expiry
        # would also let a waiting publisher through)
        t = ab.Topic(name=_name("t"), capacity_bytes=4096, mode="lossless",
                     subscriber_timeout=120.0)
        sub = t.subscribe()
        try:
            with pytest.raises(queue.Empty):
                await sub.get(timeout=0.2)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(sub.get(), 0.2)
            big = b"x" * 1000
            n = 0
            with pytest.raises(queue.Full):
                while True:
                    await t.publish(big, timeout=0.2)
                    n += 1
            task = asyncio.ensure_future(t.publish(big, timeout=30))
            await asyncio.sleep(0.05)
            assert not task.done()
            assert await sub.get(timeout=5) == big          # makes room
            await asyncio.wait_for(task, 15)    # not held until the next read
            assert await sub.get_many(100, timeout=5) == [big] * n   # n - 1 + the one that waited
            await t.publish(b"after room")
            async for m in sub:
                assert m == b"after room"
                break
            assert sub.lag == 0
        finally:
            sub.close()
            _closing(t)

    asyncio.run(main())


async def _racing_gets(get, tasks, done, rng):
    """`tasks` coroutines get from one handle at once, each call cut short
    at a random moment (wait_for with a random timeout) until done():
    what they got."""
    got = []
    end = time.monotonic() + 120

    async def worker():
        # (a cut always costs a connection, and a reconnect to a cluster
        # node takes longer than a few ms on a loaded machine: not every
        # call may be cut that short, or nothing ever gets through)
        while not done():
            assert time.monotonic() < end, f"no end: {len(got)} got"
            limit = rng.choice([rng.random() * 0.005, rng.random() * 0.05, 2.0])
            try:
                got.append(await asyncio.wait_for(get(), limit))
            except (asyncio.TimeoutError, queue.Empty):
                pass

    await asyncio.gather(*(worker() for _ in range(tasks)))
    return got


@pytest.mark.parametrize("kind", ["queue", "workqueue", "subscription"])
def test_concurrent_gets_on_one_handle(ab, ctx, procs, kind):
    """Eight tasks get from the same async handle at once (each call cut
    short at random) while another process puts: every message arrives
    once (a step and the handle's state after it go together)."""
    n = 400
    if kind == "subscription":
        h = ab.Topic(name=_name("t"), capacity_bytes=1 << 20)
        sub = h.subscribe("earliest")
        p = procs.start(ctx, workers.publish_range, h.sync, 0, n)
        get = sub.get

        def done():
            return p.exitcode is not None and sub.lag == 0
    else:
        h = ab.Queue(name=_name("q")) if kind == "queue" else ab.WorkQueue(name=_name("w"))
        p = procs.start(ctx, workers.put_range, h.sync, 0, n)
        get = h.get

        def done():
            return p.exitcode is not None and (
                h.sync.qsize() == 0 if kind == "queue" else h.sync.stats()["depth"] == 0)

    async def main():
        got = await _racing_gets(get, 8, done, random.Random(5))
        if kind != "subscription":
            got += await _drain(get)
        return got

    try:
        got = asyncio.run(main())
        assert p.exitcode == 0
        if kind == "workqueue":
            assert {d.delivery_count for d in got} == {1}
            got = [d.value for d in got]
        assert sorted(got) == list(range(n))
    finally:
        if kind == "subscription":
            sub.close()
        _closing(h)


def test_a_lost_reply_is_found_by_the_next_get_or_given_back(ab):
    """What a get cancelled after the server ran its step leaves: the step
    is run and its reply dropped (as a cancelled coroutine drops it). The
    next get of the same handle returns that message (a WorkQueue: that
    same delivery, not counted again); a handle closed instead gives it
    back at once, to a get of another handle (a WorkQueue's delivery not
    counted)."""
    from pyqueue.backends.redis import aio

    async def lose_a_queue_get(q):
        await aio.script(q._backend(), aio._ATAKE, q._rkeys(), q._targs(1))
        q._used = True

    async def lose_a_workqueue_get(w):
        await aio.script(w._backend(), aio._AACQ, w._wkeys(),
                         [w.sync._lease_ms(), 1, w._handed, w._id])
        w._used = True

    async def main():
        q = ab.Queue(name=_name("q"))
        q2 = ab.Queue.open(q.name)
        w = ab.WorkQueue(name=_name("w"), visibility_timeout=120.0)
        w2 = ab.WorkQueue.open(w.name)
        try:
            await q.put("first")
            await q.put("second")
            await lose_a_queue_get(q)
            assert q.sync.qsize() == 1          # "first" is in q's reservation
            assert await q.get() == "first"
            await lose_a_queue_get(q)
            q.close()                           # gives "second" back
            assert await q2.get(timeout=5) == "second"

            await w.put("job")
            await lose_a_workqueue_get(w)
            assert w.sync.stats()["in_flight"] == 1
            d = await w.get(timeout=5)
            assert (d.value, d.delivery_count) == ("job", 1)
            await d.nack()
            await lose_a_workqueue_get(w)
            w.close()                           # gives delivery 2 back, uncounted
            d = await w2.get(timeout=5)
            assert (d.value, d.delivery_count, d.redelivered_because) == ("job", 2, "nacked")
            await d.ack()
            assert w2.sync.stats()["redelivered"] == 1
        finally:
            for h in (q2, w2):
                h.close()
            q.sync.unlink()
            w.sync.unlink()

    asyncio.run(main())


def test_workqueue_get_many_and_batch_settles(ab, ctx, procs):
    """await get_many: what is there (up to max_messages) in one step, in
    order, as an aq.Batch whose ack/nack/reject/extend are awaited, of all
    the unsettled positions or of chosen ones; a nacked one comes back
    (counted), a rejected one is dead-lettered; a waiting get_many is
    woken by another process's put; timeout=, wait_for and
    asyncio.timeout end a wait with nothing taken."""
    async def main():
        w = ab.WorkQueue(name=_name("w"), visibility_timeout=120.0)
        try:
            for i in range(5):
                await w.put(i)
            b = await w.get_many(3)
            assert isinstance(b, aq.Batch) and len(b) == 3
            assert b.values == [0, 1, 2] and b.sync.delivery_counts == [1, 1, 1]
            await b.ack([0, 2])
            await b.nack([-2])
            assert b.sync.settled == ["acked", "nacked", "acked"]
            with pytest.raises(ValueError):
                await b.ack([1])                # settled already
            assert w.sync.stats()["in_flight"] == 0
            b = await w.get_many(10)
            assert sorted(zip(b.values, b.sync.delivery_counts)) == [(1, 2), (3, 1), (4, 1)]
            await b.extend(60.0, [0])
            at = b.values.index(3)
            await b.reject([at], reason="bad")
            assert w.sync.stats()["in_flight"] == 2
            await b.ack()                       # the rest
            assert b.sync.settled.count("acked") == 2
            s = w.sync.stats()
            assert (s["in_flight"], s["acked"], s["redelivered"], s["dead_lettered"]) == \
                (0, 4, 1, 1)
            # a position whose visibility ran out is no longer this consumer's
            await w.put("late")
            await w.put("other")
            b = await w.get_many(5)
            assert b.values == ["late", "other"]
            await b.extend(0.2, [0])
            d = await w.get(timeout=30)         # "late" again, once its 0.2 s ran out
            assert (d.value, d.delivery_count) == ("late", 2)
            with pytest.raises(pyqueue.DeliveryExpired) as e:
                await b.ack()
            assert e.value.indices == [0]
            assert b.sync.settled == [None, "acked"]
            await d.ack()
            with pytest.raises(queue.Empty):
                await w.get_many(timeout=0.2)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(w.get_many(), 0.2)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await w.get_many()
            assert w.sync.stats()["in_flight"] == 0     # nothing taken by those
            task = asyncio.ensure_future(w.get_many(10, timeout=60))
            p = procs.start(ctx, workers.put_range, w.sync, 10, 3)
            got = []
            b = await task
            got += b.values
            await b.ack()
            while len(got) < 3:
                b = await w.get_many(10, timeout=60)
                got += b.values
                await b.ack()
            assert sorted(got) == [10, 11, 12]
            p.join(30)
            assert p.exitcode == 0
            with pytest.raises(ValueError):
                await w.get_many(0)
        finally:
            _closing(w)

    asyncio.run(main())


def test_a_lost_get_many_reply_is_found_by_the_next_call_or_given_back(ab):
    """What a get_many cancelled after the server ran its step leaves (the
    step run, its reply dropped): the next get_many of the handle returns
    that same batch (not counted again); a get returns its first delivery
    and gives the rest back (available at once, uncounted); a closed
    handle gives the batch back; and a handle that never comes back (its
    process died) loses the batch to the visibility timeout only, counted
    as any dead consumer's."""
    from pyqueue.backends.redis import aio

    async def lose(w, want):
        await aio.script(w._backend(), aio._AACQ, w._wkeys(),
                         [w.sync._lease_ms(), want, w._handed, w._id])
        w._used = True

    async def main():
        w = ab.WorkQueue(name=_name("w"), visibility_timeout=120.0)
        w2 = ab.WorkQueue.open(w.name)
        w3 = ab.WorkQueue(name=_name("w3"), visibility_timeout=0.5)
        w4 = ab.WorkQueue.open(w3.name)
        try:
            for i in range(6):
                await w.put(i)
            await lose(w, 3)
            assert w.sync.stats()["in_flight"] == 3
            b = await w.get_many(10)            # the same three, not a new batch
            assert (b.values, b.sync.delivery_counts) == ([0, 1, 2], [1, 1, 1])
            assert w.sync.stats()["in_flight"] == 3
            await b.nack([1])
            await b.ack()
            await lose(w, 2)                    # 1 (its 2nd delivery) and 3
            d = await w.get(timeout=5)          # the first; 3 given back
            assert (d.value, d.delivery_count) == (1, 2)
            assert w.sync.stats()["in_flight"] == 1
            await d.ack()
            await lose(w, 5)                    # 3, 4, 5
            w.close()                           # gives them back, uncounted
            b = await w2.get_many(10, timeout=5)
            assert (b.values, b.sync.delivery_counts) == ([3, 4, 5], [1, 1, 1])
            await b.nack()
            s = w2.sync.stats()
            assert (s["in_flight"], s["redelivered"], s["acked"]) == (0, 1, 3)
            for i in range(3):
                await w3.put(i)
            await lose(w3, 5)                   # w3 "dies" holding 0, 1, 2
            b = await w4.get_many(10, timeout=30)   # after their 0.5 s visibility
            assert sorted(zip(b.values, b.sync.delivery_counts)) == [(0, 2), (1, 2), (2, 2)]
            assert set(b.sync.redelivered_because) == {"visibility timeout"}
            await b.ack()
            assert w4.sync.stats()["redelivered"] == 3
        finally:
            for h in (w2, w3, w4):
                h.close()
            w.sync.unlink()
            w3.sync.unlink()

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["queue", "put-full", "workqueue", "subscription"])
def test_shutdown_from_another_process_wakes_awaiting_calls(ab, ctx, procs, kind):
    """An await parked on the server (a get in BLMOVE + XREAD, a put waiting
    for room, a work queue's get in XREAD) raises pyqueue.ShutDown when
    another process shuts the queue down; with no timeout, only the
    shutdown's wake can end it."""
    from tests import _shutdown_workers as sw
    from tests.contract.test_redis_shutdown import _blocked
    b = ab.sync
    sub = None
    if kind == "subscription":
        h = ab.Topic(name=_name("t"))
        sub = h.subscribe()
        call = sub.get
    elif kind == "workqueue":
        h = ab.WorkQueue(name=_name("w"))
        call = h.get
    elif kind == "put-full":
        h = ab.Queue(1, name=_name("q"))
        h.sync.put("fills it")
        call = lambda: h.put("waits for room")  # noqa: E731
    else:
        h = ab.Queue(name=_name("q"))
        call = h.get

    async def main():
        base = _blocked(b)
        task = asyncio.ensure_future(call())
        while _blocked(b) < base + 1:        # the server has it blocked
            await asyncio.sleep(0.01)
        p = procs.start(ctx, sw.shut_down, h.sync, False)
        with pytest.raises(pyqueue.ShutDown):
            await asyncio.wait_for(task, 30)
        p.join(30)
        assert p.exitcode == 0

    try:
        asyncio.run(main())
    finally:
        if sub is not None:
            sub.close()
        _closing(h)


@pytest.mark.parametrize("by", ["async", "sync"])
def test_unlink_removes_every_handles_reservation(ab, by):
    """A handle that holds a reservation and is never closed (its process
    died) leaves nothing behind once the queue is unlinked, by an async
    handle or a plain sync one (Queue, WorkQueue; a Topic read by an async
    subscription too)."""
    from pyqueue.backends.redis import aio

    async def main():
        for kind in ("Queue", "WorkQueue", "Topic"):
            h = getattr(ab, kind)(name=_name(kind.lower()))
            if kind == "Queue":
                await h.put("held")
                await aio.script(h._backend(), aio._ATAKE, h._rkeys(), h._targs(1))
                assert {"rsv", "rsv.lease"} <= {k.rsplit(":", 1)[-1]
                                                for k in _leftovers(ab.sync, h.name)}
            elif kind == "WorkQueue":
                await h.put("held")
                await aio.script(h._backend(), aio._AACQ, h._wkeys(),
                                 [h.sync._lease_ms(), 1, "", h._id])
            else:
                sub = h.subscribe("earliest")
                await h.publish("read")
                assert await sub.get(timeout=5) == "read"
            if kind != "Topic":
                assert [k for k in _leftovers(ab.sync, h.name) if ":res" in k or ":wq.res" in k]
            if by == "async":
                other = getattr(ab, kind).open(h.name)
                other.unlink()
                other.close()
            else:
                other = getattr(ab.sync, kind).open(h.name)
                other.unlink()
                other.close()
            assert _leftovers(ab.sync, h.name) == []
            h.sync.close()

    asyncio.run(main())


def test_a_workqueue_handles_record_goes_with_its_deliverys_visibility(ab):
    """The record of the delivery an async WorkQueue get made (what a dead
    handle leaves) expires with the delivery's visibility timeout: the key
    goes by itself; the delivery comes back then, as any dead consumer's."""
    from pyqueue.backends.redis import aio

    async def main():
        w = ab.WorkQueue(name=_name("w"), visibility_timeout=60.0)
        try:
            await w.put("job")
            await aio.script(w._backend(), aio._AACQ, w._wkeys(),
                             [w.sync._lease_ms(), 1, "", w._id])
            ttl = ab.sync.client.pttl(w._wkeys()[13])
            assert 0 < ttl <= 60_000
        finally:
            _closing(w)

    asyncio.run(main())


def test_a_dead_workqueue_handle_leaves_no_entry_in_wq_rsv(ab):
    """wq.rsv lists the handles that have a record (for unlink()), each
    scored by when the record expires: once a dead handle's record has
    gone by itself, the next step of any handle removes its entry (a
    member per dead handle used to stay until unlink())."""
    from pyqueue.backends.redis import aio
    from tests._support import wait_until

    async def main():
        name = _name("w")
        dead = ab.WorkQueue(name=name, visibility_timeout=0.3)
        other = ab.WorkQueue.open(name)
        client = ab.sync.client
        try:
            await dead.put("job")
            # the dead handle: a step whose reply never came, and no close()
            await aio.script(dead._backend(), aio._AACQ, dead._wkeys(),
                             [dead.sync._lease_ms(), 1, "", dead._id])
            record, rsv = dead._wkeys()[13:15]
            assert client.zscore(rsv, dead._id) is not None
            assert wait_until(lambda: not client.exists(record), timeout=30)
            d = await other.get(timeout=30)   # the job, back after its visibility timeout
            assert d.value == "job" and d.delivery_count == 2
            assert client.zscore(rsv, dead._id) is None
            assert client.zscore(rsv, other._id) is not None
            await d.ack()
            other.close()
            assert client.zcard(rsv) == 0
        finally:
            _closing(other)
            _closing(dead)

    asyncio.run(main())


def test_a_removed_workqueue_raises_segment_not_found_on_every_get(ab):
    """An async WorkQueue removed (by another handle's unlink()) under a
    handle that has used it: get and get_many raise SegmentNotFound, as
    the sync ones do (a review: the acquire read the visibility timeout of
    the missing meta hash first and raised a Lua error)."""
    from pyqueue.errors import SegmentNotFound

    async def main():
        wq = ab.WorkQueue(name=_name("removed"))
        await wq.put("x")
        d = await wq.get(timeout=5)
        await d.ack()
        ab.sync.WorkQueue.open(wq.name).unlink()
        with pytest.raises(SegmentNotFound):
            await wq.get(timeout=0.2)
        with pytest.raises(SegmentNotFound):
            await wq.get_many(5, timeout=0.2)
        with pytest.raises(SegmentNotFound):
            wq.sync.get(timeout=0.2)
        wq.close()

    asyncio.run(main())


def _lease_entries(b, name):
    return {k.decode() for k in b.client.zrange(f"pq:{{{name}}}:rsv.lease", 0, -1)}


@pytest.mark.parametrize("then", ["lost-reply", "handed"])
def test_the_reservation_of_a_killed_handle_is_reaped(ab, ctx, procs, then):
    """A process SIGKILLed while its async handle holds a reservation: once
    its lease runs out, another handle's get that was already waiting
    (nothing else wakes it) gets what the reservation held. With a lost
    reply ("b" reserved, "a" handed out and counted by that step) only "b"
    comes back; a message the dead handle handed out last and no later
    step counted ("a") is delivered again (at least once:
    docs/guarantees.md). The dead handle's keys are gone."""
    name = _name("reap")
    q = ab.Queue(name=name)
    ready = ab.sync.Queue(name=_name("ready"))

    async def main():
        await q.put("a")
        if then == "lost-reply":
            await q.put("b")
        p = procs.start(ctx, workers.async_reserve_and_wait, q, 1.0, then, ready)
        hid = ready.get(timeout=60)
        assert q.sync.qsize() == 0                  # all of it in the child's reservation
        assert hid in _lease_entries(ab.sync, name)
        # no timeout: only the end of the dead handle's lease can wake it
        waiting = asyncio.ensure_future(q.get())
        for _ in range(5):
            await asyncio.sleep(0)
        os.kill(p.pid, signal.SIGKILL)
        p.join(30)
        assert p.exitcode == -signal.SIGKILL
        got = await asyncio.wait_for(waiting, 30)
        assert got == ("b" if then == "lost-reply" else "a")
        with pytest.raises(queue.Empty):
            await q.get(block=False)
        left = _leftovers(ab.sync, name)
        assert not [k for k in left if k.endswith(hid)]
        assert hid not in _lease_entries(ab.sync, name)
        assert hid.encode() not in ab.sync.client.smembers(f"pq:{{{name}}}:rsv")
        q.close()
        s = ab.sync.Queue.open(name)
        # "a" counted by the child's lost step; what the parent got, by its close
        assert s.stats()["dequeued"] == (2 if then == "lost-reply" else 1)
        s.close()

    try:
        asyncio.run(main())
    finally:
        _closing(q)
        ready.close()
        ready.unlink()


def test_a_live_handle_found_reaped_starts_over(ab):
    """A handle whose lease ran out while it lived (its loop stalled: here
    its deadline is put in the past) is reaped by another handle's get:
    the message it handed out last is delivered again; its own next get
    starts a fresh reservation (nothing lost, no error)."""
    async def main():
        q1 = ab.Queue(name=_name("q"))
        q2 = ab.Queue.open(q1.name)
        try:
            for m in ("a", "b", "c"):
                await q1.put(m)
            assert await q1.get() == "a"            # in q1's reservation, not counted
            ab.sync.client.zadd(f"pq:{{{q1.name}}}:rsv.lease", {q1._id: 0})
            assert await q2.get(timeout=5) == "a"   # reaped: "a" again (at least once)
            assert await asyncio.wait_for(q1.get(timeout=5), 10) == "b"
            assert await asyncio.wait_for(q1.get(timeout=5), 10) == "c"
            for h in (q1, q2):
                with pytest.raises(queue.Empty):
                    await h.get(block=False)
        finally:
            q1.close()
            q2.close()
        s = ab.sync.Queue.open(q1.name)
        assert s.stats()["dequeued"] == 3
        s.unlink()
        s.close()

    asyncio.run(main())


def test_a_live_idle_handle_keeps_its_reservation(ab, monkeypatch):
    """A handle that handed a message out and then does nothing for several
    leases keeps its reservation (its task renews the lease): another
    handle's get does not reap it, so nothing is delivered twice."""
    from pyqueue.backends.redis import aio
    monkeypatch.setattr(aio, "LEASE_SECONDS", 1.5)

    async def main():
        q1 = ab.Queue(name=_name("q"))
        q2 = ab.Queue.open(q1.name)
        try:
            await q1.put("a")
            assert await q1.get() == "a"
            await asyncio.sleep(4 * aio.LEASE_SECONDS)      # idle: longer than the lease
            with pytest.raises(queue.Empty):
                await q2.get(block=False)
            assert q1._id in _lease_entries(ab.sync, q1.name)
        finally:
            q1.close()
            q2.close()
        assert _lease_entries(ab.sync, q1.name) == set()
        q1.sync.unlink()

    asyncio.run(main())


@pytest.mark.parametrize("how", ["loop-ends", "dropped"])
def test_a_live_handle_without_a_loop_gives_its_reservation_back(ab, monkeypatch, how):
    """A handle that handed a message out, then whose loop ended (reused by
    a later asyncio.run) or that was dropped without close(), in a process
    that lives on past its lease: the reservation was given back when its
    renewal ended, so a reap never delivers that message again (a hostile
    review: it was delivered twice, a lease later); the message that was
    still reserved and never handed out reaches the other handle once."""
    import gc

    from pyqueue.backends.redis import aio
    monkeypatch.setattr(aio, "LEASE_SECONDS", 1.0)
    name = _name("q")
    q1 = ab.Queue(name=name)

    async def first():
        await q1.put("a")
        await q1.put("b")
        if how == "dropped":
            q = ab.Queue.open(name)
            got = await q.get()
            res = f"pq:{{{name}}}:res:{q._id}"
            assert ab.sync.client.exists(res)
            del q
            gc.collect()
            # its renewal task finds it gone at its next wake (a third of
            # the lease) and gives its reservation back
            end = time.monotonic() + 30
            while ab.sync.client.exists(res):
                assert time.monotonic() < end, "the dropped handle's reservation stayed"
                await asyncio.sleep(0.01)
            return got
        return await q1.get()

    try:
        assert asyncio.run(first()) == "a"
        stop = threading.Event()
        stop.wait(2 * aio.LEASE_SECONDS)    # no loop runs: no renewal (and a lease is over)

        async def second():
            q2 = ab.Queue.open(name)
            try:
                got = [await q2.get(timeout=5)]
                with pytest.raises(queue.Empty):
                    await q2.get(timeout=1.5 * aio.LEASE_SECONDS)   # past any lease: a reap
                return got
            finally:
                q2.close()

        assert asyncio.run(second()) == ["b"]
        s = ab.sync.Queue.open(name)
        assert s.stats()["dequeued"] == 2
        s.close()
    finally:
        _closing(q1)


def _blocked_clients(client):
    """Clients blocked in a command (BLMOVE, XREAD BLOCK) on the server (on
    every node of a cluster)."""
    if hasattr(client, "get_nodes"):        # a cluster client: ask every node
        info = client.info("clients", target_nodes=client.ALL_NODES)
        return sum(int(v["blocked_clients"]) for v in info.values())
    return int(client.info("clients")["blocked_clients"])


async def _gets_waiting_and_one_message_reserved(q, client, n):
    """Starts n gets of q, waits until the server has them blocked (their
    BLMOVEs and the handle's watcher), puts one message and waits, without
    letting the loop run, until a BLMOVE has moved it into the handle's
    reservation (handed to nobody) -> the gets' futures."""
    before = _blocked_clients(client)
    waits = [asyncio.ensure_future(q.get()) for _ in range(n)]
    end = time.monotonic() + 30
    while _blocked_clients(client) < before + n + 1:
        assert time.monotonic() < end, "the gets never waited on the server"
        await asyncio.sleep(0.01)
    q.sync.put("m")
    res = f"pq:{{{q.name}}}:res:{q._id}"
    while not client.llen(res):          # the loop does not run meanwhile
        assert time.monotonic() < end, "no BLMOVE moved the message"
        threading.Event().wait(0.001)
    return waits


def test_the_loop_ending_under_waiting_gets_loses_nothing(ab, monkeypatch):
    """The loop ends while two gets of one handle wait: one's BLMOVE has
    moved a message into the handle's reservation (handed to nobody), the
    other's may still be blocked on the server. The message reaches
    another handle once the lease runs out: the reservation stays listed
    when the renewal ends (a later hostile review: a give-back at the
    loop's end unlisted it, and the BLMOVE still blocked moved the message
    there for good)."""
    from pyqueue.backends.redis import aio
    monkeypatch.setattr(aio, "LEASE_SECONDS", 1.0)
    name = _name("loopend")
    q = ab.Queue(name=name)

    async def main():
        return await _gets_waiting_and_one_message_reserved(q, ab.sync.client, 2)

    try:
        waits = asyncio.run(main())
        assert all(w.cancelled() for w in waits)

        async def other():
            q2 = ab.Queue.open(name)
            try:
                return await q2.get(timeout=15)
            finally:
                q2.close()

        assert asyncio.run(other()) == "m"
        assert [k for k in _leftovers(ab.sync, name) if ":res:" in k] == []
    finally:
        _closing(q)


def test_what_a_handle_only_reserved_is_back_for_sync_consumers_when_its_loop_ends(ab):
    """The loop ends while a get waits and its BLMOVE has moved a message
    into the handle's reservation (handed to nobody): the message is back
    in the queue at once, for a sync consumer too (`qsize`, `get`,
    `join`): sync consumers never reap, and a reservation left to the
    lease hid it from them for good (a later hostile review)."""
    name = _name("loopsync")
    q = ab.JoinableQueue(name=name)
    client = ab.sync.client

    async def main():
        return (await _gets_waiting_and_one_message_reserved(q, client, 1))[0]

    try:
        assert asyncio.run(main()).cancelled()
        s = q.sync
        assert s.qsize() == 1
        assert s.get(timeout=5) == "m"
        s.task_done()
        assert client.hget(f"pq:{{{name}}}:meta", "unfinished") == b"0"
        s.join()                                # returns: nothing unfinished
        assert s.stats()["dequeued"] == 1
    finally:
        _closing(q)


def test_a_handle_frozen_in_its_wait_and_reaped_takes_no_message(ab, ctx, procs):
    """A process frozen (SIGSTOP) while its async get waits on the server
    with no timeout, reaped when its lease ran out, then killed: a message
    put after the reap reaches a live handle. The server ends the wait's
    BLMOVE within the handle's own lease, so a frozen handle's BLMOVE is
    over before it can be reaped (a hostile review: the BLMOVE, still
    blocked, moved the message into a reservation nobody listed, lost for
    good once the process was killed)."""
    name = _name("frozen")
    q = ab.Queue(name=name)
    ready = ab.sync.Queue(name=_name("ready"))
    lease = 1.0
    try:
        before = _blocked_clients(ab.sync.client)
        p = procs.start(ctx, workers.async_blocked_get, q, lease, ready)
        assert ready.get(timeout=60) == "waiting"
        end = time.monotonic() + 30
        while _blocked_clients(ab.sync.client) <= before:   # its BLMOVE (and watcher) wait
            assert time.monotonic() < end, "the child's get never waited on the server"
            threading.Event().wait(0.01)
        os.kill(p.pid, signal.SIGSTOP)
        try:
            threading.Event().wait(2 * lease)   # frozen past its lease: the point
            async def reap_then_put():
                q2 = ab.Queue.open(name)
                try:
                    with pytest.raises(queue.Empty):
                        await q2.get(block=False)   # its step reaps the frozen handle
                    assert _lease_entries(ab.sync, name) == {q2._id}   # the child's: reaped
                    q.sync.put("m")
                    os.kill(p.pid, signal.SIGKILL)
                    return await q2.get(timeout=10)
                finally:
                    q2.close()

            assert asyncio.run(reap_then_put()) == "m"
            assert [k for k in _leftovers(ab.sync, name) if ":res:" in k] == []
        finally:
            os.kill(p.pid, signal.SIGKILL)
            p.join(30)
    finally:
        _closing(q)
        ready.close()
        ready.unlink()


def test_shutdown_drains_first(ab):
    async def main():
        q = ab.Queue(name=_name("q"))
        try:
            await q.put(1)
            q.sync.shutdown()
            with pytest.raises(pyqueue.ShutDown):
                await q.put(2)
            assert await q.get() == 1
            with pytest.raises(pyqueue.ShutDown):
                await q.get()
        finally:
            _closing(q)

    asyncio.run(main())


def test_joinable_join(ab, ctx, procs):
    async def main():
        q = ab.JoinableQueue(name=_name("j"))
        try:
            assert await q.join(timeout=0) is True
            for i in range(5):
                await q.put(i)
            assert await q.join(timeout=0.2) is False
            procs.start(ctx, workers.drain_and_mark_done, q.sync, 5)
            assert await q.join(timeout=60) is True
        finally:
            _closing(q)

    asyncio.run(main())


def test_workqueue_ack_nack_reject(ab):
    async def main():
        dlq = ab.WorkQueue(name=_name("dlq"))
        w = ab.WorkQueue(name=_name("w"), max_deliveries=2, dead_letter=dlq.sync)
        try:
            await w.put("a")
            await w.put("b")
            d = await w.get(timeout=5)
            assert (d.value, d.delivery_count) == ("a", 1)
            await d.nack()
            assert d.settled == "nacked"
            with pytest.raises(pyqueue.DeliveryExpired):
                await d.ack()
            d2 = await w.get(timeout=5)
            assert (d2.value, d2.delivery_count, d2.redelivered_because) == ("a", 2, "nacked")
            await d2.extend(30)
            await d2.nack()                       # its last delivery: dead-lettered
            async with await w.get(timeout=5) as d3:
                assert d3.value == "b"
            assert d3.settled == "acked"
            dead = await dlq.get(timeout=5)
            assert dead.value.value == "a"
            await dead.ack()
            s = w.sync.stats()
            assert (s["acked"], s["dead_lettered"], s["in_flight"]) == (1, 1, 0)
            with pytest.raises(queue.Empty):
                await w.get(timeout=0.1)
        finally:
            _closing(w, dlq)

    asyncio.run(main())


def test_pickled_async_handle_and_forked_reservation(ab, ctx, procs):
    """An async handle sent to a child is an async handle there, with its
    own reservation (a forked child never takes its parent's)."""
    async def main():
        q = ab.Queue(name=_name("q"))
        out = ab.sync.Queue(name=_name("out"))
        try:
            await q.put("to the parent")
            assert await q.get() == "to the parent"     # makes q's handle id
            await q.put("to the child")
            p = procs.start(ctx, workers.async_consume, q, 1, out)
            assert out.get(timeout=60) == ["to the child"]
            p.join(30)
            assert p.exitcode == 0
        finally:
            _closing(q)
            out.close()
            out.unlink()

    asyncio.run(main())


@pytest.mark.parametrize("kind,then", [
    (k, t) for k in ("Queue", "WorkQueue", "subscription") for t in ("put", "nothing")
] + [("Queue", "late-move"), ("WorkQueue-get_many", "put"), ("WorkQueue-get_many", "nothing")])
def test_close_under_a_waiting_get(ab, kind, then):
    """A get waiting on the server when its handle is closed raises
    ValueError (closed), as on the shared-memory classes, with nothing put
    too (close() ends its wait); a message put by another handle right
    after the close is delivered exactly once, to a live handle (not left
    in the closed handle's reservation), also when it lands in that
    reservation after close()'s give-back ("late-move": what a BLMOVE the
    server serves before it sees the cancelled wait's disconnect does)."""
    from tests.contract.test_redis_shutdown import _blocked
    b = ab.sync
    many = kind.endswith("-get_many")    # a WorkQueue's get_many waiting
    kind = kind.removesuffix("-get_many")

    async def main():
        if kind == "subscription":
            t = ab.Topic(name=_name("t"))
            h = t.subscribe()
            live = t.subscribe()
            other = t
        else:
            t = h = getattr(ab, kind)(name=_name(kind.lower()))
            other = live = getattr(ab, kind).open(h.name)
        try:
            base = _blocked(b)
            task = asyncio.ensure_future(h.get_many() if many else h.get())
            while _blocked(b) < base + 1:        # the server has it blocked
                await asyncio.sleep(0.01)
            h.close()
            if then == "late-move":
                keys = h._rkeys()
                # The wait's BLMOVE (not yet disconnected on the server) may
                # serve this push itself; else the LMOVE does what it does.
                b.client.rpush(keys[1], h.sync._encode("m1"))
                b.client.lmove(keys[1], keys[3], "LEFT", "RIGHT")
                assert b.client.llen(keys[3]) == 1
            elif then == "put":
                await (other.publish("m1") if kind == "subscription" else other.put("m1"))
            with pytest.raises(ValueError):
                await asyncio.wait_for(task, 30)
            if then == "nothing":
                return
            got = await live.get(timeout=30)
            if kind == "WorkQueue":
                assert (got.value, got.delivery_count) == ("m1", 1)
                await got.ack()
                with pytest.raises(queue.Empty):
                    await live.get(timeout=0)
                assert live.sync.stats()["in_flight"] == 0
            else:
                assert got == "m1"
                with pytest.raises(queue.Empty):
                    await live.get(timeout=0)
            if kind == "Queue":
                assert live.sync.qsize() == 0
                assert [k for k in _leftovers(b, h.name) if h._id in k] == []
        finally:
            if kind == "subscription":
                live.close()
            else:
                h.close()
            other.close()
            t.sync.unlink()

    asyncio.run(main())


def test_a_command_cancelled_again_and_again_gives_its_connection_back(redis_server):
    """A command cancelled while it waits for its reply, and then at every
    turn of the loop while it cleans up (the disconnect of the connection
    whose reply may be on its way, the release): the connection goes back
    to the pool all the same (none stays in use). (On redis-py 8.2 the
    unshielded cleanup passes too: its disconnect(nowait=True) and an
    uncontended release never suspend, so no second cancellation can land
    in them; this guards the shielded one against a redis-py that does.)"""
    from pyqueue.backends.redis import aio
    from tests.contract.test_redis_shutdown import _blocked
    b = aq.connect(redis_server.url).sync     # (one server: a pool of its own)

    async def main():
        client = await aio.client_of(b)
        pool = client.connection_pool
        base = _blocked(b)
        for turns in range(6):
            deadline = time.monotonic() + 10
            while _blocked(b) > base:     # the last turn's, until the server sees it go
                assert time.monotonic() < deadline, (turns, "still blocked on the server")
                await asyncio.sleep(0.01)
            task = asyncio.ensure_future(aio.command(b, "BLPOP", _name("none"), 0))
            while _blocked(b) < base + 1:
                assert time.monotonic() < deadline, (turns, "never blocked on the server")
                await asyncio.sleep(0.01)
            for _ in range(turns):
                await asyncio.sleep(0)
            for _ in range(1000):
                if task.done():
                    break
                task.cancel()
                await asyncio.sleep(0)
            assert task.cancelled()
            deadline = time.monotonic() + 10    # (a release left running on its own)
            while pool._in_use_connections and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert not pool._in_use_connections

    asyncio.run(main())


def test_a_step_that_lands_after_close_moves_and_counts_nothing(ab):
    """A get's step sent before close() and run by the server after
    close()'s give-back (what a get in flight at the close leaves): it
    neither counts the handed message a second time nor takes one into the
    closed reservation; the give-back of that get takes nothing from the
    queue either."""
    from pyqueue.backends.redis import aio
    b = ab.sync

    async def main():
        q = ab.Queue(name=_name("q"))
        q2 = ab.Queue.open(q.name)
        try:
            for m in ("a", "b"):
                await q.put(m)
            assert await q.get() == "a"
            keys = q._rkeys()
            q.close()                    # counts "a"
            assert int(b.client.hget(keys[0], "dequeued")) == 1
            r = await aio.script(q._backend(), aio._ATAKE, keys, q._targs(1))
            assert r == [-3]
            await aio.script(q._backend(), aio._GIVE_BACK, q._gkeys(keys),
                             [q._handed, q._id])
            assert int(b.client.hget(keys[0], "dequeued")) == 1
            assert await q2.get(timeout=5) == "b"
            with pytest.raises(queue.Empty):
                await q2.get(block=False)
        finally:
            q2.close()
            q.sync.unlink()

    asyncio.run(main())


def test_get_many_and_the_nowait_calls(ab):
    """Queue.get_many waits for one message, then returns up to
    max_messages (a cancelled get's reserved message first); an
    undecodable one is reported by its own call, the rest kept; the
    *_nowait calls are plain calls (Queue's through the reservation)."""
    from pyqueue.backends.redis import aio

    async def main():
        q = ab.Queue(name=_name("q"))
        w = ab.WorkQueue(name=_name("w"), visibility_timeout=120.0)
        try:
            with pytest.raises(queue.Empty):
                await q.get_many(10, timeout=0.1)
            with pytest.raises(queue.Empty):
                q.get_nowait()
            task = asyncio.ensure_future(q.get_many(10))
            for _ in range(20):
                await asyncio.sleep(0)
            q.put_nowait(0)
            assert await asyncio.wait_for(task, 30) == [0]
            for i in range(1, 6):
                q.put_nowait(i)
            # a get whose reply was lost: 1 and 2 wait in the reservation
            await aio.script(q._backend(), aio._ATAKE, q._rkeys(), q._targs(2))
            assert q.sync.qsize() == 3
            assert await q.get_many(3) == [1, 2, 3]
            assert q.get_nowait() == 4
            assert await q.get_many(10) == [5]
            with pytest.raises(ValueError):
                await q.get_many(0)
            # an undecodable message in the middle: its own call reports it
            q.put_nowait("x")
            ab.sync.client.rpush(f"pq:{{{q.name}}}:list", b"\xffbad")
            q.put_nowait("y")
            assert await q.get_many(10) == ["x"]
            with pytest.raises(pyqueue.UndecodableMessage):
                await q.get_many(10)
            assert await q.get_many(10) == ["y"]
            with pytest.raises(queue.Empty):
                q.get_nowait()

            await w.put("job")
            d = w.get_nowait()
            assert isinstance(d, aq.Delivery) and d.value == "job"
            await d.ack()
            with pytest.raises(queue.Empty):
                w.get_nowait()
        finally:
            _closing(q, w)

    asyncio.run(main())


def test_cancel_storm_queue_get_many(ab, ctx, procs):
    """The storm with get_many: every message once, in order per producer."""
    name = _name("mstorm")
    q = ab.Queue(50, name=name)
    try:
        ps = [procs.start(ctx, workers.put_range, q.sync, k * 300, 300) for k in range(2)]

        def done():
            return all(p.exitcode is not None for p in ps) and q.sync.qsize() == 0

        async def main():
            got, cancelled = await _storm(lambda: q.get_many(7), done, random.Random(5), 500, calm=True)
            return [m for batch in got for m in batch] + await _drain(q.get), cancelled

        got, cancelled = asyncio.run(main())
        assert [p.exitcode for p in ps] == [0, 0]
        assert cancelled >= 500
        assert sorted(got) == list(range(600))
        for k in range(2):
            mine = [m for m in got if k * 300 <= m < (k + 1) * 300]
            assert mine == sorted(mine)
        q.close()
        other = ab.sync.Queue.open(name)
        assert other.stats()["dequeued"] == 600
        other.close()
    finally:
        _closing(q)


@pytest.mark.parametrize("kind", ["queue", "subscription"])
def test_get_nowait_while_a_get_of_the_same_handle_is_in_its_step(ab, kind):
    """get_nowait() while a get of the same handle waits for its step's
    reply never hands out that get's message a second time (a Queue takes
    the next one from the queue; a Subscription says Empty now); the
    subscription's get_nowait reads on from the handle's position."""
    async def main():
        if kind == "queue":
            h = ab.Queue(name=_name("q"))
            for m in ("a", "b", "c"):
                await h.put(m)
            target = h
        else:
            h = ab.Topic(name=_name("t"))
            target = h.subscribe()
            for m in ("a", "b", "c"):
                await h.publish(m)
        try:
            task = asyncio.ensure_future(target.get(timeout=5))
            while not (getattr(target, "_lock", None) and target._lock[1].locked()):
                await asyncio.sleep(0)
            if kind == "queue":
                # the other message of the two first (which one depends on
                # whether the step was sent yet: a cluster client routes first)
                first = sorted([target.get_nowait(), await task])
            else:
                with pytest.raises(queue.Empty):
                    target.get_nowait()
                first = [await task]
            rest = []
            while True:
                try:
                    rest.append(target.get_nowait())
                except queue.Empty:
                    break
            assert first + rest == ["a", "b", "c"]
            if kind == "subscription":
                assert target.lost == 0 and target.lag == 0
        finally:
            if kind == "subscription":
                target.close()
            _closing(h)

    asyncio.run(main())


def _got_once(kind, box, value):
    """box (of _in_thread) holds value, got once (a WorkQueue's delivery:
    first delivered, then acked)."""
    got = box.get("result")
    if kind == "WorkQueue":
        assert (got.value, got.delivery_count) == (value, 1), box
        got.sync.ack()
    else:
        assert got == value, box


@pytest.mark.parametrize("kind", ["Queue", "WorkQueue", "subscription"])
def test_one_handle_is_used_by_one_open_event_loop_at_a_time(ab, kind):
    """A Redis asyncio handle whose get waits on one loop (thread A) refuses
    a get from a second loop (thread B) with RuntimeError, while A's loop is
    open: its steps' lock, lease renewal and shutdown watch belong to one
    loop, and two loops sending the handle's state at once would be handed
    the same message. A close() from B wakes A's waiting get (ValueError,
    on A's own thread). Once A's asyncio.run has ended, B uses the handle,
    and what was put is delivered once."""
    from tests.contract.test_redis_shutdown import _blocked
    b = ab.sync
    if kind == "subscription":
        t = ab.Topic(name=_name("t"))
        h = t.subscribe("latest")
        other = t
    else:
        t = h = getattr(ab, kind)(name=_name(kind.lower()))
        other = getattr(ab, kind).open(h.name)
    waiting = threading.Event()
    try:
        base = _blocked(b)

        async def wait_in_a():
            task = asyncio.ensure_future(h.get(timeout=60))
            while _blocked(b) < base + 1:     # the server has A's get blocked
                await asyncio.sleep(0.01)
            waiting.set()
            return await task

        ta, boxa = _in_thread(wait_in_a)
        assert waiting.wait(60)

        async def get_in_b():
            return await h.get(timeout=1)

        tb, boxb = _in_thread(get_in_b)
        tb.join(60)
        assert isinstance(boxb.get("error"), RuntimeError), boxb
        assert "another event loop" in str(boxb["error"])
        assert ta.is_alive() and not boxa     # A's get still waits

        # Another thread's put reaches A's get; then A's loop ends.
        asyncio.run(other.publish("m1") if kind == "subscription" else other.put("m1"))
        ta.join(60)
        _got_once(kind, boxa, "m1")

        # A's loop is closed: B may use the handle now, and gets what is put.
        async def put_and_get_in_b():
            await (other.publish("m2") if kind == "subscription" else other.put("m2"))
            return await h.get(timeout=30)

        tb, boxb = _in_thread(put_and_get_in_b)
        tb.join(60)
        _got_once(kind, boxb, "m2")

        # A close() from another thread wakes a get waiting on loop A (the
        # close runs on A's loop, whose thread then raises ValueError).
        base = _blocked(b)
        waiting.clear()
        ta, boxa = _in_thread(wait_in_a)
        assert waiting.wait(60)
        closed_on = []
        real_close = h._close

        def recorded_close():
            closed_on.append(threading.current_thread())
            real_close()
        h._close = recorded_close
        h.close()
        # The close ran on A's thread (no coroutine of the handle in the
        # middle of it), and its get was woken by it, not by A's loop's next
        # wake-up of its own (the lease renewal's, LEASE_SECONDS / 3 = 10 s).
        assert closed_on == [ta]
        ta.join(8)
        assert not ta.is_alive()
        assert isinstance(boxa.get("error"), ValueError), boxa
        if kind == "Queue":
            assert other.sync.qsize() == 0
    finally:
        h.close()
        other.close()
        t.sync.unlink()


def test_close_from_another_thread_ends_a_waiting_read_at_once(ab):
    """A Log read waiting with no timeout on a loop in another thread ends
    with ValueError when the log is closed from this thread, every time: a
    read woken by the close's cancel before the close is done does not
    start a new wait (a hostile review: 1 run in 10 waited until the next
    append, for ever without one; 10 rounds, the close made slow)."""
    from tests.contract.test_redis_shutdown import _blocked
    b = ab.sync
    name = _name("l")
    ab.sync.Log(name=name, partitions=1).close()
    try:
        for _ in range(10):
            lg = ab.Log.open(name)
            # Consumers made from it: its close() makes them leave their
            # groups (round trips) before the log is closed. The window
            # between the close's cancel and the log's being closed, made
            # wide (a slow server, a busy machine): the woken read has time
            # to read again and start a new wait in it.
            lg.consumer("g")
            lg.sync.consumer("g2")
            sync_close = lg.sync.close

            def slow_close(sync_close=sync_close):
                time.sleep(0.3)
                sync_close()
            lg.sync.close = slow_close
            waiting = threading.Event()
            base = _blocked(b)

            async def read():
                task = asyncio.ensure_future(lg.read(0, 0, timeout=None))
                while _blocked(b) < base + 1:
                    await asyncio.sleep(0.01)
                waiting.set()
                return await task

            ta, box = _in_thread(read)
            assert waiting.wait(60)
            lg.close()
            ta.join(8)
            assert not ta.is_alive()
            assert isinstance(box.get("error"), ValueError), box
    finally:
        ab.sync.Log.open(name).unlink()


def test_close_from_a_coroutine_of_another_loop_does_not_wait_for_the_handles_loop(ab):
    """close() from a coroutine of loop A, of a handle bound to loop B whose
    thread is blocked (in a synchronous call), closes at once where it is
    called: it does not hand the close to B's loop and wait for it (two
    loops closing each other's handles would each wait for the other, 10 s:
    a hostile review)."""
    q = ab.Queue(name=_name("q"))
    bound, release = threading.Event(), threading.Event()

    async def bind_then_block():
        with pytest.raises(queue.Empty):
            await q.get(timeout=0.01)       # binds q to this loop
        bound.set()
        release.wait(60)                    # this loop's thread is blocked

    tb, boxb = _in_thread(bind_then_block)
    try:
        assert bound.wait(60)

        async def close_from_a():
            t0 = time.monotonic()
            q.close()
            return time.monotonic() - t0

        ta, boxa = _in_thread(close_from_a)
        ta.join(30)
        assert not ta.is_alive() and "error" not in boxa, boxa
        assert boxa["result"] < 5.0         # (the hand-off's wait is 10 s)
        with pytest.raises(ValueError):
            q.sync.qsize()                  # closed
    finally:
        release.set()
        tb.join(30)
        q.close()
        ab.sync.Queue.open(q.name).unlink()
