"""Random SIGKILL and SIGSTOP soaks of the WorkQueue and the Topic.

Workers are SIGKILLed (and replaced) or SIGSTOPped for up to STOP_MAX
seconds (then SIGCONTed) at random instants. What must hold, whatever was
hit:
* nothing is lost or duplicated beyond what the guarantees allow (a
  WorkQueue message is acked exactly once: a consumer stopped past its
  visibility timeout gets DeliveryExpired for its late ack; a lossless
  Topic's live subscriber sees every message once, in order);
* a stopped peer never holds up another process past its own timeout
  (every timed get/put/publish returns within its timeout + LATE_MAX) —
  that is the "locks with a deadline" guarantee of docs/design.md;
* the structure works afterwards.
The Queue's own kill soak is tests/test_crash.py::test_soak_random_kills.

PYQUEUE_SOAK_SECONDS (default 8) sets each soak's length; PYQUEUE_SOAK_SEED
its random schedule.
"""

import multiprocessing
import os
import random
import signal
import threading
import time

import pytest

from tests import _support
from tests.adversarial import _soak_workers as W

pyqueue = pytest.importorskip("pyqueue")

SOAK_SECONDS = float(os.environ.get("PYQUEUE_SOAK_SECONDS", "8"))
STOP_MAX = 1.5      # longest SIGSTOP of a worker
TIMEOUT = 0.2       # every timed call of the workers
LATE_MAX = 1.0      # how late past its timeout a timed call may return (scheduling on 2 cores)
WAIT = 30.0


class Chaos:
    """Kills, stops and resumes workers at random; replaces the killed."""

    def __init__(self, rng, start, ctx):
        self.rng, self.start = rng, start
        self.stops_seen = ctx.RawArray("q", 16)  # bumped before each SIGSTOP of a slot
        self.slots = {}
        self.workers = {}
        self.stopped = {}          # key -> when to SIGCONT
        self.kills = self.stops = 0

    def me(self, key):
        """The worker's W.Me (its slot in stops_seen)."""
        slot = self.slots.setdefault(key, len(self.slots))
        return W.Me(self.stops_seen, slot)

    def spawn(self, key):
        self.workers[key] = self.start(key)

    def resume_due(self, now):
        """SIGCONT the stopped workers whose stop is over."""
        for key, until in list(self.stopped.items()):
            if now >= until:
                self.cont(key)
                del self.stopped[key]

    def tick(self, now):
        self.resume_due(now)
        key = self.rng.choice(sorted(self.workers))
        p = self.workers[key]
        assert p.exitcode is None, "worker %r exited by itself: %r" % (key, p.exitcode)
        if key in self.stopped:
            return
        if self.rng.random() < 0.5:
            p.kill()
            p.join(WAIT)
            self.kills += 1
            self.spawn(key)
        else:
            self.stops_seen[self.slots[key]] += 1
            os.kill(p.pid, signal.SIGSTOP)
            self.stopped[key] = now + self.rng.uniform(0.05, STOP_MAX)
            self.stops += 1

    def cont(self, key):
        # Bumped again before the SIGCONT: a worker that read its counter
        # after the first bump but before the stop took hold (a signal is
        # not instantaneous) still sees a change when it resumes.
        self.stops_seen[self.slots[key]] += 1
        os.kill(self.workers[key].pid, signal.SIGCONT)

    def retire(self, key):
        """Take a worker that finished out of the chaos. It may have been
        stopped as it exited (a SIGSTOP to a process that has exited is
        accepted): its resume is dropped with it (a CI run once failed
        resuming an appender it had retired)."""
        self.stopped.pop(key, None)
        return self.workers.pop(key)

    def resume_all(self):
        for key in list(self.stopped):
            self.cont(key)
        self.stopped.clear()

    def kill_all(self):
        self.resume_all()
        for p in self.workers.values():
            if p.exitcode is None:
                p.kill()
            p.join(WAIT)


def run_chaos(chaos, seconds, rng):
    ticker = threading.Event()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ticker.wait(rng.uniform(0.1, 0.3))  # the chaos interval, not a settle
        chaos.tick(time.monotonic())
    chaos.resume_all()


def wait_for(pred, what, timeout=WAIT):
    ev = threading.Event()
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out waiting for " + what
        ev.wait(0.02)


@pytest.fixture(params=["fork", "spawn"])
def ctx(request):
    return multiprocessing.get_context(request.param)


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 180)
def test_workqueue_kill_and_stop_soak(ctx):
    rng = random.Random(os.environ.get("PYQUEUE_SOAK_SEED", "wq"))
    n = 3000
    q = pyqueue.WorkQueue(name=_support.unique_name("wqsoak"), visibility_timeout=0.5,
                          max_deliveries=None, max_in_flight=4096)
    chaos = None
    try:
        for i in range(n):
            q.put(i)
        acked = ctx.RawArray("i", n)
        report = ctx.RawArray("q", 2)
        stop = ctx.RawValue("b", 0)

        def start(key):
            p = ctx.Process(target=W.wq_consumer, args=(chaos.me(key), q, acked, report, stop, TIMEOUT),
                            daemon=True)
            p.start()
            return p

        chaos = Chaos(rng, start, ctx)
        for k in range(3):
            chaos.spawn(k)
        run_chaos(chaos, SOAK_SECONDS, rng)
        # Let the survivors finish: everything acked (or lost to a kill
        # between a successful ack and the count, which the check allows).
        wait_for(lambda: q.stats()["depth"] == 0 and q.stats()["in_flight"] == 0,
                 "the queue to drain")
        stop.value = 1
        for p in chaos.workers.values():
            p.join(WAIT)
        counts = list(acked)
        dup = [i for i, c in enumerate(counts) if c > 1]
        assert not dup, "acked more than once: %r" % dup[:20]
        missing = [i for i, c in enumerate(counts) if c == 0]
        # A consumer killed after its ack returned and before it counted
        # it leaves one uncounted; the queue itself has nothing left.
        assert len(missing) <= chaos.kills, "never acked: %r (%d kills)" % (
            missing[:20], chaos.kills)
        assert report[W.R_ERRORS] == 0, "corrupt deliveries"
        late = report[W.R_MAX_OVER] / 1e6
        assert late <= LATE_MAX, (
            "a get(timeout=%s) returned %.2f s late while a peer was stopped" % (TIMEOUT, late))
        s = q.stats()
        assert s["depth"] == 0 and s["in_flight"] == 0 and s["delayed"] == 0
        q.put("after")
        d = q.get(timeout=WAIT)
        assert d.value == "after"
        d.ack()
    finally:
        if chaos is not None:
            chaos.kill_all()
        q.close()
        q.unlink()


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 180)
def test_topic_kill_and_stop_soak(ctx):
    rng = random.Random(os.environ.get("PYQUEUE_SOAK_SEED", "topic"))
    t = pyqueue.Topic(name=_support.unique_name("tsoak"), capacity_bytes=64 * 1024)
    chaos = None
    epochs = iter(range(10 ** 6))
    try:
        report = ctx.RawArray("q", 2)
        published = ctx.RawValue("q", 0)
        ranges = {}

        def start(key):
            if key == "pub":
                p = ctx.Process(target=W.topic_publisher,
                                args=(chaos.me(key), t, next(epochs), published, report, TIMEOUT),
                                daemon=True)
            else:
                ready = ctx.RawValue("b", 0)
                first, last = ctx.RawValue("q", -1), ctx.RawValue("q", -1)
                ranges[key] = (first, last)
                p = ctx.Process(target=W.topic_subscriber,
                                args=(chaos.me(key), t, first, last, report, ready, TIMEOUT), daemon=True)
            p.start()
            if key != "pub":
                # The stopped workers go on meanwhile: a publisher stopped
                # inside the topic's lock would otherwise stay stopped until
                # this wait ends, and the new subscriber would give up on
                # the lock (LockTimeout after 10 s; a clean-clone CI run).
                wait_for(lambda: chaos.resume_due(time.monotonic()) or ready.value == 1,
                         "a subscriber to subscribe")
            return p

        chaos = Chaos(rng, start, ctx)
        for k in ("s0", "s1", "s2"):
            chaos.spawn(k)
        chaos.spawn("pub")
        run_chaos(chaos, SOAK_SECONDS, rng)
        # Stop the publisher where it is; every live subscriber must then
        # get everything up to the end marker.
        pub = chaos.workers.pop("pub")
        pub.kill()
        pub.join(WAIT)
        assert published.value > 100, "the soak published hardly anything"
        t.publish(None, timeout=WAIT)  # the end marker
        for key, p in chaos.workers.items():
            p.join(WAIT)
            assert p.exitcode == 0, "subscriber %s did not get the end marker: %r" % (
                key, p.exitcode)
        assert report[W.R_ERRORS] == 0, "a live subscriber saw a gap, a duplicate or garbage"
        late = report[W.R_MAX_OVER] / 1e6
        assert late <= LATE_MAX, (
            "a timed call returned %.2f s past its timeout while a peer was stopped" % late)
    finally:
        if chaos is not None:
            chaos.kill_all()
        t.close()
        t.unlink()


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 180)
def test_log_group_kill_and_stop_soak(ctx):
    """Appenders and consumer-group members of a memory-mode Log killed and
    stopped at random: each partition stays dense and intact (each
    appender incarnation's records in order, none torn), every record is
    processed by the group at least once (from the committed offsets, across
    rebalances), and a stopped member holds up nobody's poll past its
    timeout."""
    rng = random.Random(os.environ.get("PYQUEUE_SOAK_SEED", "log"))
    parts, cap, per_appender = 4, 200_000, 3000
    log = pyqueue.Log(name=_support.unique_name("lsoak"), partitions=parts,
                      retention_bytes=64 * 1024 * 1024)
    chaos = None
    epochs = iter(range(10 ** 6))
    try:
        report = ctx.RawArray("q", 2)
        appended = ctx.RawArray("q", 2)
        processed = ctx.RawArray("i", parts * cap)
        stop = ctx.RawValue("b", 0)

        def start(key):
            if key.startswith("a"):
                aid = int(key[1:])
                p = ctx.Process(target=W.log_appender,
                                args=(chaos.me(key), log, aid, next(epochs), per_appender, appended,
                                      report),
                                daemon=True)
            else:
                p = ctx.Process(target=W.log_member,
                                args=(chaos.me(key), log, "g", cap, processed, report, stop,
                                      TIMEOUT),
                                daemon=True)
            p.start()
            return p

        chaos = Chaos(rng, start, ctx)
        for k in ("a0", "a1", "m0", "m1", "m2"):
            chaos.spawn(k)
        # Appenders that finish their run are replaced with a new epoch by
        # the chaos only when killed; the ones alive at the end finish.
        end = time.monotonic() + SOAK_SECONDS
        ticker = threading.Event()
        while time.monotonic() < end:
            ticker.wait(rng.uniform(0.1, 0.3))
            for k in ("a0", "a1"):
                p = chaos.workers.get(k)
                if p is not None and p.exitcode == 0:
                    chaos.retire(k)  # done: no more chaos for it
            chaos.tick(time.monotonic())
        chaos.resume_all()
        for k in ("a0", "a1"):
            p = chaos.workers.pop(k, None)
            if p is not None:
                p.join(WAIT)
                assert p.exitcode == 0, "appender %s exit %r" % (k, p.exitcode)
        ends = [log.end_offset(p) for p in range(parts)]
        assert sum(ends) > 100, "the soak appended hardly anything"
        # The partitions: dense, intact, in order per incarnation.
        for p in range(parts):
            off, prev = log.start_offset(p), {}
            assert off == 0
            while off < ends[p]:
                recs = log.read(p, off, 1000)
                assert recs, "partition %d: no record at %d < end %d" % (p, off, ends[p])
                for r in recs:
                    assert r.offset == off, "partition %d: offset %d where %d was due" % (
                        p, r.offset, off)
                    aid, epoch, seq = r.value
                    want = prev.get((aid, epoch), -1) + 1
                    assert seq == want, "partition %d offset %d: %r after seq %d" % (
                        p, off, r.value, want - 1)
                    prev[(aid, epoch)] = seq
                    off += 1
        # The group catches up; everything was processed at least once.
        wait_for(lambda: all(v["lag"] == 0 for v in log.group_offsets("g").values()),
                 "the group to catch up")
        stop.value = 1
        for key, p in chaos.workers.items():
            p.join(WAIT)
        for p in range(parts):
            missing = [o for o in range(ends[p]) if processed[p * cap + o] == 0]
            assert not missing, "partition %d: offsets never processed: %r" % (p, missing[:20])
        assert report[W.R_ERRORS] == 0
        late = report[W.R_MAX_OVER] / 1e6
        assert late <= LATE_MAX, (
            "a poll(timeout=%s) returned %.2f s late while a peer was stopped" % (TIMEOUT, late))
    finally:
        if chaos is not None:
            chaos.kill_all()
        log.close()
        log.unlink()


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + 180)
def test_queue_stop_soak(ctx):
    """Producers and consumers of a bounded Queue stopped (and killed) at
    random: a stopped peer, even one stopped inside the claim lock, never
    makes another process's put/get(timeout=...) late; per-producer order
    holds; the queue works afterwards (the kill accounting itself is
    tests/test_crash.py::test_soak_random_kills)."""
    rng = random.Random(os.environ.get("PYQUEUE_SOAK_SEED", "queue"))
    q = pyqueue.Queue(64, name=_support.unique_name("qsoak"), capacity_bytes=64 * 1024)
    chaos = None
    epochs = iter(range(10 ** 6))
    try:
        report = ctx.RawArray("q", 2)
        got = ctx.RawValue("q", 0)

        def start(key):
            if key.startswith("p"):
                target, args = W.queue_producer, (chaos.me(key), q, next(epochs), report, TIMEOUT)
            else:
                target, args = W.queue_consumer, (chaos.me(key), q, report, got, TIMEOUT)
            p = ctx.Process(target=target, args=args, daemon=True)
            p.start()
            return p

        chaos = Chaos(rng, start, ctx)
        for k in ("p0", "p1", "c0", "c1"):
            chaos.spawn(k)
        run_chaos(chaos, SOAK_SECONDS, rng)
        for k in ("p0", "p1"):
            p = chaos.workers.pop(k)
            p.kill()
            p.join(WAIT)
        assert got.value > 100, "the soak moved hardly anything"
        q.put_many([None, None], timeout=WAIT)
        for key, p in chaos.workers.items():
            p.join(WAIT)
            assert p.exitcode == 0, "consumer %s did not get its end marker: %r" % (
                key, p.exitcode)
        assert report[W.R_ERRORS] == 0, "order broken or garbage received"
        late = report[W.R_MAX_OVER] / 1e6
        assert late <= LATE_MAX, (
            "a timed put/get returned %.2f s late while a peer was stopped" % late)
        q.put_many(list(range(64)), timeout=WAIT)
        assert q.get_many(64, timeout=WAIT) == list(range(64))
    finally:
        if chaos is not None:
            chaos.kill_all()
        q.close()
        q.unlink()
