"""Out-of-band transport of large messages and framing of pickle protocol 5
buffers.

A message larger than a quarter of the ring travels in a shared-memory
segment of its own, named after the queue's; the ring carries a small
reference record (size + segment name). The consumer maps the segment,
unlinks it at once and reads the message from the mapping, so a NumPy
array sent with pickle protocol 5 is copied once into shared memory by the
producer and not copied again by the consumer.
"""
import itertools
import mmap
import os
import pickle
import struct

import posix_ipc

from pyqueue import _segment
from pyqueue.errors import PyQueueError, SegmentMismatch

_counter = itertools.count()
_REF = struct.Struct("<Q")
_ALIGN = 16


def _align(n):
    return (n + _ALIGN - 1) & ~(_ALIGN - 1)


def put(queue, parts, total):
    """Write the bytes-like parts into a new segment; return the reference."""
    name = f"{queue._shm_name}.oob-{os.getpid()}-{next(_counter)}"
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=queue._mode, size=max(total, 1))
    try:
        os.fchmod(shm.fd, queue._mode)  # the queue's mode exactly, whatever the umask
        _segment.reserve(shm.fd, max(total, 1), name)  # ENOSPC here, not SIGBUS below
        with mmap.mmap(shm.fd, max(total, 1)) as mm:
            off = 0
            for part in parts:
                with memoryview(part) as mv:
                    mm[off:off + mv.nbytes] = mv.cast("B")
                    off += mv.nbytes
    except BaseException:
        shm.unlink()
        raise
    finally:
        shm.close_fd()
    return _REF.pack(total) + name.encode()


def _parse(queue, ref):
    """(size, segment name) of a reference, refusing any name that is not
    one of this queue's out-of-band segments: a crafted record must not make
    a consumer map or unlink another segment."""
    if len(ref) <= _REF.size:
        raise SegmentMismatch("corrupt out-of-band reference")
    (size,) = _REF.unpack_from(ref, 0)
    try:
        name = bytes(ref[_REF.size:]).decode()
    except UnicodeDecodeError:
        raise SegmentMismatch("corrupt out-of-band reference") from None
    suffix = name[len(queue._shm_name) + len(".oob-"):]
    if (not name.startswith(queue._shm_name + ".oob-") or "/" in suffix
            or not suffix.replace("-", "").isdigit()):
        raise SegmentMismatch(f"out-of-band reference to a foreign segment {name!r} refused")
    return size, name


def get(queue, ref):
    """Map the segment a reference names, unlink it, return a writable
    memoryview over the message (the mapping lives as long as the view)."""
    size, name = _parse(queue, ref)
    try:
        shm = posix_ipc.SharedMemory(name)
    except posix_ipc.ExistentialError:
        raise PyQueueError(
            f"the segment {name!r} holding this large message was removed before it was "
            "read (pyqueue rm / gc?): the message is lost") from None
    try:
        mm = mmap.mmap(shm.fd, max(size, 1))
    finally:
        shm.close_fd()
        shm.unlink()
    return memoryview(mm)[:size]


def discard(queue, ref):
    """Remove the segment of a reference that will never be read."""
    try:
        _, name = _parse(queue, ref)
    except SegmentMismatch:
        return
    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
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
