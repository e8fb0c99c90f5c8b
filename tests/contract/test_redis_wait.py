"""min_replicas=N in a Redis URL: every script call is followed by WAIT N
on its connection; fewer confirmations raise NotReplicated, after the
write was applied (docs/guarantees.md, "Redis backend")."""
import asyncio
import contextlib
import os
import signal

import pytest

pytestmark = [pytest.mark.timeout(90), pytest.mark.redis]  # a real redis-server


def test_without_replicas_writes_are_applied_but_not_confirmed(redis_server):
    import pyqueue
    from pyqueue.backends.redis import NotReplicated, RedisBackend
    waited = RedisBackend(redis_server.url + "?min_replicas=1&wait_timeout=50")
    plain = pyqueue.connect(redis_server.url)
    try:
        with pytest.raises(NotReplicated) as e:
            waited.Queue(name="wait-no-replica")
        assert (e.value.replicas, e.value.wanted) == (0, 1)
        q = plain.Queue.open("wait-no-replica")         # it was made all the same
        assert q.qsize() == 0
        q.unlink()
    finally:
        waited.close()


def test_with_replicas_every_step_is_confirmed(redis_cluster):
    from pyqueue.backends.redis import RedisBackend
    redis_cluster.wait_replicas_synced()
    b = RedisBackend(redis_cluster.url + "?min_replicas=1&wait_timeout=5000")
    try:
        assert b.min_replicas == 1 and b.wait_timeout == 5000
        q = b.JoinableQueue(name="wait-confirmed")
        assert q.put_many(range(100)) == 100
        assert q.get_many(1000) == list(range(100))
        for _ in range(100):
            q.task_done()
        q.join()
        wq = b.WorkQueue("wait-confirmed-wq")
        wq.put("job")
        d = wq.get(timeout=5)
        d.ack()
        assert wq.stats()["acked"] == 1
        q.unlink()
        wq.unlink()
    finally:
        b.close()


def _replication(server):
    """INFO replication of a server (redis-py over its Unix socket: the
    waits below poll it, and a redis-cli process per poll, every 2 ms,
    was most of these tests' CPU)."""
    import redis
    r = redis.Redis(unix_socket_path=server.sock, socket_timeout=10)
    try:
        return r.info("replication")
    finally:
        r.close()


@pytest.fixture
def replicated(tmp_path):
    """(master, replica): two real redis-servers, the replica in sync."""
    from tests import redis_support
    from tests._support import wait_until
    master = redis_support.tcp_server(str(tmp_path))
    (tmp_path / "r").mkdir()
    replica = None
    try:
        replica = redis_support.RedisServer(str(tmp_path / "r"), "--replicaof", "127.0.0.1",
                                            str(master.port))
        assert wait_until(lambda: _replication(replica).get("master_link_status") == "up",
                          timeout=30, interval=0.02)
        yield master, replica
    finally:
        if replica is not None:
            os.kill(replica.proc.pid, signal.SIGCONT)
            replica.stop()
        master.stop()


def _caught_up(master, replica):
    """Waits (30 s at most) until the replica has all the master wrote: a
    replica resumed after a SIGSTOP catches up, and on a busy machine
    (CI's workers side by side) the next step's WAIT of a few hundred ms
    may end before it has."""
    from tests._support import wait_until

    def offset(server, field):
        return int(_replication(server).get(field, -1))

    assert wait_until(lambda: offset(replica, "slave_repl_offset")
                      >= offset(master, "master_repl_offset") > 0, 30, interval=0.02)


@contextlib.contextmanager
def _replica_stopped(master, replica):
    """The replica SIGSTOPped for the block; resumed after it and, when
    the block ended well, caught up with the master (_caught_up)."""
    os.kill(replica.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(replica.proc.pid, signal.SIGCONT)
    _caught_up(master, replica)


def test_asyncio_on_one_server_steps_wait_for_its_replica(replicated):
    """pyqueue.asyncio on a min_replicas URL of one server with a replica:
    each step is followed by WAIT on its connection, as the sync classes';
    with the replica stopped (SIGSTOP) a put is applied but raises
    NotReplicated."""
    import pyqueue.asyncio as aq
    from pyqueue.backends.redis import NotReplicated
    master, replica = replicated

    async def main():
        b = aq.connect(master.url + "?min_replicas=1&wait_timeout=2000")
        q = b.Queue(name="await-replicated")
        for i in range(10):
            await q.put(i)
        assert [await q.get(timeout=5) for _ in range(10)] == list(range(10))
        with _replica_stopped(master, replica):
            with pytest.raises(NotReplicated) as e:
                await q.put("applied")
            assert (e.value.replicas, e.value.wanted) == (0, 1)
        assert await q.get(timeout=5) == "applied"   # it was put all the same
        q.close()

    asyncio.run(main())


def test_a_waiting_get_writes_nothing_at_its_slices_end(replicated, monkeypatch):
    """A sync get waiting past its wait slices on a min_replicas URL, the
    replica stopped: it ends with Empty at its timeout and the count of
    waiting gets is back to 0 (a review: the slice's count update was a
    write whose WAIT failed: NotReplicated from a get that took nothing,
    and the count left one high)."""
    import queue as _queue

    from pyqueue.backends.redis import RedisBackend
    from pyqueue.backends.redis import queue as rq
    master, replica = replicated
    monkeypatch.setattr(rq, "WAIT_SLICE", 0.3)
    import threading
    import time
    b = RedisBackend(master.url + "?min_replicas=1&wait_timeout=2000")
    q = b.Queue(name="wait-slices")
    try:
        got = []

        def get():
            try:
                got.append(q.get(timeout=2.5))
            except BaseException as e:  # (what it ended with)
                got.append(e)

        waiter = threading.Thread(target=get)
        waiter.start()
        end = time.monotonic() + 30
        while int(b.client.hget(q._keys[0], "waiting") or 0) == 0:   # past its first take
            assert time.monotonic() < end, "the get never waited"
            time.sleep(0.01)
        with _replica_stopped(master, replica):
            waiter.join(30)
        assert isinstance(got[0], _queue.Empty), got
        assert int(b.client.hget(q._keys[0], "waiting")) == 0
        q.unlink()
    finally:
        b.close()


@pytest.mark.parametrize("want", [1, 100])   # a script step; a MULTI/EXEC batch
def test_a_get_that_takes_nothing_has_nothing_to_confirm(replicated, want):
    """With the replica stopped, a get that finds the queue empty counts
    itself in "waiting" (a write) but took nothing: Empty at its timeout,
    not NotReplicated (a CI run under load: the replica stopped just
    after the get's first take, whose WAIT then failed). A get that takes
    a message is still confirmed."""
    import queue as _queue

    from pyqueue.backends.redis import NotReplicated, RedisBackend
    master, replica = replicated
    b = RedisBackend(master.url + "?min_replicas=1&wait_timeout=2000")
    plain = RedisBackend(master.url)
    q = b.Queue(name="wait-empty-get")
    try:
        with _replica_stopped(master, replica):
            for block, timeout in ((True, 0.3), (False, None)):
                with pytest.raises(_queue.Empty):
                    q.get_many(want, block=block, timeout=timeout)
            assert int(b.client.hget(q._keys[0], "waiting")) == 0
            other = plain.Queue.open("wait-empty-get")
            other.put("m")
            other.close()
            with pytest.raises(NotReplicated):
                q.get_many(want, timeout=5)
            assert q.qsize() == 0          # (taken: applied by the master)
        q.unlink()
    finally:
        b.close()
        plain.close()


@pytest.mark.parametrize("want", [1, 100])   # a script step; a MULTI/EXEC batch
def test_a_get_woken_by_a_put_is_still_confirmed(replicated, want):
    """A get that waited (in BLPOP, which popped the message: a write) and
    then counts the message in a step that takes nothing more: confirmed
    like any take of a message (a review: only what the step itself
    popped was looked at, and the message came back unconfirmed)."""
    import threading

    from pyqueue.backends.redis import NotReplicated, RedisBackend
    from tests._support import wait_until
    master, replica = replicated
    b = RedisBackend(master.url + "?min_replicas=1&wait_timeout=2000")
    plain = RedisBackend(master.url)
    q = b.Queue(name="wait-woken-get")
    got = []

    def get():
        try:
            got.append(q.get_many(want, timeout=20))
        except BaseException as e:  # (what it ended with)
            got.append(e)

    waiter = threading.Thread(target=get)
    try:
        waiter.start()
        assert wait_until(lambda: int(b.client.hget(q._keys[0], "waiting") or 0) == 1, 30)
        with _replica_stopped(master, replica):
            other = plain.Queue.open("wait-woken-get")
            other.put("m")
            other.close()
            waiter.join(30)
        assert len(got) == 1 and isinstance(got[0], NotReplicated), got
        assert q.qsize() == 0              # (taken: applied by the master)
        q.unlink()
    finally:
        waiter.join(30)
        b.close()
        plain.close()


@pytest.mark.parametrize("kind", ["Queue", "WorkQueue"])
def test_asyncio_get_that_takes_nothing_has_nothing_to_confirm(replicated, kind):
    """pyqueue.asyncio, with the replica stopped: a get that finds the
    queue empty wrote only its handle's lease (and reaps): Empty at its
    timeout, not NotReplicated, as the sync get. A get that takes a
    message is still confirmed."""
    import queue as _queue

    import pyqueue
    import pyqueue.asyncio as aq
    from pyqueue.backends.redis import NotReplicated
    master, replica = replicated
    name = f"await-empty-{kind.lower()}"

    async def main():
        b = aq.connect(master.url + "?min_replicas=1&wait_timeout=2000")
        q = getattr(b, kind)(name=name)
        try:
            await q.put("first")                     # (confirmed: the replica runs)
            got = await q.get(timeout=5)
            if kind == "WorkQueue":
                await got.ack()
            with _replica_stopped(master, replica):
                # (an asyncio WorkQueue's get takes no block: timeout=0)
                for kw in ({"timeout": 0.3}, {"timeout": 0} if kind == "WorkQueue"
                           else {"block": False}):
                    with pytest.raises(_queue.Empty):
                        await q.get(**kw)
                other = getattr(plain, kind).open(name)
                other.put("m")
                other.close()
                with pytest.raises(NotReplicated):
                    await q.get(timeout=5)
            q.sync.unlink()
        finally:
            q.close()

    plain = pyqueue.connect(master.url)
    try:
        asyncio.run(main())
    finally:
        plain.close()


def test_asyncio_lease_renewal_goes_on_when_no_replica_confirms_it(replicated, monkeypatch):
    """A Queue handle's lease renewal under min_replicas whose WAIT times
    out (the replica stopped) was applied: the renewal task goes on (a
    review: NotReplicated ended it, the lease then ran out and another
    handle's reap delivered the message this live handle held again).
    Two renewals applied while the replica is stopped show the task
    lived through the first one's NotReplicated."""
    import time

    import pyqueue
    import pyqueue.asyncio as aq
    from pyqueue.backends.redis import aio
    master, replica = replicated
    monkeypatch.setattr(aio, "LEASE_SECONDS", 1.5)      # a renewal every 0.5 s
    client = pyqueue.connect(master.url).client

    async def main():
        b = aq.connect(master.url + "?min_replicas=1&wait_timeout=100")
        q = b.Queue(name="await-renewed")
        await q.put("held")
        assert await q.get(timeout=5) == "held"
        lease = f"pq:{{{q.name}}}:rsv.lease"
        with _replica_stopped(master, replica):
            for _ in range(2):
                before = client.zscore(lease, q._id)
                end = time.monotonic() + 20
                while client.zscore(lease, q._id) == before:
                    assert time.monotonic() < end, "the lease is no longer renewed"
                    await asyncio.sleep(0.02)   # (the loop runs the renewal meanwhile)
        q.close()
        q.sync.unlink()

    asyncio.run(main())


def test_asyncio_with_replicas_every_step_is_confirmed(redis_cluster):
    """On the cluster (a replica per master), every kind's async steps go
    through with min_replicas=1: each is sent to the node of its slot and
    confirmed there."""
    import asyncio

    import os
    import signal

    import pyqueue.asyncio as aq
    from pyqueue.backends.redis import NotReplicated
    from tests import redis_support
    redis_cluster.wait_replicas_synced()

    async def main():
        b = aq.connect(redis_cluster.url + "?min_replicas=1&wait_timeout=1000")
        q = b.Queue(name="await-confirmed")
        wq = b.WorkQueue(name="await-confirmed-wq")
        t = b.Topic(name="await-confirmed-t")
        log = b.Log(name="await-confirmed-log", partitions=3)
        try:
            for i in range(20):
                await q.put(i)
            assert [await q.get(timeout=5) for _ in range(20)] == list(range(20))
            await wq.put("job")
            d = await wq.get(timeout=5)
            await d.ack()
            assert wq.sync.stats()["acked"] == 1
            sub = t.subscribe("earliest")
            await t.publish("news")
            assert await sub.get(timeout=5) == "news"
            sub.close()
            for i in range(30):
                log.append(i, key=str(i))   # (a plain call: one round trip)
            c = log.consumer("g")
            got = []
            while len(got) < 30:
                got += [r.value for r in await c.poll(timeout=5)]
            assert sorted(got) == list(range(30))
            c.commit()
            c.close()
            # every replica stopped: a step is applied, and not confirmed
            stopped = [p for port, p in zip(redis_cluster.ports, redis_cluster.procs)
                       if "role:slave" in redis_support._cli(
                           "-p", str(port), "info", "replication").stdout]
            assert stopped
            for p in stopped:
                os.kill(p.pid, signal.SIGSTOP)
            try:
                with pytest.raises(NotReplicated):
                    await wq.put("applied")
            finally:
                for p in stopped:
                    os.kill(p.pid, signal.SIGCONT)
            redis_cluster.wait_replicas_synced()
            d = await wq.get(timeout=5)
            assert d.value == "applied"
            await d.ack()
        finally:
            for h in (q, wq, t, log):
                h.close()
                h.sync.unlink()

    asyncio.run(main())
