"""Resource hygiene: abandoned segments and `pyqueue ls / rm / gc`.

Every gc here is restricted by patterns to the names this test made (the
pids of its children, or names handed out by unique_name), so that a test
run never removes segments of other programs that happen to run at the
same time. Workers live in this module: spawn children import it as
tests.test_hygiene.
"""

import contextlib
import io
import json
import mmap
import os
import re
import signal
import struct
import subprocess
import sys
import time

import pytest

from tests.test_crash import kill_stopped, needs_faults, start_stopped
from tests._support import (
    SHM_DIR,
    list_pyqueue_segments,
    remove_queue_segments,
    remove_segment_file,
    unique_name,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("pyqueue_mod")

CAP = 65536          # smallest ring: 68 KiB segments
WAIT = 30.0
ANON_RE = re.compile(r"^pyqueue\.anon-(\d+)-")


# -- child targets ------------------------------------------------------------------

def make_queues(n, how, ready=None):
    """Create n unnamed queues and keep them, then leave as `how` says:
    "return" (normal exit: the exit hooks remove them), "os_exit" (no hook
    runs), "wait" (until SIGKILLed), "churn" (keep creating until killed)."""
    import pyqueue

    queues = [pyqueue.Queue(capacity_bytes=CAP) for _ in range(n)]
    if ready is not None:
        ready.set()
    if how == "os_exit":
        os._exit(0)
    if how == "wait":
        time.sleep(WAIT)
        os._exit(3)
    if how == "churn":
        # Killed somewhere in here, maybe half way through a creation.
        for _ in range(20 * n):
            queues.append(pyqueue.Queue(capacity_bytes=CAP))
            if len(queues) > 2 * n:
                queues.pop(0).unlink()
        os._exit(3)
    assert len(queues) == n


def create_named(name, message, ready=None, go=None):
    """Create (or open) the named queue, put a message, and wait for `go`."""
    import pyqueue

    q = pyqueue.Queue(name=name, capacity_bytes=CAP)
    if message is not None:
        q.put(message)
    if ready is not None:
        ready.set()
    if go is not None and not go.wait(WAIT):
        raise SystemExit(3)
    q.close()


def nothing():
    pass


# -- helpers ------------------------------------------------------------------------------

def cli(*argv):
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    from pyqueue import cli as _cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = _cli.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def ls(*patterns):
    rc, out, err = cli("ls", "--json", *patterns)
    assert rc == 0, err
    return {row["name"]: row for row in json.loads(out)}


def gc_json(*args):
    rc, out, err = cli("gc", "--json", *args)
    assert rc == 0, err
    return {d["segment"]: d for d in json.loads(out)}


def segments_of(pids):
    pids = {str(p) for p in pids}
    return {e for e in list_pyqueue_segments()
            if (m := ANON_RE.match(e)) and m.group(1) in pids}


def dead_pid(ctx):
    """The pid of a process that has exited (and been reaped)."""
    p = ctx.Process(target=nothing)
    p.start()
    p.join(WAIT)
    assert p.exitcode == 0
    return p.pid


def oob_entry(name, pid, n=0):
    return f"pyqueue.{name}.oob-{pid}-{n}"


def make_fake_oob(name, pid, n=0, size=4096):
    """An out-of-band segment as a producer would leave it had it been killed
    after creating it and before putting the reference."""
    import posix_ipc

    shm = posix_ipc.SharedMemory("/" + oob_entry(name, pid, n), posix_ipc.O_CREX,
                                 mode=0o600, size=size)
    try:
        with mmap.mmap(shm.fd, size) as mm:
            mm[:5] = b"hello"
    finally:
        shm.close_fd()
    return oob_entry(name, pid, n)


def exists(entry):
    return os.path.exists(os.path.join(SHM_DIR, entry))


@pytest.fixture
def names():
    """Queue names handed out for a test; their segments are removed at the end."""
    made = []

    def make(tag="hyg"):
        made.append(unique_name(tag))
        return made[-1]

    yield make
    for name in made:
        remove_queue_segments(name)


# -- thousands of abandoned queues --------------------------------------------------

@pytest.mark.timeout(120)
def test_gc_collects_thousands_of_abandoned_queues(procs):
    import multiprocessing

    per_child = 300
    children = []   # (process, how, ready event)
    for method in ("fork", "spawn"):
        ctx = multiprocessing.get_context(method)
        for how in ("return", "os_exit", "wait", "wait", "churn"):
            ready = ctx.Event() if how in ("wait", "churn") else None
            p = procs.start(ctx, make_queues, per_child, how, ready)
            children.append((p, how, ready))
    for p, how, ready in children:
        if ready is not None:
            assert ready.wait(WAIT), f"{how} child did not get ready"
            if how == "churn":
                time.sleep(0.01)  # let it churn a little: killed mid-creation, maybe
            p.kill()
    for p, how, _ in children:
        p.join(WAIT)
        expected = {"return": 0, "os_exit": 0, "wait": -signal.SIGKILL, "churn": -signal.SIGKILL}
        assert p.exitcode == expected[how], (how, p.exitcode)

    pids = [p.pid for p, _, _ in children]
    # Normal exits clean up after themselves; the others leave everything.
    # (Only "at most" for those: a pytest run of this suite in another process
    # at the same time takes the segments of dead processes that appear during
    # one of its tests for its own leaks, and removes them.)
    assert segments_of(p.pid for p, how, _ in children if how == "return") == set()
    leaked = segments_of(pids)
    for p, how, _ in children:
        n = len(segments_of([p.pid]))
        if how in ("os_exit", "wait"):
            assert 0 < n <= per_child, how
        if how == "churn":
            assert 0 < n <= 2 * per_child + 1
    assert len(leaked) > 2 * per_child

    patterns = [f"anon-{pid}-*" for pid in pids]
    rc, out, err = cli("gc", *patterns)
    assert rc == 0, err
    assert segments_of(pids) == set(), "gc left segments of dead processes behind"
    removed = {line.split()[1] for line in out.splitlines() if line.startswith("removed ")}
    assert removed and removed <= leaked
    assert f"gc: removed {len(removed)} segments" in out


# -- ls -----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_ls_creator_alive_dead_and_open(method, procs, names):
    import multiprocessing

    import pyqueue

    ctx = multiprocessing.get_context(method)
    dead_name, live_name = names(), names()
    p = procs.start(ctx, create_named, dead_name, b"left behind")
    p.join(WAIT)
    assert p.exitcode == 0
    ready, go = ctx.Event(), ctx.Event()
    live = procs.start(ctx, create_named, live_name, None, ready, go)
    assert ready.wait(WAIT)

    rows = ls(dead_name, live_name)
    assert set(rows) == {dead_name, live_name}
    dead, alive = rows[dead_name], rows[live_name]
    assert (dead["kind"], dead["state"], dead["depth"]) == ("queue", "ok", 1)
    assert dead["creator_pid"] == p.pid and dead["creator_alive"] is False
    assert dead["open_by"] == []
    assert alive["creator_pid"] == live.pid and alive["creator_alive"] is True
    assert live.pid in alive["open_by"]
    st = os.stat(os.path.join(SHM_DIR, "pyqueue." + live_name))
    assert alive["size"] == min(st.st_size, st.st_blocks * 512)   # what it holds of /dev/shm

    # A live process that maps a queue whose creator is dead keeps it.
    q = pyqueue.Queue.open(dead_name)
    assert os.getpid() in ls(dead_name)[dead_name]["open_by"]
    assert gc_json(dead_name, live_name) == {}
    assert q.get(timeout=WAIT) == b"left behind"
    q.close()
    del q
    assert ls(dead_name)[dead_name]["open_by"] == []
    assert set(gc_json(dead_name, live_name)) == {"pyqueue." + dead_name}
    assert not exists("pyqueue." + dead_name)

    go.set()
    live.join(WAIT)
    assert live.exitcode == 0
    assert ls(live_name)[live_name]["creator_alive"] is False
    assert set(gc_json(live_name)) == {"pyqueue." + live_name}


def test_ls_reused_pid_is_not_alive(names):
    """A creator pid that now runs another process (other start time) is dead."""
    import posix_ipc

    import pyqueue

    name = names()
    q = pyqueue.Queue(name=name, capacity_bytes=CAP)
    row = ls(name)[name]
    assert row["creator_pid"] == os.getpid() and row["creator_alive"] is True
    # Pretend the creator started at another time: our pid is a "reused" one.
    shm = posix_ipc.SharedMemory("/pyqueue." + name)
    with mmap.mmap(shm.fd, 4096) as mm:
        shm.close_fd()
        (start,) = struct.unpack_from("<Q", mm, 48)
        assert start == row["creator_start_time"] != 0
        struct.pack_into("<Q", mm, 48, start + 12345)
    row = ls(name)[name]
    assert row["creator_alive"] is False
    assert os.getpid() in row["open_by"]
    assert gc_json(name) == {}            # we still map it
    q.close()
    del q
    assert set(gc_json(name)) == {"pyqueue." + name}


def test_header_parser_agrees_with_core(names):
    import posix_ipc

    import pyqueue
    from pyqueue import _core, cli as _cli

    name = names()
    q = pyqueue.JoinableQueue(7, name=name, capacity_bytes=CAP, overflow="reject")
    state, hdr, st = _cli.read_header("pyqueue." + name)
    shm = posix_ipc.SharedMemory("/pyqueue." + name)
    with mmap.mmap(shm.fd, 0, prot=mmap.PROT_READ) as mm:
        shm.close_fd()
        info = _core.segment_info(mm)
    assert state == "ok" and st.st_size == info["segment_size"]
    for key, value in info.items():
        assert hdr[key] == value, key
    q.close()


def test_ls_and_gc_survive_segments_that_are_not_pyqueues(names, ctx):
    """Not pyqueue's, truncated, being created, empty, not a file: listed as
    '?', never crash; gc leaves them, except an unfinished unnamed queue of a
    dead creator."""
    from pyqueue.cli import _LAYOUT_VERSION as version

    base = names()
    entries = {
        "junk": b"this is not a pyqueue segment" * 20,
        "short": b"PYQ",
        "creating": bytes(8192),                        # header not written yet
        "empty": b"",
        "half": struct.pack("<QII", 0x0045554555515950, version, 1) + bytes(300),  # state 0
        "huge": struct.pack("<QIIQQQ", 0x0045554555515950, version, 1, 1 << 40, 4096, 1 << 39)
                + bytes(24) + b"\x01" + bytes(200),    # ready, but claims 1 TiB
    }
    made = []
    try:
        for tag, data in entries.items():
            entry = f"pyqueue.{base}-{tag}"
            with open(os.path.join(SHM_DIR, entry), "wb") as f:
                f.write(data)
            made.append(entry)
        fifo = f"pyqueue.{base}-fifo"
        os.mkfifo(os.path.join(SHM_DIR, fifo))
        made.append(fifo)
        dead = dead_pid(ctx)
        anon_dead = f"pyqueue.anon-{dead}-00112233aabbccdd"
        anon_live = f"pyqueue.anon-{os.getpid()}-00112233aabbccdd"
        for entry in (anon_dead, anon_live):
            with open(os.path.join(SHM_DIR, entry), "wb") as f:
                f.write(bytes(4096))
            made.append(entry)

        rows = ls(base + "-*", anon_dead[8:], anon_live[8:])
        assert len(rows) == len(made)
        states = {name: (r["kind"], r["state"]) for name, r in rows.items()}
        assert states == {
            f"{base}-junk": ("?", "not-pyqueue"), f"{base}-short": ("?", "truncated"),
            f"{base}-creating": ("?", "initializing"), f"{base}-empty": ("?", "empty"),
            f"{base}-half": ("?", "initializing"), f"{base}-huge": ("?", "truncated"),
            f"{base}-fifo": ("?", "not-a-file"),
            anon_dead[8:]: ("?", "initializing"), anon_live[8:]: ("?", "initializing"),
        }
        rc, out, err = cli("ls", base + "-*")          # the table too
        assert rc == 0 and err == "" and out.count("?") >= 7
        assert set(gc_json(base + "-*", anon_dead[8:], anon_live[8:])) == {anon_dead}
        assert all(exists(e) for e in made if e != anon_dead)
    finally:
        for entry in made:
            remove_segment_file(entry)


# -- gc -----------------------------------------------------------------------------

def test_gc_dry_run_removes_nothing(ctx, procs):
    p = procs.start(ctx, make_queues, 20, "os_exit")
    p.join(WAIT)
    leaked = segments_of([p.pid])
    assert len(leaked) == 20
    pattern = f"anon-{p.pid}-*"
    rc, out, err = cli("gc", "--dry-run", pattern)
    assert rc == 0, err
    assert {line.split()[2] for line in out.splitlines() if line.startswith("would remove ")} \
        == leaked
    assert "gc: would remove 20 segments" in out
    assert segments_of([p.pid]) == leaked
    plan = gc_json("--dry-run", pattern)
    assert set(plan) == leaked and not any(d["removed"] for d in plan.values())
    assert segments_of([p.pid]) == leaked
    assert all(d["removed"] for d in gc_json(pattern).values())
    assert segments_of([p.pid]) == set()


def test_gc_anon_only_leaves_named_queues(ctx, procs, names):
    name = names()
    p = procs.start(ctx, create_named, name, b"x")
    p.join(WAIT)
    assert p.exitcode == 0
    assert gc_json("--anon-only", name) == {}
    assert exists("pyqueue." + name)
    assert set(gc_json(name)) == {"pyqueue." + name}


def test_rm(names):
    import pyqueue

    rc, out, err = cli("rm", names())
    assert rc == 1 and "no segment named" in err

    name = names()
    q = pyqueue.Queue(name=name, capacity_bytes=CAP)
    q.put(b"x" * (CAP // 2))             # out of band
    assert any(e.startswith(f"pyqueue.{name}.oob-") for e in list_pyqueue_segments())
    rc, out, err = cli("rm", name, names())
    assert rc == 1 and err.count("no segment named") == 1
    assert not [e for e in list_pyqueue_segments() if e.startswith(f"pyqueue.{name}")]
    q.close()


def test_gc_keeps_out_of_band_message_waiting_in_live_queue(ctx, procs, names):
    """The producer has exited, the message waits: gc must not take it, even
    with no grace period."""
    import pyqueue

    name = names()
    q = pyqueue.Queue(name=name, capacity_bytes=CAP)
    big = os.urandom(3 * CAP)
    p = procs.start(ctx, create_named, name, big)
    p.join(WAIT)
    assert p.exitcode == 0
    oob = [e for e in list_pyqueue_segments() if e.startswith(f"pyqueue.{name}.oob-{p.pid}-")]
    assert len(oob) == 1
    row = ls(name)[name]
    assert row["oob_count"] == 1 and row["oob_bytes"] == len(big)
    assert row["oob"][0]["producer_pid"] == p.pid and row["oob"][0]["producer_alive"] is False
    assert gc_json(name) == {}
    assert gc_json("--oob-grace", "0", name) == {}
    assert exists(oob[0])
    assert q.get(timeout=WAIT) == big
    assert not exists(oob[0])
    q.unlink()
    q.close()


def test_gc_out_of_band_segments_of_killed_producer(ctx, names):
    """A producer killed after creating an out-of-band segment and before
    putting its reference leaves an unreferenced segment."""
    import pyqueue

    name = names()
    q = pyqueue.Queue(name=name, capacity_bytes=CAP)
    dead = dead_pid(ctx)
    orphan = make_fake_oob(name, dead, 0)
    mine = make_fake_oob(name, os.getpid(), 99)      # a live producer's
    # The queue is alive and the segment young: kept.
    assert gc_json(name) == {}
    # Past the grace period, producer dead, not referenced by the ring: removed.
    # A live producer's is kept.
    plan = gc_json("--oob-grace", "0", name)
    assert set(plan) == {orphan} and "dead" in plan[orphan]["reason"]
    assert not exists(orphan) and exists(mine)

    # Once the queue is gone, its out-of-band segments go, whatever their age.
    orphan = make_fake_oob(name, dead, 1)
    import posix_ipc

    posix_ipc.unlink_shared_memory("/pyqueue." + name)   # q still maps it
    rows = ls(name)
    assert set(rows) == {f"{name}.oob-{dead}-1", f"{name}.oob-{os.getpid()}-99"}
    assert all(r["kind"] == "oob" for r in rows.values())
    assert gc_json(name) == {}                # a live process maps the unlinked queue
    q.close()
    del q
    plan = gc_json(name)
    assert set(plan) == {orphan, mine}
    assert all("is gone" in d["reason"] for d in plan.values())
    assert not exists(orphan) and not exists(mine)


@needs_faults
def test_gc_out_of_band_segment_of_sigkilled_producer(ctx, procs, names):
    """A real producer SIGKILLed with a large message whose out-of-band
    segment it has made and whose reference it has not put yet (stopped at
    the after_claim fault point of the reference record, then killed). Its
    segment is kept within the grace period and while the producer could
    still put the reference; once the producer is dead and the grace period
    over, gc removes it, and the queue goes on."""
    import pyqueue
    from tests import _crash_workers as W

    name = names()
    q = pyqueue.Queue(name=name, capacity_bytes=CAP)
    prefix = f"pyqueue.{name}.oob-"
    p = start_stopped(procs, ctx, W.armed_put, q, "after_claim", [os.urandom(3 * CAP)])
    made = [e for e in list_pyqueue_segments() if e.startswith(prefix)]
    assert len(made) == 1 and made[0].startswith(f"{prefix}{p.pid}-"), made
    oob = made[0]
    assert gc_json("--oob-grace", "0", name) == {}   # its producer is alive (stopped)
    kill_stopped(p)
    assert gc_json(name) == {}                       # within the grace period
    assert exists(oob)
    plan = gc_json("--oob-grace", "0", name)
    assert set(plan) == {oob}, plan
    assert f"producer pid {p.pid} is dead" in plan[oob]["reason"]
    assert not exists(oob)
    q.put(b"after")                                  # the killed claim is repaired
    assert q.get(timeout=WAIT) == b"after"


@needs_faults
def test_gc_out_of_band_segment_of_consumer_killed_after_taking_it(ctx, procs, names):
    """A consumer SIGKILLed after it took a large message and before it
    removed the message's segment: the reference is left in the read part of
    the ring, the producer (this process) is alive. gc removes the segment
    after the grace period; a large message still waiting is kept."""
    import pyqueue
    from tests import _crash_workers as W

    name = names()
    q = pyqueue.Queue(name=name, capacity_bytes=CAP)
    taken, waiting = os.urandom(3 * CAP), os.urandom(3 * CAP)
    q.put(taken)
    first = {e for e in list_pyqueue_segments() if e.startswith(f"pyqueue.{name}.oob-")}
    q.put(waiting)
    second = {e for e in list_pyqueue_segments() if e.startswith(f"pyqueue.{name}.oob-")}
    assert len(first) == 1 and len(second) == 2
    oobs = [*first, *(second - first)]  # the taken one's, then the waiting one's
    p = start_stopped(procs, ctx, W.armed_get, q, "after_consume")
    kill_stopped(p)
    assert q.stats()["abandoned_by_consumers"] == 1
    assert gc_json(name) == {}                       # within the grace period
    plan = gc_json("--oob-grace", "0", name)
    assert set(plan) == {oobs[0]}, plan
    assert "taken" in plan[oobs[0]]["reason"]
    assert not exists(oobs[0]) and exists(oobs[1])
    assert q.get(timeout=WAIT) == waiting            # the waiting one is intact
    assert not exists(oobs[1])
    q.unlink()
    q.close()


def test_gc_never_removes_mapped_segment_even_if_creator_died(ctx, procs):
    """Queues leaked by a SIGKILLed creator (no exit hook runs) and still
    mapped by a live process stay until nobody maps them."""
    ready = ctx.Event()
    p = procs.start(ctx, make_queues, 5, "wait", ready)
    assert ready.wait(WAIT)
    p.kill()
    p.join(WAIT)
    assert p.exitcode == -signal.SIGKILL
    leaked = sorted(segments_of([p.pid]))
    assert len(leaked) == 5
    import pyqueue

    import posix_ipc

    held = [pyqueue.Queue.open(e[len("pyqueue."):]) for e in leaked[:2]]   # mapped
    fd_only = posix_ipc.SharedMemory("/" + leaked[2])                      # open, not mapped
    pattern = f"anon-{p.pid}-*"
    rows = ls(pattern)
    assert all(os.getpid() in rows[e[len("pyqueue."):]]["open_by"] for e in leaked[:3])
    assert set(gc_json(pattern)) == set(leaked[3:])
    assert segments_of([p.pid]) == set(leaked[:3])
    for q in held:
        q.close()
    del held, q
    assert set(gc_json(pattern)) == set(leaked[:2])
    assert segments_of([p.pid]) == {leaked[2]}
    fd_only.close_fd()
    assert set(gc_json(pattern)) == {leaked[2]}
    assert segments_of([p.pid]) == set()


def test_queue_names_cannot_look_like_out_of_band_segments():
    import pyqueue

    with pytest.raises(ValueError, match="oob"):
        pyqueue.Queue(name="jobs.oob-1-2")


def test_cli_as_subprocess(names):
    import pyqueue

    name = names()
    q = pyqueue.Queue(name=name, capacity_bytes=CAP)
    q.put("x")
    out = subprocess.run([sys.executable, "-m", "pyqueue", "ls", "--json", name],
                         capture_output=True, text=True, timeout=WAIT, check=True).stdout
    (row,) = json.loads(out)
    assert (row["name"], row["depth"], row["creator_alive"]) == (name, 1, True)
    assert os.getpid() in row["open_by"]
    res = subprocess.run([sys.executable, "-m", "pyqueue", "gc", "--help"],
                         capture_output=True, text=True, timeout=WAIT)
    assert res.returncode == 0 and "--oob-grace" in res.stdout and "creator" in res.stdout
    res = subprocess.run([sys.executable, "-m", "pyqueue", "gc", "--dry-run", name],
                         capture_output=True, text=True, timeout=WAIT)
    assert res.returncode == 0 and "would remove 0 segments" in res.stdout
    q.unlink()
    q.close()


def test_procscan_liveness():
    from pyqueue import _procscan

    me = os.getpid()
    state, start = _procscan.read_stat(me)
    assert state in "RS" and start > 0
    assert _procscan.is_alive(me) and _procscan.is_alive(me, start)
    assert _procscan.is_alive(me, start + 1) is False
    assert _procscan.is_alive(0) is False and _procscan.is_alive(-5) is False
    assert _procscan.is_alive_since(me, time.time())
    assert _procscan.is_alive_since(me, time.time() - 10 ** 6) is False  # "reused"
    assert abs(_procscan.started_at(me) - time.time()) < 10 ** 6
    # A zombie is dead.
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        assert wait_until(lambda: _procscan.read_stat(pid)[0] == "Z", timeout=WAIT)
        assert _procscan.is_alive(pid) is False
    finally:
        os.waitpid(pid, 0)
    assert _procscan.is_alive(pid) is False
