"""Run a piece of hostile work in a forked child and judge how it ended.

A corrupted segment, a stopped peer or a killed process may make pyqueue
raise (that is its job), but never crash the interpreter (a signal), never
hang (a deadline), and never return garbage where a check exists. Each case
runs in a child made with fork, so a crash or a hang fails the case, not
the test run, and the parent can report the seed that reproduces it.
"""

import os
import select
import signal
import sys

# Exit codes of the child.
OK = 0
ESCAPED = 3     # an exception escaped the exercise (a bug in the test itself)


def run_in_child(fn, *args, deadline=20.0):
    """Fork, run fn(*args) in the child with stdout/stderr sent to
    /dev/null, and wait at most `deadline` seconds. Returns
    ("ok" | "exit N" | "signal S" | "hang", detail)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = ESCAPED
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            sys.stdout = sys.stderr = open(os.devnull, "w")
            fn(*args)
            code = OK
        except BaseException:  # noqa: BLE001 - the child reports by exit code
            code = ESCAPED
        finally:
            os._exit(code)
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], deadline)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hang"
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(pidfd)
    if os.WIFSIGNALED(status):
        return "signal %d" % os.WTERMSIG(status)
    code = os.WEXITSTATUS(status)
    return "ok" if code == OK else "exit %d" % code


def attempt(fn, *args, **kwargs):
    """Call fn and swallow any Exception: on a corrupted segment any clear
    exception is an acceptable answer. Crashes and hangs are what the child
    harness judges."""
    try:
        return fn(*args, **kwargs)
    except Exception:  # noqa: BLE001 - see above
        return None


def open_clearly(fn, *args, **kwargs):
    """Open a damaged segment or log: a clear refusal (a pyqueue error, an
    OSError or a ValueError naming the problem) returns None; any other
    exception escapes and fails the case (exit 3)."""
    import pyqueue
    try:
        return fn(*args, **kwargs)
    except (pyqueue.PyQueueError, OSError, ValueError):
        return None
