"""pyqueue.Topic: fan-out, start positions, lossless backpressure, dead
subscriber eviction, lossy lapping, pickling, and a model test."""
import os
import pickle
import queue
import signal
import time

import pytest
from hypothesis import given, settings, strategies as st

import pyqueue
from pyqueue import Topic
from tests import _topic_workers as w
from tests._support import close_handles

SMALL = 64 * 1024  # the smallest ring: a 16-byte payload takes 32 bytes


@pytest.fixture
def topics():
    made = []

    def make(*args, **kwargs):
        t = Topic(*args, **kwargs)
        made.append(t)
        return t

    yield make
    close_handles(made)


def test_fanout_every_subscriber_every_message_in_order(ctx, procs, topics):
    t = topics(capacity_bytes=SMALL)
    ready, out = ctx.Queue(), ctx.Queue()
    n_pub, n_msgs, n_subs = 2, 300, 3
    for _ in range(n_subs):
        procs.start(ctx, w.subscriber, t, ready, out, n_pub * n_msgs)
    for _ in range(n_subs):
        ready.get(timeout=30)
    for p in range(n_pub):
        procs.start(ctx, w.publisher, t, p, n_msgs)
    results = [out.get(timeout=30) for _ in range(n_subs)]
    assert procs.join_all() == [0] * (n_subs + n_pub)
    for got in results:
        assert sorted(got) == sorted((p, i) for p in range(n_pub) for i in range(n_msgs))
        for p in range(n_pub):
            assert [i for q, i in got if q == p] == list(range(n_msgs))
    assert t.stats()["subscribers"] == 0


def test_latest_and_earliest(topics):
    t = topics(capacity_bytes=SMALL)
    t.publish_many(["a", "b"])
    late, early = t.subscribe("latest"), t.subscribe("earliest")
    t.publish("c")
    assert late.get(timeout=1) == "c"
    assert early.get_many(10, timeout=1) == ["a", "b", "c"]
    with pytest.raises(queue.Empty):
        late.get(block=False)
    with pytest.raises(queue.Empty):
        early.get(timeout=0.01)
    with pytest.raises(ValueError):
        t.subscribe("middle")


def test_lossless_backpressure_then_drain(topics):
    t = topics(capacity_bytes=SMALL)
    sub = t.subscribe()
    n = 0
    with pytest.raises(queue.Full):
        while True:
            t.publish(b"x" * 16, timeout=0.05)
            n += 1
    assert n == SMALL // 32
    assert sub.lag == n
    with pytest.raises(queue.Full):
        t.publish(b"y", block=False)
    assert sub.get_many(n + 10, timeout=1) == [b"x" * 16] * n
    assert sub.lag == 0
    t.publish(b"y", timeout=1)
    assert sub.get(timeout=1) == b"y"
    assert sub.lost == 0


def test_no_subscribers_never_blocks(topics):
    t = topics(capacity_bytes=SMALL)
    t.publish_many(range(10000))
    assert t.stats()["published"] == 10000


def test_killed_subscriber_is_evicted(ctx, procs, topics):
    t = topics(capacity_bytes=SMALL)
    ready = ctx.Queue()
    p = procs.start(ctx, w.stuck_subscriber, t, ready)
    pid = ready.get(timeout=30)
    with pytest.raises(queue.Full):
        for _ in range(SMALL):
            t.publish(b"z" * 16, timeout=0.05)
    assert t.stats()["subscribers"] == 1
    os.kill(pid, signal.SIGKILL)
    p.join(10)
    start = time.monotonic()
    for i in range(SMALL // 32):
        t.publish(i, timeout=5)
    assert time.monotonic() - start < 5
    assert t.stats()["subscribers"] == 0


def test_lossy_lapped_subscriber_counts_lost(topics):
    t = topics(capacity_bytes=SMALL, mode="lossy")
    assert t.mode == "lossy"
    sub = t.subscribe()
    fits = SMALL // 32
    total = fits * 3 + 7
    for i in range(total):
        t.publish(b"%015d" % i, block=False)  # 15 bytes: one 32-byte record
    first = sub.get(timeout=1)
    assert sub.lost == total - fits
    assert first == b"%015d" % (total - fits)
    rest = sub.get_many(total, timeout=1)
    assert rest == [b"%015d" % i for i in range(total - fits + 1, total)]
    assert sub.lag == 0


def test_lag_and_close(topics):
    t = topics(capacity_bytes=SMALL)
    sub = t.subscribe()
    t.publish_many([1, 2, 3])
    assert sub.lag == 3
    sub.get()
    assert sub.lag == 2
    assert t.stats()["subscribers"] == 1
    sub.close()
    assert t.stats()["subscribers"] == 0
    with pytest.raises(ValueError):
        sub.get()
    # A closed subscription no longer holds back a lossless publisher.
    t.publish_many(range(5000))


def test_subscription_is_per_process(topics):
    t = topics(capacity_bytes=SMALL)
    sub = t.subscribe()
    with pytest.raises(TypeError):
        pickle.dumps(sub)
    sub.close()


def test_pickle_topic_into_spawned_child(spawn_ctx, procs, topics):
    t = topics(name=f"topic-{os.getpid()}-{time.monotonic_ns()}", capacity_bytes=SMALL)
    t.publish_many(["one", b"two", {"three": 3}])
    out = spawn_ctx.Queue()
    procs.start(spawn_ctx, w.child_reads_pickled, t, out)
    assert out.get(timeout=30) == ["one", b"two", {"three": 3}]
    assert procs.join_all() == [0]
    again = pickle.loads(pickle.dumps(t))
    assert again.name == t.name
    again.close()


def test_open_by_name_and_errors(topics):
    name = f"topic-{os.getpid()}-{time.monotonic_ns()}"
    t = topics(name=name, capacity_bytes=SMALL)
    other = Topic.open(name)
    sub = t.subscribe()
    other.publish("hi")
    assert sub.get(timeout=1) == "hi"
    other.close()
    t.publish(b"x" * SMALL)  # larger than the ring: out of band (tests/test_topic_oob.py)
    assert sub.get(timeout=10) == b"x" * SMALL
    with pytest.raises(pyqueue.SegmentNotFound):
        Topic.open(name + "-missing")
    with pytest.raises(ValueError):
        Topic(mode="bogus")


def test_custom_serializer(topics):
    t = topics(capacity_bytes=SMALL, serializer=(lambda o: repr(o).encode(), lambda b: b.decode()))
    sub = t.subscribe()
    t.publish([1, 2])
    assert sub.get(timeout=1) == "[1, 2]"


@settings(max_examples=40, deadline=None)
@given(mode=st.sampled_from(["lossless", "lossy"]),
       ops=st.lists(st.tuples(st.sampled_from(["pub", "get", "sub", "close"]),
                              st.integers(0, 3), st.integers(0, 3000)), max_size=80))
def test_model(mode, ops):
    """The topic as a list, each subscriber a cursor into it."""
    t = Topic(capacity_bytes=SMALL, mode=mode)
    try:
        log = []                      # every message published
        subs = []                     # [subscription, cursor, lost]
        for op, k, size in ops:
            if op == "pub":
                msg = b"m%d." % len(log) + b"x" * size
                live = [s for s in subs if s[0] is not None]
                try:
                    t.publish(msg, block=False)
                except queue.Full:
                    assert mode == "lossless" and live
                    continue
                log.append(msg)
            elif op == "sub" and len(subs) < 4:
                subs.append([t.subscribe(), len(log), 0])
            elif op == "close" and subs:
                s = subs[k % len(subs)]
                if s[0] is not None:
                    s[0].close()
                    s[0] = None
            elif op == "get" and subs:
                s = subs[k % len(subs)]
                if s[0] is None:
                    continue
                try:
                    got = s[0].get(block=False)
                except queue.Empty:
                    assert s[1] == len(log) or mode == "lossy" and s[0].lost > s[2]
                    continue
                if mode == "lossless":
                    assert got == log[s[1]]
                    s[1] += 1
                else:
                    idx = log.index(got)
                    assert idx >= s[1]
                    assert s[0].lost == s[2] + (idx - s[1])
                    s[1], s[2] = idx + 1, s[0].lost
                assert s[0].lag == len(log) - s[1]
        for s in subs:
            if s[0] is not None:
                s[0].close()
    finally:
        t.close()
        t.unlink()


# -- issue 9, item 17 -----------------------------------------------------------------

def test_subscribe_reclaims_slots_of_sigkilled_subscribers(ctx, procs, topics):
    """Every one of the 64 slots held by subscriber processes that were
    SIGKILLed (so never closed): subscribe() frees the dead ones' slots
    (pid + start time) and gets one. Slots of live subscribers are kept."""
    t = topics(capacity_bytes=SMALL)
    ready = ctx.Queue()
    dead = [procs.start(ctx, w.hoard_subscriptions, t, n, ready) for n in (40, 24)]
    assert sorted(ready.get(timeout=30) for _ in dead) == [24, 40]
    assert t.stats()["subscribers"] == 64
    for p in dead:
        os.kill(p.pid, signal.SIGKILL)
        p.join(30)
        assert p.exitcode == -signal.SIGKILL
    mine = [t.subscribe() for _ in range(63)]            # 64 dead slots: reclaimed
    # A fresh queue: `ready`'s writer lock may have died with a SIGKILLed
    # hoarder (multiprocessing.Queue's feeder releases it after the parent
    # already has the item).
    ready_live = ctx.Queue()
    live = procs.start(ctx, w.hoard_subscriptions, t, 1, ready_live)
    assert ready_live.get(timeout=30) == 1               # a live one holds the last
    with pytest.raises(pyqueue.PyQueueError, match="held by live subscribers"):
        t.subscribe()
    t.publish("to all")
    assert all(s.get(timeout=5) == "to all" for s in mine)
    mine.pop().close()
    s = t.subscribe()                                    # a closed slot is free again
    live.kill()
    live.join(30)
    s2 = t.subscribe()                                   # and so is the dead one's
    for x in mine + [s, s2]:
        x.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a segment to another user")
def test_topic_trust_owner(topics):
    """A topic of another user is refused unless trust_owner=True, which the
    error message names, and which Topic(), Topic.open() and a pickled
    Topic carry."""
    t = topics(capacity_bytes=SMALL)
    os.chown("/dev/shm/pyqueue." + t.name, 65534, 65534)
    for refused in (lambda: Topic(t.name), lambda: Topic.open(t.name),
                    lambda: pickle.loads(pickle.dumps(t))):
        with pytest.raises(pyqueue.SegmentNotOwned, match="trust_owner=True"):
            refused()
    t2 = Topic(t.name, trust_owner=True)
    t3 = Topic.open(t.name, trust_owner=True)
    t4 = pickle.loads(pickle.dumps(t3))
    sub = t4.subscribe()
    t2.publish("shared on purpose")
    assert sub.get(timeout=5) == "shared on purpose"
    sub.close()
    for x in (t2, t3, t4):
        x.close()


def test_get_many_returns_what_it_took_before_a_damaged_record(topics):
    # get_many reads a full first batch (256 records), then reads again and
    # meets a damaged record: the 256 it read (the subscription's cursor is
    # past them) are returned, and the next call raises.
    import mmap as _mmap
    import struct as _struct
    from tests import cffi_core
    lib = cffi_core.require().lib
    t = topics(capacity_bytes=SMALL, mode="lossless")
    sub = t.subscribe()
    good = [b"m%03d" % i for i in range(256)]
    for m in good:
        t.publish(m)
    marker = b"DAMAGED-RECORD-MARKER"
    t.publish(marker)
    with open("/dev/shm/pyqueue." + t.name, "r+b") as f, _mmap.mmap(f.fileno(), 0) as mm:
        off = mm.find(marker) - lib.PQ_RECORD_HEADER
        ctl = _struct.unpack_from("<Q", mm, off)[0]
        shift = lib.PQ_CTL_STATE_SHIFT
        _struct.pack_into("<Q", mm, off, (ctl & ~(0xFF << shift)) | (9 << shift))
    assert sub.get_many(1000, block=False) == good
    with pytest.raises(pyqueue.SegmentMismatch):
        sub.get_many(1000, block=False)
    sub.close()
