"""Lifetimes that are the Redis backend's own (shared memory keeps a
segment mapped by a child after its name is gone; on Redis the keys are
the queue): the creator's close() of an unnamed queue removes it only when
nobody else can hold a handle of it."""
import multiprocessing

import pytest

from pyqueue.errors import SegmentNotFound

pytestmark = [pytest.mark.timeout(60), pytest.mark.redis]  # a real redis-server


def _put_after_parent_closed(q, parent_closed, out):
    parent_closed.wait(30)
    q.put("from the forked child", timeout=10)
    out.put("done", timeout=10)


@pytest.mark.parametrize("where", ["redis", "redis-cluster"])
def test_unnamed_queue_outlives_its_creators_close_after_a_fork(request, where, procs):
    import pyqueue
    server = request.getfixturevalue("redis_server" if where == "redis" else "redis_cluster")
    b = pyqueue.connect(server.url)
    ctx = multiprocessing.get_context("fork")
    q = b.Queue()                                  # unnamed
    out = b.Queue(name="lifetime-out-" + where)
    parent_closed = ctx.Event()
    p = procs.start(ctx, _put_after_parent_closed, q, parent_closed, out)
    q.close()                                      # the creator's handle
    parent_closed.set()
    assert out.get(timeout=30) == "done"
    p.join(30)
    assert p.exitcode == 0
    again = b.Queue.open(q.name)
    assert again.get(timeout=5) == "from the forked child"
    again.unlink()
    out.unlink()


def test_unnamed_queue_never_shared_is_removed_by_its_creators_close(redis_server):
    import pyqueue
    b = pyqueue.connect(redis_server.url)
    q = b.Queue()
    q.put("x")
    q.close()
    with pytest.raises(SegmentNotFound):
        b.Queue.open(q.name)
