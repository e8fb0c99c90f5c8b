# cython: language_level=3
"""Inline helpers shared by the Cython modules (_core, _topic, _log):
cimported, compiled into each, no module of their own."""
from libc.stdint cimport int64_t


cdef extern from "pq_wait.h" nogil:
    int64_t pq_monotonic_ns()


cdef inline int64_t deadline_ns(bint block, object timeout) except? -2:
    """Absolute CLOCK_MONOTONIC deadline in ns of a blocking call's
    (block, timeout): -1 = none, 0 = do not wait (also for a negative
    timeout, as multiprocessing does)."""
    if not block:
        return 0
    if timeout is None:
        return -1
    cdef double t = float(timeout)
    if t != t:
        raise ValueError("'timeout' must be a number, not NaN")
    if t <= 0:
        return 0
    return pq_monotonic_ns() + <int64_t>(t * 1e9)
