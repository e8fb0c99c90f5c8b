"""The files of a directory-mode log, and their recovery.

    PATH/log.json                the log's parameters (written once, atomically)
    PATH/control                 the control file every user maps (csrc/pq_dlog.h)
    PATH/.lock-open              flock'ed (exclusive) while a process opens the log
    PATH/.lock-users             flock'ed (shared) by every process that has it open
    PATH/partition-N/            one directory per partition:
        <20-digit base offset>.log     records (csrc/pq_dseg.h), preallocated
        <20-digit base offset>.index   the segment's sparse offset index

An opener that can take .lock-users exclusively is alone: no other process
has the log open, so it recovers (docs/design.md, "Recovery") and rebuilds
the control file before it shares the log. The kernel drops a flock when
its holder dies, SIGKILL included, so a crashed user never makes the next
opener think it is not alone for ever.
"""
import errno
import fcntl
import json
import mmap
import os
import re

from pyqueue import _log
from pyqueue.errors import CorruptRecord, SegmentMismatch

META = "log.json"
CONTROL = "control"
FORMAT = 1
_SEG_RE = re.compile(r"^([0-9]{20})\.log$")


def partition_dir(path, p):
    return os.path.join(path, f"partition-{p}")


def segment_path(path, p, base, ext="log"):
    return os.path.join(partition_dir(path, p), f"{base:020d}.{ext}")


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- parameters ---------------------------------------------------------

def read_meta(path):
    """The parameters in PATH/log.json, or None when there is none."""
    try:
        with open(os.path.join(path, META), encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise SegmentMismatch(f"{path}: unreadable {META}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SegmentMismatch(f"{path}/{META} is not a pyqueue log of format {FORMAT}")
    return meta


def write_meta(path, meta):
    """Write log.json atomically (temporary file, fsync, rename, fsync dir)."""
    tmp = os.path.join(path, META + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(path, META))
    _fsync_dir(path)


# ---- locks --------------------------------------------------------------

class OpenLock:
    """Held while a process opens (and maybe recovers) the log."""

    def __init__(self, path):
        self._fd = os.open(os.path.join(path, ".lock-open"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                           0o600)

    def __enter__(self):
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self._fd)  # drops the flock


def take_users_lock(path):
    """(fd, alone): a shared-lockable fd on .lock-users, and whether this
    process could lock it exclusively (nobody else has the log open). An
    alone caller must call share_users_lock once it has recovered."""
    fd = os.open(os.path.join(path, ".lock-users"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd, True
    except BlockingIOError:
        pass
    except BaseException:
        os.close(fd)
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return fd, False


def share_users_lock(fd):
    # Not atomic (flock drops, then takes): the caller holds the open lock,
    # so no other opener can come between.
    fcntl.flock(fd, fcntl.LOCK_SH)


# ---- segment files ------------------------------------------------------

def list_bases(path, p):
    """Sorted base offsets of the partition's segments."""
    try:
        names = os.listdir(partition_dir(path, p))
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for m in map(_SEG_RE.match, names) if m)


def _reserve(fd, size, what, start=0):
    """Disk blocks for bytes [start, size) of a file."""
    try:
        os.posix_fallocate(fd, start, size - start)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            if os.fstat(fd).st_size < size:  # a file system without fallocate
                os.ftruncate(fd, size)
            return
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise OSError(e.errno, f"no room for {what} of {size} bytes "
                                   f"({os.strerror(e.errno)})") from None
        raise


def allocate(file_path, start, upto):
    """Disk blocks for bytes [start, upto) of a sparse segment file
    (OSError ENOSPC on a full disk, before anything is written there)."""
    fd = os.open(file_path, os.O_RDWR | os.O_CLOEXEC)
    try:
        _reserve(fd, upto, file_path, start)
    finally:
        os.close(fd)


def _map_file(file_path, writable, size=None, create=False, sparse=False):
    """Map a file, made (create) or grown to `size` first: with its disk
    blocks reserved, or sparse (a segment's data file, whose blocks the
    appender reserves as it fills: DirLogCore)."""
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
    if create:
        flags |= os.O_CREAT | os.O_TRUNC
    fd = os.open(file_path, flags, 0o600)
    try:
        if size is not None:
            if create or os.fstat(fd).st_size < size:
                if sparse:
                    os.ftruncate(fd, size)
                else:
                    _reserve(fd, size, file_path)
        n = os.fstat(fd).st_size
        if n == 0:
            raise SegmentMismatch(f"{file_path} is empty")
        return mmap.mmap(fd, n, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
    finally:
        os.close(fd)


def create_segment(path, p, base, segment_bytes):
    """Make the files of a new (empty, active) segment and map them. A
    file of that base left by an interrupted roll is made anew."""
    data = _map_file(segment_path(path, p, base), True, segment_bytes, create=True, sparse=True)
    try:
        index = _map_file(segment_path(path, p, base, "index"), True,
                          _log.index_file_size(segment_bytes), create=True)
    except BaseException:
        data.close()
        raise
    m = _log.SegmentMap(data, index, base, segment_path(path, p, base), True)
    m.index_init()
    return m


def map_segment(path, p, base, writable, segment_bytes=None):
    """Map an existing segment (None when its data file is gone). With
    segment_bytes (the active segment), the data file is grown to it and a
    missing index file is made."""
    dpath = segment_path(path, p, base)
    try:
        data = _map_file(dpath, writable, segment_bytes, sparse=True)
    except FileNotFoundError:
        return None
    ipath = segment_path(path, p, base, "index")
    index = None
    try:
        if segment_bytes is not None:
            size = _log.index_file_size(segment_bytes)
            fresh = not os.path.exists(ipath)
            index = _map_file(ipath, True, size, create=fresh)
        else:
            index = _map_file(ipath, writable)
    except (FileNotFoundError, SegmentMismatch):
        index = None  # read by a walk from the start
    except BaseException:
        data.close()
        raise
    m = _log.SegmentMap(data, index, base, dpath, writable)
    if index is not None and segment_bytes is not None and fresh:
        m.index_init()
    return m


def trim_segment(path, p, base, end_pos, index_entries):
    """Shrink a closed segment's files to what they hold (whole pages)."""
    page = mmap.PAGESIZE
    for ext, size in (("log", max(end_pos, 1)), ("index", 64 + 8 * index_entries)):
        try:
            with open(segment_path(path, p, base, ext), "r+b") as f:
                f.truncate(-(-size // page) * page)
        except FileNotFoundError:
            pass  # a segment without its index is read by a walk


def remove_segment(path, p, base):
    for ext in ("log", "index"):
        try:
            os.unlink(segment_path(path, p, base, ext))
        except FileNotFoundError:
            pass


# ---- creation and recovery ---------------------------------------------

def create_layout(path, meta):
    """A new log: partition directories with an empty first segment each,
    then log.json (a directory without it is not a log yet)."""
    for p in range(meta["partitions"]):
        os.makedirs(partition_dir(path, p), mode=0o700, exist_ok=True)
        if not list_bases(path, p):
            create_segment(path, p, 0, meta["segment_bytes"]).close()
    write_meta(path, meta)


def saved_state(path, partitions):
    """What an existing control file keeps that the segment files do not:
    ([(group, {partition: (offset, ms)})], {partition: start offset}); None
    when it is missing or not usable (then committed offsets are lost)."""
    cpath = os.path.join(path, CONTROL)
    try:
        mm = _map_file(cpath, True)
    except (FileNotFoundError, SegmentMismatch):
        return None
    core = _log.DirLogCore.__new__(_log.DirLogCore)
    try:
        core._attach_control(mm, 0, 0.0)
        if core.partitions != partitions:
            return None
        gt = core._group_table()
        groups = []
        for g, name in gt.names():
            offs = {}
            for q in range(partitions):
                off, ms = gt.committed(g, q)
                if off is not None:
                    offs[q] = (off, ms)
            groups.append((name, offs))
        starts = {q: core._snapshot(q)["start_offset"] for q in range(partitions)}
        return groups, starts
    except (SegmentMismatch, ValueError, OSError):
        return None
    finally:
        core._close_control()


def read_index_header(path, p, base):
    """The sealed header of a segment's index file (None: not sealed or no
    index; a damaged one counts as not sealed)."""
    try:
        with open(segment_path(path, p, base, "index"), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(64)
    except FileNotFoundError:
        return None
    try:
        return _log.index_header_of(head, size, base, segment_path(path, p, base, "index"))
    except CorruptRecord:
        return None


def data_size(path, p, base):
    try:
        return os.stat(segment_path(path, p, base)).st_size
    except FileNotFoundError:
        return 0


def new_control(path, partitions, segment_bytes):
    """(Re)make the control file and map it."""
    size = _log.control_size(partitions, _log.MAX_GROUPS)
    cpath = os.path.join(path, CONTROL)
    fd = os.open(cpath, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, 0)
        _reserve(fd, size, cpath)
        mm = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    _log.control_create(mm, partitions, segment_bytes, _log.MAX_GROUPS)
    return mm


def map_control(path):
    return _map_file(os.path.join(path, CONTROL), True)


def _recover_closed(path, p, base, next_base, report):
    """Check a closed segment: one whose index is sealed is trusted; one
    that is not (its roll was interrupted) is scanned, resealed and
    trimmed. Returns its bytes of records."""
    m = map_segment(path, p, base, True)
    if m is None:
        raise SegmentMismatch(f"{segment_path(path, p, base)} vanished during recovery")
    try:
        try:
            h = m.index_header()
        except CorruptRecord:
            h = None
        if h is not None and h["end_pos"] <= m.data_size:
            return h["end_pos"]
        cursor, torn = m.scan(m.data_size, m.has_index)
        end, next_offset = cursor[0], cursor[1]
        if next_offset > next_base:
            raise CorruptRecord(f"{segment_path(path, p, base)}: its records run past offset "
                                f"{next_base}, where the next segment starts",
                                path=segment_path(path, p, base), partition=p)
        dirty = m.dirty_bytes(end, m.data_size)
        if m.has_index:
            m.index_init()
            m.seal(cursor)
        if dirty or torn:
            report.append({"partition": p, "segment": base, "truncated_bytes": dirty,
                           "torn_records": int(torn)})
    finally:
        m.close()
    trim_segment(path, p, base, end, cursor[2])
    return end


def recover_partition(path, p, segment_bytes, old_start, report):
    """Recover one partition's segment files: drop what retention had
    already given up, check the closed segments, scan the active one and
    zero what a writer that died left past its last valid record. Returns
    (start offset, active base, cursor, closed bytes, active SegmentMap)."""
    os.makedirs(partition_dir(path, p), mode=0o700, exist_ok=True)
    bases = list_bases(path, p)
    # Segments wholly before the start a previous user had set: their
    # removal was interrupted.
    while old_start is not None and len(bases) > 1 and bases[1] <= old_start:
        remove_segment(path, p, bases.pop(0))
    if not bases:
        bases = [0]
        create_segment(path, p, 0, segment_bytes).close()
    closed = 0
    for i, base in enumerate(bases[:-1]):
        closed += _recover_closed(path, p, base, bases[i + 1], report)
    last = bases[-1]
    m = map_segment(path, p, last, True, segment_bytes)
    try:
        try:
            sealed = m.index_header()
        except CorruptRecord:
            sealed = None
        if sealed is not None:
            # Sealed: it was rolled, but its successor was never made.
            end_offset = m.scan(sealed["end_pos"], False)[0][1]
            m.close()
            closed += _recover_closed(path, p, last, end_offset, report)
            last = end_offset
            m = create_segment(path, p, last, segment_bytes)
        m.index_init()
        cursor, torn = m.scan(segment_bytes, True)
        end = cursor[0]
        dirty = m.dirty_bytes(end, m.data_size)
        if dirty:
            m.zero(end, end + dirty)
            m.sync(end, end + dirty)
        if dirty or torn:
            report.append({"partition": p, "segment": last, "truncated_bytes": dirty,
                           "torn_records": int(torn)})
    except BaseException:
        m.close()
        raise
    return bases[0], last, cursor, closed, m
