# Included by _core.pyx: the default object codec of every kind (Queue,
# Topic, Log, WorkQueue), multiprocessing's: pickle protocol 5 through
# multiprocessing.reduction.ForkingPickler's reducers, so that what a
# multiprocessing.Queue can carry, a pyqueue handle carries the same way
# (a Connection or a socket as a duplicated fd through the resource sharer,
# reducers registered with ForkingPickler.register, the process authkey
# refused). Decoding is pickle.loads, as multiprocessing's.
#
# ForkingPickler.dumps copies copyreg's dispatch table into a new pickler
# and a new BytesIO for every message (about 4x pickle.dumps for a small
# dict). Here one merged table (_TABLE: copyreg's, then the registered
# reducers over it, as ForkingPickler builds it) is shared by the picklers
# and rebuilt in place when either source dict changed (an O(1) check of
# their version tags), and one pickler (per flavour) whose output goes to a
# list is reused while no other call is using it: close to pickle.dumps,
# and a reducer registered (or replaced) at any time is honoured.

import copyreg as _copyreg
from multiprocessing.reduction import ForkingPickler as _ForkingPickler

cdef extern from *:
    """
    /* A number that changes whenever the dict is modified: its version tag
       (CPython <= 3.11; from 3.12 on the tag also carries watcher bits and
       is deprecated: 0, which makes the caller compare contents). */
    static unsigned long long pq_dict_version(PyObject *d) {
    #if PY_VERSION_HEX < 0x030C0000 && !defined(PYPY_VERSION)
        return (unsigned long long)((PyDictObject *)d)->ma_version_tag;
    #else
        (void)d;
        return 0;
    #endif
    }
    """
    unsigned long long pq_dict_version(object d)

# The dicts ForkingPickler reads (register() adds to the first in place).
cdef dict _mp_extra = _ForkingPickler._extra_reducers
cdef dict _mp_copyreg = _ForkingPickler._copyreg_dispatch_table

DEF REUSE_MAX_BYTES = 256   # a pickler that wrote more is not reused (its memo table grew)

cdef dict _TABLE = {}                 # the picklers' dispatch_table (the same dict, always)
cdef unsigned long long _v_extra = 0  # versions of the sources _TABLE was built from
cdef unsigned long long _v_copyreg = 0
cdef dict _snap_extra = None          # their contents then (where there are no versions)
cdef dict _snap_copyreg = None


cdef int _sync_table() except -1:
    """_TABLE as ForkingPickler would build it now (rebuilt in place when
    a source changed)."""
    global _v_extra, _v_copyreg, _snap_extra, _snap_copyreg
    cdef unsigned long long ve = pq_dict_version(_mp_extra)
    cdef unsigned long long vc = pq_dict_version(_mp_copyreg)
    if ve != 0 and vc != 0:
        if ve == _v_extra and vc == _v_copyreg:
            return 0
    elif _snap_extra is not None and _mp_extra == _snap_extra and _mp_copyreg == _snap_copyreg:
        return 0
    _TABLE.clear()
    _TABLE.update(_mp_copyreg)
    _TABLE.update(_mp_extra)
    _v_extra, _v_copyreg = ve, vc
    _snap_extra, _snap_copyreg = dict(_mp_extra), dict(_mp_copyreg)
    return 0


_sync_table()


class _MpPickler(pickle.Pickler):
    dispatch_table = _TABLE


class _Sink:
    __slots__ = ("write",)


cdef class _PicklerSlot:
    """A thread's reusable pickler: it writes into chunks, out-of-band
    buffers go to buffers (when made with oob)."""
    cdef object dump, clear_memo
    cdef list chunks
    cdef list buffers
    cdef bint busy

    def __cinit__(self, bint oob):
        self.chunks = []
        self.buffers = []
        sink = _Sink()
        sink.write = self.chunks.append
        p = _MpPickler(sink, 5, buffer_callback=self.buffers.append if oob else None)
        self.dump = p.dump
        self.clear_memo = p.clear_memo
        self.busy = False


# One reusable pickler of each flavour for the process. The GIL is held
# from the busy check to the dump, so a thread that finds one busy (another
# thread is inside a dump whose reducer released the GIL, or this thread
# pickles from within a reducer) takes a fresh pickler instead.
cdef list _slots = [None, None]


def _reset_slots():
    _slots[0] = None
    _slots[1] = None


_reset_slots()
os.register_at_fork(after_in_child=_reset_slots)


cdef object mp_dumps(obj, list buffers_out):
    """obj pickled with protocol 5 and multiprocessing's reducers, as bytes.
    buffers_out None: pickle buffers in band; else they are appended to it
    (PickleBuffer objects, as pickle's buffer_callback gets them)."""
    cdef int oob = buffers_out is not None
    cdef _PicklerSlot s = <_PicklerSlot>_slots[oob]
    cdef bint shared = True
    _sync_table()
    if s is None or s.busy:
        s = _PicklerSlot(oob)
        if _slots[oob] is None:
            _slots[oob] = s
        else:
            shared = False
    s.busy = True
    try:
        s.dump(obj)
        data = s.chunks[0] if len(s.chunks) == 1 else b"".join(s.chunks)
        if oob and s.buffers:
            buffers_out.extend(s.buffers)
        s.chunks.clear()
        s.buffers.clear()
        s.clear_memo()
    except BaseException:
        # A pickler that failed half way is not used again.
        if _slots[oob] is s:
            _slots[oob] = None
        raise
    finally:
        s.busy = False
    if shared and len(data) > REUSE_MAX_BYTES and _slots[oob] is s:
        _slots[oob] = None  # its memo table may have grown: clearing it would cost each time
    if type(data) is not bytes:
        data = bytes(data)
    return data


def default_dumps(obj, list buffers=None):
    """The default codec's encoder (for pyqueue._topic, _log and _workq and
    for tests): see mp_dumps."""
    return mp_dumps(obj, buffers)
