"""Time to create (and close) a queue: pyqueue.Queue() at its default ring,
at 1 MiB and at 32 MiB, and multiprocessing.Queue(), in one run. Prints
median and p90 per case, in ms, and the /dev/shm a new queue of each
pyqueue case holds (its segment's allocated blocks: a ring is backed
lazily, docs/design.md "Footprint").

    python -m bench.create_time [--n 200]
"""
import argparse
import multiprocessing
import os
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


def _held(make):
    q = make()
    try:
        return os.stat(os.path.join("/dev/shm", "pyqueue." + q.name)).st_blocks * 512
    finally:
        q.close()


def main():
    ap = argparse.ArgumentParser(prog="python -m bench.create_time")
    ap.add_argument("--n", type=int, default=200, help="creations per case (default 200)")
    args = ap.parse_args()
    pyqueue.Queue().close()            # imports and exit hooks out of the way
    cases = [
        ("pyqueue.Queue()", pyqueue.Queue, pyqueue.Queue().capacity_bytes),
        ("pyqueue.Queue(capacity_bytes=1 MiB)",
         lambda: pyqueue.Queue(capacity_bytes=1 << 20), 1 << 20),
        ("pyqueue.Queue(capacity_bytes=32 MiB)",
         lambda: pyqueue.Queue(capacity_bytes=32 << 20), 32 << 20),
        ("multiprocessing.Queue()", multiprocessing.Queue, None),
    ]
    for label, make, cap in cases:
        med, p90 = _time(make, args.n)
        shm = f"{_held(make) / 2**20:.2f} MiB of /dev/shm" if cap else ""
        print(f"{label:40s} median {med:7.3f} ms  p90 {p90:7.3f} ms  {shm}")


if __name__ == "__main__":
    main()
