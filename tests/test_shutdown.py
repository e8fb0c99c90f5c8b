"""shutdown(immediate=False) with Python 3.13's queue.ShutDown semantics,
across processes (docs/api.md, "Shutdown"; docs/design.md, "Shutdown").

Every blocking call a test waits on runs in a child process with a
deadline: a child still blocked after the shutdown is killed and the test
fails (it never hangs). The children are blocked for real before the
shutdown: the test waits until they are registered as waiters in the
segment."""
import os
import queue
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests import _crash_workers as CW
from tests import _shutdown_workers as W
from tests._support import proc_state, shm_file, wait_until

pyqueue = pytest.importorskip("pyqueue")
ShutDown = pyqueue.ShutDown

DEADLINE = 30.0
QUEUE_KINDS = ["Queue", "JoinableQueue", "SimpleQueue"]


def finish(p, timeout=DEADLINE):
    """The child's exit code; fails the test when it is still blocked."""
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join(10)
        pytest.fail(f"{p.name} is still blocked {timeout} s after the shutdown")
    return p.exitcode


def waiting(q, key, n):
    assert wait_until(lambda: q.stats()[key] >= n, timeout=DEADLINE), \
        f"the children never blocked ({key} {q.stats()[key]} < {n})"


def test_shutdown_exception_is_the_stdlib_one():
    assert issubclass(ShutDown, pyqueue.PyQueueError)
    if sys.version_info >= (3, 13):
        assert issubclass(ShutDown, queue.ShutDown)
    else:
        assert not hasattr(queue, "ShutDown")
        assert issubclass(ShutDown, Exception)
    assert pyqueue.errors.ShutDown is ShutDown


@pytest.mark.parametrize("kind", QUEUE_KINDS)
@pytest.mark.parametrize("call", ["get", "get_many", "iter"])
def test_blocked_getters_in_other_processes_wake(ctx, procs, make_queue, kind, call):
    q = getattr(make_queue, kind)()
    if kind == "SimpleQueue" and call == "get_many":
        call = "get"
    report = ctx.Queue()
    target = {"get": W.queue_get, "get_many": W.queue_get_many, "iter": W.queue_iter}[call]
    children = [procs.start(ctx, target, q, report) for _ in range(2)]
    waiting(q, "waiting_consumers", 2)
    q.shutdown()
    want = W.EXIT_ENDED if call == "iter" else W.EXIT_SHUTDOWN
    assert [finish(p) for p in children] == [want, want]
    if call == "iter":
        assert [report.get(timeout=DEADLINE) for _ in children] == [[], []]


@pytest.mark.parametrize("kind", ["Queue", "JoinableQueue"])
def test_blocked_putter_in_another_process_wakes(ctx, procs, make_queue, kind):
    q = getattr(make_queue, kind)(maxsize=1)
    q.put(b"first")
    report = ctx.Queue()
    child = procs.start(ctx, W.queue_put, q, report)
    waiting(q, "waiting_producers", 1)
    q.shutdown()
    assert finish(child) == W.EXIT_SHUTDOWN
    # What was put before stays to be drained; the blocked put added nothing.
    assert q.get(timeout=DEADLINE) == b"first"
    with pytest.raises(ShutDown):
        q.get(timeout=DEADLINE)


def test_shutdown_called_by_another_process(ctx, procs, make_queue):
    q = make_queue.Queue()
    report = ctx.Queue()
    getter = procs.start(ctx, W.queue_get, q, report)
    waiting(q, "waiting_consumers", 1)
    assert finish(procs.start(ctx, W.shut_down, q, False)) == 0
    assert finish(getter) == W.EXIT_SHUTDOWN
    assert q.is_shutdown


@pytest.mark.parametrize("kind", QUEUE_KINDS)
def test_drain_then_shutdown(make_queue, kind):
    q = getattr(make_queue, kind)()
    for m in (b"a", "b", {"c": 3}):
        q.put(m)
    assert not q.is_shutdown
    q.shutdown()
    assert q.is_shutdown
    with pytest.raises(ShutDown):
        q.put(b"late")
    if kind != "SimpleQueue":
        with pytest.raises(ShutDown):
            q.put_nowait(b"late")
        with pytest.raises(ShutDown):
            q.put_many([b"late"])
    assert [q.get(timeout=DEADLINE) for _ in range(3)] == [b"a", "b", {"c": 3}]
    with pytest.raises(ShutDown):
        q.get()                 # no timeout: must not block
    with pytest.raises(ShutDown):
        q.get(block=False)
    if kind != "SimpleQueue":
        with pytest.raises(ShutDown):
            q.get_many()
    assert list(q) == []
    q.shutdown()                # again: nothing changes
    assert q.is_shutdown


def test_iterator_drains_then_ends(ctx, procs, make_queue):
    q = make_queue.Queue()
    report = ctx.Queue()
    child = procs.start(ctx, W.queue_iter, q, report)
    waiting(q, "waiting_consumers", 1)
    for i in range(5):
        q.put(i)
    q.shutdown()
    assert finish(child) == W.EXIT_ENDED
    assert report.get(timeout=DEADLINE) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("kind", ["Queue", "JoinableQueue"])
def test_a_handle_opened_later_sees_the_shutdown(ctx, procs, make_queue, kind):
    name = make_queue.unique_name("sd")
    q = getattr(make_queue, kind)(name=name)
    q.put(b"left")
    q.shutdown()
    report = ctx.Queue()
    child = procs.start(ctx, W.open_and_get, kind, name, report)
    assert finish(child) == W.EXIT_RETURNED
    assert report.get(timeout=DEADLINE) is True       # is_shutdown
    assert report.get(timeout=DEADLINE) == b"left"    # drained first
    with pytest.raises(ShutDown):
        q.get()


@pytest.mark.parametrize("kind", QUEUE_KINDS)
def test_immediate_discards_and_gets_raise(make_queue, kind):
    q = getattr(make_queue, kind)()
    for i in range(3):
        q.put(i)
    q.shutdown(immediate=True)
    with pytest.raises(ShutDown):
        q.get()
    with pytest.raises(ShutDown):
        q.get(block=False)
    with pytest.raises(ShutDown):
        q.put(1)
    assert q.empty()
    assert q.stats()["dropped"] == 3
    q.shutdown()                # does not lower immediate
    with pytest.raises(ShutDown):
        q.get()


def test_immediate_marks_tasks_done_and_join_returns(ctx, procs, make_queue):
    q = make_queue.JoinableQueue()
    for i in range(4):
        q.put(i)
    assert q.get() == 0         # taken, its task still unfinished
    report = ctx.Queue()
    joiner = procs.start(ctx, W.queue_join, q, report)
    assert wait_until(lambda: joiner.pid is not None)
    q.shutdown(immediate=True)
    # As queue.Queue.shutdown(immediate=True): one task_done per message
    # discarded; the one taken still counts until its task_done.
    assert q.stats()["unfinished_tasks"] == 1
    q.task_done()
    assert finish(joiner) == W.EXIT_RETURNED
    q.join()


def test_drain_shutdown_join_returns_when_consumers_finish(ctx, procs, make_queue):
    q = make_queue.JoinableQueue()
    for i in range(3):
        q.put(i)
    report = ctx.Queue()
    joiner = procs.start(ctx, W.queue_join, q, report)
    q.shutdown()
    for m in q:                 # drains, then ends
        q.task_done()
    assert finish(joiner) == W.EXIT_RETURNED


try:
    from pyqueue._core import FAULT_INJECTION
except ImportError:
    FAULT_INJECTION = False


@pytest.mark.skipif(not FAULT_INJECTION, reason="pyqueue._core was built without fault "
                    "injection: rebuild with PYQUEUE_FAULT_INJECTION=1 (as .ci/run does)")
@pytest.mark.parametrize("immediate", [False, True])
def test_a_put_in_flight_at_the_shutdown(ctx, procs, make_queue, immediate):
    """A put that passed the flag before the shutdown and commits after it
    (its producer stopped between copy and commit): drained by a drain,
    never returned after shutdown(immediate=True)."""
    import signal
    q = make_queue.Queue()
    p = procs.start(ctx, CW.armed_put, q, "before_commit", [b"late", b"refused"])
    assert wait_until(lambda: _stopped(p.pid), timeout=DEADLINE), "never reached the fault"
    q.shutdown(immediate=immediate)
    if not immediate:
        with pytest.raises(queue.Empty):  # one is being written: not drained yet
            q.get(block=False)
    os.kill(p.pid, signal.SIGCONT)
    p.join(DEADLINE)
    assert p.exitcode == 1                # its second put raised ShutDown
    if immediate:
        with pytest.raises(ShutDown):
            q.get()
        assert q.empty()                  # and that get discarded it
    else:
        assert q.get() == b"late"
        with pytest.raises(ShutDown):
            q.get()


def _stopped(pid):
    return proc_state(pid) == "T"


def test_a_damaged_flag_word_is_read_safely(make_queue):
    """The flag is a header word no validation looks at: whatever it holds
    (a damaged segment), a handle reads it masked, and the queue stays
    usable."""
    import struct
    name = make_queue.unique_name("sdflag")
    q = make_queue.Queue(name=name)
    q.put(b"a")
    with open(shm_file(name), "r+b") as f:
        f.seek(68)                              # pq_segment_header.shutdown
        f.write(struct.pack("<I", 0xFFFFFFFC))  # bits outside PQ_SHUTDOWN_MASK
    other = make_queue.open(name)
    assert not other.is_shutdown
    other.put(b"b")
    with open(shm_file(name), "r+b") as f:
        f.seek(68)
        f.write(struct.pack("<I", 0xFFFFFFFD))  # reads as PQ_SHUTDOWN_DRAIN
    assert q.is_shutdown and other.is_shutdown
    assert [q.get(), q.get()] == [b"a", b"b"]
    with pytest.raises(ShutDown):
        other.get()


# -- the semantics of queue.Queue.shutdown (Python 3.13) --------------------

# One scenario, run against a queue with shutdown: each step's outcome.
SCENARIO = textwrap.dedent("""
    def scenario(q, ShutDown, Empty, Full):
        out = []
        def step(name, fn):
            try:
                r = fn()
                out.append((name, "ok", r))
            except ShutDown:
                out.append((name, "ShutDown", None))
            except Empty:
                out.append((name, "Empty", None))
            except Full:
                out.append((name, "Full", None))
        step("put1", lambda: q.put(1))
        step("put2", lambda: q.put(2))
        step("put_nowait3", lambda: q.put_nowait(3))
        step("get", lambda: q.get())
        step("shutdown", lambda: q.shutdown())
        step("put_after", lambda: q.put(4))
        step("put_nowait_after", lambda: q.put_nowait(4))
        step("get_drain", lambda: q.get())
        step("get_nowait_drain", lambda: q.get_nowait())
        step("get_empty", lambda: q.get())
        step("get_nowait_empty", lambda: q.get_nowait())
        step("get_timeout_empty", lambda: q.get(timeout=0.01))
        for _ in range(3):
            step("task_done", lambda: q.task_done())
        step("join", lambda: q.join())
        step("shutdown_again", lambda: q.shutdown(immediate=True))
        step("get_after_immediate", lambda: q.get())
        return out

    def scenario_immediate(q, ShutDown, Empty, Full):
        out = []
        for i in range(3):
            q.put(i)
        q.get()
        q.shutdown(immediate=True)
        for name, fn in [("get", q.get), ("get_nowait", q.get_nowait),
                         ("put", lambda: q.put(9)), ("qsize", q.qsize),
                         ("empty", q.empty)]:
            try:
                out.append((name, "ok", fn()))
            except ShutDown:
                out.append((name, "ShutDown", None))
        q.task_done()
        q.join()
        out.append(("join", "ok", None))
        return out
    """)

# What Python 3.13's queue.Queue gives (checked against it below when a
# 3.13 interpreter is at hand).
EXPECTED = [
    ("put1", "ok", None), ("put2", "ok", None), ("put_nowait3", "ok", None),
    ("get", "ok", 1), ("shutdown", "ok", None),
    ("put_after", "ShutDown", None), ("put_nowait_after", "ShutDown", None),
    ("get_drain", "ok", 2), ("get_nowait_drain", "ok", 3),
    ("get_empty", "ShutDown", None), ("get_nowait_empty", "ShutDown", None),
    ("get_timeout_empty", "ShutDown", None),
    ("task_done", "ok", None), ("task_done", "ok", None), ("task_done", "ok", None),
    ("join", "ok", None),
    ("shutdown_again", "ok", None), ("get_after_immediate", "ShutDown", None),
]
EXPECTED_IMMEDIATE = [
    ("get", "ShutDown", None), ("get_nowait", "ShutDown", None), ("put", "ShutDown", None),
    ("qsize", "ok", 0), ("empty", "ok", True), ("join", "ok", None),
]


def _run_scenarios(q_factory, ShutDown_, Empty, Full):
    ns = {}
    exec(SCENARIO, ns)
    return ns["scenario"](q_factory(), ShutDown_, Empty, Full), \
        ns["scenario_immediate"](q_factory(), ShutDown_, Empty, Full)


def _stdlib_313():
    """The outcomes of queue.Queue of Python >= 3.13 (this interpreter, or a
    python3.13 found on PATH or under pyenv); None when there is none."""
    if sys.version_info >= (3, 13):
        return [[tuple(s) for s in r] for r in
                _run_scenarios(queue.Queue, queue.ShutDown, queue.Empty, queue.Full)]
    # As .ci/run's find_python (which CI requires to find a 3.13).
    candidates = [os.environ.get("PYQUEUE_PY_NEWEST"), shutil.which("python3.13"),
                  shutil.which("python3.14")]
    pyenv = os.path.join(os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv")),
                         "versions")
    if os.path.isdir(pyenv):
        candidates += [os.path.join(pyenv, v, "bin", "python3")
                       for v in sorted(os.listdir(pyenv)) if v.startswith(("3.13", "3.14"))]
    for exe in filter(None, candidates):
        if not os.path.exists(exe):
            continue
        code = SCENARIO + textwrap.dedent("""
            import json, queue
            print(json.dumps([scenario(queue.Queue(), queue.ShutDown, queue.Empty, queue.Full),
                              scenario_immediate(queue.Queue(), queue.ShutDown, queue.Empty,
                                                 queue.Full)]))
            """)
        r = subprocess.run([exe, "-c", code], capture_output=True, text=True, timeout=60,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        if r.returncode == 0:
            import json
            return [[tuple(s) for s in run] for run in json.loads(r.stdout)]
    return None


def test_expected_semantics_are_the_stdlib_ones():
    got = _stdlib_313()
    if got is None:
        pytest.skip("no Python 3.13 interpreter to compare queue.Queue.shutdown with")
    assert got == [EXPECTED, EXPECTED_IMMEDIATE]


def test_joinable_queue_behaves_as_the_stdlib_queue(make_queue):
    plain, immediate = _run_scenarios(make_queue.JoinableQueue, ShutDown, queue.Empty,
                                      queue.Full)
    assert plain == EXPECTED
    assert immediate == EXPECTED_IMMEDIATE


# -- a child parked in the kernel ----------------------------------------------

def parked(p):
    """Whether the child's main thread sleeps in a futex wait now (its
    blocking call has parked)."""
    try:
        with open(f"/proc/{p.pid}/wchan") as f:
            if "futex" in f.read():
                return True
        with open(f"/proc/{p.pid}/syscall") as f:
            nr = f.read().split()[0]
    except (OSError, IndexError):
        return False
    return nr == {"x86_64": "202", "aarch64": "98"}.get(os.uname().machine)


def wait_parked(children):
    assert wait_until(lambda: all(parked(p) for p in children), timeout=DEADLINE), \
        "the children never parked"


# -- WorkQueue ---------------------------------------------------------------

@pytest.fixture
def wq():
    q = pyqueue.WorkQueue(visibility_timeout=60)
    yield q
    q.unlink()
    q.close()


@pytest.mark.parametrize("call", ["get", "iter"])
def test_workqueue_blocked_getters_wake(ctx, procs, wq, call):
    report = ctx.Queue()
    target = W.wq_get if call == "get" else W.wq_iter
    children = [procs.start(ctx, target, wq, report) for _ in range(2)]
    wait_parked(children)
    wq.shutdown()
    want = W.EXIT_SHUTDOWN if call == "get" else W.EXIT_ENDED
    assert [finish(p) for p in children] == [want, want]


def test_workqueue_blocked_putter_wakes(ctx, procs):
    wq = pyqueue.WorkQueue(capacity_bytes=4096, max_in_flight=2)
    try:
        n = 0
        with pytest.raises(queue.Full):
            while n < 100:
                wq.put(b"fill", block=False)
                n += 1
        report = ctx.Queue()
        child = procs.start(ctx, W.wq_put, wq, report)
        wait_parked([child])
        wq.shutdown()
        assert finish(child) == W.EXIT_SHUTDOWN
        assert wq.qsize() == n        # the blocked put added nothing
    finally:
        wq.unlink()
        wq.close()


def test_workqueue_drain_iterators_and_nack(ctx, procs, wq):
    for i in range(3):
        wq.put(i)
    held = wq.get()
    report = ctx.Queue()
    child = procs.start(ctx, W.wq_iter, wq, report)
    wq.shutdown()
    assert wq.is_shutdown
    with pytest.raises(ShutDown):
        wq.put(9)
    with pytest.raises(ShutDown) as e:
        wq.put_many([9, 10])
    assert e.value.ids == []
    assert finish(child) == W.EXIT_ENDED
    assert sorted(report.get(timeout=DEADLINE)) == [1, 2]   # drained, then ended
    # A delivery held across the shutdown can still be settled; nacked,
    # it is ready again and the next get drains it.
    held.nack()
    d = wq.get(timeout=DEADLINE)
    assert d.value == held.value
    d.ack()
    with pytest.raises(ShutDown):
        wq.get()
    with pytest.raises(ShutDown):
        wq.get_many()
    assert list(wq) == []


def test_workqueue_immediate_keeps_the_messages(wq):
    for i in range(3):
        wq.put(i)
    wq.shutdown(immediate=True)
    with pytest.raises(ShutDown):
        wq.get()
    with pytest.raises(ShutDown):
        wq.get_many()
    assert wq.qsize() == 3       # committed work is never discarded
    other = pyqueue.WorkQueue.open(wq.name)
    try:
        assert other.is_shutdown
        with pytest.raises(ShutDown):
            other.get(block=False)
    finally:
        other.close()


# -- Topic -------------------------------------------------------------------

@pytest.mark.parametrize("call", ["get", "iter"])
def test_topic_blocked_subscribers_wake(ctx, procs, call):
    t = pyqueue.Topic()
    try:
        report = ctx.Queue()
        target = W.topic_get if call == "get" else W.topic_iter
        children = [procs.start(ctx, target, t, report) for _ in range(2)]
        assert [report.get(timeout=DEADLINE) for _ in children] == ["subscribed"] * 2
        if call == "iter":
            t.publish(b"one")       # read, then the iterations park
        wait_parked(children)
        t.shutdown()
        if call == "get":
            assert [finish(p) for p in children] == [W.EXIT_SHUTDOWN] * 2
        else:
            assert [finish(p) for p in children] == [W.EXIT_ENDED] * 2
            assert [report.get(timeout=DEADLINE) for _ in children] == [[b"one"]] * 2
    finally:
        t.unlink()
        t.close()


def test_topic_blocked_lossless_publisher_wakes(ctx, procs):
    t = pyqueue.Topic(capacity_bytes=4096, mode="lossless")
    try:
        sub = t.subscribe()
        with pytest.raises(queue.Full):
            for _ in range(100):
                t.publish(b"x" * 1000, block=False)
        report = ctx.Queue()
        child = procs.start(ctx, W.topic_publish, t, report)
        wait_parked([child])
        t.shutdown()
        assert finish(child) == W.EXIT_SHUTDOWN
        assert len(list(sub)) >= 1          # drained, then the iteration ends
        sub.close()
    finally:
        t.unlink()
        t.close()


def test_topic_drain_and_immediate():
    t = pyqueue.Topic()
    try:
        a, b = t.subscribe(), t.subscribe()
        for i in range(3):
            t.publish(i)
        t.shutdown()
        with pytest.raises(ShutDown):
            t.publish(3)
        assert list(a) == [0, 1, 2]
        with pytest.raises(ShutDown):
            a.get()
        with pytest.raises(ShutDown):
            a.get_many()
        assert b.get() == 0
        t.shutdown(immediate=True)
        with pytest.raises(ShutDown):
            b.get()                 # messages left unread: raised at once
        assert list(b) == []
        a.close()
        b.close()
    finally:
        t.unlink()
        t.close()


# -- Log ---------------------------------------------------------------------

@pytest.fixture(params=["memory", "directory"])
def log(request, tmp_path):
    if request.param == "memory":
        lg = pyqueue.Log(partitions=2)
        yield lg
        lg.unlink()
    else:
        lg = pyqueue.Log(path=tmp_path / "log", partitions=2)
        yield lg
    lg.close()


def test_log_consumers_in_other_processes_end(ctx, procs, log):
    for i in range(6):
        log.append(i, key=str(i))
    report = ctx.Queue()
    children = [procs.start(ctx, W.log_consume, log, report) for _ in range(2)]
    assert [report.get(timeout=DEADLINE) for _ in children] == ["joined"] * 2
    wait_parked(children)
    log.append(6, key="6")
    log.shutdown()
    assert [finish(p) for p in children] == [W.EXIT_ENDED] * 2
    got = report.get(timeout=DEADLINE) + report.get(timeout=DEADLINE)
    # Every record (at least once: a rebalance between the two members
    # re-reads what was not committed yet), then the end.
    assert set(got) == set(range(7))
    # Commits went through: the group has nothing left.
    with log.consumer("g") as c:
        with pytest.raises(ShutDown):
            c.poll()
        assert list(c) == []


def test_log_waiting_read_wakes_and_appends_are_refused(ctx, procs, log):
    log.append(b"r0", key="k")
    p = log.partition_for("k")
    end = log.end_offset(p)
    report = ctx.Queue()
    child = procs.start(ctx, W.log_read_wait, log, end, report)
    wait_parked([child])
    log.shutdown()
    assert finish(child) == W.EXIT_SHUTDOWN
    with pytest.raises(ShutDown):
        log.append(b"late")
    with pytest.raises(ShutDown):
        log.append_many([b"late"])
    assert log.end_offset(p) == end
    assert [r.value for r in log.read(p, end - 1)] == [b"r0"]   # data kept
    with pytest.raises(ShutDown):
        log.read(p, end)
    with pytest.raises(ValueError, match="immediate"):
        log.shutdown(immediate=True)
    assert log.is_shutdown


def test_directory_log_shutdown_lasts_while_it_is_open(tmp_path):
    lg = pyqueue.Log(path=tmp_path / "log", partitions=1)
    lg.append(b"a")
    lg.shutdown()
    other = pyqueue.Log.open(tmp_path / "log")
    assert other.is_shutdown
    with pytest.raises(ShutDown):
        other.append(b"b")
    other.close()
    lg.close()
    # Opened afresh (recovered from its files): a new run takes appends.
    again = pyqueue.Log.open(tmp_path / "log")
    try:
        assert not again.is_shutdown
        assert again.append(b"b") == (0, 1)   # (partition, offset)
    finally:
        again.close()


# -- StreamProcessor -----------------------------------------------------------

def _double(x):
    return x * 2


@pytest.mark.parametrize("processes", [True, False])
def test_stream_processor_drains_and_stops_on_shutdown(processes, wq):
    for i in range(20):
        wq.put(i)
    out = pyqueue.Queue()
    try:
        sp = pyqueue.StreamProcessor(wq, _double, sink=out, workers=2, processes=processes,
                                     poll_timeout=600).start()
        wq.shutdown()               # the source's own shutdown, as by another process
        assert sp.join(DEADLINE), "the workers did not end after the source's shutdown"
        assert sorted(out.get(timeout=DEADLINE) for _ in range(20)) == \
            [2 * i for i in range(20)]
        st = sp.stats()
        assert (st["processed"], st["restarts"], st["crashes"]) == (20, 0, 0)
        assert st["last_error"] is None     # every worker ended cleanly
    finally:
        out.close()


def test_stream_processor_shutdown_on_a_log(log):
    for i in range(10):
        log.append(i)
    out = pyqueue.Queue()
    try:
        sp = pyqueue.StreamProcessor(log, _double, sink=out, group="g", workers=2,
                                     poll_timeout=600).start()
        sp.shutdown()
        assert sp.join(DEADLINE)
        assert sorted(out.get(timeout=DEADLINE) for _ in range(10)) == \
            [2 * i for i in range(10)]
        st = sp.stats()
        assert (st["restarts"], st["crashes"], st["last_error"]) == (0, 0, None)
        assert log.group_offsets("g")[0]["committed"] is not None
    finally:
        out.close()
