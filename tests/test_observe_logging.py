"""Observability (issue 12): what pyqueue logs for an operator, each event
caused for real (a producer SIGKILLed inside a put at a fault point, a
subscriber SIGKILLed, a rebalance by a member in another process, a
commit fenced, messages dead-lettered, a directory log recovered, a
StreamProcessor worker crash-looping), captured with caplog; and nothing
printed when the application has not configured logging."""
import logging
import os
import queue
import signal
import subprocess
import sys

import pytest

from pyqueue import CommitFailed, Log, StreamProcessor, Topic, WorkQueue
from tests import _crash_workers as cw
from tests import _log_workers as lw
from tests import _observe_workers as ow
from tests import _topic_workers as tw
from tests import _wq_workers as ww
from tests._support import close_handles, unique_name, wait_until
from tests.test_crash import kill_stopped, needs_faults, start_stopped

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT = 30.0


def _records(caplog, logger, *words):
    return [r for r in caplog.records
            if r.name == logger and all(w in r.getMessage() for w in words)]


@pytest.fixture
def made():
    objs = []
    yield objs
    close_handles(objs, unlink=lambda o: getattr(o, "path", None) is None)


@needs_faults
@pytest.mark.timeout(60)
def test_repair_of_a_dead_producer_is_logged(ctx, procs, make_queue, caplog):
    caplog.set_level(logging.WARNING, logger="pyqueue")
    q = make_queue.Queue(capacity_bytes=65536)
    p = start_stopped(procs, ctx, cw.armed_put, q, "mid_copy", [b"V" * 1000, b"never"])
    q.put(b"after")  # behind the stopped producer's half-written record
    assert _records(caplog, "pyqueue.queue") == []  # a live (stopped) producer: no repair
    kill_stopped(p)
    assert q.get(timeout=WAIT) == b"after"
    (rec,) = _records(caplog, "pyqueue.queue", "repaired", q.name)
    assert rec.levelno == logging.WARNING
    assert q.stats()["abandoned"] == 1


@needs_faults
@pytest.mark.timeout(60)
def test_repair_of_a_dead_publisher_is_logged(ctx, procs, made, caplog):
    caplog.set_level(logging.WARNING, logger="pyqueue")
    t = Topic(unique_name("rep"))
    made.append(t)
    sub = t.subscribe()
    p = start_stopped(procs, ctx, ow.armed_publish, t, "before_commit", [b"V" * 100, b"never"])
    t.publish(b"after")
    kill_stopped(p)
    assert sub.get(timeout=WAIT) == b"after"
    (rec,) = _records(caplog, "pyqueue.topic", "repaired", t.name)
    assert rec.levelno == logging.WARNING
    sub.close()


@needs_faults
@pytest.mark.timeout(60)
def test_repair_of_a_dead_appender_is_logged(ctx, procs, made, caplog):
    caplog.set_level(logging.WARNING, logger="pyqueue")
    lg = Log(unique_name("rep"), partitions=1)
    made.append(lg)
    p = start_stopped(procs, ctx, ow.armed_append, lg, "mid_copy", [b"v" * 5000, b"never"])
    assert lg.append(b"after") == (0, 1)
    kill_stopped(p)
    assert [r.value for r in lg.read(0, 0, timeout=WAIT)] == [b"after"]
    (rec,) = _records(caplog, "pyqueue.log", "repaired", lg.name, "partition 0")
    assert rec.levelno == logging.WARNING


@needs_faults
@pytest.mark.timeout(60)
def test_work_queue_takes_back_what_dead_processes_held_and_logs_it(ctx, procs, made,
                                                                     caplog):
    """A producer SIGKILLed inside a put (its half-written message dropped,
    abandoned) and a consumer SIGKILLed holding a delivery (delivered
    again): the process that takes them back logs it."""
    caplog.set_level(logging.WARNING, logger="pyqueue")
    q = WorkQueue(unique_name("reap"))
    made.append(q)
    p = start_stopped(procs, ctx, ww.armed_put, q, "mid_copy", ["victim"])
    kill_stopped(p)
    with pytest.raises(queue.Empty):
        q.get(timeout=0.3)  # the reap after a slice drops the half-written put
    (rec,) = _records(caplog, "pyqueue.workqueue", "took back 1", q.name)
    assert rec.levelno == logging.WARNING and q.stats()["abandoned"] == 1
    caplog.clear()
    q.put("held")
    out = ctx.Queue()
    c = procs.start(ctx, ww.hold_then_hang, q, out, 1)
    [(mid, value, count)] = out.get(timeout=WAIT)
    assert value == "held" and count == 1
    c.kill()
    c.join(WAIT)
    d = q.get(timeout=WAIT)  # delivered again once the dead holder is found
    assert (d.id, d.value, d.delivery_count) == (mid, "held", 2)
    d.ack()
    (rec,) = _records(caplog, "pyqueue.workqueue", "took back 1", q.name)


@pytest.mark.timeout(60)
def test_evicted_subscriber_is_logged(ctx, procs, made, caplog):
    caplog.set_level(logging.WARNING, logger="pyqueue")
    t = Topic(capacity_bytes=4096)
    made.append(t)
    ready = ctx.Queue()
    p = procs.start(ctx, tw.stuck_subscriber, t, ready)
    pid = ready.get(timeout=WAIT)
    os.kill(pid, signal.SIGKILL)
    p.join(WAIT)
    for i in range(2 * t.capacity_bytes // 32):  # laps the dead subscriber: evicted
        t.publish(i, timeout=WAIT)
    (rec,) = _records(caplog, "pyqueue.topic", "evicted 1 subscriber", t.name)
    assert rec.levelno == logging.WARNING
    assert t.stats()["subscribers"] == 0


@pytest.mark.timeout(60)
def test_evictions_and_full_subscriber_table_on_subscribe_are_logged(ctx, procs, made, caplog):
    caplog.set_level(logging.WARNING, logger="pyqueue")
    t = Topic(capacity_bytes=4096)
    made.append(t)
    ready = ctx.Queue()
    p = procs.start(ctx, tw.hoard_subscriptions, t, 64, ready)
    assert ready.get(timeout=WAIT) == 64
    with pytest.raises(Exception):
        t.subscribe()
    (rec,) = _records(caplog, "pyqueue.topic", "all 64 subscriber slots", t.name)
    os.kill(p.pid, signal.SIGKILL)
    p.join(WAIT)
    t.subscribe().close()
    assert _records(caplog, "pyqueue.topic", "evicted 64 subscriber", t.name)


@pytest.mark.timeout(90)
def test_rebalance_and_fenced_commit_are_logged(ctx, procs, made, caplog):
    caplog.set_level(logging.INFO, logger="pyqueue")
    lg = Log(name=unique_name("grp"), partitions=2)
    made.append(lg)
    for i in range(40):
        lg.append(i, key=str(i))
    c = lg.consumer("billing")
    try:
        assert c.assignment() == [0, 1]
        assert _records(caplog, "pyqueue.log") == []
        out = ctx.Queue()
        p = procs.start(ctx, lw.member_then_hang, lg, "billing", out, 2)
        # The other member's join moves a partition away from c: c sees the
        # rebalance at its next poll, and a commit of the moved partition is
        # fenced.
        assert wait_until(lambda: (c.poll(timeout=0.05) or True) and len(c.assignment()) == 1,
                          timeout=WAIT)
        moved = ({0, 1} - set(c.assignment())).pop()
        (rec,) = _records(caplog, "pyqueue.log", "rebalance", "'billing'")
        assert rec.levelno == logging.INFO and f"lost [{moved}]" in rec.getMessage()
        with pytest.raises(CommitFailed):
            c.commit({moved: 1})
        (rec,) = _records(caplog, "pyqueue.log", "fenced", f"[{moved}]")
        assert rec.levelno == logging.WARNING
        out.get(timeout=WAIT)
        p.kill()
        p.join(WAIT)
    finally:
        c.close()


def test_dead_lettered_and_dropped_messages_are_logged(made, caplog):
    caplog.set_level(logging.WARNING, logger="pyqueue")
    dlq = WorkQueue()
    q = WorkQueue(max_deliveries=1, dead_letter=dlq)
    drop = WorkQueue(max_deliveries=1, dead_letter=None)
    made += [q, dlq, drop]
    q.put("poison")
    q.put("rejected")
    q.get(timeout=WAIT).nack(error="boom")  # its last delivery: dead-lettered
    q.get(timeout=WAIT).reject("bad input")
    recs = _records(caplog, "pyqueue.workqueue", "dead-lettered", q.name, dlq.name)
    assert len(recs) == 2 and all(r.levelno == logging.WARNING for r in recs)
    assert "boom" in recs[0].getMessage() and "bad input" in recs[1].getMessage()
    assert len(dlq.dead_letters()) == 2
    drop.put("x")
    drop.get(timeout=WAIT).reject("no use")
    (rec,) = _records(caplog, "pyqueue.workqueue", "dropped", drop.name, "no use")


@needs_faults
@pytest.mark.timeout(60)
def test_recovery_of_a_directory_log_is_logged(ctx, procs, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="pyqueue")
    path = tmp_path / "log"
    Log(path=path, segment_bytes=1 << 20).close()
    p = start_stopped(procs, ctx, lw.armed_dir_append, str(path), "mid_copy", [b"v" * 5000])
    kill_stopped(p)
    lg = Log.open(str(path))  # alone: recovers
    try:
        assert len(lg.recovery) == 1
        (rec,) = _records(caplog, "pyqueue.log", "recovery", str(path), "truncated_bytes")
        assert rec.levelno == logging.WARNING
    finally:
        lg.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["threads", "fork", "spawn"])
def test_crash_looping_stream_worker_is_logged_with_its_traceback(made, tmp_path, mode,
                                                                    caplog):
    caplog.set_level(logging.INFO, logger="pyqueue")
    log = Log(partitions=1)
    made.append(log)
    log.append(str(tmp_path))
    how = {"processes": False} if mode == "threads" else {"processes": True,
                                                          "start_method": mode}
    sp = StreamProcessor(log, ww.mark_and_raise, group="g", on_error="raise",
                         restart_backoff=(0.05, 0.2), **how).start()
    try:
        assert wait_until(lambda: len(_records(caplog, "pyqueue.stream", "crash-looping")) >= 1,
                          timeout=90)
    finally:
        assert sp.stop(30)
    died = _records(caplog, "pyqueue.stream", "worker 0 died")
    assert len(died) >= 3 and all(r.levelno == logging.ERROR for r in died)
    assert all("ValueError: this worker crashes" in r.getMessage() for r in died)
    assert "Traceback" in died[0].getMessage()
    assert _records(caplog, "pyqueue.stream", "worker 0 restarted")


def test_nothing_is_printed_when_logging_is_not_configured():
    """Without a NullHandler, Python's last-resort handler would print
    warnings of the "pyqueue" logger to stderr."""
    code = ("from pyqueue import WorkQueue\n"
            "q = WorkQueue(max_deliveries=1, dead_letter=None)\n"
            "q.put('x'); q.get(timeout=10).reject('no use')\n"
            "assert q.stats()['dead_lettered'] == 1\n"
            "import logging; logging.basicConfig()\n"
            "q.put('y'); q.get(timeout=10).reject('configured')\n")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    # Only the event after the application configured logging is printed.
    assert "no use" not in r.stderr
    assert "WARNING:pyqueue.workqueue:" in r.stderr and "configured" in r.stderr


def test_full_dead_letter_queue_is_logged(made, caplog):
    """A resource limit reached: the dead-letter queue has no room, the
    message is parked (and moved later); the operator is told."""
    caplog.set_level(logging.WARNING, logger="pyqueue")
    dlq = WorkQueue(max_in_flight=2)
    q = WorkQueue(max_deliveries=1, dead_letter=dlq)
    made += [q, dlq]
    q.dead_letter_timeout = 0.05
    dlq.put("a")
    dlq.put("b")  # full: max_in_flight messages not done
    q.put("poison")
    q.get(timeout=WAIT).reject("bad")
    (rec,) = _records(caplog, "pyqueue.workqueue", "is full", dlq.name, "parked")
    assert rec.levelno == logging.WARNING
    assert q.stats()["dead_letter_parked"] == 1
    assert not _records(caplog, "pyqueue.workqueue", "dead-lettered")
