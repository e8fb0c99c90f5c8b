"""Async put->get latency and throughput of pyqueue.asyncio, in one run
with its baselines.

    python -m bench.async_compare [--quick] [--json PATH] [--redis URL]

Cases (64-byte bytes messages; the consumer is a coroutine in this
process; the producer another process unless said):

  pyqueue.asyncio    pyqueue.asyncio.Queue.get, the producer a sync Queue.put
                     (the loop's io_uring waits where the kernel has them)
  pyqueue.asyncio thread
                     the same with PYQUEUE_AIO_WAIT=thread: the waiter
                     thread, what a kernel before 6.7 gets
  pyqueue sync       the same queue read with the blocking Queue.get (the
                     sync API the asyncio one is held against: within 2x)
  asyncio.Queue      both coroutines in one process (no process boundary)
  mp.Queue+executor  multiprocessing.Queue.get in loop.run_in_executor
  aioprocessing      aioprocessing.AioQueue.coro_get (if installed)
  zmq.asyncio ipc    pyzmq PUSH (sync, other process) -> PULL (zmq.asyncio)
                     over ipc:// (if pyzmq is installed)
  redis asyncio      (with --redis URL) pyqueue.asyncio on the Redis backend
                     (redis.asyncio), the producer a sync Redis Queue.put
  redis sync         the same Redis queue read with the blocking get
                     (Redis cases: a tenth of the messages, no get_many;
                     their throughput is of the gets alone: the queue is
                     filled with put_many first, as a one-at-a-time
                     producer is slower than either get)

Latency: one message at a time - the producer sends its CLOCK_MONOTONIC
time, the consumer (waiting, so each sample is a wake-up) records arrival
minus send and answers on a second channel, and the producer sends the
next GAP_S (0.2 ms) after that answer, so that the consumer is parked
when it comes (each sample is a wake-up): p50 and p99 of the one-way
time. Throughput: the
producer sends N messages as fast as it can; messages per second from the
consumer's first to its last, and for pyqueue also with get_many(1024)
(the consumer's batches). Each case runs --repeat times (3), the cases
interleaved; the table shows the medians.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import queue as _queue
import statistics
import struct
import sys
import tempfile
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional

PAYLOAD = 64
_now = time.monotonic_ns


def _msg(ts: int) -> bytes:
    return struct.pack("<q", ts) + bytes(PAYLOAD - 8)


def _ts(m: bytes) -> int:
    return int(struct.unpack_from("<q", m)[0])


def _pcts(lat_ns: List[int]) -> Dict[str, float]:
    s = sorted(lat_ns)
    return {"p50_us": s[len(s) // 2] / 1e3, "p99_us": s[int(len(s) * 0.99)] / 1e3,
            "mean_us": statistics.fmean(s) / 1e3}


async def _latencies(get: Callable[[], Awaitable[bytes]], ack: Callable[[], Awaitable[Any]],
                     n: int) -> List[int]:
    """The one-way times (ns) of n messages from get(), each answered with
    ack() (the producer sends the next one after it)."""
    out = []
    for _ in range(n):
        m = await get()
        out.append(_now() - _ts(m))
        await ack()
    return out


async def _rate(get: Callable[[], Awaitable[Any]], n: int) -> float:
    """Messages per second of n from get(), timed from the first one's
    arrival (before it, the producer is starting)."""
    await get()
    t0 = _now()
    for _ in range(n - 1):
        await get()
    return (n - 1) / ((_now() - t0) / 1e9)


# ---------------------------------------------------------------- producers
# (module level: the spawn start method imports them)

GAP_S = 0.0002  # between latency samples: the consumer is waiting (parked) when one comes


def _pq_lat_producer(q: Any, acks: Any, n: int, gap: float) -> None:
    for _ in range(n):
        time.sleep(gap)
        q.put(_msg(_now()))
        acks.get()


def _pq_tput_producer(q: Any, n: int) -> None:
    m = _msg(0)
    for _ in range(n):
        q.put(m)


def _zmq_lat_producer(addr: str, ack_addr: str, n: int, gap: float) -> None:
    import zmq
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.connect(addr)
    a = ctx.socket(zmq.PULL)
    a.bind(ack_addr)
    a.recv()  # the consumer is connected
    for _ in range(n):
        time.sleep(gap)
        s.send(_msg(_now()))
        a.recv()
    s.close(linger=1000)
    a.close()
    ctx.term()


def _zmq_tput_producer(addr: str, ack_addr: str, n: int, gap: float) -> None:
    import zmq
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.connect(addr)
    a = ctx.socket(zmq.PULL)
    a.bind(ack_addr)
    a.recv()
    m = _msg(0)
    for _ in range(n):
        s.send(m)
    a.recv()  # all received
    s.close(linger=1000)
    a.close()
    ctx.term()


# ---------------------------------------------------------------- cases

def _start(ctx: Any, target: Callable[..., None], *args: Any) -> Any:
    p = ctx.Process(target=target, args=args, daemon=True)
    p.start()
    return p


def case_pyqueue_async(ctx: Any, n_lat: int, n_tput: int, mode: str = "auto") -> Dict[str, Any]:
    import pyqueue
    import pyqueue.asyncio as aq
    from pyqueue import _aio
    q, acks = aq.Queue(), pyqueue.Queue()
    saved, _aio.WAIT_MODE = _aio.WAIT_MODE, mode

    async def ack() -> None:
        acks.put(None)

    try:
        p = _start(ctx, _pq_lat_producer, q.sync, acks, n_lat, GAP_S)
        res = _pcts(asyncio.run(_latencies(q.get, ack, n_lat)))
        p.join()
        p = _start(ctx, _pq_tput_producer, q.sync, n_tput)
        res["msgs_per_s"] = asyncio.run(_rate(q.get, n_tput))
        p.join()

        async def batches() -> float:
            got = len(await q.get_many(1024))
            t0 = _now()
            while got < n_tput:
                got += len(await q.get_many(1024))
            return n_tput / ((_now() - t0) / 1e9)

        p = _start(ctx, _pq_tput_producer, q.sync, n_tput)
        res["batch_msgs_per_s"] = asyncio.run(batches())
        p.join()
        return res
    finally:
        _aio.WAIT_MODE = saved
        for h in (q, acks):
            h.close()
            h.unlink()


def case_pyqueue_async_thread(ctx: Any, n_lat: int, n_tput: int) -> Dict[str, Any]:
    return case_pyqueue_async(ctx, n_lat, n_tput, "thread")


def case_pyqueue_sync(ctx: Any, n_lat: int, n_tput: int) -> Dict[str, Any]:
    import pyqueue
    q, acks = pyqueue.Queue(), pyqueue.Queue()
    try:
        p = _start(ctx, _pq_lat_producer, q, acks, n_lat, GAP_S)
        lat = []
        for _ in range(n_lat):
            m = q.get()
            lat.append(_now() - _ts(m))
            acks.put(None)
        p.join()
        res = _pcts(lat)
        p = _start(ctx, _pq_tput_producer, q, n_tput)
        q.get()
        t0 = _now()
        for _ in range(n_tput - 1):
            q.get()
        res["msgs_per_s"] = (n_tput - 1) / ((_now() - t0) / 1e9)
        p.join()
        p = _start(ctx, _pq_tput_producer, q, n_tput)
        got = len(q.get_many(1024))
        t0 = _now()
        while got < n_tput:
            got += len(q.get_many(1024))
        res["batch_msgs_per_s"] = n_tput / ((_now() - t0) / 1e9)
        p.join()
        return res
    finally:
        for h in (q, acks):
            h.close()
            h.unlink()


def case_asyncio_queue(ctx: Any, n_lat: int, n_tput: int) -> Dict[str, Any]:
    async def lat() -> List[int]:
        q: asyncio.Queue[bytes] = asyncio.Queue()
        acks: asyncio.Queue[None] = asyncio.Queue()
        out: List[int] = []

        async def producer() -> None:
            for _ in range(n_lat):
                await asyncio.sleep(GAP_S)
                await q.put(_msg(_now()))
                await acks.get()

        async def consumer() -> None:
            for _ in range(n_lat):
                m = await q.get()
                out.append(_now() - _ts(m))
                await acks.put(None)

        await asyncio.gather(producer(), consumer())
        return out

    async def tput() -> float:
        q: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1000)
        m = _msg(0)

        async def producer() -> None:
            for _ in range(n_tput):
                await q.put(m)

        t0 = _now()
        task = asyncio.ensure_future(producer())
        for _ in range(n_tput):
            await q.get()
        await task
        return n_tput / ((_now() - t0) / 1e9)

    res = _pcts(asyncio.run(lat()))
    res["msgs_per_s"] = asyncio.run(tput())
    return res


def case_mp_executor(ctx: Any, n_lat: int, n_tput: int) -> Dict[str, Any]:
    q, acks = ctx.Queue(), ctx.Queue()

    def get() -> Awaitable[bytes]:
        return asyncio.get_running_loop().run_in_executor(None, q.get)

    async def ack() -> None:
        acks.put(None)

    p = _start(ctx, _pq_lat_producer, q, acks, n_lat, GAP_S)
    res = _pcts(asyncio.run(_latencies(get, ack, n_lat)))
    p.join()
    p = _start(ctx, _pq_tput_producer, q, n_tput)
    res["msgs_per_s"] = asyncio.run(_rate(get, n_tput))
    p.join()
    return res


def case_aioprocessing(ctx: Any, n_lat: int, n_tput: int) -> Optional[Dict[str, Any]]:
    try:
        import aioprocessing
    except ImportError:
        return None
    q, acks = aioprocessing.AioQueue(), aioprocessing.AioQueue()

    async def ack() -> None:
        acks.put(None)

    p = _start(ctx, _pq_lat_producer, q, acks, n_lat, GAP_S)
    res = _pcts(asyncio.run(_latencies(q.coro_get, ack, n_lat)))
    p.join()
    p = _start(ctx, _pq_tput_producer, q, n_tput)
    res["msgs_per_s"] = asyncio.run(_rate(q.coro_get, n_tput))
    p.join()
    return res


def case_zmq(ctx: Any, n_lat: int, n_tput: int) -> Optional[Dict[str, Any]]:
    try:
        import zmq
        import zmq.asyncio
    except ImportError:
        return None
    d = tempfile.mkdtemp(prefix="pq-azmq-")
    addr, ack_addr = f"ipc://{d}/data", f"ipc://{d}/ack"
    try:
        async def run(target: Callable[..., None], n: int, latency: bool) -> Any:
            zctx = zmq.asyncio.Context()
            s = zctx.socket(zmq.PULL)
            s.bind(addr)
            a = zctx.socket(zmq.PUSH)
            p = _start(ctx, target, addr, ack_addr, n, GAP_S)
            a.connect(ack_addr)
            await a.send(b"ready")
            try:
                if latency:
                    return await _latencies(s.recv, lambda: a.send(b""), n)
                rate = await _rate(s.recv, n)
                await a.send(b"done")
                return rate
            finally:
                await asyncio.get_running_loop().run_in_executor(None, p.join)
                s.close(linger=0)
                a.close(linger=1000)
                zctx.term()

        res = _pcts(asyncio.run(run(_zmq_lat_producer, n_lat, True)))
        res["msgs_per_s"] = asyncio.run(run(_zmq_tput_producer, n_tput, False))
        return res
    finally:
        for f in os.listdir(d):
            os.unlink(os.path.join(d, f))
        os.rmdir(d)


REDIS_URL: Optional[str] = None


def _redis_case(use_async: bool, ctx: Any, n_lat: int, n_tput: int) -> Optional[Dict[str, Any]]:
    if REDIS_URL is None:
        return None
    import uuid

    import pyqueue.asyncio as aq
    b = aq.connect(REDIS_URL)
    tag = uuid.uuid4().hex[:8]
    q, acks = b.Queue(name=f"bench-async-{tag}"), b.sync.Queue(name=f"bench-acks-{tag}")
    try:
        if use_async:
            async def lat() -> List[int]:
                out = []
                for _ in range(n_lat):
                    m = await q.get()
                    out.append(_now() - _ts(m))
                    acks.put(None)
                return out

            async def tput() -> float:
                await q.get()
                t0 = _now()
                for _ in range(n_tput - 1):
                    await q.get()
                return (n_tput - 1) / ((_now() - t0) / 1e9)

            p = _start(ctx, _pq_lat_producer, q.sync, acks, n_lat, GAP_S)
            res = _pcts(asyncio.run(lat()))
            p.join()
            q.sync.put_many([_msg(0)] * n_tput)    # the gets alone (no producer's pace)
            res["msgs_per_s"] = asyncio.run(tput())
            return res
        h = q.sync
        p = _start(ctx, _pq_lat_producer, h, acks, n_lat, GAP_S)
        samples = []
        for _ in range(n_lat):
            m = h.get()
            samples.append(_now() - _ts(m))
            acks.put(None)
        p.join()
        res = _pcts(samples)
        h.put_many([_msg(0)] * n_tput)
        h.get()
        t0 = _now()
        for _ in range(n_tput - 1):
            h.get()
        res["msgs_per_s"] = (n_tput - 1) / ((_now() - t0) / 1e9)
        return res
    finally:
        q.close()
        q.sync.unlink()
        acks.close()
        acks.unlink()


def case_redis_async(ctx: Any, n_lat: int, n_tput: int) -> Optional[Dict[str, Any]]:
    return _redis_case(True, ctx, n_lat, n_tput)


def case_redis_sync(ctx: Any, n_lat: int, n_tput: int) -> Optional[Dict[str, Any]]:
    return _redis_case(False, ctx, n_lat, n_tput)


CASES = [
    ("pyqueue.asyncio", case_pyqueue_async),
    ("pyqueue.asyncio thread", case_pyqueue_async_thread),
    ("pyqueue sync", case_pyqueue_sync),
    ("asyncio.Queue (1 process)", case_asyncio_queue),
    ("mp.Queue+run_in_executor", case_mp_executor),
    ("aioprocessing.AioQueue", case_aioprocessing),
    ("zmq.asyncio ipc", case_zmq),
    ("redis asyncio", case_redis_async),
    ("redis sync", case_redis_sync),
]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts (CI smoke)")
    ap.add_argument("--latency-samples", type=int, default=5000)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--start-method", default="fork")
    ap.add_argument("--gap-us", type=float, default=200.0,
                    help="producer pause before each latency sample")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of every case (interleaved); the median is shown")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--redis", metavar="URL",
                    help="also the Redis cases, on this server (redis://..., redis+unix://...)")
    args = ap.parse_args(argv)
    global GAP_S, REDIS_URL
    REDIS_URL = args.redis
    GAP_S = args.gap_us / 1e6
    n_lat, n_tput = (200, 2000) if args.quick else (args.latency_samples, args.messages)
    repeat = 1 if args.quick else max(1, args.repeat)
    ctx = mp.get_context(args.start_method)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}, start method {args.start_method}, "
          f"{PAYLOAD}-byte messages, {n_lat} latency samples, {n_tput} messages, "
          f"median of {repeat} runs")
    print(f"{'case':28} {'p50 us':>9} {'p99 us':>9} {'msgs/s':>11} {'get_many msgs/s':>16}")
    runs: Dict[str, List[Dict[str, float]]] = {}
    skipped = []
    for _ in range(repeat):  # the cases interleaved: a change of load hits all alike
        for name, fn in CASES:
            # mp.Queue through an executor is slow: fewer messages
            slow = ("executor", "aioproc", "redis")
            n = n_tput if not any(w in name for w in slow) else max(2, n_tput // 10)
            r = fn(ctx, n_lat, n)
            if r is None:
                if name not in skipped:
                    skipped.append(name)
                continue
            runs.setdefault(name, []).append(r)
    results: Dict[str, Any] = {}
    for name, rs in runs.items():
        r = {k: statistics.median(x[k] for x in rs) for k in rs[0]}
        results[name] = r
        batch = f"{r['batch_msgs_per_s']:16,.0f}" if "batch_msgs_per_s" in r else f"{'-':>16}"
        print(f"{name:28} {r['p50_us']:9.1f} {r['p99_us']:9.1f} {r['msgs_per_s']:11,.0f} {batch}")
    for name in skipped:
        print(f"{name:28} (not installed, or no --redis: skipped)")
    a, s = results.get("pyqueue.asyncio"), results.get("pyqueue sync")
    if a and s:
        print(f"pyqueue.asyncio throughput / sync: {a['msgs_per_s'] / s['msgs_per_s']:.2f} "
              f"(get), {a['batch_msgs_per_s'] / s['batch_msgs_per_s']:.2f} (get_many)")
    a, s = results.get("redis asyncio"), results.get("redis sync")
    if a and s:
        print(f"redis asyncio throughput / redis sync: {a['msgs_per_s'] / s['msgs_per_s']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
