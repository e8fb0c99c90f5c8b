"""Out-of-band transport of large messages and framing of pickle protocol 5
buffers.

A message larger than a quarter of the ring travels in a shared-memory
segment of its own, named after the queue's; the ring carries a small
reference record (size + segment name). The consumer maps the segment,
unlinks it at once and reads the message from the mapping, so a NumPy
array sent with pickle protocol 5 is copied once into shared memory by the
producer and not copied again by the consumer.
"""
import errno
import mmap
import os
import pickle
import re
import secrets
import struct

from pyqueue import _segment
from pyqueue.errors import PyQueueError, SegmentMismatch

_REF = struct.Struct("<Q")
_ALIGN = 16
# "<queue>.oob-<pid>-<16 hex digits>": the pid tells `pyqueue gc` whose it
# is; the 64 random bits make the name impossible to guess, so that another
# user cannot plant it first (and a collision is retried anyway). A
# reference in the form of earlier versions ("<pid>-<counter>") is still
# one of this queue's names, and is read.
_SUFFIX_RE = re.compile(r"[0-9]{1,10}-(?:[0-9a-f]{16}|[0-9]{1,20})")
_CREATE_TRIES = 8


def _align(n):
    return (n + _ALIGN - 1) & ~(_ALIGN - 1)


def _token():
    return secrets.token_hex(8)


def new_name(queue):
    return f"{queue._shm_name}.oob-{os.getpid()}-{_token()}"


def _create(queue):
    """(name, fd) of a new out-of-band segment of queue, exactly its mode."""
    for _ in range(_CREATE_TRIES):
        name = new_name(queue)
        try:
            return name, _segment.shm_create(name, queue._mode)
        except FileExistsError:
            continue  # someone has this name (planted, or 1 in 2**64): another one
    raise FileExistsError(errno.EEXIST, f"cannot create an out-of-band segment for "
                          f"{queue._shm_name!r}: {_CREATE_TRIES} random names were all taken")


def put(queue, parts, total):
    """Write the bytes-like parts into a new segment; return the reference."""
    name, fd = _create(queue)
    size = max(total, 1)
    try:
        os.ftruncate(fd, size)
        _segment.reserve(fd, size, name)  # ENOSPC here, not SIGBUS below
        with mmap.mmap(fd, size) as mm:
            off = 0
            for part in parts:
                with memoryview(part) as mv:
                    # A view that is not C-contiguous (a strided slice)
                    # cannot be cast to bytes in place: it is copied, in
                    # C order, as bytes() of it would be below the limit.
                    mm[off:off + mv.nbytes] = mv.cast("B") if mv.c_contiguous else mv.tobytes()
                    off += mv.nbytes
    except BaseException:
        _segment.shm_unlink(name)
        raise
    finally:
        os.close(fd)
    return _REF.pack(total) + name.encode()


def _parse(queue, ref):
    """(size, segment name) of a reference, refusing any name that is not
    one of this queue's out-of-band segments: a crafted record must not make
    a consumer map or unlink another segment."""
    if len(ref) <= _REF.size:
        raise SegmentMismatch("corrupt out-of-band reference")
    (size,) = _REF.unpack_from(ref, 0)
    try:
        # (A topic pads its reference records with zeros: no name has one.)
        name = bytes(ref[_REF.size:]).rstrip(b"\0").decode()
    except UnicodeDecodeError:
        raise SegmentMismatch("corrupt out-of-band reference") from None
    prefix = queue._shm_name + ".oob-"
    if not name.startswith(prefix) or not _SUFFIX_RE.fullmatch(name[len(prefix):]):
        raise SegmentMismatch(f"out-of-band reference to a foreign segment {name!r} refused")
    return size, name


def get(queue, ref):
    """Map the segment a reference names, unlink it, return a writable
    memoryview over the message (the mapping lives as long as the view)."""
    size, name = _parse(queue, ref)
    try:
        fd = _segment.shm_open(name)
    except FileNotFoundError:
        raise PyQueueError(
            f"the segment {name!r} holding this large message was removed before it was "
            "read (pyqueue rm / gc?): the message is lost") from None
    try:
        mm = mmap.mmap(fd, max(size, 1))
    finally:
        os.close(fd)
        try:
            _segment.shm_unlink(name)
        except OSError:
            pass  # mapped already; a name we may not remove is gc's to report
    return memoryview(mm)[:size]


def read(queue, ref):
    """Map the segment a reference names and leave its name in place (a
    WorkQueue message, read again on redelivery and removed by discard()
    when it is settled); a writable memoryview over the message (a private
    copy-on-write mapping: a consumer that changes a value read out of band
    never changes what the next delivery reads)."""
    size, name = _parse(queue, ref)
    try:
        fd = _segment.shm_open(name)
    except FileNotFoundError:
        raise PyQueueError(
            f"the segment {name!r} holding this large message was removed before it was "
            "read (pyqueue rm / gc, or the message was settled by another consumer): the "
            "message is lost to this reader") from None
    try:
        if os.fstat(fd).st_size < max(size, 1):
            raise SegmentMismatch(f"out-of-band segment {name!r} is shorter than its message")
        mm = mmap.mmap(fd, max(size, 1), flags=mmap.MAP_PRIVATE)
    finally:
        os.close(fd)
    return memoryview(mm)[:size]


def discard(queue, ref):
    """Remove the segment of a reference that will never be read."""
    try:
        _, name = _parse(queue, ref)
    except SegmentMismatch:
        return
    try:
        _segment.shm_unlink(name)
    except OSError:
        pass


_FRAME_HEAD = struct.Struct("<II")


def frame_buffers(data, buffers):
    """Lay out a pickle stream and its out-of-band buffers as parts:
    [u32 nbuf, u32 0][u64 len(data)][u64 len(buf)]*nbuf, then data and each
    buffer at a 16-byte aligned offset."""
    raws = [b.raw() for b in buffers]
    lens = [len(data)] + [r.nbytes for r in raws]
    head = _FRAME_HEAD.pack(len(raws), 0) + struct.pack(f"<{len(lens)}Q", *lens)
    parts = [head]
    off = len(head)
    for chunk, n in zip([data] + raws, lens):
        pad = _align(off) - off
        if pad:
            parts.append(bytes(pad))
            off += pad
        parts.append(chunk)
        off += n
    return parts


def unframe_buffers(payload):
    """Inverse of frame_buffers: rebuild the object, its buffers pointing
    into payload (no copy)."""
    mv = memoryview(payload).cast("B")
    nbuf, _ = _FRAME_HEAD.unpack_from(mv, 0)
    lens = struct.unpack_from(f"<{nbuf + 1}Q", mv, _FRAME_HEAD.size)
    off = _FRAME_HEAD.size + 8 * (nbuf + 1)
    views = []
    for n in lens:
        off = _align(off)
        if off + n > mv.nbytes:
            raise ValueError("corrupt pickle-buffer frame")
        views.append(mv[off:off + n])
        off += n
    return pickle.loads(views[0], buffers=views[1:])
