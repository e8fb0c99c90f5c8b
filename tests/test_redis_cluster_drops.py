"""A cluster URL sends a step (one Lua script) once, as one server does
(tests/test_redis_connection_drops.py): a connection lost after the step
was sent raises ConnectionLost(sent=True) instead of the cluster client's
retry sending it again, while a MOVED or ASK redirect (the script did not
run) is followed.

The cluster is real (tests/redis_support.RedisCluster); its nodes also
listen on Unix sockets, and the backend's connection to the node that
holds the queue's slot goes through a CuttingProxy on that node's socket
(the node's redis.Redis in the cluster client's node table is replaced by
one that connects through the proxy: the level where redis-py's cluster
client talks to one node; the nodes announce their TCP ports, so a proxy
cannot sit in front of a node for the whole cluster client)."""
import shutil
import tempfile

import pytest

from tests import redis_support

pytestmark = [pytest.mark.redis,
              pytest.mark.skipif(not redis_support.available(),
                                 reason="redis-server is not installed"),
              pytest.mark.timeout(120)]

WAITED = "?min_replicas=1&wait_timeout=5000"


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("redis", reason="redis-py is not installed (pip install redis)")
    with redis_support.own_cluster("pq-cdrop-") as c:
        yield c


@pytest.fixture
def where():
    d = tempfile.mkdtemp(prefix="pq-cdrop-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _through_proxy(backend, key, cluster, where):
    """Routes the backend's connections to the node of `key`'s slot
    through a CuttingProxy on that node's Unix socket; the proxy."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    class Proxied(redis.UnixDomainSocketConnection):
        # The cluster client reports a node's host and port (its metrics).
        def __init__(self, node_host, node_port, **kwargs):
            super().__init__(**kwargs)
            self.host, self.port = node_host, node_port

    node = backend.client.get_node_from_key(key)
    proxy = redis_support.CuttingProxy(where, cluster.socks[cluster.ports.index(node.port)])
    # As the cluster client makes a node's: no retry at that level.
    pool = redis.ConnectionPool(connection_class=Proxied, path=proxy.sock, protocol=2,
                                node_host=node.host, node_port=node.port,
                                retry=Retry(NoBackoff(), 0))
    direct = node.redis_connection
    node.redis_connection = redis.Redis(connection_pool=pool)
    stop = proxy.stop

    def stop_and_go_direct():
        # The clean-ups after it (unlink) go to the node itself: through
        # the stopped proxy a pooled connection it closed reconnects to
        # nothing (refused; seen in a CI run).
        stop()
        node.redis_connection = direct
    proxy.stop = stop_and_go_direct
    return proxy


@pytest.fixture(params=["plain", "min_replicas"])
def setup(request, cluster, where):
    from pyqueue.backends.redis import RedisBackend
    b = RedisBackend(cluster.url + (WAITED if request.param == "min_replicas" else ""))
    q = b.Queue(name=f"cdrop-{request.param}")
    proxy = _through_proxy(b, q._keys[0], cluster, where)
    q.put("warm-up")                        # through the proxy: connected, script loaded
    assert q.get() == "warm-up"
    yield b, q, proxy
    proxy.stop()
    q.unlink()
    b.close()


def test_reply_lost_raises_and_is_applied_once(setup):
    from pyqueue.backends.redis import ConnectionLost
    b, q, proxy = setup
    proxy.cut_reply()
    with pytest.raises(ConnectionLost) as info:
        q.put("once")
    assert proxy.done.is_set() and info.value.sent
    # Applied by the server, not sent again: one copy (the cluster
    # client's retry stored it twice, or a second time after the cut).
    assert q.qsize() == 1
    assert q.get_many(10) == ["once"]
    q.put("after")                          # the same handle goes on
    assert q.get_many(10) == ["after"]


def test_request_lost_raises_and_is_not_applied(setup):
    from pyqueue.backends.redis import ConnectionLost
    b, q, proxy = setup
    proxy.cut_request()
    with pytest.raises(ConnectionLost) as info:
        q.put("never")
    assert proxy.done.is_set() and info.value.sent     # sent: the client cannot tell
    assert q.qsize() == 0
    q.put("after")
    assert q.get_many(10) == ["after"]


def test_put_many_cut_mid_batch_keeps_the_steps_before(cluster, where):
    """A WorkQueue put_many whose third step's reply is lost: ConnectionLost
    with the ids of the two steps before, the third applied once."""
    from pyqueue.backends.redis import ConnectionLost, RedisBackend
    b = RedisBackend(cluster.url)
    wq = b.WorkQueue("cdrop-wq", max_in_flight=4096, dedup_keys=4096)
    proxy = _through_proxy(b, wq._keys[0], cluster, where)
    try:
        wq.put("warm-up")
        proxy.cut_reply(3)
        with pytest.raises(ConnectionLost) as info:
            wq.put_many(range(2048))
        assert info.value.sent and len(info.value.ids) == 2 * 256
        assert wq.qsize() == 1 + 3 * 256
    finally:
        proxy.stop()
        wq.unlink()
        b.close()


def test_moved_is_followed(cluster):
    """The client's slot map names the wrong master: the step gets MOVED
    (it did not run), is sent to the owner and applied once."""
    from pyqueue.backends.redis import RedisBackend
    b = RedisBackend(cluster.url)
    try:
        q = b.Queue(name="cdrop-moved")
        c = b.client
        slot = c.keyslot(q._keys[0])
        owner = c.get_node_from_key(q._keys[0])
        other = next(n for n in c.get_primaries() if n.name != owner.name)
        c.nodes_manager.slots_cache[slot] = [other]
        q.put("x")
        assert c.get_node_from_key(q._keys[0]).name == owner.name   # the map was patched
        assert q.qsize() == 1 and q.get() == "x"
        q.unlink()
    finally:
        b.close()


def test_ask_is_followed(cluster):
    """The queue's slot is being migrated to another master (MIGRATING /
    IMPORTING) and its keys do not exist yet: the creation gets ASK, is
    sent to the importing node after ASKING, and is made there."""
    import redis
    from pyqueue.backends.redis import RedisBackend
    b = RedisBackend(cluster.url)
    name = "cdrop-ask"
    key = f"pq:{{{name}}}:meta"
    c = b.client
    slot = c.keyslot(key)
    src = c.get_node_from_key(key)
    dst = next(n for n in c.get_primaries() if n.name != src.name)
    rs, rd = redis.Redis(port=src.port, protocol=2), redis.Redis(port=dst.port, protocol=2)
    sid, did = rs.execute_command("CLUSTER MYID"), rd.execute_command("CLUSTER MYID")
    try:
        rd.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", sid)
        rs.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", did)
        q = b.Queue(name=name)
        assert rd.execute_command("CLUSTER COUNTKEYSINSLOT", slot) == 1   # made on dst
        assert rs.execute_command("CLUSTER COUNTKEYSINSLOT", slot) == 0
        # The migration ends: dst owns the slot; the queue works there.
        for r in (rd, rs):
            r.execute_command("CLUSTER SETSLOT", slot, "NODE", did)
        q.put("x")
        assert q.get() == "x"
        q.unlink()
    finally:
        rs.close()
        rd.close()
        b.close()


def test_noscript_is_loaded_again(cluster):
    """The node forgot its scripts (SCRIPT FLUSH, as a restarted node or a
    promoted replica may): NOSCRIPT, the script loaded there, the step sent
    again and applied once."""
    import redis
    from pyqueue.backends.redis import RedisBackend
    b = RedisBackend(cluster.url)
    try:
        q = b.Queue(name="cdrop-noscript")
        q.put("a")
        node = b.client.get_node_from_key(q._keys[0])
        r = redis.Redis(port=node.port, protocol=2)
        try:
            r.script_flush()
            assert r.script_exists(b._scripts["queue_put"]._sha) == [False]
        finally:
            r.close()
        q.put("b")
        assert q.get_many(10) == ["a", "b"]
        q.unlink()
    finally:
        b.close()
