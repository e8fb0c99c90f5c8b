"""min_replicas=N in a Redis URL: every script call is followed by WAIT N
on its connection; fewer confirmations raise NotReplicated, after the
write was applied (docs/guarantees.md, "Redis backend")."""
import pytest

pytestmark = [pytest.mark.timeout(90), pytest.mark.redis]  # a real redis-server


def test_without_replicas_writes_are_applied_but_not_confirmed(redis_server):
    import pyqueue
    from pyqueue.backends.redis import NotReplicated, RedisBackend
    waited = RedisBackend(redis_server.url + "?min_replicas=1&wait_timeout=50")
    plain = pyqueue.connect(redis_server.url)
    try:
        with pytest.raises(NotReplicated) as e:
            waited.Queue(name="wait-no-replica")
        assert (e.value.replicas, e.value.wanted) == (0, 1)
        q = plain.Queue.open("wait-no-replica")         # it was made all the same
        assert q.qsize() == 0
        q.unlink()
    finally:
        waited.close()


def test_with_replicas_every_step_is_confirmed(redis_cluster):
    from pyqueue.backends.redis import RedisBackend
    redis_cluster.wait_replicas_synced()
    b = RedisBackend(redis_cluster.url + "?min_replicas=1&wait_timeout=5000")
    try:
        assert b.min_replicas == 1 and b.wait_timeout == 5000
        q = b.JoinableQueue(name="wait-confirmed")
        assert q.put_many(range(100)) == 100
        assert q.get_many(1000) == list(range(100))
        for _ in range(100):
            q.task_done()
        q.join()
        wq = b.WorkQueue("wait-confirmed-wq")
        wq.put("job")
        d = wq.get(timeout=5)
        d.ack()
        assert wq.stats()["acked"] == 1
        q.unlink()
        wq.unlink()
    finally:
        b.close()
