"""The files of a directory-mode log, and their recovery.

    PATH/log.json                the log's parameters (written once, atomically)
    PATH/control                 the control file every user maps (csrc/pq_dlog.h)
    PATH/.lock-open              flock'ed (exclusive) while a process opens the log
    PATH/.lock-users             flock'ed (shared) by every process that has it open
    PATH/partition-N/            one directory per partition:
        <20-digit base offset>.log     records (csrc/pq_dseg.h), preallocated
        <20-digit base offset>.index   the segment's sparse offset index
        <base>.log.damaged-N           bytes recovery set aside (see recover_partition)

Every file is opened with O_NOFOLLOW (a symbolic link planted in place of
one is refused, never written through), a new one with O_EXCL, and gets
exactly the log's permission bits (0600 by default) whatever the umask.
A new segment is made under a temporary name (<base>.log.new) and renamed
into place once sized and initialised, so no half-made segment is ever
listed. An existing log directory must belong to the caller and not be
writable by others (check_dir) unless the caller trusts its owner.

An opener that can take .lock-users exclusively is alone: no other process
has the log open, so it recovers (repairs each partition) and rebuilds
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
import stat

from pyqueue import _log
from pyqueue.errors import CorruptRecord, SegmentMismatch

META = "log.json"
CONTROL = "control"
FORMAT = 1
_SEG_RE = re.compile(r"^([0-9]{20})\.log$")
_STRAY_RE = re.compile(r"^([0-9]{20})\.(log|index)(\.new)?$")
FILE_PERM = 0o600
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def dir_mode(perm):
    """The mode of a log's directories for file permission bits perm: x
    wherever there is r (0600 -> 0700, 0640 -> 0750)."""
    return perm | ((perm & 0o444) >> 2)


# ---- files, never through a link ----------------------------------------

def _refuse(path, why):
    return PermissionError(errno.EPERM, f"refused: {why}", str(path))


def open_file(file_path, flags, perm=FILE_PERM):
    """os.open that never follows a symbolic link (O_NOFOLLOW: a link in
    place of a log file is a PermissionError naming it, and nothing is
    written through it) and only opens regular files; a file this process
    creates or owns gets exactly perm, whatever the umask."""
    try:
        # O_NONBLOCK: a FIFO planted in place of a file is opened at once
        # (and refused below) instead of waiting for a writer for ever.
        fd = os.open(file_path, flags | _NOFOLLOW | os.O_NONBLOCK, perm)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _refuse(file_path, "is a symbolic link (a log's files are never followed "
                                     "through links)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(file_path, "is not a regular file")
        os.set_blocking(fd, True)
        if flags & os.O_CREAT and st.st_uid == os.geteuid():
            if stat.S_IMODE(st.st_mode) != perm:
                os.fchmod(fd, perm)
            _give_to_log_owner(fd, file_path, st)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _give_to_log_owner(fd, file_path, st):
    """root making a file in a directory of another user's log (opened with
    trust_owner=True: `pyqueue tail`, an administrator's recovery) gives it
    to the directory's owner and group: a root-owned 0600 file there would
    lock the log's owner out of their own log."""
    if os.geteuid() != 0:
        return
    d = os.lstat(os.path.dirname(os.fspath(file_path)) or ".")
    if d.st_uid != 0 and (st.st_uid, st.st_gid) != (d.st_uid, d.st_gid):
        if fd is None:
            os.chown(file_path, d.st_uid, d.st_gid, follow_symlinks=False)
        else:
            os.fchown(fd, d.st_uid, d.st_gid)


def create_file(file_path, perm=FILE_PERM, flags=os.O_RDWR):
    """A new file (O_EXCL): a leftover regular file of that name (an
    interrupted roll or write of ours) is removed first; anything else in
    its place (a link, a directory) is refused."""
    for _attempt in range(2):
        try:
            return open_file(file_path, flags | os.O_CREAT | os.O_EXCL, perm)
        except FileExistsError:
            st = os.lstat(file_path)
            if stat.S_ISLNK(st.st_mode):
                raise _refuse(file_path, "is a symbolic link (a log's files are never "
                                         "followed through links)") from None
            if not stat.S_ISREG(st.st_mode):
                raise _refuse(file_path, "is not a regular file") from None
            os.unlink(file_path)
    raise FileExistsError(errno.EEXIST, f"{file_path} keeps appearing", str(file_path))


def check_dir(path, trust_owner=False, perm=None):
    """Refuse (PermissionError naming the path and the reason) a directory
    that is a symbolic link, is not a directory, belongs to another user, or
    is writable by others (by its group too unless perm grants the group
    write access): whoever can write it can plant links and files in it.
    trust_owner=True accepts another owner and its mode (links stay
    refused)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(path, "is a symbolic link, not the log's directory")
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, f"{path}: not a directory", str(path))
    if trust_owner:
        return
    me = os.geteuid()
    if st.st_uid != me:
        raise _refuse(path, f"the directory belongs to uid {st.st_uid}, not to this process's "
                            f"uid {me}; pass trust_owner=True to use it on purpose")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o002 or (mode & 0o020 and not (perm or 0) & 0o020):
        raise _refuse(path, f"the directory is writable by {'others' if mode & 0o002 else 'its group'} "
                            f"(mode {mode:04o}); chmod it to 0700 (or the log's perm), or pass "
                            "trust_owner=True")


def make_dir(path, perm=FILE_PERM, trust_owner=False, in_log=False):
    """Make a directory of the log with exactly dir_mode(perm) (whatever
    the umask), or check the one that exists (check_dir). in_log: a
    directory inside the log's (a partition's), given to the log's owner
    when root makes it (_give_to_log_owner)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        check_dir(path, trust_owner, perm)
        return False
    try:
        os.chmod(path, dir_mode(perm), follow_symlinks=False)
    except NotImplementedError:  # pragma: no cover (Linux has lchmod-less chmod of a dir)
        os.chmod(path, dir_mode(perm))
    if in_log:
        _give_to_log_owner(None, path, os.lstat(path))
    check_dir(path, trust_owner, perm)
    return True


def partition_dir(path, p):
    return os.path.join(path, f"partition-{p}")


def segment_path(path, p, base, ext="log"):
    return os.path.join(partition_dir(path, p), f"{base:020d}.{ext}")


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- parameters ---------------------------------------------------------

def read_meta(path, owner=None):
    """The parameters in PATH/log.json, or None when there is none. owner:
    a list, given the uid of the file read (fstat of what was read)."""
    try:
        fd = open_file(os.path.join(path, META), os.O_RDONLY)
        if owner is not None:
            owner.append(os.fstat(fd).st_uid)
        with open(fd, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise
    except (OSError, ValueError) as e:
        raise SegmentMismatch(f"{path}: unreadable {META}: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SegmentMismatch(f"{path}/{META} is not a pyqueue log of format {FORMAT}")
    return meta


def write_meta(path, meta, perm=FILE_PERM):
    """Write log.json atomically (a new temporary file, fsync, rename,
    fsync dir)."""
    tmp = os.path.join(path, META + ".tmp")
    fd = create_file(tmp, perm, os.O_WRONLY)
    with open(fd, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(path, META))
    _fsync_dir(path)


# ---- locks --------------------------------------------------------------

class OpenLock:
    """Held while a process opens (and maybe recovers) the log."""

    def __init__(self, path, perm=FILE_PERM):
        self._fd = open_file(os.path.join(path, ".lock-open"), os.O_RDWR | os.O_CREAT, perm)

    def __enter__(self):
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self._fd)  # drops the flock


def take_users_lock(path, perm=FILE_PERM):
    """(fd, alone): a shared-lockable fd on .lock-users, and whether this
    process could lock it exclusively (nobody else has the log open). An
    alone caller must call share_users_lock once it has recovered."""
    fd = open_file(os.path.join(path, ".lock-users"), os.O_RDWR | os.O_CREAT, perm)
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
    fd = open_file(file_path, os.O_RDWR)
    try:
        _reserve(fd, upto, file_path, start)
    finally:
        os.close(fd)


def _map_file(file_path, writable, size=None, create=False, sparse=False, perm=FILE_PERM):
    """Map a file, made (create: a new file, O_EXCL) or grown to `size`
    first: with its disk blocks reserved, or sparse (a segment's data
    file, whose blocks the appender reserves as it fills: DirLogCore)."""
    if create:
        fd = create_file(file_path, perm)
    else:
        fd = open_file(file_path, os.O_RDWR if writable else os.O_RDONLY)
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


def create_segment(path, p, base, segment_bytes, perm=FILE_PERM):
    """Make the files of a new (empty, active) segment and map them: under
    temporary names (<base>.log.new, <base>.index.new: new files, O_EXCL),
    sized and initialised, then renamed into place, the data file last (its
    name is what lists the segment). A roller killed at any point leaves
    either no segment of that base or a whole empty one; a file of that
    base left by an interrupted roll is replaced."""
    dpath, ipath = segment_path(path, p, base), segment_path(path, p, base, "index")
    data = _map_file(dpath + ".new", True, segment_bytes, create=True, sparse=True, perm=perm)
    try:
        index = _map_file(ipath + ".new", True, _log.index_file_size(segment_bytes),
                          create=True, perm=perm)
    except BaseException:
        data.close()
        raise
    m = _log.SegmentMap(data, index, base, dpath, True)
    try:
        m.index_init()
        for target in (ipath, dpath):  # a leftover of ours is replaced; a link is not ours
            if os.path.islink(target):
                raise _refuse(target, "is a symbolic link (a log's files are never followed "
                                      "through links)")
        os.rename(ipath + ".new", ipath)
        os.rename(dpath + ".new", dpath)
    except BaseException:
        m.close()
        raise
    return m


def remove_strays(path, p, active_base):
    """Under the partition's lock: remove what rolls that died left, files
    of segments past the active one (made, never switched to) and
    temporary files. The bases removed."""
    gone = set()
    try:
        names = os.listdir(partition_dir(path, p))
    except FileNotFoundError:
        return []
    for name in names:
        mt = _STRAY_RE.match(name)
        if mt is None or not (mt.group(3) or int(mt.group(1)) > active_base):
            continue
        try:
            os.unlink(os.path.join(partition_dir(path, p), name))
        except FileNotFoundError:
            continue
        if mt.group(2) == "log" and not mt.group(3):
            gone.add(int(mt.group(1)))
    return sorted(gone)


def map_segment(path, p, base, writable, segment_bytes=None, perm=FILE_PERM):
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
            fresh = not os.path.lexists(ipath)
            index = _map_file(ipath, True, size, create=fresh, perm=perm)
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
            fd = open_file(segment_path(path, p, base, ext), os.O_RDWR)
        except FileNotFoundError:
            continue  # a segment without its index is read by a walk
        try:
            os.ftruncate(fd, -(-size // page) * page)
        finally:
            os.close(fd)


def remove_segment(path, p, base):
    for ext in ("log", "index"):
        try:
            os.unlink(segment_path(path, p, base, ext))
        except FileNotFoundError:
            pass


# ---- creation and recovery ---------------------------------------------

def create_layout(path, meta, perm=FILE_PERM, trust_owner=False):
    """A new log: partition directories with an empty first segment each,
    then log.json (a directory without it is not a log yet)."""
    for p in range(meta["partitions"]):
        make_dir(partition_dir(path, p), perm, trust_owner, in_log=True)
        if not list_bases(path, p):
            create_segment(path, p, 0, meta["segment_bytes"], perm).close()
    write_meta(path, meta, perm)


def saved_state(path, partitions):
    """What an existing control file keeps that the segment files do not:
    ([(group, {partition: (offset, ms)})], {partition: snapshot}); None
    when it is missing or not usable (then committed offsets are lost).
    A snapshot's end_offset/end_pos/active_base are what was published."""
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
        snaps = {q: core._snapshot(q) for q in range(partitions)}
        return groups, snaps
    except (SegmentMismatch, ValueError, OSError):
        return None
    finally:
        core._close_control()


def read_index_header(path, p, base):
    """The sealed header of a segment's index file (None: not sealed or no
    index; a damaged one counts as not sealed)."""
    ipath = segment_path(path, p, base, "index")
    try:
        fd = open_file(ipath, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, 64, 0)
    finally:
        os.close(fd)
    try:
        return _log.index_header_of(head, size, base, ipath)
    except CorruptRecord:
        return None


def data_end(path, p, base):
    """Where the last data of a segment's data file ends (SEEK_DATA /
    SEEK_HOLE): past it the sparse file is a hole, all zeros. Recovery
    reads no further: on tmpfs even reading a hole through a shared mapping
    takes a page, and on a full disk that is a SIGBUS."""
    try:
        fd = open_file(segment_path(path, p, base), os.O_RDONLY)
    except FileNotFoundError:
        return 0
    try:
        end = pos = 0
        while True:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # no data past pos
                    return end
                if e.errno == errno.EINVAL:  # no SEEK_DATA here: all of it
                    return os.fstat(fd).st_size
                raise
            end = pos = os.lseek(fd, start, os.SEEK_HOLE)
    finally:
        os.close(fd)


def data_size(path, p, base):
    try:
        return os.lstat(segment_path(path, p, base)).st_size
    except FileNotFoundError:
        return 0


def new_control(path, partitions, segment_bytes, perm=FILE_PERM):
    """(Re)make the control file and map it. A control file of the right
    size keeps its disk blocks (rewritten in place), so that a log on a
    full disk can still be opened."""
    size = _log.control_size(partitions, _log.MAX_GROUPS)
    cpath = os.path.join(path, CONTROL)
    fd = open_file(cpath, os.O_RDWR | os.O_CREAT, perm)
    try:
        if os.fstat(fd).st_size != size:
            os.ftruncate(fd, 0)
            _reserve(fd, size, cpath)
        mm = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    _log.control_create(mm, partitions, segment_bytes, _log.MAX_GROUPS)
    return mm


def map_control(path):
    return _map_file(os.path.join(path, CONTROL), True)


def keep_aside(path, p, base, data, perm=FILE_PERM):
    """Save bytes recovery takes out of a segment into a new file beside it,
    <base>.log.damaged-N (N the first free number): their path."""
    stem = segment_path(path, p, base)
    for n in range(1, 1_000_000):
        target = f"{stem}.damaged-{n}"
        try:
            fd = open_file(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, perm)
        except FileExistsError:
            continue
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as e:
            os.close(fd)
            os.unlink(target)
            raise OSError(e.errno, f"recovery of {stem} must keep {len(data)} damaged bytes "
                                   f"aside and cannot ({os.strerror(e.errno)}): nothing was "
                                   "changed; free some space and open the log again") from None
        os.close(fd)
        _fsync_dir(partition_dir(path, p))
        return target
    raise OSError(errno.EEXIST, f"{stem}: too many .damaged files")


def _damage(m, path, p, base, end, dirty, next_offset, perm):
    """Recovery is about to drop the `dirty` bytes after the last valid
    record (at `end`): when a valid record lies among them (damage in the
    middle of the records, not the tail of a write that died), save them
    aside first. The report fields."""
    out = {}
    if dirty:
        after = m.find_record(end + 8, end + dirty, next_offset + 1)
        if after is not None:
            out["kept_aside"] = keep_aside(path, p, base, m.read_bytes(end, end + dirty), perm)
            out["valid_record_at"] = after
    return out


def _segment_end_offset(path, p, base):
    """The offset after the last valid record of a segment (its sealed
    header's count, else a walk), read only."""
    try:
        m = map_segment(path, p, base, False)
    except SegmentMismatch:  # an empty file
        return base
    if m is None:
        return base
    try:
        try:
            h = m.index_header()
        except CorruptRecord:
            h = None
        if h is not None and h["end_pos"] <= m.data_size:
            return base + h["records"]
        return m.scan(min(m.data_size, data_end(path, p, base)), False)[0][1]
    except SegmentMismatch:
        return base
    finally:
        m.close()


def _has_records(path, p, base):
    try:
        fd = open_file(segment_path(path, p, base), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return os.pread(fd, 4, 0) not in (b"", b"\0\0\0\0")
    finally:
        os.close(fd)


def _recover_closed(path, p, base, next_base, report, perm):
    """Check a closed segment: one whose index is sealed is trusted; one
    that is not (its roll was interrupted) or whose file is shorter than
    its seal says is scanned, resealed and trimmed. Returns (its bytes of
    records, the offset after its last record)."""
    if data_size(path, p, base) == 0:  # emptied (a closed segment always holds records)
        report.append({"partition": p, "segment": base, "file_bytes": 0,
                       "lost_offsets": [base, next_base]})
        return 0, base
    m = map_segment(path, p, base, True)
    if m is None:
        raise SegmentMismatch(f"{segment_path(path, p, base)} vanished during recovery")
    try:
        try:
            h = m.index_header()
        except CorruptRecord:
            h = None
        if h is not None and h["end_pos"] <= m.data_size:
            return h["end_pos"], base + h["records"]
        limit = min(m.data_size, data_end(path, p, base))
        cursor, torn = m.scan(limit, m.has_index)
        end, next_offset = cursor[0], cursor[1]
        if next_offset > next_base:
            raise CorruptRecord(f"{segment_path(path, p, base)}: its records run past offset "
                                f"{next_base}, where the next segment starts",
                                path=segment_path(path, p, base), partition=p)
        dirty = m.dirty_bytes(end, limit)
        entry = {"partition": p, "segment": base, "truncated_bytes": dirty,
                 "torn_records": int(torn)}
        entry.update(_damage(m, path, p, base, end, dirty, next_offset, perm))
        if h is not None:  # the file lost bytes its seal covers
            entry["file_bytes"] = m.data_size
            entry["sealed_bytes"] = h["end_pos"]
            entry["lost_records"] = base + h["records"] - next_offset
        if m.has_index:
            m.index_init()
            m.seal(cursor)
        if dirty or torn or h is not None:
            report.append(entry)
    finally:
        m.close()
    trim_segment(path, p, base, end, cursor[2])
    return end, next_offset


def recover_partition(path, p, segment_bytes, old, report, perm=FILE_PERM, trust_owner=False):
    """Recover one partition's segment files: drop what retention had
    already given up, remove what rolls that died left, check the closed
    segments, scan the active one and zero what a writer that died left
    past its last valid record. `old` is the previous control's snapshot
    of the partition (None: unknown): what it published and the files no
    longer hold is reported. Returns (start offset, active base, cursor,
    closed bytes, active SegmentMap)."""
    make_dir(partition_dir(path, p), perm, trust_owner, in_log=True)
    bases = list_bases(path, p)
    for name in os.listdir(partition_dir(path, p)):  # temporary files of a roll that died
        if name.endswith(".new") and _STRAY_RE.match(name):
            os.unlink(os.path.join(partition_dir(path, p), name))
    old_start = None if old is None else old["start_offset"]
    # Segments wholly before the start a previous user had set: their
    # removal was interrupted.
    while old_start is not None and len(bases) > 1 and bases[1] <= old_start:
        remove_segment(path, p, bases.pop(0))
    if not bases:
        bases = [0]
        create_segment(path, p, 0, segment_bytes, perm).close()
    if old_start is not None and old_start < bases[0]:
        report.append({"partition": p, "missing_offsets": [old_start, bases[0]],
                       "reason": "segment files gone"})
    # A roll that died after making the next segment (past the end then
    # published) and before switching to it: appends went on in the old
    # segment, past that base. Such a segment is empty: remove it.
    i = 0
    while i < len(bases) - 1:
        e = _segment_end_offset(path, p, bases[i])
        while i + 1 < len(bases) and bases[i + 1] < e and not _has_records(path, p, bases[i + 1]):
            report.append({"partition": p, "segment": bases[i + 1],
                           "removed": "an empty segment of a roll that did not finish"})
            remove_segment(path, p, bases.pop(i + 1))
        i += 1
    closed = 0
    for i, base in enumerate(bases[:-1]):
        nbytes, e = _recover_closed(path, p, base, bases[i + 1], report, perm)
        closed += nbytes
        if e < bases[i + 1]:
            report.append({"partition": p, "missing_offsets": [e, bases[i + 1]],
                           "reason": "records gone between segments"})
    last = bases[-1]
    file_bytes = data_size(path, p, last)
    m = map_segment(path, p, last, True, segment_bytes, perm)
    try:
        try:
            sealed = m.index_header()
        except CorruptRecord:
            sealed = None
        if sealed is not None:
            # Sealed: it was rolled, but its successor was never made.
            end_offset = m.scan(sealed["end_pos"], False)[0][1]
            m.close()
            closed += _recover_closed(path, p, last, end_offset, report, perm)[0]
            last = end_offset
            file_bytes = segment_bytes
            m = create_segment(path, p, last, segment_bytes, perm)
        m.index_init()
        limit = min(m.data_size, data_end(path, p, last))
        cursor, torn = m.scan(limit, True)
        end = cursor[0]
        dirty = m.dirty_bytes(end, limit)
        entry = {"partition": p, "segment": last, "truncated_bytes": dirty,
                 "torn_records": int(torn)}
        entry.update(_damage(m, path, p, last, end, dirty, cursor[1], perm))
        if dirty:
            m.zero(end, end + dirty)
            m.sync(end, end + dirty)
        if file_bytes < segment_bytes:  # an active data file is always segment_bytes long
            entry["file_bytes"] = file_bytes
            entry["expected_file_bytes"] = segment_bytes
        if old is not None and old["active_base"] == last and old["end_offset"] > cursor[1]:
            # records the previous users had published are gone
            entry["lost_offsets"] = [cursor[1], old["end_offset"]]
            entry["lost_bytes"] = max(0, old["end_pos"] - end)
        if len(entry) > 4 or dirty or torn:
            report.append(entry)
    except BaseException:
        m.close()
        raise
    return bases[0], last, cursor, closed, m
