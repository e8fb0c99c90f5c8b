# cython: language_level=3
"""Inline helpers shared by the Cython modules (_core, _topic, _log):
cimported, compiled into each, no module of their own."""
from libc.stdint cimport int64_t, uint8_t, INT64_MAX

import pickle


# The codec of a payload: the type byte of its record header (docs/design.md,
# "Records"), the same in queues, topics and logs.
cdef enum:
    T_BYTES = 1
    T_STR = 2
    T_PICKLE = 3
    T_PICKLE_BUFFERS = 4
    T_CUSTOM = 5
    T_OOB = 0x80  # flag: the payload names an out-of-band segment


cdef inline object encode_plain(obj, uint8_t* typ):
    """The default codec without out-of-band buffers: bytes-like objects
    raw (as bytes), str as UTF-8 (surrogates kept), anything else pickled
    with protocol 5. Sets *typ."""
    if type(obj) is bytes:
        typ[0] = T_BYTES
        return obj
    if isinstance(obj, (bytes, bytearray, memoryview)):
        typ[0] = T_BYTES
        return bytes(obj)
    if isinstance(obj, str):
        typ[0] = T_STR
        return (<str>obj).encode("utf-8", "surrogatepass")
    typ[0] = T_PICKLE
    return pickle.dumps(obj, 5)


cdef extern from "pq_wait.h" nogil:
    int64_t pq_monotonic_ns()


cdef inline int64_t seconds_ns(double s, str what) except? -1:
    """A non-negative number of seconds in ns, saturated at INT64_MAX for
    inf and anything past ~9.2e9 s (the cast of such a double to int64 is
    undefined). NaN and negative: ValueError naming `what`."""
    if s != s or s < 0:
        raise ValueError(f"{what} must be a non-negative number of seconds, not {s!r}")
    if s >= 9.2e9:
        return INT64_MAX
    return <int64_t>(s * 1e9)


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
    cdef int64_t now = pq_monotonic_ns()
    cdef int64_t ns = seconds_ns(t, "timeout")
    return INT64_MAX if ns > INT64_MAX - now else now + ns

