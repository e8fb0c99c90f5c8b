"""pyqueue.WorkQueue batches, what is particular to shared memory: a
consumer SIGKILLed holding a batch is seen dead (its messages come again at
once, "consumer died", not after the visibility timeout), and the
StreamProcessor's batched worker. What every backend does with batches
(put_many, get_many, Batch settles, max_deliveries, dedup keys, Full,
consumers in processes, a consumer SIGKILLed holding a batch) is in
tests/contract/test_workqueue_contract.py; the model test with batch
operations is TestWorkQueueModel in tests/test_workqueue.py."""
import os
import queue
import signal
import time

from pyqueue.workqueue import Batch
from tests import _wq_workers as w
from tests.test_workqueue import wqs  # noqa: F401 (fixture)


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
        assert isinstance(b, Batch)
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
