"""Child-process targets of tests/test_shutdown.py (module level, so that
``spawn`` children can import them). Each exits with a code that says how
its blocking call ended; a child still blocked is killed by the test at its
deadline, which then fails."""

import os

WAIT = 60.0            # the longest any child waits for anything
EXIT_SHUTDOWN = 40     # the call raised pyqueue.ShutDown
EXIT_ENDED = 41        # the iteration ended (after the items listed)
EXIT_RETURNED = 42     # the call returned normally (join)
EXIT_OTHER = 43        # anything else


def _exit(code, report=None):
    """os._exit after what was put on report reached the pipe (the feeder
    thread of a multiprocessing.Queue would die with the process)."""
    if report is not None:
        report.close()
        report.join_thread()
    os._exit(code)


def _run(fn, report=None):
    from pyqueue import ShutDown
    try:
        out = fn()
    except ShutDown:
        _exit(EXIT_SHUTDOWN, report)
    except BaseException as e:  # noqa: BLE001 - reported through the exit code
        if report is not None:
            report.put(repr(e))
        _exit(EXIT_OTHER, report)
    if report is not None and out is not None:
        report.put(out)
    _exit(EXIT_RETURNED, report)


def queue_get(q, report):
    _run(lambda: q.get(), report)


def queue_get_many(q, report):
    _run(lambda: q.get_many(), report)


def queue_put(q, report):
    _run(lambda: q.put(b"blocked"), report)


def queue_iter(q, report):
    from pyqueue import ShutDown
    try:
        items = list(q)
    except ShutDown:   # the iterator must end, not raise
        _exit(EXIT_OTHER, report)
    report.put(items)
    _exit(EXIT_ENDED, report)


def queue_join(q, report):
    _run(lambda: q.join(), report)


def shut_down(q, immediate):
    q.shutdown(immediate=immediate)
    _exit(0)


def open_and_get(kind, name, report):
    import pyqueue
    q = getattr(pyqueue, kind).open(name)
    try:
        report.put(q.is_shutdown)
        _run(lambda: q.get(timeout=WAIT), report)
    finally:
        q.close()


def wq_get(q, report):
    _run(lambda: q.get(), report)


def wq_put(q, report):
    _run(lambda: q.put(b"blocked"), report)


def wq_iter(q, report):
    def drain():
        out = []
        for d in q:
            out.append(d.value)
            d.ack()
        return out
    from pyqueue import ShutDown
    try:
        items = drain()
    except ShutDown:
        _exit(EXIT_OTHER, report)
    report.put(items)
    _exit(EXIT_ENDED, report)


def topic_get(topic, report):
    sub = topic.subscribe("earliest")
    report.put("subscribed")
    _run(lambda: sub.get(), report)


def topic_iter(topic, report):
    sub = topic.subscribe("earliest")
    report.put("subscribed")
    items = list(sub)
    report.put(items)
    _exit(EXIT_ENDED, report)


def topic_publish(topic, report):
    _run(lambda: topic.publish(b"x" * 1000), report)


def log_consume(log, report):
    with log.consumer("g", auto_commit=True) as c:   # close() commits
        report.put("joined")
        items = [r.value for r in c]
    report.put(items)
    _exit(EXIT_ENDED, report)


def log_read_wait(log, offset, report):
    _run(lambda: log.read(0, offset, timeout=WAIT), report)
