"""Corruption fuzzing of every segment kind and of every file of a
directory-mode Log, through the public API.

Whoever can write a segment (its owner, a buggy program, a stray `dd`) can
put anything in it. pyqueue's promise: opening and using a damaged segment
raises a clear exception or goes on, but never crashes the interpreter,
never hangs, and leaves other segments alone. Each case makes a fresh,
populated segment (messages in the ring, a subscriber, consumer-group
state, deliveries in flight), damages its bytes with a seeded generator
(random bytes, 8-byte words set to hostile values, zeroed ranges), then
exercises every call of the kind in a forked child with a deadline
(tests/adversarial/_harness.py). The C-level fuzzers (tests/test_fuzz_core.py)
go deeper on the Queue's ring; this file covers every kind end to end.

PYQUEUE_FUZZ_CASES (default 25 per kind) sets the number of cases; a
failure names the seed (PYQUEUE_FUZZ_SEED replays one).
"""

import os
import random
import shutil
import tempfile

import pytest

from tests import _support
from tests.adversarial._harness import attempt, open_clearly, run_in_child

pyqueue = pytest.importorskip("pyqueue")

CASES = int(os.environ.get("PYQUEUE_FUZZ_CASES", "25"))
SEED = os.environ.get("PYQUEUE_FUZZ_SEED")
U64 = (1 << 64) - 1
SMALL = 64 * 1024
T = 0.05  # timeout of every blocking call in the exercise


def seeds(kind):
    if SEED is not None:
        return [int(SEED)]
    base = random.Random(kind).getrandbits(32)
    return [base + i for i in range(CASES)]


# ---------------------------------------------------------------- damage

def damage_file(path, rng):
    """Damage one file in place; returns a description."""
    st = os.stat(path)
    # A growing queue's file is sparse, as big as its ring may grow: damage
    # the part that holds pages (the control block, level 0's region and
    # the grown ones after it) rather than holes nobody reads.
    size = min(st.st_size, max(st.st_blocks * 512, 4096))
    if size == 0:
        return "empty"
    queue_segment = is_queue_segment(path)
    how = rng.choice(["bytes", "words", "words", "zero"] + (["epochs"] if queue_segment else []))
    if how == "epochs":
        # The epoch table (pq_ring_ctl.epoch, .epochs): where the ring's
        # positions lie; a damaged one must be SegmentMismatch, never an
        # access outside the data area.
        from pyqueue import _core
        words = [_core.RING_EPOCH_OFFSET] + [
            _core.RING_EPOCHS_OFFSET + 8 * i for i in range(2 * _core.RING_EPOCHS)]
        done = []
        with open(path, "r+b") as f:
            for _ in range(rng.randint(1, 3)):
                off = rng.choice(words)
                value = rng.choice([0, 1, 8, 16, 99, U64, 1 << 63, rng.getrandbits(64),
                                    rng.getrandbits(20) * 16])
                f.seek(off)
                f.write(value.to_bytes(8, "little"))
                done.append((off, hex(value)))
        return "epoch words %s" % done
    with open(path, "r+b") as f:
        if how == "bytes":
            done = []
            for _ in range(rng.randint(1, 16)):
                off = rng.randrange(size)
                f.seek(off)
                f.write(bytes([rng.randrange(256)]))
                done.append(off)
            return "bytes at %s" % done
        if how == "words":
            # Control words live near the start: bias toward the first 64 KiB.
            span = min(size, rng.choice([4096, SMALL, size]))
            done = []
            for _ in range(rng.randint(1, 4)):
                off = rng.randrange(0, max(8, span) // 8) * 8
                if off + 8 > size:
                    continue
                value = rng.choice([0, 1, U64, 1 << 63, (1 << 63) - 1, 1 << 32, size,
                                    size - 8, size + 8, rng.getrandbits(64),
                                    rng.getrandbits(32)])
                f.seek(off)
                f.write(value.to_bytes(8, "little"))
                done.append((off, hex(value)))
            return "words %s" % done
        start = rng.randrange(size)
        n = min(size - start, rng.randint(1, 4096))
        f.seek(start)
        f.write(b"\0" * n)
        return "zeroed %d bytes at %d" % (n, start)


def is_queue_segment(path):
    """A queue's main segment (kind 1), not its out-of-band ones."""
    with open(path, "rb") as f:
        head = f.read(16)
    return len(head) == 16 and int.from_bytes(head[12:16], "little") == 1 and ".oob-" not in path


def shm_files(name):
    prefix = "pyqueue." + name
    return sorted(os.path.join(_support.SHM_DIR, e) for e in os.listdir(_support.SHM_DIR)
                  if e == prefix or e.startswith(prefix + "."))


def remove_shm(name):
    for path in shm_files(name):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def cli(*args):
    from pyqueue import cli as _cli
    attempt(_cli.main, list(args))


# ---------------------------------------------------------------- kinds

VALUES = [b"raw bytes", "a str", {"k": [1, 2, 3]}, 12345, b"x" * 3000, ("t", 1.5)]


def populate_queue(name):
    q = pyqueue.JoinableQueue(name=name, capacity_bytes=SMALL)
    for v in VALUES * 4:
        q.put(v)
    q.put_many([b"g" * 200] * (3 * SMALL // 256))   # grows: epochs 0, 1 and 2
    q.get()
    q.get_many(3)
    q.task_done()
    q.close()


def exercise_queue(name):
    q = open_clearly(pyqueue.JoinableQueue.open, name)
    if q is None:
        return
    for _ in range(30):
        attempt(q.get, timeout=T)
    attempt(q.get_many, 16, timeout=T)
    attempt(q.get_nowait)
    attempt(q.put, b"after", timeout=T)
    attempt(q.put_many, [1, 2, 3], timeout=T)
    attempt(q.get, timeout=T)
    attempt(q.qsize)
    attempt(q.stats)
    attempt(q.task_done)
    cli("stats", name)
    cli("ls", "--json")
    q.close()


def populate_topic(name):
    t = pyqueue.Topic(name=name, capacity_bytes=SMALL)
    s = t.subscribe("earliest")
    for v in VALUES * 4:
        t.publish(v)
    s.get()
    s.close()
    t.close()


def exercise_topic(name):
    t = open_clearly(pyqueue.Topic.open, name)
    if t is None:
        return
    s = attempt(t.subscribe, "earliest")
    attempt(t.publish, b"after", timeout=T)
    if s is not None:
        for _ in range(30):
            attempt(s.get, timeout=T)
        attempt(s.get_many, 16, timeout=T)
        attempt(lambda: s.lag)
        attempt(s.close)
    attempt(t.publish_many, [1, 2], timeout=T)
    attempt(t.stats)
    cli("ls", "--json")
    t.close()


def populate_memlog(name):
    log = pyqueue.Log(name=name, partitions=3, retention_bytes=SMALL)
    for i, v in enumerate(VALUES * 4):
        log.append(v, key=str(i % 5))
    with log.consumer("g") as c:
        c.poll(timeout=T)
        c.commit()
    log.close()


def exercise_log(name_or_path):
    log = open_clearly(pyqueue.Log.open, name_or_path)
    if log is None:
        return
    for p in range(attempt(lambda: min(log.partitions, 8)) or 0):
        attempt(log.start_offset, p)
        attempt(log.end_offset, p)
        attempt(log.read, p, 0, 100)
        start = attempt(log.start_offset, p)
        if start is not None:
            attempt(log.read, p, start, 100)
    attempt(log.append, b"after")
    attempt(log.append_many, [1, 2, 3], key="k")
    attempt(log.groups)
    attempt(log.group_offsets, "g")
    c = attempt(log.consumer, "g")
    if c is not None:
        attempt(c.poll, timeout=T)
        attempt(c.poll, timeout=T)
        attempt(c.commit)
        attempt(c.close)
    attempt(log.stats) if hasattr(log, "stats") else None
    cli("groups", name_or_path)
    cli("tail", name_or_path, "--no-follow", "--from-beginning")
    attempt(log.close)


def populate_workqueue(name):
    q = pyqueue.WorkQueue(name=name, capacity_bytes=SMALL, max_in_flight=64,
                          visibility_timeout=60, dedup_keys=16)
    for i, v in enumerate(VALUES * 3):
        q.put(v, key="k%d" % i if i % 2 else None, delay=5.0 if i % 7 == 0 else 0.0)
    q.get().ack()
    q.get().nack(delay=3.0)
    q.get().reject("poison")
    q.get()  # held until the visibility timeout
    q.close()


def exercise_workqueue(name):
    q = open_clearly(pyqueue.WorkQueue.open, name)
    if q is None:
        return
    for _ in range(20):
        d = attempt(q.get, timeout=T)
        if d is not None:
            attempt(d.ack)
    d = attempt(q.get, timeout=T)
    if d is not None:
        attempt(d.nack, delay=0.01)
    d = attempt(q.get, timeout=T)
    if d is not None:
        attempt(d.reject, "fuzz")
    attempt(q.put, b"after", key="k1", timeout=T)
    attempt(q.put, b"after2", timeout=T)
    attempt(q.dead_letters)
    attempt(q.requeue)
    attempt(q.stats)
    attempt(q.qsize)
    cli("stats", name)
    cli("ls", "--json")
    attempt(q.close)


SHM_KINDS = {
    "queue": (populate_queue, exercise_queue),
    "topic": (populate_topic, exercise_topic),
    "memlog": (populate_memlog, exercise_log),
    "workqueue": (populate_workqueue, exercise_workqueue),
}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", sorted(SHM_KINDS))
def test_damaged_segment_never_crashes_or_hangs(kind):
    populate, exercise = SHM_KINDS[kind]
    failures = []
    for seed in seeds(kind):
        rng = random.Random(seed)
        name = _support.unique_name("fz")
        try:
            populate(name)
            files = shm_files(name)
            assert files, "populate made no segment"
            target = rng.choice(files)
            what = damage_file(target, rng)
            verdict = run_in_child(exercise, name)
            if verdict != "ok":
                failures.append("seed %d: %s after %s of %s" % (
                    seed, verdict, what, os.path.basename(target)))
        finally:
            remove_shm(name)
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- directory log

def populate_dirlog(path):
    log = pyqueue.Log(path=path, partitions=2, segment_bytes=64 * 1024)
    for i in range(400):
        log.append(VALUES[i % len(VALUES)], key=str(i % 3))
    with log.consumer("g") as c:
        c.poll(timeout=T)
        c.commit()
    log.close()


def dirlog_files(path):
    out = []
    for root, _dirs, files in os.walk(path):
        out.extend(os.path.join(root, f) for f in files)
    return sorted(out)


@pytest.mark.timeout(600)
def test_damaged_directory_log_file_never_crashes_or_hangs():
    failures = []
    for seed in seeds("dirlog"):
        rng = random.Random(seed)
        path = tempfile.mkdtemp(prefix="pq-fuzz-")
        try:
            populate_dirlog(os.path.join(path, "log"))
            files = dirlog_files(path)
            target = rng.choice(files)
            what = damage_file(target, rng)
            verdict = run_in_child(exercise_log, os.path.join(path, "log"))
            if verdict != "ok":
                failures.append("seed %d: %s after %s of %s" % (
                    seed, verdict, what, os.path.relpath(target, path)))
        finally:
            shutil.rmtree(path, ignore_errors=True)
    assert not failures, "\n".join(failures)
