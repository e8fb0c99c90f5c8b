"""pyqueue.Pool and pyqueue.Executor: multiprocessing.Pool's and
ProcessPoolExecutor's behaviour (results, order, exceptions, closing), and
what neither stdlib pool does: a worker SIGKILLed in the middle of a task is
replaced and its task runs again; a task that kills every worker that runs
it fails alone, with WorkerLost, after max_task_retries, and the pool goes
on. The kill tests run under fork, spawn and forkserver, with real SIGKILLs;
every wait has a deadline (a mutant that drops the retry or its limit fails
them instead of hanging)."""
import concurrent.futures
import multiprocessing
import os
import pickle
import signal

import pytest

import pyqueue
from pyqueue import Executor, Pool, WorkerLost
from tests import _pool_workers as w
from tests._support import proc_gone, segment_exists, wait_until

KILL_METHODS = ["fork", "spawn", "forkserver"]
DEADLINE = 60  # seconds any one result may take on a loaded machine


@pytest.fixture
def pool():
    p = Pool(2, context="fork")
    yield p
    p.terminate()


def _segments(p):
    return [h.name for h in p._handles]


def _read_pid(path):
    with open(path) as f:
        return int(f.read())


def _alive(pid):
    return not proc_gone(pid)  # a zombie is dead too


# ---- multiprocessing.Pool's behaviour ---------------------------------------

def test_map_family_in_order(pool):
    assert pool.map(w.square, range(50)) == [x * x for x in range(50)]
    assert pool.map(w.square, range(50), chunksize=7) == [x * x for x in range(50)]
    assert pool.map(w.square, iter(range(9))) == [x * x for x in range(9)]  # no len()
    assert pool.map(w.square, []) == []
    assert pool.starmap(w.add, [(1, 2), (3, 4)]) == [3, 7]
    assert list(pool.imap(w.square, range(30))) == [x * x for x in range(30)]
    assert list(pool.imap(w.square, range(30), chunksize=4)) == [x * x for x in range(30)]
    assert sorted(pool.imap_unordered(w.square, range(30))) == [x * x for x in range(30)]
    assert sorted(pool.imap_unordered(w.square, range(30), chunksize=8)) == \
        [x * x for x in range(30)]
    assert pool.apply(w.add, (2,), {"b": 5}) == 7


def test_async_results(pool):
    got = []
    r = pool.apply_async(w.square, (6,), callback=got.append)
    assert isinstance(r, multiprocessing.pool.AsyncResult)
    assert r.get(DEADLINE) == 36 and r.ready() and r.successful()
    assert got == [36]
    m = pool.map_async(w.square, range(10), callback=got.append)
    m.wait(DEADLINE)
    assert m.ready() and m.successful() and m.get() == [x * x for x in range(10)]
    assert got[-1] == m.get()
    s = pool.starmap_async(w.add, [(1, 1), (2, 2)])
    assert s.get(DEADLINE) == [2, 4]
    # Not ready yet: successful() raises, get(timeout) times out.
    marker = pool.apply_async(w.block, ("/nonexistent-dir/x",))  # raises at once in the worker
    with pytest.raises(FileNotFoundError):
        marker.get(DEADLINE)


def test_not_ready_result(pool, tmp_path):
    r = pool.apply_async(w.block, (str(tmp_path / "b"),))
    with pytest.raises(ValueError):
        r.successful()
    with pytest.raises(multiprocessing.TimeoutError):
        r.get(0.05)
    assert not r.ready()


def test_exceptions_reraised_in_caller(pool):
    with pytest.raises(ValueError, match="bad item 3") as ei:
        pool.map(w.fail_on, range(10))
    # As multiprocessing's: the worker's traceback is the cause.
    assert isinstance(ei.value.__cause__, multiprocessing.pool.RemoteTraceback)
    with pytest.raises(KeyError):
        pool.apply(w.raise_keyerror)
    errors = []
    r = pool.apply_async(w.raise_keyerror, error_callback=errors.append)
    r.wait(DEADLINE)
    assert r.ready() and not r.successful()
    assert len(errors) == 1 and isinstance(errors[0], KeyError)
    it = pool.imap(w.fail_on, range(6))
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError):
        next(it)
    assert list(it) == [4, 5]  # the others still come, as multiprocessing's
    # A result that cannot be pickled, a function that cannot: the task fails.
    with pytest.raises(multiprocessing.pool.MaybeEncodingError):
        pool.apply(w.unpicklable_result)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pool.apply(lambda: 1)
    # An exception that pickles but does not unpickle (multiprocessing.Pool's
    # result thread dies of it, and the pool hangs): that task fails alone.
    with pytest.raises(pyqueue.UndecodableMessage, match="could not be unpickled"):
        pool.apply_async(w.raise_bad).get(DEADLINE)
    # The pool is fine afterwards.
    assert pool.map(w.square, range(4)) == [0, 1, 4, 9]


def test_iterable_that_raises(pool):
    def items():
        yield 1
        yield 2
        raise OSError("source broke")

    with pytest.raises(OSError, match="source broke"):
        pool.map(w.square, items())  # (made a list first: raises here)
    it = pool.imap(w.square, items())
    assert next(it, None) == 1 and next(it, None) == 4
    with pytest.raises(OSError, match="source broke"):
        next(it)


def test_closed_pool_refuses_work_and_join_needs_close():
    p = Pool(1, context="fork")
    try:
        with pytest.raises(ValueError, match="Pool is still running"):
            p.join()
        p.close()
        for call in (lambda: p.map(w.square, [1]), lambda: p.apply(w.square, (1,)),
                     lambda: p.apply_async(w.square, (1,)), lambda: p.imap(w.square, [1]),
                     lambda: p.imap_unordered(w.square, [1]),
                     lambda: p.starmap(w.add, [(1, 2)]),
                     lambda: p.map_async(w.square, [1])):
            with pytest.raises(ValueError, match="Pool not running"):
                call()
        p.join()
    finally:
        p.terminate()
    with pytest.raises(NotImplementedError):
        pickle.dumps(p)


def test_bad_arguments():
    with pytest.raises(ValueError):
        Pool(0)
    with pytest.raises(ValueError):
        Pool(1, maxtasksperchild=0)
    with pytest.raises(TypeError):
        Pool(1, initializer=3)
    with pytest.raises(ValueError):
        Pool(1, max_task_retries=-1)
    with Pool(1, context="fork") as p:
        with pytest.raises(ValueError):
            p.imap(w.square, [1], chunksize=0)


def test_close_join_waits_for_the_work_and_leaves_no_segment():
    p = Pool(2, context="fork")
    names = _segments(p)
    assert all(segment_exists(n) for n in names)
    r = p.map_async(w.square, range(200), chunksize=3)
    p.close()
    p.join()
    assert r.ready() and r.get() == [x * x for x in range(200)]
    assert not any(segment_exists(n) for n in names)
    assert all(not pr.is_alive() for pr in p._pool if pr is not None)


def test_context_manager_terminates():
    with Pool(2, context="fork") as p:
        names = _segments(p)
        assert p.map(w.square, range(5)) == [0, 1, 4, 9, 16]
    with pytest.raises(ValueError, match="Pool not running"):
        p.map(w.square, [1])
    assert not any(segment_exists(n) for n in names)


def test_terminate_while_tasks_run(tmp_path):
    p = Pool(2, context="fork")
    names = _segments(p)
    marker = str(tmp_path / "run")
    r = p.map_async(w.block, [marker] * 6, chunksize=1)
    assert wait_until(lambda: len([f for f in os.listdir(tmp_path) if not f.endswith("tmp")])
                      == 2, timeout=DEADLINE)
    pids = [int(f.rsplit(".", 1)[1]) for f in os.listdir(tmp_path) if not f.endswith("tmp")]
    p.terminate()
    assert not any(_alive(x) for x in pids)
    assert not r.ready()  # as multiprocessing's: what did not finish stays not ready
    assert not any(segment_exists(n) for n in names)
    p.join()  # allowed after terminate


def test_initializer(ctx):
    with Pool(2, initializer=w.init, initargs=("ready",), context=ctx) as p:
        assert p.map(w.initialized, range(4)) == ["ready"] * 4


def test_maxtasksperchild():
    with Pool(1, maxtasksperchild=2, context="fork") as p:
        pids = [p.apply(w.pid) for _ in range(6)]
    assert [pids.count(x) for x in dict.fromkeys(pids)] == [2, 2, 2]


# ---- a worker killed in the middle of a task --------------------------------

@pytest.mark.parametrize("method", KILL_METHODS)
def test_killed_worker_task_runs_again_and_pool_goes_on(method, tmp_path):
    marker = str(tmp_path / "first")
    with Pool(2, context=method) as p:
        r = p.apply_async(w.block_first_try, (marker, "done"))
        assert wait_until(lambda: os.path.exists(marker), timeout=DEADLINE)
        victim = _read_pid(marker)
        os.kill(victim, signal.SIGKILL)  # in the middle of the task
        value, retried_on = r.get(DEADLINE)
        assert value == "done" and retried_on != victim
        # The pool is whole: two workers again, and they work.
        assert sorted(p.map(w.pid, range(40), chunksize=1)) and \
            p.map(w.square, range(20)) == [x * x for x in range(20)]
        assert wait_until(lambda: sum(1 for x in p._pool if x is not None and x.is_alive())
                          == 2, timeout=DEADLINE)


@pytest.mark.parametrize("method", KILL_METHODS)
def test_task_that_always_kills_fails_alone(method, tmp_path):
    runs = str(tmp_path / "runs")
    with Pool(2, context=method, max_task_retries=2) as p:
        results = [p.apply_async(w.kill_self, (x, runs)) for x in range(10)]
        for x, r in enumerate(results):
            if x == 5:
                with pytest.raises(WorkerLost) as ei:
                    r.get(DEADLINE)
                e = ei.value
                assert "killed by SIGKILL while running task" in str(e)
                assert e.exitcode == -signal.SIGKILL and e.attempts == 3
                assert f"worker pid {e.pid} " in str(e)
            else:
                assert r.get(DEADLINE) == x
        with open(runs) as f:
            assert len(f.read().split()) == 3  # 1 + max_task_retries runs
        # imap: the lost item fails at its place, the others come.
        it = p.imap(w.kill_self, range(8), chunksize=1)
        got = []
        for _ in range(8):
            try:
                got.append(it.next(DEADLINE))
            except WorkerLost:
                got.append("lost")
        assert got == [0, 1, 2, 3, 4, "lost", 6, 7]
        assert p.map(w.square, range(10)) == [x * x for x in range(10)]


def test_no_retry_fails_on_first_kill(tmp_path):
    runs = str(tmp_path / "runs")
    with Pool(1, context="fork", max_task_retries=0) as p:
        with pytest.raises(WorkerLost, match="killed by SIGKILL") as ei:
            p.apply_async(w.kill_self, (5, runs)).get(DEADLINE)
        assert ei.value.attempts == 1
        assert p.apply_async(w.square, (3,)).get(DEADLINE) == 9
    with open(runs) as f:
        assert len(f.read().split()) == 1


def test_worker_lost_pickles():
    e = WorkerLost("worker pid 1 killed by SIGKILL", pid=1, exitcode=-9, attempts=3)
    back = pickle.loads(pickle.dumps(e))
    assert (str(back), back.pid, back.exitcode, back.attempts) == (str(e), 1, -9, 3)
    assert isinstance(e, pyqueue.PyQueueError)


# ---- Executor --------------------------------------------------------------

def test_executor_api(ctx):
    with Executor(2, mp_context=ctx) as ex:
        assert isinstance(ex, concurrent.futures.Executor)
        f = ex.submit(w.add, 1, b=2)
        assert f.result(DEADLINE) == 3
        assert list(ex.map(w.square, range(20), chunksize=6)) == [x * x for x in range(20)]
        assert list(ex.map(w.add, range(5), range(5))) == [0, 2, 4, 6, 8]
        bad = ex.submit(w.raise_keyerror)
        assert isinstance(bad.exception(DEADLINE), KeyError)
        with pytest.raises(ValueError):
            ex.map(w.square, [1], chunksize=0)
    with pytest.raises(RuntimeError):
        ex.submit(w.square, 1)


def test_executor_map_timeout(tmp_path):
    with Executor(1, mp_context="fork") as ex:
        it = ex.map(w.block, [str(tmp_path / "b")], timeout=0.1)
        with pytest.raises(concurrent.futures.TimeoutError):
            next(it)
        ex.shutdown(wait=False, cancel_futures=True)
        ex._pool.terminate()


def test_executor_shutdown_cancel_futures(tmp_path):
    ex = Executor(1, mp_context="fork")
    try:
        first = ex.submit(w.block, str(tmp_path / "m"))
        assert wait_until(lambda: len(os.listdir(tmp_path)) == 1, timeout=DEADLINE)
        rest = [ex.submit(w.square, x) for x in range(5)]
        ex.shutdown(wait=False, cancel_futures=True)
        # Not done yet: cancelled (the running one too: its result would be dropped).
        assert all(f.cancelled() for f in rest + [first])
        with pytest.raises(RuntimeError):
            ex.submit(w.square, 1)
    finally:
        ex._pool.terminate()


@pytest.mark.parametrize("method", KILL_METHODS)
def test_executor_kill_does_not_break_it(method, tmp_path):
    runs = str(tmp_path / "runs")
    with Executor(2, mp_context=method, max_task_retries=1) as ex:
        futures = [ex.submit(w.kill_self, x, runs) for x in range(8)]
        for x, f in enumerate(futures):
            if x == 5:
                e = f.exception(DEADLINE)
                assert isinstance(e, WorkerLost) and e.attempts == 2
                assert "killed by SIGKILL" in str(e)
            else:
                assert f.result(DEADLINE) == x
        assert ex.submit(w.square, 7).result(DEADLINE) == 49


def test_a_second_result_for_a_task_is_dropped(tmp_path):
    """A worker killed after it sent a result but before its ack makes its
    task run again, and send a second result: the pool keeps the first.
    (No test can stop a worker between those two steps: the bookkeeping
    that drops the second is driven here directly.)"""
    with Pool(1, context="fork") as p:
        r = p.map_async(w.block, [str(tmp_path / "a"), str(tmp_path / "b")], chunksize=1)
        p._set(r._job, 0, (True, ["first"]))
        p._set(r._job, 0, (True, ["second"]))  # the same task's result again
        assert not r.ready()  # position 1 is still to come
        p._set(r._job, 1, (True, ["other"]))
        assert r.get(DEADLINE) == ["first", "other"]


def test_executor_breaks_when_an_initializer_raises(ctx):
    """As ProcessPoolExecutor: pending futures fail with BrokenProcessPool,
    and so does submit() afterwards."""
    from concurrent.futures.process import BrokenProcessPool
    with Executor(2, mp_context=ctx, initializer=w.failing_init) as ex:
        futures = []
        try:
            for x in range(4):
                futures.append(ex.submit(w.square, x))
        except BrokenProcessPool as e:  # a worker failed before the last submit
            assert "no database" in str(e)
        for f in futures:
            e = f.exception(DEADLINE)
            assert isinstance(e, BrokenProcessPool) and "no database" in str(e)
        with pytest.raises(BrokenProcessPool):
            ex.submit(w.square, 1)


def test_worker_whose_exit_status_another_wait_took(tmp_path):
    """A harness that reaps every child (test.support.reap_children, a
    SIGCHLD handler) takes the status of a killed worker before the pool
    does: waitpid then says "alive" for ever. The pool still replaces it,
    retries its task, and close() + join() end."""
    marker = str(tmp_path / "first")
    p = Pool(1, context="fork")
    try:
        r = p.apply_async(w.block_first_try, (marker, "done"))
        assert wait_until(lambda: os.path.exists(marker), timeout=DEADLINE)
        victim = _read_pid(marker)
        os.kill(victim, signal.SIGKILL)
        os.waitpid(victim, 0)  # the status is ours now, not the pool's
        value, retried_on = r.get(DEADLINE)
        assert value == "done" and retried_on != victim
        p.close()
        p.join()
    finally:
        p.terminate()


def test_a_task_that_cannot_be_put_fails_alone_and_the_pool_goes_on(pool):
    """A task whose put fails for real (its out-of-band segment larger than
    this process may write: EFBIG, as /dev/shm full is ENOSPC) fails with
    that error; the next tasks run. (The feeder thread died on it: that
    job and every later one waited for ever.)"""
    import resource
    assert pool.apply(w.square, (3,)) == 9   # the workers run (their limits are theirs)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG, not the signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, hard))
    try:
        big = pool.apply_async(len, (b"x" * (64 << 20),))
        with pytest.raises(OSError):
            big.get(DEADLINE)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert pool.apply(w.square, (4,)) == 16
    assert pool.map(w.square, range(10)) == [x * x for x in range(10)]


# ---- the pool's own process killed ----------------------------------------

@pytest.mark.parametrize("method,busy", [("fork", False), ("spawn", False),
                                         ("forkserver", False), ("fork", True)])
def test_workers_end_when_the_pool_process_is_killed(method, busy, tmp_path):
    """The process that owns a Pool is SIGKILLed: its workers (idle on the
    task queue, or busy with a backlog whose results nobody reads) end, and
    the pool's segments are removed. (multiprocessing.Pool's stay for
    ever.)"""
    report = str(tmp_path / "pool")
    owner = multiprocessing.get_context("spawn").Process(target=w.own_pool,
                                                         args=(method, report, busy))
    owner.start()
    try:
        assert wait_until(lambda: os.path.exists(report), timeout=DEADLINE)
        with open(report) as f:
            pids, names = (line.split() for line in f.read().split("\n"))
        pids = [int(x) for x in pids]
        assert len(pids) == 2 and len(names) == 3 and all(_alive(x) for x in pids)
        os.kill(owner.pid, signal.SIGKILL)
        owner.join(DEADLINE)
        assert wait_until(lambda: not any(_alive(x) for x in pids), timeout=DEADLINE), \
            "a worker outlived its pool's process"
        assert wait_until(lambda: not any(segment_exists(n) for n in names), timeout=DEADLINE)
    finally:
        owner.kill()
        owner.join()
        for x in pids if "pids" in locals() else []:
            if _alive(x):
                os.kill(x, signal.SIGKILL)


# ---- Executor: a cancelled call does not run --------------------------------

@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_executor_cancelled_call_never_runs(method, tmp_path):
    """As ProcessPoolExecutor: a call cancelled before a worker took it
    never runs (its side effect does not happen); the next ones do."""
    started, go, side = (str(tmp_path / x) for x in ("started", "go", "side"))
    with Executor(1, mp_context=method) as ex:
        first = ex.submit(w.started_then_wait, started, go)
        assert wait_until(lambda: os.path.exists(started), timeout=DEADLINE)
        victim = ex.submit(w.touch, side)
        after = ex.submit(w.touch, str(tmp_path / "after"))
        # Both in the task queue already (qsize counts the held one): the
        # worker, not the feeder, skips it.
        assert wait_until(lambda: ex._pool._tasks.qsize() == 3, timeout=DEADLINE)
        assert victim.cancel() and victim.cancelled()
        w.touch(go)
        assert first.result(DEADLINE) == "went"
        # One worker, in order: the victim's turn came before this one's.
        assert after.result(DEADLINE) == str(tmp_path / "after")
        assert not os.path.exists(side)
        assert ex.submit(w.square, 4).result(DEADLINE) == 16


def test_executor_shutdown_cancel_futures_runs_none_of_the_backlog(tmp_path):
    started, go = str(tmp_path / "started"), str(tmp_path / "go")
    ex = Executor(1, mp_context="fork")
    try:
        first = ex.submit(w.started_then_wait, started, go)
        assert wait_until(lambda: os.path.exists(started), timeout=DEADLINE)
        backlog = [ex.submit(w.touch, str(tmp_path / f"side{x}")) for x in range(20)]
        assert wait_until(lambda: ex._pool._tasks.qsize() == 21, timeout=DEADLINE)
        ex.shutdown(wait=False, cancel_futures=True)
        assert all(f.cancelled() for f in backlog)
        w.touch(go)
        ex.shutdown(wait=True)  # the workers ended: nothing more can run
        assert not [x for x in os.listdir(tmp_path) if x.startswith("side")]
        assert first.cancelled()  # (it was pending too: its result dropped)
    finally:
        ex._pool.terminate()


# ---- a large task is encoded once ------------------------------------------

class _SmallPool(Pool):
    _MAX_IN_FLIGHT = 2


def test_large_task_encoded_once_while_the_queue_is_full(tmp_path, monkeypatch):
    """A task above the queue's max_message_bytes goes out of band: its
    segment is made once, however often the feeder finds the queue full
    and tries again (it was made, copied and removed on every try)."""
    from pyqueue import _oob
    made, tries = [], []
    real_put = _oob.put
    monkeypatch.setattr(_oob, "put", lambda *a: made.append(1) or real_put(*a))
    marker = str(tmp_path / "first")
    with _SmallPool(1, context="fork") as p:
        real_try = p._tasks._put_prepared
        p._tasks._put_prepared = lambda *a: tries.append(1) or real_try(*a)
        blocked = p.apply_async(w.block_first_try, (marker, "done"))
        assert wait_until(lambda: os.path.exists(marker), timeout=DEADLINE)
        filler = p.apply_async(w.square, (3,))  # the second slot: the queue is full
        big = p.apply_async(len, (b"x" * (2 * p._tasks.max_message_bytes),))
        assert wait_until(lambda: len(tries) >= 5, timeout=DEADLINE)  # tried, found full
        assert len(made) == 1
        os.kill(_read_pid(marker), signal.SIGKILL)  # its retry returns: room again
        assert blocked.get(DEADLINE)[0] == "done" and filler.get(DEADLINE) == 9
        assert big.get(DEADLINE) == 2 * p._tasks.max_message_bytes
        assert len(made) == 1


# ---- no fork from a process with threads (Python 3.12+) ----------------------

def test_default_start_method_forks_from_no_thread(tmp_path):
    """A pool given no context starts (and replaces) its workers without a
    fork from this process, which runs the pool's threads: Python 3.12+
    warns of such a fork (DeprecationWarning "This process is
    multi-threaded...") and the child may deadlock. From 3.12 on the
    default is forkserver (spawn if the program chose it), as CPython
    3.14's; before, multiprocessing's (no warning exists there)."""
    import sys
    import warnings
    marker = str(tmp_path / "first")
    if sys.version_info >= (3, 12):
        expected = ("spawn" if multiprocessing.get_start_method(allow_none=True) == "spawn"
                    else "forkserver")
    else:
        expected = multiprocessing.get_start_method()
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        with Pool(2) as p:
            assert p._ctx.get_start_method() == expected
            r = p.apply_async(w.block_first_try, (marker, "done"))
            assert wait_until(lambda: os.path.exists(marker), timeout=DEADLINE)
            os.kill(_read_pid(marker), signal.SIGKILL)  # replaced from the result thread
            assert r.get(DEADLINE)[0] == "done"
            with Executor(1) as ex:   # a second pool, started while the first's threads run
                assert ex.submit(w.square, 5).result(DEADLINE) == 25
    assert not [x for x in got if "multi-threaded" in str(x.message)]
