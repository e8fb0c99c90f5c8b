"""A blocking call on Redis waits as long as its own timeout, whatever the
client's socket timeout (redis-py's default is 5 s): each wait (BLPOP,
XREAD BLOCK) is sent once and read with a deadline of its own. Before, a
wait longer than the socket timeout was cut, and redis-py's retry sent it
again: a WorkQueue get(timeout=12) raised redis' TimeoutError after about
a minute, and a BLPOP whose reply the cut lost had popped a message for
nobody. Here the socket timeout is 0.3 s and the waits 1.5 s."""
import queue
import threading
import time
import uuid

import pytest

pytestmark = [pytest.mark.timeout(120), pytest.mark.redis]  # a real redis-server

SOCKET_TIMEOUT = 0.3
WAIT = 1.5


@pytest.fixture(params=["redis", "redis-cluster"])
def short(request):
    """A backend whose connections time out reads after SOCKET_TIMEOUT s."""
    from pyqueue.backends.redis import RedisBackend
    server = request.getfixturevalue("redis_server" if request.param == "redis"
                                     else "redis_cluster")
    b = RedisBackend(server.url)
    c = b.client
    nodes = c.get_nodes() if b.cluster else [None]
    for node in nodes:
        pool = (c.get_redis_connection(node) if node is not None else c).connection_pool
        pool.connection_kwargs["socket_timeout"] = SOCKET_TIMEOUT
        pool.disconnect()               # (none made before has the old one)
    yield b
    b.close()


def _name(kind):
    return f"rb-{kind}-{uuid.uuid4().hex[:10]}"


def _times_out(call, empty):
    """call() waits WAIT s for nothing: it ends with `empty` (its own
    timeout's result), neither cut by the socket timeout nor sent again."""
    t0 = time.monotonic()
    if isinstance(empty, type) and issubclass(empty, BaseException):
        with pytest.raises(empty):
            call()
    else:
        assert call() == empty
    took = time.monotonic() - t0
    assert WAIT - 0.05 <= took < WAIT + 4.0, took


def test_every_wait_lasts_its_own_timeout(short):
    q = short.Queue(name=_name("q"))
    wq = short.WorkQueue(name=_name("wq"))
    t = short.Topic(name=_name("t"))
    log = short.Log(name=_name("log"))
    sub = t.subscribe()
    c = log.consumer("g")
    try:
        _times_out(lambda: q.get(timeout=WAIT), queue.Empty)
        _times_out(lambda: q.get_many(10, timeout=WAIT), queue.Empty)
        _times_out(lambda: wq.get(timeout=WAIT), queue.Empty)
        _times_out(lambda: sub.get(timeout=WAIT), queue.Empty)
        _times_out(lambda: log.read(0, 0, timeout=WAIT), [])
        _times_out(lambda: c.poll(timeout=WAIT), [])
    finally:
        c.close()
        sub.close()
        for h in (q, wq, t, log):
            h.unlink()
            h.close()


def test_a_message_that_comes_after_the_socket_timeout_is_delivered_once(short):
    """Messages put while gets are blocked, each after more than the socket
    timeout: every one is delivered, once (a BLPOP cut and sent again could
    pop one for nobody), and the gets' count of waiters ends at zero."""
    q = short.Queue(name=_name("q"))
    n = 6
    try:
        def put_later():
            for i in range(n):
                time.sleep(SOCKET_TIMEOUT * 2)   # (after the socket timeout, on purpose)
                q.put(i)

        putter = threading.Thread(target=put_later)
        putter.start()
        got = [q.get(timeout=30) for _ in range(n)]
        putter.join(30)
        assert got == list(range(n))
        assert q.qsize() == 0
        assert int(short.client.hget(q._keys[0], "waiting") or 0) == 0
    finally:
        q.unlink()
        q.close()


def test_a_queue_removed_under_a_waiting_get(short, monkeypatch):
    """unlink() while a get waits with no timeout: the get raises
    SegmentNotFound at its slice's end and leaves nothing behind, so the
    name can be made again (a review: the slice's count update made the
    meta hash again, for good, and the get waited for ever)."""
    from pyqueue.backends.redis import queue as rq
    from pyqueue.errors import SegmentNotFound
    monkeypatch.setattr(rq, "WAIT_SLICE", 0.5)
    name = _name("q")
    q = short.Queue(name=name)
    got = []
    waiter = threading.Thread(target=lambda: got.append(_raised(q.get)))
    waiter.start()
    end = time.monotonic() + 30
    while int(short.client.hget(q._keys[0], "waiting") or 0) == 0:
        assert time.monotonic() < end, "the get never waited"
        time.sleep(0.01)
    short.Queue.open(name).unlink()
    waiter.join(30)
    assert not waiter.is_alive() and isinstance(got[0], SegmentNotFound), got
    assert [k for k in short.client.scan_iter(f"pq:{{{name}}}:*")] == []
    again = short.Queue(name=name)        # the name works again
    again.put("x")
    assert again.get(timeout=5) == "x"
    again.unlink()
    q.close()


def _raised(call):
    try:
        return call()
    except BaseException as e:  # (what the waiting call ended with)
        return e


def test_a_server_killed_under_a_waiting_get_raises_connection_lost(tmp_path):
    """The server SIGKILLed while a get waits: ConnectionLost(sent=True)
    (the wait was sent), not redis' own error from a clean-up that could
    not reach it either."""
    import signal

    from pyqueue.backends.redis import ConnectionLost, RedisBackend
    from tests import redis_support
    server = redis_support.RedisServer(str(tmp_path))
    try:
        b = RedisBackend(server.url)
        q = b.Queue(name=_name("q"))
        got = []
        waiter = threading.Thread(target=lambda: got.append(_raised(lambda: q.get(timeout=30))))
        waiter.start()
        end = time.monotonic() + 30
        # Blocked on the server (its BLPOP sent), not only counted in
        # "waiting" by the step before it: killed between the two, the get
        # has sent nothing of its wait (sent=False is then right; CI run 39).
        while b.client.info("clients")["blocked_clients"] == 0:
            assert time.monotonic() < end, "the get never waited"
            time.sleep(0.01)
        server.proc.send_signal(signal.SIGKILL)
        waiter.join(60)
        assert isinstance(got[0], ConnectionLost) and got[0].sent, got
        b.close()
    finally:
        server.stop()
