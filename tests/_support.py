"""Helpers shared by the tests and the conftest (no pytest fixtures here)."""

import importlib.util
import os
import re
import threading
import time
import uuid

SHM_DIR = "/dev/shm"

# pyqueue maps a queue name N to the POSIX shared-memory name "/pyqueue.N"
# (/dev/shm/pyqueue.N); unnamed queues are "anon-<pid>-<hex>" and out-of-band
# messages use "/pyqueue.N.oob-<pid>-<n>".  The leak check also watches "pq*"
# (the prefix of the names the tests hand out) in case that mapping changes.
SHM_PREFIX = "pyqueue."
SEGMENT_PREFIXES = ("pyqueue", "pq", "sem.pyqueue", "sem.pq")
# pids embedded in segment names: unnamed queues, out-of-band messages and
# the names handed out by unique_name() below.
_PID_RE = re.compile(r"(?:anon|oob|pqtest-[a-z]+)-(\d+)-")


def pyqueue_available():
    """True once the real package exists (not the bare source directory,
    which imports as an empty namespace package)."""
    spec = importlib.util.find_spec("pyqueue")
    return spec is not None and spec.origin not in (None, "namespace")


def list_pyqueue_segments():
    try:
        entries = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return set()
    return {e for e in entries if e.startswith(SEGMENT_PREFIXES)}


def _parent_pid(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _is_self_or_descendant(pid):
    me = os.getpid()
    for _ in range(64):
        if pid == me:
            return True
        if pid is None or pid <= 1:
            return False
        pid = _parent_pid(pid)
    return False


def segment_belongs_to_this_run(entry, started):
    """Filter for the leak check, which must never blame (or remove) the
    segments of other programs using pyqueue at the same time (benchmarks,
    another test run).  A segment is taken as ours when the first pid in its
    name is this process, a live descendant of it, or a process that is gone
    (a child of ours that has exited -- or someone else's leak, which is a
    leak all the same).  Names without a pid are not ours: every name this
    suite creates, and every unnamed/out-of-band name pyqueue makes, has one."""
    pids = _PID_RE.findall(entry)
    if not pids:
        return False
    pid = int(pids[0])
    if not os.path.exists("/proc/%d" % pid):
        return True
    return _is_self_or_descendant(pid)


def unique_name(tag="t"):
    return "pqtest-%s-%d-%s" % (tag, os.getpid(), uuid.uuid4().hex[:12])


def posix_name(queue_name):
    """The POSIX shared-memory name of the queue called ``queue_name``."""
    return "/" + SHM_PREFIX + queue_name


def shm_file(queue_name):
    """The /dev/shm path of the queue called ``queue_name``."""
    return os.path.join(SHM_DIR, SHM_PREFIX + queue_name)


def segment_exists(queue_name):
    return os.path.exists(shm_file(queue_name))


def remove_segment_file(entry):
    """Remove /dev/shm/<entry> (an entry name as listed in /dev/shm)."""
    try:
        os.unlink(os.path.join(SHM_DIR, entry))
    except FileNotFoundError:
        pass


def queue_segments(queue_name):
    """/dev/shm entries of one queue: its own and its out-of-band ones."""
    base = SHM_PREFIX + queue_name
    return {
        entry
        for entry in list_pyqueue_segments()
        if entry == base or entry.startswith(base + ".oob-")
    }


def oob_segments(queue_name):
    return queue_segments(queue_name) - {SHM_PREFIX + queue_name}


def remove_queue_segments(queue_name):
    """Remove a queue's segment and its out-of-band leftovers, if any."""
    for entry in queue_segments(queue_name):
        remove_segment_file(entry)


def wait_until(predicate, timeout=10.0, interval=0.002):
    """Poll ``predicate`` until it is true or ``timeout`` passes (a deadline,
    not a settle-sleep).  Returns the last value of the predicate."""
    deadline = time.monotonic() + timeout
    waiter = threading.Event()
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        waiter.wait(interval)


def payload(producer, seq, size):
    """Deterministic payload for message (producer, seq)."""
    return bytes([(producer * 31 + seq) % 251]) * size


def drain(q):
    """Everything a queue holds now (get_nowait until Empty)."""
    import queue as _queue
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except _queue.Empty:
            return out


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def assert_appenders_in_order(recs, tags, n):
    """Log records of appenders that each appended (tag, 0), ..., (tag, n-1)
    to one partition: dense offsets from 0, and every tag's in order."""
    assert [r.offset for r in recs] == list(range(len(tags) * n))
    for tag in tags:
        assert [i for t, i in (r.value for r in recs) if t == tag] == list(range(n))
