"""WorkQueue: the same assertions on every backend (shared memory, one
Redis, a Redis Cluster); tests/contract/conftest.py."""
import math
import os
import queue
import signal
import time

import pytest

import pyqueue
from pyqueue.errors import DeliveryExpired, SegmentMismatch, SegmentNotFound
from tests.contract import _workers

pytestmark = pytest.mark.timeout(90)


def test_put_get_ack(make):
    wq = make("WorkQueue", make.name())
    assert isinstance(wq, pyqueue.WorkQueue)
    ids = [wq.put(v) for v in ("a", {"b": 2}, b"c")]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert wq.qsize() == 3
    got = []
    for _ in ids:
        d = wq.get(timeout=5)
        assert d.delivery_count == 1 and d.redelivered_because is None
        assert abs(d.enqueued_at - time.time()) < 60
        got.append((d.id, d.value))
        d.ack()
        assert d.settled == "acked"
    assert got == list(zip(ids, ["a", {"b": 2}, b"c"]))
    with pytest.raises(DeliveryExpired):
        d.ack()                                    # settled already
    assert wq.qsize() == 0
    with pytest.raises(queue.Empty):
        wq.get_nowait()
    s = wq.stats()
    assert (s["enqueued"], s["acked"], s["depth"], s["in_flight"]) == (3, 3, 0, 0)


def test_nack_redelivers_with_count_and_delay(make):
    wq = make("WorkQueue", make.name(), max_deliveries=None)
    mid = wq.put("job")
    d = wq.get(timeout=5)
    d.nack()
    d2 = wq.get(timeout=5)
    assert (d2.id, d2.delivery_count, d2.redelivered_because) == (mid, 2, "nacked")
    t0 = time.monotonic()
    d2.nack(delay=0.5)
    with pytest.raises(queue.Empty):
        wq.get_nowait()                            # not before its delay
    assert wq.stats()["delayed"] == 1
    d3 = wq.get(timeout=10)
    assert time.monotonic() - t0 >= 0.45
    assert (d3.id, d3.delivery_count) == (mid, 3)
    assert wq.stats()["redelivered"] == 2
    d3.ack()


def test_delayed_put(make):
    wq = make("WorkQueue", make.name())
    t0 = time.monotonic()
    wq.put("later", delay=0.5)
    wq.put("now")
    assert wq.get(timeout=5).value == "now"
    with pytest.raises(queue.Empty):
        wq.get_nowait()
    d = wq.get(timeout=10)
    assert d.value == "later" and time.monotonic() - t0 >= 0.45
    d.ack()


def test_visibility_timeout_redelivers_and_fences_the_old_delivery(make):
    wq = make("WorkQueue", make.name(), visibility_timeout=0.5)
    mid = wq.put("slow job")
    first = wq.get(timeout=5)
    t0 = time.monotonic()
    again = wq.get(timeout=10)
    assert time.monotonic() - t0 >= 0.3
    assert (again.id, again.delivery_count) == (mid, 2)
    assert again.redelivered_because == "visibility timeout"
    for verb in (first.ack, first.nack, first.reject, lambda: first.extend(5)):
        with pytest.raises(DeliveryExpired):
            verb()
    again.ack()
    assert wq.qsize() == 0


def test_extend_keeps_a_delivery(make):
    wq = make("WorkQueue", make.name(), visibility_timeout=0.5)
    wq.put("long job")
    d = wq.get(timeout=5)
    d.extend(60)
    with pytest.raises(queue.Empty):
        wq.get(timeout=1.0)                        # past 0.5 s: still held
    d.ack()
    assert wq.qsize() == 0


def test_max_deliveries_dead_letters_with_reason_and_requeue(make):
    dead = make("WorkQueue", make.name(), max_deliveries=None)
    wq = make("WorkQueue", make.name(), max_deliveries=2, dead_letter=dead)
    assert wq.dead_letter.name == dead.name
    mid = wq.put({"order": 7})
    for n in (1, 2):
        d = wq.get(timeout=5)
        assert d.delivery_count == n
        d.nack(error=f"failure {n}")
    with pytest.raises(queue.Empty):
        wq.get_nowait()
    letters = dead.dead_letters()
    assert len(letters) == 1
    dl = letters[0]
    assert isinstance(dl, pyqueue.DeadLetter)
    assert (dl.value, dl.id, dl.attempts, dl.queue) == ({"order": 7}, mid, 2, wq.name)
    assert dl.reason == "delivered 2 times, last: nacked" and dl.last_error == "failure 2"
    assert wq.stats()["dead_lettered"] == 1 and wq.qsize() == 0
    assert dead.qsize() == 1                       # dead_letters() took nothing
    assert dead.requeue() == 1
    d = wq.get(timeout=5)
    assert d.value == {"order": 7} and d.delivery_count == 1
    d.ack()


def test_reject_and_visibility_timeout_dead_letter(make):
    dead = make("WorkQueue", make.name(), max_deliveries=None)
    wq = make("WorkQueue", make.name(), max_deliveries=1, visibility_timeout=0.3,
              dead_letter=dead)
    wq.put("poison")
    wq.put("forgotten")
    wq.get(timeout=5).reject("bad input")
    wq.get(timeout=5)                              # never settled: its timeout passes
    with pytest.raises(queue.Empty):
        wq.get(timeout=1.0)                        # its last delivery: dead-lettered instead
    reasons = sorted((dl.value, dl.reason) for dl in dead.dead_letters())
    assert reasons == [("forgotten", "delivered 1 times, last: visibility timeout"),
                       ("poison", "rejected: bad input")]
    assert wq.stats()["dead_lettered"] == 2


def test_delivery_as_context_manager(make):
    wq = make("WorkQueue", make.name(), max_deliveries=None)
    wq.put(1)
    with pytest.raises(RuntimeError):
        with wq.get(timeout=5) as d:
            raise RuntimeError("handler failed")
    assert d.settled == "nacked"
    with wq.get(timeout=5) as d:
        assert d.delivery_count == 2
    assert d.settled == "acked" and wq.qsize() == 0


def test_dedup_keys(make):
    wq = make("WorkQueue", make.name(), dedup_window=60)
    first = wq.put("once", key="order-1")
    assert wq.put("twice", key="order-1") == first
    assert wq.put("again", key=b"order-1") == first
    other = wq.put("other", key="order-2")
    assert other != first
    assert wq.qsize() == 2 and wq.stats()["deduplicated"] == 2
    d = wq.get(timeout=5)
    d.ack()
    assert wq.put("after ack", key="order-1") == first     # within the window still
    with pytest.raises(TypeError):
        wq.put("x", key=5)


def test_full_and_bad_times(make):
    wq = make("WorkQueue", make.name(), max_in_flight=2)
    wq.put(1)
    wq.put(2)
    with pytest.raises(queue.Full):
        wq.put_nowait(3)
    with pytest.raises(queue.Full):
        wq.put(3, timeout=0.1)
    wq.get(timeout=5).ack()
    wq.put(3, timeout=5)
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError):
            wq.put(4, delay=bad)
    d = wq.get(timeout=5)
    with pytest.raises(ValueError):
        d.nack(delay=-1)
    d.extend(math.inf)                             # never: saturated, not an error
    d.ack()


def test_settings_open_and_kinds(make, backend):
    name = make.name()
    wq = make("WorkQueue", name, visibility_timeout=7)
    with pytest.raises(ValueError, match="visibility_timeout"):
        make("WorkQueue", name, visibility_timeout=8)
    same = backend.WorkQueue.open(name)
    assert same.visibility_timeout == 7
    same.put("via open")
    d = wq.get(timeout=5)
    assert d.value == "via open"
    d.ack()
    same.close()
    with pytest.raises(SegmentNotFound):
        backend.WorkQueue.open(make.name())
    qname = make.name()
    make("Queue", name=qname)
    with pytest.raises(SegmentMismatch):
        backend.WorkQueue.open(qname)
    with pytest.raises(SegmentMismatch):
        backend.Queue.open(name)


def test_pickled_into_a_child_that_acks(make, ctx, procs):
    wq = make("WorkQueue", make.name())
    out = make("Queue", name=make.name())
    wq.put({"job": 1})
    p = procs.start(ctx, _workers.get_and_ack, wq, out)
    assert out.get(timeout=30) == {"job": 1}
    p.join(30)
    assert p.exitcode == 0
    s = wq.stats()
    assert (s["acked"], wq.qsize()) == (1, 0)


def test_sigkilled_consumer_is_redelivered(make, ctx, procs):
    wq = make("WorkQueue", make.name(), visibility_timeout=1.0)
    out = make("Queue", name=make.name())
    mid = wq.put("work of a consumer that dies")
    p = procs.start(ctx, _workers.get_report_and_hang, wq, out)
    assert out.get(timeout=30) == (mid, 1)         # the child holds it now
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    d = wq.get(timeout=30)
    assert (d.id, d.delivery_count, d.value) == (mid, 2, "work of a consumer that dies")
    assert d.redelivered_because in ("consumer died", "visibility timeout")
    d.ack()
    assert wq.qsize() == 0
