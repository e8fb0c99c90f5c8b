"""pyqueue.Log, directory mode: segment files named by base offset, rolls,
replay, reopen, retention by bytes and by age, CRC32C and what a damaged
file gives, torn tails truncated on recovery, several processes, and a
model test with reopens."""
import os
import pwd
import stat
import struct
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings, strategies as st

import pyqueue
from pyqueue import CorruptRecord, Log, OffsetOutOfRange
from pyqueue import _logdir
from tests import _log_workers as w
from tests._support import assert_appenders_in_order
from tests.test_shm_full import _can_unshare

SEG = 8192  # small segments: rolls happen within a few records


def segment_files(path, p=0):
    d = _logdir.partition_dir(str(path), p)
    return sorted(f for f in os.listdir(d) if f.endswith(".log"))


def test_round_trip_reopen_and_layout(tmp_path):
    path = tmp_path / "log"
    lg = Log(path=path, partitions=3)
    assert isinstance(lg, Log) and lg.path == str(path) and lg.recovery == []
    p, o = lg.append(b"v1", key=b"k", headers={"h": b"1"})
    lg.append("v2", key="k")
    lg.append({"x": [1, 2]}, key="k")
    lg.append(b"nokey")
    assert (p, o) == (lg.partition_for(b"k"), 0)
    lg.close()
    assert sorted(os.listdir(path)) == [".lock-open", ".lock-users", "control", "log.json",
                                        "partition-0", "partition-1", "partition-2"]
    assert segment_files(path, p) == ["00000000000000000000.log"]
    lg = Log.open(str(path))
    assert lg.recovery == [] and lg.partitions == 3
    recs = lg.read(p, 0)
    assert [r.value for r in recs[:3]] == [b"v1", "v2", {"x": [1, 2]}]
    assert recs[0].headers == {"h": b"1"} and recs[0].key == b"k"
    assert lg.end_offset(p) == len(recs)
    assert sum(lg.end_offset(q) for q in range(3)) == 4
    lg.close()
    with pytest.raises(ValueError):
        lg.read(p, 0)


def test_rolls_seal_trim_and_replay(tmp_path):
    path = tmp_path / "log"
    lg = Log(path=path, segment_bytes=SEG)
    vals = [os.urandom(i % 700) for i in range(600)]
    got = lg.append_many(vals[:300])
    for v in vals[300:]:
        got.append(lg.append(v))
    assert [o for _, o in got] == list(range(600))
    files = segment_files(path)
    assert len(files) > 10
    bases = [int(f[:20]) for f in files]
    assert bases[0] == 0 and bases == sorted(bases)
    for f, nxt in zip(files[:-1], bases[1:]):
        size = os.path.getsize(os.path.join(_logdir.partition_dir(str(path), 0), f))
        h = _logdir.read_index_header(str(path), 0, int(f[:20]))
        assert h is not None and h["records"] == nxt - int(f[:20])
        # closed segments are trimmed to what they hold, in whole pages
        assert size == -(-h["end_pos"] // 4096) * 4096
    for off in (0, 1, 63, 64, 299, 300, 301, 598, 599):
        recs = lg.read(0, off, max_records=50)
        assert [r.offset for r in recs] == list(range(off, min(off + 50, 600)))
        assert [r.value for r in recs] == vals[off:off + 50]
    assert len(lg.read(0, 0, max_records=10_000)) == 600
    with pytest.raises(pyqueue.MessageTooLarge):
        lg.append(b"x" * SEG)
    lg.append(b"x" * (SEG - pyqueue._log.RECORD_HEADER_BYTES))  # a whole segment
    assert lg.read(0, 600)[0].value == b"x" * (SEG - 40)
    lg.close()


def test_retention_by_bytes(tmp_path):
    lg = Log(path=tmp_path / "log", segment_bytes=SEG, retention_bytes=4 * SEG)
    for i in range(2000):
        lg.append(struct.pack("<Q", i) + b"x" * 100)
    start, end = lg.start_offset(0), lg.end_offset(0)
    assert end == 2000 and start > 0
    files = segment_files(tmp_path / "log")
    assert int(files[0][:20]) == start
    sizes = [_logdir.read_index_header(str(tmp_path / "log"), 0, int(f[:20]))["end_pos"]
             for f in files[:-1]]
    # Kafka's rule, applied at each roll: the oldest segment goes while
    # what stays holds at least retention_bytes. So the oldest one kept
    # was needed to hold that much, and one more would have been too many.
    assert sum(sizes[1:]) < 4 * SEG <= sum(sizes) + lg._snapshot(0)["end_pos"]
    with pytest.raises(OffsetOutOfRange) as ei:
        lg.read(0, start - 1)
    assert ei.value.start_offset == start and str(start) in str(ei.value)
    recs = lg.read(0, start, max_records=10_000)
    assert [struct.unpack_from("<Q", r.value)[0] for r in recs] == list(range(start, 2000))
    lg.close()


def test_retention_by_age(tmp_path):
    lg = Log(path=tmp_path / "log", segment_bytes=SEG, retention_ms=60_000)
    now = time.time_ns() // 1_000_000
    old = now - 3_600_000
    # An hour-old batch (the timestamp is the append time: set it), then
    # fresh records; rolls remove the old segments, enforce_retention the
    # rest of them.
    for _i in range(200):
        lg._append(0, [b"old" * 30], None, None, old)
    first_fresh = lg.end_offset(0)
    for _i in range(200):
        lg.append(b"new" * 30)
    lg.enforce_retention()
    start = lg.start_offset(0)
    assert 0 < start <= first_fresh
    assert all(r.value == b"new" * 30 for r in lg.read(0, first_fresh, max_records=10_000))
    assert all(r.value == b"old" * 30 for r in lg.read(0, start, max_records=first_fresh - start))
    # Everything expired: even the active segment goes, the offsets go on.
    lg.close()
    lg = Log(path=tmp_path / "log2", retention_ms=1000)
    lg._append(0, [b"a", b"b"], None, None, old)
    assert lg.enforce_retention() >= 1
    assert lg.start_offset(0) == lg.end_offset(0) == 2
    assert lg.append(b"c") == (0, 2)
    lg.close()


def test_damaged_closed_segment_raises_corrupt_record(tmp_path):
    path = tmp_path / "log"
    lg = Log(path=path, segment_bytes=SEG)
    for i in range(300):
        lg.append(struct.pack("<Q", i) * 20)
    lg.close()
    files = segment_files(path)
    victim = os.path.join(path, "partition-0", files[1])
    base = int(files[1][:20])
    with open(victim, "r+b") as f:
        f.seek(40 + 50)  # inside the value of the segment's first record
        b = f.read(1)
        f.seek(40 + 50)
        f.write(bytes([b[0] ^ 0x01]))
    lg = Log.open(str(path))
    with pytest.raises(CorruptRecord) as ei:
        lg.read(0, base)
    assert ei.value.path == victim and ei.value.offset == base and ei.value.partition == 0
    assert isinstance(ei.value, pyqueue.SegmentMismatch)
    # Records before it come back, the bad one never does; the rest reads.
    recs = lg.read(0, 0, max_records=10_000)
    assert [r.offset for r in recs] == list(range(base))
    assert lg.read(0, base + 1)[0].offset == base + 1
    assert lg.append(b"still appendable") == (0, 300)
    lg.close()


def _last_record_end(path):
    files = segment_files(path)
    m = _logdir.map_segment(str(path), 0, int(files[-1][:20]), False)
    try:
        (cursor, torn) = m.scan(m.data_size, False)
        return files[-1], cursor[0], cursor[1]
    finally:
        m.close()


def test_torn_tail_is_truncated_and_reported(tmp_path):
    path = tmp_path / "log"
    lg = Log(path=path, segment_bytes=1 << 20)
    for i in range(50):
        lg.append(b"r%03d" % i * 10)
    lg.close()
    name, end, next_off = _last_record_end(path)
    assert next_off == 50
    seg = os.path.join(path, "partition-0", name)
    # The last record loses its end (a write that never finished), and
    # garbage follows it.
    with open(seg, "r+b") as f:
        f.seek(end - 8)
        f.write(b"\xff" * 8 + os.urandom(300))
    lg = Log.open(str(path))
    assert len(lg.recovery) == 1
    rep = lg.recovery[0]
    assert rep["partition"] == 0 and rep["torn_records"] == 1 and rep["truncated_bytes"] > 300
    assert lg.end_offset(0) == 49
    assert [r.value for r in lg.read(0, 0, max_records=100)] == [b"r%03d" % i * 10
                                                                   for i in range(49)]
    assert lg.append(b"after") == (0, 49)
    lg.close()
    lg = Log.open(str(path))
    assert lg.recovery == [] and lg.read(0, 49)[0].value == b"after"
    lg.close()


def test_parameters_and_errors(tmp_path):
    path = tmp_path / "log"
    with pytest.raises(pyqueue.SegmentNotFound):
        Log.open(str(path))
    lg = Log(path=path, partitions=2, segment_bytes=SEG, fsync="interval")
    with pytest.raises(ValueError, match="partitions=2"):
        Log(path=path, partitions=3)
    with pytest.raises(ValueError, match="fsync"):
        Log(path=path, fsync="always")
    same = Log(path=path, partitions=2)  # the same parameters: fine
    assert same.partitions == 2 and same.fsync == "interval"
    same.close()
    for bad in ({"fsync": "sometimes"}, {"segment_bytes": 100}, {"partitions": 0},
                {"retention_ms": 0}, {"perm": 0o1777}, {"perm": 0o400}, {"perm": "0o600"},
                {"fsync_interval": -1}):
        with pytest.raises(ValueError):
            Log(path=tmp_path / "other", **bad)
    with pytest.raises(ValueError):
        Log("name", path=tmp_path / "x")
    with pytest.raises(ValueError):
        Log(segment_bytes=SEG)  # memory mode
    with pytest.raises(ValueError):
        lg.read(2, 0)
    with pytest.raises(OffsetOutOfRange):
        lg.read(0, 1)
    with pytest.raises(TypeError):
        lg.append(b"x", key=3)
    assert lg.append(b"ok") is not None  # still usable
    lg.close()


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_fsync_policies_round_trip(tmp_path, fsync):
    lg = Log(path=tmp_path / "log", segment_bytes=SEG, fsync=fsync, fsync_interval=0.01)
    offs = [lg.append(b"%d" % i)[1] for i in range(200)]
    offs += [o for _, o in lg.append_many([b"m"] * 100)]
    assert offs == list(range(300))
    lg.close()
    lg = Log.open(str(tmp_path / "log"))
    assert lg.end_offset(0) == 300 and lg.fsync == fsync
    lg.close()


@pytest.mark.parametrize("fsync", ["always", "interval"])
def test_append_many_across_a_roll_with_fsync_returns_its_offsets(tmp_path, fsync):
    # A batch that fills the active segment rolls in the middle: the roll
    # unmaps the old segment, whose part of the batch the roll has synced.
    # The append must return its offsets, not raise after committing them
    # (a caller that retries would append the batch twice).
    lg = Log(path=tmp_path / "log", segment_bytes=SEG, fsync=fsync, fsync_interval=1e-6)
    n = 0
    for _ in range(3 * SEG // (50 * 100) + 2):
        offs = [o for _, o in lg.append_many([b"x" * 100] * 50)]
        assert offs == list(range(n, n + 50))
        n += 50
    assert len(_logdir.list_bases(str(tmp_path / "log"), 0)) > 2  # it rolled
    assert lg.end_offset(0) == n
    lg.close()


def test_threads_appending_and_reading_with_fsync_always(tmp_path):
    # Threads of one process share the handle's mappings: a roll by one
    # thread (or a reader mapping the new active segment) unmaps a segment
    # another thread's append is about to sync; each append still returns
    # exactly its offsets, and every record is there once.
    import threading
    lg = Log(path=tmp_path / "log", segment_bytes=SEG, fsync="always")
    errors, got = [], []
    stop = threading.Event()

    def appender(k):
        try:
            for i in range(40):
                got.extend(o for _, o in lg.append_many([b"%d-%d" % (k, i)] * 20))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def reader():
        off = 0
        try:
            while not stop.is_set():
                off += len(lg.read(0, off, 1000, timeout=0.01))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        rs = [threading.Thread(target=reader) for _ in range(2)]
        ws = [threading.Thread(target=appender, args=(k,)) for k in range(3)]
        for t in rs + ws:
            t.start()
        for t in ws:
            t.join()
        stop.set()
        for t in rs:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []
    assert sorted(got) == list(range(3 * 40 * 20))
    assert lg.end_offset(0) == 3 * 40 * 20
    lg.close()


def test_pickles_by_path(ctx, procs, tmp_path):
    lg = Log(path=tmp_path / "log", partitions=3, segment_bytes=SEG)
    n = 300
    for tag in ("a", "b"):
        procs.start(ctx, w.dir_append_many, str(tmp_path / "log"), tag, n, "key")
    assert procs.join_all() == [0, 0]
    assert_appenders_in_order(lg.read(lg.partition_for("key"), 0, max_records=10 * n),
                              ("a", "b"), n)
    lg.close()


def test_two_processes_append_while_reading(ctx, procs, tmp_path):
    lg = Log(path=tmp_path / "log", segment_bytes=SEG)
    n = 400
    for tag in ("a", "b"):
        procs.start(ctx, w.appender, lg, tag, n, None)
    got, at = [], 0
    deadline = time.monotonic() + 60
    while len(got) < 2 * n and time.monotonic() < deadline:
        recs = lg.read(0, at, max_records=1000, timeout=1)
        got.extend(recs)
        if recs:
            at = recs[-1].offset + 1
    assert procs.join_all() == [0, 0]
    assert_appenders_in_order(got, ("a", "b"), n)
    lg.close()


def test_blocking_reader_gets_later_appends(ctx, procs, tmp_path):
    lg = Log(path=tmp_path / "log")
    ready, out = ctx.Queue(), ctx.Queue()
    procs.start(ctx, w.blocking_reader, lg, ready, out)
    ready.get(timeout=30)
    lg.append("late")
    assert out.get(timeout=30) == [(0, "late")]
    assert procs.join_all() == [0]
    lg.close()


class _Model:
    def __init__(self, partitions):
        self.parts = [[] for _ in range(partitions)]


def _active_tail(path, p):
    """(segment file, [record positions], end) of partition p's active
    (last) segment."""
    seg = os.path.join(_logdir.partition_dir(path, p), segment_files(path, p)[-1])
    with open(seg, "rb") as f:
        data = f.read()
    pos, out = 0, []
    while pos + 4 <= len(data):
        (size,) = struct.unpack_from("<I", data, pos)
        if size == 0:
            break
        out.append(pos)
        pos += -(-size // 8) * 8
    return seg, out, pos


def _tear(path, p, how, model):
    """With the log closed, do to partition p's active segment what a
    writer that died leaves: "tail" writes half a record after the last
    one (a header-less copy: the model keeps everything); "cut" damages
    the last record (its write never finished: the model loses it). False
    when there is nothing to tear (an empty active segment)."""
    seg, positions, end = _active_tail(path, p)
    with open(seg, "r+b") as f:
        if how == "tail":
            room = os.path.getsize(seg) - end
            if room < 16:
                return False
            f.seek(end + 8)  # a value copied in, its header not yet written
            f.write(b"\xa5" * min(300, room - 8))
            return True
        if not positions:
            return False
        f.seek(positions[-1] + 16)  # the timestamp: covered by the CRC
        b = f.read(1)
        f.seek(positions[-1] + 16)
        f.write(bytes([b[0] ^ 0xFF]))
    model[p].pop()
    return True


@settings(max_examples=25, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(0, 1), st.binary(max_size=1500)),
    st.tuples(st.just("many"), st.integers(0, 1), st.lists(st.binary(max_size=300), max_size=20)),
    st.tuples(st.just("reopen"), st.just(0), st.just(b"")),
    st.tuples(st.just("tear"), st.integers(0, 1), st.sampled_from(["tail", "cut"])),
), max_size=60))
def test_model(tmp_path_factory, ops):
    """A list per partition: every append is readable at its offset, across
    rolls and reopens (each reopen here is alone: it recovers), and across
    torn logs (a tail left by a writer that died, or its last record cut):
    the reopen reports the truncation, keeps nothing aside (a tail is not
    damage) and the log is the model, less a cut record."""
    path = str(tmp_path_factory.mktemp("m") / "log")
    lg = Log(path=path, partitions=2, segment_bytes=SEG)
    model = [[], []]
    try:
        for op, p, v in ops:
            if op == "append":
                assert lg._append(p, [v], None, None, 0) == [len(model[p])]
                model[p].append(v)
            elif op == "many":
                if v:
                    assert lg._append(p, list(v), None, None, 0) == list(
                        range(len(model[p]), len(model[p]) + len(v)))
                    model[p].extend(v)
            elif op == "reopen":
                lg.close()
                lg = Log.open(path)
                assert lg.recovery == []
            else:
                lg.close()
                torn = _tear(path, p, v, model)
                lg = Log.open(path)
                if torn:
                    (rep,) = lg.recovery
                    assert rep["partition"] == p and rep["truncated_bytes"] > 0
                    assert rep["torn_records"] == (v == "cut") and "kept_aside" not in rep
                else:
                    assert lg.recovery == []
                assert lg.end_offset(p) == len(model[p])
        for p in range(2):
            assert lg.start_offset(p) == 0 and lg.end_offset(p) == len(model[p])
            recs = lg.read(p, 0, max_records=100_000)
            assert [r.value for r in recs] == model[p]
            if model[p]:
                mid = len(model[p]) // 2
                assert [r.value for r in lg.read(p, mid, max_records=3)] == model[p][mid:mid + 3]
    finally:
        lg.close()


def _disk_bytes(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            total += os.stat(os.path.join(root, f)).st_blocks * 512
    return total


def test_segment_files_take_disk_as_they_fill(tmp_path):
    path = tmp_path / "log"
    lg = Log(path=path, partitions=8)  # 64 MiB segments
    assert os.path.getsize(path / "partition-0" / "00000000000000000000.log") == 64 << 20
    assert _disk_bytes(path) < 4 << 20  # sparse: an empty log takes (almost) no disk
    for i in range(3000):
        lg._append(3, [os.urandom(1000)], None, None, 0)
    used = _disk_bytes(path / "partition-3")
    assert 3_000_000 < used < 3_000_000 + (2 << 20)  # blocks follow the records (1 MiB steps)
    lg.close()


FULL_DISK_CHILD = """
import errno, os, sys
from pyqueue import Log
lg = Log(path=sys.argv[1] + "/log", segment_bytes=1 << 20)
n = 0
try:
    while True:
        lg.append(os.urandom(2000))
        n += 1
except OSError as e:
    assert e.errno == errno.ENOSPC, e
    assert "no room" in str(e), e
else:
    raise SystemExit("no error from a full disk")
assert n > 100, n
# What was appended reads back, and the log still answers.
assert [r.offset for r in lg.read(0, 0, max_records=10 * n)] == list(range(n))
assert lg.end_offset(0) == n
print("OK", n)
"""


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare --mount` (root / CAP_SYS_ADMIN)")
def test_full_disk_is_a_clear_error_not_sigbus(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = 'mount -t tmpfs -o size=3m tmpfs "$2" && exec "$0" -c "$1" "$2"'
    r = subprocess.run(["unshare", "--mount", "sh", "-c", script, sys.executable,
                        FULL_DISK_CHILD, str(mnt)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert r.stdout.startswith("OK")


@pytest.mark.timeout(120)
def test_a_reader_on_the_heels_of_an_appender_never_reads_past_the_end(procs, tmp_path):
    """Appends publish the end position before the end offset: a reader
    right behind must not return a record beyond the end offset it saw
    (found by bench/log_compare.py: the next read raised OffsetOutOfRange)."""
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    path = str(tmp_path / "log")
    lg = Log(path=path)
    n = 200_000
    procs.start(ctx, w.dir_append_fast, path, n)
    at = 0
    while at < n:
        recs = lg.read(0, at, max_records=4096, timeout=30)
        assert recs, "the appender stalled"
        assert recs[0].offset == at
        at = recs[-1].offset + 1
    assert procs.join_all() == [0]
    lg.close()


# ---- permissions: links, other users, modes ------------------------------


def _mode(p):
    return stat.S_IMODE(os.lstat(p).st_mode)


def _all_modes(path):
    """{relative path: mode} of the log's directories and files."""
    out = {".": _mode(path)}
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            full = os.path.join(root, n)
            out[os.path.relpath(full, path)] = _mode(full)
    return out


@pytest.mark.parametrize("planted", ["log.json.tmp", "log.json", ".lock-open", ".lock-users",
                                     "control",
                                     "partition-0/00000000000000000000.log",
                                     "partition-0/00000000000000000000.index"])
def test_a_link_planted_in_place_of_a_log_file_is_refused(tmp_path, planted):
    """Another user (or a careless one) plants a symbolic link where the
    log will create or open a file: the open is refused with a
    PermissionError naming it, and the link's target is untouched."""
    target = tmp_path / "precious"
    target.write_bytes(b"only root may write this")
    os.chmod(target, 0o644)
    before = os.stat(target)
    path = tmp_path / "log"
    os.makedirs(path / "partition-0", mode=0o700)
    os.chmod(path, 0o700)
    os.symlink(target, path / planted)
    with pytest.raises(PermissionError, match="symbolic link") as ei:
        Log(path=path)
    assert planted.split("/")[-1] in str(ei.value)
    after = os.stat(target)
    assert target.read_bytes() == b"only root may write this"
    assert (after.st_size, after.st_mode, after.st_mtime_ns) == (
        before.st_size, before.st_mode, before.st_mtime_ns)
    assert os.path.islink(path / planted)


def test_a_link_planted_in_an_existing_log_is_refused(tmp_path):
    """The same in a log that exists: a closed segment replaced by a link
    is never read or trimmed through it."""
    path = tmp_path / "log"
    lg = Log(path=path, segment_bytes=SEG)
    for i in range(100):
        lg.append(b"%05d" % i * 100)
    lg.close()
    target = tmp_path / "precious"
    target.write_bytes(b"secret" * 1000)
    victim = path / "partition-0" / segment_files(path)[1]
    os.unlink(victim)
    os.symlink(target, victim)
    with pytest.raises(PermissionError, match="symbolic link"):
        Log.open(str(path))  # alone: recovery opens every segment
    assert target.read_bytes() == b"secret" * 1000


_FIFO_CHILD = r"""
import sys
from pyqueue import Log
try:
    lg = Log.open(sys.argv[1], trust_owner=True)
    lg.read(0, 0, max_records=10_000)
except PermissionError as e:
    print("refused:", e)
"""


@pytest.mark.parametrize("which", ["log.json", "closed segment", "closed index"])
def test_a_fifo_planted_in_place_of_a_log_file_is_refused_not_waited_on(tmp_path, which):
    # Whoever may write a log's directory (its owner, for an administrator
    # who opens it with trust_owner=True, as `pyqueue tail` does) can make
    # a file a FIFO: a read-only open of it would wait for a writer for
    # ever. It is refused as not a regular file (in a child, with a
    # deadline, so that a hang fails the test instead of wedging it).
    path = tmp_path / "log"
    lg = Log(path=path, segment_bytes=SEG)
    for i in range(100):
        lg.append(b"%05d" % i * 100)
    if which != "log.json":
        lg.close()  # the reader below opens the closed segment's files itself
    names = {"log.json": "log.json",
             "closed segment": "partition-0/" + segment_files(path)[1],
             "closed index": "partition-0/" + segment_files(path)[1][:-3] + "index"}
    victim = path / names[which]
    os.unlink(victim)
    os.mkfifo(victim, 0o600)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    try:
        proc = subprocess.run([sys.executable, "-c", _FIFO_CHILD, str(path)], env=env,
                              capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"opening a log whose {which} is a FIFO hangs")
    finally:
        if which == "log.json":
            lg.close()
    assert proc.returncode == 0, proc.stderr
    assert "refused" in proc.stdout and "not a regular file" in proc.stdout, proc.stdout


@pytest.mark.parametrize("mode, why", [(0o777, "others"), (0o703, "others"), (0o770, "its group")])
def test_a_directory_others_may_write_is_refused(tmp_path, mode, why):
    path = tmp_path / "log"
    path.mkdir()
    os.chmod(path, mode)
    with pytest.raises(PermissionError, match=f"writable by {why}") as ei:
        Log(path=path)
    assert str(path) in str(ei.value)
    assert os.listdir(path) == [] and _mode(path) == mode  # nothing made, nothing changed
    # An existing log whose directory was opened up: refused as well.
    os.chmod(path, 0o700)
    Log(path=path).close()
    os.chmod(path, mode)
    with pytest.raises(PermissionError, match=f"writable by {why}"):
        Log.open(str(path))
    lg = Log.open(str(path), trust_owner=True)  # on purpose
    lg.append(b"x")
    lg.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_a_directory_of_another_user_is_refused(tmp_path):
    """Another user made the directory (0700, so only its group/others bits
    are clean): root refuses to create or open a log in it."""
    nobody = pwd.getpwnam("nobody").pw_uid
    path = tmp_path / "log"
    path.mkdir()
    os.chmod(path, 0o700)
    os.chown(path, nobody, -1)
    with pytest.raises(PermissionError, match=f"belongs to uid {nobody}") as ei:
        Log(path=path)
    assert str(path) in str(ei.value) and "trust_owner" in str(ei.value)
    assert os.listdir(path) == []
    lg = Log(path=path, trust_owner=True)
    lg.append(b"shared on purpose")
    lg.close()
    with pytest.raises(PermissionError):
        Log.open(str(path))
    lg = Log.open(str(path), trust_owner=True)
    assert lg.read(0, 0)[0].value == b"shared on purpose"
    lg.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown a log to another user")
def test_root_opening_another_users_log_leaves_it_theirs(tmp_path):
    """An administrator who opens another user's log on purpose
    (trust_owner=True, as `pyqueue tail` does) may be the one that recovers
    it and makes files in it (a missing index, a partition's directory and
    first segment): they are the log owner's, not root's 0600 ones its
    owner could no longer open."""
    nobody = pwd.getpwnam("nobody")
    path = tmp_path / "log"
    lg = Log(path=path, partitions=2, segment_bytes=SEG)
    for i in range(50):
        lg.append(b"%d" % i, key=b"%d" % i)
    lg.close()
    active = segment_files(path)[-1][:-3] + "index"
    os.unlink(path / "partition-0" / active)
    for f in os.listdir(path / "partition-1"):
        os.unlink(path / "partition-1" / f)
    os.rmdir(path / "partition-1")
    for root, dirs, files in os.walk(path):
        for name in [root] + [os.path.join(root, f) for f in files]:
            os.chown(name, nobody.pw_uid, nobody.pw_gid)
    lg = Log.open(str(path), trust_owner=True)  # alone: it recovers
    assert len(lg.read(0, 0, max_records=100)) > 0
    lg.close()
    owners = {}
    for root, dirs, files in os.walk(path):
        for name in [root] + [os.path.join(root, f) for f in files]:
            st = os.lstat(name)
            owners[os.path.relpath(name, path)] = (st.st_uid, st.st_gid)
    assert "partition-1" in owners and ("partition-0/" + active) in owners
    assert {k: v for k, v in owners.items() if v != (nobody.pw_uid, nobody.pw_gid)} == {}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file of another user")
def test_a_log_json_of_another_user_cannot_grant_its_group_the_directory(tmp_path):
    """A 0600 log whose directory its group may write is refused; a group
    member who replaces log.json with one that says perm=0o660 must not
    turn that refusal off: the log's perm is taken from a log.json of the
    directory's owner only."""
    import json
    nobody = pwd.getpwnam("nobody")
    path = tmp_path / "log"
    Log(path=path, segment_bytes=SEG).close()
    os.chmod(path, 0o770)
    with pytest.raises(PermissionError, match="its group"):
        Log.open(str(path))
    meta = json.loads((path / "log.json").read_text())
    meta["perm"] = 0o660
    planted = path / "planted"
    planted.write_text(json.dumps(meta))
    os.chown(planted, nobody.pw_uid, nobody.pw_gid)
    os.rename(planted, path / "log.json")
    with pytest.raises(PermissionError, match="log.json"):
        Log.open(str(path))


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_files_are_0600_whatever_the_umask(tmp_path, umask):
    path = tmp_path / "log"
    old = os.umask(umask)
    try:
        lg = Log(path=path, partitions=2, segment_bytes=SEG)
        for i in range(50):
            lg.append(os.urandom(500), key=b"%d" % i)  # rolls
        lg.close()
        lg = Log.open(str(path))  # alone: recovery remakes the control file
        lg.close()
    finally:
        os.umask(old)
    modes = _all_modes(path)
    assert len(modes) > 10
    for name, mode in modes.items():
        isdir = name == "." or name.startswith("partition-") and "/" not in name
        assert mode == (0o700 if isdir else 0o600), (name, oct(mode))


def test_perm_in_directory_mode(tmp_path):
    path = tmp_path / "log"
    old = os.umask(0o077)  # perm, not the umask, decides
    try:
        lg = Log(path=path, segment_bytes=SEG, perm=0o640)
        for i in range(50):
            lg.append(os.urandom(500))
        lg.close()
    finally:
        os.umask(old)
    for name, mode in _all_modes(path).items():
        isdir = name == "." or name == "partition-0"
        assert mode == (0o750 if isdir else 0o640), (name, oct(mode))
    lg = Log.open(str(path))  # the log's perm is in log.json
    assert len(lg.read(0, 0, max_records=100)) == 50
    lg.close()
    assert _mode(path / "control") == 0o640
    with pytest.raises(ValueError, match="perm"):
        Log(path=path, perm=0o600)
    # A group-writable perm makes a group-writable directory, which is fine
    # for that log (and only for it).
    shared = tmp_path / "shared"
    Log(path=shared, perm=0o660).close()
    assert _mode(shared) == 0o770
    Log.open(str(shared)).close()


@pytest.mark.parametrize("perm", [0o666, 0o606, 0o602])
def test_perm_letting_others_write_is_refused_before_anything_is_made(tmp_path, perm):
    # A directory others may write is never a log's (they could plant
    # files in it): such a perm is a ValueError up front, not a refusal
    # after a world-writable directory was made and left behind.
    path = tmp_path / "sub" / "log"
    with pytest.raises(ValueError, match="others"):
        Log(path=path, perm=perm)
    assert not os.path.lexists(path)


# ---- external damage ------------------------------------------------------

def _filled(path, n=300, size=160):
    lg = Log(path=path, segment_bytes=SEG)
    vals = [struct.pack("<Q", i) * (size // 8) for i in range(n)]
    for v in vals:
        lg.append(v)
    return lg, vals


@pytest.mark.parametrize("reopen", [False, True])
def test_a_missing_closed_segment_is_an_error_not_a_skip(tmp_path, reopen):
    path = tmp_path / "log"
    lg, vals = _filled(path)
    files = segment_files(path)
    bases = [int(f[:20]) for f in files]
    gone, nxt = bases[3], bases[4]
    for ext in ("log", "index"):
        os.unlink(path / "partition-0" / f"{gone:020d}.{ext}")
    if reopen:
        lg.close()
        lg = Log.open(str(path))
        assert {"partition": 0, "missing_offsets": [gone, nxt],
                "reason": "records gone between segments"} in lg.recovery
    # Up to the gap, then an error that names it: never a silent skip.
    assert [r.value for r in lg.read(0, 0, max_records=10_000)] == vals[:gone]
    for at in (gone, gone + 1, nxt - 1):
        with pytest.raises(CorruptRecord, match=f"offsets {gone}..{nxt - 1} of partition 0 "
                                                "are missing") as ei:
            lg.read(0, at)
        assert ei.value.missing == (gone, nxt) and ei.value.offset == at
    assert [r.value for r in lg.read(0, nxt, max_records=10_000)] == vals[nxt:]
    lg.close()


@pytest.mark.parametrize("reopen", [False, True])
def test_a_closed_segment_emptied_is_an_error_not_a_skip(tmp_path, reopen):
    # The data file is there but 0 bytes long (truncated by hand, a full
    # disk restore...): as a missing one, readers get the records up to
    # it, then a CorruptRecord naming the gap, never "is empty" for ever.
    path = tmp_path / "log"
    lg, vals = _filled(path)
    bases = [int(f[:20]) for f in segment_files(path)]
    gone, nxt = bases[3], bases[4]
    os.truncate(path / "partition-0" / f"{gone:020d}.log", 0)
    if reopen:
        lg.close()
        lg = Log.open(str(path))
        assert {"partition": 0, "missing_offsets": [gone, nxt],
                "reason": "records gone between segments"} in lg.recovery
    assert [r.value for r in lg.read(0, 0, max_records=10_000)] == vals[:gone]
    for at in (gone, nxt - 1):
        with pytest.raises(CorruptRecord, match=f"offsets {gone}..{nxt - 1} of partition 0 "
                                                "are missing") as ei:
            lg.read(0, at)
        assert ei.value.missing == (gone, nxt)
    assert [r.value for r in lg.read(0, nxt, max_records=10_000)] == vals[nxt:]
    lg.close()


def test_a_missing_first_segment_is_an_error(tmp_path):
    path = tmp_path / "log"
    lg, vals = _filled(path)
    bases = [int(f[:20]) for f in segment_files(path)]
    for ext in ("log", "index"):
        os.unlink(path / "partition-0" / f"{0:020d}.{ext}")
    with pytest.raises(CorruptRecord, match=f"offsets 0..{bases[1] - 1} of partition 0 are "
                                            "missing"):
        lg.read(0, 0)
    lg.close()
    lg = Log.open(str(path))
    assert {"partition": 0, "missing_offsets": [0, bases[1]],
            "reason": "segment files gone"} in lg.recovery
    assert lg.start_offset(0) == bases[1]
    lg.close()


def test_an_active_segment_truncated_to_zero_is_reported(tmp_path):
    path = tmp_path / "log"
    lg = Log(path=path, segment_bytes=1 << 20)
    for i in range(50):
        lg.append(b"%04d" % i * 25)
    lg.close()
    seg = path / "partition-0" / segment_files(path)[0]
    os.truncate(seg, 0)
    lg = Log.open(str(path))
    (rep,) = lg.recovery
    assert rep["partition"] == 0 and rep["segment"] == 0
    assert rep["file_bytes"] == 0 and rep["expected_file_bytes"] == 1 << 20
    assert rep["lost_offsets"] == [0, 50] and rep["lost_bytes"] == 50 * 144
    assert lg.end_offset(0) == 0 and lg.append(b"again") == (0, 0)
    lg.close()


def _record_positions(seg):
    data = seg.read_bytes()
    pos, out = 0, []
    while pos + 4 <= len(data):
        (size,) = struct.unpack_from("<I", data, pos)
        if size == 0:
            break
        out.append(pos)
        pos += -(-size // 8) * 8
    return out, pos


def test_a_flipped_byte_in_the_active_segment_keeps_what_follows_aside(tmp_path):
    """Recovery stops at a damaged record in the middle of the active
    segment; the valid records after it are not destroyed silently: the
    bytes from the damage on are kept in <segment>.damaged-1 (0600) and
    the report says where, what was dropped and that valid records
    followed."""
    path = tmp_path / "log"
    lg = Log(path=path, segment_bytes=1 << 20)
    for i in range(100):
        lg.append(b"%04d" % i * 25)
    lg.close()
    seg = path / "partition-0" / segment_files(path)[0]
    positions, end = _record_positions(seg)
    assert len(positions) == 100
    bad = positions[40]
    original = seg.read_bytes()[bad:end]
    with open(seg, "r+b") as f:
        f.seek(bad + 60)
        f.write(bytes([original[60] ^ 0x20]))
    lg = Log.open(str(path))
    (rep,) = lg.recovery
    kept = str(seg) + ".damaged-1"
    assert rep["partition"] == 0 and rep["segment"] == 0 and rep["torn_records"] == 1
    n = len(original.rstrip(b"\0"))  # up to the last non-zero byte
    assert rep["truncated_bytes"] == n and n > end - bad - 8
    assert rep["kept_aside"] == kept and rep["valid_record_at"] == positions[41]
    with open(kept, "rb") as f:
        damaged = f.read()
    assert len(damaged) == n and damaged[60] == original[60] ^ 0x20
    assert damaged[:60] == original[:60] and damaged[61:] == original[61:n]
    assert _mode(kept) == 0o600
    assert lg.end_offset(0) == 40
    assert [r.value for r in lg.read(0, 0, max_records=100)] == [b"%04d" % i * 25
                                                                  for i in range(40)]
    lg.close()
    lg = Log.open(str(path))  # once is enough: nothing more to keep
    assert lg.recovery == [] and os.listdir(path / "partition-0").count(
        os.path.basename(kept)) == 1
    lg.close()


FULL_DISK_REOPEN_CHILD = """
import errno, os, sys
from pyqueue import Log
path = sys.argv[1] + "/log"
lg = Log(path=path, segment_bytes=1 << 20)
n = 0
try:
    while True:
        lg.append(os.urandom(2000))
        n += 1
except OSError as e:
    assert e.errno == errno.ENOSPC, e
lg.close()
# Full: a new opener (alone, it recovers and remakes the control file)
# and a second one beside it can still open and read the log.
lg = Log.open(path)
assert lg.end_offset(0) == n, (lg.end_offset(0), n)
other = Log.open(path)
assert [r.offset for r in other.read(0, 0, max_records=10 * n)] == list(range(n))
other.close()
assert [r.offset for r in lg.read(0, n - 5, max_records=10)] == list(range(n - 5, n))
lg.close()
print("OK", n)
"""


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare --mount` (root / CAP_SYS_ADMIN)")
def test_a_log_on_a_full_disk_can_be_opened_and_read(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = 'mount -t tmpfs -o size=3m tmpfs "$2" && exec "$0" -c "$1" "$2"'
    r = subprocess.run(["unshare", "--mount", "sh", "-c", script, sys.executable,
                        FULL_DISK_REOPEN_CHILD, str(mnt)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert r.stdout.startswith("OK")


def test_a_damaged_index_header_only_costs_its_hints(tmp_path):
    """A closed segment's index header that does not validate (damaged, or
    seen half-written) is not an error for readers: they walk the records
    (each checked against its CRC) instead of raising CorruptRecord."""
    path = tmp_path / "log"
    lg, vals = _filled(path)
    bases = [int(f[:20]) for f in segment_files(path)]
    index = path / "partition-0" / f"{bases[2]:020d}.index"
    with open(index, "r+b") as f:
        f.write(b"\xff" * 16)  # magic and base offset
    other = Log.open(str(path))  # not alone: no recovery rewrites it
    for lg_ in (lg, other):
        assert [r.value for r in lg_.read(0, bases[2], max_records=10_000)] == vals[bases[2]:]
        assert lg_.read(0, bases[3] - 1)[0].value == vals[bases[3] - 1]
    other.close()
    lg.close()


def test_a_closed_segment_cut_short_is_reported_and_read_up_to_the_cut(tmp_path):
    path = tmp_path / "log"
    lg, vals = _filled(path)
    lg.close()
    bases = [int(f[:20]) for f in segment_files(path)]
    seg = path / "partition-0" / f"{bases[2]:020d}.log"
    h = _logdir.read_index_header(str(path), 0, bases[2])
    os.truncate(seg, h["end_pos"] // 2 + 3)  # inside a record
    lg = Log.open(str(path))
    (rep,) = [r for r in lg.recovery if r.get("segment") == bases[2]]
    assert rep["sealed_bytes"] == h["end_pos"] and rep["file_bytes"] == h["end_pos"] // 2 + 3
    kept = bases[2] + h["records"] - rep["lost_records"]
    assert 0 < rep["lost_records"] < h["records"] and rep["torn_records"] == 1
    assert {"partition": 0, "missing_offsets": [kept, bases[3]],
            "reason": "records gone between segments"} in lg.recovery
    assert [r.value for r in lg.read(0, 0, max_records=10_000)] == vals[:kept]
    with pytest.raises(CorruptRecord, match=f"offsets {kept}..{bases[3] - 1} "):
        lg.read(0, kept)
    assert [r.value for r in lg.read(0, bases[3], max_records=10_000)] == vals[bases[3]:]
    lg.close()
