"""A full /dev/shm is a clear OSError, never a SIGBUS, and leaves the queue
usable. Runs a child in its own mount namespace with a small tmpfs on
/dev/shm (needs `unshare --mount`, i.e. root or CAP_SYS_ADMIN).

Also the lazy reservation of a queue's ring (pq_ring_reserve): a new queue
has pages for its first 1 MiB only, its first lap backs the rest a chunk at
a time, and a /dev/shm that cannot give the next chunk fails the put with
OSError(ENOSPC), never a SIGBUS."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import pyqueue
from tests import _shm_workers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = textwrap.dedent("""
    import errno, os, pyqueue
    # A queue gets pages for its control block and first 1 MiB chunk at
    # creation: with 1.5 MiB of the 2 MiB taken, that is a clear error.
    with open("/dev/shm/filler", "wb") as f:
        os.posix_fallocate(f.fileno(), 0, 3 << 19)
    try:
        pyqueue.Queue(capacity_bytes=4 << 20)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
        assert "no room" in str(e), e
        # It says how big /dev/shm is and which parameter to lower.
        assert "/dev/shm is 2.0 MiB" in str(e), e
        assert "lower capacity_bytes" in str(e), e
    else:
        raise SystemExit("a 4 MiB queue was created in a 2 MiB /dev/shm")
    assert os.listdir("/dev/shm") == ["filler"], os.listdir("/dev/shm")  # nothing half-made left
    os.unlink("/dev/shm/filler")
    q = pyqueue.Queue(capacity_bytes=256 << 10)
    q.put(b"before")
    try:
        q.put(os.urandom(3 << 20))          # out of band: needs 3 MiB more
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    else:
        raise SystemExit("a 3 MiB message fit in a 2 MiB /dev/shm")
    q.put(b"after")
    assert q.get(timeout=5) == b"before"
    assert q.get(timeout=5) == b"after"
    assert [f for f in os.listdir("/dev/shm") if ".oob-" in f] == []
    print("OK")
""")


# Docker's default /dev/shm is 64 MiB: a program with a handful of default
# queues must run there (each one used, out-of-band messages included), and
# closing them gives their memory back.
DOCKER_CHILD = textwrap.dedent("""
    import os, pyqueue
    queues = [pyqueue.Queue() for _ in range(5)]
    for i, q in enumerate(queues):
        q.put_many([i] * 10000)
        q.put(bytes(2 << 20))                  # out of band
    for i, q in enumerate(queues):
        assert q.get_many(10000, timeout=5) == [i] * 10000
        assert q.get(timeout=5) == bytes(2 << 20)
    for q in queues:
        q.close()
    del q, queues
    assert os.listdir("/dev/shm") == [], os.listdir("/dev/shm")
    print("OK")
""")


def _run_in_tmpfs(size, code, *args):
    script = f"mount -t tmpfs -o size={size} tmpfs /dev/shm && exec \"$0\" -c \"$@\""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return subprocess.run(["unshare", "--mount", "sh", "-c", script, sys.executable, code,
                           *args], capture_output=True, text=True, timeout=120, env=env)


def _can_unshare():
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare --mount` (root / CAP_SYS_ADMIN)")
def test_full_dev_shm_is_a_clear_error_not_sigbus():
    r = _run_in_tmpfs("2m", CHILD)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert r.stdout.strip() == "OK"


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare --mount` (root / CAP_SYS_ADMIN)")
def test_five_default_queues_fit_in_dockers_64_mib_dev_shm():
    r = _run_in_tmpfs("64m", DOCKER_CHILD)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert r.stdout.strip() == "OK"


# A default queue (32 MiB ring) in a 4 MiB /dev/shm, 1 MiB of which a filler
# file holds: a producer in a child process (fork or spawn) puts small ints
# until the ring cannot grow. Its put fails with OSError(ENOSPC), never a
# SIGBUS; what was put is all there, in order; while /dev/shm stays full a
# put still fails cleanly (the ring is in its first lap: the next message
# needs the next chunk); once there is room, puts succeed again.
FILL_CHILD = textwrap.dedent("""
    import errno, os, sys, multiprocessing as mp, pyqueue
    from tests._shm_workers import fill_until_enospc
    ctx = mp.get_context(sys.argv[1])
    filler = "/dev/shm/filler"
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, 1 << 20)
    q = pyqueue.Queue()
    assert q.capacity_bytes == 32 << 20
    r, w = ctx.Pipe(False)
    p = ctx.Process(target=fill_until_enospc, args=(q, w))
    p.start()
    w.close()
    n, err, msg = r.recv()
    p.join(30)
    assert p.exitcode == 0, p.exitcode
    assert err == errno.ENOSPC, (err, msg)
    assert "/dev/shm is 4.0 MiB" in msg and "capacity_bytes" in msg, msg
    assert "not put" in msg, msg
    assert n > 40000, n                 # the ring grew past its first chunk
    assert q.qsize() == n, (q.qsize(), n)
    got = q.get_many(n, timeout=5)
    while len(got) < n:
        got += q.get_many(n - len(got), timeout=5)
    assert got == list(range(n))
    assert q.empty()
    try:
        q.put("still full")
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    else:
        raise SystemExit("a put past the backed ring succeeded in a full /dev/shm")
    os.unlink(filler)                   # room again
    q.put_many(range(1000))
    assert q.get_many(1000, timeout=5) == list(range(1000))
    assert q.empty()
    print("OK")
""")


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare --mount` (root / CAP_SYS_ADMIN)")
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_growing_ring_in_full_dev_shm_is_enospc_not_sigbus(method):
    r = _run_in_tmpfs("4m", FILL_CHILD, method)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert r.stdout.strip() == "OK"


# A growing ring (issue 9, item 9c) in a 16 MiB /dev/shm: a 1 MiB ring
# grows through bigger regions until /dev/shm has no room for the next
# chunk: that put is OSError(ENOSPC) naming /dev/shm's size, never a SIGBUS;
# everything put before is there in order; once drained, the grown regions
# are given back (pq_ring_trim) and the same queue grows again: with most
# of /dev/shm taken by another file meanwhile (a region used before must be
# backed again, not trusted), then with the room back.
GROW_CHILD = textwrap.dedent("""
    import errno, os, pyqueue
    q = pyqueue.Queue(capacity_bytes=1 << 20)
    name = "/dev/shm/pyqueue." + q.name
    for lap in range(3):
        if lap == 1:
            with open("/dev/shm/filler", "wb") as f:
                os.posix_fallocate(f.fileno(), 0, 12 << 20)
        if lap == 2:
            os.unlink("/dev/shm/filler")
        n = 0
        try:
            while True:
                q.put_nowait((lap, n, b"g" * 1000))
                n += 1
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
            assert "/dev/shm is 16.0 MiB" in str(e), e
            assert "not put" in str(e), e
        assert n > (2000 if lap == 1 else 6000), n   # past the first regions
        got = []
        while len(got) < n:
            got += q.get_many(n, timeout=5)
        assert got == [(lap, i, b"g" * 1000) for i in range(n)]
        assert os.stat(name).st_blocks * 512 <= (1 << 20) + 4096, os.stat(name).st_blocks
    q.put_many(range(1000))
    assert q.get_many(1000, timeout=5) == list(range(1000))
    print("OK")
""")


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare --mount` (root / CAP_SYS_ADMIN)")
def test_growing_past_dev_shm_is_enospc_and_the_queue_grows_again():
    r = _run_in_tmpfs("16m", GROW_CHILD)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert r.stdout.strip() == "OK"


# The same at the first grow: level 0 (1 MiB) is full and backed, and
# /dev/shm has no room for the first chunk of level 1. That put is ENOSPC;
# once the queue is drained, puts go back to level 0 and succeed although
# /dev/shm is still full.
EDGE_CHILD = textwrap.dedent("""
    import errno, os, pyqueue
    q = pyqueue.Queue(capacity_bytes=1 << 20)
    with open("/dev/shm/filler", "wb") as f:
        os.posix_fallocate(f.fileno(), 0, (4 << 20) - (1 << 20) - (520 << 10))
    n = 0
    try:
        while True:
            q.put_nowait((n, b"e" * 1000))
            n += 1
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    assert 900 < n < 1100, n                # level 0's 1 MiB, no more
    got = []
    while len(got) < n:
        got += q.get_many(n, timeout=5)
    assert got == [(i, b"e" * 1000) for i in range(n)]
    for lap in range(3):                    # level 0 again, round and round
        q.put_many([(lap, i) for i in range(500)])
        assert q.get_many(500, timeout=5) == [(lap, i) for i in range(500)]
    print("OK")
""")


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare --mount` (root / CAP_SYS_ADMIN)")
def test_first_grow_in_full_dev_shm_then_drained_goes_back_to_level_0():
    r = _run_in_tmpfs("4m", EDGE_CHILD)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert r.stdout.strip() == "OK"


def _backed(q):
    """Bytes of /dev/shm the queue's segment holds."""
    return os.stat(os.path.join("/dev/shm", "pyqueue." + q.name)).st_blocks * 512


MiB = 1 << 20


def test_new_queue_holds_only_its_first_chunk():
    q = pyqueue.Queue()
    try:
        assert q.capacity_bytes == 32 * MiB
        assert _backed(q) <= MiB + 4096        # control block + first chunk
        q.put_many([b"x" * 100] * 1000)
        assert _backed(q) <= MiB + 4096        # small traffic: no more
        q.put_many([b"y" * 1000] * 2000)       # ~2 MiB more: two more chunks
        assert 3 * MiB < _backed(q) <= 4 * MiB + 4096
        assert q.get_many(3000, timeout=5) == [b"x" * 100] * 1000 + [b"y" * 1000] * 2000
    finally:
        q.close()


def test_ring_filled_past_first_chunk_drained_and_refilled():
    """Fill past the whole ring (it grows instead of being Full), drain,
    refill across the wrap: the layout past the first lap is the fully
    backed ring's, and once drained only level 0's region keeps pages."""
    q = pyqueue.Queue(capacity_bytes=4 * MiB)
    try:
        for lap in range(3):
            n = 3 * (4 * MiB // 256)          # ~3 rings' worth of 256-byte records
            for i in range(n):
                q.put_nowait((lap, i, b"z" * 200))
            assert _backed(q) > 8 * MiB       # grown past level 0
            got = q.get_many(n, timeout=5)
            while len(got) < n:
                got += q.get_many(n - len(got), timeout=5)
            assert got == [(lap, i, b"z" * 200) for i in range(n)]
            assert _backed(q) == 4 * MiB + 4096   # the grown regions given back
            q.put_many(range(1000))           # move the wrap point on
            assert q.get_many(1000, timeout=5) == list(range(1000))
    finally:
        q.close()


def test_producer_child_grows_the_ring_while_parent_reads(ctx):
    """A producer in a child (fork, spawn) backs the ring chunk by chunk
    through three laps while this process reads: every message, in order."""
    q = pyqueue.Queue(capacity_bytes=4 * MiB)
    n, size = 12000, 1024                     # ~12 MiB: three laps of 4 MiB
    try:
        assert _backed(q) <= MiB + 4096
        p = ctx.Process(target=_shm_workers.put_sequence, args=(q, n, size))
        p.start()
        try:
            for i in range(n):
                assert q.get(timeout=30) == i.to_bytes(8, "little") * (size // 8), i
        finally:
            p.join(30)
        assert p.exitcode == 0
        # The whole ring is backed, and nothing more once the queue is at
        # rest. A reader that fell a whole ring behind made it grow a
        # level, given back by the take that empties it - unless that
        # take's trim found the producer in the claim lock (a trim never
        # waits for it: pq_ring_trim) and left it to the next take that
        # wants one; a put and a get make that next take. (A producer
        # whose populate ran on past a trim's emptying of its level used
        # to leave up to a chunk here, 1 run in 10: pq_ring_trim clears a
        # level's mark before it empties the region now.)
        for _ in range(3):
            if _backed(q) == 4 * MiB + 4096:
                break
            q.put(b"x")
            assert q.get(timeout=5) == b"x"
        assert _backed(q) == 4 * MiB + 4096
    finally:
        q.close()
        q.unlink()   # pickled to the child: close() leaves the name
