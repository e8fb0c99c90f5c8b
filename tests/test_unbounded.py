"""maxsize=0 is unbounded (issue 9, item 9c): a put under maxsize never
fails or blocks for lack of ring space while memory allows. A ring that is
full goes on in a new epoch, a region twice as big (pq_ring_epoch.c); a
queue that drains starts over in its first region and the others are
given back. FIFO holds across epochs and across producers, SIGKILLed
producers and consumers lose nothing but what they held, and a damaged
epoch table is SegmentMismatch (docs/design.md, "Unbounded queues")."""
import mmap
import os
import queue

import pytest

import pyqueue
from pyqueue.errors import SegmentMismatch
from tests import _crash_workers as W
from tests import _shm_workers
from tests import cffi_core
from tests.test_crash import kill_stopped, needs_faults, start_stopped
from tests._support import drain, shm_file

MiB = 1 << 20
WAIT = 30.0


def _backed(q):
    """Bytes of /dev/shm the queue's segment holds."""
    return os.stat(shm_file(q.name)).st_blocks * 512


def test_two_million_small_ints_in_a_default_queue():
    """multiprocessing.Queue takes them; so does Queue(): put_nowait and a
    single-process pre-fill with put() (which blocked for ever at ~720k),
    then every one back in order, and the grown regions given back."""
    q = pyqueue.Queue()
    try:
        n = 2_000_000
        for i in range(n // 2):
            q.put_nowait(i)
        for i in range(n // 2, n):
            q.put(i, timeout=WAIT)
        assert q.qsize() == n
        assert not q.full()
        assert _backed(q) > 48 * MiB          # past the 32 MiB first region
        got = []
        while len(got) < n:
            got += q.get_many(100_000, timeout=WAIT)
        assert got == list(range(n))
        assert q.empty()
        assert _backed(q) <= 32 * MiB + 4096  # only the first region kept
    finally:
        q.close()


def test_big_items_under_maxsize_are_not_full():
    """Queue(100) of 5 MB items was Full at the 7th (35 MB > the 32 MiB
    ring); now only maxsize says Full."""
    q = pyqueue.Queue(100)
    try:
        items = [bytes([i]) * (5 * 1000 * 1000) for i in range(12)]
        for item in items:
            q.put_nowait(item)
        assert q.qsize() == 12
        assert [q.get(timeout=WAIT) for _ in items] == items
    finally:
        q.close()
    q = pyqueue.Queue(8)
    try:
        for i in range(8):
            q.put_nowait(bytes([i]) * (5 * 1000 * 1000))
        with pytest.raises(pyqueue.Full):
            q.put_nowait(b"ninth")
        assert q.full()
        assert [q.get(timeout=WAIT)[:1] for _ in range(8)] == [bytes([i]) for i in range(8)]
    finally:
        q.close()


def test_memory_given_back_after_drain():
    """A 1 MiB ring grown to tens of MiB holds them while full, gives them
    back once drained (MADV_REMOVE of the grown regions), and grows again."""
    q = pyqueue.Queue(capacity_bytes=MiB)
    try:
        for lap in range(2):
            n = 40_000
            q.put_many([(lap, i, b"m" * 1000) for i in range(n)])
            assert _backed(q) > 40 * MiB
            got = []
            while len(got) < n:
                got += q.get_many(n, timeout=WAIT)
            assert got == [(lap, i, b"m" * 1000) for i in range(n)]
            assert _backed(q) <= MiB + 4096
    finally:
        q.close()


def test_fifo_across_producers_during_growth(ctx, procs):
    """The claim lock orders every put, also while the ring grows: what a
    producer put before another one started comes out first (the spill
    chunk prototype lost this), and each producer's messages stay in order."""
    q = pyqueue.Queue(capacity_bytes=64 * 1024)
    n = 20_000
    first_done, second_done = ctx.Event(), ctx.Event()
    try:
        procs.start(ctx, _shm_workers.put_tagged, q, 0, n, None, first_done)
        procs.start(ctx, _shm_workers.put_tagged, q, 1, n, first_done, second_done)
        assert second_done.wait(WAIT)
        assert q.qsize() == 2 * n                # no consumer: it all grew in
        got = []
        while len(got) < 2 * n:
            got += q.get_many(2 * n, timeout=WAIT)
        assert got == [(0, i) for i in range(n)] + [(1, i) for i in range(n)]
        # Two producers at once, this process reading while it grows.
        procs.start(ctx, _shm_workers.put_tagged, q, 2, n)
        procs.start(ctx, _shm_workers.put_tagged, q, 3, n)
        seen = {2: [], 3: []}
        for _ in range(2 * n):
            tag, i = q.get(timeout=WAIT)
            seen[tag].append(i)
        assert seen == {2: list(range(n)), 3: list(range(n))}
        assert drain(q) == []
    finally:
        q.close()
        q.unlink()


# -- crashes while the ring grows ---------------------------------------------

RING = 64 * 1024
REC = b"r" * 1000          # a 1024-byte record: 64 fill the 64 KiB ring exactly


@needs_faults
@pytest.mark.timeout(60)
@pytest.mark.parametrize("point", ["in_grow", "after_claim", "before_commit", "in_claim_lock"])
def test_producer_killed_while_the_ring_grows(ctx, procs, make_queue, point):
    """in_grow: killed holding the claim lock right after it published a
    new epoch, before its claim: the next producer takes the lock over
    and fills that epoch. The others: killed inside a put into a grown
    epoch, whose record is repaired there."""
    q = make_queue.Queue(capacity_bytes=RING)
    before = [b"%03d" % i + REC[3:] for i in range(64)]
    q.put_many(before)                      # exactly full: no growth yet
    if point != "in_grow":
        before.append(b"grown")
        q.put(b"grown")                     # the next epoch
    p = start_stopped(procs, ctx, W.armed_put, q, point, [REC, b"never"])
    kill_stopped(p)
    q.put(b"after")
    assert [q.get(timeout=WAIT) for _ in before] == before
    assert q.get(timeout=WAIT) == b"after"  # the dead producer's record passed
    assert drain(q) == []
    s = q.stats()
    assert s["abandoned"] == (1 if point in ("after_claim", "before_commit") else 0)
    assert s["depth"] == 0 and s["enqueued"] == s["dequeued"] == len(before) + 1
    q.put_many([b"x"] * 200)                 # and it grows on
    assert q.get_many(200, timeout=WAIT) == [b"x"] * 200


@needs_faults
@pytest.mark.timeout(60)
@pytest.mark.parametrize("point", ["after_peek", "after_consume"])
def test_consumer_killed_across_epochs(ctx, procs, make_queue, point):
    """A consumer killed taking the last record of one epoch: after_peek
    loses nothing, after_consume exactly that message (counted)."""
    q = make_queue.Queue(capacity_bytes=RING)
    items = [b"%03d" % i + REC[3:] for i in range(160)]   # three epochs
    q.put_many(items)
    assert [q.get(timeout=WAIT) for _ in range(63)] == items[:63]
    p = start_stopped(procs, ctx, W.armed_get, q, point)
    kill_stopped(p)
    lost = 1 if point == "after_consume" else 0
    rest = items[63 + lost:]
    got = []
    while len(got) < len(rest):
        got += q.get_many(len(rest), timeout=WAIT)
    assert got == rest
    assert q.stats()["abandoned_by_consumers"] == lost
    assert drain(q) == []


# -- a damaged epoch table -----------------------------------------------------

@pytest.fixture(scope="module")
def core():
    return cffi_core.require()


def _grown(make_queue):
    q = make_queue.Queue(capacity_bytes=RING, name=None)
    q.put_many([REC] * 100)                 # epochs 0 and 1
    return q


@pytest.mark.parametrize("damage", ["level", "old_level", "start_misaligned",
                                    "start_backwards", "epoch_number", "extent_tag"])
def test_damaged_epoch_table_is_segment_mismatch(core, make_queue, damage):
    """Whatever the table says, no access leaves the data area: a handle
    that has to look the table up gets SegmentMismatch (never a crash, a
    hang or a wrong message)."""
    q = _grown(make_queue)
    epochs = core.ctl_offset("epochs")
    cur = 1 % 32
    with open(shm_file(q.name), "r+b") as f, mmap.mmap(f.fileno(), 4096) as m:
        def put64(off, v):
            m[off:off + 8] = (v % (1 << 64)).to_bytes(8, "little")

        def get64(off):
            return int.from_bytes(m[off:off + 8], "little")
        if damage == "level":
            put64(epochs + 16 * cur + 8, 99)
        elif damage == "old_level":                 # epoch 0's, where the reader starts
            put64(epochs + 8, 99)
        elif damage == "start_misaligned":
            put64(epochs + 16 * cur, get64(epochs + 16 * cur) + 8)
        elif damage == "start_backwards":
            put64(epochs + 16 * 0, get64(epochs + 16 * cur) + 4096)
        elif damage == "epoch_number":
            put64(core.ctl_offset("epoch"), 5)   # entries 2..5 were never written
        else:
            put64(core.ctl_offset("level_reserved") + 8, 0)   # level 1, tag 0
    truth = [REC] * 100
    fresh = pyqueue.Queue(name=q.name)
    try:
        if damage not in ("start_backwards", "old_level"):   # the current entry is intact
            with pytest.raises(SegmentMismatch):
                fresh.put(b"x", timeout=1)
        got, err = [], None
        try:
            while len(got) < len(truth):
                got.append(fresh.get(timeout=1))
        except SegmentMismatch as e:
            err = e
        assert got == truth[:len(got)]       # never a wrong message
        if damage != "extent_tag":           # readers do not use extents
            assert err is not None
    finally:
        fresh.close()


def test_gc_keeps_out_of_band_messages_waiting_in_a_grown_epoch(make_queue):
    """`pyqueue gc` tells a reference still waiting from a taken one by its
    place between head and tail: in a grown epoch it is in another region
    (pyqueue/cli.py, ring_references)."""
    import contextlib
    import io
    import json

    from pyqueue import cli

    name = make_queue.unique_name("gcgrow")
    q = make_queue.Queue(capacity_bytes=RING, name=name)
    q.put_many([REC] * 100)                     # epochs 0 and 1
    big = os.urandom(3 * RING)                   # out of band: its reference in epoch 1
    q.put(big)
    q.put_many([REC] * 200)                      # and epoch 2 after it
    assert q.get_many(100, timeout=WAIT) == [REC] * 100   # head in epoch 1, before it
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["gc", "--json", "--oob-grace", "0", name]) == 0
    assert json.loads(out.getvalue()) == []      # nothing to remove: it is waiting
    assert q.get(timeout=WAIT) == big
    assert q.get_many(200, timeout=WAIT) == [REC] * 200
