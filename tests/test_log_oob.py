"""pyqueue.Log, memory mode: a value larger than max_record_bytes (less the
key and headers) travels out of band (pyqueue._oob): a shared-memory
segment of its own, "<log>.oob-<pid>-<hex>", that every reader maps, the
partition's ring holding a reference. The segment lives as long as the
record is retained and is removed by whoever drops the record (an append's
retention by size or age, enforce_retention()), by unlink(), and - once
its producer is dead and no retained record names it - by `pyqueue gc`.
docs/design.md, "Log: large records"."""
import mmap
import os
import signal
import time

import numpy as np
import pytest

from pyqueue import _oob, _segment, cli
from pyqueue.errors import MessageTooLarge, OffsetOutOfRange, PoisonRecord, ShutDown
from pyqueue.log import MemoryLog
from tests import _log_oob_workers as w
from tests._support import close_handles, interrupt_oob_unlinks, wait_until
from tests.test_crash import kill_stopped, needs_faults, start_stopped

RING = 1 << 16          # each partition's ring: 64 KiB (max_record_bytes about 16 KiB)
N = 10 * (1 << 20) // 8  # float64: a 10 MiB array
WAIT = 60


@pytest.fixture
def logs():
    made = []

    def make(**kwargs):
        kwargs.setdefault("retention_bytes", RING)
        lg = MemoryLog(**kwargs)
        made.append(lg)
        return lg

    yield make
    close_handles(made)


def oob_segments(lg):
    prefix = _segment.PREFIX + lg.name + ".oob-"
    return sorted(f for f in os.listdir(_segment.SHM_DIR) if f.startswith(prefix))


def big(seed=0, n=N):
    return np.arange(n, dtype=np.float64) + seed


def blob():
    return bytes(range(256)) * (10 * (1 << 20) // 256)   # 10 MiB


def values(recs):
    return [r.value for r in recs]


def test_two_readers_and_a_group_get_10_mb_values_from_one_mapping(ctx, procs, logs):
    """A 10 MiB NumPy array and 10 MiB of bytes, read by two reader
    processes and a consumer-group member: each rebuilds the array on a
    mapping of the one segment (no copy through the ring, none per
    reader); the segments stay while the records are retained."""
    lg = logs(partitions=1)
    assert lg.append(big()) == (0, 0)
    assert lg.append(blob()) == (0, 1)
    assert len(oob_segments(lg)) == 2
    out = ctx.Queue()
    procs.start(ctx, w.read_two, lg, out)
    procs.start(ctx, w.read_two, lg, out)
    procs.start(ctx, w.group_read_two, lg, out)
    results = [out.get(timeout=WAIT) for _ in range(3)]
    assert procs.join_all() == [0, 0, 0]
    want = (float(big().sum()), True, True, "mmap", len(blob()), b"\x00", b"\xff")
    assert results == [want] * 3
    assert len(oob_segments(lg)) == 2   # retained: readers do not remove them
    a, b = values(lg.read(0, 0, timeout=5))
    assert np.array_equal(a, big()) and b == blob()
    a[:] = -1                           # a private mapping: changes nobody else's
    assert np.array_equal(lg.read(0, 0, 1)[0].value, big())


def test_large_bytes_str_custom_headers_and_append_many(logs):
    lg = logs(partitions=2)
    limit = lg.max_record_bytes
    assert limit == RING // 4 - 16 - 24
    p = lg.partition_for("k")
    lg.append(b"q" * limit, key="k")            # key: 1 byte less room
    assert len(oob_segments(lg)) == 1
    assert values(lg.read(p, 0, 1, timeout=5)) == [b"q" * limit]
    lg.append(b"q" * (limit - 1), key="k")      # in the ring
    assert len(oob_segments(lg)) == 1
    assert values(lg.read(p, 1, 1, timeout=5)) == [b"q" * (limit - 1)]
    text = "é" * RING
    got = lg.append_many([b"a", bytearray(b"z" * RING), text], key="k",
                         headers={"h": b"x" * 100})
    assert [o for _, o in got] == [2, 3, 4]
    recs = lg.read(p, 2, timeout=5)
    assert values(recs) == [b"a", b"z" * RING, text]
    assert all(r.key == b"k" for r in recs)
    assert [r.headers for r in recs] == [{"h": b"x" * 100}] * 3
    assert lg.append({"k": b"v" * RING}, key="k") == (p, 5)
    assert values(lg.read(p, 5, timeout=5)) == [{"k": b"v" * RING}]
    c = logs(partitions=1, serializer=(lambda o: o * 2, lambda b: bytes(b[:len(b) // 2])))
    c.append(b"s" * RING)
    assert values(c.read(0, 0, timeout=5)) == [b"s" * RING]
    assert len(oob_segments(c)) == 1
    # gc reads the references of a log made with a custom serializer too.
    assert cli.log_references(_segment.PREFIX + c.name) == (set(oob_segments(c)), set())


def test_a_large_strided_view_goes_out_of_band_as_a_small_one_goes_in_the_ring(logs):
    # A view that is not C-contiguous is appended as its bytes in C order
    # below the limit; above it, the out-of-band write must not refuse it
    # (memoryview.cast needs a C-contiguous view: it raised TypeError).
    lg = logs(partitions=1)
    small = memoryview(bytearray(range(256)) * 10)[::2]
    large = memoryview(bytearray(range(256)) * (RING // 128))[::2]
    assert not large.c_contiguous and large.nbytes > lg.max_record_bytes
    assert lg.append(small) == (0, 0)
    assert lg.append(large) == (0, 1)
    assert len(oob_segments(lg)) == 1
    assert values(lg.read(0, 0, timeout=5)) == [small.tobytes(), large.tobytes()]


def test_retention_by_size_unlinks_the_segments_it_drops(logs):
    """A large record takes max_record_bytes of the ring (zero padding):
    the ring retains a few of them, and the append that drops one unlinks
    its segment."""
    lg = logs(partitions=1)
    for i in range(10):
        lg.append(big(i, n=RING))
        assert 1 <= len(oob_segments(lg)) <= 4   # a quarter of the ring each: never one per reference
    start = lg.start_offset(0)
    assert start == 6
    assert [float(v[0]) for v in values(lg.read(0, start))] == list(range(start, 10))
    for i in range(4 * RING // 1024):
        lg.append(bytes(1024))                   # small records: four rings' worth
    assert oob_segments(lg) == []
    with pytest.raises(OffsetOutOfRange):
        lg.read(0, 9)


def test_an_appender_interrupted_before_its_unlink_leaves_the_segment_to_the_next(
        logs, monkeypatch):
    """The append whose retention drops a large record reports it and its
    appender unlinks the segment; a KeyboardInterrupt in that unlink
    (before it happened) leaves the drop a pending reclaim: the next append
    (or expiry), of this process or another, unlinks it."""
    lg = logs(partitions=1)
    lg.append(big(n=RING))
    [seg] = oob_segments(lg)
    calls = interrupt_oob_unlinks(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        for i in range(2 * RING // 1024):
            lg.append(i.to_bytes(4, "little") * 256)
    assert len(calls) == 1 and oob_segments(lg) == [seg]
    assert lg.start_offset(0) == 1           # dropped: no reader maps it any more
    monkeypatch.undo()
    lg.append(b"next")
    assert oob_segments(lg) == []


@needs_faults
@pytest.mark.timeout(120)
def test_an_appender_killed_before_its_unlink_leaves_the_segment_to_the_next(ctx, procs,
                                                                             logs):
    """An appender SIGKILLed after its append reported a large record its
    retention dropped, before it unlinked the segment (fault point
    reclaim_reported): the next append unlinks it. Before, it stayed until
    `pyqueue gc` - which keeps it while the process that made it (here
    the test's own) lives."""
    lg = logs(partitions=1)
    lg.append(big(n=RING))
    [seg] = oob_segments(lg)
    p = start_stopped(procs, ctx, w.armed_append_small, lg, "reclaim_reported",
                      2 * RING // 1024)
    assert oob_segments(lg) == [seg]          # reported, not unlinked
    kill_stopped(p)
    lg.append(b"next")
    assert oob_segments(lg) == []
    assert [e for e in cli.plan_gc([lg.name], oob_grace=0.0) if e[0] == "oob"] == []


def test_retention_by_age_unlinks_the_segments_it_drops(logs):
    lg = logs(partitions=3, retention_ms=60_000)
    now = time.time_ns() // 1_000_000
    old = now - 3_600_000
    lg._append(0, [big(n=RING), b"small", big(1, n=RING)], None, None, old)
    lg._append(1, [big(2, n=RING)], None, None, old)
    lg._append(2, [big(3, n=RING)], None, None, now)   # new: kept
    assert len(oob_segments(lg)) == 4
    assert lg.enforce_retention() == 4
    # The next append drops old records as it goes, and their segments.
    lg._append(1, [big(4, n=RING)], None, None, old)
    lg._append(1, [b"new"], None, None, now)
    assert len(oob_segments(lg)) == 1
    assert lg._oob_segments() == set(oob_segments(lg))
    assert np.array_equal(lg.read(2, 0, 1)[0].value, big(3, n=RING))


def test_a_reader_that_maps_a_dropped_record_gets_out_of_range(logs, monkeypatch):
    """An append that drops the record between the reader's peek and its
    mapping unlinks the segment: the read validates, sees the record was
    dropped and says out of range - never a lost segment."""
    lg = logs(partitions=1)
    lg.append(big(n=RING))
    real = _oob.read
    calls = []

    def read(log, ref):
        calls.append(1)
        if len(calls) == 1:   # the first mapping: drop the record under it
            for _ in range(RING // 1024 + 4):
                lg.append(bytes(1024))
            assert oob_segments(lg) == []
        return real(log, ref)

    monkeypatch.setattr(_oob, "read", read)
    with pytest.raises(OffsetOutOfRange):
        lg.read(0, 0, timeout=0)
    assert calls == [1]


def test_a_segment_removed_by_hand_is_that_record_s_poison_alone(logs):
    lg = logs(partitions=1)
    lg.append(big(n=RING))
    lg.append("next")
    (seg,) = oob_segments(lg)
    os.unlink(os.path.join(_segment.SHM_DIR, seg))
    with pytest.raises(PoisonRecord, match="removed before it was read") as e:
        lg.read(0, 0, timeout=0)
    assert (e.value.partition, e.value.offset) == (0, 0)
    assert values(lg.read(0, 1, timeout=0)) == ["next"]


def _segment_file(lg):
    return os.path.join(_segment.SHM_DIR, _segment.PREFIX + lg.name)


def _overwrite_reference(lg, old, new):
    """Replace the bytes of a reference in the log's segment (damage)."""
    with open(_segment_file(lg), "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        at = mm.find(old)
        assert at > 0
        mm[at:at + len(new)] = new


def test_a_damaged_or_foreign_reference_is_a_clear_error_not_a_crash(logs):
    """A reference record whose name was damaged, or made to name another
    segment: that record's PoisonRecord (the foreign segment is neither
    mapped nor, when the record is dropped, removed); the others read;
    appends and retention go on."""
    lg = logs(partitions=1)
    victim = _segment.PREFIX + lg.name + "-victim"
    with open(os.path.join(_segment.SHM_DIR, victim), "wb") as f:
        f.write(b"precious" * 4096)
    try:
        lg.append(big(n=RING))
        (s0,) = oob_segments(lg)
        lg.append(big(1, n=RING))
        (s1,) = set(oob_segments(lg)) - {s0}
        lg.append("after")
        name0 = ("/" + s0).encode()
        _overwrite_reference(lg, name0, b"/\xff\xfe" + name0[3:])     # not UTF-8
        name1 = ("/" + s1).encode()
        foreign = ("/" + victim).encode()
        _overwrite_reference(lg, name1, foreign + bytes(len(name1) - len(foreign)))
        for offset, match in ((0, "corrupt out-of-band reference"),
                              (1, "foreign segment")):
            with pytest.raises(PoisonRecord, match=match) as e:
                lg.read(0, offset, timeout=0)
            assert e.value.offset == offset
        assert values(lg.read(0, 2, timeout=0)) == ["after"]
        for _ in range(4 * RING // 1024):
            lg.append(bytes(1024))                # drops both damaged records
        assert lg.start_offset(0) > 2
        assert os.path.exists(os.path.join(_segment.SHM_DIR, victim))
        # Their own segments, named by nothing now, are gc's (tested below).
        assert sorted(oob_segments(lg)) == sorted([s0, s1])
    finally:
        os.unlink(os.path.join(_segment.SHM_DIR, victim))


def test_an_append_that_fails_leaves_no_segment(logs):
    lg = logs(partitions=1)
    with pytest.raises(Exception):
        lg.append_many([big(n=RING), b"fine", lambda: None])   # the lambda cannot be pickled
    assert oob_segments(lg) == []
    assert lg.end_offset(0) == 0
    with pytest.raises(MessageTooLarge, match="cannot hold even the reference"):
        lg.append(b"x" * RING, key="k" * (lg.max_record_bytes - 20))
    assert oob_segments(lg) == []
    lg.shutdown()
    with pytest.raises(ShutDown):
        lg.append(big(n=RING))
    assert oob_segments(lg) == []


def test_unlink_removes_the_segments(logs):
    lg = logs(partitions=2)
    lg.append(big(n=RING), key="a")
    lg.append(big(n=RING), key="b")
    assert len(oob_segments(lg)) == 2
    lg.unlink()
    assert oob_segments(lg) == []


@needs_faults
@pytest.mark.timeout(120)
def test_an_appender_killed_mid_append_leaves_nothing_live_and_gc_removes_it(ctx, procs,
                                                                              logs):
    """An appender SIGKILLed inside its append (its record claimed, half
    copied): readers skip the record (repaired) and never map its segment;
    gc removes that segment and one whose producer died before appending,
    and keeps the segment of a retained record whose producer is dead
    too."""
    lg = logs(partitions=1, retention_bytes=1 << 20)   # room for a few large records
    p = procs.start(ctx, w.append_and_exit, lg, RING)  # committed, then exits
    p.join(WAIT)
    assert p.exitcode == 0
    live = set(oob_segments(lg))
    assert len(live) == 1
    p = start_stopped(procs, ctx, w.armed_append, lg, "mid_copy", RING)
    stuck = set(oob_segments(lg)) - live
    assert len(stuck) == 1
    # Stopped, alive: its segment is not gc's.
    assert [e for e in cli.plan_gc([lg.name], oob_grace=0.0) if e[0] == "oob"] == []
    kill_stopped(p)
    o = procs.start(ctx, w.make_orphan_and_exit, lg)
    o.join(WAIT)
    assert o.exitcode == 0
    orphan = set(oob_segments(lg)) - live - stuck
    assert len(orphan) == 1
    lg.append("after")
    (got,) = values(lg.read(0, 0, timeout=0))   # stops at the dead appender's record
    assert np.array_equal(got, big(n=RING))
    recs = lg.read(0, 1, timeout=WAIT)           # which is repaired and skipped
    assert [(r.offset, r.value) for r in recs] == [(2, "after")]
    assert lg._oob_segments() == live
    plan = cli.plan_gc([lg.name], oob_grace=0.0)
    assert sorted(e[1] for e in plan if e[0] == "oob") == sorted(stuck | orphan)
    assert cli.main(["gc", lg.name, "--oob-grace", "0"]) == 0
    assert set(oob_segments(lg)) == live
    assert np.array_equal(lg.read(0, 0, 1)[0].value, big(n=RING))


@needs_faults
@pytest.mark.timeout(120)
def test_a_large_record_being_written_is_not_passed_and_its_segment_goes_with_its_drop(
        ctx, procs, logs):
    """Retention by size never passes a record still being copied by a
    live appender (before, it passed it unreported, and the appender wrote
    on into newer records): the appends that need its space give up with
    LockTimeout naming it; once it committed (SIGCONT), retention drops it
    like any other, reported, and its segment goes."""
    from pyqueue import LockTimeout, _locks
    lg = logs(partitions=1)
    p = start_stopped(procs, ctx, w.armed_append, lg, "mid_copy", RING)
    assert len(oob_segments(lg)) == 1
    _locks.set_lock_wait(0.3)
    try:
        with pytest.raises(LockTimeout) as info:
            for _ in range(2 * RING // 1024):
                lg.append(bytes(1000))       # two rings' worth: the claimed record is in the way
    except BaseException:
        kill_stopped(p)
        raise
    finally:
        _locks.set_lock_wait(None)
    assert info.value.pid == p.pid
    assert lg.start_offset(0) == 0           # not passed
    assert len(oob_segments(lg)) == 1
    os.kill(p.pid, signal.SIGCONT)
    p.join(WAIT)
    assert p.exitcode == 0
    (got,) = values(lg.read(0, 0, 1, timeout=WAIT))
    assert np.array_equal(got, big(n=RING))
    for _ in range(2 * RING // 1024):
        lg.append(bytes(1000))
    assert lg.start_offset(0) > 0
    assert oob_segments(lg) == []            # dropped, reported, unlinked by the dropper
