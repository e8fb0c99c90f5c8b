"""Connection drops in the middle of a batch, on a real redis-server: the
connection to it is cut (tests/redis_support.CuttingProxy) after a step of
put_many / get_many / Batch.ack reached the server and before its reply
came back, or before it reached the server, or while the server is
SIGKILLed and restarted (AOF). The call raises
pyqueue.backends.redis.ConnectionLost (a ConnectionError); what was
committed stays; nothing is duplicated but by the at-least-once rules
(a put retried with its dedup keys is stored once; taken messages whose
reply was lost are redelivered after the visibility timeout); the same
handle goes on once the server is back (docs/guarantees.md)."""
import queue
import shutil
import tempfile

import pytest

from tests import redis_support

pytestmark = [pytest.mark.redis,
              pytest.mark.skipif(not redis_support.available(),
                                 reason="redis-server is not installed"),
              pytest.mark.timeout(120)]

N = 2048          # 8 put_many steps of 256 (pyqueue.backends.redis.workqueue._PUT_CHUNK)
CHUNK = 256
AOF = ("--appendonly", "yes", "--appendfsync", "always")


@pytest.fixture
def where():
    d = tempfile.mkdtemp(prefix="pq-drop-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def server(where):
    pytest.importorskip("redis", reason="redis-py is not installed (pip install redis)")
    s = redis_support.RedisServer(where, *AOF)
    yield s
    s.stop()


@pytest.fixture
def proxy(where, server):
    p = redis_support.CuttingProxy(where, server.sock)
    yield p
    p.stop()


@pytest.fixture
def wq(proxy):
    import pyqueue
    b = pyqueue.connect(proxy.url)
    q = b.WorkQueue("drops", visibility_timeout=1, max_in_flight=4096, dedup_keys=4096)
    q.put("warm-up", key="warm-up")          # the scripts are loaded: one EVALSHA per step
    q.get(timeout=5).ack()
    yield q
    q.unlink()
    b.close()


def _drain(wq, want, timeout=30):
    """{value: delivery_count} of `want` messages got and acked (each
    value once), waiting up to timeout seconds for redeliveries."""
    import time
    got = {}
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        try:
            batch = wq.get_many(512, timeout=1)
        except queue.Empty:
            continue
        for v, n in zip(batch.values, batch.delivery_counts):
            assert v not in got, f"{v} delivered again after it was acked"
            got[v] = n
        batch.ack()
    return got


@pytest.mark.parametrize("cut", ["reply", "request"])
def test_put_many_cut_mid_batch(wq, proxy, cut):
    from pyqueue.backends.redis import ConnectionLost
    values = list(range(N))
    keys = [f"k{v}" for v in values]
    getattr(proxy, f"cut_{cut}")(3)                # the third step of the batch
    with pytest.raises(ConnectionLost) as info:
        wq.put_many(values, keys=keys)
    assert proxy.done.is_set()
    e = info.value
    assert isinstance(e, ConnectionError) and e.sent
    assert len(e.ids) == 2 * CHUNK                 # the steps before: committed
    # The cut step is all or nothing: applied when its reply was lost.
    applied = 3 * CHUNK if cut == "reply" else 2 * CHUNK
    assert wq.qsize() == applied
    # The same handle goes on; a retry with the same keys stores each once.
    ids = wq.put_many(values, keys=keys)
    assert ids[:2 * CHUNK] == e.ids and len(set(ids)) == N
    assert wq.qsize() == N
    got = _drain(wq, N)
    assert sorted(got) == values and set(got.values()) == {1}
    assert wq.stats()["enqueued"] == N + 1 and wq.stats()["deduplicated"] == applied


def test_get_many_reply_lost_is_redelivered(wq, proxy):
    from pyqueue.backends.redis import ConnectionLost
    wq.put_many(list(range(100)))
    proxy.cut_reply()
    with pytest.raises(ConnectionLost) as info:
        wq.get_many(60)
    assert info.value.sent
    s = wq.stats()
    assert s["in_flight"] == 60 and s["depth"] == 40   # taken by the lost reply
    got = _drain(wq, 100)
    assert sorted(got) == list(range(100))
    # The 60 of the lost reply again after their visibility timeout (their
    # second delivery), the rest once.
    assert sorted(n for n in got.values()) == [1] * 40 + [2] * 60
    assert wq.stats()["acked"] == 101 and wq.qsize() == 0


@pytest.mark.parametrize("cut", ["reply", "request"])
def test_batch_ack_cut(wq, proxy, cut):
    from pyqueue.backends.redis import ConnectionLost
    from pyqueue.errors import DeliveryExpired
    wq.put_many(list(range(50)))
    batch = wq.get_many(50, timeout=5)
    assert len(batch) == 50
    getattr(proxy, f"cut_{cut}")()
    with pytest.raises(ConnectionLost):
        batch.ack()
    assert batch.settled == [None] * 50            # not known to be settled: still held
    if cut == "reply":                             # applied: acked once, gone
        assert wq.stats()["acked"] == 51 and wq.qsize() == 0
        with pytest.raises(DeliveryExpired):       # the retry finds them acked already
            batch.ack()
    else:                                          # not applied: the retry acks them
        assert wq.stats()["in_flight"] == 50
        batch.ack()
    assert wq.stats()["acked"] == 51 and wq.qsize() == 0
    with pytest.raises(queue.Empty):               # nothing comes back
        wq.get_many(50, timeout=1.5)


def test_server_killed_and_restarted_mid_batch(where, server, proxy, wq):
    """The server SIGKILLed while a put_many's fourth step is on its way,
    then restarted from its AOF: the call raises ConnectionLost (that
    step never arrived), the three steps before survive, and the same
    handle finishes the batch (the keys: each stored once)."""
    from pyqueue.backends.redis import ConnectionLost
    import threading
    values = list(range(N))
    keys = [f"k{v}" for v in values]
    proxy.hold_request(4)
    out = {}

    def put():
        try:
            wq.put_many(values, keys=keys)
        except ConnectionLost as e:
            out["error"] = e

    t = threading.Thread(target=put)
    t.start()
    assert proxy.held.wait(60)
    server.proc.kill()                            # no shutdown, no final save
    server.proc.wait(30)
    server.proc = redis_support.RedisServer(where, *AOF).proc   # stopped by the fixture
    proxy.release()
    t.join(60)
    e = out["error"]
    assert len(e.ids) == 3 * CHUNK
    assert wq.qsize() == 3 * CHUNK                # committed: survived the kill
    ids = wq.put_many(values, keys=keys)
    assert ids[:3 * CHUNK] == e.ids and wq.qsize() == N
    got = _drain(wq, N)
    assert sorted(got) == values


def test_log_append_many_cut_mid_batch(proxy):
    import pyqueue
    from pyqueue.backends.redis import ConnectionLost
    b = pyqueue.connect(proxy.url)
    log = b.Log("drops-log", partitions=1, retention_bytes=64 << 20)
    try:
        log.append("warm-up")
        proxy.cut_reply(2)                     # the second step of 1000 records
        with pytest.raises(ConnectionLost) as info:
            log.append_many(range(2500))
        e = info.value
        assert e.sent and e.ids == [(0, 1 + i) for i in range(1000)]
        assert log.end_offset(0) == 2001       # the cut step is all or nothing: applied
        assert [r.value for r in log.read(0, 1001, max_records=1000)] == list(range(1000, 2000))
        assert log.append("after") == (0, 2001)    # the same handle goes on
    finally:
        log.unlink()
        b.close()


def test_queue_get_many_cut_after_its_blpop_keeps_the_message(server, proxy):
    """A Queue get_many that waited in BLPOP holds the first message when
    the connection drops before its take script's reply: it raises
    ConnectionLost and the next get returns that message (with the take
    not applied, nothing is lost)."""
    import threading
    import time
    import pyqueue
    from pyqueue.backends.redis import ConnectionLost
    b = pyqueue.connect(proxy.url)
    direct = pyqueue.connect(server.url)       # a producer that is not cut
    q = b.Queue(name="drops-q")
    try:
        q.put("warm-up")
        assert q.get_many(10) == ["warm-up"]

        def produce():
            deadline = time.monotonic() + 30
            while direct.client.info("clients")["blocked_clients"] < 1:
                assert time.monotonic() < deadline, "the get never blocked"
            direct.Queue.open("drops-q").put_many(["a", "b", "c"])

        t = threading.Thread(target=produce)
        t.start()
        proxy.cut_request(2)                    # the take after the BLPOP (the 1st: empty)
        with pytest.raises(ConnectionLost):
            q.get_many(10, timeout=30)
        t.join(30)
        got = q.get_many(10)                    # the one in hand first
        assert got == ["a"]
        assert got + q.get_many(10) == ["a", "b", "c"]
    finally:
        q.unlink()
        b.close()
        direct.close()


@pytest.mark.parametrize("cut", ["reply", "request"])
def test_queue_batches_cut_mid_transaction(server, proxy, cut):
    """A Queue batch of 40 is one MULTI/EXEC (a plain RPUSH or LPOP beside
    its script): cut before it reaches the server, nothing happened; cut
    after (its reply lost), all of it did, counted - never a part, and
    never the plain command without its script. The handle goes on."""
    import pyqueue
    from pyqueue.backends.redis import ConnectionLost
    b = pyqueue.connect(proxy.url)
    q = b.Queue(100, name="drops-batches")
    try:
        getattr(proxy, f"cut_{cut}")(1, on=b"MULTI")
        with pytest.raises(ConnectionLost) as info:
            q.put_many(range(40))
        assert proxy.done.is_set() and info.value.sent
        applied = 40 if cut == "reply" else 0
        assert q.qsize() == applied and q.stats()["enqueued"] == applied
        assert q.put_many(range(40, 80)) == 40           # the same handle goes on
        getattr(proxy, f"cut_{cut}")(1, on=b"MULTI")
        with pytest.raises(ConnectionLost):
            q.get_many(40)
        taken = 40 if cut == "reply" else 0                # a lost reply's messages are gone
        assert q.qsize() == applied + 40 - taken
        assert q.stats()["dequeued"] == taken
        assert q.get_many(1000) == list(range(40, 80))     # in order, each once
    finally:
        q.unlink()
        b.close()


def test_group_heartbeat_survives_a_dropped_connection(proxy):
    """The heartbeat thread of a Log group member whose session renewal
    loses its connection goes on beating (the member stays), instead of
    dying on ConnectionLost."""
    import pyqueue
    b = pyqueue.connect(proxy.url)
    log = b.Log("drops-group", partitions=2)
    try:
        log.append_many(range(4))
        with log.consumer("g") as c:
            assert len(c.poll(max_records=10, timeout=5)) >= 1
            table = log._group_table()
            beater = table._beater
            proxy.cut_request()                    # its next beat (nothing else runs now)
            assert proxy.done.wait(30)
            proxy.cut_request()                    # and the beat after: it beat again
            assert proxy.done.wait(30)
            assert beater.is_alive()
            assert [m["member_id"] for m in log.group_members("g")] == [c.member_id]
    finally:
        log.unlink()
        b.close()
