"""A redis-server with AOF (appendonly yes, appendfsync always) SIGKILLed
and restarted: what pyqueue acknowledged is there after, through the same
backend object (redis-py reconnects)."""
import shutil
import tempfile

import pytest

from tests import redis_support

pytestmark = [pytest.mark.redis,
              pytest.mark.skipif(not redis_support.available(),
                                 reason="redis-server is not installed"),
              pytest.mark.timeout(120)]


@pytest.fixture
def aof_dir():
    d = tempfile.mkdtemp(prefix="pq-aof-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_acknowledged_work_survives_a_killed_server_with_aof(aof_dir):
    pytest.importorskip("redis", reason="redis-py is not installed (pip install redis)")
    import pyqueue
    aof = ("--appendonly", "yes", "--appendfsync", "always")
    server = redis_support.RedisServer(aof_dir, *aof)
    try:
        b = pyqueue.connect(server.url + "?db=0")  # a backend of its own
        q = b.JoinableQueue(name="durable")
        q.put_many(range(100))
        assert q.get_many(10) == list(range(10))
        for _ in range(10):
            q.task_done()
        wq = b.WorkQueue("durable-work", visibility_timeout=60)
        ids = [wq.put(i) for i in range(10)]
        for _ in range(3):
            wq.get(timeout=5).ack()
        held = wq.get(timeout=5)                   # delivered, not acked
        server.proc.kill()                         # no shutdown, no final save
        server.proc.wait(30)
        server = redis_support.RedisServer(aof_dir, *aof)
        assert q.qsize() == 90
        assert q.get_many(1000) == list(range(10, 100))
        assert q.stats()["unfinished_tasks"] == 90
        s = wq.stats()
        assert (s["acked"], wq.qsize(), s["in_flight"]) == (3, 7, 1)
        held.ack()                                 # still this consumer's
        rest = []
        while True:
            try:
                d = wq.get_nowait()
            except pyqueue.Empty:
                break
            rest.append(d.id)
            d.ack()
        assert rest == ids[4:] and wq.qsize() == 0
        q.unlink()
        wq.unlink()
    finally:
        server.stop()
