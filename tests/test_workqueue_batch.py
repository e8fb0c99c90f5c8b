"""pyqueue.WorkQueue batches: put_many (keys, delay, size checked before
anything is put, Full keeps what was put), get_many (one lock hold; dead
and undecodable messages go to the dead-letter queue on the way), Batch
settles (all, or by position; what is no longer this consumer's is
reported and the rest settled), max_deliveries with batches, consumers in
processes, and a consumer SIGKILLed holding a batch (fork and spawn).
The model test with batch operations is TestWorkQueueModel in
tests/test_workqueue.py."""
import os
import pickle
import queue
import signal
import time

import pytest

from pyqueue import DeliveryExpired, MessageTooLarge, WorkQueue
from pyqueue.workqueue import Batch
from tests import _wq_workers as w
from tests.test_workqueue import Bomb, wqs  # noqa: F401 (fixture)


def test_put_many_get_many_ack(wqs):
    q = wqs()
    ids = q.put_many([b"a", "b", {"c": 1}, 4])
    assert ids == [0, 1, 2, 3]
    b = q.get_many(3)
    assert isinstance(b, Batch) and len(b) == 3
    assert list(b) == [b"a", "b", {"c": 1}] and b.values == list(b) and b[2] == {"c": 1}
    assert b.ids == [0, 1, 2] and b.delivery_counts == [1, 1, 1]
    assert b.redelivered_because == [None] * 3 and b.settled == [None] * 3
    assert all(abs(t - time.time()) < 60 for t in b.enqueued_at)
    assert q.stats()["in_flight"] == 3
    b.ack()
    assert b.settled == ["acked"] * 3
    s = q.stats()
    assert s["acked"] == 3 and s["in_flight"] == 0 and s["depth"] == 1
    with pytest.raises(ValueError, match="acked already"):
        b.ack([0])
    b.ack()  # nothing left to settle: a no-op
    assert q.get_many(10).values == [4]


def test_get_many_waits_then_empty(wqs):
    q = wqs()
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get_many(10, timeout=0.2)
    assert time.monotonic() - t0 >= 0.19
    with pytest.raises(queue.Empty):
        q.get_many(10, block=False)
    with pytest.raises(ValueError):
        q.get_many(0)
    q.put("x")
    assert q.get_many(10, timeout=5).values == ["x"]


def test_batch_settles_by_position_and_nack_redelivers(wqs):
    q = wqs(max_deliveries=None)
    q.put_many(list(range(6)))
    b = q.get_many(6)
    b.ack([0, -1])          # positions, negative from the end
    b.nack([1, 2], delay=0.0)
    assert b.settled == ["acked", "nacked", "nacked", None, None, "acked"]
    with pytest.raises(IndexError):
        b.ack([6])
    with pytest.raises(ValueError):
        b.nack([1])          # settled already: nothing settled
    assert b.settled[3:5] == [None, None]
    again = q.get_many(10)
    assert again.values == [1, 2] and again.delivery_counts == [2, 2]
    assert again.redelivered_because == ["nacked", "nacked"]
    b.ack()                  # the rest: 3 and 4
    again.ack()
    assert q.stats()["acked"] == 6 and q.qsize() == 0


def test_batch_nack_with_delay(wqs):
    q = wqs()
    q.put_many(["a", "b"])
    q.get_many(2).nack(delay=0.3)
    with pytest.raises(queue.Empty):
        q.get_many(2, block=False)
    b = q.get_many(2, timeout=10)
    assert b.values == ["a", "b"] and b.delivery_counts == [2, 2]
    b.ack()


def test_stale_messages_of_a_batch_are_reported_and_the_rest_settled(wqs):
    q = wqs(max_deliveries=None)
    q.put_many(["a", "b", "c"])
    b = q.get_many(3)
    b.extend(0, [0, 2])     # a and c: their deadline is now
    other = q.get(timeout=5)  # the old holder of a loses it
    assert other.value == "a"
    with pytest.raises(DeliveryExpired) as ei:
        b.ack()
    assert ei.value.indices == [0]
    assert b.settled == [None, "acked", "acked"]  # c: its deadline passed, but nobody took it
    other.ack()
    assert q.stats()["acked"] == 3


def test_batch_context_manager(wqs):
    q = wqs(max_deliveries=None)
    q.put_many([1, 2])
    with q.get_many(2) as b:
        pass
    assert b.settled == ["acked", "acked"]
    q.put_many([3, 4])
    with pytest.raises(RuntimeError):
        with q.get_many(2) as b:
            b.ack([0])
            raise RuntimeError("boom")
    assert b.settled == ["acked", "nacked"]
    assert q.get_many(2).values == [4]


def test_batch_is_not_picklable_nor_constructible(wqs):
    q = wqs()
    q.put(1)
    b = q.get_many(1)
    with pytest.raises(TypeError):
        pickle.dumps(b)
    with pytest.raises(TypeError):
        Batch()
    b.ack()


def test_max_deliveries_with_batches_dead_letters(wqs):
    dlq = wqs(capacity_bytes=1 << 20)
    q = wqs(max_deliveries=2, dead_letter=dlq)
    q.put_many(["a", "b", "c"])
    q.get_many(3).nack()
    b = q.get_many(3)
    assert b.delivery_counts == [2, 2, 2]
    b.nack([0, 1], error="bad")   # their last delivery: dead-lettered
    dls = dlq.dead_letters()
    assert [(x.value, x.attempts, x.last_error) for x in dls] == [("a", 2, "bad"), ("b", 2, "bad")]
    assert all(x.reason == "delivered 2 times, last: nacked" for x in dls)
    b.extend(0, [2])  # c comes due again with 2 deliveries: out of them
    with pytest.raises(queue.Empty):
        q.get_many(3, block=False)  # moved on the way, nothing delivered
    assert [x.value for x in dlq.dead_letters()] == ["a", "b", "c"]
    assert dlq.dead_letters()[2].reason.startswith("delivered 2 times")
    assert q.qsize() == 0


def test_get_many_moves_dead_and_poison_and_returns_the_rest(wqs):
    dlq = wqs(capacity_bytes=1 << 20)
    q = wqs(max_deliveries=1, dead_letter=dlq)
    q.put_many(["a", "b"])
    q.get_many(1).nack()          # a: out of deliveries, moved by the nack
    q.put(Bomb())                 # undecodable
    q.put("d")
    b = q.get_many(10)
    assert b.values == ["b", "d"]
    dls = dlq.dead_letters()
    assert dls[0].value == "a"
    assert dls[1].reason.startswith("undecodable") and dls[1].raw is not None
    b.ack()
    assert q.qsize() == 0


def test_put_many_dedup_keys_and_delay(wqs):
    q = wqs(dedup_window=60.0)
    ids = q.put_many(["a", "b", "a2", "c"], keys=["ka", None, "ka", b"kc"])
    assert ids[2] == ids[0] and len(set(ids)) == 3
    assert q.put_many(["again"], keys=["kc"]) == [ids[3]]
    assert q.stats()["deduplicated"] == 2
    assert q.put_many(["later"], delay=0.3) == [ids[3] + 1]
    assert q.get_many(10).values == ["a", "b", "c"]
    assert q.get_many(10, timeout=10).values == ["later"]
    with pytest.raises(ValueError, match="keys"):
        q.put_many(["x", "y"], keys=["k"])
    with pytest.raises(TypeError):
        q.put_many(["x"], keys=[1])
    assert q.put_many([]) == []


def test_put_many_checks_sizes_before_putting_and_full_keeps_what_fit(wqs):
    q = wqs(capacity_bytes=1 << 16, max_in_flight=4)
    big = b"x" * (q.max_message_bytes + 1)
    with pytest.raises(MessageTooLarge):
        q.put_many([b"ok", big])
    assert q.qsize() == 0  # nothing was put
    with pytest.raises(queue.Full) as ei:
        q.put_many(list(range(6)), timeout=0.1)
    assert ei.value.ids == [0, 1, 2, 3]
    assert q.get_many(10).values == [0, 1, 2, 3]


def test_batch_ack_frees_the_room_at_once(wqs):
    """The head passes a batch acked together: the room is there for the
    next put at once (not when a reaper next passes)."""
    q = wqs(capacity_bytes=1 << 16, max_in_flight=8)
    for _ in range(3):
        assert len(q.put_many(list(range(8)), block=False)) == 8
        with pytest.raises(queue.Full):
            q.put_nowait("no room")
        b = q.get_many(8, block=False)
        assert len(b) == 8
        b.ack()
    assert q.stats()["acked"] == 24 and q.qsize() == 0


def test_put_many_waits_for_room_a_consumer_makes(wqs, ctx, procs):
    q = wqs(max_in_flight=8)
    out = ctx.Queue()
    procs.start(ctx, w.batch_consume_and_ack, q, out, 100, 5)
    assert q.put_many(list(range(100)), timeout=60) == list(range(100))
    got = sorted(out.get(timeout=60) for _ in range(100))
    assert [v for _, v, _ in got] == list(range(100))


def test_batch_consumers_in_processes_ack_each_message_once(ctx, procs, wqs):
    q = wqs()
    n = 2000
    out = ctx.Queue()
    for _ in range(2):
        procs.start(ctx, w.batch_consume_and_ack, q, out, n, 64)
    for k in range(0, n, 100):
        q.put_many(list(range(k, k + 100)))
    got = [out.get(timeout=60) for _ in range(n)]
    assert sorted(v for _, v, _ in got) == list(range(n))
    assert all(c == 1 for _, _, c in got)
    s = q.stats()
    assert s["acked"] == n and s["redelivered"] == 0


def test_consumer_killed_holding_a_batch_gets_every_message_redelivered(ctx, procs, wqs):
    q = wqs(visibility_timeout=60.0)  # far away: the death is what frees them
    q.put_many(list(range(8)))
    out = ctx.Queue()
    p = procs.start(ctx, w.hold_batch_then_hang, q, out, 6)
    held = out.get(timeout=60)
    assert [v for _, v, _ in held] == [0, 1, 2, 3, 4, 5]
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    t0 = time.monotonic()
    got = {}
    while len(got) < 8 and time.monotonic() - t0 < 10:
        try:
            b = q.get_many(8, timeout=1)
        except queue.Empty:
            continue
        got.update(zip(b.values, zip(b.delivery_counts, b.redelivered_because)))
        b.ack()
    assert time.monotonic() - t0 < 5  # not the 60 s timeout: its owner is dead
    assert sorted(got) == list(range(8))
    for v in range(6):
        assert got[v] == (2, "consumer died")
    assert got[6] == (1, None) and got[7] == (1, None)
    assert q.stats()["acked"] == 8 and q.qsize() == 0


# -- StreamProcessor over a WorkQueue: batches -------------------------------------

class _RecordingSink:
    """A sink (threads) with put_many: the size of every call; it raises
    on the first `fail` calls."""

    def __init__(self, fail=0):
        self.calls, self.items, self.fail = [], [], fail

    def put_many(self, items):
        if self.fail:
            self.fail -= 1
            raise OSError("sink down")
        self.calls.append(len(items))
        self.items += items

    def put(self, item):  # what makes it a sink; the workers use put_many
        self.put_many([item])


def test_stream_processor_takes_settles_and_sends_in_batches(wqs):
    from pyqueue import StreamProcessor
    from tests._support import wait_until
    dlq = wqs(capacity_bytes=1 << 20)
    q = wqs(max_deliveries=2, dead_letter=dlq)
    q.put_many(list(range(300)) + ["poison"] + list(range(300, 600)))
    sink = _RecordingSink()
    with StreamProcessor(q, w.double, sink=sink, workers=2, processes=False) as sp:
        assert wait_until(lambda: q.qsize() == 0, timeout=30)
    assert sorted(sink.items) == [2 * i for i in range(600)]
    assert max(sink.calls) > 1  # results went to the sink in batches
    (dl,) = dlq.dead_letters()  # the poison alone: nacked twice, its batch mates acked
    assert dl.value == "poison" and dl.attempts == 2 and dl.last_error == "ValueError: poison"
    s = sp.stats()
    assert s["processed"] == 600 and s["failed"] == 2
    assert q.stats()["acked"] == 600


def test_stream_processor_reject_in_a_batch(wqs):
    from pyqueue import StreamProcessor
    from tests._support import wait_until
    dlq = wqs(capacity_bytes=1 << 20)
    q = wqs(max_deliveries=5, dead_letter=dlq)
    q.put_many([1, "poison", 2, 3])
    out = wqs()
    with StreamProcessor(q, w.double, sink=out, reject=ValueError, processes=False):
        assert wait_until(lambda: q.qsize() == 0, timeout=30)
    assert sorted(out.get_many(10).values) == [2, 4, 6]
    (dl,) = dlq.dead_letters()
    assert dl.value == "poison" and dl.attempts == 1 and dl.reason.startswith("rejected")


def test_stream_processor_sink_failure_nacks_the_batch(wqs):
    from pyqueue import StreamProcessor
    from tests._support import wait_until
    q = wqs(max_deliveries=None)
    q.put_many(list(range(50)))
    sink = _RecordingSink(fail=1)
    with StreamProcessor(q, w.double, sink=sink, processes=False, batch_size=8):
        assert wait_until(lambda: q.qsize() == 0, timeout=30)
    assert sorted(set(sink.items)) == [2 * i for i in range(50)]
    assert max(sink.calls) <= 8
    s = q.stats()
    assert s["redelivered"] >= 1 and s["acked"] == 50


def test_stream_processor_over_a_log_polls_in_batches_by_default(tmp_path):
    """batch_size=None on a Log: with a backlog a worker polls (and then
    commits) many records at a time; with on_error="raise" one at a time
    (what a crash makes its successor read again). Seen from inside fn:
    the group's committed offset while record i is processed (i is also
    its offset) is i when records come one at a time, less in a batch."""
    from pyqueue import Log, StreamProcessor
    from tests._support import wait_until
    log = Log(partitions=1)
    try:
        for i in range(400):
            log.append(i)
        for on_error, batched in (("skip", True), ("raise", False)):
            group = f"g-{on_error}"
            behind = []

            def fn(i, group=group, behind=behind):
                committed = log.group_offsets(group)[0]["committed"] or 0
                behind.append(i - committed)

            with StreamProcessor(log, fn, group=group, processes=False, on_error=on_error):
                assert wait_until(lambda: log.group_offsets(group)[0]["lag"] == 0
                                  and len(behind) >= 400, timeout=30)
            assert (max(behind) > 1) is batched, (on_error, max(behind))
    finally:
        log.unlink()
        log.close()
