"""pyqueue.WorkQueue: deliveries and their verbs (ack, nack with delay,
reject, extend, the context manager), visibility timeouts that redeliver
and fence the old holder, the delivery limit and the dead-letter queue
(reason, attempts, last error; inspection and requeue), dedup keys, delayed
puts, bad input, consumers in processes, a consumer SIGKILLed holding
messages, a producer killed inside a put, and a model test."""
import os
import pickle
import queue
import signal
import time

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import pyqueue
from pyqueue import DeadLetter, DeliveryExpired, WorkQueue
from tests import _wq_workers as w
from tests._support import close_handles, unique_name, wait_until
from tests.test_crash import kill_stopped, needs_faults, start_stopped


@pytest.fixture
def wqs():
    made = []

    def make(*args, **kwargs):
        q = WorkQueue(*args, **kwargs)
        made.append(q)
        return q

    yield make
    # Dead-letter queues the work queues made themselves go too.
    dlqs = [q._dlq for q in made if q._dlq is not None and q._dlq not in made]
    close_handles(made + dlqs)


def test_put_get_ack(wqs):
    q = wqs()
    ids = [q.put(b"raw"), q.put("text"), q.put({"order": 7})]
    assert ids == [0, 1, 2]
    assert q.qsize() == 3 and not q.empty()
    got = [q.get(timeout=5) for _ in ids]
    assert [d.value for d in got] == [b"raw", "text", {"order": 7}]
    assert [d.id for d in got] == ids
    assert all(d.delivery_count == 1 and d.redelivered_because is None for d in got)
    assert all(abs(d.enqueued_at - time.time()) < 60 for d in got)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    s = q.stats()
    assert s["in_flight"] == 3 and s["depth"] == 0 and s["enqueued"] == 3
    for d in got:
        d.ack()
        assert d.settled == "acked"
    with pytest.raises(DeliveryExpired):
        got[0].ack()  # settled already
    s = q.stats()
    assert s["acked"] == 3 and s["in_flight"] == 0 and s["used_bytes"] == 0
    assert q.qsize() == 0 and q.empty()


def test_nack_redelivers_later(wqs):
    q = wqs()
    q.put("job")
    d = q.get(timeout=5)
    d.nack(delay=0.3)
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.1)
    assert q.stats()["delayed"] == 1
    d2 = q.get(timeout=5)
    assert time.monotonic() - t0 >= 0.25
    assert (d2.id, d2.value, d2.delivery_count, d2.redelivered_because) == (d.id, "job", 2, "nacked")
    d2.ack()
    assert q.stats()["redelivered"] == 1


def test_visibility_timeout_redelivers_and_fences_the_old_holder(wqs):
    q = wqs(visibility_timeout=0.2)
    q.put("slow job")
    first = q.get(timeout=5)
    second = q.get(timeout=5)  # waits for first's deadline
    assert (second.id, second.delivery_count, second.redelivered_because) == (
        first.id, 2, "visibility timeout")
    with pytest.raises(DeliveryExpired):
        first.ack()
    with pytest.raises(DeliveryExpired):
        first.extend(10)
    second.extend(5)  # keeps it past the 0.2 s
    with pytest.raises(queue.Empty):
        q.get(timeout=0.4)
    second.ack()
    assert q.stats()["acked"] == 1


def test_delivery_limit_dead_letters_with_reason_and_error(wqs):
    dlq = wqs()
    q = wqs(max_deliveries=3, dead_letter=dlq)
    assert q.dead_letter is dlq and q.stats()["dead_letter"] == dlq.name
    q.put({"order": 1})
    for i in range(3):
        d = q.get(timeout=5)
        assert d.delivery_count == i + 1
        d.nack(error=f"card declined {i}")
    with pytest.raises(queue.Empty):
        q.get(timeout=0.1)
    (dl,) = dlq.dead_letters()
    assert isinstance(dl, DeadLetter)
    assert dl.value == {"order": 1} and dl.attempts == 3
    assert dl.reason == "delivered 3 times, last: nacked" and dl.last_error == "card declined 2"
    assert dl.queue == q.name and dl.id == 0 and dl.raw is None
    s = q.stats()
    assert s["dead_lettered"] == 1 and q.qsize() == 0
    # By visibility timeouts: the delivery after the last one moves it.
    t = wqs(max_deliveries=2, visibility_timeout=0.1, dead_letter=dlq)
    t.put("stuck")
    t.get(timeout=5)
    t.get(timeout=5)
    with pytest.raises(queue.Empty):
        t.get(timeout=0.5)
    dls = dlq.dead_letters()
    assert [x.value for x in dls] == [{"order": 1}, "stuck"]
    assert dls[1].reason == "delivered 2 times, last: visibility timeout"
    assert dls[1].last_error is None


def test_reject_context_manager_and_requeue(wqs):
    dlq = wqs()
    q = wqs(dead_letter=dlq.name)
    q.put("poison")
    q.put("fine")
    q.put("flaky")
    q.get(timeout=5).reject("cannot parse")
    with q.get(timeout=5) as d:
        assert d.value == "fine"
    assert d.settled == "acked"
    with pytest.raises(RuntimeError):
        with q.get(timeout=5) as d:
            raise RuntimeError("gateway down")
    assert d.settled == "nacked"
    again = q.get(timeout=5)
    assert (again.value, again.delivery_count) == ("flaky", 2)
    again.ack()
    (dl,) = dlq.dead_letters()
    assert (dl.value, dl.reason, dl.last_error, dl.attempts) == (
        "poison", "rejected: cannot parse", "cannot parse", 1)
    # Inspection does not take them; requeue puts the values back.
    assert len(dlq.dead_letters()) == 1
    assert dlq.requeue() == 1
    assert dlq.dead_letters() == []
    back = q.get(timeout=5)
    assert back.value == "poison" and back.delivery_count == 1
    back.ack()


def test_no_dead_letter_queue_drops_and_counts(wqs):
    q = wqs(max_deliveries=1)
    q.put("x")
    q.get(timeout=5).nack()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.1)
    assert q.stats()["dead_lettered"] == 1 and q.dead_letter is None


def test_dedup_keys(wqs):
    q = wqs(dedup_window=0.3)
    a = q.put({"order": 1}, key="order-1")
    assert q.put({"order": 1}, key="order-1") == a  # a retry: dropped
    b = q.put({"order": 2}, key=b"order-2")
    assert b != a
    assert q.qsize() == 2 and q.stats()["deduplicated"] == 1
    time.sleep(0.35)  # the window is time: let it pass
    assert q.put({"order": 1}, key="order-1") not in (a, b)
    with pytest.raises(TypeError):
        q.put("x", key=1)


def test_delayed_put(wqs):
    q = wqs()
    q.put("later", delay=0.3)
    q.put("now")
    assert q.get(timeout=5).value == "now"
    t0 = time.monotonic()
    d = q.get(timeout=5)
    assert d.value == "later" and time.monotonic() - t0 > 0.15


class Bomb:
    def __reduce__(self):
        return (_explode, ())


def _explode():
    raise RuntimeError("cannot be unpickled")


def test_undecodable_message_is_dead_lettered_with_its_bytes(wqs):
    dlq = wqs()
    q = wqs(dead_letter=dlq)
    q.put(Bomb())
    q.put("next")
    assert q.get(timeout=5).value == "next"
    (dl,) = dlq.dead_letters()
    assert dl.value is None and dl.raw == pickle.dumps(Bomb(), 5)
    assert dl.reason.startswith("undecodable: RuntimeError")


def test_bad_input_and_errors(wqs):
    q = wqs(capacity_bytes=64 * 1024, max_in_flight=2)
    with pytest.raises(pyqueue.MessageTooLarge):
        q.put(b"x" * (q.max_message_bytes + 1))
    q.put(1)
    q.put(2)
    with pytest.raises(queue.Full):
        q.put(3, block=False)
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.1)
    d = q.get(timeout=5)
    d.ack()
    q.put(3)  # room again
    with pytest.raises(ValueError):
        q.put(4, delay=-1)
    with pytest.raises(ValueError):
        q.get(timeout=5).nack(delay=-1)
    for bad in ({"max_in_flight": 3}, {"visibility_timeout": 0}, {"max_deliveries": 0},
                {"perm": 0o1000}, {"dedup_keys": 5}):
        with pytest.raises(ValueError):
            WorkQueue(**bad)
    with pytest.raises(TypeError):
        WorkQueue(dead_letter=3)
    with pytest.raises(pyqueue.SegmentNotFound):
        WorkQueue.open(unique_name("missing"))
    with pytest.raises(TypeError):
        pickle.dumps(d)
    q.close()
    with pytest.raises(ValueError):
        q.put(1)


def test_open_by_name_and_pickle(wqs, spawn_ctx, procs):
    dlq = wqs(name=unique_name("dlq"))
    q = wqs(name=unique_name("wq"), visibility_timeout=7.5, max_deliveries=4, dead_letter=dlq)
    same = WorkQueue.open(q.name)
    assert (same.visibility_timeout, same.max_deliveries) == (7.5, 4)
    assert same.dead_letter.name == dlq.name
    same.close()
    q2 = pickle.loads(pickle.dumps(q))
    assert q2.name == q.name
    q2.close()
    for i in range(20):
        q.put(i)
    out = spawn_ctx.Queue()
    procs.start(spawn_ctx, w.consume_and_ack, q, out, 20)
    got = []
    while True:
        m = out.get(timeout=60)
        if m[0] == "done":
            break
        got.append(m[1])
    assert sorted(got) == list(range(20))
    assert procs.join_all() == [0]


def test_consumers_in_processes_ack_each_message_once(ctx, procs, wqs):
    q = wqs(capacity_bytes=1 << 20)
    n = 600
    out = ctx.Queue()
    for _ in range(3):
        procs.start(ctx, w.consume_and_ack, q, out, n)
    for i in range(n):
        q.put(i)
    acked, done = [], 0
    while done < 3:
        m = out.get(timeout=60)
        if m[0] == "done":
            done += 1
        else:
            acked.append(m[1])
    assert procs.join_all() == [0, 0, 0]
    assert sorted(acked) == list(range(n))  # each once: no message acked twice
    s = q.stats()
    assert s["acked"] == n and s["redelivered"] == 0 and q.qsize() == 0


def test_consumer_killed_holding_messages_they_come_again(ctx, procs, wqs):
    q = wqs(visibility_timeout=60.0)  # far away: the death is what frees them
    for i in range(5):
        q.put(i)
    out = ctx.Queue()
    p = procs.start(ctx, w.hold_then_hang, q, out, 3)
    held = out.get(timeout=60)
    assert [v for _, v, _ in held] == [0, 1, 2]
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    t0 = time.monotonic()
    got = [q.get(timeout=10) for _ in range(5)]
    assert time.monotonic() - t0 < 5  # not the 60 s timeout: its owner is dead
    by_value = {d.value: d for d in got}
    assert sorted(by_value) == [0, 1, 2, 3, 4]
    for v in (0, 1, 2):
        assert by_value[v].delivery_count == 2
        assert by_value[v].redelivered_because == "consumer died"
    assert by_value[3].delivery_count == 1
    for d in got:
        d.ack()


@needs_faults
@pytest.mark.timeout(60)
def test_producer_killed_inside_a_put(ctx, procs, wqs):
    q = wqs(name=unique_name("wqp"))
    q.put("before")
    p = start_stopped(procs, ctx, w.armed_put, q, "mid_copy", ["victim"])
    kill_stopped(p)
    assert q.get(timeout=5).value == "before"
    with pytest.raises(queue.Empty):
        q.get(timeout=0.3)  # the half-written one is dropped, nothing wedges
    assert q.stats()["abandoned"] == 1
    q.put("victim", key="victim")  # its key was given back: not a duplicate
    assert q.get(timeout=5).value == "victim"


class WorkQueueModel(RuleBasedStateMachine):
    """Against a model of each message's state: deliveries and counts,
    what is dead-lettered and why; visibility timeouts are made to pass at
    once with extend(0)."""

    def __init__(self):
        super().__init__()
        self.dlq = WorkQueue()
        self.q = WorkQueue(max_deliveries=3, dead_letter=self.dlq, visibility_timeout=60.0)
        self.model = {}     # id -> {"state": ..., "count": n}
        self.held = {}      # id -> Delivery
        self.dead = []      # (value, reason prefix)
        self.n = 0

    @rule()
    def put(self):
        mid = self.q.put(self.n)
        self.model[mid] = {"value": self.n, "state": "available", "count": 0}
        self.n += 1

    def _oldest_available(self):
        ids = sorted(i for i, m in self.model.items() if m["state"] == "available")
        return ids[0] if ids else None

    def _next_deliverable(self):
        """The oldest available message, moving those out of deliveries to
        the dead letters on the way (as get() does)."""
        want = self._oldest_available()
        while want is not None and self.model[want]["count"] >= 3:
            self.model[want]["state"] = "dead"
            self.dead.append((self.model[want]["value"], "delivered 3 times"))
            want = self._oldest_available()
        return want

    @rule()
    def get(self):
        want = self._next_deliverable()
        try:
            d = self.q.get(block=False)
        except queue.Empty:
            assert want is None
            return
        assert d.id == want
        m = self.model[d.id]
        m["count"] += 1
        m["state"] = "held"
        assert d.delivery_count == m["count"] and d.value == m["value"]
        self.held[d.id] = d

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def settle(self, data):
        mid = data.draw(st.sampled_from(sorted(self.held)))
        verb = data.draw(st.sampled_from(["ack", "nack", "reject", "expire"]))
        d = self.held.pop(mid)
        m = self.model[mid]
        if verb == "ack":
            d.ack()
            m["state"] = "acked"
        elif verb == "nack":
            d.nack()
            if m["count"] >= 3:
                m["state"] = "dead"
                self.dead.append((m["value"], "delivered 3 times"))
            else:
                m["state"] = "available"
        elif verb == "reject":
            d.reject("bad")
            m["state"] = "dead"
            self.dead.append((m["value"], "rejected: bad"))
        else:
            d.extend(0)  # its deadline is now: available again (or dead, next get)
            m["state"] = "available"

    @invariant()
    def counts_agree(self):
        s = self.q.stats()
        held = sum(1 for m in self.model.values() if m["state"] == "held")
        assert s["in_flight"] == held
        assert s["acked"] == sum(1 for m in self.model.values() if m["state"] == "acked")
        dls = self.dlq.dead_letters()
        assert [(x.value) for x in dls] == [v for v, _ in self.dead]
        for x, (_, why) in zip(dls, self.dead):
            assert x.reason.startswith(why)

    def teardown(self):
        self.q.unlink()
        self.q.close()
        self.dlq.unlink()
        self.dlq.close()


TestWorkQueueModel = WorkQueueModel.TestCase
TestWorkQueueModel.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
