"""Child-process targets of tests/test_log_oob.py (module level, so that
processes started with ``spawn`` can import them)."""
import numpy as np


def _backing(a):
    base = a
    while getattr(base, "base", None) is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return type(base).__name__


def _report(values):
    """(sum, equal to the expected arange, writable, backing) of the array,
    and the bytes value's length and first and last bytes."""
    a, blob = values
    expected = np.arange(a.size, dtype=np.float64)
    return (float(a.sum()), bool(np.array_equal(a, expected)), bool(a.flags.writeable),
            _backing(a), len(blob), blob[:1], blob[-1:])


def read_two(log, out):
    """Read the array and the bytes value from offset 0 of partition 0."""
    recs = log.read(0, 0, max_records=2, timeout=60)
    out.put(_report([r.value for r in recs]))


def group_read_two(log, out):
    """As a member of group "g": poll until both records came, commit."""
    c = log.consumer("g")
    got = []
    for _ in range(60):   # a deadline of 60 s in all
        got += c.poll(max_records=2 - len(got), timeout=1.0)
        if len(got) == 2:
            break
    c.commit()
    out.put(_report([r.value for r in got]))
    c.close()


def append_and_exit(log, n):
    log.append(np.arange(n, dtype=np.float64))


def armed_append(log, spec, n):
    """Append an n-element array, stopping at the fault point spec (SIGSTOP:
    the test kills it there)."""
    from tests._crash_workers import arm
    arm(spec)
    log.append(np.arange(n, dtype=np.float64))


def make_orphan_and_exit(log):
    """What a producer SIGKILLed between writing a segment and appending its
    record leaves: a segment no record names."""
    from pyqueue import _oob
    _oob.put(log, [b"orphan"], 6)


def armed_append_small(log, spec, n):
    """Append n 1 KiB records, stopping at the fault point spec."""
    from tests._crash_workers import arm
    arm(spec)
    for i in range(n):
        log.append(i.to_bytes(4, "little") * 256)
