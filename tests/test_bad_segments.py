"""pyqueue on segments that are not what they claim to be.

Anyone who can write a queue's segment can put anything in it. Opening a
segment must validate every header field (Queue.open raises
SegmentMismatch, a ValueError, with a message saying what is wrong), and a
handle on a segment whose indices or records are damaged must raise
SegmentMismatch from get()/put() -- not crash, not hang. The calls on
damaged indices run in a child process with a deadline, so that a crash or
a hang is reported as a failure instead of taking pytest down.

Layout offsets come from the C headers through the test-only cffi binding
(tests/cffi_core.py), which also writes hand-made records into a live
queue for the serializer tests.
"""

import json
import mmap
import os
import pickle
import random
import struct
import subprocess
import sys

import pytest

from tests import cffi_core
from tests._support import posix_name, read_bytes, shm_file

posix_ipc = pytest.importorskip("posix_ipc")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RING = 65536
U64 = (1 << 64) - 1
CHILD_TIMEOUT = 60  # whole child, generous for ASan; each call in it has its own timeout


@pytest.fixture(scope="module")
def core():
    return cffi_core.require()


_read = read_bytes


@pytest.fixture
def segments(raw_segments):
    """Raw segments named like queues (see conftest.raw_segments)."""
    return lambda content, size=None: raw_segments(content, size, tag="bad")


class Segment:
    """Read and write the words of a queue's segment in place."""

    def __init__(self, name):
        self._f = open(shm_file(name), "r+b")
        self.mm = mmap.mmap(self._f.fileno(), 0)

    def u64(self, off):
        return struct.unpack_from("<Q", self.mm, off)[0]

    def set_u64(self, off, value):
        struct.pack_into("<Q", self.mm, off, value & U64)

    def u32(self, off):
        return struct.unpack_from("<I", self.mm, off)[0]

    def set_u32(self, off, value):
        struct.pack_into("<I", self.mm, off, value & 0xFFFFFFFF)

    def close(self):
        self.mm.close()
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _mismatch(pyqueue_mod, name, *words):
    """Queue.open(name) raises SegmentMismatch whose message has one of words."""
    with pytest.raises(pyqueue_mod.SegmentMismatch) as info:
        pyqueue_mod.Queue.open(name)
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    assert any(w in msg for w in words), msg
    return msg


# --------------------------------------------------------------------------
# segments that are not queues at all
# --------------------------------------------------------------------------

@pytest.mark.parametrize("size,seed", [(1, 1), (255, 2), (256, 3), (4096, 4), (8191, 5),
                                       (RING + 4096, 6), (3 * RING, 7)])
def test_open_random_bytes(pyqueue_mod, segments, size, seed):
    content = random.Random(seed).randbytes(size)
    if content[:8] == bytes(8):  # all-zero magic reads as "still being created"
        content = b"\1" + content[1:]
    name = segments(content)
    _mismatch(pyqueue_mod, name, "not a pyqueue segment", "truncated")
    assert _read(shm_file(name)) == content  # not overwritten


@pytest.mark.parametrize("size,seed", [(256, 11), (4096, 12), (RING + 4096, 13), (4 * RING, 14)])
def test_open_random_bytes_behind_a_valid_magic(pyqueue_mod, segments, core, size, seed):
    """Magic, version, kind and READY right, everything else random: the
    sizes must be told wrong before anything is mapped by them."""
    lib = core.lib
    buf = bytearray(random.Random(seed).randbytes(size))
    struct.pack_into("<QII", buf, 0, lib.PQ_SEGMENT_MAGIC, lib.PQ_LAYOUT_VERSION,
                     lib.PQ_KIND_QUEUE)
    struct.pack_into("<I", buf, core.header_offset("state"), lib.PQ_SEGMENT_READY)
    name = segments(bytes(buf))
    _mismatch(pyqueue_mod, name, "truncated", "inconsistent")


def test_open_zeros_times_out_as_uninitialized(pyqueue_mod, segments):
    name = segments(bytes(RING + 4096))
    _mismatch(pyqueue_mod, name, "never initialized", "empty")


# --------------------------------------------------------------------------
# copies of a real queue, cut short or with one header field changed
# --------------------------------------------------------------------------

@pytest.fixture
def queue_bytes(make_queue):
    """The bytes of a real queue's segment (with a few messages in it).
    overflow="reject": a ring that never grows, whose file is just the
    ring (a growing one's is as big as its regions may grow, sparse)."""
    q = make_queue.Queue(capacity_bytes=RING, overflow="reject")
    for i in range(5):
        q.put(b"message %d" % i)
    q.put({"a pickled": "dict"})
    return _read(shm_file(q.name))


@pytest.mark.parametrize("cut", ["0", "100", "256", "4095", "4096", "header+half ring",
                                 "one byte short"])
def test_open_truncated_copy(pyqueue_mod, core, segments, queue_bytes, cut):
    full = len(queue_bytes)
    data_offset = core.lib.PQ_RING_DATA_OFFSET
    length = {"0": 0, "100": 100, "256": 256, "4095": 4095, "4096": 4096,
              "header+half ring": data_offset + (full - data_offset) // 2,
              "one byte short": full - 1}[cut]
    name = segments(queue_bytes[:length], size=length)
    if length == 0:
        _mismatch(pyqueue_mod, name, "empty", "never initialized")
    else:
        _mismatch(pyqueue_mod, name, "truncated")


def _header_edits(core, full):
    lib = core.lib
    cap = full - lib.PQ_RING_DATA_OFFSET
    params = core.header_offset("params")
    return {
        # name: (offset, width, value, words expected in the message)
        "magic": (core.header_offset("magic"), 8, int.from_bytes(b"NOTQUEUE", "little"),
                  ("not a pyqueue segment",)),
        "layout_version": (core.header_offset("layout_version"), 4, lib.PQ_LAYOUT_VERSION + 1,
                           ("layout version",)),
        "kind=topic": (core.header_offset("kind"), 4, lib.PQ_KIND_TOPIC,
                       ("is a pyqueue topic, not a queue",)),
        "kind=99": (core.header_offset("kind"), 4, 99, ("is a pyqueue kind 99, not a queue",)),
        "state=initializing": (core.header_offset("state"), 4, lib.PQ_SEGMENT_INITIALIZING,
                               ("never initialized", "empty")),
        "segment_size": (core.header_offset("segment_size"), 8, full + 4096, ("truncated",)),
        "segment_size=huge": (core.header_offset("segment_size"), 8, U64, ("truncated",)),
        "data_offset": (core.header_offset("data_offset"), 8, 8192, ("truncated",)),
        "data_offset=0": (core.header_offset("data_offset"), 8, 0, ("truncated",)),
        "data_size": (core.header_offset("data_size"), 8, cap * 2, ("truncated",)),
        "capacity=2x": (params + 8 * lib.PQ_RING_PARAM_CAPACITY, 8, cap * 2, ("truncated",)),
        "capacity=not pow2": (params + 8 * lib.PQ_RING_PARAM_CAPACITY, 8, cap - 16,
                              ("truncated",)),
        "capacity=0": (params + 8 * lib.PQ_RING_PARAM_CAPACITY, 8, 0, ("truncated",)),
        "overflow=7": (params + 8 * lib.PQ_RING_PARAM_USER0, 8, 7, ("overflow",)),
    }


EDITS = ["magic", "layout_version", "kind=topic", "kind=99", "state=initializing",
         "segment_size", "segment_size=huge", "data_offset", "data_offset=0", "data_size",
         "capacity=2x", "capacity=not pow2", "capacity=0", "overflow=7"]


@pytest.mark.parametrize("edit", EDITS)
def test_open_with_a_header_field_changed(pyqueue_mod, core, segments, queue_bytes, edit):
    off, width, value, words = _header_edits(core, len(queue_bytes))[edit]
    buf = bytearray(queue_bytes)
    buf[off:off + width] = value.to_bytes(width, "little")
    name = segments(bytes(buf))
    _mismatch(pyqueue_mod, name, *words)
    assert _read(shm_file(name)) == bytes(buf)  # an opener only reads


def test_unchanged_copy_opens(pyqueue_mod, segments, queue_bytes):
    """The control for the tests above: the copy itself is a good queue."""
    name = segments(queue_bytes)
    q = pyqueue_mod.Queue.open(name)
    try:
        assert q.get(timeout=5) == b"message 0"
    finally:
        q.close()


# --------------------------------------------------------------------------
# damaged indices and records: get()/put() in a child, with deadlines
# --------------------------------------------------------------------------

_CHILD = r"""
import json, sys
import pyqueue
name, ops = sys.argv[1], json.loads(sys.argv[2])
results = []

def run(op):
    if op == "get":
        return repr(q.get(timeout=2))
    if op == "get_block":          # no timeout: must not hang
        return repr(q.get())
    if op == "put":
        q.put(b"new", timeout=2)
        return None
    if op == "put_block":          # no timeout: must not hang
        q.put(b"new")
        return None
    if op == "drain":              # get until something is raised
        for _ in range(100):
            q.get(timeout=0.5)
        return "100 messages"
    if op == "stats":
        return json.dumps(q.stats()) + " qsize=%d" % q.qsize()
    raise ValueError(op)

try:
    q = pyqueue.Queue.open(name)
except BaseException as exc:
    results.append(["open", type(exc).__name__, str(exc)])
    ops = []
for op in ops:
    sys.stderr.write("op %s\n" % op)
    sys.stderr.flush()
    try:
        value = run(op)
        results.append([op, "ok", value])
    except BaseException as exc:
        results.append([op, type(exc).__name__, str(exc)])
print(json.dumps(results))
"""


def run_child(name, ops):
    """Run the ops on Queue.open(name) in a child; {op: (outcome, message)}."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, name, json.dumps(ops)],
                              capture_output=True, text=True, timeout=CHILD_TIMEOUT, cwd=ROOT,
                              env=env)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        last = [line for line in stderr.splitlines() if line.startswith("op ")]
        pytest.fail("the child hung (%s): %s" % (last[-1] if last else "at open", stderr[-2000:]))
    if proc.returncode != 0:
        pytest.fail("the child died with status %d:\n%s" % (proc.returncode, proc.stderr[-4000:]))
    return {op: (outcome, msg) for op, outcome, msg in json.loads(proc.stdout.splitlines()[-1])}


def _ring_words(core):
    return {f: core.ctl_offset(f) for f in ("head", "tail", "head_msgs", "tail_msgs")}


def _record_ctl(core, pos):
    return core.lib.PQ_RING_DATA_OFFSET + (pos & (RING - 1))


def _damage(core, seg, case):
    w = _ring_words(core)
    head, tail = seg.u64(w["head"]), seg.u64(w["tail"])
    if case == "tail far ahead":
        seg.set_u64(w["tail"], head + 4 * RING)
    elif case == "tail huge":
        seg.set_u64(w["tail"], U64 - 15)
    elif case == "head after tail":
        seg.set_u64(w["head"], tail + 4096)
    elif case == "head misaligned":
        seg.set_u64(w["head"], head + 8)
    elif case == "tail misaligned":
        seg.set_u64(w["tail"], tail + 8)
    elif case == "tail misaligned at the end":
        seg.set_u64(w["tail"], tail - (tail & (RING - 1)) + RING - 8)
    elif case in ("record length huge", "record state unknown", "record tag wrong"):
        off = _record_ctl(core, head)
        ctl = seg.u64(off)
        if case == "record length huge":
            ctl = (ctl & ~0xFFFFFFFF) | 0xFFFFFFF0
        elif case == "record state unknown":
            shift = core.lib.PQ_CTL_STATE_SHIFT
            ctl = (ctl & ~(0xFF << shift)) | (9 << shift)
        else:
            ctl ^= 1 << core.lib.PQ_CTL_TAG_SHIFT
        seg.set_u64(off, ctl)
    elif case == "more taken than put":
        seg.set_u64(w["head_msgs"], seg.u64(w["tail_msgs"]) + 1)
    elif case == "more queued than maxsize":
        seg.set_u64(w["tail_msgs"], seg.u64(w["head_msgs"]) + 1000)
    else:
        raise ValueError(case)


MISMATCH = "SegmentMismatch"
# case: (maxsize, {op: expected outcome}); "ok|SegmentMismatch" where
# either is right (the damage does not touch what that call uses).
INDEX_CASES = {
    "tail far ahead": (0, {"get": MISMATCH, "put_block": MISMATCH}),
    "tail huge": (0, {"get": MISMATCH, "put_block": MISMATCH}),
    "head after tail": (0, {"get_block": MISMATCH, "put_block": MISMATCH}),
    "head misaligned": (0, {"get_block": MISMATCH, "put": "ok|" + MISMATCH}),
    "tail misaligned": (0, {"put_block": MISMATCH, "drain": MISMATCH}),
    "tail misaligned at the end": (0, {"put_block": MISMATCH, "drain": MISMATCH}),
    "record length huge": (0, {"get_block": MISMATCH, "put": "ok"}),
    "record state unknown": (0, {"get_block": MISMATCH, "put": "ok"}),
    "record tag wrong": (0, {"get_block": MISMATCH, "put": "ok"}),
    "more taken than put": (4, {"put_block": MISMATCH, "get": "ok"}),
    "more queued than maxsize": (4, {"put_block": MISMATCH, "get": "ok"}),
}


@pytest.mark.parametrize("case", sorted(INDEX_CASES))
def test_damaged_indices_raise_not_crash_or_hang(pyqueue_mod, core, make_queue, case):
    maxsize, expected = INDEX_CASES[case]
    name = make_queue.unique_name("idx")
    q = make_queue.Queue(maxsize, capacity_bytes=RING, name=name)
    # Move the cursors into the second lap, past a padding record.
    big = b"w" * (RING // 5)
    for _ in range(6):
        q.put(big)
        assert q.get(timeout=5) == big
    for i in range(3):
        q.put(b"message %d" % i)
    with Segment(name) as seg:
        _damage(core, seg, case)
    ops = list(expected) + ["stats"]
    got = run_child(name, ops)
    for op, want in expected.items():
        outcome, msg = got[op]
        assert outcome in want.split("|"), (op, outcome, msg)
        if outcome == MISMATCH:
            assert "corrupt" in msg, msg
    assert got["stats"][0] in ("ok", MISMATCH), got["stats"]


def test_undamaged_queue_in_the_child(pyqueue_mod, make_queue):
    """The control for the cases above."""
    name = make_queue.unique_name("idx")
    q = make_queue.Queue(4, capacity_bytes=RING, name=name)
    q.put(b"message 0")
    got = run_child(name, ["get", "put", "get_block", "stats"])
    assert got["get"] == ("ok", repr(b"message 0"))
    assert got["put"] == ("ok", None)
    assert got["get_block"] == ("ok", repr(b"new"))


# --------------------------------------------------------------------------
# a queue with its own serializer never unpickles
# --------------------------------------------------------------------------

def _json_serializer():
    return (lambda obj: json.dumps(obj).encode(), lambda data: json.loads(bytes(data)))


class _RunsCode:
    """Pickles to a call of os.system: unpickling it runs a shell command."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _inject(core, name, payload, typ):
    """Commit one record of type `typ` into queue `name`, bypassing the
    Python layer (as anyone who can write the segment can)."""
    ffi, lib = core.ffi, core.lib
    with Segment(name) as seg:
        with ffi.from_buffer(seg.mm) as base:
            r = ffi.new("pq_ring *")
            assert lib.pq_ring_open(r, base, len(seg.mm)) == 0
            pos = ffi.new("uint64_t[1]")
            assert lib.pq_ring_claim(r, ffi.new("uint32_t[1]", [len(payload)]), 1, pos) == 0
            ffi.memmove(lib.pq_ring_payload(r, pos[0]), payload, len(payload))
            lib.pq_ring_commit(r, pos[0], typ)


T_PICKLE, T_PICKLE_BUFFERS, T_CUSTOM, T_OOB = 3, 4, 5, 0x80


def test_crafted_pickle_runs_code_in_a_default_queue(pyqueue_mod, core, make_queue, tmp_path):
    """What the serializer= guard is for: with the default codec a record
    of type pickle is unpickled, and a crafted one runs code. (Pickle
    trusts the peer: whoever can write the segment.)"""
    marker = tmp_path / "ran"
    name = make_queue.unique_name("pickle")
    q = make_queue.Queue(capacity_bytes=RING, name=name)
    _inject(core, name, pickle.dumps(_RunsCode("touch '%s'" % marker)), T_PICKLE)
    assert q.get(timeout=5) == 0  # os.system's exit status
    assert marker.exists()


@pytest.mark.parametrize("typ", [T_PICKLE, T_PICKLE_BUFFERS], ids=["pickle", "pickle5-buffers"])
def test_custom_serializer_queue_refuses_to_unpickle(pyqueue_mod, core, make_queue, tmp_path,
                                                     typ):
    marker = tmp_path / "ran"
    name = make_queue.unique_name("json")
    q = make_queue.Queue(capacity_bytes=RING, name=name, serializer=_json_serializer())
    payload = pickle.dumps(_RunsCode("touch '%s'" % marker))
    if typ == T_PICKLE_BUFFERS:
        # The pickle-5 frame: [u32 nbuf, u32 0][u64 len(data)] then the data, 16-aligned.
        payload = struct.pack("<IIQ", 0, 0, len(payload)) + payload
    _inject(core, name, payload, typ)
    q.put({"after": "it"})
    with pytest.raises(pyqueue_mod.PyQueueError) as info:
        q.get(timeout=5)
    assert "unpickle" in str(info.value)
    assert not marker.exists()
    # The queue goes on: the refused record is gone, the next one is fine.
    assert q.get(timeout=5) == {"after": "it"}
    assert not marker.exists()


@pytest.mark.parametrize("typ", [T_PICKLE, T_PICKLE_BUFFERS], ids=["pickle", "pickle5-buffers"])
def test_custom_serializer_queue_refuses_out_of_band_pickle(pyqueue_mod, core, make_queue,
                                                           tmp_path, typ):
    """An out-of-band pickle record on a custom-serializer queue is refused
    before its reference is followed. The reference names a segment that
    exists, is this queue's own out-of-band segment (the right name and
    owner) and holds a pickle that would run code: only the refusal in
    _core.pyx (_decode_finish) stands between the record and the code."""
    marker = tmp_path / "ran"
    name = make_queue.unique_name("json")
    q = make_queue.Queue(capacity_bytes=RING, name=name, serializer=_json_serializer())
    payload = pickle.dumps(_RunsCode("touch '%s'" % marker))
    if typ == T_PICKLE_BUFFERS:
        payload = struct.pack("<IIQ", 0, 0, len(payload)) + payload
    oob = "%s.oob-%d-%s" % (posix_name(name), os.getpid(), "5a" * 8)
    fd = os.open("/dev/shm" + oob, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, payload)
    finally:
        os.close(fd)
    _inject(core, name, struct.pack("<Q", len(payload)) + oob.encode(), typ | T_OOB)
    q.put({"after": "it"})
    with pytest.raises(pyqueue_mod.PyQueueError,
                       match="refusing to unpickle: this queue uses a custom serializer"):
        q.get(timeout=5)
    assert not marker.exists()
    # The queue goes on: the refused record is gone, the next one is fine.
    assert q.get(timeout=5) == {"after": "it"}
    assert not marker.exists()


def test_out_of_band_reference_cannot_name_another_segment(pyqueue_mod, core, make_queue):
    """A record of a custom-serializer queue whose out-of-band reference
    names another queue's segment must not make the consumer unlink it."""
    victim = make_queue.Queue(capacity_bytes=RING, name=make_queue.unique_name("victim"))
    name = make_queue.unique_name("json")
    q = make_queue.Queue(capacity_bytes=RING, name=name, serializer=_json_serializer())
    ref = struct.pack("<Q", 16) + posix_name(victim.name).encode()
    _inject(core, name, ref, T_CUSTOM | T_OOB)
    with pytest.raises(pyqueue_mod.SegmentMismatch, match="foreign segment"):
        q.get(timeout=5)
    assert os.path.exists(shm_file(victim.name)), "the consumer unlinked another queue"
    q.put({"still": "usable"})
    assert q.get(timeout=5) == {"still": "usable"}


def test_get_many_returns_what_it_took_before_a_damaged_record(pyqueue_mod, core, make_queue):
    # get_many takes a full first batch (256 records), then peeks again and
    # meets a damaged record: the 256 it took are returned (they are counted
    # as dequeued and in no one else's hands), the next call raises.
    name = make_queue.unique_name("idx")
    q = make_queue.Queue(capacity_bytes=RING, name=name)
    w = _ring_words(core)
    good = [b"m%d" % i for i in range(256)]
    q.put_many(good)
    with Segment(name) as seg:
        bad = seg.u64(w["tail"])
    q.put(b"damaged")
    with Segment(name) as seg:
        off = _record_ctl(core, bad)
        shift = core.lib.PQ_CTL_STATE_SHIFT
        seg.set_u64(off, (seg.u64(off) & ~(0xFF << shift)) | (9 << shift))
    assert q.get_many(1000, block=False) == good
    assert q.stats()["dequeued"] == 256
    with pytest.raises(pyqueue_mod.SegmentMismatch, match="corrupt"):
        q.get_many(1000, block=False)


# pq_segment_header.params[6] (csrc/pq_segment.h): the WorkQueue's
# PQ_WQ_PARAM_USER0, where FLAG_CUSTOM_SERIALIZER is kept.
_WQ_USER0 = 72 + 8 * 6


def test_custom_serializer_workqueue_refuses_to_unpickle(tmp_path):
    """A pickle record planted in a custom-serializer work queue (by
    someone who can write the segment: the flag cleared, a plain handle's
    put, the flag set again) is refused, not unpickled: get() and
    get_many() dead-letter it with its bytes and hand out the next one."""
    from pyqueue import WorkQueue
    from tests._wq_workers import json_dumps, json_loads
    marker = tmp_path / "ran"
    dlq = WorkQueue(capacity_bytes=1 << 20, max_deliveries=None)
    q = WorkQueue(capacity_bytes=1 << 20, dead_letter=dlq, serializer=(json_dumps, json_loads))
    try:
        for take in ("get", "get_many"):
            with Segment(q.name) as seg:
                assert seg.u64(_WQ_USER0) == 1
                seg.set_u64(_WQ_USER0, 0)
                plain = WorkQueue.open(q.name)
                plain.put(_RunsCode("touch '%s'" % marker))  # a pickle record
                plain.close()
                seg.set_u64(_WQ_USER0, 1)
            q.put({"after": "it"})
            if take == "get":
                d = q.get(timeout=5)
                assert d.value == {"after": "it"}
                d.ack()
            else:
                b = q.get_many(10, timeout=5)
                assert b.values == [{"after": "it"}]
                b.ack()
            assert not marker.exists()
        dead = dlq.dead_letters()
        assert len(dead) == 2
        assert all("refusing to unpickle" in x.reason and x.value is None for x in dead)
        assert all(b"system" in x.raw and str(marker).encode() in x.raw for x in dead)
        assert not marker.exists()
    finally:
        q.unlink()
        dlq.unlink()
        q.close()
        dlq.close()
