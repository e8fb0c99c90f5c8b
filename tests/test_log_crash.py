"""Directory-mode logs and real SIGKILLs: an appender killed inside a
record (fault point mid_copy, holding the partition's lock) costs at most
that record, whether the other users go on (the next appender repairs) or
everyone is gone (the next opener recovers and reports the truncation);
and in a loop of appenders killed at random instants with fsync="always",
every append that returned is still there after recovery."""
import os
import random
import signal
import struct
import time

import pytest

from pyqueue import Log
from pyqueue import _logdir
from tests import _log_workers as w
from tests.test_crash import kill_stopped, needs_faults, start_stopped

SEG = 16384


def _scan_active(path):
    bases = _logdir.list_bases(str(path), 0)
    m = _logdir.map_segment(str(path), 0, bases[-1], False)
    try:
        cursor, torn = m.scan(m.data_size, False)
        return cursor, torn, m.dirty_bytes(cursor[0], m.data_size)
    finally:
        m.close()


@needs_faults
@pytest.mark.timeout(60)
def test_appender_killed_inside_a_record_others_go_on(ctx, procs, tmp_path):
    path = tmp_path / "log"
    lg = Log(path=path, segment_bytes=1 << 20)
    lg.append_many([b"before"] * 3)
    victim = os.urandom(5000)
    p = start_stopped(procs, ctx, w.armed_dir_append, str(path), "mid_copy", [victim, b"never"])
    kill_stopped(p)
    # The dead appender held the partition's lock: the next append gets
    # it, zeroes the half record and goes on at the same offset.
    assert lg.append(b"after") == (0, 3)
    assert [r.value for r in lg.read(0, 0)] == [b"before"] * 3 + [b"after"]
    cursor, torn, dirty = _scan_active(path)
    assert cursor[1] == 4 and not torn and dirty == 0
    lg.close()
    lg = Log.open(str(path))
    assert lg.recovery == [] and lg.end_offset(0) == 4
    lg.close()


@needs_faults
@pytest.mark.timeout(60)
def test_appender_killed_inside_a_record_recovered_by_next_opener(ctx, procs, tmp_path):
    path = tmp_path / "log"
    Log(path=path, segment_bytes=1 << 20).close()
    lg = Log.open(str(path))
    lg.append_many([b"before"] * 3)
    lg.close()
    p = start_stopped(procs, ctx, w.armed_dir_append, str(path), "mid_copy", [b"v" * 5000])
    kill_stopped(p)
    cursor, torn, dirty = _scan_active(path)
    assert cursor[1] == 3 and dirty > 0  # half a record lies past the end
    lg = Log.open(str(path))  # alone: recovers
    assert len(lg.recovery) == 1
    rep = lg.recovery[0]
    assert rep["partition"] == 0 and rep["truncated_bytes"] == dirty
    assert lg.end_offset(0) == 3
    assert lg.append(b"after") == (0, 3)
    assert [r.value for r in lg.read(0, 0)] == [b"before"] * 3 + [b"after"]
    lg.close()


def _drain_acks(conn, acked):
    while conn.poll():
        try:
            acked.append(struct.unpack("<Q", conn.recv_bytes())[0])
        except EOFError:
            break


@pytest.mark.timeout(240)
def test_killed_appenders_lose_no_acknowledged_record(ctx, procs, tmp_path):
    """12 rounds of: an appender with fsync="always" (values of 0.3-3 KiB in
    16 KiB segments, so it rolls often) is SIGKILLed at a random instant;
    the next opener recovers. Each round: the log is a dense prefix of what
    was appended, with every acknowledged append in it, intact."""
    path = str(tmp_path / "log")
    Log(path=path, segment_bytes=SEG, fsync="always").close()
    rng = random.Random(0xC0FFEE)
    appended = 0  # records the log holds (all of them checked each round)
    reports = 0
    for _rnd in range(12):
        size = rng.choice([300, 1200, 3000])
        recv, send = ctx.Pipe(duplex=False)
        p = procs.start(ctx, w.dir_append_acked, path, send, appended, 100_000, size)
        send.close()
        acked = []
        kill_after = rng.randint(5, 150)
        deadline = time.monotonic() + 60
        while len(acked) < kill_after and time.monotonic() < deadline and p.is_alive():
            if recv.poll(0.5):
                _drain_acks(recv, acked)
        os.kill(p.pid, signal.SIGKILL)
        p.join(30)
        _drain_acks(recv, acked)
        recv.close()
        assert len(acked) >= kill_after, "the appender made no progress"
        lg = Log.open(path)
        reports += len(lg.recovery)
        end = lg.end_offset(0)
        assert acked == list(range(appended, appended + len(acked)))
        assert end >= appended + len(acked)  # nothing acknowledged is lost
        recs = lg.read(0, 0, max_records=10 * end + 10)
        assert [r.offset for r in recs] == list(range(end))
        for r in recs:
            (i,) = struct.unpack_from("<Q", r.value)
            assert i == r.offset
        assert all(r.value == w.dir_value(r.offset, len(r.value)) for r in recs[appended:])
        appended = end
        lg.close()
    print(f"{appended} records in 12 rounds, {reports} torn tails truncated")
