"""Threads of one process sharing one handle (issue 9, item 5): a batch
call must not read per-handle buffers after Python code (unpickling) ran,
since another thread's call may have overwritten them meanwhile. Every
message arrives exactly once, intact, with its type: raw bytes whose
content is a pickle stay bytes, objects whose unpickling releases the GIL
come back as themselves.

Bounded: a few thousand messages, a deadline of a few seconds per test."""
import collections
import os
import queue
import sys
import threading
import time

import pytest

import pyqueue
from tests import _bindings_workers as bw

N = 3000
THREADS = 4
DEADLINE_S = 20.0


@pytest.fixture
def fast_switching():
    """Switch threads as often as the interpreter can."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def _run_threads(target, n_threads=THREADS):
    """Run target(index, results) in n threads; return the per-thread
    results and the exceptions they raised."""
    results = [[] for _ in range(n_threads)]
    errors = []
    stop_at = time.monotonic() + DEADLINE_S

    def run(i):
        try:
            target(i, results[i], stop_at)
        except BaseException as e:  # collected and asserted on below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S + 10)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    return results, errors


def _assert_exactly_once(results, expected):
    got = collections.Counter(bw.message_key(m) for r in results for m in r)
    want = collections.Counter(bw.message_key(m) for m in expected)
    assert sum(got.values()) == len(expected)
    assert got == want


def _assert_drained_each_once(results, errors, expected):
    assert errors == []
    _assert_exactly_once(results, expected)


def test_queue_get_many_shared_by_threads(make_queue, fast_switching):
    q = make_queue.Queue(capacity_bytes=1 << 20)
    expected = bw.stress_messages(N)
    assert q.put_many(expected) == N

    def consume(i, out, stop_at):
        while time.monotonic() < stop_at:
            try:
                if i % 2:
                    out.extend(q.get_many(16, block=False))
                else:
                    out.append(q.get(block=False))
            except queue.Empty:
                if q.qsize() == 0:
                    return

    results, errors = _run_threads(consume)
    _assert_drained_each_once(results, errors, expected)
    s = q.stats()
    assert s["dequeued"] == N and s["undecodable"] == 0 and s["held"] == 0


def test_queue_threads_with_a_producer_thread(make_queue, fast_switching):
    """Producer and consumers at once on one handle: the ring wraps while
    batches are decoded."""
    q = make_queue.Queue(capacity_bytes=64 * 1024)
    expected = bw.stress_messages(N)
    done = threading.Event()

    def work(i, out, stop_at):
        if i == 0:
            for k in range(0, N, 7):
                q.put_many(expected[k:k + 7], timeout=DEADLINE_S)
            done.set()
            return
        while time.monotonic() < stop_at:
            try:
                out.extend(q.get_many(32, timeout=0.05))
            except queue.Empty:
                if done.is_set() and q.qsize() == 0:
                    return

    results, errors = _run_threads(work)
    _assert_drained_each_once(results, errors, expected)


def test_topic_subscription_get_many_shared_by_threads(fast_switching):
    t = pyqueue.Topic(capacity_bytes=1 << 20)
    try:
        sub = t.subscribe()
        expected = bw.stress_messages(N)
        assert t.publish_many(expected) == N

        def consume(i, out, stop_at):
            while time.monotonic() < stop_at:
                try:
                    if i % 2:
                        out.extend(sub.get_many(16, block=False))
                    else:
                        out.append(sub.get(block=False))
                except queue.Empty:
                    if sub.lag == 0:
                        return

        results, errors = _run_threads(consume)
        _assert_drained_each_once(results, errors, expected)
        sub.close()
    finally:
        t.unlink()
        t.close()


@pytest.mark.parametrize("mode", ["memory", "directory"])
def test_log_reads_shared_by_threads(tmp_path, fast_switching, mode):
    """Log reads do not consume: every thread reads the whole partition
    through the same handle, in batches, and must see every record in
    order with its type."""
    n = 1500
    lg = (pyqueue.Log(partitions=1, retention_bytes=1 << 20) if mode == "memory"
          else pyqueue.Log(path=str(tmp_path / "log"), partitions=1))
    try:
        expected = bw.stress_messages(n)
        for k in range(0, n, 50):
            lg.append_many(expected[k:k + 50])
        want = [bw.message_key(m) for m in expected]

        def read_all(i, out, stop_at):
            off = 0
            while off < n and time.monotonic() < stop_at:
                recs = lg.read(0, off, max_records=5 + i)
                out.extend(r.value for r in recs)
                off += len(recs)

        results, errors = _run_threads(read_all)
        assert errors == []
        for r in results:
            assert [bw.message_key(m) for m in r] == want
    finally:
        if mode == "memory":
            lg.unlink()
        lg.close()


def test_workqueue_get_shared_by_threads(fast_switching):
    wq = pyqueue.WorkQueue(capacity_bytes=1 << 20, max_in_flight=4096)
    try:
        expected = bw.stress_messages(1500)
        for m in expected:
            wq.put(m)

        def consume(i, out, stop_at):
            while time.monotonic() < stop_at:
                try:
                    d = wq.get(block=False)
                except queue.Empty:
                    if wq.qsize() == 0:
                        return
                    continue
                out.append(d.value)
                d.ack()

        results, errors = _run_threads(consume)
        _assert_drained_each_once(results, errors, expected)
        s = wq.stats()
        assert s["acked"] == len(expected) and s["redelivered"] == 0
    finally:
        wq.unlink()
        wq.close()


def test_workqueue_get_many_shared_by_threads(fast_switching):
    """Threads of one handle putting with put_many and taking with
    get_many (unpickling runs between the C calls of each) and settling
    with Batch.ack, all or by position: each message once."""
    wq = pyqueue.WorkQueue(capacity_bytes=1 << 20, max_in_flight=4096)
    try:
        expected = bw.stress_messages(1500)
        half = len(expected) // 2
        for k in range(0, half, 50):
            wq.put_many(expected[k:k + 50])
        rest = expected[half:]

        def work(i, out, stop_at):
            if i == 0:  # a producer among the consumers
                for k in range(0, len(rest), 25):
                    wq.put_many(rest[k:k + 25])
            while time.monotonic() < stop_at:
                try:
                    b = wq.get_many(1 + 7 * i, block=False)
                except queue.Empty:
                    if wq.qsize() == 0 and wq.stats()["enqueued"] == len(expected):
                        return
                    continue
                out.extend(b.values)
                if i % 2 and len(b) > 1:
                    b.ack([0])
                b.ack()

        results, errors = _run_threads(work)
        _assert_drained_each_once(results, errors, expected)
        s = wq.stats()
        assert s["acked"] == len(expected) and s["redelivered"] == 0
    finally:
        wq.unlink()
        wq.close()


def test_directory_log_random_reads_across_many_segments(tmp_path, fast_switching):
    """More segment files than a handle keeps mapped (32): threads reading
    at random offsets make the handle unmap segments that another thread's
    read may be decoding from (the copy must be done before any Python code
    runs, and the mapping held while it is made)."""
    import random

    n = 2400
    lg = pyqueue.Log(path=str(tmp_path / "log"), partitions=1, segment_bytes=4096)
    try:
        expected = bw.stress_messages(n)
        for k in range(0, n, 40):
            lg.append_many(expected[k:k + 40])
        assert len([f for f in os.listdir(tmp_path / "log" / "partition-0")
                    if f.endswith(".log")]) > 40  # more than the 32 kept mapped
        want = [bw.message_key(m) for m in expected]

        def read_random(i, out, stop_at):
            rnd = random.Random(i)
            for _ in range(150):
                if time.monotonic() >= stop_at:
                    return
                off = rnd.randrange(n)
                recs = lg.read(0, off, max_records=rnd.randrange(1, 40))
                got = [bw.message_key(r.value) for r in recs]
                assert got == want[off:off + len(got)]
                assert [r.offset for r in recs] == list(range(off, off + len(recs)))
                out.append(len(recs))

        results, errors = _run_threads(read_random, n_threads=6)
        assert errors == []
        assert all(results)
    finally:
        lg.close()


def test_queue_threads_with_poison_messages_and_held_ones(make_queue, fast_switching):
    # Undecodable messages among objects whose unpickling lets the GIL go:
    # what one thread's call holds (the messages after a poison one) is
    # handed out by the handle's next calls, whichever thread makes them;
    # every good message arrives exactly once, every poison one is reported
    # once, and nothing is left held.
    q = make_queue.Queue(capacity_bytes=1 << 20)
    good = bw.stress_messages(N)
    msgs = []
    for i, m in enumerate(good):
        msgs.append(m)
        if i % 37 == 5:
            msgs.append(bw.Unloadable("poison %d" % i))
    n_poison = len(msgs) - len(good)
    assert q.put_many(msgs) == len(msgs)
    reported = []

    def consume(i, out, stop_at):
        while time.monotonic() < stop_at:
            try:
                if i % 2:
                    out.extend(q.get_many(16, block=False))
                else:
                    out.append(q.get(block=False))
            except pyqueue.UndecodableMessage as e:
                reported.append(e.position)
            except LookupError as e:  # get(): the decoder's own exception
                reported.append(e)
            except queue.Empty:
                if q.qsize() == 0:
                    return

    results, errors = _run_threads(consume)
    _assert_drained_each_once(results, errors, good)
    assert len(reported) == n_poison
    s = q.stats()
    assert s["dequeued"] == len(msgs) and s["undecodable"] == n_poison and s["held"] == 0
