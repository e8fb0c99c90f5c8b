"""Multi-process (and multi-thread) behaviour of pyqueue.Queue.

Every message is tagged (producer id, sequence number, size, payload); the
checks are: every message arrives exactly once, payloads are intact, and for
every consumer the messages of one producer arrive in increasing sequence
order (FIFO).  Sizes mix small messages with ones above a quarter of a
64 KiB ring (out of band) and above the whole ring.
"""

import collections
import os
import queue
import subprocess
import sys
import threading

import pytest

from tests import _workers
from tests._support import wait_until

RING = 65536
WAIT = 60.0


def sizes_for(producer_id, n):
    """Mostly small; every 10th above RING/4 (out of band); every 37th
    larger than the ring itself."""
    out = []
    for seq in range(n):
        if seq % 37 == 36:
            out.append(RING + 4321)
        elif seq % 10 == 9:
            out.append(RING // 4 + 1000 + producer_id)
        else:
            out.append((seq * 131 + producer_id * 17) % 3000)
    return out


def check_records(per_consumer, expected):
    """per_consumer: {consumer_id: [(producer, seq, payload_ok), ...]};
    expected: {producer: n_messages}."""
    counts = collections.Counter()
    for cid, records in per_consumer.items():
        last = {}
        for producer, seq, ok in records:
            assert ok, "corrupted payload for message %r" % ((producer, seq),)
            counts[(producer, seq)] += 1
            assert seq > last.get(producer, -1), (
                "consumer %r saw producer %r out of order: %r after %r"
                % (cid, producer, seq, last.get(producer))
            )
            last[producer] = seq
    want = {(p, s) for p, n in expected.items() for s in range(n)}
    duplicates = {k: c for k, c in counts.items() if c != 1}
    assert not duplicates, "delivered more than once: %r" % sorted(duplicates)[:10]
    missing = want - set(counts)
    assert not missing, "%d messages lost, e.g. %r" % (len(missing), sorted(missing)[:10])
    extra = set(counts) - want
    assert not extra, "unexpected messages: %r" % sorted(extra)[:10]


def collect_results(results, n):
    return dict(results.get(timeout=WAIT) for _ in range(n))


@pytest.mark.parametrize(
    "n_producers,n_consumers,maxsize",
    [
        pytest.param(1, 1, 0, id="1x1"),
        pytest.param(2, 2, 8, id="2x2-maxsize8"),
        pytest.param(3, 2, 0, id="3x2"),
    ],
)
def test_producers_consumers(ctx, procs, make_queue, n_producers, n_consumers, maxsize):
    q = make_queue.Queue(maxsize, capacity_bytes=RING)
    results = ctx.Queue()
    n = 120
    expected = {}
    for c in range(n_consumers):
        procs.start(ctx, _workers.consumer, q, results, c)
    producers = []
    for pid in range(n_producers):
        expected[pid] = n
        producers.append(procs.start(ctx, _workers.producer, q, pid, sizes_for(pid, n)))
    for p in producers:
        p.join(WAIT)
        assert p.exitcode == 0
    for _ in range(n_consumers):
        q.put(None)
    per_consumer = collect_results(results, n_consumers)
    assert procs.join_all() == [0] * (n_consumers + n_producers)
    check_records(per_consumer, expected)
    assert q.qsize() == 0
    results.close()
    results.join_thread()


def test_single_consumer_in_parent_keeps_per_producer_order(ctx, procs, make_queue):
    q = make_queue.Queue(capacity_bytes=RING)
    n = 100
    for pid in range(2):
        procs.start(ctx, _workers.producer, q, pid, sizes_for(pid, n))
    records = [_workers.check_message(q.get(timeout=WAIT)) for _ in range(2 * n)]
    assert procs.join_all() == [0, 0]
    check_records({"parent": records}, {0: n, 1: n})
    with pytest.raises(queue.Empty):
        q.get_nowait()


def test_put_many_get_many_across_processes(ctx, procs, make_queue):
    q = make_queue.Queue(capacity_bytes=RING)
    results = ctx.Queue()
    n = 150
    n_consumers = 2
    for c in range(n_consumers):
        procs.start(ctx, _workers.batch_consumer, q, results, c, 10)
    producers = [
        procs.start(ctx, _workers.batch_producer, q, pid, sizes_for(pid, n), 16)
        for pid in range(2)
    ]
    for p in producers:
        p.join(WAIT)
        assert p.exitcode == 0
    assert q.put_many([None] * n_consumers) == n_consumers
    per_consumer = collect_results(results, n_consumers)
    assert procs.join_all() == [0] * 4
    check_records(per_consumer, {0: n, 1: n})
    results.close()
    results.join_thread()


def test_pool_initargs(ctx, make_queue):
    q = make_queue.Queue(capacity_bytes=RING)
    with ctx.Pool(2, initializer=_workers.pool_init, initargs=(q,)) as pool:
        out = pool.map(_workers.pool_put_from_initargs, range(20))
        pool.close()
        pool.join()
    assert out == [2 * i for i in range(20)]
    got = [q.get(timeout=WAIT) for _ in range(20)]
    assert sorted(i for tag, i, _pid in got) == list(range(20))
    assert {tag for tag, _i, _pid in got} == {"init"}
    with pytest.raises(queue.Empty):
        q.get_nowait()


def test_pool_map_arguments(ctx, make_queue):
    q = make_queue.Queue(capacity_bytes=RING)
    with ctx.Pool(2) as pool:
        out = pool.map(_workers.pool_put_from_argument, [(q, i) for i in range(20)])
        pool.close()
        pool.join()
    assert out == [3 * i for i in range(20)]
    got = [q.get(timeout=WAIT) for _ in range(20)]
    assert sorted(i for tag, i, _pid in got) == list(range(20))
    assert all(pid != os.getpid() for _tag, _i, pid in got)
    with pytest.raises(queue.Empty):
        q.get_nowait()


def test_open_by_name_from_spawned_process(spawn_ctx, procs, make_queue):
    name = make_queue.unique_name("byname")
    q = make_queue.Queue(name=name, capacity_bytes=RING)
    p = procs.start(spawn_ctx, _workers.open_by_name_and_put, name, 30)
    got = [q.get(timeout=WAIT) for _ in range(30)]
    p.join(WAIT)
    assert p.exitcode == 0
    assert got == [("by-name", i) for i in range(30)]


def test_open_by_name_from_unrelated_interpreter(make_queue):
    name = make_queue.unique_name("byname")
    q = make_queue.Queue(name=name, capacity_bytes=RING)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        "import sys, pyqueue\n"
        "q = pyqueue.Queue.open(sys.argv[1])\n"
        "q.put(('from-subprocess', q.get(timeout=30)))\n"
        "q.close()\n"
    )
    q.put("ping")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [root, env.get("PYTHONPATH")] if p)
    proc = subprocess.run(
        [sys.executable, "-c", code, q.name], env=env, capture_output=True, text=True, timeout=WAIT
    )
    assert proc.returncode == 0, proc.stderr
    assert q.get(timeout=WAIT) == ("from-subprocess", "ping")


def test_threads_share_a_queue(make_queue):
    q = make_queue.Queue(16, capacity_bytes=RING)
    n_threads = 4
    n = 150
    errors = []
    per_consumer = {}

    def produce(pid):
        try:
            for seq, size in enumerate(sizes_for(pid, n)):
                q.put(_workers.make_message(pid, seq, size), timeout=WAIT)
        except BaseException as e:
            errors.append(("producer", pid, repr(e)))

    def consume(cid):
        records = []
        try:
            while True:
                msg = q.get(timeout=WAIT)
                if msg is None:
                    break
                records.append(_workers.check_message(msg))
        except BaseException as e:
            errors.append(("consumer", cid, repr(e)))
        per_consumer[cid] = records

    consumers = [threading.Thread(target=consume, args=(c,)) for c in range(n_threads)]
    producers = [threading.Thread(target=produce, args=(p,)) for p in range(n_threads)]
    for t in consumers + producers:
        t.start()
    for t in producers:
        t.join(WAIT)
    for _ in consumers:
        q.put(None, timeout=WAIT)
    for t in consumers:
        t.join(WAIT)
    assert not any(t.is_alive() for t in consumers + producers)
    assert errors == []
    check_records(per_consumer, {p: n for p in range(n_threads)})


# -- overflow modes across processes ---------------------------------------------

def _consume_while_running(q, producers):
    """Get (slowly enough for the queue to overflow now and then) until every
    producer has exited and the queue is drained."""
    records = []
    while True:
        running = any(p.exitcode is None for p in producers)
        try:
            msg = q.get(timeout=0.05)
        except queue.Empty:
            if not running:
                break
            continue
        records.append(_workers.check_message(msg))
    return records


@pytest.mark.parametrize("overflow", ["reject", "drop_oldest"])
def test_overflow_across_processes(ctx, procs, make_queue, overflow):
    q = make_queue.Queue(8, capacity_bytes=RING, overflow=overflow)
    results = ctx.Queue()
    n, n_producers = 300, 2
    producers = [
        procs.start(ctx, _workers.overflow_producer, q, pid, n, results)
        for pid in range(n_producers)
    ]
    records = _consume_while_running(q, producers)
    reports = {pid: (accepted, full) for pid, accepted, full in
               (results.get(timeout=WAIT) for _ in range(n_producers))}
    assert procs.join_all() == [0] * n_producers
    assert all(ok for _p, _s, ok in records)
    received = collections.defaultdict(list)
    for producer, seq, _ok in records:
        received[producer].append(seq)
    for pid in range(n_producers):
        seqs = received[pid]
        assert seqs == sorted(set(seqs)), "duplicates or out of order"
    total_accepted = sum(len(a) for a, _f in reports.values())
    total_full = sum(f for _a, f in reports.values())
    s = q.stats()
    assert s["enqueued"] == total_accepted
    assert s["dequeued"] == len(records)
    assert s["depth"] == 0
    if overflow == "reject":
        # Nothing is lost: exactly the accepted messages arrive.
        for pid, (accepted, full) in reports.items():
            assert received[pid] == accepted
            assert len(accepted) + full == n
        assert s["rejected"] == total_full
        assert s["dropped"] == 0
    else:
        assert total_full == 0 and total_accepted == n_producers * n
        for pid in range(n_producers):
            assert set(received[pid]) <= set(range(n))
        assert s["dropped"] == total_accepted - len(records)
        assert s["rejected"] == 0
    results.close()
    results.join_thread()


# -- crash safety ---------------------------------------------------------------

@pytest.mark.parametrize("big", [False, True], ids=["small", "with-out-of-band"])
def test_killed_producer_leaves_queue_usable(ctx, procs, make_queue, big):
    q = make_queue.Queue(64, capacity_bytes=RING)
    started = ctx.Event()
    p = procs.start(ctx, _workers.endless_producer, q, started, big)
    assert started.wait(WAIT)
    expected = 0
    for _ in range(300):
        seq, data = q.get(timeout=WAIT)
        assert seq == expected
        assert data == _workers.payload(7, seq, _workers.crash_size(seq, big))
        expected += 1
    p.kill()
    p.join(WAIT)
    assert p.exitcode is not None
    # What the dead producer had completed is still there, in order and intact.
    while True:
        try:
            seq, data = q.get(timeout=0.2)
        except queue.Empty:
            break
        assert seq == expected
        assert data == _workers.payload(7, seq, _workers.crash_size(seq, big))
        expected += 1
    assert q.qsize() == 0
    q.put("after")
    assert q.get(timeout=WAIT) == "after"


def test_killed_waiting_consumer_does_not_swallow_messages(ctx, procs, make_queue):
    q = make_queue.Queue(capacity_bytes=RING)
    ready = ctx.Event()
    results = ctx.Queue()
    p = procs.start(ctx, _workers.blocked_getter, q, ready, results)
    assert ready.wait(WAIT)
    assert wait_until(lambda: q.stats()["waiting_consumers"] >= 1, WAIT), q.stats()
    p.kill()
    p.join(WAIT)
    q.put("for-the-living")
    assert q.get(timeout=WAIT) == "for-the-living"
    assert q.qsize() == 0
    results.close()
    results.join_thread()
