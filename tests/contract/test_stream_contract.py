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
