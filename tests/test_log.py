"""pyqueue.Log, memory mode: round trips, dense offsets, Kafka partitioning,
retention by capacity, replay, multi-process appends and reads, a model test."""
import os
import pickle
import time

import pytest
from hypothesis import given, settings, strategies as st

import pyqueue
from pyqueue import Log, OffsetOutOfRange
from pyqueue import _log
from tests import _log_workers as w
from tests._support import assert_appenders_in_order, close_handles, unique_name

SMALL = 4096  # rounded up to the smallest ring (64 KiB)


@pytest.fixture
def logs():
    made = []

    def make(*args, **kwargs):
        lg = Log(*args, **kwargs)
        made.append(lg)
        return lg

    yield make
    close_handles(made)


def test_round_trip_keys_headers_timestamps(logs):
    lg = logs(partitions=3, retention_bytes=64 * 1024)
    before = time.time_ns() // 1_000_000
    p, o = lg.append(b"v1", key=b"k", headers={"a": b"1", "b": b""})
    p2, o2 = lg.append("v2", key="k")
    p3, o3 = lg.append({"x": [1, 2]}, key="k")
    after = time.time_ns() // 1_000_000
    assert p == p2 == p3 == lg.partition_for(b"k")
    assert (o, o2, o3) == (0, 1, 2)
    recs = lg.read(p, 0)
    assert [r.value for r in recs] == [b"v1", "v2", {"x": [1, 2]}]
    assert [r.key for r in recs] == [b"k", b"k", b"k"]
    assert recs[0].headers == {"a": b"1", "b": b""} and recs[1].headers == {}
    assert all(before <= r.timestamp <= after for r in recs)
    assert all(r.partition == p for r in recs)
    lg.append(b"nokey", key=None)
    assert any(r.key is None for q in range(3) for r in lg.read(q, 0))


def test_offsets_dense_per_partition_and_keyless_round_robin(logs):
    lg = logs(partitions=4, retention_bytes=64 * 1024)
    got = [lg.append(i) for i in range(40)]
    assert sorted({p for p, _ in got}) == [0, 1, 2, 3]
    for q in range(4):
        offs = [o for p, o in got if p == q]
        assert offs == list(range(10))
        assert lg.end_offset(q) == 10 and lg.start_offset(q) == 0
        assert [r.offset for r in lg.read(q, 0)] == offs
    many = lg.append_many(range(300), key="same")
    assert len({p for p, _ in many}) == 1
    assert [o for _, o in many] == list(range(many[0][1], many[0][1] + 300))


def test_kafka_partitioner_vectors(logs):
    vectors = {b"": 681, b"a": 524, b"abc": 107, b"123456789": 566}
    for key, part in vectors.items():
        assert _log.kafka_partition(key, 1000) == part
    lg = logs(partitions=7, retention_bytes=SMALL)
    for key in vectors:
        assert lg.append(b"v", key=key)[0] == _log.kafka_partition(key, 7)
    assert lg.partition_for("abc") == lg.partition_for(b"abc")


def test_retention_out_of_range_names_start(logs):
    lg = logs(partitions=1, retention_bytes=SMALL)
    n = 3 * lg.capacity_bytes // 64
    for i in range(n):
        lg.append(b"x" * 50 + str(i).encode())
    start, end = lg.start_offset(0), lg.end_offset(0)
    assert end == n and 0 < start < end
    with pytest.raises(OffsetOutOfRange) as ei:
        lg.read(0, 0)
    assert ei.value.start_offset == start and str(start) in str(ei.value)
    assert isinstance(ei.value, LookupError) and isinstance(ei.value, pyqueue.PyQueueError)
    with pytest.raises(OffsetOutOfRange):
        lg.read(0, end + 1)
    recs = lg.read(0, start)
    assert [r.offset for r in recs] == list(range(start, end))
    assert recs[-1].value == b"x" * 50 + str(n - 1).encode()
    assert lg.read(0, end) == []


def test_replay_from_any_offset(logs):
    lg = logs(partitions=2, retention_bytes=1 << 20)
    vals = [f"m{i}" for i in range(1000)]
    lg.append_many(vals, key="k")
    p = lg.partition_for("k")
    for off in (0, 1, 63, 64, 65, 500, 999):
        recs = lg.read(p, off, max_records=100)
        assert [r.offset for r in recs] == list(range(off, min(off + 100, 1000)))
        assert [r.value for r in recs] == vals[off:off + 100]


def test_misc_errors_and_pickle(logs):
    with pytest.raises(ValueError):
        Log(partitions=0)
    with pytest.raises(ValueError):
        Log(partitions=257)
    lg = logs(partitions=2, retention_bytes=SMALL)
    with pytest.raises(ValueError):
        lg.read(2, 0)
    with pytest.raises(pyqueue.MessageTooLarge):   # no room for even a reference beside the key
        lg.append(b"x" * (lg.capacity_bytes // 4), key="k" * lg.max_record_bytes)
    lg.append(b"a", key="z")
    lg2 = pickle.loads(pickle.dumps(lg))
    p = lg.partition_for("z")
    assert lg2.read(p, 0)[0].value == b"a"
    lg2.close()
    lg3 = Log.open(lg.name)
    assert lg3.partitions == 2 and lg3.end_offset(p) == 1
    lg3.close()


def test_two_processes_append_one_partition(ctx, procs, logs):
    lg = logs(partitions=3, retention_bytes=1 << 20)
    n = 500
    for tag in ("a", "b"):
        procs.start(ctx, w.appender, lg, tag, n, "key")
    assert procs.join_all() == [0, 0]
    assert_appenders_in_order(lg.read(lg.partition_for("key"), 0, max_records=10 * n),
                              ("a", "b"), n)


def test_blocking_reader_gets_later_appends(ctx, procs, logs):
    lg = logs(partitions=1, retention_bytes=SMALL)
    ready, out = ctx.Queue(), ctx.Queue()
    procs.start(ctx, w.blocking_reader, lg, ready, out)
    ready.get(timeout=30)
    time.sleep(0.2)
    lg.append("late")
    assert out.get(timeout=30) == [(0, "late")]
    assert procs.join_all() == [0]


def test_read_timeout_returns_empty(logs):
    lg = logs(partitions=1, retention_bytes=SMALL)
    t0 = time.monotonic()
    assert lg.read(0, 0, timeout=0.2) == []
    assert 0.15 < time.monotonic() - t0 < 5


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.binary(max_size=300)), max_size=120))
def test_model(ops):
    """A list per partition: what is readable is a suffix of the model,
    with the model's offsets; retention only drops from the front."""
    lg = Log(partitions=3, retention_bytes=SMALL)
    try:
        model = [[], [], []]
        for p, v in ops:
            (off,) = lg._append(p, [v], None, None, 0)
            assert off == len(model[p])
            model[p].append(v)
        for p in range(3):
            start, end = lg.start_offset(p), lg.end_offset(p)
            assert end == len(model[p]) and 0 <= start <= end
            recs = lg.read(p, start, max_records=10_000)
            assert [r.offset for r in recs] == list(range(start, end))
            assert [r.value for r in recs] == model[p][start:]
            if start > 0:
                with pytest.raises(OffsetOutOfRange):
                    lg.read(p, start - 1)
    finally:
        lg.unlink()
        lg.close()


def test_retention_by_age_and_parameters_of_an_existing_log(logs):
    lg = logs(name=unique_name("age"), partitions=2, retention_ms=60_000)
    assert lg.retention_ms == 60_000
    old = time.time_ns() // 1_000_000 - 3_600_000
    lg._append(0, [b"a", b"b", b"c"], None, None, old)
    lg._append(1, [b"new"], None, None, old + 3_600_000)
    assert lg.start_offset(0) == 0  # kept until an append or enforce_retention looks
    assert lg.enforce_retention() == 3
    assert lg.start_offset(0) == lg.end_offset(0) == 3 and lg.start_offset(1) == 0
    lg._append(0, [b"old too"], None, None, old)
    lg._append(0, [b"now"], None, None, old + 3_600_000)  # drops the one before it
    assert [r.value for r in lg.read(0, lg.start_offset(0))] == [b"now"]
    # Opening an existing log: parameters must match (None: as it is).
    same = Log(name=lg.name)
    assert same.partitions == 2 and same.retention_ms == 60_000
    same.close()
    with pytest.raises(ValueError, match="partitions=2"):
        Log(name=lg.name, partitions=3)
    with pytest.raises(ValueError, match="retention_ms"):
        Log(name=lg.name, retention_ms=5)
    with pytest.raises(pyqueue.SegmentNotFound):
        Log.open(unique_name("missing"))


def test_256_partitions(logs):
    lg = logs(partitions=256, retention_bytes=64 * 1024)
    keys = [f"user-{i}" for i in range(2000)]
    got = [lg.append(k, key=k) for k in keys]
    assert [p for p, _ in got] == [_log.kafka_partition(k, 256) for k in keys]
    per = {}
    for (p, o), k in zip(got, keys):
        per.setdefault(p, []).append((o, k))
    assert len(per) > 200
    for p, recs in per.items():
        assert [o for o, _ in recs] == list(range(len(recs)))
        assert [r.value for r in lg.read(p, 0)] == [k for _, k in recs]
    c = lg.consumer("all")
    seen = []
    while True:
        recs = c.poll(max_records=1000)
        if not recs:
            break
        seen.extend(r.value for r in recs)
    assert sorted(seen) == sorted(keys)
    c.close()


# -- poison and damaged records (issue 9, items 10 and 12) ---------------------

@pytest.fixture(params=["memory", "directory"])
def any_log(request, tmp_path):
    made = []

    def make(**kwargs):
        if request.param == "memory":
            lg = Log(**kwargs)
        else:
            lg = Log(path=tmp_path / f"log{len(made)}", **kwargs)
        made.append(lg)
        return lg

    yield make
    for lg in made:
        if lg.path is None:
            lg.unlink()
        lg.close()


def test_a_poison_record_is_named_alone_and_can_be_skipped(any_log):
    """A record whose pickle fails: the records before it come back, the
    next read raises PoisonRecord naming partition and offset (the
    decoder's error as its cause), and reading on from offset + 1 works."""
    lg = any_log(partitions=2)
    lg._append(1, list(range(5)) + [w.Unloadable()] + list(range(5, 10)), None, None, 0)
    got = lg.read(1, 0, max_records=100)
    assert [r.value for r in got] == [0, 1, 2, 3, 4]
    for _ in range(2):  # the same each time: nothing moves by itself
        with pytest.raises(pyqueue.PoisonRecord) as ei:
            lg.read(1, 5, max_records=100)
        assert (ei.value.partition, ei.value.offset) == (1, 5)
        assert isinstance(ei.value.__cause__, ValueError)
        assert "offset 5 of partition 1" in str(ei.value)
    assert isinstance(ei.value, pyqueue.PyQueueError)
    e2 = pickle.loads(pickle.dumps(ei.value))
    assert (type(e2), e2.partition, e2.offset) == (pyqueue.PoisonRecord, 1, 5)
    assert [(r.offset, r.value) for r in lg.read(1, 6, max_records=100)] == [
        (6 + i, 5 + i) for i in range(5)]


def test_a_poison_record_in_a_poll_keeps_the_others(any_log):
    """A poll that meets a poison record returns what it read before it
    (from every partition: their positions moved on) and names the record
    at the next poll; the position stays at it (each poll raises again,
    a commit does not pass it) until seek(p, offset + 1), then the group
    goes on and commits past it."""
    lg = any_log(partitions=3)
    lg._append(0, list(range(10)), None, None, 0)
    lg._append(1, [100, 101, w.Unloadable(), 103], None, None, 0)
    lg._append(2, [w.Unloadable(), 201], None, None, 0)
    c = lg.consumer("g")
    got, errors = [], []
    while True:
        try:
            recs = c.poll(max_records=100)
        except pyqueue.PoisonRecord as e:
            errors.append((e.partition, e.offset))
            assert c.position(e.partition) == e.offset
            if len(errors) == 1:  # nothing moves by itself
                with pytest.raises(pyqueue.PoisonRecord):
                    c.poll(max_records=100)
                c.commit()
                assert c.committed(e.partition) == e.offset  # not past it
            c.seek(e.partition, e.offset + 1)
            continue
        if not recs:
            break
        got += [(r.partition, r.value) for r in recs]
    assert sorted(got) == [(0, i) for i in range(10)] + [(1, 100), (1, 101), (1, 103), (2, 201)]
    assert sorted(errors) == [(1, 2), (2, 0)]
    c.commit()
    assert [c.committed(p) for p in range(3)] == [10, 4, 2]
    c.close()


def _ring_record_payload(lg, partition, offset):
    """The byte position, in the segment file, of the payload (its first
    field is the record's offset) of the record with that offset: a walk
    of the ring as docs/design.md lays it out."""
    import struct
    path = f"/dev/shm/pyqueue.{lg.name}"
    with open(path, "rb") as f:
        data = f.read()
    cap = lg.capacity_bytes
    entries = max(4, cap // (32 * 64))
    part = 4096 + partition * (256 + entries * 16 + cap)
    start_pos, start_off = struct.unpack_from("<QQ", data, part + 128)
    tail, = struct.unpack_from("<Q", data, part + 64)
    ring = part + 256 + entries * 16
    pos, off = start_pos, start_off
    while pos != tail:
        ctl, = struct.unpack_from("<Q", data, ring + pos % cap)
        length, state = ctl & 0xffffffff, (ctl >> 40) & 0xff
        if state != 3:  # not padding
            if off == offset:
                return path, ring + pos % cap + 16
            off += 1
        pos += 16 + (length + 15) // 16 * 16
    raise AssertionError(f"no record at offset {offset}")


DAMAGED_READER = """
import sys
import pyqueue
lg = pyqueue.Log.open(sys.argv[1])
recs = lg.read(0, 100, max_records=5)
print(f"{recs[0].value}-{recs[-1].value}")
try:
    lg.read(0, 70)
except pyqueue.CorruptRecord as e:
    print(f"corrupt-{e.partition}-{e.offset}")
lg.close()
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("bad", [10**9, 0, 2**64 - 1])
def test_a_damaged_offset_field_is_corrupt_record_not_a_hang(logs, bad):
    """One damaged record-offset field of a memory-mode segment made read,
    poll and `pyqueue tail` spin for ever with the GIL held. Now the
    damaged record is a CorruptRecord naming partition and offset, the
    records before it come back first, and those after it read on."""
    import struct
    lg = logs(partitions=1, retention_bytes=64 * 1024)
    lg._append(0, list(range(200)), None, None, 0)
    path, at = _ring_record_payload(lg, 0, 70)
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(struct.pack("<Q", bad))
    # First in a child process: these reads spun for ever in C with the GIL
    # held, where no signal (nor pytest-timeout) gets through; a hang here
    # is a failure, not a stuck suite.
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child = subprocess.run(
        [sys.executable, "-c", DAMAGED_READER, lg.name], cwd=root, capture_output=True,
        text=True, timeout=60)
    assert child.returncode == 0 and child.stdout.split() == ["100-104", "corrupt-0-70"], (
        child.stdout, child.stderr)
    # Past it, from the index entry at 64.
    assert [r.value for r in lg.read(0, 100, max_records=5)] == list(range(100, 105))
    with pytest.raises(pyqueue.CorruptRecord) as ei:
        lg.read(0, 70, max_records=100)
    assert (ei.value.partition, ei.value.offset) == (0, 70)
    assert "offset 70 of partition 0" in str(ei.value)
    assert [r.value for r in lg.read(0, 60, max_records=100)] == list(range(60, 70))
    assert [r.value for r in lg.read(0, 0, max_records=200)] == list(range(70))
    assert [r.value for r in lg.read(0, 71, max_records=200)] == list(range(71, 200))
    # A consumer is told, and skips it.
    c = lg.consumer("g")
    got = []
    with pytest.raises(pyqueue.CorruptRecord) as ei:
        while True:
            got += c.poll(max_records=50)
    assert [r.offset for r in got] == list(range(70)) and ei.value.offset == 70
    c.seek(0, 71)
    assert [r.offset for r in c.poll(max_records=500)] == list(range(71, 200))
    c.close()
