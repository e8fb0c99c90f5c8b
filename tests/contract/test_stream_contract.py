"""StreamProcessor over a WorkQueue source and a Queue sink of each backend
(its workers get them pickled: by name, or by name + URL)."""
import pytest

import pyqueue
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
