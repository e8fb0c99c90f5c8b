"""Child-process targets of tests/test_topic_oob.py (module level, so that
processes started with ``spawn`` can import them)."""
import os
import time

import numpy as np


def read_array(t, ready, out, hold):
    """Subscribe, say so, get one array and report (sum, equal to the
    expected arange, writable, backed by a mapping rather than a copy);
    then close the subscription (hold: keep it open and hang, killed)."""
    s = t.subscribe()
    ready.put(os.getpid())
    a = s.get(timeout=60)
    n = a.size
    expected = np.arange(n, dtype=np.float64)
    base = a
    while getattr(base, "base", None) is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    out.put((float(a.sum()), bool(np.array_equal(a, expected)), bool(a.flags.writeable),
             type(base).__name__))
    if hold:
        time.sleep(120)  # killed in here, the segment still mapped
    s.close()


def subscribe_and_hang(t, ready):
    """Subscribe, say so, read nothing (killed)."""
    s = t.subscribe()
    ready.put(os.getpid())
    time.sleep(120)
    s.close()


def publish_array_and_exit(t, n):
    t.publish(np.arange(n, dtype=np.float64))


def armed_publish(t, spec, obj):
    """Publish obj, stopping at the fault point spec (SIGSTOP: the test
    kills it there)."""
    os.environ["PYQUEUE_FAULT"] = spec
    t.publish(obj, timeout=30)


def make_orphan_and_exit(t):
    """What a producer SIGKILLed between writing a segment and claiming its
    record leaves: a segment no record names."""
    from pyqueue import _oob
    _oob.put(t, [b"orphan"], 6)


def armed_publish_small(t, spec, n):
    """Publish n 1 KiB messages, stopping at the fault point spec."""
    os.environ["PYQUEUE_FAULT"] = spec
    for i in range(n):
        t.publish(i.to_bytes(4, "little") * 256, timeout=30)
