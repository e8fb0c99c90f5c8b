"""Named shared-memory segments: create, open, unlink, and removal of the
unnamed ones when their creating process exits.

Every pyqueue segment is a POSIX shared-memory object named
"/pyqueue.<name>" (so /dev/shm/pyqueue.<name> on Linux); out-of-band
messages of a queue use "/pyqueue.<name>.oob-<pid>-<n>".
"""
import atexit
import errno
import mmap
import os
import secrets
import time

import posix_ipc

from pyqueue import _core
from pyqueue.errors import SegmentMismatch, SegmentNotFound, SegmentNotOwned

PREFIX = "pyqueue."
SHM_DIR = "/dev/shm"
_OPEN_WAIT_S = 2.0  # how long an opener waits for a creator to finish


def check_name(name):
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    # ".oob-" is reserved: "/pyqueue.<name>.oob-<pid>-<n>" are the
    # out-of-band segments of queue <name> (unlink() and `pyqueue gc` go by it).
    if (not name or len(name) > 200 or "/" in name or "\0" in name or name.startswith(".")
            or ".oob-" in name):
        raise ValueError(f"invalid queue name {name!r}: 1-200 characters, no '/', "
                         "no NUL, not starting with '.', not containing '.oob-'")
    return name


def unique_name():
    return f"anon-{os.getpid()}-{secrets.token_hex(8)}"


def shm_name(name):
    return "/" + PREFIX + name


def create(name, size, mode, init, hint=None):
    """Create segment `name` of `size` bytes and run init(mmap) on it.
    Returns the mapping, or None when a segment of that name exists.
    hint: what to lower when /dev/shm has no room (reserve)."""
    try:
        shm = posix_ipc.SharedMemory(shm_name(name), posix_ipc.O_CREX, mode=mode, size=size)
    except posix_ipc.ExistentialError:
        return None
    try:
        os.fchmod(shm.fd, mode)  # exactly `mode`, whatever the umask
        reserve(shm.fd, size, name, hint)
        mm = mmap.mmap(shm.fd, size)
        init(mm)
    except BaseException:
        shm.unlink()
        raise
    finally:
        shm.close_fd()
    return mm


def create_or_open(name, size, perm, init, kind, trust_owner=False, open_only=False, hint=None):
    """The segment of a queue, topic, log or work queue: (name, mapping,
    perm, created). name None: a new unnamed segment, removed when this
    process exits (a queue's also earlier: release_unnamed). A name: made
    with `init` (unless open_only), or opened (validated as `kind`) when it
    exists already. hint: what to lower when /dev/shm is full."""
    if name is None:
        name = unique_name()
        mm = create(name, size, perm, init, hint)
        own(name)
        return name, mm, perm, True
    check_name(name)
    mm = None if open_only else create(name, size, perm, init, hint)
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
        shm = posix_ipc.SharedMemory(shm_name(name))
    except posix_ipc.ExistentialError:
        raise SegmentNotFound(f"no pyqueue segment named {name!r}") from None
    owner = os.fstat(shm.fd).st_uid
    if not trust_owner and owner != os.geteuid():
        shm.close_fd()
        raise SegmentNotOwned(f"segment {name!r} belongs to uid {owner}, not to this process's "
                              f"uid {os.geteuid()}; pass trust_owner=True to share it on purpose")
    deadline = time.monotonic() + _OPEN_WAIT_S
    delay = 0.0005
    try:
        while True:
            size = os.fstat(shm.fd).st_size
            if size > 0:
                mm = mmap.mmap(shm.fd, size)
                try:
                    rc = _core.check_segment(mm, kind)
                except BaseException:
                    mm.close()
                    raise
                if rc == 0:
                    return mm, os.fstat(shm.fd).st_mode & 0o777
                mm.close()
            if time.monotonic() >= deadline:
                raise SegmentMismatch(f"segment {name!r} is empty or was never initialized")
            # Only reached in the short window where a creator has made the
            # segment but not yet published its header.
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
    finally:
        shm.close_fd()


def _shm_listing():
    try:
        return os.listdir(SHM_DIR)
    except OSError:
        return []


def unlink(name, listing=None):
    """Remove a segment and any out-of-band segments left by its messages.
    Returns True if the segment existed. `listing`: a /dev/shm listing to
    reuse when removing many segments at once."""
    existed = True
    try:
        posix_ipc.unlink_shared_memory(shm_name(name))
    except posix_ipc.ExistentialError:
        existed = False
    prefix = PREFIX + name + ".oob-"
    if listing is None:
        listing = _shm_listing()
    leftovers = [f for f in listing if f.startswith(prefix)]
    for f in leftovers:
        try:
            posix_ipc.unlink_shared_memory("/" + f)
        except posix_ipc.ExistentialError:
            pass
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
        unlink(name, listing)
        del _owned[name]


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
        posix_ipc.unlink_shared_memory(shm_name(name))
    except posix_ipc.ExistentialError:
        pass
