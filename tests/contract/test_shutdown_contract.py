"""shutdown(): the same assertions on every backend (shared memory, one
redis-server, Redis Cluster): docs/api.md, "Shutdown". The Redis waits
woken by a shutdown, each waiter seen blocked in the server first, are in
tests/contract/test_redis_shutdown.py."""
import pytest

import pyqueue
from pyqueue import ShutDown
from tests.contract import _workers

pytestmark = pytest.mark.timeout(90)


def test_queue_drains_then_raises(make):
    q = make("Queue", name=make.name())
    assert q.is_shutdown is False
    q.put(1)
    q.put(2)
    q.shutdown()
    assert q.is_shutdown
    with pytest.raises(ShutDown):
        q.put(3)
    with pytest.raises(ShutDown):
        q.put_many([3, 4])
    assert [q.get(timeout=5), q.get(timeout=5)] == [1, 2]
    with pytest.raises(ShutDown):
        q.get_nowait()
    with pytest.raises(ShutDown):
        q.get(timeout=0.01)             # instead of queue.Empty
    with pytest.raises(ShutDown):
        q.get()                         # no timeout: raises instead of waiting
    with pytest.raises(ShutDown):
        q.get_many(10)
    assert list(q) == [] and q.is_shutdown
    q.shutdown()                        # again: nothing changes
    assert q.is_shutdown


def test_a_handle_opened_later_sees_it(make, backend):
    q = make("Queue", name=make.name())
    q.put("left")
    q.shutdown()
    other = backend.Queue.open(q.name)
    try:
        assert other.is_shutdown
        with pytest.raises(ShutDown):
            other.put(1)
        assert list(other) == ["left"]
    finally:
        other.close()


def test_immediate_drops_and_join_returns(make):
    jq = make("JoinableQueue", name=make.name())
    jq.put_many([1, 2, 3])
    assert jq.get(timeout=5) == 1       # taken: still needs its task_done
    jq.shutdown(immediate=True)
    with pytest.raises(ShutDown):
        jq.get(timeout=5)
    assert jq.qsize() == 0 and jq.stats()["dropped"] == 2
    jq.task_done()
    jq.join()                           # the two dropped count as done
    with pytest.raises(ValueError):
        jq.task_done()


def test_immediate_after_shutdown_still_applies(make):
    q = make("Queue", name=make.name())
    q.put_many([1, 2])
    q.shutdown()
    assert q.get(timeout=5) == 1
    q.shutdown(immediate=True)
    with pytest.raises(ShutDown):
        q.get_nowait()
    assert q.qsize() == 0


def test_blocked_get_in_another_process_wakes(make, ctx, procs):
    q = make("Queue", name=make.name())
    out = make("Queue", name=make.name())
    p = procs.start(ctx, _workers.get_until_shutdown, q, out)
    q.put(b"first")
    assert out.get(timeout=30) == b"first"
    q.shutdown()            # the child's next get, blocked or not, raises
    assert out.get(timeout=30) == "shutdown"
    p.join(30)
    assert p.exitcode == 0


def test_workqueue(make):
    wq = make("WorkQueue", name=make.name())
    wq.put(1)
    wq.put(2)
    wq.shutdown()
    assert wq.is_shutdown
    with pytest.raises(ShutDown):
        wq.put(3)
    with pytest.raises(ShutDown) as e:
        wq.put_many([3, 4])
    assert e.value.ids == []
    batch = wq.get_many(10, timeout=5)
    assert list(batch) == [1, 2]
    batch.ack()
    with pytest.raises(ShutDown):
        wq.get(timeout=5)
    assert list(wq) == []


def test_workqueue_drain_and_settle(make):
    wq = make("WorkQueue", name=make.name())
    wq.put_many([1, 2])
    held = wq.get(timeout=5)
    wq.shutdown()
    rest = wq.get(timeout=5)
    held.nack()                         # ready again: drained
    again = wq.get(timeout=5)
    assert sorted([held.value, rest.value]) == [1, 2] and again.value == held.value
    rest.ack()
    again.ack()
    with pytest.raises(ShutDown):
        wq.get_nowait()
    assert list(wq) == [] and wq.qsize() == 0


def test_workqueue_immediate_discards_nothing(make):
    wq = make("WorkQueue", name=make.name())
    wq.put_many([1, 2])
    wq.shutdown(immediate=True)
    with pytest.raises(ShutDown):
        wq.get(timeout=5)               # at once, though two are ready
    with pytest.raises(ShutDown):
        wq.get_many(10)
    assert wq.qsize() == 2              # committed work stays


def test_topic(make):
    topic = make("Topic", name=make.name())
    sub = topic.subscribe()
    other = topic.subscribe()
    topic.publish_many([1, 2])
    assert other.get(timeout=5) == 1
    topic.shutdown()
    assert topic.is_shutdown
    with pytest.raises(ShutDown):
        topic.publish(3)
    assert other.get(timeout=5) == 2
    with pytest.raises(ShutDown):
        other.get_many(10, timeout=5)   # drained: raises instead of waiting
    assert list(sub) == [1, 2]          # drains, then the iteration ends
    with pytest.raises(ShutDown):
        sub.get(timeout=5)
    sub.close()
    other.close()


def test_topic_immediate(make):
    topic = make("Topic", name=make.name())
    sub = topic.subscribe()
    topic.publish(1)
    topic.shutdown(immediate=True)
    with pytest.raises(ShutDown):
        sub.get(timeout=5)
    sub.close()


def test_log(make):
    log = make("Log", name=make.name(), partitions=2)
    log.append(1, key=b"k")
    p = log.partition_for(b"k")
    log.shutdown()
    assert log.is_shutdown
    with pytest.raises(ShutDown):
        log.append(2, key=b"k")
    with pytest.raises(ShutDown):
        log.append_many([2, 3])
    assert [r.value for r in log.read(p, 0)] == [1]
    with pytest.raises(ShutDown):
        log.read(1 - p, 0, timeout=5)   # the end: raises instead of waiting
    with pytest.raises(ShutDown):
        log.read(p, 1, timeout=None)
    with pytest.raises(ValueError):
        log.shutdown(immediate=True)
    with log.consumer("g") as c:
        assert [r.value for r in c] == [1]
        c.commit()                       # commits still work


def test_shutdown_is_a_stdlib_exception():
    assert issubclass(ShutDown, pyqueue.PyQueueError) and issubclass(ShutDown, Exception)


def test_asyncio_iteration_ends_at_a_shutdown(backend_url):
    # `async for` over a Queue, a WorkQueue, a Subscription and a
    # Consumer drains what is left and ends at a shutdown, as the sync
    # `for` does. Before, it raised ShutDown out of the loop.
    import asyncio
    import uuid

    import pyqueue.asyncio as aq
    ab = aq.connect(backend_url)

    def name():
        return "ait-" + uuid.uuid4().hex[:8]

    q, wq, topic = ab.Queue(name=name()), ab.WorkQueue(name=name()), ab.Topic(name=name())
    log = ab.Log(name=name(), partitions=2)

    async def main():
        sub = topic.subscribe()
        c = log.consumer("g", auto_offset_reset="earliest")
        for i in range(3):
            await q.put(i)
            await wq.put(i)
            await topic.publish(i)
            log.append(i)
        for h in (q, wq, topic, log):
            h.sync.shutdown()
        got_q = [m async for m in q]
        got_wq = []
        async for d in wq:
            got_wq.append(d.value)
            await d.ack()
        got_sub = [m async for m in sub]
        got_log = sorted([r.value async for r in c])
        sub.close()
        c.close()
        return got_q, got_wq, got_sub, got_log

    try:
        assert asyncio.run(asyncio.wait_for(main(), 60)) == ([0, 1, 2],) * 4
    finally:
        for h in (q, wq, topic, log):
            h.close()
            h.sync.unlink()
