"""Opening an existing name with other settings (issue 9, item 16): every
kind raises ValueError naming each setting that differs, as Log does;
with no settings (or the same ones) it opens the existing segment."""
import pytest

from tests._support import unique_name

pytestmark = pytest.mark.usefixtures("pyqueue_mod")

CAP = 65536


@pytest.fixture
def name():
    n = unique_name("set")
    yield n
    from pyqueue import _segment

    _segment.unlink(n)


def _refused(make, *words):
    with pytest.raises(ValueError) as info:
        make()
    msg = str(info.value)
    assert "exists with other settings" in msg or "not a JoinableQueue" in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def test_queue(name):
    import pyqueue

    q = pyqueue.Queue(0, name=name, capacity_bytes=CAP)
    try:
        q.put("kept")
        # The example: maxsize and overflow of a queue that has neither.
        _refused(lambda: pyqueue.Queue(2, name=name, overflow="reject"),
                 "maxsize=0, not 2", "overflow='block', not 'reject'")
        _refused(lambda: pyqueue.Queue(name=name, capacity_bytes=4 * CAP),
                 f"capacity_bytes={CAP}, not {4 * CAP}")
        _refused(lambda: pyqueue.Queue(name=name, max_message_bytes=100),
                 "max_message_bytes=None, not 100")
        _refused(lambda: pyqueue.Queue(name=name, mode=0o640), "mode=384, not 416")
        _refused(lambda: pyqueue.Queue(name=name, serializer=(repr, eval)), "serializer")
        # Several at once: each is named.
        _refused(lambda: pyqueue.Queue(7, name=name, capacity_bytes=2 * CAP,
                                       overflow="drop_oldest"),
                 "maxsize=0, not 7", f"capacity_bytes={CAP}, not {2 * CAP}",
                 "overflow='block', not 'drop_oldest'")
        # None of these touched the queue.
        assert q.qsize() == 1 and q.maxsize == 0 and q.overflow == "block"
        # No settings, or the same ones (explicit defaults included): opened.
        for same in (lambda: pyqueue.Queue(name=name),
                     lambda: pyqueue.Queue(0, name=name, capacity_bytes=CAP, overflow="block",
                                           max_message_bytes=None, mode=0o600)):
            q2 = same()
            assert q2.get(timeout=5) == "kept"
            q2.put("kept")
            q2.close()
    finally:
        q.close()


def test_joinable_queue_over_a_plain_queue(name):
    import pyqueue

    q = pyqueue.Queue(name=name, capacity_bytes=CAP)
    try:
        _refused(lambda: pyqueue.JoinableQueue(name=name), "plain queue, not a JoinableQueue")
        _refused(lambda: pyqueue.JoinableQueue.open(name), "plain queue, not a JoinableQueue")
    finally:
        q.close()


def test_joinable_queue(name):
    import pyqueue

    q = pyqueue.JoinableQueue(3, name=name, capacity_bytes=CAP)
    try:
        _refused(lambda: pyqueue.JoinableQueue(4, name=name), "maxsize=3, not 4")
        _refused(lambda: pyqueue.JoinableQueue(name=name, overflow="reject"),
                 "overflow='block', not 'reject'")
        q2 = pyqueue.JoinableQueue(name=name)
        q2.put(1)
        assert q.get(timeout=5) == 1
        q.task_done()
        q2.join()
        q2.close()
        # A plain Queue handle on a joinable queue keeps counting its tasks.
        q3 = pyqueue.Queue(name=name)
        q3.put(2)
        assert q.get(timeout=5) == 2
        q.task_done()
        q3.close()
    finally:
        q.close()


def test_simple_queue(name):
    import pyqueue

    q = pyqueue.SimpleQueue(name=name, capacity_bytes=CAP)
    try:
        _refused(lambda: pyqueue.SimpleQueue(name=name, capacity_bytes=8 * CAP),
                 f"capacity_bytes={CAP}, not {8 * CAP}")
        _refused(lambda: pyqueue.SimpleQueue(name=name, mode=0o660), "mode=384, not 432")
        q2 = pyqueue.SimpleQueue(name=name)
        q2.put("x")
        assert q.get() == "x"
        q2.close()
    finally:
        q.close()


def test_topic(name):
    import pyqueue

    t = pyqueue.Topic(name, capacity_bytes=CAP, mode="lossy")
    try:
        _refused(lambda: pyqueue.Topic(name, mode="lossless"), "mode='lossy', not 'lossless'")
        _refused(lambda: pyqueue.Topic(name, capacity_bytes=2 * CAP, perm=0o644),
                 f"capacity_bytes={CAP}, not {2 * CAP}", "perm=384, not 420")
        _refused(lambda: pyqueue.Topic(name, serializer=(repr, eval)), "serializer")
        t2 = pyqueue.Topic(name)
        assert t2.mode == "lossy" and t2.capacity_bytes == CAP
        t2.close()
        t3 = pyqueue.Topic(name, mode="lossy", capacity_bytes=CAP)
        t3.close()
    finally:
        t.close()


def test_work_queue(name):
    import pyqueue

    dlq = unique_name("set-dlq")
    w = pyqueue.WorkQueue(name, capacity_bytes=CAP, max_in_flight=64, dedup_keys=64,
                          visibility_timeout=2.5, max_deliveries=3, dead_letter=dlq)
    try:
        _refused(lambda: pyqueue.WorkQueue(name, visibility_timeout=30),
                 "visibility_timeout=2.5, not 30.0")
        _refused(lambda: pyqueue.WorkQueue(name, max_deliveries=None, max_in_flight=128),
                 "max_deliveries=3, not None", "max_in_flight=64, not 128")
        _refused(lambda: pyqueue.WorkQueue(name, dead_letter=None),
                 f"dead_letter={dlq!r}, not None")
        _refused(lambda: pyqueue.WorkQueue(name, dedup_keys=128, dedup_window=1.0),
                 "dedup_keys=64, not 128", "dedup_window=300.0, not 1.0")
        _refused(lambda: pyqueue.WorkQueue(name, capacity_bytes=2 * CAP),
                 f"capacity_bytes={CAP}, not {2 * CAP}")
        w2 = pyqueue.WorkQueue(name)
        assert w2.visibility_timeout == 2.5 and w2.max_deliveries == 3
        w2.close()
        w3 = pyqueue.WorkQueue(name, visibility_timeout=2.5, max_deliveries=3, dead_letter=dlq,
                               capacity_bytes=CAP)
        w3.close()
    finally:
        w.close()
        if w.dead_letter is not None:
            w.dead_letter.unlink()
            w.dead_letter.close()


def test_log_still_refuses(name):
    import pyqueue

    lg = pyqueue.Log(name, partitions=2, retention_bytes=CAP)
    try:
        with pytest.raises(ValueError, match="partitions=2, not 3"):
            pyqueue.Log(name, partitions=3)
    finally:
        lg.close()
