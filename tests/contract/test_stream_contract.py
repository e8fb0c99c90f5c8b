"""StreamProcessor over a WorkQueue source, and a Log source with group=, to a
Queue sink of each backend (its workers get them pickled: by name, or by name + URL)."""
import pytest

import pyqueue
from tests._support import wait_until
from tests.contract import _workers

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("mode", ["threads", "fork", "spawn"])
def test_work_queue_source_to_a_queue_sink(make, mode):
    dead = make("WorkQueue", make.name(), max_deliveries=None)
    q = make("WorkQueue", make.name(), max_deliveries=2, dead_letter=dead)
    out = make("Queue", name=make.name())
    for i in range(100):
        q.put(i)
    q.put("poison")
    how = {"processes": False} if mode == "threads" else {"start_method": mode}
    with pyqueue.StreamProcessor(q, _workers.double, sink=out, workers=2, **how) as sp:
        got = sorted(out.get(timeout=30) for _ in range(100))
        # the poison message: nacked twice, then dead-lettered
        d = dead.get(timeout=30)
        assert d.value.value == "poison" and d.value.last_error == "ValueError: poison"
        d.ack()
    assert got == [2 * i for i in range(100)]
    s = sp.stats()
    assert s["processed"] == 100 and s["failed"] == 2
    assert q.qsize() == 0 and q.stats()["acked"] == 100


@pytest.mark.parametrize("mode", ["threads", "fork", "spawn"])
def test_log_group_source_to_a_queue_sink(make, mode):
    log = make("Log", make.name(), partitions=4)
    out = make("Queue", name=make.name())
    for i in range(200):
        log.append(i, key=str(i))
    how = {"processes": False} if mode == "threads" else {"start_method": mode}
    with pyqueue.StreamProcessor(log, _workers.double, group="doublers", sink=out, workers=2,
                                 batch_size=25, **how) as sp:
        assert wait_until(lambda: "doublers" in log.groups() and all(
            v["lag"] == 0 and v["committed"] is not None
            for v in log.group_offsets("doublers").values()), timeout=60), (
            log.groups() and (log.group_offsets("doublers"), log.group_members("doublers")),
            sp.stats())
    got = []
    while not out.empty():
        got.append(out.get(timeout=5))
    # at least once: a batch processed but not committed before a
    # rebalance (the second worker joining) is processed again
    assert sorted(set(got)) == [2 * i for i in range(200)]
    assert sp.stats()["processed"] == len(got) >= 200
    assert log.group_members("doublers") == []            # the workers left


def test_a_log_worker_s_fenced_commit_still_commits_what_it_keeps(make):
    """A worker's commit after a batch, fenced because a rebalance moved
    one of its partitions, commits the partitions it kept (all or nothing
    left them uncommitted until a next batch that may never come)."""
    from pyqueue.stream import _commit_owned
    log = make("Log", make.name(), partitions=2)
    for _ in range(2):
        log.append_many(range(5))
    with log.consumer("g") as worker:
        assert len(worker.poll(max_records=10)) == 10       # both partitions, to the end
        with log.consumer("g") as other:                    # takes one of them
            moved = other.assignment()
            _commit_owned(worker)
            kept = worker.assignment()
            assert len(kept) == 1 and kept != moved
            assert worker.committed(kept[0]) == 5
            assert other.committed(moved[0]) is None        # not the moved one


@pytest.mark.parametrize("mode", ["fork", "spawn"])
def test_source_shutdown_drains_and_stops(make, mode):
    """The source's shutdown (by any process: here the parent's handle)
    ends the workers once the source is drained; none is restarted and
    join() returns (poll_timeout far beyond the deadline: the wake does it)."""
    q = make("WorkQueue", make.name())
    out = make("Queue", name=make.name())
    q.put_many(range(20))
    sp = pyqueue.StreamProcessor(q, _workers.double, sink=out, workers=2, start_method=mode,
                                 poll_timeout=600).start()
    try:
        assert sorted(out.get(timeout=60) for _ in range(20)) == [2 * i for i in range(20)]
        q.shutdown()
        assert sp.join(60), "the workers did not end after the source's shutdown"
        st = sp.stats()
        assert (st["processed"], st["restarts"], st["crashes"]) == (20, 0, 0)
    finally:
        sp.stop()


def test_log_source_shutdown_by_the_processor(make):
    log = make("Log", make.name(), partitions=2)
    out = make("Queue", name=make.name())
    for i in range(10):
        log.append(i, key=str(i))
    sp = pyqueue.StreamProcessor(log, _workers.double, sink=out, group="g", workers=2,
                                 poll_timeout=600).start()
    try:
        sp.shutdown()
        assert log.is_shutdown
        assert sp.join(60)
        # At least once (docs/guarantees.md): a worker that joins late
        # rebalances the group, and a record the first one processed but
        # could not commit (fenced) is processed again by the new owner.
        want = {2 * i for i in range(10)}
        got = []
        while not want <= set(got):
            got.append(out.get(timeout=30))
        assert set(got) == want
        st = sp.stats()
        assert (st["restarts"], st["crashes"], st["last_error"]) == (0, 0, None)
    finally:
        sp.stop()


@pytest.mark.parametrize("mode", ["threads", "spawn"])
def test_a_message_processed_past_its_visibility_timeout_is_no_crash(make, mode, tmp_path):
    """fn outlives the visibility timeout on a message: it is delivered
    again (another worker processes it), and the late worker's settle is
    refused (DeliveryExpired). That worker goes on: no crash, no restart
    (a crash restarted it after a back-off, and under load a whole process
    tree of workers dropped out of the work: CI run 63's checkout example),
    the refusal counted in stats()["expired"], the rest settled. (2 s: a
    machine stalled longer than that between another message's get and
    its ack expires that one too; the counts below allow it.)"""
    q = make("WorkQueue", make.name(), visibility_timeout=2)
    out = make("Queue", name=make.name())
    q.put((0, str(tmp_path)))
    how = {"processes": False} if mode == "threads" else {"start_method": mode}
    with pyqueue.StreamProcessor(q, _workers.slow_first_delivery, sink=out, workers=2,
                                 **how) as sp:
        assert out.get(timeout=60) == 0                   # its second delivery
        assert out.get(timeout=60) == 0                   # the first, late
        assert wait_until(lambda: sp.stats()["expired"] >= 1, timeout=30), sp.stats()
        for i in range(1, 21):                            # both workers go on
            q.put((i, str(tmp_path)))
        got = set()
        while got != set(range(1, 21)):
            got.add(out.get(timeout=60))
        assert wait_until(lambda: q.stats()["acked"] == 21, timeout=30), q.stats()
        s = sp.stats()
    assert s["crashes"] == 0 and s["restarts"] == 0 and s["last_error"] is None, s
    assert s["expired"] >= 1 and s["processed"] == 21 + s["expired"], s
    assert q.qsize() == 0
