"""pyqueue.Topic: messages larger than max_message_bytes travel out of band
(pyqueue._oob): one shared-memory segment, "<topic>.oob-<pid>-<hex>", that
every subscriber maps, the ring holding a reference. The segment is
removed by whoever moves the ring's head past the record: the last
subscriber to pass it (a trim), a publisher reclaiming its space (a lossy
topic overwriting it, a lossless one after a dead subscriber's eviction),
and by unlink(). docs/design.md, "Topic: large messages"."""
import os
import queue
import signal

import numpy as np
import pytest

import pyqueue
from pyqueue import _oob, _segment, cli
from pyqueue.errors import UndecodableMessage
from pyqueue.topic import Topic
from tests import _topic_oob_workers as w
from tests._support import interrupt_oob_unlinks, proc_state, wait_until
from tests.test_topic import topics  # noqa: F401 (fixture)

try:
    from pyqueue._core import FAULT_INJECTION
except ImportError:
    FAULT_INJECTION = False

needs_faults = pytest.mark.skipif(
    not FAULT_INJECTION,
    reason="pyqueue was built without fault injection: rebuild with "
    "PYQUEUE_FAULT_INJECTION=1 pip install -e . (as .ci/run does)")

CAP = 1 << 16          # the ring: 64 KiB (max_message_bytes 16 KiB)
N = 1 << 20            # float64: an 8 MiB array, 128 rings' worth
WAIT = 60


def oob_segments(t):
    prefix = _segment.PREFIX + t.name + ".oob-"
    return sorted(f for f in os.listdir(_segment.SHM_DIR) if f.startswith(prefix))


def big(seed=0):
    return np.arange(N, dtype=np.float64) + seed


def test_every_subscriber_process_gets_it_intact_and_the_last_one_frees_it(ctx, procs, topics):
    """Three subscriber processes and a slow one here: each reads the same
    segment (a mapping, no copy through the ring); it stays while the slow
    one has not passed the message, and goes when it has."""
    t = topics(capacity_bytes=CAP)
    slow = t.subscribe()
    ready, out = ctx.Queue(), ctx.Queue()
    for _ in range(3):
        procs.start(ctx, w.read_array, t, ready, out, False)
    for _ in range(3):
        ready.get(timeout=WAIT)
    t.publish(big())
    t.publish("after")
    assert len(oob_segments(t)) == 1
    results = [out.get(timeout=WAIT) for _ in range(3)]
    expected_sum = float(big().sum())
    for total, equal, writable, base in results:
        assert (total, equal, writable) == (expected_sum, True, True)
        assert base == "mmap"  # the segment's mapping: not a copy
    assert procs.join_all() == [0, 0, 0]
    # Every child passed it and closed; the slow subscriber here has not.
    assert len(oob_segments(t)) == 1
    a = slow.get(timeout=WAIT)
    assert np.array_equal(a, big())
    assert oob_segments(t) == []   # the last subscriber to pass it freed it
    a[:] = -1                      # a private mapping: changes nobody else's
    assert slow.get(timeout=WAIT) == "after"


def test_large_bytes_str_custom_and_publish_many(topics):
    t = topics(capacity_bytes=CAP)
    s1, s2 = t.subscribe(), t.subscribe()
    blob, text = os.urandom(5 * CAP), "é" * (3 * CAP)
    t.publish(blob)
    t.publish(bytearray(blob))
    t.publish(text)     # three quarters of the ring: each takes max_message_bytes of it
    first = [blob, blob, text]
    assert [s1.get(timeout=5) for _ in first] == first
    assert len(oob_segments(t)) == 3    # s2 has not read them
    assert s2.get_many(100, timeout=5) == first
    assert oob_segments(t) == []
    assert t.publish_many([b"a", blob, {"k": blob}, "b"]) == 4
    want = [b"a", blob, {"k": blob}, "b"]
    assert [s1.get(timeout=5) for _ in want] == want
    assert len(oob_segments(t)) == 2
    assert s2.get_many(100, timeout=5) == want
    assert oob_segments(t) == []
    c = topics(capacity_bytes=CAP, serializer=(lambda o: o * 2, lambda b: bytes(b[:len(b) // 2])))
    sc = c.subscribe()
    c.publish(blob)
    assert sc.get(timeout=5) == blob
    assert oob_segments(c) == []


def test_lossy_overwrite_frees_it(topics):
    """A lossy topic's publisher overwrites a record nobody read: its
    segment goes with it; the lapped subscriber counts it lost."""
    t = topics(capacity_bytes=CAP, mode="lossy")
    s = t.subscribe()
    t.publish(big())
    assert len(oob_segments(t)) == 1
    for i in range(2 * CAP // 1024):
        t.publish(i.to_bytes(4, "little") * 256)   # 1 KiB each: two rings' worth
    assert oob_segments(t) == []
    got = s.get_many(10000, timeout=5)
    assert got and s.lost >= 1
    assert all(isinstance(x, bytes) and len(x) == 1024 for x in got)


def test_a_publisher_interrupted_before_its_unlink_leaves_the_segment_to_the_next(
        topics, monkeypatch):
    """The claim that passes an out-of-band record reports it and its
    publisher unlinks the segment; a KeyboardInterrupt in that unlink
    (before it happened) leaves the reclaim pending: the next publish, of
    this process or another, is given the segment to unlink again."""
    t = topics(capacity_bytes=CAP, mode="lossy")
    t.publish(big())
    [seg] = oob_segments(t)
    calls = interrupt_oob_unlinks(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        for i in range(2 * CAP // 1024):
            t.publish(i.to_bytes(4, "little") * 256)
    assert len(calls) == 1 and oob_segments(t) == [seg]
    monkeypatch.undo()
    t.publish(b"next")
    assert oob_segments(t) == []


@needs_faults
@pytest.mark.timeout(120)
def test_a_publisher_killed_before_its_unlink_leaves_the_segment_to_the_next(ctx, procs,
                                                                             topics):
    """A publisher SIGKILLed after its claim reported an out-of-band record
    it passed, before it unlinked the segment (fault point
    reclaim_reported): the next publisher unlinks it. Before, the segment
    stayed until `pyqueue gc` - and gc keeps it while the process that
    made it (here the test's own) lives."""
    t = topics(capacity_bytes=CAP, mode="lossy")
    t.publish(big())
    [seg] = oob_segments(t)
    p = procs.start(ctx, w.armed_publish_small, t, "reclaim_reported", 2 * CAP // 1024)
    assert wait_until(lambda: _state(p.pid) == "T", WAIT), "did not stop at its fault point"
    assert oob_segments(t) == [seg]          # reported, not unlinked
    os.kill(p.pid, signal.SIGKILL)
    p.join(WAIT)
    t.publish(b"next")
    assert oob_segments(t) == []
    plan = cli.plan_gc([t.name], oob_grace=0.0)
    assert [e for e in plan if e[0] == "oob"] == []


def test_a_topic_holds_a_few_segments_not_one_per_reference(topics):
    """A large message's reference record takes max_message_bytes of the
    ring (zero padding), so a topic keeps at most capacity //
    max_message_bytes segments: a lossy one with no reader or a lapped
    one overwrites (and frees) them, a lossless one's publisher waits for
    its slow subscriber. (A reference-sized record let thousands of
    segments pile up: /dev/shm full.)"""
    most = CAP // (CAP // 4)
    lossy = topics(capacity_bytes=CAP, mode="lossy")
    lapped = lossy.subscribe()
    for i in range(40):
        lossy.publish(bytes([i]) * (CAP // 4))
        assert len(oob_segments(lossy)) <= most
    assert lapped.get(timeout=5) == bytes([39]) * (CAP // 4) or lapped.lost >= 36
    assert lapped.lost >= 36
    nobody = topics(capacity_bytes=CAP, mode="lossy")
    for i in range(40):
        nobody.publish(bytes([i]) * (CAP // 4))
    assert 0 < len(oob_segments(nobody)) <= most
    lossless = topics(capacity_bytes=CAP)
    slow = lossless.subscribe()
    published = 0
    with pytest.raises(queue.Full):
        for i in range(40):
            lossless.publish(bytes([i]) * (CAP // 4), timeout=0.2)
            published += 1
    assert 0 < published <= most
    assert len(oob_segments(lossless)) == published
    assert [slow.get(timeout=5) for _ in range(published)] == [
        bytes([i]) * (CAP // 4) for i in range(published)]
    assert oob_segments(lossless) == []


def test_a_lapped_lossy_subscriber_does_not_keep_the_segments_another_read(topics):
    """A lossy subscriber lapped (or SIGKILLed: never evicted while slots
    are free) holds nothing back: the segment goes when the subscriber
    that reads goes past it, not when the ring wraps."""
    t = topics(capacity_bytes=CAP, mode="lossy")
    lapped, reader = t.subscribe(), t.subscribe()
    for i in range(2 * CAP // 1024):   # two rings' worth of 1 KiB: lapped is lapped
        t.publish(b"x" * 1000)
        reader.get(timeout=5)
    t.publish(big())
    assert len(oob_segments(t)) == 1
    assert np.array_equal(reader.get(timeout=5), big())
    assert oob_segments(t) == []
    with pytest.raises(queue.Empty):   # jumps to head: everything is read or gone
        lapped.get(timeout=0.1)
    assert lapped.lost >= 1


def test_a_publish_that_fails_leaves_no_segment(topics):
    """A publish (or publish_many) that finds no room in time, or a shut
    down topic, removes the segments of what it did not publish."""
    t = topics(capacity_bytes=CAP)
    s = t.subscribe()
    for _ in range(4):
        t.publish(b"p" * t.max_message_bytes)   # the ring full, s reads nothing
    with pytest.raises(queue.Full):
        t.publish(big(), timeout=0.1)
    with pytest.raises(queue.Full):
        t.publish_many([big(1), big(2), b"small"], timeout=0.1)
    assert oob_segments(t) == []
    assert s.get(timeout=5) == b"p" * t.max_message_bytes
    assert s.get(timeout=5) == b"p" * t.max_message_bytes
    assert t.publish_many([big(1), b"small"], timeout=5) == 2  # room for them now
    assert len(oob_segments(t)) == 1
    t.shutdown()
    with pytest.raises(pyqueue.ShutDown):
        t.publish(big())
    assert len(oob_segments(t)) == 1


def test_publish_many_whose_earlier_batch_fails_frees_the_message_it_holds(topics):
    """publish_many encodes a large message (its segment made) before it
    flushes the batch before it: that flush failing (queue.Full here)
    removes the segment too (it was in no batch: left for the life of the
    publisher)."""
    t = topics(capacity_bytes=CAP)
    s = t.subscribe()
    mx = t.max_message_bytes
    for _ in range(4):
        t.publish(b"p" * mx)   # the ring full, s reads nothing
    for _ in range(3):
        with pytest.raises(queue.Full):
            t.publish_many([b"a" * mx, b"B" * (mx + 100)], timeout=0.05)
        assert oob_segments(t) == []
    assert s.get(timeout=5) == b"p" * mx


def test_lossless_publisher_waits_for_the_slow_subscriber_then_frees_it(topics):
    """Lossless: a publisher never reclaims a record a subscriber has not
    passed, nor frees its segment; the subscriber's get frees it."""
    t = topics(capacity_bytes=CAP)
    s = t.subscribe()
    t.publish(big())
    with pytest.raises(queue.Full):
        for i in range(CAP // 1024):
            t.publish(b"x" * 1000, timeout=0.2)
    assert len(oob_segments(t)) == 1     # not before the subscriber passed it
    assert np.array_equal(s.get(timeout=5), big())
    assert oob_segments(t) == []


def test_a_subscriber_killed_holding_the_mapping_and_one_killed_before_reading(ctx, procs,
                                                                                  topics):
    """One subscriber is SIGKILLed holding the segment mapped (it had read
    the message), another before it read it: the others read it whole; the
    segment stays while the dead unread one holds its slot, and goes when
    a lossless publisher that needs the room evicts it."""
    t = topics(capacity_bytes=CAP)
    mine = t.subscribe()
    ready, out = ctx.Queue(), ctx.Queue()
    holder = procs.start(ctx, w.read_array, t, ready, out, True)
    ready.get(timeout=WAIT)
    idle = procs.start(ctx, w.subscribe_and_hang, t, ready)
    ready.get(timeout=WAIT)
    t.publish(big())
    total, equal, _, _ = out.get(timeout=WAIT)
    assert equal
    for p in (holder, idle):
        os.kill(p.pid, signal.SIGKILL)
        p.join(WAIT)
        assert p.exitcode == -signal.SIGKILL
    assert np.array_equal(mine.get(timeout=5), big())
    assert len(oob_segments(t)) == 1     # the dead unread subscriber still holds it
    for i in range(2 * CAP // 1024):     # needs the room: evicts the dead one
        t.publish(b"y" * 1000, timeout=WAIT)
        assert mine.get(timeout=5) == b"y" * 1000
    assert oob_segments(t) == []
    assert [x["pid"] for x in t._subscribers()] == [os.getpid()]


def test_unlink_removes_every_segment(ctx, procs, topics):
    t = topics(capacity_bytes=CAP)
    t.subscribe()
    t.publish(big(1))
    p = procs.start(ctx, w.publish_array_and_exit, t, N)
    p.join(WAIT)
    assert p.exitcode == 0
    assert len(oob_segments(t)) == 2
    t.unlink()
    assert oob_segments(t) == []


@needs_faults
@pytest.mark.timeout(120)
def test_a_producer_killed_mid_publish_leaves_no_live_reference_and_gc_removes_it(ctx, procs,
                                                                                  topics):
    """A producer SIGKILLed with its record claimed, not committed: the
    subscribers skip the record (repaired) and never map the segment; gc
    removes that segment and one whose producer died before claiming, and
    keeps the segment of a message that waits, its producer dead too."""
    t = topics(capacity_bytes=CAP)
    s = t.subscribe()
    p = procs.start(ctx, w.publish_array_and_exit, t, N)   # committed, then exits
    p.join(WAIT)
    assert p.exitcode == 0
    waiting = set(oob_segments(t))
    assert len(waiting) == 1
    p = procs.start(ctx, w.armed_publish, t, "before_commit", big(2))
    assert wait_until(lambda: len(oob_segments(t)) == 2, WAIT)
    assert wait_until(lambda: _state(p.pid) == "T", WAIT), "did not stop at its fault point"
    stuck = set(oob_segments(t)) - waiting
    # Stopped, alive: its segment is not gc's.
    plan = cli.plan_gc([t.name], oob_grace=0.0)
    assert [e for e in plan if e[0] == "oob"] == []
    os.kill(p.pid, signal.SIGKILL)
    p.join(WAIT)
    o = procs.start(ctx, w.make_orphan_and_exit, t)
    o.join(WAIT)
    assert o.exitcode == 0
    orphan = set(oob_segments(t)) - waiting - stuck
    assert len(orphan) == 1
    t.publish("after")
    assert np.array_equal(s.get(timeout=WAIT), big())
    assert s.get(timeout=WAIT) == "after"   # the dead producer's record skipped
    assert oob_segments(t) == sorted(stuck | orphan)   # the waiting one was read: freed
    t.publish(big(3))                       # a live one, waiting
    live = set(oob_segments(t)) - stuck - orphan
    plan = cli.plan_gc([t.name], oob_grace=0.0)
    assert sorted(e[1] for e in plan if e[0] == "oob") == sorted(stuck | orphan)
    rc = cli.main(["gc", t.name, "--oob-grace", "0"])
    assert rc == 0
    assert set(oob_segments(t)) == live
    assert np.array_equal(s.get(timeout=WAIT), big(3))
    assert oob_segments(t) == []


_state = proc_state


def test_a_segment_removed_by_hand_is_that_message_s_error_alone(topics):
    t = topics(capacity_bytes=CAP)
    s = t.subscribe()
    t.publish(big())
    t.publish("next")
    (seg,) = oob_segments(t)
    os.unlink(os.path.join(_segment.SHM_DIR, seg))
    with pytest.raises(UndecodableMessage, match="removed before it was read"):
        s.get(timeout=5)
    assert s.get(timeout=5) == "next"


def test_max_message_bytes_is_the_ring_limit_and_above_it_goes_out_of_band(topics):
    t = topics(capacity_bytes=CAP)
    s = t.subscribe()
    limit = t.max_message_bytes
    assert limit == CAP // 4 - 16
    t.publish(b"q" * limit)          # in the ring
    assert oob_segments(t) == []
    t.publish(b"q" * (limit + 1))    # out of band
    assert len(oob_segments(t)) == 1
    assert s.get(timeout=5) == b"q" * limit
    assert s.get(timeout=5) == b"q" * (limit + 1)
    assert oob_segments(t) == []


def test_the_segment_is_mapped_before_the_cursor_passes_its_record(topics, monkeypatch):
    """Once the cursor is past the record, the last other subscriber's get
    may unlink the segment: a subscriber maps it first (the real mapping
    function, observed: the subscription's lag when it runs)."""
    t = topics(capacity_bytes=CAP)
    s, other = t.subscribe(), t.subscribe()
    t.publish(big())
    seen = []
    real = _oob.read

    def read(topic, ref):
        seen.append(s.lag)
        return real(topic, ref)

    monkeypatch.setattr(_oob, "read", read)
    assert np.array_equal(s.get(timeout=5), big())
    assert seen == [1]          # mapped while the message was still ahead of the cursor
    assert len(oob_segments(t)) == 1
    assert np.array_equal(other.get(timeout=5), big())
    assert oob_segments(t) == []
