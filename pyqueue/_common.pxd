# cython: language_level=3
"""Inline helpers shared by the Cython modules (_core, _topic, _log):
cimported, compiled into each, no module of their own."""
from libc.stdint cimport int64_t, uint8_t

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


cdef inline object encode_plain(obj, uint8_t* typ, object dumps):
    """The default codec without out-of-band buffers: exact bytes,
    bytearray and memoryview raw (as bytes), exact str as UTF-8 (lone
    surrogates kept: surrogatepass both ways, so every str travels, as
    through pickle), anything else - subclasses of those included, so that
    a StrEnum member or a bytes subclass comes back as itself - with dumps
    (pyqueue._core.default_dumps: multiprocessing's pickler, protocol 5).
    Sets *typ."""
    t = type(obj)
    if t is bytes:
        typ[0] = T_BYTES
        return obj
    if t is bytearray or t is memoryview:
        typ[0] = T_BYTES
        return bytes(obj)
    if t is str:
        typ[0] = T_STR
        return (<str>obj).encode("utf-8", "surrogatepass")
    typ[0] = T_PICKLE
    return dumps(obj)


cdef extern from "pq_wait.h" nogil:
    int64_t pq_monotonic_ns()


cdef inline int64_t deadline_ns(bint block, object timeout) except? -2:
    """Absolute CLOCK_MONOTONIC deadline in ns of a blocking call's
    (block, timeout): -1 = none, 0 = do not wait (also for a negative
    timeout, as multiprocessing does)."""
    if timeout is None:
        return -1 if block else 0
    # A C double conversion, as multiprocessing's SemLock.acquire does: a
    # str (or other non-number) is a TypeError, never parsed, with or
    # without block.
    cdef double t = timeout
    if not block:
        return 0
    if t != t:
        raise ValueError("'timeout' must be a number, not NaN")
    if t <= 0:
        return 0
    return pq_monotonic_ns() + <int64_t>(t * 1e9)
