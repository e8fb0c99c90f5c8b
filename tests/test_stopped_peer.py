"""A live peer stopped inside a lock (SIGSTOP, Ctrl-Z, a debugger, a frozen
cgroup) of every kind: Queue, Topic, memory and directory Log, WorkQueue,
consumer group (issue 9, item 9; docs/guarantees.md, "Stopped peers").

The peer stops itself at the ``in_lock`` fault point (a fault-injection
build). Then, in another process:
- a call with a timeout returns about when its timeout says (Full, Empty,
  or LockTimeout for calls that do not block by their API, after the lock
  wait set with pyqueue._locks.set_lock_wait);
- another thread of that process keeps running meanwhile (the GIL is
  released while it waits);
- SIGINT interrupts a call that waits without a timeout (KeyboardInterrupt);
- once the peer goes on (SIGCONT), everything continues and nothing is lost.
A damaged lock word is an error, never a hang; `pyqueue stats` / `ls` never
wait on a lock.
"""

import json
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
import time

import pytest

import pyqueue
from pyqueue import LockTimeout, Log, SegmentMismatch, Topic, WorkQueue, _locks
from tests import _lock_workers as W
from tests._support import shm_file, unique_name, wait_until
from tests.test_crash import kill_stopped, needs_faults, proc_state

pytestmark = [needs_faults, pytest.mark.timeout(120)]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 1.0  # the probing call's timeout (or lock wait)
MARGIN = 3.0  # generous on a loaded machine: the bound is the timeout + one slice
WAIT = 30.0


@pytest.fixture
def lock_wait():
    """Calls that do not block by their API wait TIMEOUT for a lock."""
    _locks.set_lock_wait(TIMEOUT)
    yield TIMEOUT
    _locks.set_lock_wait(None)


def start_holder(procs, ctx, target, *args):
    p = procs.start(ctx, target, *args)
    wait_until(lambda: p.exitcode is not None or proc_state(p.pid) == "T", WAIT)
    assert proc_state(p.pid) == "T", f"holder did not stop in the lock (exit {p.exitcode})"
    return p


def resume(p):
    os.kill(p.pid, signal.SIGCONT)
    p.join(WAIT)
    assert p.exitcode == 0


class Ticker:
    """A thread that runs Python code in a loop and records the longest
    time it could not run (it needs the GIL for every iteration)."""

    def __enter__(self):
        self.gap = 0.0
        self.ticks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        wait_until(lambda: self.ticks > 0, WAIT)
        self.gap = 0.0
        return self

    def _run(self):
        prev = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            self.gap = max(self.gap, now - prev)
            self.ticks += 1
            prev = now

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(WAIT)


def probe(call, exc, timeout=TIMEOUT):
    """call() raises exc after about `timeout` s, while another thread of
    this process keeps running."""
    with Ticker() as t:
        t0 = time.monotonic()
        with pytest.raises(exc) as info:
            call()
        took = time.monotonic() - t0
    assert timeout - 0.05 <= took < timeout + MARGIN, took
    # Had the wait held the GIL, the ticker would have stood still for it.
    assert t.gap < timeout / 2, f"another thread was frozen for {t.gap:.2f} s"
    return info.value


def interrupted(script, env_extra=None):
    """Run `script` in a new interpreter: it prints "ready" and then makes a
    call that waits on the stopped peer's lock. SIGINT it once its main
    thread waits in the kernel; it must print "interrupted" (it caught
    KeyboardInterrupt) and exit 3."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYQUEUE_FAULT", None)
    env.update(env_extra or {})
    code = ("import sys, pyqueue\n" + script + "\nprint('ready', flush=True)\n"
            "try:\n    CALL()\nexcept KeyboardInterrupt:\n"
            "    print('interrupted', flush=True)\n    sys.exit(3)\n"
            "print('returned', flush=True)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"

        def waiting():
            # The main thread blocked in a system call (a futex wait).
            try:
                with open(f"/proc/{p.pid}/syscall") as f:
                    return f.read().split()[0] not in ("running", "-1")
            except (OSError, IndexError):
                return False

        wait_until(waiting, WAIT)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=WAIT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 3, (p.returncode, err)
    assert out.strip() == "interrupted", (out, err)


# --------------------------------------------------------------------------
# Queue
# --------------------------------------------------------------------------

def test_queue_put_with_stopped_producer_in_lock(ctx, procs, make_queue):
    name = unique_name("lq")
    q = make_queue(name=name)
    p = start_holder(procs, ctx, W.hold_put, q, b"held")
    try:
        probe(lambda: q.put(b"x", timeout=TIMEOUT), queue.Full)
        # A non-blocking put gives its answer at once (a short bounded try).
        t0 = time.monotonic()
        with pytest.raises(queue.Full):
            q.put_nowait(b"y")
        assert time.monotonic() - t0 < MARGIN
        interrupted(f"q = pyqueue.Queue.open({name!r})\nCALL = lambda: q.put(b'z')")
    except BaseException:
        kill_stopped(p)
        raise
    resume(p)
    q.put(b"after", timeout=WAIT)
    assert [q.get(timeout=WAIT) for _ in range(2)] == [b"held", b"after"]
    with pytest.raises(queue.Empty):
        q.get_nowait()


# --------------------------------------------------------------------------
# Topic
# --------------------------------------------------------------------------

def test_topic_publish_with_stopped_publisher_in_lock(ctx, procs):
    name = unique_name("lt")
    t = Topic(name=name)
    try:
        sub = t.subscribe()
        p = start_holder(procs, ctx, W.hold_put, t, b"held")
        try:
            probe(lambda: t.publish(b"x", timeout=TIMEOUT), queue.Full)
            interrupted(f"t = pyqueue.Topic.open({name!r})\nCALL = lambda: t.publish(b'z')")
        except BaseException:
            kill_stopped(p)
            raise
        resume(p)
        t.publish(b"after", timeout=WAIT)
        assert [sub.get(timeout=WAIT) for _ in range(2)] == [b"held", b"after"]
        sub.close()
    finally:
        t.unlink()
        t.close()


def test_topic_close_subscription_with_publisher_in_lock(ctx, procs, lock_wait):
    """Closing a subscription while a publisher holds the topic's lock
    waits for it: the slot is given back, never dropped on the floor (a
    slot left held by a live process holds back a lossless topic). A
    close that cannot get the lock in the lock wait says so and leaves the
    subscription open."""
    t = Topic(name=unique_name("lt"))
    try:
        sub = t.subscribe()
        other = t.subscribe()
        p = start_holder(procs, ctx, W.hold_put, t, b"held")
        try:
            probe(sub.close, LockTimeout)
            assert not sub.closed and t.stats()["subscribers"] == 2
            # A close that is waiting when the publisher goes on succeeds.
            _locks.set_lock_wait(WAIT)
            done = threading.Event()
            closer = threading.Thread(target=lambda: (other.close(), done.set()))
            closer.start()
            assert not done.wait(0.2)  # it waits for the lock
        except BaseException:
            kill_stopped(p)
            raise
        resume(p)
        closer.join(WAIT)
        assert done.is_set() and other.closed
        sub.close()
        assert sub.closed and t.stats()["subscribers"] == 0
    finally:
        t.unlink()
        t.close()


def test_lossy_topic_lapped_reader_with_publisher_in_lock(ctx, procs):
    """A reader lapped in a lossy topic takes the topic's lock to jump to
    the head (pq_topic_jump reads head and its message count as a pair). A
    publisher stopped in that lock makes the read wait for it, as long as
    the read's timeout allows (GIL released): queue.Empty at its timeout,
    never LockTimeout at once, nothing counted lost meanwhile; a read that
    is waiting when the publisher goes on jumps once and reads on."""
    small = 64 * 1024  # the smallest ring: a 15-byte payload takes 32 bytes
    fits = small // 32
    total = fits * 2
    t = Topic(name=unique_name("lt"), capacity_bytes=small, mode="lossy")
    try:
        sub = t.subscribe()
        for i in range(total):  # laps sub: its cursor is behind the head
            t.publish(b"%015d" % i, block=False)
        p = start_holder(procs, ctx, W.hold_put, t, b"%015d" % total)
        try:
            probe(lambda: sub.get(timeout=TIMEOUT), queue.Empty)
            with pytest.raises(queue.Empty):
                sub.get(block=False)
            assert sub.lost == 0
            timer = threading.Timer(0.2, os.kill, (p.pid, signal.SIGCONT))
            timer.start()
            try:
                first = sub.get(timeout=WAIT)
            finally:
                timer.join()
        except BaseException:
            kill_stopped(p)
            raise
        p.join(WAIT)
        assert p.exitcode == 0
        # The publisher's record dropped one more from the ring: the reader
        # jumped (once) to the oldest one left and reads on to the newest.
        assert first == b"%015d" % (total + 1 - fits)
        assert sub.lost == total + 1 - fits
        rest = sub.get_many(fits, timeout=WAIT)
        assert rest == [b"%015d" % i for i in range(total + 2 - fits, total + 1)]
        assert sub.lost == total + 1 - fits
        sub.close()
    finally:
        t.unlink()
        t.close()


# --------------------------------------------------------------------------
# Log, memory and directory mode
# --------------------------------------------------------------------------

@pytest.fixture(params=["memory", "directory"])
def one_partition_log(request, tmp_path):
    if request.param == "memory":
        where = unique_name("ll")
        log = Log(name=where, partitions=1)
    else:
        where = str(tmp_path / "log")
        log = Log(path=where, partitions=1)
    yield where, log
    if request.param == "memory":
        log.unlink()
    log.close()


def test_log_append_with_stopped_appender_in_lock(ctx, procs, one_partition_log, lock_wait):
    where, log = one_partition_log
    log.append(b"first")
    p = start_holder(procs, ctx, W.hold_append, where, b"held")
    try:
        e = probe(lambda: log.append(b"x"), LockTimeout)
        assert e.pid == p.pid and e.state.startswith("T"), (str(e), e.pid, e.state)
        assert str(p.pid) in str(e) and "stopped" in str(e)
        interrupted(f"log = pyqueue.Log.open({where!r})\nCALL = lambda: log.append(b'z')",
                    {"PYQUEUE_LOCK_WAIT": "600"})
    except BaseException:
        kill_stopped(p)
        raise
    resume(p)
    log.append(b"after")
    recs = log.read(0, 0, timeout=WAIT)
    assert [r.value for r in recs] == [b"first", b"held", b"after"]
    assert [r.offset for r in recs] == [0, 1, 2]


def _lap_value(i):
    """The value of the i-th record the tests below append (1000 bytes
    that name it, so a record overwritten by another reads back wrong)."""
    return (b"%06d" % i) * 166 + b"%04d" % (i % 10000)


def _assert_intact(log, expect, first=None):
    """Every record from the start (or from first: past a record still
    being written, where a read from the start stops) reads back as
    appended, offsets dense and in order (expect: offset -> value)."""
    start, end = log._bounds(0)
    first = start if first is None else first
    recs = []
    while len(recs) < end - first:
        got = log.read(0, first + len(recs), max_records=10_000, timeout=0)
        assert got, f"nothing readable at offset {first + len(recs)} (end {end})"
        recs += got
    assert [r.offset for r in recs] == list(range(first, end))
    for r in recs:
        assert r.value == expect[r.offset], f"offset {r.offset} is not what was appended"
    return start, end


def test_memory_log_retention_waits_for_a_stopped_appender(ctx, procs, lock_wait):
    """An appender stopped in the middle of its copy (its record CLAIMED,
    the lock let go) while others append more than a ring: retention does
    not pass its record (before the fix it did, the appender then wrote
    the rest of its value into the newer records and its commit over a
    newer header). The append that needs the space waits for the commit
    with the GIL released and gives up after the lock wait with a
    LockTimeout that names the stopped appender (Ctrl-C interrupts it);
    every committed record reads back intact; after SIGCONT the appender
    commits its record intact and the appends go on."""
    name = unique_name("ll")
    log = Log(name=name, partitions=1, retention_bytes=1 << 16)  # the smallest: ~60 records
    try:
        expect = {}
        for i in range(3):
            expect[log.append(_lap_value(i))[1]] = _lap_value(i)
        out = ctx.Queue()
        held = b"H" * 3000
        p = start_holder(procs, ctx, W.stopped_append, name, held, out)
        try:
            held_offset = 3
            i = 4
            with pytest.raises(LockTimeout):
                for i in range(4, 200):          # more than a ring
                    (_, off) = log.append(_lap_value(i))
                    assert off == i
                    expect[off] = _lap_value(i)
            assert i < 80, "the appends went on past a whole ring"
            assert log.start_offset(0) == held_offset   # stopped right before its record
            e = probe(lambda: log.append(_lap_value(i)), LockTimeout)
            assert e.pid == p.pid and e.state.startswith("T"), (str(e), e.pid, e.state)
            assert str(p.pid) in str(e) and "stopped" in str(e) and "offset 3" in str(e), str(e)
            assert "nothing was changed" in str(e)
            _assert_intact(log, expect, first=held_offset + 1)
            interrupted(f"log = pyqueue.Log.open({name!r})\n"
                        f"CALL = lambda: log.append(b'z' * 1000)",
                        {"PYQUEUE_LOCK_WAIT": "600"})
        except BaseException:
            kill_stopped(p)
            raise
        resume(p)
        assert out.get(timeout=WAIT) == ("ok", (0, held_offset))
        expect[held_offset] = held
        _assert_intact(log, expect)
        for k in range(i, i + 150):              # laps the ring again, past it
            (_, off) = log.append(_lap_value(k))
            expect[off] = _lap_value(k)
        start, end = _assert_intact(log, expect)
        assert start > held_offset and end == i + 150
    finally:
        log.unlink()
        log.close()


def test_memory_log_retention_passes_a_dead_appenders_record(ctx, procs):
    """The record of an appender SIGKILLed in the middle of its copy is
    passed by retention as before (no wait: nobody will commit it), and
    the records around it read back intact."""
    name = unique_name("ll")
    log = Log(name=name, partitions=1, retention_bytes=1 << 16)
    try:
        expect = {0: _lap_value(0)}
        log.append(_lap_value(0))
        p = start_holder(procs, ctx, W.stopped_append, name, b"D" * 3000, ctx.Queue())
        kill_stopped(p)
        t0 = time.monotonic()
        for i in range(2, 200):
            (_, off) = log.append(_lap_value(i))
            assert off == i
            expect[off] = _lap_value(i)
        assert time.monotonic() - t0 < TIMEOUT + MARGIN   # never waited out a lock wait
        start, end = _assert_intact(log, expect)
        assert start > 1 and end == 200
    finally:
        log.unlink()
        log.close()


# --------------------------------------------------------------------------
# Consumer group
# --------------------------------------------------------------------------

def test_memory_log_append_many_split_by_a_stopped_appender(ctx, procs):
    """A memory-mode append_many takes the lock once per claim (256
    records). When a later claim gives up on a stopped appender, the first
    ones are in the log: its LockTimeout says which (`appended`), never
    "nothing was changed, retry" (a retry of the whole call would append
    them twice); retrying the others as told leaves every value once."""
    name = unique_name("ll")
    log = Log(name=name, partitions=1)
    try:
        values = [b"%04d" % i for i in range(300)]  # two claims: 256 + 44
        out = ctx.Queue()
        # Stopped in its first claim's copy, the lock let go...
        c = start_holder(procs, ctx, W.append_many_split, name, values, TIMEOUT, out)
        # ...which another appender takes, and stops in.
        p = start_holder(procs, ctx, W.hold_append, name, b"held")
        try:
            os.kill(c.pid, signal.SIGCONT)
            answer = out.get(timeout=WAIT)
            c.join(WAIT)
        except BaseException:
            kill_stopped(p)
            raise
        resume(p)
        assert c.exitcode == 0
        kind, e = answer
        assert kind == "timeout" and isinstance(e, LockTimeout), answer
        msg, appended = str(e), e.appended
        assert "nothing was changed" not in msg and "the first 256 of the 300" in msg, msg
        assert appended == [(0, o) for o in range(256)] and e.pid == p.pid
        log.append_many(values[len(appended):])
        got = [r.value for r in log.read(0, 0, max_records=1000)]
        assert got == values[:256] + [b"held"] + values[256:]
    finally:
        log.unlink()
        log.close()


def test_group_with_stopped_member_in_group_lock(ctx, procs, lock_wait):
    name = unique_name("lg")
    log = Log(name=name, partitions=2)
    try:
        log.append(b"r")
        p = start_holder(procs, ctx, W.hold_group_leave, name, "g")
        try:
            probe(lambda: log.group_offsets("g"), LockTimeout)
            probe(lambda: log.consumer("g"), LockTimeout)
            interrupted(f"log = pyqueue.Log.open({name!r})\n"
                        "CALL = lambda: log.group_offsets('g')",
                        {"PYQUEUE_LOCK_WAIT": "600"})
        except BaseException:
            kill_stopped(p)
            raise
        resume(p)
        c = log.consumer("g")
        recs = c.poll(timeout=WAIT)
        assert [r.value for r in recs] == [b"r"]
        c.commit()
        offsets = log.group_offsets("g")
        assert sum(o["committed"] or 0 for o in offsets.values()) == 1
        c.close()
    finally:
        log.unlink()
        log.close()


def test_group_poll_waits_its_timeout_not_the_lock_wait(ctx, procs):
    """A member's poll(timeout=t) while another member is stopped inside
    the group lock returns [] after about t (its own deadline bounds its
    wait for the lock), not after the lock wait (30 s here), and reads
    on once the other member goes on."""
    name = unique_name("lg")
    log = Log(name=name, partitions=2)
    _locks.set_lock_wait(WAIT)
    try:
        mine = log.consumer("g", auto_commit=False)
        p = start_holder(procs, ctx, W.hold_group_leave, name, "g")
        try:
            with Ticker() as ticker:
                t0 = time.monotonic()
                assert mine.poll(timeout=TIMEOUT) == []
                took = time.monotonic() - t0
            assert TIMEOUT - 0.05 <= took < TIMEOUT + MARGIN, took
            assert ticker.gap < TIMEOUT / 2
            t0 = time.monotonic()
            assert mine.poll(timeout=0) == []  # a moment, not the lock wait
            assert time.monotonic() - t0 < MARGIN
        except BaseException:
            kill_stopped(p)
            raise
        resume(p)
        log.append(b"r")
        log.append(b"s")
        got = []
        deadline = time.monotonic() + WAIT
        while len(got) < 2 and time.monotonic() < deadline:
            got += [r.value for r in mine.poll(timeout=WAIT)]
        assert sorted(got) == [b"r", b"s"]
        mine.close()
    finally:
        _locks.set_lock_wait(None)
        log.unlink()
        log.close()


# --------------------------------------------------------------------------
# WorkQueue, and pyqueue stats / ls
# --------------------------------------------------------------------------

@pytest.fixture
def wq():
    q = WorkQueue(name=unique_name("lw"), visibility_timeout=60, max_deliveries=None)
    yield q
    q.unlink()
    q.close()


def cli(*args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYQUEUE_FAULT", None)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pyqueue", *args], capture_output=True,
                       text=True, env=env, timeout=WAIT)
    return r, time.monotonic() - t0


def test_workqueue_with_stopped_producer_in_lock(ctx, procs, wq, lock_wait):
    wq.put(b"first")
    d = wq.get(timeout=WAIT)
    p = start_holder(procs, ctx, W.hold_put, wq, b"held")
    try:
        probe(lambda: wq.put(b"x", timeout=TIMEOUT), queue.Full)
        probe(lambda: wq.get(timeout=TIMEOUT), queue.Empty)
        e = probe(d.ack, LockTimeout)
        assert e.pid == p.pid
        # Counters without the lock, at once, saying so.
        s = wq.stats()
        assert s["consistent"] is False
        r, took = cli("stats", "--json", wq.name)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["consistent"] is False
        r, took = cli("ls", "--json", wq.name)
        assert r.returncode == 0, r.stderr
        [row] = json.loads(r.stdout)
        assert row["depth_consistent"] is False
        interrupted(f"from pyqueue import WorkQueue\nq = WorkQueue.open({wq.name!r})\n"
                    "CALL = lambda: q.get()")
    except BaseException:
        kill_stopped(p)
        raise
    resume(p)
    d.ack()
    d2 = wq.get(timeout=WAIT)
    assert d2.value == b"held"
    d2.ack()
    s = wq.stats()
    assert s["consistent"] is True
    assert s["acked"] == 2 and wq.qsize() == 0


# --------------------------------------------------------------------------
# Damaged lock words
# --------------------------------------------------------------------------

def find_lock(path, tid):
    """Offset of the mutex that thread `tid` holds in file `path`: glibc's
    layout on x86-64/aarch64: __lock (the holder's tid), __count, __owner
    (the tid again), __nusers, __kind (144: robust, process-shared)."""
    with open(path, "rb") as f:
        data = f.read(1 << 20)  # the locks are in the first page (a queue's file is sparse beyond)
    found = []
    for off in range(0, len(data) - 20, 4):
        lock, _count, owner, _nusers, kind = struct.unpack_from("<iiiii", data, off)
        if lock & 0x3FFFFFFF == tid and owner == tid and kind == 144:
            found.append(off)
    assert len(found) == 1, found
    return found[0]


def poke(path, off, fmt, *values):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(struct.pack(fmt, *values))


@pytest.mark.parametrize("kind", ["queue", "workqueue"])
def test_damaged_lock_word_is_an_error_not_a_hang(ctx, procs, make_queue, kind):
    name = unique_name("ld")
    if kind == "queue":
        q = make_queue(name=name)
    else:
        q = WorkQueue(name=name, max_deliveries=None)
    try:
        p = start_holder(procs, ctx, W.hold_put, q, b"held")
        path = shm_file(name)
        off = find_lock(path, p.pid)
        kill_stopped(p)

        def put():
            q.put(b"x", timeout=WAIT)

        # Another kind of mutex (garbage in __kind).
        poke(path, off + 16, "<i", 0x5A5A)
        t0 = time.monotonic()
        with pytest.raises(SegmentMismatch, match="lock"):
            put()
        # A held word naming no thread, or one Linux never hands out.
        poke(path, off + 16, "<i", 144)
        for word in (0x80000000, 0x3FFFFFF0):
            poke(path, off, "<I", word)
            with pytest.raises(SegmentMismatch, match="lock"):
                put()
        # A thread that does not exist (the holder, dead, but its word not
        # marked by the kernel): found after one wait slice.
        poke(path, off, "<I", p.pid)
        with pytest.raises(SegmentMismatch, match="lock"):
            put()
        assert time.monotonic() - t0 < WAIT / 2
        if kind == "workqueue":
            # Readers of the counters answer without the lock.
            assert q.stats()["consistent"] is False
            r, took = cli("stats", "--json", name)
            assert r.returncode == 0 and json.loads(r.stdout)["consistent"] is False
            r, took = cli("ls", name)
            assert r.returncode == 0, r.stderr
    finally:
        if kind == "workqueue":
            q.unlink()
            q.close()
