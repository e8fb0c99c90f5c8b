"""Named shared-memory segments: create, open, unlink, and removal of the
unnamed ones when their creating process exits.

Every pyqueue segment is a POSIX shared-memory object named
"/pyqueue.<name>" (so /dev/shm/pyqueue.<name> on Linux); out-of-band
messages of a queue use "/pyqueue.<name>.oob-<pid>-<16 hex digits>".

The objects are opened as the files they are on Linux (/dev/shm/<entry>,
which is what shm_open does), with O_NOFOLLOW and O_CLOEXEC: every error is
an OSError subclass with its errno (FileExistsError, PermissionError, ...)
and a message naming the segment, never another library's exception.
"""
import atexit
import errno
import mmap
import os
import secrets
import struct
import time

from pyqueue import _core
from pyqueue.errors import SegmentMismatch, SegmentNotFound, SegmentNotOwned

PREFIX = "pyqueue."
SHM_DIR = "/dev/shm"
_OPEN_WAIT_S = 2.0  # how long an opener waits for a creator to finish

# The kernel's limit on one file name in /dev/shm (NAME_MAX), in bytes.
NAME_MAX = 255
# A name is at most this many bytes in UTF-8, for every kind, so that
# "pyqueue." + name + the longest suffix pyqueue adds fit in NAME_MAX.
NAME_MAX_BYTES = 200
# The longest suffix pyqueue adds to a name: ".oob-<pid>-<16 hex digits>"
# (a pid has at most 10 digits). A new suffix must fit in SUFFIX_MAX.
OOB_SUFFIX_MAX = len(".oob-") + 10 + 1 + 16
SUFFIX_MAX = NAME_MAX - len(PREFIX) - NAME_MAX_BYTES   # 47
assert OOB_SUFFIX_MAX <= SUFFIX_MAX

KIND_NAMES = {1: "queue", 2: "topic", 3: "log", 4: "directory-log control file",
              5: "work queue"}

_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


def check_name(name):
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    # ".oob-" is reserved: "/pyqueue.<name>.oob-<pid>-<hex>" are the
    # out-of-band segments of queue <name> (unlink() and `pyqueue gc` go by it).
    if (not name or "/" in name or "\0" in name or name.startswith(".")
            or ".oob-" in name):
        raise ValueError(f"invalid queue name {name!r}: 1-{NAME_MAX_BYTES} bytes in UTF-8, "
                         "no '/', no NUL, not starting with '.', not containing '.oob-'")
    try:
        n = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"invalid queue name {name!r}: not encodable in UTF-8 "
                         "(a lone surrogate)") from None
    if n > NAME_MAX_BYTES:
        raise ValueError(
            f"queue name too long: {n} bytes in UTF-8 ({len(name)} characters); at most "
            f"{NAME_MAX_BYTES} bytes, so that '{PREFIX}' + name + the longest suffix pyqueue "
            f"adds ('.oob-<pid>-<16 hex>') fits the kernel's {NAME_MAX}-byte limit on a "
            f"{SHM_DIR} file name")
    return name


def unique_name():
    return f"anon-{os.getpid()}-{secrets.token_hex(8)}"


def shm_name(name):
    return "/" + PREFIX + name


def shm_path(posix_name):
    """The file of a POSIX shared-memory name ("/pyqueue.x" -> /dev/shm/pyqueue.x)."""
    return os.path.join(SHM_DIR, posix_name[1:] if posix_name.startswith("/") else posix_name)


def os_error(e, what, posix_name):
    """The OSError e (from an open/unlink of a segment) again, of the same
    class and errno, with a message that names the segment."""
    msg = f"cannot {what} segment {posix_name!r}: {os.strerror(e.errno)}"
    if e.errno == errno.ENAMETOOLONG:
        msg += f" (a {SHM_DIR} file name is at most {NAME_MAX} bytes)"
    err = type(e)(e.errno, msg)
    err.filename = shm_path(posix_name)
    return err


def shm_create(posix_name, mode):
    """A new segment's fd (O_EXCL), exactly `mode` whatever the umask;
    FileExistsError when the name exists."""
    try:
        fd = os.open(shm_path(posix_name), _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, mode)
    except OSError as e:
        if e.errno == errno.EEXIST:
            raise
        raise os_error(e, "create", posix_name) from None
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        shm_unlink(posix_name)
        raise
    return fd


def shm_open(posix_name):
    """An existing segment's fd; SegmentNotFound when there is none."""
    try:
        return os.open(shm_path(posix_name), _OPEN_FLAGS)
    except FileNotFoundError:
        raise SegmentNotFound(f"no pyqueue segment named {posix_name!r}") from None
    except OSError as e:
        raise os_error(e, "open", posix_name) from None


def shm_unlink(posix_name):
    """Remove a segment's name: True if it existed. Raises the OSError
    (PermissionError: another user's in the sticky /dev/shm) with a message."""
    try:
        os.unlink(shm_path(posix_name))
    except FileNotFoundError:
        return False
    except OSError as e:
        raise os_error(e, "remove", posix_name) from None
    return True


def create(name, size, mode, init, hint=None, reserve_bytes=None):
    """Create segment `name` of `size` bytes and run init(mmap) on it.
    Returns the mapping, or None when a segment of that name exists.
    hint: what to lower when /dev/shm has no room (reserve). reserve_bytes:
    how many bytes from the start get their pages now (default: all); the
    rest of the file is sparse, and the segment's kind backs it before
    writing there (a queue: pq_ring_reserve)."""
    try:
        fd = shm_create(shm_name(name), mode)
    except FileExistsError:
        return None
    try:
        os.ftruncate(fd, size)
        reserve(fd, size if reserve_bytes is None else min(reserve_bytes, size), name, hint)
        mm = mmap.mmap(fd, size)
        init(mm)
    except BaseException:
        shm_unlink(shm_name(name))
        raise
    finally:
        os.close(fd)
    return mm


def create_or_open(name, size, perm, init, kind, trust_owner=False, open_only=False, hint=None,
                   reserve_bytes=None):
    """The segment of a queue, topic, log or work queue: (name, mapping,
    perm, created). name None: a new unnamed segment, removed when this
    process exits (a queue's also earlier: release_unnamed). A name: made
    with `init` (unless open_only), or opened (validated as `kind`) when it
    exists already. hint: what to lower when /dev/shm is full."""
    if name is None:
        for _ in range(8):  # 64 random bits: a name taken is someone's plant
            name = unique_name()
            mm = create(name, size, perm, init, hint, reserve_bytes)
            if mm is not None:
                own(name)
                return name, mm, perm, True
        raise FileExistsError(errno.EEXIST, "cannot create an unnamed segment: 8 random "
                              "names were all taken")
    check_name(name)
    mm = None if open_only else create(name, size, perm, init, hint, reserve_bytes)
    if mm is not None:
        return name, mm, perm, True
    mm, perm = open_existing(name, kind, trust_owner)
    return name, mm, perm, False


def shm_size_note():
    """"/dev/shm is 64.0 MiB, 3.2 MiB free" (or "" when it cannot be told)."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return ""
    mib = 1024 * 1024
    return (f"{SHM_DIR} is {st.f_blocks * st.f_frsize / mib:.1f} MiB, "
            f"{st.f_bavail * st.f_frsize / mib:.1f} MiB free")


def reserve(fd, size, name, hint=None):
    """Allocate every page of a new segment now. A sparse segment would get
    its pages on first touch, and a write to a page that a full /dev/shm
    cannot provide kills the process with SIGBUS; reserved, a full /dev/shm
    is a clear OSError at creation instead, saying how big /dev/shm is and
    (hint) which parameter to lower. (A ring that wraps touches all its
    pages anyway, so this costs no memory in the long run.)"""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
            note = shm_size_note()
            raise OSError(e.errno, f"{SHM_DIR} has no room for segment {name!r} of {size} bytes "
                                   f"({os.strerror(e.errno)}{'; ' + note if note else ''})"
                                   f"{': ' + hint if hint else ''}") from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise


def open_existing(name, kind, trust_owner=False):
    """Map an existing segment after validating its header. Waits up to
    _OPEN_WAIT_S for a creator that is still initializing it. A segment
    owned by another user is refused unless trust_owner: names are
    predictable, and a squatter's segment would feed this process pickles."""
    try:
        fd = shm_open(shm_name(name))
    except SegmentNotFound:
        raise SegmentNotFound(f"no pyqueue segment named {name!r}") from None
    try:
        owner = os.fstat(fd).st_uid
        if not trust_owner and owner != os.geteuid():
            raise SegmentNotOwned(f"segment {name!r} belongs to uid {owner}, not to this "
                                  f"process's uid {os.geteuid()}; pass trust_owner=True to "
                                  "share it on purpose")
        deadline = time.monotonic() + _OPEN_WAIT_S
        delay = 0.0005
        while True:
            size = os.fstat(fd).st_size
            if size > 0:
                mm = mmap.mmap(fd, size)
                try:
                    rc = _check_kind(mm, name, kind)
                except BaseException:
                    mm.close()
                    raise
                if rc == 0:
                    return mm, os.fstat(fd).st_mode & 0o777
                mm.close()
            if time.monotonic() >= deadline:
                raise SegmentMismatch(f"segment {name!r} is empty or was never initialized")
            # Only reached in the short window where a creator has made the
            # segment but not yet published its header.
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
    finally:
        os.close(fd)


_KIND_AT = struct.Struct("<I")  # pq_segment_header.kind, after magic and version
_KIND_OFFSET = 12


def _check_kind(mm, name, kind):
    """_core.check_segment(mm, kind), with an error that names the kind
    asked for and the kind found when the segment is valid but another kind."""
    rc = _core.check_segment(mm, 0)
    if rc != 0:
        return rc
    (found,) = _KIND_AT.unpack_from(mm, _KIND_OFFSET)
    if kind and found != kind:
        raise SegmentMismatch(
            f"segment {name!r} is a pyqueue {KIND_NAMES.get(found, f'kind {found}')}, not a "
            f"{KIND_NAMES.get(kind, f'kind {kind}')}")
    return _core.check_segment(mm, kind)


def _shm_listing():
    try:
        return os.listdir(SHM_DIR)
    except OSError:
        return []


def unlink(name, listing=None):
    """Remove a segment and any out-of-band segments left by its messages.
    Returns True if the segment existed. `listing`: a /dev/shm listing to
    reuse when removing many segments at once. An out-of-band name under
    this prefix that may not be removed (another user's, planted in the
    sticky /dev/shm) is not this queue's: it is left alone. The queue's own
    segment that may not be removed raises PermissionError."""
    error = None
    try:
        existed = shm_unlink(shm_name(name))
    except OSError as e:  # its out-of-band segments go all the same
        error, existed = e, True
    prefix = PREFIX + name + ".oob-"
    if listing is None:
        listing = _shm_listing()
    for f in listing:
        if f.startswith(prefix):
            try:
                shm_unlink("/" + f)
            except OSError:
                pass
    if error is not None:
        raise error
    return existed


# --- unnamed segments die with their creator -----------------------------

_owned = {}          # name -> pid of the creating process
_hooks_pid = None


def _remove_owned():
    pid = os.getpid()
    mine = [name for name, owner in _owned.items() if owner == pid]
    if not mine:  # never a forked child's copy of the parent's list
        return
    listing = _shm_listing()  # once, not once per queue
    for name in mine:
        del _owned[name]
        try:
            unlink(name, listing)
        except Exception:  # noqa: BLE001 - one segment that may not be removed
            pass           # (PermissionError, ...) must not stop the others' cleanup


def own(name):
    """Remove `name` when this process exits (normally, or as a
    multiprocessing child, which skips atexit)."""
    global _hooks_pid
    _owned[name] = os.getpid()
    if _hooks_pid != os.getpid():
        _hooks_pid = os.getpid()
        import multiprocessing.util as mpu
        mpu.Finalize(None, _remove_owned, exitpriority=-100)


atexit.register(_remove_owned)


def disown(name):
    _owned.pop(name, None)


def release_unnamed(name):
    """The creator's last handle of unnamed segment `name` is closed or
    collected and no handle of it was ever pickled or opened by name:
    nobody can reach the name any more, so remove it now instead of at
    exit (processes that map the segment, e.g. forked children holding an
    inherited handle, keep it; its memory goes with the last mapping).
    It stays in _owned, so that out-of-band segments left by messages
    nobody read are removed at exit, not while a forked child may still
    read them."""
    try:
        shm_unlink(shm_name(name))
    except OSError:
        pass  # not ours to remove any more (replaced): the exit hook says so
