"""Repair latency: how long a consumer blocked behind a dead producer's
record waits for the next message.

Each round: a producer process stops itself right after its claim (fault
point ``after_claim``), a message is put behind its record, a consumer
(a thread of this process) blocks in ``get()``, and after a random delay
(0-200 ms, so that the kill lands anywhere in the consumer's 100 ms park
slice) the producer is SIGKILLed. Measured: from the kill to the consumer
having the message. The design bounds it by one slice plus a /proc read.

Needs a build with fault injection:

    PYQUEUE_FAULT_INJECTION=1 pip install -e .
    python -m bench.repair_latency [--kills 20] [--start-method fork]
"""
import argparse
import multiprocessing
import os
import random
import signal
import statistics
import sys
import threading
import time


def _stop_after_claim(q):
    os.environ["PYQUEUE_FAULT"] = "after_claim"
    q.put(b"victim" * 100)


def _state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _wait(pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    ev = threading.Event()
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("waited more than %.0f s" % timeout)
        ev.wait(0.001)


def one_round(ctx, q, rng):
    p = ctx.Process(target=_stop_after_claim, args=(q,), daemon=True)
    p.start()
    try:
        _wait(lambda: _state(p.pid) == "T" or p.exitcode is not None)
        if _state(p.pid) != "T":
            raise RuntimeError("the producer did not stop at after_claim")
        q.put(b"next")
        got = []
        t = threading.Thread(target=lambda: got.append((q.get(timeout=30), time.monotonic())))
        t.start()
        _wait(lambda: q.stats()["waiting_consumers"] >= 1)
        threading.Event().wait(rng.uniform(0.0, 0.2))
        killed = time.monotonic()
        os.kill(p.pid, signal.SIGKILL)
        t.join(30)
    finally:
        if p.exitcode is None:
            p.kill()
        p.join(30)
    (item, at), = got
    assert item == b"next", item
    return at - killed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--start-method", default="fork")
    ap.add_argument("--seed", default="repair")
    args = ap.parse_args(argv)

    import pyqueue
    from pyqueue import _core

    if not _core.FAULT_INJECTION:
        print("pyqueue was built without fault injection: rebuild with "
              "PYQUEUE_FAULT_INJECTION=1 pip install -e .", file=sys.stderr)
        return 2
    ctx = multiprocessing.get_context(args.start_method)
    rng = random.Random(args.seed)
    q = pyqueue.Queue(capacity_bytes=1 << 20)
    try:
        samples = [one_round(ctx, q, rng) for _ in range(args.kills)]
        assert q.stats()["abandoned"] == args.kills
    finally:
        q.unlink()
    ms = sorted(s * 1e3 for s in samples)
    p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
    print("repair latency over %d kills (%s): median %.1f ms, p99 %.1f ms, min %.1f ms, "
          "max %.1f ms" % (len(ms), args.start_method, statistics.median(ms), p99, ms[0], ms[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
