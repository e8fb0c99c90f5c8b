"""Time to create (and close) a queue: pyqueue.Queue() at its default ring,
at 32 MiB (the default before issue 9), and multiprocessing.Queue(), in one
run. Prints median and p90 per case, in ms, and the /dev/shm each pyqueue
case reserves.

    python -m bench.create_time [--n 200]
"""
import argparse
import multiprocessing
import statistics
import time

import pyqueue


def _time(make, n):
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        q = make()
        samples.append(time.perf_counter() - t0)
        q.close()
        del q
    samples.sort()
    return statistics.median(samples) * 1e3, samples[int(len(samples) * 0.9)] * 1e3


def main():
    ap = argparse.ArgumentParser(prog="python -m bench.create_time")
    ap.add_argument("--n", type=int, default=200, help="creations per case (default 200)")
    args = ap.parse_args()
    pyqueue.Queue().close()            # imports and exit hooks out of the way
    cases = [
        ("pyqueue.Queue()", pyqueue.Queue, pyqueue.Queue().capacity_bytes),
        ("pyqueue.Queue(capacity_bytes=32 MiB)",
         lambda: pyqueue.Queue(capacity_bytes=32 << 20), 32 << 20),
        ("multiprocessing.Queue()", multiprocessing.Queue, None),
    ]
    for label, make, cap in cases:
        n = args.n if cap is None or cap <= (1 << 20) else max(args.n // 10, 10)
        med, p90 = _time(make, n)
        shm = f"{(cap + 4096) / 2**20:.2f} MiB of /dev/shm" if cap else ""
        print(f"{label:40s} median {med:7.3f} ms  p90 {p90:7.3f} ms  {shm}")


if __name__ == "__main__":
    main()
