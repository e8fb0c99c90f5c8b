"""WORK IN PROGRESS, NOT COLLECTED (the wip_ prefix keeps pytest away):
the failover tests of issue 10. Run by hand:

    PYTHONPATH=$PWD python -m pytest tests/wip_redis_failover.py -q

State (2026-12-06): both pass alone (3 of 3 runs each), and the
min_replicas one passed 3 of 3 (acked 220-234, lost 0, 0-1 duplicated by
redis-py's retry of a put whose reply was lost); once, run after the other
in one session, the test without WAIT saw its queue's meta key missing on
the promoted replica (SegmentNotFound from put, "no failover within 60 s";
an earlier failure of the same kind, before the backends were made per
test, recorded no error) - then 4 of 4 sessions with both passed. Not
understood yet: look at whether the replica had the key before the
kill (INFO replication offsets), and at redis-py's cluster client after a
failover. Until then it is not part of CI.
"""

import shutil
import tempfile
import threading
import time

import pytest

from tests import redis_support

pytestmark = [pytest.mark.skipif(not redis_support.available(),
                                 reason="redis-server is not installed"),
              pytest.mark.timeout(180), pytest.mark.slow]


@pytest.fixture
def cluster():
    d = tempfile.mkdtemp(prefix="pq-failover-")
    c = redis_support.RedisCluster(d)
    c.wait_replicas_synced()
    yield c
    c.stop()
    shutil.rmtree(d, ignore_errors=True)


class Producer(threading.Thread):
    """Puts 0, 1, 2, ... until stopped; notes what each put did."""

    def __init__(self, q):
        super().__init__(daemon=True)
        self.q = q
        self.acked, self.unreplicated, self.failed = [], [], []
        self.stop = threading.Event()
        self.n = 0
        self.last_error = None

    def run(self):
        from pyqueue.backends.redis import NotReplicated
        while not self.stop.is_set():
            i, self.n = self.n, self.n + 1
            try:
                self.q.put(i)
                self.acked.append((i, time.monotonic()))
            except NotReplicated:
                self.unreplicated.append((i, time.monotonic()))
            except Exception as e:
                self.last_error = e
                self.failed.append((i, time.monotonic()))
                self.stop.wait(0.02)              # the producer's back-off on errors


def _run_failover(cluster, url, name):
    import pyqueue
    from pyqueue.backends.redis import RedisBackend
    # Backends of their own, not connect()'s (one per URL and process): a
    # later cluster may get the same ports, and a client that saw this one
    # fail over must not be handed to it.
    b = RedisBackend(url)
    q = b.Queue(name=name)
    port = b.client.get_node_from_key(q._keys[1]).port
    producer = Producer(q)
    producer.start()
    try:
        deadline = time.monotonic() + 60
        while len(producer.acked) < 200:
            assert time.monotonic() < deadline and producer.is_alive()
            producer.stop.wait(0.01)
        killed_at = time.monotonic()
        cluster.procs[cluster.ports.index(port)].kill()
        # until the producer's puts land again (the replica took over)
        while not [t for _, t in producer.acked + producer.unreplicated
                   if t > killed_at + 0.5]:
            assert time.monotonic() < deadline + 60, (
                f"no failover within 60 s; the last error: {producer.last_error!r}")
            producer.stop.wait(0.05)
    finally:
        producer.stop.set()
        producer.join(30)
    reader = RedisBackend(cluster.url)            # no WAIT for reading it back
    rq = reader.Queue.open(name)
    present = []
    while True:
        try:
            present += rq.get_many(10000, block=False)
        except pyqueue.Empty:
            break
    b.close()
    reader.close()
    return producer, present, killed_at


def test_failover_with_min_replicas_loses_no_acknowledged_put(cluster, record_property):
    producer, present, killed_at = _run_failover(
        cluster, cluster.url + "?min_replicas=1&wait_timeout=1000", "failover-wait")
    acked = {i for i, _ in producer.acked}
    lost = acked - set(present)
    duplicated = len(present) - len(set(present))
    record_property("failover", {"acked": len(acked), "lost": len(lost),
                                 "duplicated": duplicated,
                                 "unreplicated": len(producer.unreplicated),
                                 "failed": len(producer.failed)})
    assert not lost
    # after the failover the new master has no replica: not confirmed
    assert [t for _, t in producer.unreplicated if t > killed_at]
    assert not [t for _, t in producer.acked if t > killed_at + 5]


def test_failover_without_wait_counts_what_was_lost(cluster, record_property):
    producer, present, _ = _run_failover(cluster, cluster.url, "failover-nowait")
    acked = {i for i, _ in producer.acked}
    lost = acked - set(present)
    record_property("failover", {"acked": len(acked), "lost": len(lost),
                                 "duplicated": len(present) - len(set(present)),
                                 "failed": len(producer.failed)})
    # Asynchronous replication: some acknowledged puts may be gone, and the
    # ones put after the failover are all there.
    assert len(lost) < len(acked)
    assert max(acked) in set(present)
