"""The Redis Queue's two forms of a batch step give the same result.

A put_many or get_many batch of TRANSACTION_FROM messages or more moves its
messages by a plain RPUSH / LPOP inside one MULTI/EXEC, beside a script
that decides and counts (_PUT_PUSHED, _TAKE_COUNTED); a smaller one goes
through the one script that carries the messages (_PUT, _TAKE). Here the
same puts and gets run both ways, on one server and on the cluster, for
every overflow, bounded or not, joinable or not, into a queue already
holding some: the messages left, what the calls returned or raised, and
the statistics must be the same. (pyqueue/backends/redis/queue.py)
"""
import itertools
import queue
import threading
import time

import pytest

import pyqueue
from pyqueue.backends.redis import queue as rq

pytestmark = pytest.mark.timeout(120)

N = 40      # >= TRANSACTION_FROM: the transaction form, unless forced off
FROM = rq.TRANSACTION_FROM


def _run(b, name, kind, maxsize, overflow, prefill, n, transactions, monkeypatch):
    monkeypatch.setattr(rq, "TRANSACTION_FROM", FROM if transactions else 10**9)
    q = getattr(b, kind)(maxsize, name=name, overflow=overflow)
    try:
        if prefill:
            q.put_many(range(-prefill, 0), block=False)
        outcome = []
        for first in (0, 1000):
            try:
                outcome.append(q.put_many(range(first, first + n), block=False))
            except queue.Full:
                outcome.append("Full")
        stats = q.stats()
        got = []
        while q.qsize():
            got += q.get_many(17, block=False)         # fewer than the list holds
        if kind == "JoinableQueue":
            for _ in got:
                q.task_done()
            outcome.append(q.stats()["unfinished_tasks"])
        keys = ("enqueued", "dequeued", "dropped", "rejected", "depth")
        return outcome, got, {k: stats[k] for k in keys}, q.stats()["dequeued"]
    finally:
        q.unlink()
        q.close()


@pytest.mark.parametrize("kind", ["Queue", "JoinableQueue"])
def test_both_forms_of_a_batch_agree(redis_url, kind, monkeypatch):
    assert N >= FROM
    b = pyqueue.connect(redis_url)
    cases = itertools.product([0, 5, 30, 60], ["block", "reject", "drop_oldest"], [0, 3, 29])
    for maxsize, overflow, prefill in cases:
        if maxsize and prefill > maxsize:
            continue
        name = f"c-forms-{kind}-{maxsize}-{overflow}-{prefill}"
        by_script = _run(b, name, kind, maxsize, overflow, prefill, N, False, monkeypatch)
        by_transaction = _run(b, name, kind, maxsize, overflow, prefill, N, True, monkeypatch)
        assert by_transaction == by_script, (maxsize, overflow, prefill)


def test_a_batch_get_counts_and_wakes_a_full_queue_s_put(redis_url):
    b = pyqueue.connect(redis_url)
    q = b.Queue(N, name="c-forms-wake")
    try:
        q.put_many(range(N))
        assert q.full()
        assert q.get_many(N) == list(range(N))   # the transaction form
        assert q.stats()["dequeued"] == N
        # The space stream got its entry: a put that found the queue full
        # before this get would have been woken (test_redis_blocking.py
        # waits on it); here it is read directly.
        assert b.client.xlen(q._keys[2]) == 1
    finally:
        q.unlink()
        q.close()


def _wait_blocked(b, q, n):
    """Until n gets of q are counted blocked in the server (its meta
    hash's "waiting"), with a deadline."""
    deadline = time.monotonic() + 30
    while b.client.hget(q._keys[0], "waiting") != str(n).encode():
        assert time.monotonic() < deadline, f"{n} gets not blocked in time"
        time.sleep(0.005)


def test_a_batch_get_that_waited_counts_what_it_took(redis_url):
    # get_many(40) finds the queue empty, waits in BLPOP, then takes the
    # rest with the transaction form (one message already taken).
    b = pyqueue.connect(redis_url)
    q = b.Queue(name="c-forms-waited")
    try:
        box = {}
        t = threading.Thread(target=lambda: box.update(got=q.get_many(40, timeout=30)))
        t.start()
        _wait_blocked(b, q, 1)
        q.put_many(range(30))
        t.join(30)
        assert not t.is_alive()
        got = box["got"]
        assert got == list(range(len(got))) and 1 <= len(got)
        rest = q.get_many(1000, block=False) if q.qsize() else []
        assert got + rest == list(range(30))
        s = q.stats()
        assert s["dequeued"] == 30 and s["enqueued"] == 30
        assert b.client.hget(q._keys[0], "waiting") == b"0"
    finally:
        q.unlink()
        q.close()


def test_batch_gets_blocked_are_all_woken_by_a_shutdown(redis_url):
    b = pyqueue.connect(redis_url)
    q = b.Queue(name="c-forms-shut")
    try:
        errors = []

        def get():
            try:
                q.get_many(40, timeout=30)
            except pyqueue.ShutDown as e:
                errors.append(e)
        threads = [threading.Thread(target=get) for _ in range(2)]
        for t in threads:
            t.start()
        _wait_blocked(b, q, 2)
        q.shutdown()
        for t in threads:
            t.join(30)
            assert not t.is_alive()
        assert len(errors) == 2
        assert b.client.hget(q._keys[0], "waiting") == b"0"
    finally:
        q.unlink()
        q.close()


def test_a_damaged_meta_hash_refuses_a_batch_and_keeps_the_queue(redis_url):
    # A key made by hand in place of a setting: the batch's script refuses
    # before it writes; the RPUSH beside it is taken back, the LPOP's
    # messages put back; nothing is counted.
    import redis
    b = pyqueue.connect(redis_url)
    q = b.Queue(10, name="c-forms-damaged")
    try:
        q.put_many(range(5))
        b.client.hset(q._keys[0], "maxsize", "x")
        with pytest.raises(redis.ResponseError, match="damaged"):
            q.put_many(range(100, 140))
        with pytest.raises(redis.ResponseError, match="damaged"):
            q.get_many(40)
        assert b.client.llen(q._keys[1]) == 5
        b.client.hset(q._keys[0], "maxsize", "10")
        assert q.get_many(40) == list(range(5))
        s = q.stats()
        assert s["enqueued"] == 5 and s["dequeued"] == 5
    finally:
        q.unlink()
        q.close()


@pytest.mark.parametrize("maxsize", [0, 10])
def test_a_damaged_list_refuses_a_get_before_it_counts(redis_url, maxsize):
    # A key of another type made by hand in place of the list: the one-
    # message take (_TAKE: an unbounded queue's pops without reading the
    # length first) refuses, so neither "waiting" nor "dequeued" moves; the
    # counted form refuses as well; a list put back makes the queue usable
    # again.
    import redis
    b = pyqueue.connect(redis_url)
    q = b.Queue(maxsize, name=f"c-forms-damaged-list-{maxsize}")
    try:
        q.put(1)
        b.client.delete(q._keys[1])
        b.client.set(q._keys[1], "not a list")
        for take in (lambda: q.get(block=False), lambda: q.get(timeout=0.01),
                     lambda: q.get_many(3, block=False), lambda: q.get_many(40, block=False)):
            with pytest.raises(redis.ResponseError, match="damaged"):
                take()
        assert b.client.hmget(q._keys[0], "waiting", "dequeued") in (
            [None, b"0"], [b"0", b"0"])
        b.client.delete(q._keys[1])
        q.put(2)
        assert q.get(block=False) == 2
        assert q.stats()["dequeued"] == 1
    finally:
        q.unlink()
        q.close()


@pytest.mark.parametrize("mode", ["-", "t"])
def test_a_take_whose_bookkeeping_fails_takes_nothing(redis_url, mode):
    # The take after a BLPOP counts its get out of "waiting" (and, woken by
    # a shutdown's token, pushes it back) before it pops: a key made by
    # hand that makes one of those writes fail ends the script with the
    # messages still in the list (Redis does not undo a script's earlier
    # writes: a pop before them would lose what it popped).
    import redis
    b = pyqueue.connect(redis_url)
    q = b.Queue(name=f"c-forms-damaged-count-{'t' if mode == 't' else 'm'}")
    try:
        q.put_many([1, 2])
        if mode == "-":
            b.client.hset(q._keys[0], "waiting", "x")
        else:
            b.client.set(q._keys[4], "not a list")
        keys = q._keys[:3] + q._keys[4:5]
        with pytest.raises(redis.ResponseError):
            q._take_step(keys, 2, 0, mode)
        assert b.client.llen(q._keys[1]) == 2
        b.client.hdel(q._keys[0], "waiting")
        b.client.delete(q._keys[4])
        assert q.get_many(10, block=False) == [1, 2]
    finally:
        q.unlink()
        q.close()
