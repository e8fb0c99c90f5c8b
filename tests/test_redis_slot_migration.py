"""A Redis Cluster slot migrated under traffic: a real 3-master cluster
(tests/redis_support.py), the slot of a queue's (topic's, log
partition's) keys moved to another master with CLUSTER SETSLOT
IMPORTING/MIGRATING, MIGRATE one key at a time (between two, the keys of
one step are split over two nodes: TRYAGAIN; a key already moved: ASK)
and SETSLOT NODE, while a producer and a consumer run; then a consumer
parked in a blocking get while the slot moves, and a put afterwards.

What must hold (docs/guarantees.md, "Redis backend"): every message
acknowledged is delivered once (a log's records once, in order, no gap
per partition), no call raises, and the parked get returns the put made
after the migration, from the new node. Every wait is a poll with a
deadline (of the servers or of the threads' progress).
"""
import queue
import threading
import time

import pytest

from tests import redis_support
from tests.test_redis_failover import _node_id, _owner, _wait

pytestmark = [pytest.mark.redis,
              pytest.mark.skipif(not redis_support.available(),
                                 reason="redis-server is not installed"),
              pytest.mark.timeout(240)]

DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("redis", reason="redis-py is not installed (pip install redis)")
    with redis_support.own_cluster("pq-migrate-") as c:
        yield c


def _cli(port, *args):
    r = redis_support._cli("-p", str(port), *args)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _masters(cluster):
    return [p for p in cluster.ports if "role:master" in _cli(p, "info", "replication")]


def _errors(port, name):
    """How many replies of error `name` (TRYAGAIN, ASK) the server sent."""
    for line in _cli(port, "info", "errorstats").splitlines():
        if line.startswith(f"errorstat_{name}:count="):
            return int(line.split("=", 1)[1].split(",")[0])
    return 0


def _redirects(port):
    return _errors(port, "TRYAGAIN") + _errors(port, "ASK")


def _migrate(cluster, slot, on_split=None):
    """Move slot from its master to another one, a key at a time; after
    each key moved while others are left (the keys of the slot split over
    the two nodes), calls on_split(source). Returns (source,
    destination)."""
    src = _owner(cluster, slot)
    dst = next(p for p in _masters(cluster) if p != src)
    assert _cli(dst, "cluster", "setslot", str(slot), "importing", _node_id(src)) == "OK"
    assert _cli(src, "cluster", "setslot", str(slot), "migrating", _node_id(dst)) == "OK"
    for _ in range(1000):        # bounded: a slot of one object has a few keys
        keys = _cli(src, "cluster", "getkeysinslot", str(slot), "100").split()
        if not keys:
            break
        assert _cli(src, "migrate", "127.0.0.1", str(dst), "", "0", "10000",
                    "keys", keys[0]) == "OK"
        if len(keys) > 1 and on_split is not None:
            on_split(src)
    for p in _masters(cluster):
        assert _cli(p, "cluster", "setslot", str(slot), "node", _node_id(dst)) == "OK"
    assert _owner(cluster, slot) == dst
    return src, dst


class _Flow:
    """A producer thread putting 0, 1, 2, ... and a slower consumer thread
    taking, each noting what it did and every exception."""

    def __init__(self, put, take):
        self.put, self.take = put, take
        self.acked, self.got, self.errors = [], [], []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._produce, daemon=True),
                        threading.Thread(target=self._consume, daemon=True)]

    def _produce(self):
        i = 0
        while not self.stop.is_set():
            try:
                self.put(i)
                self.acked.append(i)
            except Exception as e:           # reported by the test
                self.errors.append(("put", i, repr(e)))
            i += 1
            self.stop.wait(0.0005)

    def _consume(self):
        empty = 0                            # takes that found nothing since the stop
        while empty < 3:
            try:
                got = self.take()
            except Exception as e:           # reported by the test
                self.errors.append(("take", repr(e)))
                continue
            if got is None:
                empty += self.stop.is_set()
                continue
            self.got.extend(got)
            # Slower than the producer until the stop: the queue keeps a
            # backlog, so all its keys exist and a migration splits them.
            self.stop.wait(0.001)

    def run_around(self, action):
        for t in self.threads:
            t.start()
        try:
            _wait("a backlog", lambda: len(self.acked) - len(self.got) >= 20,
                  time.monotonic() + DEADLINE_S)
            action()
            n = len(self.acked)
            _wait("puts after", lambda: len(self.acked) >= n + 100, time.monotonic() + DEADLINE_S)
        finally:
            self.stop.set()
        for t in self.threads:
            t.join(DEADLINE_S)
            assert not t.is_alive()


def _backend(cluster):
    from pyqueue.backends.redis import RedisBackend
    # A backend of its own (one per test): its slot map follows this
    # test's migration only.
    return RedisBackend(cluster.url)


def _taking(get):
    """take() -> [one message], or None when get found none in time."""
    def take():
        try:
            return [get(timeout=0.5)]
        except queue.Empty:
            return None
    return take


def _objects(b, kind, name):
    """(object, the key whose slot moves, put(i), take() -> list or None)."""
    if kind == "Queue":
        q = b.Queue(name=name)
        return q, q._keys[0], q.put, _taking(q.get)
    if kind == "Queue batches":
        # put_many and get_many of 20 and more: MULTI/EXEC transactions
        # (RPUSH or LPOP beside a script), redirected as a whole.
        q = b.Queue(name=name)

        def take_many():
            try:
                return [v for v in q.get_many(17, timeout=0.5) if v is not None]
            except queue.Empty:
                return None
        return q, q._keys[0], lambda i: q.put_many([i] + [None] * 19), take_many
    if kind == "WorkQueue":
        q = b.WorkQueue(name=name)

        def take():
            try:
                d = q.get(timeout=0.5)
            except queue.Empty:
                return None
            d.ack()
            return [d.value]
        return q, q._keys[0], q.put, take
    if kind == "Topic":
        t = b.Topic(name=name)
        return t, t._keys[0], t.publish, _taking(t.subscribe().get)
    log = b.Log(name=name, partitions=2)
    consumer = log.consumer("g")

    def take():
        records = consumer.poll(timeout=0.5)
        if not records:
            return None
        consumer.commit()
        return [(r.partition, r.offset, r.value) for r in records]
    return log, log._pkeys(0)[0], lambda i: log.append(i, key=str(i % 2)), take


@pytest.mark.parametrize("kind", ["Queue", "Queue batches", "WorkQueue", "Topic", "Log"])
def test_a_slot_migrated_under_traffic_loses_and_repeats_nothing(cluster, kind):
    b = _backend(cluster)
    obj, key, put, take = _objects(b, kind, f"migrate-{kind.lower().replace(' ', '-')}")
    try:
        flow = _Flow(put, take)
        slot = b.client.keyslot(key)
        src = _owner(cluster, slot)
        tryagain = _errors(src, "TRYAGAIN")
        splits = []

        def on_split(src):
            # The traffic meets the split before the next key moves: the
            # source answers a step whose keys are on both nodes TRYAGAIN
            # (a step whose keys all left, ASK).
            seen = _redirects(src)
            splits.append(src)
            _wait("a step meeting the split keys", lambda: _redirects(src) > seen,
                  time.monotonic() + DEADLINE_S)

        flow.run_around(lambda: _migrate(cluster, slot, on_split=on_split))
        assert flow.errors == []
        assert splits                            # the keys were split over two nodes
        assert _errors(src, "TRYAGAIN") > tryagain   # and steps met the split
        if kind == "Log":
            values = [v for _, _, v in flow.got]
            for p in (0, 1):
                offsets = [o for pp, o, _ in flow.got if pp == p]
                assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))
        else:
            values = flow.got
        assert sorted(values) == flow.acked     # each acknowledged one once, nothing else
    finally:
        obj.close()
        b.close()


@pytest.mark.parametrize("kind", ["Queue", "WorkQueue", "Topic"])
def test_a_get_parked_while_its_slot_moves_gets_the_next_put(cluster, kind):
    b = _backend(cluster)
    obj, key, put, _ = _objects(b, kind, f"parked-{kind.lower()}")
    get = obj.subscribe().get if kind == "Topic" else obj.get
    try:
        box = {}

        def consume():
            try:
                m = get(timeout=DEADLINE_S)
                box["value"] = m.value if kind == "WorkQueue" else m
            except Exception as e:           # reported by the test
                box["error"] = repr(e)

        src = _owner(cluster, b.client.keyslot(key))

        def blocked():
            info = _cli(src, "info", "clients").splitlines()
            return int(next(x for x in info if x.startswith("blocked_clients:")).split(":")[1])

        before = blocked()
        t = threading.Thread(target=consume, daemon=True)
        t.start()
        _wait("the get parked on the server", lambda: blocked() > before,
              time.monotonic() + DEADLINE_S)
        _migrate(cluster, b.client.keyslot(key))
        put("after the move")
        t.join(DEADLINE_S)
        assert not t.is_alive()
        assert box == {"value": "after the move"}
    finally:
        obj.close()
        b.close()
