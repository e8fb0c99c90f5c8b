"""Acknowledged work: pyqueue.WorkQueue get + ack, and StreamProcessor with
1, 2 and 4 workers, each against plain pyqueue.Queue (no acks) measured in
the same run, and against what users would use instead.

Run from the repository root::

    python -m bench.work_compare            # full run (~1 min on 2 cores)
    python -m bench.work_compare --quick    # smoke run: 1/10 of the messages, 1 repeat

Cases:
  acked-1xN     one producer process puts N messages (64 B); N = 1 or 2
                consumer processes take them: WorkQueue get + ack, plain
                pyqueue.Queue get, multiprocessing.Queue get. Rate =
                messages / time until all were taken (and acked).
  batch-1xN     the same in batches: the producer puts BATCH messages per
                call (WorkQueue.put_many / Queue.put_many), the consumers
                take up to BATCH per call: WorkQueue get_many + Batch.ack
                (one lock hold each) against plain pyqueue.Queue get_many
                (no acks). Ratios to Queue get_many.
  stream-W      W = 1, 2, 4 workers run fn (a trivial function) on every
                message: StreamProcessor over a WorkQueue (workers started
                first, as the Pool is; the parent feeds put_many of
                BATCH while they work; they take and settle in batches),
                W processes over a plain pyqueue.Queue (messages queued
                before; get, fn; no acks), multiprocessing.Pool(W)
                .imap_unordered (chunksize 64). Rate = messages / time
                until all are done (acked).
  stream-cpu-2  the stream-W race with a CPU-bound fn (about 1 ms of pure
                Python per message), 2 workers: StreamProcessor against
                multiprocessing.Pool(2).imap_unordered (chunksize 8: 16 ms
                chunks). The plumbing must vanish when work dominates
                (issue 13: within 5%). Ratios to the Pool.
  stream-idle   latency of one message through an idle processor: the
                parent puts one (its CLOCK_MONOTONIC time), waits for the
                result on the sink, then 5 ms idle, SAMPLES times (the
                workers park between messages): StreamProcessor (1 worker,
                sink a Queue) against multiprocessing.Pool(1).apply_async
                (...).get() in the same run. p50 / p99 in µs.
  pool-map-W    map of a trivial function (x + 1) over range(N) ints (N =
                1M; --pool-n), W = 2 workers, the pools started before
                the clock: pyqueue.Pool.map (its default chunksize:
                multiprocessing's, about 4 chunks per worker, capped at
                8192 items), multiprocessing.Pool.map with the best of its
                default chunksize and 10000 and 1000 (each measured, the
                fastest kept), concurrent.futures.ProcessPoolExecutor.map
                with the same chunksizes (the best kept); each pool first
                maps the whole input once untimed, then three timed times
                (pyqueue: its default chunksize three times), the fastest
                kept. The input is a range: pyqueue.Pool sends slices of
                it (a range pickles as its bounds), multiprocessing's
                pools pickle each item. Rate = items / time until
                the list is back. Ratios to multiprocessing.Pool. Also the
                CPU each used per 1M items (this process's threads and the
                pool's workers, /proc): on a loaded machine the steadier
                figure, as wall time there is mostly the share of the cores
                the scheduler gives each runnable thread.
Ratios are to plain pyqueue.Queue in the same run (pool-map-*: to
multiprocessing.Pool). Medians of the repeats.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time

from bench.compare import fmt_count, fmt_ratio, machine_info

PAYLOAD = b"x" * 64
END = b""
BATCH = 1024


def work(v):
    """The processing step: trivial (the cost measured is the plumbing)."""
    return len(v)


# ---- acked-1xN ------------------------------------------------------------

def _take(kind, q, n_total, barrier, done):
    barrier.wait()
    if kind.endswith("-batch"):
        # One END per consumer: one that takes more than its own in a
        # batch puts the others back.
        get_many = q.get_many
        while True:
            b = get_many(BATCH)
            if kind == "workqueue-batch":
                b.ack()
                b = b.values
            if END in b:
                for _ in range(b.count(END) - 1):
                    q.put(END)
                break
    elif kind == "workqueue":
        while True:
            d = q.get()
            v = d.value
            d.ack()
            if v == END:
                break
    else:
        get = q.get
        while get() != END:
            pass
    done.put(time.perf_counter())


def acked_run(ctx, kind, n, consumers):
    import pyqueue
    if kind.startswith("workqueue"):
        q = pyqueue.WorkQueue(capacity_bytes=64 << 20)
    elif kind.startswith("queue"):
        q = pyqueue.Queue(capacity_bytes=64 << 20)
    else:
        q = ctx.Queue()
    barrier, done = ctx.Barrier(consumers + 1), ctx.Queue()
    procs = [ctx.Process(target=_take, args=(kind, q, n, barrier, done))
             for _ in range(consumers)]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    if kind.endswith("-batch"):
        put_many = q.put_many
        chunk = [PAYLOAD] * BATCH
        for _ in range(n // BATCH):
            put_many(chunk)
        put_many([PAYLOAD] * (n % BATCH))
        for _ in range(consumers):  # one END per consumer: each stops at its own
            q.put(END)
    else:
        put = q.put
        for _ in range(n):
            put(PAYLOAD)
        for _ in range(consumers):
            put(END)
    t1 = max(done.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(30)
    if kind != "mp":
        q.unlink()
        q.close()
    return n / (t1 - t0)


# ---- stream-W ---------------------------------------------------------------

def _plain_worker(q, done):
    get = q.get
    while True:
        v = get()
        if v == END:
            break
        work(v)
    done.put(time.perf_counter())


def spin(v):
    """The stream-cpu step: about 1 ms of pure Python."""
    t = 0
    for i in range(CPU_LOOPS):
        t += i * i
    return t & 1


CPU_LOOPS = 20_000


def stream_run(ctx, kind, n, workers, fn=work, chunksize=64):
    import pyqueue
    if kind == "pool":
        with ctx.Pool(workers) as pool:
            items = [PAYLOAD] * n
            t0 = time.perf_counter()
            for _ in pool.imap_unordered(fn, items, chunksize=chunksize):
                pass
            return n / (time.perf_counter() - t0)
    if kind == "queue":
        q = pyqueue.Queue(capacity_bytes=64 << 20)
        q.put_many([PAYLOAD] * n)
        q.put_many([END] * workers)
        done = ctx.Queue()
        t0 = time.perf_counter()
        procs = [ctx.Process(target=_plain_worker, args=(q, done)) for _ in range(workers)]
        for p in procs:
            p.start()
        t1 = max(done.get(timeout=300) for _ in procs)
        for p in procs:
            p.join(30)
        q.unlink()
        q.close()
        return n / (t1 - t0)
    q = pyqueue.WorkQueue(capacity_bytes=64 << 20, max_in_flight=1 << 20)  # holds them all
    # As for the Pool (made before its clock starts): the workers are up
    # first, then the parent feeds the messages while they work.
    sp = pyqueue.StreamProcessor(q, fn, workers=workers, handle_signals=False).start()
    time.sleep(1.0)
    chunk = [PAYLOAD] * BATCH
    t0 = time.perf_counter()
    for k in range(0, n, BATCH):
        q.put_many(chunk if n - k >= BATCH else chunk[:n - k])
    # The workers' counters (shared memory, no lock; a worker counts a
    # batch once it is acked), not q.stats(): that scans every message
    # not done under the queue's lock, which would slow the workers.
    deadline = time.monotonic() + 300
    while sp.stats()["processed"] < n and time.monotonic() < deadline:
        time.sleep(0.001)
    t1 = time.perf_counter()
    assert q.stats()["acked"] == n
    sp.stop(30)
    q.unlink()
    q.close()
    return n / (t1 - t0)


def stream_cpu_run(ctx, kind, n, workers):
    return stream_run(ctx, kind, n, workers, fn=spin, chunksize=8)


# ---- stream-idle -------------------------------------------------------------

SAMPLES = 1000
IDLE_S = 0.005


def stamp(t):
    """The stream-idle step: the message back as it came (its put time)."""
    return t


def stream_idle_run(ctx, kind, n, workers):
    """-> (p50, p99) in µs of n put -> result round trips, each after
    IDLE_S idle (the workers parked)."""
    import pyqueue
    lat = []
    if kind == "pool":
        with ctx.Pool(1) as pool:
            pool.apply(stamp, (0.0,))           # up before the clock
            for _ in range(n):
                time.sleep(IDLE_S)
                t0 = time.monotonic()
                pool.apply_async(stamp, (t0,)).get(30)
                lat.append(time.monotonic() - t0)
    else:
        q = pyqueue.WorkQueue()
        out = pyqueue.Queue()
        sp = pyqueue.StreamProcessor(q, stamp, sink=out, workers=1,
                                     handle_signals=False).start()
        q.put(0.0)
        out.get(timeout=30)                     # up before the clock
        for _ in range(n):
            time.sleep(IDLE_S)
            t0 = time.monotonic()
            q.put(t0)
            out.get(timeout=30)
            lat.append(time.monotonic() - t0)
        sp.stop(30)
        for h in (q, out):
            h.unlink()
            h.close()
    lat.sort()
    return lat[len(lat) // 2] * 1e6, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6


# ---- pool-map-W --------------------------------------------------------------

def inc(x):
    """The pool-map step: trivial."""
    return x + 1


POOL_CHUNKS = (None, 10_000, 1_000)  # None: the pool's default
POOL_CPU = {}  # kind -> [CPU seconds per item of each measured map]


def _cpu_of(pids):
    """CPU seconds (user + system) used so far by this process (all its
    threads) and the given worker processes."""
    tck = os.sysconf("SC_CLK_TCK")
    total = time.process_time()
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tck
    return total


def _timed_map(kind, pids, n, call):
    """Run call() (a map of n items); its rate, and its CPU per item
    (parent + workers) noted in POOL_CPU. On a loaded machine the CPU
    is the steadier figure: wall time there is mostly a share of the
    cores, which the scheduler gives per runnable thread."""
    c0 = _cpu_of(pids)
    t0 = time.perf_counter()
    out = call()
    t1 = time.perf_counter()
    cpu = (_cpu_of(pids) - c0) / n
    assert out[-1] == n and len(out) == n
    return n / (t1 - t0), cpu


def pool_map_floor(n, chunk=8192):
    """CPU seconds per item of the work no pool that pickles its results
    can skip, in this one process: fn on each item, each chunk's result
    list pickled (as a worker sends it), unpickled and put in place in
    the list of all n results (as the pool's process does); the best of
    3. On W cores no such pool maps faster than W / this."""
    import pickle
    from multiprocessing.reduction import ForkingPickler
    best = float("inf")
    for _ in range(3):
        c0 = time.process_time()
        out = [None] * n
        for k in range(0, n, chunk):
            out[k:k + chunk] = pickle.loads(ForkingPickler.dumps(
                (True, list(map(inc, range(k, min(n, k + chunk)))))))[1]
        best = min(best, (time.process_time() - c0) / n)
        out = None
    return best


def pool_map_run(ctx, kind, n, workers):
    """items/s of map(inc, range(n)); for the stdlib pools the best of
    POOL_CHUNKS."""
    import concurrent.futures

    import pyqueue
    items = range(n)
    expected_last = n
    if kind == "pyqueue-pool":
        # Every pool maps the whole input once untimed (the first map in
        # a fresh pool also pays for its workers' memory: malloc arenas,
        # page faults), then as many timed maps as the stdlib pools get
        # (one per chunksize tried), the best kept.
        best, best_cpu = 0.0, 0.0
        with pyqueue.Pool(workers, context=ctx) as pool:
            pool.map(inc, items)  # the workers are up, their memory grown (not timed)
            for _ in POOL_CHUNKS:
                rate, cpu = _timed_map(kind, [p.pid for p in pool._pool], n,
                                       lambda: pool.map(inc, items))
                if rate > best:
                    best, best_cpu = rate, cpu
        POOL_CPU.setdefault(kind, []).append(best_cpu)
        return best
    best, best_cpu = 0.0, 0.0
    if kind == "mp-pool":
        with ctx.Pool(workers) as pool:
            pool.map(inc, items, 10_000)  # (as above, not timed)
            pids = [p.pid for p in pool._pool]
            for chunksize in POOL_CHUNKS:
                rate, cpu = _timed_map(kind, pids, n,
                                       lambda: pool.map(inc, items, chunksize))
                if rate > best:
                    best, best_cpu = rate, cpu
        POOL_CPU.setdefault(kind, []).append(best_cpu)
        return best
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
        list(ex.map(inc, items, chunksize=10_000))  # (as above, not timed)
        pids = list(ex._processes)
        for chunksize in POOL_CHUNKS:
            cs = chunksize or max(1, n // (workers * 4))
            rate, cpu = _timed_map(kind, pids, n,
                                   lambda: list(ex.map(inc, items, chunksize=cs)))
            if rate > best:
                best, best_cpu = rate, cpu
    POOL_CPU.setdefault(kind, []).append(best_cpu)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="", help="case ids containing this (e.g. batch)")
    ap.add_argument("--pool-n", type=int, default=1_000_000,
                    help="items of the pool-map case (default 1M)")
    args = ap.parse_args(argv)
    repeat = 1 if args.quick else args.repeat
    scale = 10 if args.quick else 1
    ctx = multiprocessing.get_context("fork")
    rows = []
    cases = [(f"acked-1x{c}", acked_run, c, 200_000 // scale,
              [("workqueue", "WorkQueue get+ack"), ("queue", "pyqueue.Queue get"),
               ("mp", "mp.Queue get")]) for c in (1, 2)]
    cases += [(f"batch-1x{c}", acked_run, c, 2_000_000 // scale,
               [("workqueue-batch", "WorkQueue get_many+ack"),
                ("queue-batch", "pyqueue.Queue get_many")]) for c in (1, 2)]
    cases += [(f"stream-{wk}", stream_run, wk, 500_000 // scale,
               [("stream", "StreamProcessor (acked)"), ("queue", "processes on pyqueue.Queue"),
                ("pool", "mp.Pool.imap_unordered")]) for wk in (1, 2, 4)]
    cases += [("stream-cpu-2", stream_cpu_run, 2, 4_000 // scale,
               [("stream", "StreamProcessor (acked)"), ("pool", "mp.Pool.imap_unordered")])]
    cases += [("stream-idle", stream_idle_run, 1, SAMPLES // scale,
               [("stream", "StreamProcessor, Queue sink"), ("pool", "mp.Pool.apply_async")])]
    cases += [("pool-map-2", pool_map_run, 2, args.pool_n // scale,
               [("pyqueue-pool", "pyqueue.Pool.map"), ("mp-pool", "mp.Pool.map (best chunk)"),
                ("executor", "ProcessPoolExecutor.map (best)")])]
    cases = [c for c in cases if args.only in c[0]]
    for cid, fn, k, n, impls in cases:
        res = {}
        for kind, label in impls:
            rates = [fn(ctx, kind, n, k) for _ in range(repeat)]
            if cid == "stream-idle":    # (p50, p99) pairs: the median of each
                med = tuple(statistics.median(r[i] for r in rates) for i in (0, 1))
                res[kind] = (label, med, rates)
                print(f"  {cid:12} {label:30} p50 {med[0]:8,.0f} us  p99 {med[1]:8,.0f} us",
                      file=sys.stderr)
                continue
            res[kind] = (label, statistics.median(rates), rates)
            print(f"  {cid:12} {label:30} {statistics.median(rates):12,.0f} msg/s",
                  file=sys.stderr)
        rows.append((cid, n, res))
    print(f"machine: {machine_info().get('cpu_model', '?')}, {os.cpu_count()} CPUs; "
          f"medians of {repeat}; (Nx) = ratio to plain pyqueue.Queue (get, or get_many for "
          f"batch-*; pool-map-*, stream-cpu-*: to multiprocessing.Pool) in this run")
    for cid, n, res in rows:
        if cid == "stream-idle":
            print(f"{cid:12} " + "  ".join(
                f"{label}: p50 {p50:,.0f} us, p99 {p99:,.0f} us"
                for label, (p50, p99), _ in res.values()))
            continue
        base = res[next(k for k in ("queue-batch", "queue", "mp-pool", "pool") if k in res)][1]
        cells = "  ".join(f"{label}: {fmt_count(rate)} msg/s ({fmt_ratio(rate / base)})"
                          for label, rate, _ in res.values())
        print(f"{cid:12} {cells}")
        if cid.startswith("pool-map") and POOL_CPU:
            base_cpu = statistics.median(POOL_CPU.get("mp-pool", [0.0]))
            print(f"{'':12} CPU per 1M items (this process + its workers, the run "
                  f"whose rate is above): " + "  ".join(
                      f"{res[k][0]}: {statistics.median(v) * 1e9:,.0f} ms"
                      + (f" ({statistics.median(v) / base_cpu:.2f}x mp.Pool's)"
                         if base_cpu and k != "mp-pool" else "")
                      for k, v in POOL_CPU.items() if k in res))
            floor = pool_map_floor(n)
            # (the workers and the pool's own process: no more cores than
            # that work at once)
            cores = min(len(os.sched_getaffinity(0)), int(cid.rsplit("-", 1)[1]) + 1)
            print(f"{'':12} floor (fn on each item, each chunk's result pickled, "
                  f"unpickled and put in the list, in one process): "
                  f"{floor * 1e9:,.0f} ms per 1M items; on "
                  f"{cores} cores no pool that pickles its results maps faster than "
                  f"{fmt_count(cores / floor)} items/s "
                  f"({fmt_ratio(cores / floor / base)} mp.Pool's rate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
