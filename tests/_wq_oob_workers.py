"""Child-process targets of tests/test_workqueue_oob.py (module level, so
that processes started with ``spawn`` can import them)."""
import os
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


def get_with_no_address_space_left(q, out):
    """A get whose out-of-band segment (8 MiB) cannot be mapped here
    (ENOMEM: RLIMIT_AS set 2 MiB above what the process maps now):
    reports the errno of the OSError it raised."""
    from tests._support import address_space_left
    with address_space_left(2 << 20):
        try:
            q.get(timeout=10)
            got = "a delivery"
        except OSError as e:
            got = e.errno
    out.put(got)
