# cython: language_level=3
"""Cython binding of the log cores: memory mode (csrc/pq_log.h, a ring per
partition in one shared-memory segment), directory mode (csrc/pq_dlog.h and
csrc/pq_dseg.h: segment files and a shared control file) and consumer
groups (csrc/pq_group.h), in one extension split over include files:

  _log.pyx            the C declarations, the value and header codecs,
                      errors, the partitioner, LogCoreBase
  _log_memory.pxi     MemoryLogCore
  _log_directory.pxi  SegmentMap, DirLogCore
  _log_groups.pxi     GroupTable

Codec of values as the queue's: bytes/str raw, else pickle protocol 5 (the
record's type byte says which). Blocking waits release the GIL in slices of
at most 100 ms, with signals checked between them."""

cimport cython
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t, int64_t, uintptr_t
from libc.string cimport memset
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE, PyBUF_SIMPLE
from cpython.exc cimport PyErr_CheckSignals
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_SET_ITEM
from libc.errno cimport (EAGAIN, EINTR, ETIMEDOUT, EMSGSIZE, EINPROGRESS, ESTALE, EDOM,
                         ENOENT, ENOSPC, ENODATA, EBUSY, EINVAL, ENOBUFS)

import os
from types import GenericAlias as _GenericAlias
import pickle
import struct
import time

from pyqueue._core import default_dumps as _default_dumps_py
from pyqueue.errors import (CommitFailed, CorruptRecord, MessageTooLarge, OffsetOutOfRange,
                            PoisonRecord, PyQueueError, SegmentMismatch, ShutDown)
from pyqueue.errors import from_code as _from_code
from pyqueue import _events, _oob

cdef extern from "<errno.h>" nogil:
    int EUSERS

cdef extern from "Python.h":
    # An instance of a tuple subtype with n (NULL) items: a Record without
    # the argument tuple and copy that tuple.__new__(Record, items) costs.
    object PyType_GenericAlloc(type t, Py_ssize_t nitems)
    int PyObject_GC_IsTracked(object o)
    void PyObject_GC_UnTrack(object o)

cdef extern from "<unistd.h>" nogil:
    int getpid()

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    int CLOCK_REALTIME

cdef extern from "pq_wait.h" nogil:
    int64_t pq_monotonic_ns()
    ctypedef struct pq_event:
        pass
    uint32_t pq_event_prepare(pq_event* ev)
    void pq_event_finish(pq_event* ev)
    void pq_event_notify(pq_event* ev, int n)
    uint32_t pq_event_waiters(pq_event* ev)
    uint32_t pq_event_seq(pq_event* ev)
    void pq_event_wake_all(pq_event* ev)

cdef extern from "pq_segment.h" nogil:
    int PQ_ERR_CORRUPT
    ctypedef struct pq_segment_header:
        pass

cdef extern from "pq_murmur2.h" nogil:
    uint32_t pq_kafka_partition(const void* key, size_t len, uint32_t num_partitions)
    int pq_murmur2(const void* key, size_t len)

cdef extern from "pq_log_entry.h" nogil:
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

cdef extern from "pq_group.h" nogil:
    # A group's generation word, as the C core types it.
    ctypedef uint64_t pq_gen_word "_Atomic uint64_t"
    ctypedef struct pq_group_table:
        uint32_t max_groups
        uint32_t partitions
    ctypedef struct pq_group_member_info:
        int32_t pid
        int32_t alive
        uint64_t member_id
        int64_t idle_ns
        uint32_t partitions
    uint64_t PQ_GROUP_NO_OFFSET
    int PQ_GROUP_NAME_MAX
    int PQ_GROUP_MEMBERS
    int pq_group_find(pq_group_table* t, const char* name, int create, uint64_t* incarnation)
    int pq_group_name(pq_group_table* t, uint32_t g, char* out)
    int pq_group_delete(pq_group_table* t, uint32_t g)
    int pq_group_join(pq_group_table* t, uint32_t g, uint64_t incarnation, int64_t timeout_ns,
                      uint64_t* member_id)
    int pq_group_leave(pq_group_table* t, uint32_t g, uint64_t member_id)
    int pq_group_heartbeat(pq_group_table* t, uint32_t g, uint64_t member_id)
    int pq_group_reap(pq_group_table* t, uint32_t g)
    uint64_t pq_group_generation(pq_group_table* t, uint32_t g)
    const pq_gen_word* pq_group_generation_word(pq_group_table* t, uint32_t g)
    int pq_group_assignment(pq_group_table* t, uint32_t g, uint64_t member_id, uint64_t* epochs,
                            uint64_t* generation)
    int pq_group_commit(pq_group_table* t, uint32_t g, uint64_t member_id, const uint32_t* parts,
                        const uint64_t* offsets, const uint64_t* epochs, uint32_t n,
                        uint64_t now_ms)
    int pq_group_committed(pq_group_table* t, uint32_t g, uint32_t part, uint64_t* offset,
                           uint64_t* committed_ms)
    int pq_group_set_committed(pq_group_table* t, uint32_t g, uint32_t part, uint64_t offset,
                               uint64_t committed_ms)
    int pq_group_members(pq_group_table* t, uint32_t g, pq_group_member_info* out, uint32_t max)
    uint64_t pq_group_owner(pq_group_table* t, uint32_t g, uint32_t part)

cdef extern from *:
    """
    #include "pq_log.h"
    #include "pq_dlog.h"
    #define PQ_LOG_APPENDED_ADDR(l) ((uintptr_t)&(l)->shared->appended)
    """
    uintptr_t PQ_LOG_APPENDED_ADDR(void* l)

cdef extern from "pq_refs.h" nogil:
    int PQ_TYPE_OOB
    int PQ_REF_MAX
    ctypedef struct pq_ref:
        uint32_t len
        uint8_t bytes[320]
    ctypedef struct pq_refs:
        pq_ref* items
        uint32_t max
        uint32_t count
        uint64_t reclaim

cdef extern from "pq_log.h" nogil:
    ctypedef struct pq_log:
        pq_segment_header* hdr
        uint32_t partitions
        uint64_t capacity
        uint64_t max_payload
        uint64_t retention_ms
        pq_group_table groups
    ctypedef struct pq_log_batch:
        uint64_t first_pos
        uint64_t next_offset
        uint32_t count
        uint32_t skipped
    int PQ_ERR_OFFSET_RANGE
    uint64_t pq_log_segment_size(uint32_t partitions, uint64_t capacity)
    int pq_log_create(void* base, size_t size, uint32_t partitions, uint64_t capacity,
                      uint64_t retention_ms, uint64_t user_flags)
    int pq_log_open(pq_log* l, void* base, size_t size)
    int pq_log_append(pq_log* l, uint32_t part, const pq_log_entry* e, uint32_t n,
                      uint64_t timestamp_ms, uint64_t* first_offset)
    int pq_log_peek(pq_log* l, uint32_t part, uint64_t offset, pq_log_record* out, uint32_t max,
                    pq_log_batch* b)
    int pq_log_validate(pq_log* l, uint32_t part, const pq_log_batch* b)
    int pq_log_shutdown(pq_log* l, uint32_t how)
    int pq_log_wait(pq_log* l, uint32_t part, uint64_t offset, int64_t deadline_ns,
                    uint32_t spin_ns)
    int pq_log_wait_any(pq_log* l, const uint32_t* parts, const uint64_t* offsets, uint32_t n,
                        const pq_gen_word* gen, uint64_t gen_seen, int64_t deadline_ns,
                        uint32_t spin_ns)
    int pq_log_expire(pq_log* l, uint32_t part, uint64_t now_ms)
    int pq_log_repair(pq_log* l, uint32_t part, uint64_t offset)
    int pq_log_bounds(pq_log* l, uint32_t part, uint64_t* start, uint64_t* end)
    int pq_log_append_refs(pq_log* l, uint32_t part, const pq_log_entry* e, uint32_t n,
                           uint64_t timestamp_ms, uint64_t* first_offset, pq_refs* refs)
    int PQ_ERR_LOG_WRITER
    ctypedef struct pq_log_writer:
        uint64_t pos
        uint64_t ctl
        uint64_t offset
        int32_t pid
    int pq_log_append_ex(pq_log* l, uint32_t part, const pq_log_entry* e, uint32_t n,
                         uint64_t timestamp_ms, uint64_t* first_offset, pq_refs* refs,
                         pq_log_writer* wr)
    int pq_log_wait_writer(pq_log* l, uint32_t part, const pq_log_writer* wr,
                           int64_t deadline_ns)
    int pq_log_expire_refs(pq_log* l, uint32_t part, uint64_t now_ms, pq_refs* refs)
    int pq_log_scan_refs(pq_log* l, uint32_t part, uint64_t* from_, pq_refs* refs)

cdef extern from "pq_dseg.h" nogil:
    ctypedef struct pq_dseg_index_header:
        uint64_t magic
        uint64_t base_offset
        uint64_t entries
        uint64_t end_pos
        uint64_t records
        uint64_t max_timestamp_ms
        uint32_t sealed
    ctypedef struct pq_dseg:
        uint8_t* data
        uint64_t data_size
        uint64_t base_offset
        pq_dseg_index_header* ix
        uint64_t ix_cap
    ctypedef struct pq_dseg_cursor:
        uint64_t pos
        uint64_t next_offset
        uint64_t index_count
        uint64_t last_index_pos
        uint64_t records
        uint64_t max_timestamp_ms
    int PQ_DSEG_REC_HDR
    uint64_t PQ_DSEG_MIN_BYTES, PQ_DSEG_MAX_BYTES
    void pq_dseg_cursor_empty(pq_dseg_cursor* c, uint64_t base_offset)
    uint64_t pq_dseg_record_size(uint32_t key_len, uint32_t headers_len, uint32_t value_len)
    uint64_t pq_dseg_index_file_size(uint64_t segment_bytes)
    int pq_dseg_index_init(void* ix, size_t size, uint64_t base_offset)
    int pq_dseg_index_seal(pq_dseg* s, const pq_dseg_cursor* c)
    int pq_dseg_index_read(const void* ix, size_t size, uint64_t base_offset,
                           pq_dseg_index_header* out)
    int pq_dseg_scan(pq_dseg* s, uint64_t limit, pq_dseg_cursor* c, int rebuild_index, int* torn)
    int pq_dseg_peek(const pq_dseg* s, uint64_t end, uint64_t index_count, uint64_t offset,
                     pq_log_record* out, uint32_t max, uint64_t* next_offset, uint64_t* bad_pos)
    uint64_t pq_dseg_dirty_bytes(const uint8_t* data, uint64_t start, uint64_t to)
    int pq_dseg_find_record(const pq_dseg* s, uint64_t start, uint64_t limit, uint64_t min_offset,
                            uint64_t max_offset, uint64_t* pos)
    int pq_sync_range(void* base, uint64_t start, uint64_t to)

cdef extern from "pq_dlog.h" nogil:
    ctypedef struct pq_dlog:
        pq_segment_header* hdr
        uint32_t partitions
        uint64_t segment_bytes
        pq_group_table groups
    ctypedef struct pq_dlog_view:
        uint64_t start_offset
        uint64_t end_offset
        uint64_t active_base
        uint64_t end_pos
        uint64_t index_count
        uint64_t seg_gen
    uint64_t pq_dlog_control_size(uint32_t partitions, uint32_t max_groups)
    int pq_dlog_create(void* base, size_t size, uint32_t partitions, uint64_t segment_bytes,
                       uint32_t max_groups)
    int pq_dlog_open(pq_dlog* d, void* base, size_t size)
    int pq_dlog_restore(pq_dlog* d, uint32_t part, uint64_t start_offset, uint64_t active_base,
                        const pq_dseg_cursor* c, uint64_t closed_bytes)
    int pq_dlog_lock(pq_dlog* d, uint32_t part)
    int pq_dlog_trylock(pq_dlog* d, uint32_t part)
    void pq_dlog_unlock(pq_dlog* d, uint32_t part)
    int pq_dlog_append(pq_dlog* d, uint32_t part, pq_dseg* s, const pq_log_entry* e, uint32_t n,
                       uint64_t ts, uint64_t* first_offset, uint64_t* need)
    int pq_dlog_set_allocated(pq_dlog* d, uint32_t part, uint64_t allocated)
    uint64_t pq_dlog_allocated(pq_dlog* d, uint32_t part)
    int pq_dlog_roll(pq_dlog* d, uint32_t part, pq_dseg* s, uint64_t* new_base)
    int pq_dlog_set_start(pq_dlog* d, uint32_t part, uint64_t start_offset,
                          uint64_t removed_bytes)
    int pq_dlog_snapshot(pq_dlog* d, uint32_t part, pq_dlog_view* v)
    int pq_dlog_active_stats(pq_dlog* d, uint32_t part, uint64_t* max_ts, uint64_t* records,
                             uint64_t* closed_bytes)
    void pq_dlog_notify(pq_dlog* d, uint32_t part)
    int pq_dlog_shutdown(pq_dlog* d, uint32_t how)
    int pq_dlog_wait(pq_dlog* d, uint32_t part, uint64_t offset, int64_t deadline_ns,
                     uint32_t spin_ns)
    int pq_dlog_wait_any(pq_dlog* d, const uint32_t* parts, const uint64_t* offsets, uint32_t n,
                         const pq_gen_word* gen, uint64_t gen_seen, int64_t deadline_ns,
                         uint32_t spin_ns)
    int pq_dlog_sync_due(pq_dlog* d, uint32_t part, int64_t interval_ns)

cdef extern from "pq_log_shared.h" nogil:
    int PQ_LOG_MAX_GROUPS

from pyqueue._common cimport T_BYTES, T_STR, T_PICKLE, T_CUSTOM, T_PICKLE_BUFFERS, T_OOB, encode_plain
from pyqueue._common cimport (LockWait, lock_again, lock_timeout, lock_fail, set_lock_wait, pq_fault_rearm,
                              PQ_ERR_LOCK_BUSY, LOCK_BOUNDED, LOCK_SLICE_NS, pq_lock_bounded_wait)
from pyqueue._common cimport shutdown_how, is_shut_down, is_shut_down_now

set_lock_wait(None)


include "_module_hooks.pxi"

# The deadline of a lock wait bounded by the lock wait (see _common.pxd).
LOCK_BOUNDED_DEADLINE = LOCK_BOUNDED



DEF BATCH_MAX = 64          # records per peek
DEF REFS_MAX = 16           # references reported per call (pq_refs.h)
DEF REF_MAX = 320           # bytes of a reference copied (PQ_REF_MAX)
DEF APPEND_MAX = 256        # records per append claim (PQ_LOG_APPEND_MAX)
DEF SLICE_NS = 100000000
DEF MAX_PARTITIONS = 256
DEF SPIN_NS = 50000
DEF GROW_BYTES = 1048576   # disk blocks are given to a segment file 1 MiB at a time

MAX_GROUPS = PQ_LOG_MAX_GROUPS
assert PQ_TYPE_OOB == T_OOB and PQ_REF_MAX == REF_MAX
GROUP_MEMBERS = PQ_GROUP_MEMBERS
RECORD_HEADER_BYTES = PQ_DSEG_REC_HDR
MIN_SEGMENT_BYTES = PQ_DSEG_MIN_BYTES
MAX_SEGMENT_BYTES = PQ_DSEG_MAX_BYTES

cdef object _loads_p = pickle.loads
cdef object _dumps_p = _default_dumps_py   # multiprocessing's pickler (pyqueue/_codec.pxi)


cdef inline object _set(object t, Py_ssize_t i, object item):
    Py_INCREF(item)  # PyTuple_SET_ITEM steals a reference
    PyTuple_SET_ITEM(t, i, item)


cdef object _new_record(type make, uint32_t partition, uint64_t offset, uint64_t ts,
                        key, value, headers):
    """make(partition, offset, timestamp, key, value, headers) for make a
    6-field tuple type (Record), built in place."""
    cdef object r = PyType_GenericAlloc(make, 6)
    _set(r, 0, partition)
    _set(r, 1, offset)
    _set(r, 2, ts)
    _set(r, 3, key)
    _set(r, 4, value)
    _set(r, 5, headers)
    # As CPython does for a tuple of atoms: a record whose value and headers
    # the collector does not track can be in no cycle, so it need not be
    # tracked either (reading many records no longer makes every
    # collection walk them all).
    if not PyObject_GC_IsTracked(value) and not PyObject_GC_IsTracked(headers):
        PyObject_GC_UnTrack(r)
    return r

# Bumped in the child of every fork: a core re-seeds its round-robin there.
cdef unsigned long _fork_generation = 1


def _after_fork_in_child():
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


cdef inline uint64_t _now_ms() nogil:
    """Wall clock in ms: a record's timestamp (its append time)."""
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <uint64_t>ts.tv_sec * 1000 + <uint64_t>(ts.tv_nsec // 1000000)
cdef object _u16 = struct.Struct("<H")
cdef object _u32 = struct.Struct("<I")


cdef int _check_rc(int rc, str what="") except -1:
    if rc >= 0:
        return rc
    if rc == -EMSGSIZE:
        raise MessageTooLarge(f"{what}: record does not fit in the log's partition")
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
    if len(headers) > 0xffff:
        raise ValueError("too many headers (at most 65535)")
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
        if len(kb) > 0xffff:
            raise ValueError("header name too long (at most 65535 bytes)")
        parts += [_u16.pack(len(kb)), kb, _u32.pack(len(v)), v]
    return b"".join(parts)


cdef dict _decode_headers(bytes blob):
    cdef dict out = {}
    if not blob:
        return out
    try:
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
    except (struct.error, UnicodeDecodeError):
        raise SegmentMismatch("corrupt record headers") from None
    if at != len(blob):
        raise SegmentMismatch("corrupt record headers")
    return out


def encode_headers(headers):
    """A record's headers ({str: bytes}, or None) in the log's own format
    (_encode_headers): what the Redis backend stores too, so that a
    record's headers are never a pickle on any backend."""
    return _encode_headers(headers)


def decode_headers(blob):
    """The headers of a record stored by encode_headers (SegmentMismatch
    when the bytes are not that format)."""
    return _decode_headers(bytes(blob))


class RawValue:
    """A record value left encoded: what a handle with raw_values set
    (`pyqueue tail` of a log this user does not own) returns instead of
    unpickling. type: the record's type name ("pickle", or "type N");
    data: its bytes."""
    __slots__ = ("type", "data")

    def __init__(self, type, data):
        self.type = type
        self.data = data

    def __eq__(self, other):
        return (isinstance(other, RawValue) and self.type == other.type
                and self.data == other.data)

    __hash__ = None

    def __repr__(self):
        return f"RawValue({self.type!r}, {self.data!r})"


# The log's flag (memory mode: params[PQ_LOG_PARAM_USER0]; directory mode:
# "serializer": "custom" in log.json): made with a custom serializer.
FLAG_CUSTOM_SERIALIZER = 1


cdef object _decode_oob(uint8_t typ, obj, bint raw, object loads):
    """A large record's value from the mapping of its segment (obj: a
    memoryview the memory-mode read made between peek and validate; or the
    exception met mapping it, raised here)."""
    cdef uint8_t base = typ & ~T_OOB
    if isinstance(obj, BaseException):
        raise obj
    if not isinstance(obj, memoryview):
        raise SegmentMismatch("an out-of-band record where none can be (not a memory-mode log)")
    if loads is not None:
        if base == T_CUSTOM:
            if raw:
                return RawValue("custom", bytes(obj))
            return loads(bytes(obj))
        if base == T_PICKLE or base == T_PICKLE_BUFFERS:
            raise PyQueueError("refusing to unpickle: this log uses a custom serializer")
        if base == T_BYTES or base == T_STR:
            raise PyQueueError("record was not encoded with this log's serializer")
        raise SegmentMismatch(f"unknown record type {typ}")
    if base == T_BYTES:
        return bytes(obj)
    if base == T_STR:
        return str(obj, "utf-8", "surrogatepass")
    if raw:  # never unpickled: whoever wrote it may not be trusted
        return RawValue("pickle" if base == T_PICKLE else
                        "pickle-buffers" if base == T_PICKLE_BUFFERS else
                        "custom" if base == T_CUSTOM else f"type {typ}", bytes(obj))
    if base == T_PICKLE:
        return _loads_p(obj)
    if base == T_PICKLE_BUFFERS:
        return _oob.unframe_buffers(obj)
    if base == T_CUSTOM:
        raise PyQueueError("record was encoded with a custom serializer this handle lacks")
    raise SegmentMismatch(f"unknown record type {typ}")


cdef object _decode_value(uint8_t typ, object vb, bint raw, object loads):
    """A record's value. loads: the log's serializer's (None: the default
    codec). The codec is checked against the handle first: with a
    serializer nothing is unpickled (a pickle record is refused), without
    one a custom record is never handed out as bytes."""
    if typ & T_OOB:
        return _decode_oob(typ, vb, raw, loads)
    if loads is not None:
        if typ == T_CUSTOM:
            if raw:
                return RawValue("custom", vb)
            return loads(vb)
        if typ == T_PICKLE:
            raise PyQueueError("refusing to unpickle: this log uses a custom serializer")
        if typ == T_BYTES or typ == T_STR:
            raise PyQueueError("record was not encoded with this log's serializer")
        raise SegmentMismatch(f"unknown record type {typ}")
    if typ == T_BYTES:
        return vb
    if typ == T_STR:
        return vb.decode("utf-8", "surrogatepass")
    if raw:  # never unpickled: whoever wrote it may not be trusted
        return RawValue("pickle" if typ == T_PICKLE else
                        "custom" if typ == T_CUSTOM else f"type {typ}", vb)
    if typ == T_PICKLE:
        return _loads_p(vb)
    if typ == T_CUSTOM:
        raise PyQueueError("record was encoded with a custom serializer this handle lacks")
    raise SegmentMismatch(f"unknown record type {typ}")


cdef object _poison(uint32_t partition, uint64_t offset, exc, int type_code=-1, raw=None):
    """The PoisonRecord for a record whose value or headers failed to
    decode with exc (raised from exc)."""
    return PoisonRecord(f"the record at offset {offset} of partition {partition} cannot be "
                        f"decoded ({type(exc).__name__}: {exc}); skip it with "
                        f"seek({partition}, {offset + 1})", partition, offset,
                        None if type_code < 0 else type_code, raw, exc)


cdef inline int64_t _slice_end(int64_t deadline):
    """The end of the next wait slice: at most 100 ms away, never past the
    deadline (-1: none)."""
    cdef int64_t until = pq_monotonic_ns() + SLICE_NS
    if deadline >= 0 and deadline < until:
        return deadline
    return until


cdef int64_t _deadline_of(double timeout) except? -2:
    """timeout in seconds -> monotonic deadline: 0 = do not wait, -1 =
    wait for ever (timeout None is passed as inf)."""
    if timeout != timeout:
        raise ValueError("timeout must be a number, not NaN")
    if timeout <= 0:
        return 0
    if timeout > 1e9:
        return -1
    return pq_monotonic_ns() + <int64_t>(timeout * 1e9)


cdef inline bint _time_left(int64_t deadline):
    return deadline < 0 or (deadline > 0 and pq_monotonic_ns() < deadline)


cdef class LogCoreBase:
    """What both storage cores share: partitions, the partitioner, the
    encoding of a batch of values into pq_log_entry records, the making of
    Records, and the append paths (each core provides _append_datas).

    Subscriptable (``LogCoreBase[dict]``) for type annotations only."""
    __class_getitem__ = classmethod(_GenericAlias)
    cdef uint32_t _nparts
    cdef uint64_t _max_record   # the largest key + headers + value bytes
    cdef readonly bint _closed
    # Set by `pyqueue tail` for a log it does not own: pickled values come
    # back as RawValue, never unpickled.
    cdef public bint raw_values
    cdef uint32_t _rr           # the next keyless partition
    cdef unsigned long _rr_gen  # _fork_generation when _rr was seeded
    cdef object _dumps          # the serializer's (None: the default codec)
    cdef object _loads
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        self._closed = False
        self._nparts = 0
        self._rr_gen = 0

    cdef inline uint32_t _next_partition(self):
        """Keyless records: round-robin per process, from a per-process
        start so that processes spread out."""
        if self._rr_gen != _fork_generation:
            self._rr_gen = _fork_generation
            self._rr = <uint32_t>getpid() % self._nparts
        cdef uint32_t p = self._rr
        self._rr = (p + 1) % self._nparts
        return p

    cdef uint32_t _choose(self, key) except? 0xffffffff:
        cdef bytes k
        if key is None:
            return self._next_partition()
        k = _key_bytes(key)
        return pq_kafka_partition(PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k), self._nparts)

    def append(self, value, key=None, headers=None):
        """Append one record.

        Args:
            value: The record's value (bytes and str as they are, anything
                else pickled).
            key: bytes or str: picks the partition with Kafka's default
                partitioner (bit-exact); None: round-robin per process.
            headers: A dict of str -> bytes, or None.

        Returns:
            (partition, offset) of the record.

        Raises:
            ShutDown: The log was shut down.
            MessageTooLarge: key, headers and value exceed max_record_bytes
                (memory mode: only when the key and headers leave no room
                for an out-of-band reference; a larger value travels out
                of band).
            TypeError: A key or header of the wrong type.
            ValueError: The log is closed.
            LockTimeout: A partition's lock stayed held by a stopped process,
                or (memory mode) the ring space the record needs stayed
                held by a record a stopped appender is still writing.
            PyQueueError: Memory mode: retention dropped the record before
                its commit (this process was judged dead); it is not in
                the log.
        """
        self._check_open()
        cdef uint32_t p = self._choose(key)
        cdef bytes kb = None if key is None else _key_bytes(key)
        cdef bytes hb = _encode_headers(headers)
        cdef list out = []
        self._append_datas(p, self._encode_batch([value], kb, hb), kb, hb, _now_ms(), out)
        return p, out[0]

    def append_many(self, values, key=None, headers=None):
        """Append every value of an iterable to one partition (the key's,
        or the next round-robin one), in batched claims.

        Args:
            values: The records' values, in order.
            key: As append(); one key for all of them.
            headers: As append(); the same headers on each record.

        Returns:
            The (partition, offset) of each record, in order (an empty list
            for no values).

        Raises:
            ShutDown: The log was shut down (nothing of the batch was
                appended).
            MessageTooLarge: A record exceeds max_record_bytes (memory
                mode: its key and headers leave no room for an out-of-band
                reference; checked before anything is appended).
            TypeError: A key or header of the wrong type.
            ValueError: The log is closed.
            LockTimeout: A partition's lock stayed held by a stopped process
                (memory mode, after the first of several claims: its
                `appended` lists the records that went in).
        """
        self._check_open()
        values = list(values)
        if not values:
            return []
        cdef uint32_t p = self._choose(key)
        cdef list offs = self._append(p, values, key, headers, _now_ms())
        return [(p, o) for o in offs]

    def _append(self, uint32_t partition, list values, key, headers, uint64_t ts_ms):
        """Append values to one partition with timestamp ts_ms: the list of
        their offsets (tests give old timestamps through this)."""
        self._check_open()
        self._check_part(partition)
        cdef bytes kb = None if key is None else _key_bytes(key)
        cdef bytes hb = _encode_headers(headers)
        cdef list out = []
        self._append_datas(partition, self._encode_batch(values, kb, hb), kb, hb, ts_ms, out)
        return out

    cdef int _append_datas(self, uint32_t partition, list datas, bytes kb, bytes hb,
                           uint64_t ts_ms, list out) except -1:
        raise NotImplementedError

    def _shutdown(self, bint immediate):
        raise NotImplementedError

    def _shutdown_state(self):
        raise NotImplementedError

    cdef inline int _check_open(self) except -1:
        if self._closed or self._nparts == 0:
            raise ValueError(f"{self!r} is closed")
        return 0

    cdef inline int _check_part(self, partition) except -1:
        if not isinstance(partition, int) or isinstance(partition, bool):
            raise TypeError(f"partition must be an int, not {type(partition).__name__}")
        if not 0 <= partition < self._nparts:
            raise ValueError(f"partition must be 0..{self._nparts - 1}, not {partition!r}")
        return 0

    @property
    def partitions(self):
        """The number of partitions."""
        return self._nparts

    @property
    def max_record_bytes(self):
        """The largest key + headers + value a record holds in place
        (memory mode: a larger value travels out of band)."""
        return self._max_record

    def partition_for(self, key):
        """The partition a key goes to (Kafka's default partitioner).

        Args:
            key: bytes or str.

        Returns:
            The partition number.

        Raises:
            TypeError: key is not bytes or str.
        """
        cdef bytes k = _key_bytes(key)
        return pq_kafka_partition(PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k), self._nparts)

    def _set_serializer(self, serializer):
        """Encode and decode values with serializer (dumps, loads), or the
        default codec (None)."""
        if serializer is None:
            self._dumps = self._loads = None
        else:
            self._dumps, self._loads = serializer

    @property
    def _custom(self):
        """Whether this handle has a serializer."""
        return self._loads is not None

    cdef list _encode_batch(self, list values, bytes kb, bytes hb):
        """[(encoded value, type)], each checked against max_record_bytes
        before anything is appended."""
        cdef uint8_t typ
        cdef list datas = []
        cdef Py_ssize_t fixed = (0 if kb is None else len(kb)) + len(hb)
        for v in values:
            if self._dumps is not None:
                typ = T_CUSTOM
                d = bytes(self._dumps(v))
            else:
                d = encode_plain(v, &typ, _dumps_p)
            if fixed + len(d) > <Py_ssize_t>self._max_record:
                raise MessageTooLarge(
                    f"record of {fixed + len(d)} bytes (key, headers and value) exceeds the "
                    f"log's limit of {self._max_record} bytes")
            datas.append((d, typ))
        return datas

    cdef Py_ssize_t _fill_entries(self, pq_log_entry* ents, list datas, Py_ssize_t i,
                                  bytes kb, bytes hb, uint64_t max_bytes):
        """Entries for datas[i:], at most APPEND_MAX and (past the first) at
        most max_bytes of records: the count filled."""
        cdef Py_ssize_t j = 0, n = len(datas)
        cdef uint64_t total = 0, rec
        cdef uint32_t kl = 0 if kb is None else <uint32_t>len(kb)
        cdef const void* kp = NULL
        cdef bytes d
        if kb is not None:
            kp = <const void*>PyBytes_AS_STRING(kb)
        while i + j < n and j < APPEND_MAX:
            d, typ = datas[i + j]
            rec = 64 + kl + <uint64_t>len(hb) + <uint64_t>len(d)
            if j > 0 and total + rec > max_bytes:
                break
            total += rec
            ents[j].key = kp
            ents[j].key_len = kl
            ents[j].headers = <const void*>PyBytes_AS_STRING(hb)
            ents[j].headers_len = <uint32_t>len(hb)
            ents[j].value = <const void*>PyBytes_AS_STRING(d)
            ents[j].value_len = <uint32_t>len(d)
            ents[j].type = typ
            j += 1
        return j

    cdef int _make_records(self, const pq_log_record* recs, int n, uint32_t partition,
                           type make, list out, uint8_t* undecoded) except -1:
        """Append Records of recs[:n] (the caller's: never the handle's, so
        that no other thread's read can overwrite them) to out, with raw
        bytes only: no Python code runs while the storage is read (a
        memory-mode copy may be torn until validated; a directory-mode
        segment may be unmapped by another thread of this process once
        Python code runs). The value of a bytes record and empty headers
        are final; for the others undecoded[i] is set and _decode_records
        finishes them."""
        cdef const pq_log_record* r
        cdef object v, h
        cdef uint64_t off
        for i in range(n):
            r = &recs[i]
            undecoded[i] = r.type != T_BYTES or r.headers_len != 0 or self._loads is not None
            # An out-of-band record: its reference, not the zeros after it.
            v = PyBytes_FromStringAndSize(<const char*>r.value, min(r.value_len, REF_MAX)
                                          if r.type & T_OOB else r.value_len)
            h = {} if r.headers_len == 0 else PyBytes_FromStringAndSize(
                <const char*>r.headers, r.headers_len)
            out.append(_new_record(
                make, partition, r.offset, r.timestamp_ms,
                None if r.key == NULL else
                PyBytes_FromStringAndSize(<const char*>r.key, r.key_len), v, h))
        return 0

    cdef bint _decode_records(self, list out, Py_ssize_t first, int n, type make,
                              const uint8_t* types, const uint8_t* undecoded) except -1:
        """Decode what _make_records left raw in out[first:first + n]
        (types: the records' type bytes, the caller's copy). A record that
        cannot be decoded is reported alone: the ones from it on are
        removed from out, and it is raised (PoisonRecord naming its
        partition and offset) when out has nothing before it, else True is
        returned (out as it is is the answer; the next read at its offset
        raises)."""
        cdef Py_ssize_t k
        for i in range(n):
            if undecoded[i]:
                k = first + i
                rec = out[k]
                hb = rec[5]
                try:
                    value = _decode_value(types[i], rec[4], self.raw_values, self._loads)
                    headers = hb if type(hb) is dict else _decode_headers(hb)
                except MemoryError:
                    del out[k:]
                    raise
                except Exception as e:
                    del out[k:]
                    if out:
                        return True
                    raise _poison(rec[0], rec[1], e, types[i],
                                  None if isinstance(rec[4], BaseException) else
                                  bytes(rec[4])) from e
                out[k] = _new_record(make, rec[0], rec[1], rec[2], rec[3], value, headers)
        return False

    cdef _out_of_range(self, uint32_t partition, uint64_t offset, uint64_t s, uint64_t e):
        if offset < s:
            return OffsetOutOfRange(
                f"offset {offset} of partition {partition} is before the start: the oldest "
                f"record still in the log is at offset {s}", partition, offset, s, e)
        return OffsetOutOfRange(
            f"offset {offset} of partition {partition} is beyond the end offset {e}",
            partition, offset, s, e)


cdef int _fill_waits(list parts, list offsets, uint32_t* pv, uint64_t* ov) except -1:
    cdef Py_ssize_t n = len(parts)
    if n != len(offsets) or n > MAX_PARTITIONS:
        raise ValueError("parts and offsets must be lists of the same length (<= 256)")
    for i in range(n):
        pv[i] = parts[i]
        ov[i] = offsets[i]
    return <int>n


cdef inline int _check_make(make) except -1:
    if not (isinstance(make, type) and issubclass(make, tuple)):
        raise TypeError("records are made as a tuple type (pyqueue.Record)")
    return 0


include "_log_memory.pxi"
include "_log_directory.pxi"
include "_log_groups.pxi"
