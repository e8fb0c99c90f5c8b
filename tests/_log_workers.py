"""Child-process targets of tests/test_log.py (importable under spawn)."""


def appender(log, tag, n, partition_key):
    for i in range(n):
        log.append((tag, i), key=partition_key)


def blocking_reader(log, ready, out):
    ready.put(True)
    recs = log.read(0, 0, max_records=10, timeout=20)
    out.put([(r.offset, r.value) for r in recs])


# -- directory mode ----------------------------------------------------------

import os
import struct

from tests._crash_workers import arm


def dir_value(i, size):
    """The value of record i in the crash tests: i, then filler."""
    return struct.pack("<Q", i) + bytes([i % 251]) * max(0, size - 8)


def dir_append_acked(path, conn, start, count, size):
    """Append records start.. to partition 0 of the log at path; after each
    append returns, send its offset down conn (a pipe: what was sent before
    a SIGKILL is in the kernel, not in a feeder thread)."""
    from pyqueue import Log
    lg = Log.open(path)
    for i in range(start, start + count):
        _, off = lg.append(dir_value(i, size), key=None)
        conn.send_bytes(struct.pack("<Q", off))
    conn.close()


def armed_dir_append(path, spec, values):
    """Append each value; stops at the fault point named by spec."""
    from pyqueue import Log
    arm(spec)
    lg = Log.open(path)
    for v in values:
        lg.append(v)


def dir_append_many(path, tag, n, key):
    from pyqueue import Log
    lg = Log.open(path)
    for i in range(0, n, 7):
        lg.append_many([(tag, j) for j in range(i, min(n, i + 7))], key=key)


# -- consumer groups ---------------------------------------------------------

def member_until_done(log, group, out, n_total, max_records):
    """Consume with commits after each batch until the group's lag is 0;
    report (pid, partition, offset) of every record, then the final
    assignment."""
    import time
    from pyqueue import CommitFailed
    c = log.consumer(group)
    pid = os.getpid()
    deadline = time.monotonic() + 60
    seen = []
    while time.monotonic() < deadline:
        recs = c.poll(max_records=max_records, timeout=0.05)
        seen.extend((r.partition, r.offset) for r in recs)
        try:
            c.commit()
        except CommitFailed:  # a rebalance moved partitions: go on
            pass
        offs = log.group_offsets(group)
        if sum(v["lag"] for v in offs.values()) == 0 and all(
                v["committed"] is not None for v in offs.values()):
            break
    out.put((pid, seen, c.assignment()))
    c.close()


def member_then_hang(log, group, out, first):
    """Poll `first` records and commit them, poll more without committing,
    report both, then block in poll (to be SIGKILLed there)."""
    c = log.consumer(group)

    def take(n):
        # In polls of n / partitions records: each poll starts at the next
        # partition, so every partition gives its share.
        got = []
        while len(got) < n:
            got += c.poll(max_records=n // log.partitions, timeout=10)
        return [(r.partition, r.offset) for r in got]

    committed = take(first)
    c.commit()
    more = take(first)
    out.put((os.getpid(), committed, more, c.assignment()))
    c.seek_to_end()
    c.poll(timeout=60)  # killed in here


def dir_append_fast(path, n):
    from pyqueue import Log
    lg = Log.open(path)
    for i in range(n):
        lg.append(b"r")


# -- directory-mode soak (tests/test_log_crash.py) ---------------------------

import zlib


def soak_value(writer, seq, size):
    """A self-checking value: writer, seq, CRC32 of the filler, filler."""
    body = bytes([(writer * 31 + seq) % 251]) * size
    return struct.pack("<III", writer, seq, zlib.crc32(body)) + body


def soak_check(value):
    """(writer, seq) of a soak value; ValueError when it is not whole."""
    writer, seq, crc = struct.unpack_from("<III", value)
    if zlib.crc32(value[12:]) != crc:
        raise ValueError(f"value of writer {writer} seq {seq} is damaged")
    return writer, seq


def soak_appender(path, writer, start_seq, sizes):
    """Append soak values for ever (until SIGKILLed), sizes cycling, one
    or a few at a time."""
    from pyqueue import Log
    lg = Log.open(path)
    seq = start_seq
    while True:
        n = 1 + seq % 3
        vals = [soak_value(writer, seq + k, sizes[(seq + k) % len(sizes)]) for k in range(n)]
        if n == 1:
            lg.append(vals[0])
        else:
            lg.append_many(vals)
        seq += n


def soak_reader(path, stop, out):
    """Follow partition 0 from offset 0 until stop is set: offsets dense,
    every value whole, each writer's seqs increasing. Puts ("ok", records)
    or ("error", repr) on out."""
    from pyqueue import Log
    try:
        lg = Log.open(path)
        at, last = 0, {}

        def follow(timeout):
            nonlocal at
            recs = lg.read(0, at, max_records=500, timeout=timeout)
            for r in recs:
                if r.offset != at:
                    raise AssertionError(f"offset {r.offset} where {at} was expected")
                writer, seq = soak_check(r.value)
                if seq <= last.get(writer, -1):
                    raise AssertionError(f"writer {writer}: seq {seq} after {last[writer]}")
                last[writer] = seq
                at += 1
            return recs

        while not stop.is_set():
            follow(0.05)
        # The writers are gone: read to the end, so that a reader that
        # started late (spawn on a loaded machine) still checks everything.
        while follow(0):
            pass
        lg.close()
        out.put(("ok", at))
    except BaseException as e:  # reported: the test fails on it
        out.put(("error", repr(e)))


def dir_append_acked_armed(path, conn, start, count, size, spec):
    """dir_append_acked, stopping at the fault point named by spec."""
    arm(spec)
    dir_append_acked(path, conn, start, count, size)


# -- poison records ------------------------------------------------------------

def refuse_to_load():
    raise ValueError("this record refuses to load")


class Unloadable:
    """Appends fine; unpickling it raises ValueError (a poison record)."""

    def __reduce__(self):
        return (refuse_to_load, ())


def json_member(log, group, out, n):
    """A consumer of a JSON log's group: poll until n records, commit, report
    their values, then append one {"echo": value} record per value."""
    import time
    c = log.consumer(group)
    got = []
    deadline = time.monotonic() + 60
    while len(got) < n and time.monotonic() < deadline:
        got.extend(r.value for r in c.poll(max_records=n, timeout=0.2))
    c.commit()
    c.close()
    out.put(got)
    log.append_many([{"echo": v} for v in got])
