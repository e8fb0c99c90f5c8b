"""Child-process targets of tests/test_stopped_peer.py (module level, so
that processes started with ``spawn`` can import them).

A holder arms the ``in_lock`` fault point (csrc/pq_fault.h: any lock of
the core, just taken) in every module's copy of the core and then makes one
call: it stops itself inside that call's lock, and goes on with SIGCONT.
"""

import os

from pyqueue import _core, _log, _topic, _workq


def arm(spec):
    """Stop at fault point `spec` (None: disarm), from the next fault point
    on, whatever this process hit before."""
    if spec:
        os.environ["PYQUEUE_FAULT"] = spec
    else:
        os.environ.pop("PYQUEUE_FAULT", None)
    for mod in (_core, _topic, _log, _workq):
        mod._fault_rearm()


def hold_put(q, value):
    """Queue, Topic (publish) or WorkQueue: stop inside the put's lock."""
    arm("in_lock")
    if hasattr(q, "publish"):
        q.publish(value, timeout=30)
    else:
        q.put(value, timeout=30)


def hold_append(name_or_path, value):
    """Log (memory or directory): stop inside an append's lock."""
    from pyqueue import Log
    log = Log.open(name_or_path)
    arm("in_lock")
    log.append(value)
    arm(None)
    log.close()


def hold_group_leave(name, group):
    """Log consumer group: a member stops inside the group lock (its
    leave), then leaves."""
    from pyqueue import Log
    log = Log.open(name)
    c = log.consumer(group)
    arm("in_lock")
    c.close()
    arm(None)
    log.close()


def append_many_split(name, values, lock_wait, out):
    """Memory Log: an append_many of more than one claim that stops in its
    first claim's copy (mid_copy: the lock let go), and then goes on; what
    it answered goes to out."""
    from pyqueue import Log, LockTimeout, _locks
    log = Log.open(name)
    _locks.set_lock_wait(lock_wait)
    arm("mid_copy")
    try:
        out.put(("ok", log.append_many(values)))
    except LockTimeout as e:
        out.put(("timeout", e))  # pickled: appended travels with it
    finally:
        arm(None)
        log.close()


def stopped_append(name, value, out):
    """Memory Log: stop in the middle of an append's copy (mid_copy: the
    lock let go, the record CLAIMED), go on with SIGCONT; what it answered
    goes to out."""
    from pyqueue import Log
    log = Log.open(name)
    arm("mid_copy")
    try:
        out.put(("ok", log.append(value)))
    except Exception as e:  # pragma: no cover - reported to the test
        out.put(("error", repr(e)))
    finally:
        arm(None)
        log.close()
