"""A shutdown wakes every wait of the Redis classes, in every process
(docs/design.md, "Shutdown", Redis): a child blocked with no timeout
(seen blocked by the server: INFO's blocked_clients) returns within a
deadline once another process calls shutdown(); without the wake it would
stay blocked (a Queue's get in BLPOP, a put or a work queue's get in
XREAD on its stream, a subscription's get, a lossless publisher waiting
for room, a log's read and a consumer's poll in XREAD)."""
import queue
import time

import pytest

from tests.contract import _workers

pytestmark = [pytest.mark.timeout(120), pytest.mark.redis]  # a real redis-server

DEADLINE = 15.0     # seconds a woken child has to report


@pytest.fixture(params=["redis", "redis-cluster"])
def rb(request):
    import pyqueue
    server = request.getfixturevalue("redis_server" if request.param == "redis"
                                     else "redis_cluster")
    return pyqueue.connect(server.url)      # shared per URL: not closed here


def _blocked(b):
    """Clients blocked in BLPOP/XREAD on the server (every master)."""
    if b.cluster:
        r = b.client.info("clients", target_nodes=b.client.PRIMARIES)
        return sum(v["blocked_clients"] for v in r.values())
    return b.client.info("clients")["blocked_clients"]


def _wait_blocked(b, base, n=1):
    end = time.monotonic() + 30
    while _blocked(b) < base + n:
        assert time.monotonic() < end, "the child never blocked"
        time.sleep(0.01)


def _name(kind):
    import uuid
    return f"rs-{kind}-{uuid.uuid4().hex[:10]}"


def _run(b, h, op, ctx, procs, shut, n=1, subscribed=False):
    """Starts n children in op on h, waits until the server has them
    blocked, calls shut(), and returns what each reported."""
    out = b.Queue(name=_name("out"))
    try:
        base = _blocked(b)
        for _ in range(n):
            procs.start(ctx, _workers.wait_then_report, h, op, out)
        if subscribed:
            assert [out.get(timeout=30) for _ in range(n)] == ["subscribed"] * n
        _wait_blocked(b, base, n)
        shut()
        try:
            got = [out.get(timeout=DEADLINE) for _ in range(n)]
        except queue.Empty:
            pytest.fail(f"a child in {op} is still blocked {DEADLINE} s after the shutdown")
        assert procs.join_all(30)[-n:] == [0] * n
        return got
    finally:
        out.unlink()
        out.close()


@pytest.mark.parametrize("immediate", [False, True])
def test_queue_gets_blocked_in_blpop_wake(rb, ctx, procs, immediate):
    q = rb.Queue(name=_name("q"))
    try:
        got = _run(rb, q, "get", ctx, procs, lambda: q.shutdown(immediate=immediate), n=3)
        assert got == ["ShutDown"] * 3
    finally:
        q.unlink()


@pytest.mark.parametrize("low_by", [1, 3])
def test_queue_gets_wake_when_the_waiting_count_is_low(rb, ctx, procs, low_by):
    """A take script sent again by a client that replays (the cluster
    client's retry, min_replicas=) counts its get out of "waiting" twice:
    the count ends low and the shutdown pushes fewer wake tokens than gets
    are blocked. Each get woken by a token pushes it back, so every one
    still wakes. low_by=3 leaves the count at 0: the shutdown pushes one
    token all the same."""
    q = rb.Queue(name=_name("q"))

    def shut():
        rb.client.hincrby(q._keys[0], "waiting", -low_by)   # what the replays leave
        q.shutdown()

    try:
        assert _run(rb, q, "get", ctx, procs, shut, n=3) == ["ShutDown"] * 3
    finally:
        q.unlink()


def test_queue_gets_wake_when_a_get_dies_with_the_wake_token(rb, ctx, procs):
    """With the count low (as above) the shutdown pushes one token, and
    the get that takes it is SIGKILLed before it passes it on (a real
    process blocked in BLPOP on the token list before the others, so the
    server hands the token to it): no token is left, and the gets still
    blocked find the shutdown flag at the end of their wait slice
    (queue.WAIT_SLICE) instead of waiting for good."""
    from pyqueue.backends.redis import queue as rq
    assert rq.WAIT_SLICE < DEADLINE
    q = rb.Queue(name=_name("q"))
    try:
        base = _blocked(rb)
        thief = procs.start(ctx, _workers.take_wake_token_and_die, q)
        _wait_blocked(rb, base)

        def shut():
            rb.client.hset(q._keys[0], "waiting", 0)     # what the replays leave
            q.shutdown()

        assert _run(rb, q, "get", ctx, procs, shut, n=2) == ["ShutDown"] * 2
        thief.join(30)
        assert thief.exitcode == -9            # it took the only token, and died
        assert rb.client.llen(q._keys[4]) == 0  # the token went with it
    finally:
        q.unlink()


def test_queue_get_many_and_a_late_handle(rb, ctx, procs):
    q = rb.Queue(name=_name("q"))
    try:
        assert _run(rb, q, "get_many", ctx, procs, q.shutdown) == ["ShutDown"]
    finally:
        q.unlink()


def test_queue_put_waiting_for_room_wakes(rb, ctx, procs):
    q = rb.Queue(1, name=_name("q"))
    try:
        q.put("full")
        assert _run(rb, q, "put", ctx, procs, q.shutdown) == ["ShutDown"]
        assert q.get(timeout=5) == "full"        # drained after
    finally:
        q.unlink()


def test_joinable_queue_get_wakes(rb, ctx, procs):
    jq = rb.JoinableQueue(name=_name("jq"))
    try:
        assert _run(rb, jq, "get", ctx, procs, jq.shutdown, n=2) == ["ShutDown"] * 2
    finally:
        jq.unlink()


def test_workqueue_get_and_put_wake(rb, ctx, procs):
    wq = rb.WorkQueue(_name("wq"), max_in_flight=2)
    try:
        assert _run(rb, wq, "wq_get", ctx, procs, wq.shutdown, n=2) == ["ShutDown"] * 2
    finally:
        wq.unlink()
    wq = rb.WorkQueue(_name("wq"), max_in_flight=2)
    try:
        wq.put_many([1, 2])
        assert _run(rb, wq, "wq_put", ctx, procs, wq.shutdown) == ["ShutDown"]
        assert wq.qsize() == 2                   # nothing discarded
    finally:
        wq.unlink()


@pytest.mark.parametrize("op", ["sub_get", "sub_iter"])
def test_topic_subscribers_wake(rb, ctx, procs, op):
    t = rb.Topic(_name("t"))
    try:
        want = "ShutDown" if op == "sub_get" else "ended"
        assert _run(rb, t, op, ctx, procs, t.shutdown, n=2, subscribed=True) == [want] * 2
    finally:
        t.unlink()


def test_log_reader_and_consumer_wake(rb, ctx, procs):
    log = rb.Log(_name("log"), partitions=1)
    try:
        log.append("x")
        assert _run(rb, log, "log_read", ctx, procs, log.shutdown) == ["ShutDown"]
    finally:
        log.unlink()
    log = rb.Log(_name("log"), partitions=1)
    try:
        assert _run(rb, log, "consume", ctx, procs, log.shutdown) == ["ended"]
    finally:
        log.unlink()


def test_topic_lossless_publisher_waiting_for_room_wakes(rb, ctx, procs):
    # A subscriber that never reads holds the oldest message; its lease
    # (subscriber_timeout) is far beyond the deadline.
    t = rb.Topic(_name("t"), capacity_bytes=4096, mode="lossless", subscriber_timeout=600)
    try:
        with t.subscribe() as idle:
            with pytest.raises(queue.Full):
                for _ in range(100):
                    t.publish(b"x" * 1000, block=False)
            assert _run(rb, t, "publish", ctx, procs, t.shutdown) == ["ShutDown"]
            assert idle.get(timeout=5) == b"x" * 1000    # drained after
    finally:
        t.unlink()
