"""Task functions of tests/test_pool.py (module level, so that workers
started with spawn or forkserver can import them)."""
import os
import signal
import threading
import time

_initialized = None


def square(x):
    return x * x


def slow_square(x):
    """square, as a task of 1 ms (a workload: the feeder outruns two
    workers, so a backlog forms whatever the machine's load)."""
    time.sleep(0.001)
    return x * x


def add(a, b):
    return a + b


def pid(_=None):
    return os.getpid()


def fail_on(x, bad=3):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def raise_keyerror():
    raise KeyError("missing")


class BadError(Exception):
    """Pickles, but does not unpickle (its __init__ wants two arguments)."""

    def __init__(self, a, b):
        super().__init__(a)
        self.b = b


def raise_bad():
    raise BadError("x", 1)


def unpicklable_result():
    return threading.Lock()


def init(value):
    global _initialized
    _initialized = value


def initialized(_=None):
    return _initialized


def _report(path, text):
    """Write text to path whole (a rename), so a reader never sees half."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _log_run(path):
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


def block_first_try(marker, value):
    """The first run reports its pid in `marker` and waits to be killed
    (the test SIGKILLs it); a later run (a retry) returns (value, pid)."""
    if os.path.exists(marker):
        return value, os.getpid()
    _report(marker, str(os.getpid()))
    threading.Event().wait(120)  # the test kills this process long before
    raise RuntimeError("not killed")


def kill_self(x, runs=None, victim=5):
    """x, except that the run for `victim` SIGKILLs its own worker every
    time (each run logged in `runs`)."""
    if x == victim:
        if runs is not None:
            _log_run(runs)
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def block(marker):
    """Report the pid, then wait (for terminate())."""
    _report(f"{marker}.{os.getpid()}", str(os.getpid()))
    threading.Event().wait(120)


def failing_init():
    raise OSError("no database")


def touch(path):
    """A side effect the test can see (a file made)."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    return path


def started_then_wait(started, go):
    """Report the start in `started`, then wait (deadline 120 s) for the
    file `go` to exist."""
    _report(started, str(os.getpid()))
    waiter = threading.Event()
    for _ in range(12000):
        if os.path.exists(go):
            return "went"
        waiter.wait(0.01)
    raise RuntimeError("never told to go")


def own_pool(method, report, busy):
    """The process that owns a Pool (the test SIGKILLs it): report its
    workers' pids and its segments' names, then wait. busy: the workers
    have a backlog of tasks whose results nobody reads once this dies."""
    from pyqueue import Pool
    pool = Pool(2, context=method)
    if busy:
        # 1 ms tasks: two workers take 2000 a second, the feeder puts far
        # more (with trivial tasks the workers could keep up with it, and
        # the backlog never formed: CI run 35).
        pool.map_async(slow_square, range(40000), chunksize=1)
        waiter = threading.Event()
        for _ in range(3000):  # (deadline 30 s) until a backlog waits in the queue
            if pool._tasks.qsize() > 1000:
                break
            waiter.wait(0.01)
    pids = [p.pid for p in pool._pool]
    names = [h.name for h in pool._handles if hasattr(h, "name")]
    _report(report, " ".join(map(str, pids)) + "\n" + " ".join(names))
    threading.Event().wait(120)
