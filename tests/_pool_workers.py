"""Task functions of tests/test_pool.py (module level, so that workers
started with spawn or forkserver can import them)."""
import os
import signal
import threading

_initialized = None


def square(x):
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
