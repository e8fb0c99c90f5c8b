"""pyqueue.WorkQueue: messages larger than max_message_bytes travel out of
band (pyqueue._oob): a shared-memory segment of their own, named
"<queue>.oob-<pid>-<hex>", the ring holding a reference. The segment stays
while the message may be delivered again (nack, visibility timeout, a
consumer SIGKILLed holding it) and is removed by the ack that commits, by
the move to the dead-letter queue (which gets a copy of the value), when
the message is dropped (no dead-letter queue, a duplicate key, a failed
put) and by unlink()."""
import os
import queue
import signal
import time

import numpy as np
import pytest

import pyqueue
from pyqueue import _segment, cli
from pyqueue.errors import DeliveryExpired
from pyqueue.workqueue import DeadLetter, WorkQueue
from tests import _wq_oob_workers as w
from tests.test_workqueue import wqs  # noqa: F401 (fixture)

N = 1 << 20  # float64: an 8 MiB array, the ring 1 MiB
CAP = 1 << 20


def oob_segments(q):
    """The out-of-band segments of q in /dev/shm."""
    prefix = _segment.PREFIX + q.name + ".oob-"
    return sorted(f for f in os.listdir(_segment.SHM_DIR) if f.startswith(prefix))


def big(seed=0):
    return np.arange(N, dtype=np.float64) + seed


def test_a_large_array_goes_through_a_consumer_process_and_its_ack_frees_it(ctx, procs, wqs):
    q = wqs(capacity_bytes=CAP)
    a = big()
    assert a.nbytes > q.max_message_bytes
    q.put(a)
    assert len(oob_segments(q)) == 1
    out = ctx.Queue()
    p = procs.start(ctx, w.consume_array_and_ack, q, out)
    assert out.get(timeout=60) == (float(a.sum()), True, 1)
    assert out.get(timeout=60) == "acked"
    p.join(30)
    assert p.exitcode == 0
    assert oob_segments(q) == []
    assert q.qsize() == 0 and q.stats()["acked"] == 1


def test_a_consumer_sigkilled_holding_it_gets_it_redelivered_whole(ctx, procs, wqs):
    q = wqs(capacity_bytes=CAP, visibility_timeout=60.0)  # the death frees it
    a = big(1)
    q.put(a)
    out = ctx.Queue()
    p = procs.start(ctx, w.hold_array_then_hang, q, out)
    assert out.get(timeout=60) == float(a.sum())
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    assert len(oob_segments(q)) == 1  # read, not removed: it may come again
    d = q.get(timeout=10)
    assert (d.delivery_count, d.redelivered_because) == (2, "consumer died")
    assert np.array_equal(d.value, a)
    d.ack()
    assert oob_segments(q) == []


def test_nack_and_an_expired_visibility_timeout_keep_it_and_only_the_committed_ack_frees_it(wqs):
    q = wqs(capacity_bytes=CAP, visibility_timeout=2.0, max_deliveries=None)
    a = big(2)
    q.put(a)
    d = q.get(timeout=5)
    d.value[:] = -1  # a consumer's change is its own: the next delivery reads what was put
    d.nack()
    first = q.get(timeout=5)
    assert first.delivery_count == 2 and np.array_equal(first.value, a)
    # Not settled within its visibility timeout: delivered again (a second consumer).
    second = q.get(timeout=10)
    assert (second.delivery_count, second.redelivered_because) == (3, "visibility timeout")
    assert np.array_equal(second.value, a)
    with pytest.raises(DeliveryExpired):
        first.ack()  # not this consumer's any more: its ack does not commit, nor remove
    assert len(oob_segments(q)) == 1
    second.ack()
    assert oob_segments(q) == []


def test_batches_read_it_and_their_ack_frees_it(wqs):
    q = wqs(capacity_bytes=CAP, max_deliveries=None)
    a = big(3)
    q.put("small")
    q.put(a)
    b = q.get_many(8, timeout=5)
    assert b.values[0] == "small" and np.array_equal(b.values[1], a)
    b.nack()
    b = q.get_many(8, timeout=5)
    assert np.array_equal(b.values[1], a) and b.delivery_counts == [2, 2]
    b.ack([0])
    assert len(oob_segments(q)) == 1
    b.ack()
    assert oob_segments(q) == []


@pytest.mark.parametrize("how", ["reject", "max_deliveries"])
def test_dead_lettering_keeps_the_value_and_frees_the_segment(wqs, how):
    dlq = wqs(capacity_bytes=CAP, max_deliveries=None)
    q = wqs(capacity_bytes=CAP, max_deliveries=1, dead_letter=dlq)
    a = big(4)
    q.put(a)
    d = q.get(timeout=5)
    if how == "reject":
        d.reject("poison")
    else:
        d.nack(error="boom")
    assert oob_segments(q) == []
    assert len(oob_segments(dlq)) == 1  # the copy: out of band in its turn
    dl = dlq.get(timeout=5)
    assert isinstance(dl.value, DeadLetter) and np.array_equal(dl.value.value, a)
    assert dl.value.raw is None
    dl.ack()
    assert oob_segments(dlq) == []
    assert q.qsize() == 0


def test_dropped_without_a_dead_letter_queue_frees_it(wqs):
    q = wqs(capacity_bytes=CAP, max_deliveries=1)
    q.put(big())
    q.get(timeout=5).nack()
    assert q.stats()["dead_lettered"] == 1
    assert oob_segments(q) == []


def test_a_duplicate_key_and_a_failed_put_leave_no_segment(wqs):
    q = wqs(capacity_bytes=CAP, max_in_flight=2)
    first = q.put(big(), key="k")
    assert q.put(big(), key="k") == first  # dropped: its segment too
    assert len(oob_segments(q)) == 1
    q.put(b"fill")
    with pytest.raises(queue.Full):
        q.put(big(), block=False)
    assert len(oob_segments(q)) == 1
    q.shutdown()
    with pytest.raises(pyqueue.ShutDown):
        q.put(big())
    assert len(oob_segments(q)) == 1


def test_unlink_removes_the_segments_of_messages_left(ctx, procs, wqs):
    q = wqs(capacity_bytes=CAP)
    q.put(big())
    p = procs.start(ctx, w.put_array_and_exit, q, N)  # a producer that is gone
    p.join(60)
    assert p.exitcode == 0
    before = set(oob_segments(q))
    assert len(before) == 2
    # gc does not take a waiting message's segment, its producer dead or not.
    plan = cli.plan_gc([q.name], oob_grace=0.0)
    assert not [e for e in plan if e[0] == "oob"]
    # A segment of a dead producer that no record names is an orphan: gc's.
    p = procs.start(ctx, w.make_orphan_and_exit, q)
    p.join(60)
    assert p.exitcode == 0
    orphan = set(oob_segments(q)) - before
    assert len(orphan) == 1
    plan = cli.plan_gc([q.name], oob_grace=0.0)
    assert [e[1] for e in plan if e[0] == "oob"] == list(orphan)
    q.unlink()
    assert oob_segments(q) == []


def _plant(q, new_name):
    """Rewrite, in q's segment file, the reference of its one out-of-band
    message to name new_name (of the same length)."""
    (old,) = oob_segments(q)
    assert len(new_name) == len(old)
    path = os.path.join(_segment.SHM_DIR, _segment.PREFIX + q.name)
    with open(path, "r+b") as f:
        data = f.read()
        at = data.index(("/" + old).encode())
        f.seek(at)
        f.write(("/" + new_name).encode())
    return old


def test_a_reference_to_a_foreign_segment_is_dead_lettered_never_followed(wqs):
    dlq = wqs(capacity_bytes=CAP, max_deliveries=None)
    q = wqs(capacity_bytes=CAP, dead_letter=dlq)
    victim = wqs(capacity_bytes=CAP)
    assert len(victim.name) == len(q.name)
    victim.put(big(5))
    (victim_seg,) = oob_segments(victim)
    q.put(big(6))
    old = _plant(q, victim_seg)
    with pytest.raises(queue.Empty):
        q.get(timeout=0.5)  # poison: dead-lettered on the way
    assert oob_segments(victim) == [victim_seg]  # neither read nor removed
    dl = dlq.get(timeout=5).value
    assert dl.value is None and dl.reason.startswith("undecodable")
    assert victim_seg.encode() in dl.raw  # the reference, as it was
    assert np.array_equal(victim.get(timeout=5).value, big(5))
    os.unlink(os.path.join(_segment.SHM_DIR, old))  # the planted-over one: the test's to remove


def test_put_many_sends_the_large_ones_out_of_band_and_frees_what_it_does_not_put(wqs):
    q = wqs(capacity_bytes=CAP, max_in_flight=4)
    a = big(7)
    ids = q.put_many(["small", a, big(8)], keys=[None, "k", "k"])  # the third: a duplicate
    assert ids[1] == ids[2]
    assert len(oob_segments(q)) == 1
    b = q.get_many(8, timeout=5)
    assert b.values[0] == "small" and np.array_equal(b.values[1], a)
    b.ack()
    assert oob_segments(q) == []
    q.put_many(["a", "b", "c"])
    with pytest.raises(queue.Full) as ei:
        q.put_many([big(9), big(10)], block=False)  # room for one: the other's segment goes
    assert len(ei.value.ids) == 1
    assert len(oob_segments(q)) == 1


def test_a_consumer_that_cannot_map_the_segment_gives_the_message_back(ctx, procs, wqs):
    """A consumer out of address space (ENOMEM) cannot map a large
    message's segment: that is its trouble, not the message's. Its get
    raises the OSError, the message goes back (a nack, not a reject: not
    dead-lettered, its segment kept), and the next consumer gets it whole."""
    import errno
    dlq = wqs(capacity_bytes=CAP)
    q = wqs(capacity_bytes=CAP, dead_letter=dlq)
    a = big(7)
    q.put(a)
    out = ctx.Queue()
    p = procs.start(ctx, w.get_with_no_address_space_left, q, out)
    p.join(60)
    assert p.exitcode == 0
    assert out.get(timeout=10) == errno.ENOMEM
    assert q.stats()["dead_lettered"] == 0 and dlq.qsize() == 0
    assert len(oob_segments(q)) == 1
    d = q.get(timeout=10)
    assert d.delivery_count == 2 and float(d.value.sum()) == float(a.sum())
    d.ack()
    assert oob_segments(q) == []


def test_an_async_put_waiting_for_room_writes_its_segment_once_and_frees_it_unless_put(wqs):
    """An asyncio put of a large message on a full work queue encodes it
    once: while it waits (trying the put again at each wake-up and each
    retry slice) its one segment stays, the same, instead of one written
    and removed per try. Timed out or cancelled, it leaves no segment; put
    once room comes, the message is that segment, freed by its ack."""
    import asyncio

    import pyqueue.asyncio as aq
    from pyqueue import _aio

    q = wqs(capacity_bytes=CAP, max_in_flight=2)
    aw = aq.WorkQueue.from_sync(q)  # the fixture closes q (aw's handle)
    q.put_many([b"fill", b"fill"])  # max_in_flight=2: no room

    async def registered():
        while not _aio.registered():
            await asyncio.sleep(0.01)

    async def main():
        with pytest.raises(queue.Full):
            await aw.put(big(), timeout=0.3)
        assert oob_segments(q) == []

        t = asyncio.ensure_future(aw.put(big()))
        await registered()
        seen = oob_segments(q)
        assert len(seen) == 1
        woken = _aio.wakeups()
        while _aio.wakeups() < woken + 3:  # three retry slices at least
            await asyncio.sleep(0.01)
        assert oob_segments(q) == seen
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert oob_segments(q) == []

        t = asyncio.ensure_future(aw.put(big(1)))
        await registered()
        seen = oob_segments(q)
        assert len(seen) == 1
        q.get(timeout=5).ack()  # room: the put goes in, with that segment
        await t
        assert oob_segments(q) == seen
        q.get(timeout=5).ack()  # the other b"fill"
        d = q.get(timeout=5)
        assert np.array_equal(d.value, big(1))
        d.ack()
        assert oob_segments(q) == []

    asyncio.run(main())
