"""Crash safety with real SIGKILLs: a process killed anywhere never wedges
or corrupts a queue (docs/design.md, "Crash recovery").

The tests that need a process killed at an exact point inside the core use
fault injection (csrc/pq_fault.h, a build with PYQUEUE_FAULT_INJECTION=1,
which .ci/run makes): the child sets PYQUEUE_FAULT=<point>, stops itself
with SIGSTOP there, the test sees it stopped (/proc/PID/stat state 'T')
and SIGKILLs it. The soak at the end kills at random instants and needs no
fault build.
"""

import collections
import os
import queue
import random
import signal
import threading
import time

import pytest

from tests import _crash_workers as W
from tests._support import drain, proc_state, wait_until

try:
    from pyqueue._core import FAULT_INJECTION, FAULT_POINTS
except ImportError:  # not built: the fixtures skip every test anyway
    FAULT_INJECTION, FAULT_POINTS = False, ()

needs_faults = pytest.mark.skipif(
    not FAULT_INJECTION,
    reason="pyqueue._core was built without fault injection: rebuild with "
    "PYQUEUE_FAULT_INJECTION=1 pip install -e . (as .ci/run does)",
)

RING = 65536
WAIT = 30.0
REPAIR_BOUND = 2.0  # "well before the consumer's timeout (WAIT)", not the 100 ms slice


def wait_stopped(p, timeout=WAIT):
    """Wait (with a deadline) until p stopped itself at its fault point."""
    wait_until(lambda: p.exitcode is not None or proc_state(p.pid) == "T", timeout)
    assert proc_state(p.pid) == "T", (
        "process did not stop at its fault point (exit code %r)" % (p.exitcode,))


def kill_stopped(p):
    os.kill(p.pid, signal.SIGKILL)
    p.join(WAIT)
    assert p.exitcode == -signal.SIGKILL


def start_stopped(procs, ctx, target, *args):
    p = procs.start(ctx, target, *args)
    wait_stopped(p)
    return p


def timed_get(q, timeout):
    t0 = time.monotonic()
    try:
        return q.get(timeout=timeout), time.monotonic() - t0
    except queue.Empty:
        return queue.Empty, time.monotonic() - t0



def test_fault_points_exposed():
    pytest.importorskip("pyqueue._core")
    assert isinstance(FAULT_INJECTION, bool)
    assert set(FAULT_POINTS) == {"after_claim", "mid_copy", "before_commit", "after_peek",
                                 "after_consume", "parked", "in_claim_lock", "in_grow", "roll_begin", "mid_roll",
                                 "in_lock", "mid_head_move", "reclaim_reported",
                                 "head_move_announced", "trim_cleared",
                                 "trim_emptied", "peek_loaded_head"}


# -- producers -----------------------------------------------------------------

PRODUCER_POINTS = ["after_claim", "mid_copy", "before_commit", "in_claim_lock"]
VICTIM = b"V" * 1000


@needs_faults
@pytest.mark.timeout(60)
@pytest.mark.parametrize("point", PRODUCER_POINTS)
def test_producer_killed(ctx, procs, make_queue, point):
    q = make_queue.Queue(capacity_bytes=RING)
    before = [b"before-%d" % i for i in range(3)]
    q.put_many(before)
    p = start_stopped(procs, ctx, W.armed_put, q, point, [VICTIM, b"never"])
    assert [q.get(timeout=WAIT) for _ in before] == before
    # The stopped producer's record (when published) blocks the head, and a
    # live (even stopped) producer is never repaired: a blocked get times
    # out as asked.
    got, took = timed_get(q, 0.3)
    assert got is queue.Empty
    assert 0.3 <= took < 0.3 + REPAIR_BOUND
    published = point != "in_claim_lock"
    expect = [b"after-1"]
    if published:
        q.put(b"after-0")  # behind the stopped producer's record
        expect.insert(0, b"after-0")
    # (in_claim_lock: the stopped producer holds the claim lock, so this
    # process must not put before the kill: it would wait with the GIL.)
    kill_stopped(p)
    q.put(b"after-1")  # in_claim_lock: takes over the lock (EOWNERDEAD)
    # After the kill a blocked get passes the dead record within a slice.
    for m in expect:
        item, took = timed_get(q, REPAIR_BOUND)
        assert item == m, "got %r, expected %r" % (item, m)
        assert took < REPAIR_BOUND
    assert drain(q) == []  # never the half-written message, nor b"never"
    s = q.stats()
    assert s["abandoned"] == (1 if published else 0)
    assert s["depth"] == 0 and q.qsize() == 0
    assert s["enqueued"] == s["dequeued"] == len(before) + len(expect)
    # And the queue goes on working.
    q.put_many([b"x", b"y"])
    assert q.get_many(timeout=WAIT) == [b"x", b"y"]


@needs_faults
@pytest.mark.timeout(60)
@pytest.mark.parametrize("point", ["after_claim", "mid_copy", "before_commit"])
def test_producer_killed_in_batch(ctx, procs, make_queue, point):
    """put_many claims a batch at once: killed before it commits the first
    record, the whole batch is abandoned, record by record."""
    q = make_queue.Queue(capacity_bytes=RING)
    q.put(b"before")
    p = start_stopped(procs, ctx, W.armed_put_many, q, point, [b"a" * 100, b"b" * 200, b"c" * 300])
    q.put(b"after")
    kill_stopped(p)
    assert q.get(timeout=WAIT) == b"before"
    item, took = timed_get(q, REPAIR_BOUND)
    assert item == b"after" and took < REPAIR_BOUND
    assert drain(q) == []
    assert q.stats()["abandoned"] == 3
    assert q.qsize() == 0


@needs_faults
@pytest.mark.timeout(60)
def test_producer_killed_mid_copy_of_pickled_object(ctx, procs, make_queue):
    """The multi-part copy (pickle protocol 5 buffers) splits at half of the
    whole payload; the half-written object is never unpickled."""
    q = make_queue.Queue(capacity_bytes=RING)
    victim = {"k": list(range(500)), "s": "x" * 2000}
    p = start_stopped(procs, ctx, W.armed_put, q, "mid_copy", [victim])
    q.put(("after", 1))
    kill_stopped(p)
    item, took = timed_get(q, REPAIR_BOUND)
    assert item == ("after", 1) and took < REPAIR_BOUND
    assert q.stats()["abandoned"] == 1


@needs_faults
@pytest.mark.timeout(60)
def test_non_blocking_consumer_passes_dead_record(ctx, procs, make_queue):
    """A consumer that only polls with get_nowait() also gets past a dead
    producer's record (it checks the producer once the same record has been
    in progress for a slice), not only a blocked get."""
    q = make_queue.Queue(capacity_bytes=RING)
    p = start_stopped(procs, ctx, W.armed_put, q, "after_claim", [VICTIM])
    q.put(b"after")
    kill_stopped(p)
    got = []

    def poll():
        try:
            got.append(q.get_nowait())
        except queue.Empty:
            return False
        return True

    assert wait_until(poll, REPAIR_BOUND, interval=0.01), q.stats()
    assert got == [b"after"]
    assert q.stats()["abandoned"] == 1
    # The same for get_many(block=False).
    p2 = start_stopped(procs, ctx, W.armed_put, q, "after_claim", [VICTIM])
    q.put(b"after-2")
    kill_stopped(p2)

    def poll_many():
        try:
            got.extend(q.get_many(block=False))
        except queue.Empty:
            return False
        return True

    assert wait_until(poll_many, REPAIR_BOUND, interval=0.01), q.stats()
    assert got == [b"after", b"after-2"]
    assert q.stats()["abandoned"] == 2


# -- consumers -----------------------------------------------------------------

@needs_faults
@pytest.mark.timeout(60)
def test_consumer_killed_after_peek_loses_nothing(ctx, procs, make_queue):
    q = make_queue.Queue(capacity_bytes=RING)
    msgs = [b"m-%d" % i for i in range(3)]
    q.put_many(msgs)
    p = start_stopped(procs, ctx, W.armed_get, q, "after_peek")
    kill_stopped(p)
    # It had copied m-0 out but not taken it: another consumer gets it.
    assert q.qsize() == 3
    assert [q.get(timeout=WAIT) for _ in msgs] == msgs
    assert drain(q) == []
    s = q.stats()
    assert s["depth"] == 0 and s["dequeued"] == 3
    assert s["abandoned"] == s["abandoned_by_consumers"] == 0  # it took nothing


@needs_faults
@pytest.mark.timeout(60)
def test_consumer_killed_after_consume_loses_exactly_that_one(ctx, procs, make_queue):
    # maxsize: the message count must go with head (a count left behind by
    # a killed consumer would make the queue "full" for good).
    q = make_queue.Queue(3, capacity_bytes=RING)
    msgs = [b"m-%d" % i for i in range(3)]
    q.put_many(msgs)
    p = start_stopped(procs, ctx, W.armed_get, q, "after_consume")
    kill_stopped(p)
    assert q.qsize() == 2
    got = [q.get(timeout=WAIT) for _ in range(2)]
    assert got == msgs[1:], "exactly m-0 (taken by the dead consumer) is missing"
    assert drain(q) == []
    assert q.qsize() == 0
    # The whole maxsize is still usable.
    for i in range(3):
        q.put_nowait(i)
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    assert [q.get(timeout=WAIT) for _ in range(3)] == [0, 1, 2]
    s = q.stats()
    # ... and the message it died with is counted as abandoned (once).
    assert s["abandoned"] == s["abandoned_by_consumers"] == 1
    assert s["depth"] == 0 and s["enqueued"] == 6 and s["dequeued"] == 5
    assert q.stats()["abandoned"] == 1


@needs_faults
@pytest.mark.timeout(60)
def test_consumer_killed_after_consume_maxsize_one(ctx, procs, make_queue):
    q = make_queue.Queue(1, capacity_bytes=RING)
    q.put(b"taken")
    p = start_stopped(procs, ctx, W.armed_get, q, "after_consume")
    kill_stopped(p)
    assert q.qsize() == 0
    q.put(b"next", timeout=REPAIR_BOUND)
    assert q.get(timeout=WAIT) == b"next"
    s = q.stats()
    assert s["abandoned"] == s["abandoned_by_consumers"] == 1
    assert s["enqueued"] == 2 and s["dequeued"] == 1


@needs_faults
@pytest.mark.timeout(60)
def test_consumer_killed_in_get_many_loses_that_batch(ctx, procs, make_queue):
    q = make_queue.Queue(capacity_bytes=RING)
    q.put_many([b"b-%d" % i for i in range(5)])
    p = start_stopped(procs, ctx, W.armed_get_many, q, "after_consume")
    kill_stopped(p)
    assert q.qsize() == 0
    s = q.stats()
    assert s["abandoned"] == s["abandoned_by_consumers"] == 5
    assert s["enqueued"] == 5 and s["dequeued"] == 0


@needs_faults
@pytest.mark.timeout(60)
def test_consumer_killed_between_get_many_batches(ctx, procs, make_queue):
    """get_many takes up to 256 records per CAS: killed after the second
    CAS of one call, it dies holding both batches (none was returned)."""
    q = make_queue.Queue(capacity_bytes=RING)
    q.put_many([b"%d" % i for i in range(300)])
    q.put(b"left")
    p = start_stopped(procs, ctx, W.armed_get_many, q, "after_consume:2", 300)
    kill_stopped(p)
    assert q.get(timeout=WAIT) == b"left"
    s = q.stats()
    assert s["abandoned"] == s["abandoned_by_consumers"] == 300
    assert s["enqueued"] == 301 and s["dequeued"] == 1 and s["depth"] == 0


@pytest.mark.timeout(60)
def test_consumer_killed_while_unpickling(ctx, procs, make_queue):
    """After the CAS, a pickled message is built (unpickled) before get()
    returns: a consumer killed there dies holding it."""
    q = make_queue.Queue(capacity_bytes=RING)
    q.put(W.StopOnLoad())
    q.put(b"next")
    p = start_stopped(procs, ctx, W.get_stop_on_load, q)
    assert q.stats()["abandoned"] == 0  # alive (stopped): not counted
    kill_stopped(p)
    assert q.get(timeout=WAIT) == b"next"
    s = q.stats()
    assert s["abandoned"] == s["abandoned_by_consumers"] == 1
    assert s["enqueued"] == 2 and s["dequeued"] == 1


@pytest.mark.timeout(60)
def test_consumer_killed_after_get_returned(ctx, procs, make_queue):
    """get() returned the message: the consumer holds nothing of the
    queue's any more, and its death counts nothing."""
    q = make_queue.Queue(capacity_bytes=RING)
    q.put_many([b"m-0", b"m-1"])
    p = start_stopped(procs, ctx, W.get_then_stop, q)
    kill_stopped(p)
    assert q.get(timeout=WAIT) == b"m-1"
    s = q.stats()
    assert s["abandoned"] == 0
    assert s["enqueued"] == s["dequeued"] == 2


# -- parked --------------------------------------------------------------------

@needs_faults
@pytest.mark.timeout(60)
def test_killed_while_parked_in_get(ctx, procs, make_queue):
    q = make_queue.Queue(capacity_bytes=RING)
    p = start_stopped(procs, ctx, W.armed_get, q, "parked")
    assert q.stats()["waiting_consumers"] == 1
    kill_stopped(p)
    assert q.stats()["waiting_consumers"] == 1  # left one high: harmless
    # Timeouts are honoured ...
    got, took = timed_get(q, 0.2)
    assert got is queue.Empty and 0.2 <= took < 0.2 + REPAIR_BOUND
    # ... puts and gets work ...
    q.put(b"a")
    assert q.get(timeout=WAIT) == b"a"
    # ... and a live parked consumer is still woken by a put.
    result = []
    t = threading.Thread(target=lambda: result.append(timed_get(q, WAIT)))
    t.start()
    try:
        assert wait_until(lambda: q.stats()["waiting_consumers"] >= 2, WAIT)
        q.put(b"wake")
    finally:
        t.join(WAIT)
    (item, took), = result
    assert item == b"wake" and took < WAIT / 2


@needs_faults
@pytest.mark.timeout(60)
def test_killed_while_parked_in_put(ctx, procs, make_queue):
    q = make_queue.Queue(1, capacity_bytes=RING)
    q.put(b"full")
    p = start_stopped(procs, ctx, W.armed_put, q, "parked", [b"never"])
    assert q.stats()["waiting_producers"] == 1
    kill_stopped(p)
    assert q.stats()["waiting_producers"] == 1
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        q.put(b"x", timeout=0.2)
    assert 0.2 <= time.monotonic() - t0 < 0.2 + REPAIR_BOUND
    assert q.get(timeout=WAIT) == b"full"
    q.put_nowait(b"b")
    # A live producer parked on the full queue is woken by a get.
    done = []
    t = threading.Thread(target=lambda: done.append(q.put(b"c", timeout=WAIT)))
    t.start()
    try:
        assert wait_until(lambda: q.stats()["waiting_producers"] >= 2, WAIT)
        assert q.get(timeout=WAIT) == b"b"
    finally:
        t.join(WAIT)
    assert done == [None]
    assert q.get(timeout=WAIT) == b"c"
    assert q.qsize() == 0


# -- repair latency --------------------------------------------------------------

def measure_repair_latency(ctx, procs, q):
    """Stop a producer right after its claim, put one message behind its
    record, block a consumer (a thread here) on the queue, SIGKILL the
    producer; return seconds from the kill to the consumer's receipt.
    (bench/repair_latency.py does the same at random phases of the park
    slice; here the kill comes just after the consumer parked: the worst
    case, about one slice.)"""
    p = start_stopped(procs, ctx, W.armed_put, q, "after_claim", [VICTIM])
    q.put(b"next")
    received = []
    t = threading.Thread(target=lambda: received.append((q.get(timeout=WAIT), time.monotonic())))
    t.start()
    try:
        assert wait_until(lambda: q.stats()["waiting_consumers"] >= 1, WAIT)
        killed = time.monotonic()
        os.kill(p.pid, signal.SIGKILL)
    finally:
        t.join(WAIT)
        p.join(WAIT)
    (item, at), = received
    assert item == b"next"
    return at - killed


@needs_faults
@pytest.mark.timeout(60)
def test_repair_latency(ctx, procs, make_queue, record_property):
    """A consumer blocked in get(timeout=30 s) behind a SIGKILLed producer's
    record gets the next message by the repair, not by its timeout: within
    REPAIR_BOUND (2 s, fifteen times less than its timeout, and twenty
    slices: room for a loaded 2-core CI machine), three times, each record
    counted as abandoned.  What is asserted is that the repair comes from
    the consumer's own wait slices; the latency itself (about one 100 ms
    slice) is a measurement, `python -m bench.repair_latency`
    (docs/guarantees.md).  The samples are recorded, not asserted."""
    q = make_queue.Queue(capacity_bytes=RING)
    samples = [measure_repair_latency(ctx, procs, q) for _ in range(3)]
    record_property("repair_latency_s", samples)
    assert max(samples) < REPAIR_BOUND < WAIT
    assert q.stats()["abandoned"] == 3
    assert q.qsize() == 0


# -- soak ------------------------------------------------------------------------

# Seconds per start method (CI runs 15 s under fork and 15 s under spawn);
# PYQUEUE_SOAK_SECONDS=600 for a long soak.
SOAK_SECONDS = float(os.environ.get("PYQUEUE_SOAK_SECONDS", "15"))
SOAK_MIN_MESSAGES = 1000


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 120)
def test_soak_random_kills(ctx, procs, make_queue, record_property):
    """2 producers and 2 consumers, one of them SIGKILLed every 200-400 ms
    (and replaced, with the start method under test) for
    PYQUEUE_SOAK_SECONDS: no duplicate, no corrupt message, nothing that
    was not at least started, every message whose put() returned delivered
    except at most one per consumer kill (and at most one counted as
    abandoned per consumer kill), per producer FIFO, and a queue that still
    works. Random instants, no fault injection.  How much work it did is
    asserted only as kills of both kinds and at least SOAK_MIN_MESSAGES
    messages fully put and checked; the counts are recorded ("soak")."""
    np = pytest.importorskip("numpy")
    rng = random.Random(os.environ.get("PYQUEUE_SOAK_SEED", "pyqueue"))
    q = make_queue.Queue(64, capacity_bytes=4 * RING)
    # Sequence space per producer slot (a byte per message per consumer
    # slot: 4 * cap bytes in all). A producer that fills it idles.
    cap = int(300_000 * max(SOAK_SECONDS, 1)) + 1_000_000
    started = ctx.RawArray("q", [-1, -1])
    done = ctx.RawArray("q", [-1, -1])
    stop = ctx.RawValue("b", 0)
    errors = ctx.RawArray("q", 2)
    counts = [ctx.RawArray("B", 2 * cap) for _ in range(2)]
    in_flight = []  # (slot, first, last): started, maybe not put, at a kill

    def start(i):
        if i < 2:
            return procs.start(ctx, W.soak_producer, q, i, cap, started, done, stop)
        return procs.start(ctx, W.soak_consumer, q, cap, counts[i - 2], errors)

    workers = [start(i) for i in range(4)]
    kills = collections.Counter()
    ticker = threading.Event()
    end = time.monotonic() + SOAK_SECONDS
    while time.monotonic() < end:
        ticker.wait(rng.uniform(0.2, 0.4))  # the kill interval, not a settle
        i = rng.randrange(4)
        p = workers[i]
        assert p.exitcode is None, "worker %d exited by itself with %r" % (i, p.exitcode)
        p.kill()
        p.join(WAIT)
        assert p.exitcode == -signal.SIGKILL
        if i < 2:
            kills["producer"] += 1
            if started[i] > done[i]:
                in_flight.append((i, done[i] + 1, started[i]))
        else:
            kills["consumer"] += 1
        workers[i] = start(i)

    # Stop: producers first (cleanly), then one sentinel per consumer.
    stop.value = 1
    for p in workers[:2]:
        p.join(WAIT)
        assert p.exitcode == 0, "producer exit code %r" % p.exitcode
    q.put_many([None, None], timeout=WAIT)
    for p in workers[2:]:
        p.join(WAIT)
        assert p.exitcode == 0, "consumer exit code %r" % p.exitcode
    assert drain(q) == [], "messages left after the consumers' sentinels"

    assert errors[0] == 0, "%d corrupt messages received" % errors[0]
    assert errors[1] == 0, "per-producer order broken %d times" % errors[1]
    total = np.frombuffer(counts[0], dtype=np.uint8).astype(np.int32)
    total += np.frombuffer(counts[1], dtype=np.uint8)
    total = total.reshape(2, cap)
    dup = np.argwhere(total > 1)
    assert len(dup) == 0, "delivered more than once: %r" % dup[:10].tolist()
    lost, fully_put, received = [], 0, int(total.sum())
    for slot in range(2):
        got = total[slot]
        assert not got[started[slot] + 1:].any(), "a message nobody started"
        want = np.ones(done[slot] + 1, dtype=bool)
        for s_, first, last in in_flight:
            if s_ == slot:
                want[first:last + 1] = False
        fully_put += int(want.sum())
        lost += [(slot, int(x)) for x in np.flatnonzero(want & (got[:done[slot] + 1] == 0))]
    s = q.stats()
    report = {
        "start_method": ctx.get_start_method(), "seconds": SOAK_SECONDS, "producer_kills": kills["producer"],
        "consumer_kills": kills["consumer"], "messages_fully_put": fully_put,
        "messages_received": received, "lost_fully_put": len(lost),
        "abandoned": s["abandoned"], "abandoned_by_consumers": s["abandoned_by_consumers"],
        "capped": [started[i] + 4 > cap for i in range(2)],
    }
    record_property("soak", report)
    print("\nsoak:", report)
    assert len(lost) <= kills["consumer"], "lost %d > %d consumer kills: %r" % (
        len(lost), kills["consumer"], lost[:10])
    # A consumer is inside at most one get() when it is killed: at most one
    # message counted per kill. Not "== len(lost)" at random instants: a
    # kill after get() returned and before the consumer's own record of
    # the message (counts[...] += 1) loses it from that record although
    # pyqueue delivered it (not abandoned, rightly); and a kill between a
    # consumer's announcement and a consume CAS that another consumer won
    # counts a message that was delivered (docs/design.md). The exact
    # accounting is tested at fault points above.
    assert s["abandoned_by_consumers"] <= kills["consumer"]
    # Producers' records: a batch is up to 4 of them.
    assert s["abandoned"] - s["abandoned_by_consumers"] <= 4 * kills["producer"]
    assert s["depth"] == 0 and q.qsize() == 0
    assert kills["producer"] >= 1 and kills["consumer"] >= 1, report
    assert fully_put >= SOAK_MIN_MESSAGES, "the soak did hardly any work: %r" % report
    # The queue still works, with its whole maxsize.
    q.put_many(list(range(64)), timeout=WAIT)
    with pytest.raises(queue.Full):
        q.put_nowait(64)
    assert q.get_many(64, timeout=WAIT) == list(range(64))
