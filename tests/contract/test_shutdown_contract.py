"""shutdown(): the same assertions on every backend that has it; on the
Redis backends, which do not have it yet, the explicit refusal
(NotImplementedError, nothing changed) is what is asserted instead
(docs/api.md, "Shutdown")."""
import pytest

import pyqueue
from pyqueue import ShutDown
from tests.contract import _workers

pytestmark = pytest.mark.timeout(90)

# The backends whose classes implement shutdown(); every other one must
# refuse it explicitly (the shm_only fixture asserts that there).
SUPPORTED = ("shm://",)


def supported(backend_url):
    return backend_url.startswith(SUPPORTED)


def _make_all(make):
    return [make("Queue", name=make.name()), make("JoinableQueue", name=make.name()),
            make("WorkQueue", name=make.name()), make("Topic", name=make.name()),
            make("Log", name=make.name())]


def refused(make):
    """On a backend without shutdown: every kind refuses it explicitly
    (NotImplementedError) and stays as it was. Returns True then."""
    for h in _make_all(make):
        assert h.is_shutdown is False
        with pytest.raises(NotImplementedError, match="not supported by this backend"):
            h.shutdown()
        with pytest.raises(NotImplementedError):
            h.shutdown(immediate=True)
        assert h.is_shutdown is False
    q = make("Queue", name=make.name())
    q.put(1)
    assert q.get(timeout=5) == 1      # still in use
    return True


@pytest.fixture
def shm_only(backend_url, make):
    """The tests below check the semantics where shutdown is supported,
    and the explicit refusal everywhere else (no skip)."""
    return supported(backend_url) or not refused(make)


def test_queue_drains_then_raises(make, shm_only):
    if not shm_only:
        return  # refused, as asserted by the fixture
    q = make("Queue", name=make.name())
    q.put(1)
    q.put(2)
    q.shutdown()
    with pytest.raises(ShutDown):
        q.put(3)
    assert [q.get(timeout=5), q.get(timeout=5)] == [1, 2]
    with pytest.raises(ShutDown):
        q.get()
    assert list(q) == [] and q.is_shutdown


def test_blocked_get_in_another_process_wakes(make, shm_only, ctx, procs):
    if not shm_only:
        return  # refused, as asserted by the fixture
    q = make("Queue", name=make.name())
    out = make("Queue", name=make.name())
    p = procs.start(ctx, _workers.get_until_shutdown, q, out)
    q.put(b"first")
    assert out.get(timeout=30) == b"first"
    q.shutdown()            # the child's next get, blocked or not, raises
    assert out.get(timeout=30) == "shutdown"
    p.join(30)
    assert p.exitcode == 0


def test_workqueue_topic_log(make, shm_only):
    if not shm_only:
        return  # refused, as asserted by the fixture
    wq = make("WorkQueue", name=make.name())
    wq.put(1)
    wq.shutdown()
    with pytest.raises(ShutDown):
        wq.put(2)
    d = wq.get(timeout=5)
    d.ack()
    assert list(wq) == []
    topic = make("Topic", name=make.name())
    sub = topic.subscribe()
    topic.publish(1)
    topic.shutdown()
    with pytest.raises(ShutDown):
        topic.publish(2)
    assert list(sub) == [1]
    sub.close()
    log = make("Log", name=make.name(), partitions=1)
    log.append(1)
    log.shutdown()
    with pytest.raises(ShutDown):
        log.append(2)
    assert [r.value for r in log.read(0, 0)] == [1]
    with log.consumer("g") as c:
        assert [r.value for r in c] == [1]


def test_shutdown_is_a_stdlib_exception():
    assert issubclass(ShutDown, pyqueue.PyQueueError) and issubclass(ShutDown, Exception)
