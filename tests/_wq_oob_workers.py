"""Child-process targets of tests/test_workqueue_oob.py (module level, so
that processes started with ``spawn`` can import them)."""
import time

import numpy as np


def consume_array_and_ack(q, out):
    """Get one array, report (sum, writable, delivery count), ack it."""
    d = q.get(timeout=60)
    a = d.value
    out.put((float(a.sum()), bool(a.flags.writeable), d.delivery_count))
    d.ack()
    out.put("acked")


def hold_array_then_hang(q, out):
    """Get one array, report its sum, settle nothing; hang (killed)."""
    d = q.get(timeout=60)
    out.put(float(d.value.sum()))
    time.sleep(120)  # killed in here


def put_array_and_exit(q, n):
    q.put(np.arange(n, dtype=np.float64))


def make_orphan_and_exit(q):
    """What a producer SIGKILLed between writing a segment and putting its
    reference leaves: a segment no record names."""
    from pyqueue import _oob
    _oob.put(q, [b"orphan"], 6)
