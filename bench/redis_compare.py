"""pyqueue on Redis against hand-written redis-py doing the same thing, and
the shared-memory backend, in one run (one process: every case is bound by
round trips to the server).

Run from the repository root::

    python -m bench.redis_compare                     # starts its own redis-server (Unix socket)
    python -m bench.redis_compare --url redis://localhost:6379/0
    python -m bench.redis_compare --quick             # small counts, 1 repeat

Cases (rates in messages or records per second; medians of the repeats):
  queue-1       put one, get one, N times: Queue(backend) vs redis-py
                RPUSH + LPOP vs pyqueue.Queue (shared memory)
  queue-batch   put_many + get_many of 1000 at a time vs redis-py
                RPUSH of 1000 values + LPOP 1000 vs shared memory
  work-1        put, get, ack one at a time: WorkQueue(backend) vs redis-py
                XADD + XREADGROUP + XACK vs pyqueue.WorkQueue
  work-batch    put_many of 1000, get_many(1000) + Batch.ack(): WorkQueue(backend)
                vs redis-py (a pipeline of 1000 XADD, XREADGROUP COUNT 1000,
                XACK of 1000 ids) vs shared memory; "pyqueue-1": the same
                WorkQueue one message at a time (put, get, ack), same run
  log-batch     append_many of 1000 records vs a redis-py pipeline of 1000
                XADD vs pyqueue.Log (memory mode)
  latency       put -> get round trip, p50 / p99 in microseconds
  log-cluster   a Log of 12 partitions, --producers processes each calling
                append_many(1000 records) (round-robin over the partitions)
                vs the same processes each sending a redis-py pipeline of
                1000 XADD to one of 12 streams in turn; on one redis-server
                (TCP on loopback) and on a 3-master Redis Cluster (no
                replicas) started here, in the same run
  min-replicas  queue-1 and work-1 (pyqueue) on a server with one replica
                (TCP on loopback), without and with ?min_replicas=1 (a WAIT
                after each step), the two alternating in slices of 1/10
Ratios are to hand-written redis-py in the same run (log-cluster: also
cluster to one server; min-replicas: to min_replicas=0). The last two
start their own servers (not with --url).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import multiprocessing
import pyqueue

PAYLOAD = b"x" * 64
PARTITIONS = 12


def _start_server():
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server is not installed (apt-get install redis-server), or give --url")
    d = tempfile.mkdtemp(prefix="pq-bench-redis-")
    sock = os.path.join(d, "redis.sock")
    p = subprocess.Popen([exe, "--port", "0", "--unixsocket", sock, "--save", "", "--appendonly",
                          "no", "--dir", d, "--loglevel", "warning"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis
    r = redis.Redis(unix_socket_path=sock)
    deadline = time.monotonic() + 10
    while True:
        try:
            r.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                p.kill()
                sys.exit("redis-server did not start")
            time.sleep(0.01)
    r.close()
    return p, d, f"redis+unix://{sock}"


def _raw_client(backend):
    return backend.client


def timed(fn, n):
    t0 = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - t0)


def case_queue_1(b, shm, n):
    q = b.Queue(name="bench-q1")
    r = _raw_client(b)
    key = "bench:raw:q1"

    def pyq(n):
        for _ in range(n):
            q.put(PAYLOAD)
            q.get()

    def raw(n):
        for _ in range(n):
            r.rpush(key, PAYLOAD)
            r.lpop(key)

    sq = shm.Queue()

    def shmq(n):
        for _ in range(n):
            sq.put(PAYLOAD)
            sq.get()

    try:
        return {"pyqueue": timed(pyq, n), "redis-py": timed(raw, n), "shm": timed(shmq, n * 10)}
    finally:
        q.unlink()
        r.delete(key)
        sq.close()


def case_queue_batch(b, shm, n):
    q = b.Queue(name="bench-qb")
    r = _raw_client(b)
    key = "bench:raw:qb"
    batch = [PAYLOAD] * 1000

    def pyq(n):
        for _ in range(n // 1000):
            q.put_many(batch)
            q.get_many(1000)

    def raw(n):
        for _ in range(n // 1000):
            r.rpush(key, *batch)
            r.lpop(key, 1000)

    sq = shm.Queue()

    def shmq(n):
        for _ in range(n // 1000):
            sq.put_many(batch)
            sq.get_many(1000)

    try:
        return {"pyqueue": timed(pyq, n), "redis-py": timed(raw, n),
                "shm": timed(shmq, n * 10)}
    finally:
        q.unlink()
        r.delete(key)
        sq.close()


def case_work_1(b, shm, n):
    wq = b.WorkQueue("bench-w1")
    r = _raw_client(b)
    key = "bench:raw:w1"
    r.xgroup_create(key, "g", id="0", mkstream=True)

    def pyq(n):
        for _ in range(n):
            wq.put(PAYLOAD)
            wq.get().ack()

    def raw(n):
        for _ in range(n):
            r.xadd(key, {"d": PAYLOAD})
            got = r.xreadgroup("g", "c", {key: ">"}, count=1)
            r.xack(key, "g", got[0][1][0][0])

    sw = shm.WorkQueue()

    def shmq(n):
        for _ in range(n):
            sw.put(PAYLOAD)
            sw.get().ack()

    try:
        return {"pyqueue": timed(pyq, n), "redis-py": timed(raw, n), "shm": timed(shmq, n * 10)}
    finally:
        wq.unlink()
        r.delete(key)
        sw.close()


def case_work_batch(b, shm, n):
    wq = b.WorkQueue("bench-wb")
    r = _raw_client(b)
    key = "bench:raw:wb"
    r.xgroup_create(key, "g", id="0", mkstream=True)
    batch = [PAYLOAD] * 1000

    def pyq(n):
        for _ in range(n // 1000):
            wq.put_many(batch)
            wq.get_many(1000).ack()

    def pyq_each(n):
        for _ in range(n):
            wq.put(PAYLOAD)
            wq.get().ack()

    def raw(n):
        for _ in range(n // 1000):
            pipe = r.pipeline(transaction=False)
            for m in batch:
                pipe.xadd(key, {"d": m})
            pipe.execute()
            got = r.xreadgroup("g", "c", {key: ">"}, count=1000)
            r.xack(key, "g", *[mid for mid, _ in got[0][1]])

    sw = shm.WorkQueue()

    def shmq(n):
        for _ in range(n // 1000):
            sw.put_many(batch)
            sw.get_many(1000).ack()

    try:
        return {"pyqueue": timed(pyq, n), "pyqueue-1": timed(pyq_each, max(100, n // 100)),
                "redis-py": timed(raw, n), "shm": timed(shmq, n * 10)}
    finally:
        wq.unlink()
        r.delete(key)
        sw.close()


def case_log_batch(b, shm, n):
    log = b.Log("bench-log", partitions=1, retention_bytes=256 * 1024 * 1024)
    r = _raw_client(b)
    key = "bench:raw:log"
    batch = [PAYLOAD] * 1000

    def pyq(n):
        for _ in range(n // 1000):
            log.append_many(batch)

    def raw(n):
        for _ in range(n // 1000):
            pipe = r.pipeline(transaction=False)
            for m in batch:
                pipe.xadd(key, {"v": m})
            pipe.execute()

    sl = shm.Log(partitions=1, retention_bytes=64 * 1024 * 1024)

    def shml(n):
        for _ in range(n // 1000):
            sl.append_many(batch)

    try:
        return {"pyqueue": timed(pyq, n), "redis-py": timed(raw, n), "shm": timed(shml, n * 10)}
    finally:
        log.unlink()
        r.delete(key)
        sl.close()


def case_latency(b, shm, n):
    q = b.Queue(name="bench-lat")
    r = _raw_client(b)
    key = "bench:raw:lat"

    def lat(put, get):
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            put(PAYLOAD)
            get()
            out.append((time.perf_counter() - t0) * 1e6)
        out.sort()
        return out[len(out) // 2], out[int(len(out) * 0.99)]

    try:
        return {"pyqueue": lat(q.put, q.get),
                "redis-py": lat(lambda m: r.rpush(key, m), lambda: r.lpop(key))}
    finally:
        q.unlink()
        r.delete(key)


def _log_producer(url, name, impl, batches, first, barrier, out):
    # One producer process: batches of 1000 records, round-robin over the
    # partitions from `first`; (start, end) of its loop, time.monotonic().
    b = pyqueue.connect(url)
    batch = [PAYLOAD] * 1000
    if impl == "pyqueue":
        log = b.Log.open(name)
        log._rr_pid, log._rr = os.getpid(), first     # (its round-robin start)

        def step(i):
            log.append_many(batch)
    else:
        r = b.client
        keys = [f"bench:{{{name}/{p}}}:raw" for p in range(PARTITIONS)]

        def step(i):
            pipe = r.pipeline(transaction=False)
            key = keys[(first + i) % PARTITIONS]
            for m in batch:
                pipe.xadd(key, {"v": m})
            pipe.execute()
    barrier.wait()
    t0 = time.monotonic()
    for i in range(batches):
        step(i)
    out.put((t0, time.monotonic()))


def log_many(url, impl, producers, records, tag):
    """Records per second of `producers` processes appending to a Log of
    12 partitions (impl "pyqueue") or pipelining XADD to 12 streams
    ("redis-py"), from the first start to the last end."""
    ctx = multiprocessing.get_context("spawn")
    name = f"bench-lc-{tag}-{os.getpid()}"
    b = pyqueue.connect(url)
    log = b.Log(name, partitions=PARTITIONS, retention_bytes=256 * 1024 * 1024)
    batches = max(1, records // 1000 // producers)
    barrier, out = ctx.Barrier(producers), ctx.Queue()
    procs = [ctx.Process(target=_log_producer,
                         args=(url, name, impl, batches, i * PARTITIONS // producers, barrier,
                               out))
             for i in range(producers)]
    try:
        for p in procs:
            p.start()
        spans = [out.get(timeout=600) for _ in procs]
        for p in procs:
            p.join(60)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        log.unlink()
        c = b.client
        for p in range(PARTITIONS):
            c.delete(f"bench:{{{name}/{p}}}:raw")
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    return batches * 1000 * producers / wall


def case_log_cluster(one_url, cluster_url, producers, records, repeat):
    runs = []
    for i in range(repeat):
        runs.append({(where, impl): log_many(url, impl, producers, records, f"{i}{impl[0]}")
                     for where, url in (("one", one_url), ("cluster", cluster_url))
                     for impl in ("pyqueue", "redis-py")})
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    for where in ("one", "cluster"):
        for impl in ("pyqueue", "redis-py"):
            rate = med[(where, impl)]
            print(f"log-cluster  {where:7s} {impl:9s} {rate:12,.0f} /s   "
                  f"{rate / med[(where, 'redis-py')]:6.2f}x redis-py   "
                  f"{rate / med[('one', impl)]:6.2f}x one server")


def case_min_replicas(url, n1, repeat):
    # The two settings alternate in slices of n1 / 10 operations, their
    # times summed: a change of the machine's load weighs on both alike.
    plain = pyqueue.connect(url)
    waited = pyqueue.connect(url + "?min_replicas=1&wait_timeout=1000")
    slices = 10
    runs = []
    for i in range(repeat):
        handles = {tag: (b.Queue(name=f"bench-mr-q-{tag}-{i}"),
                         b.WorkQueue(f"bench-mr-w-{tag}-{i}"))
                   for tag, b in (("0", plain), ("1", waited))}
        spent = {(case, tag): 0.0 for case in ("queue-1", "work-1") for tag in handles}
        try:
            for _ in range(slices):
                for tag, (q, wq) in handles.items():
                    t0 = time.perf_counter()
                    for _ in range(n1 // slices):
                        q.put(PAYLOAD)
                        q.get()
                    t1 = time.perf_counter()
                    for _ in range(n1 // slices):
                        wq.put(PAYLOAD)
                        wq.get().ack()
                    spent[("queue-1", tag)] += t1 - t0
                    spent[("work-1", tag)] += time.perf_counter() - t1
        finally:
            for q, wq in handles.values():
                q.unlink()
                wq.unlink()
        runs.append({k: slices * (n1 // slices) / v for k, v in spent.items()})
    for case in ("queue-1", "work-1"):
        base = statistics.median(r[(case, "0")] for r in runs)
        for tag in ("0", "1"):
            rate = statistics.median(r[(case, tag)] for r in runs)
            print(f"min-replicas {case:8s} min_replicas={tag} {rate:10,.0f} /s   "
                  f"{rate / base:6.2f}x min_replicas=0")


CASES = {"queue-1": case_queue_1, "queue-batch": case_queue_batch, "work-1": case_work_1,
         "work-batch": case_work_batch, "log-batch": case_log_batch, "latency": case_latency}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.redis_compare",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="a Redis URL (default: start a redis-server here)")
    ap.add_argument("--quick", action="store_true", help="small counts, 1 repeat")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", help="comma-separated case names")
    ap.add_argument("--producers", type=int, default=4,
                    help="log-cluster's producer processes (default 4)")
    args = ap.parse_args(argv)
    n1, nb = (500, 20_000) if args.quick else (5000, 200_000)
    repeat = 1 if args.quick else args.repeat
    server = None
    url = args.url
    if url is None:
        server, d, url = _start_server()
    try:
        b = pyqueue.connect(url)
        shm = pyqueue.connect("shm://")
        print(f"pyqueue on {url}; redis-server {b.client.info()['redis_version']}; "
              f"{os.cpu_count()} CPUs; medians of {repeat}")
        only = (set(args.only.split(",")) if args.only
                else set(CASES) | {"log-cluster", "min-replicas"})
        for name, fn in CASES.items():
            if name not in only:
                continue
            n = n1 if name in ("queue-1", "work-1", "latency") else nb
            runs = [fn(b, shm, n) for _ in range(repeat)]
            if name == "latency":
                for impl in runs[0]:
                    p50 = statistics.median(r[impl][0] for r in runs)
                    p99 = statistics.median(r[impl][1] for r in runs)
                    print(f"{name:12s} {impl:9s} p50 {p50:8.1f} us  p99 {p99:8.1f} us")
                continue
            med = {impl: statistics.median(r[impl] for r in runs) for impl in runs[0]}
            for impl, rate in med.items():
                print(f"{name:12s} {impl:9s} {rate:12,.0f} /s   {rate / med['redis-py']:6.2f}x "
                      "redis-py")
        if only & {"log-cluster", "min-replicas"} and args.url is not None:
            print("log-cluster, min-replicas: they start their own servers (not with --url)")
        elif only & {"log-cluster", "min-replicas"}:
            _own_servers(only, args, n1, nb, repeat)
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
            shutil.rmtree(d, ignore_errors=True)


def _own_servers(only, args, n1, nb, repeat):
    # tests/redis_support.py starts them (as the tests do): the same
    # readiness checks, and no server outlives this process.
    from tests import redis_support as rs
    if not rs.available():
        sys.exit("log-cluster and min-replicas need redis-server and redis-cli")
    d = tempfile.mkdtemp(prefix="pq-bench-redis-")
    servers = []
    try:
        if "log-cluster" in only:
            port = rs._free_ports(1)[0]
            os.makedirs(os.path.join(d, "one"))
            servers.append(rs.RedisServer(os.path.join(d, "one"), "--port", str(port),
                                          "--bind", "127.0.0.1"))
            cluster = rs.RedisCluster(os.path.join(d, "cluster"), replicas=0)
            servers.append(cluster)
            print(f"log-cluster: {args.producers} producer processes, {PARTITIONS} partitions; "
                  f"one server redis://127.0.0.1:{port}, cluster {cluster.url} (3 masters)")
            case_log_cluster(f"redis://127.0.0.1:{port}/0", cluster.url, args.producers,
                             nb * 2, repeat)
        if "min-replicas" in only:
            port = rs._free_ports(1)[0]
            for sub in ("master", "replica"):
                os.makedirs(os.path.join(d, sub))
            servers.append(rs.RedisServer(os.path.join(d, "master"), "--port", str(port),
                                          "--bind", "127.0.0.1"))
            replica = rs.RedisServer(os.path.join(d, "replica"), "--replicaof", "127.0.0.1",
                                     str(port))
            servers.append(replica)
            rs._wait_until("the replica's link up", lambda: "master_link_status:up" in rs._cli(
                "-s", replica.sock, "info", "replication").stdout, [replica.proc], [replica.log])
            print(f"min-replicas: master redis://127.0.0.1:{port}, one replica")
            case_min_replicas(f"redis://127.0.0.1:{port}/0", n1, repeat)
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
