# cython: language_level=3
"""Cython binding of the log core (csrc/pq_log.h), memory mode: append
(claim -> copy -> commit in C), read by offset with peek -> copy ->
validate, waits in slices of at most 100 ms with the GIL released and
signals checked between them (a reader blocked for a slice repairs a dead
appender's record). Codec of values as the queue's: bytes/str raw, else
pickle protocol 5 (the record's type byte says which)."""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport EAGAIN, EINTR, ETIMEDOUT, EMSGSIZE, EINPROGRESS, ESTALE, EDOM

import pickle
import struct

from pyqueue.errors import MessageTooLarge, OffsetOutOfRange, SegmentMismatch
from pyqueue.errors import from_code as _from_code

cdef extern from "pq_wait.h" nogil:
    int64_t pq_monotonic_ns()

cdef extern from "pq_murmur2.h" nogil:
    uint32_t pq_kafka_partition(const void* key, size_t len, uint32_t num_partitions)
    int pq_murmur2(const void* key, size_t len)

cdef extern from "pq_log.h" nogil:
    ctypedef struct pq_log:
        uint32_t partitions
        uint64_t capacity
        uint64_t max_payload
    ctypedef struct pq_log_entry:
        const void* key
        uint32_t key_len
        const void* headers
        uint32_t headers_len
        const void* value
        uint32_t value_len
        uint8_t type
    ctypedef struct pq_log_record:
        uint64_t offset
        uint64_t timestamp_ms
        const uint8_t* key
        uint32_t key_len
        const uint8_t* headers
        uint32_t headers_len
        const uint8_t* value
        uint32_t value_len
        uint8_t type
    ctypedef struct pq_log_batch:
        uint64_t first_pos
        uint64_t next_offset
        uint32_t count
        uint32_t skipped
    int PQ_ERR_OFFSET_RANGE
    uint64_t pq_log_segment_size(uint32_t partitions, uint64_t capacity)
    int pq_log_create(void* base, size_t size, uint32_t partitions, uint64_t capacity,
                      uint64_t retention_ms)
    int pq_log_open(pq_log* l, void* base, size_t size)
    int pq_log_append(pq_log* l, uint32_t part, const pq_log_entry* e, uint32_t n,
                      uint64_t timestamp_ms, uint64_t* first_offset)
    int pq_log_peek(pq_log* l, uint32_t part, uint64_t offset, pq_log_record* out, uint32_t max,
                    pq_log_batch* b)
    int pq_log_validate(pq_log* l, uint32_t part, const pq_log_batch* b)
    int pq_log_wait(pq_log* l, uint32_t part, uint64_t offset, int64_t deadline_ns,
                    uint32_t spin_ns)
    int pq_log_repair(pq_log* l, uint32_t part, uint64_t offset)
    int pq_log_bounds(pq_log* l, uint32_t part, uint64_t* start, uint64_t* end)

DEF T_BYTES = 1
DEF T_STR = 2
DEF T_PICKLE = 3
DEF BATCH_MAX = 64
DEF SLICE_NS = 100000000

cdef object _dumps_p = pickle.dumps
cdef object _loads_p = pickle.loads
cdef object _u16 = struct.Struct("<H")
cdef object _u32 = struct.Struct("<I")


cdef int _check_rc(int rc, str what="") except -1:
    if rc >= 0:
        return rc
    if rc == -EMSGSIZE:
        raise MessageTooLarge(f"{what}: record does not fit in the log's partition "
                              "(at most a quarter of capacity_bytes)")
    raise _from_code(rc, what, "log")


def kafka_partition(key, uint32_t num_partitions):
    """Kafka's default partitioner: (murmur2(key) & 0x7fffffff) % num_partitions."""
    if num_partitions == 0:
        raise ValueError("num_partitions must be positive")
    cdef bytes k = _key_bytes(key)
    return pq_kafka_partition(PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k), num_partitions)


def murmur2(key):
    """Kafka's Utils.murmur2 of the key bytes (a signed 32-bit int)."""
    cdef bytes k = _key_bytes(key)
    return pq_murmur2(PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k))


cdef bytes _key_bytes(key):
    if type(key) is bytes:
        return key
    if isinstance(key, str):
        return (<str>key).encode("utf-8")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise TypeError(f"key must be bytes or str, not {type(key).__name__}")


cdef bytes _encode_headers(headers):
    """{str: bytes} -> count u16, then per header: name length u16, name
    (UTF-8), value length u32, value."""
    if not headers:
        return b""
    if not isinstance(headers, dict):
        raise TypeError("headers must be a dict of str -> bytes")
    parts = [_u16.pack(len(headers))]
    for k, v in headers.items():
        if not isinstance(k, str):
            raise TypeError(f"header names must be str, not {type(k).__name__}")
        if isinstance(v, str):
            v = v.encode("utf-8")
        elif not isinstance(v, (bytes, bytearray, memoryview)):
            raise TypeError(f"header values must be bytes, not {type(v).__name__}")
        kb = k.encode("utf-8")
        v = bytes(v)
        if len(kb) > 0xffff or len(headers) > 0xffff:
            raise ValueError("header name or header count too large")
        parts += [_u16.pack(len(kb)), kb, _u32.pack(len(v)), v]
    return b"".join(parts)


cdef dict _decode_headers(bytes blob):
    cdef dict out = {}
    if not blob:
        return out
    (n,) = _u16.unpack_from(blob, 0)
    at = 2
    for _ in range(n):
        (kl,) = _u16.unpack_from(blob, at)
        at += 2
        k = blob[at:at + kl].decode("utf-8")
        at += kl
        (vl,) = _u32.unpack_from(blob, at)
        at += 4
        out[k] = blob[at:at + vl]
        at += vl
    if at != len(blob):
        raise SegmentMismatch("corrupt record headers")
    return out


def create_segment(mm, uint32_t partitions, uint64_t capacity):
    cdef Py_buffer view
    PyObject_GetBuffer(mm, &view, PyBUF_WRITABLE)
    try:
        _check_rc(pq_log_create(view.buf, view.len, partitions, capacity, 0), "create")
    finally:
        PyBuffer_Release(&view)


def segment_size(uint32_t partitions, uint64_t capacity):
    cdef uint64_t n = pq_log_segment_size(partitions, capacity)
    if n == 0:
        raise ValueError("partitions must be 1..256")
    return n


cdef inline int64_t _slice_end(int64_t deadline):
    cdef int64_t until = pq_monotonic_ns() + SLICE_NS
    if deadline >= 0 and deadline < until:
        return deadline
    return until


cdef class LogCore:
    """A handle on a mapped log segment (base of pyqueue.Log)."""
    cdef pq_log _l
    cdef Py_buffer _view
    cdef bint _mapped
    cdef readonly bint _closed
    cdef object _mm
    cdef pq_log_record _recs[BATCH_MAX]
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        self._mapped = False
        self._closed = False

    def __dealloc__(self):
        if self._mapped:
            PyBuffer_Release(&self._view)
            self._mapped = False
        if self._mm is not None:
            try:
                self._mm.close()
            except Exception:
                pass

    def _attach(self, mm):
        PyObject_GetBuffer(mm, &self._view, PyBUF_WRITABLE)
        self._mapped = True
        self._mm = mm
        _check_rc(pq_log_open(&self._l, self._view.buf, self._view.len), "open")

    cdef inline int _check_open(self) except -1:
        if self._closed or not self._mapped:
            raise ValueError(f"Log {self!r} is closed")
        return 0

    cdef inline int _check_part(self, partition) except -1:
        if not isinstance(partition, int) or isinstance(partition, bool):
            raise TypeError("partition must be an int")
        if not 0 <= partition < self._l.partitions:
            raise ValueError(f"partition {partition} out of range 0..{self._l.partitions - 1}")
        return 0

    @property
    def partitions(self):
        return self._l.partitions

    @property
    def capacity_bytes(self):
        return self._l.capacity

    @property
    def max_record_bytes(self):
        return self._l.max_payload - 24

    def partition_for(self, key):
        """The partition a key goes to (Kafka's default partitioner)."""
        cdef bytes k = _key_bytes(key)
        return pq_kafka_partition(PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k), self._l.partitions)

    cdef object _encode(self, obj, uint8_t* typ):
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
        return _dumps_p(obj, 5)

    def _append(self, uint32_t partition, list values, key, headers, uint64_t ts_ms):
        """Append values (one batch per BATCH_MAX) to one partition; returns
        the first offset of each batch as a list of offsets."""
        cdef pq_log_entry ents[BATCH_MAX]
        cdef uint64_t first
        cdef uint8_t typ
        cdef Py_ssize_t i, j, n = len(values)
        cdef uint64_t total, rec
        cdef list out = []
        self._check_open()
        self._check_part(partition)
        cdef bytes kb = None if key is None else _key_bytes(key)
        cdef bytes hb = _encode_headers(headers)
        cdef list datas = []
        for v in values:
            d = self._encode(v, &typ)
            size = 24 + (0 if kb is None else len(kb)) + len(hb) + len(d)
            if size > self._l.max_payload:
                raise MessageTooLarge(f"record of {size} bytes exceeds the log's limit of "
                                      f"{self._l.max_payload} bytes (a quarter of capacity_bytes)")
            datas.append((d, typ))
        i = 0
        while i < n:
            j = 0
            total = 0
            while i + j < n and j < BATCH_MAX:
                d, typ = datas[i + j]
                rec = 16 + ((24 + (0 if kb is None else len(kb)) + len(hb) + len(d) + 15) & ~15)
                if j > 0 and total + rec > self._l.capacity // 2:
                    break
                total += rec
                ents[j].key = NULL if kb is None else <const void*>PyBytes_AS_STRING(kb)
                ents[j].key_len = 0 if kb is None else <uint32_t>len(kb)
                ents[j].headers = <const void*>PyBytes_AS_STRING(hb)
                ents[j].headers_len = <uint32_t>len(hb)
                ents[j].value = <const void*>PyBytes_AS_STRING(d)
                ents[j].value_len = <uint32_t>len(d)
                ents[j].type = typ
                j += 1
            _check_rc(pq_log_append(&self._l, partition, ents, <uint32_t>j, ts_ms, &first),
                      "append")
            out.extend(range(first, first + j))
            i += j
        return out

    def _bounds(self, partition):
        cdef uint64_t s, e
        self._check_open()
        self._check_part(partition)
        pq_log_bounds(&self._l, partition, &s, &e)
        return s, e

    cdef _out_of_range(self, uint32_t partition, uint64_t offset):
        cdef uint64_t s, e
        pq_log_bounds(&self._l, partition, &s, &e)
        if offset < s:
            return OffsetOutOfRange(
                f"offset {offset} of partition {partition} is before the start: the oldest "
                f"record still in the log is at offset {s}", partition, offset, s, e)
        return OffsetOutOfRange(
            f"offset {offset} of partition {partition} is beyond the end offset {e}",
            partition, offset, s, e)

    def _read(self, uint32_t partition, uint64_t offset, Py_ssize_t max_records, double timeout,
              make):
        """Records from offset (waits up to timeout seconds for the first:
        an empty list when none came). make(partition, offset, ts, key,
        value, headers) builds each record."""
        cdef pq_log_batch b
        cdef int rc, i
        cdef int64_t deadline, until
        cdef uint32_t want
        self._check_open()
        self._check_part(partition)
        if max_records <= 0:
            raise ValueError("max_records must be positive")
        if timeout != timeout:
            raise ValueError("timeout must be a number, not NaN")
        deadline = 0 if timeout <= 0 else pq_monotonic_ns() + <int64_t>(timeout * 1e9)
        cdef list out = []
        while True:
            want = <uint32_t>min(max_records - len(out), BATCH_MAX)
            rc = pq_log_peek(&self._l, partition, offset, self._recs, want, &b)
            if rc >= 0:
                raw = []
                for i in range(rc):
                    r = &self._recs[i]
                    raw.append((r.offset, r.timestamp_ms,
                                None if r.key == NULL else
                                PyBytes_FromStringAndSize(<const char*>r.key, r.key_len),
                                PyBytes_FromStringAndSize(<const char*>r.headers, r.headers_len),
                                PyBytes_FromStringAndSize(<const char*>r.value, r.value_len),
                                r.type))
                if pq_log_validate(&self._l, partition, &b) != 0:
                    continue  # overwritten while copying: peek again (may be out of range)
                for off, ts, k, hb, vb, typ in raw:
                    out.append(make(partition, off, ts, k, self._decode(typ, vb),
                                    _decode_headers(hb)))
                offset = b.next_offset
                if len(out) >= max_records:
                    return out
                continue
            if rc == PQ_ERR_OFFSET_RANGE:
                if out:
                    return out  # dropped after what we returned: the next read says so
                raise self._out_of_range(partition, offset)
            if rc != -EAGAIN and rc != -EINPROGRESS:
                _check_rc(rc, "read")
            if out:
                return out
            if deadline == 0 or pq_monotonic_ns() >= deadline:
                if rc == -EINPROGRESS and pq_log_repair(&self._l, partition, offset) > 0:
                    continue
                return out
            until = _slice_end(deadline)
            with nogil:
                rc = pq_log_wait(&self._l, partition, offset, until, 50000)
            if rc == -EINTR or rc == -ETIMEDOUT:
                PyErr_CheckSignals()
            if rc == -ETIMEDOUT:
                _check_rc(pq_log_repair(&self._l, partition, offset), "repair")

    cdef object _decode(self, uint8_t typ, bytes vb):
        if typ == T_BYTES:
            return vb
        if typ == T_STR:
            return vb.decode("utf-8", "surrogatepass")
        if typ == T_PICKLE:
            return _loads_p(vb)
        raise SegmentMismatch(f"unknown record type {typ}")

    def close(self):
        self._closed = True
