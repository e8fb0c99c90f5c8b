"""pyqueue.WorkQueue: deliveries and their verbs (ack, nack with delay,
reject, extend, the context manager), visibility timeouts that redeliver
and fence the old holder, the delivery limit and the dead-letter queue
(reason, attempts, last error; inspection and requeue), dedup keys, delayed
puts, bad input, consumers in processes, a consumer SIGKILLed holding
messages, a producer killed inside a put, and a model test (with the batch
operations: put_many, get_many, Batch settles; the other batch tests are in
tests/contract/test_workqueue_contract.py and tests/test_workqueue_batch.py)."""
import collections
import json
import os
import pickle
import queue
import random
import signal
import struct
import time

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import pyqueue
from pyqueue import DeadLetter, DeliveryExpired, WorkQueue
from tests import _wq_workers as w
from tests._support import close_handles, shm_file, unique_name, wait_until
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


# -- dedup for the whole window (issue 9, item 7) -------------------------------

def test_dedup_holds_for_the_window_whatever_became_of_the_first(wqs):
    dlq = wqs(capacity_bytes=1 << 16)
    q = wqs(dedup_window=60.0, dead_letter=dlq, capacity_bytes=1 << 16)
    a = q.put("a", key="order-a")
    b = q.put("b", key="order-b")
    q.get(timeout=5).ack()
    q.get(timeout=5).reject("bad")
    assert q.qsize() == 0 and q.stats()["used_bytes"] == 0  # both done, the head passed them
    assert q.put("a again", key="order-a") == a  # acked: still a duplicate
    assert q.put("b again", key="order-b") == b  # dead-lettered: still a duplicate
    assert q.qsize() == 0 and q.stats()["deduplicated"] == 2
    # Past the window the key is free again.
    short = wqs(dedup_window=0.3, capacity_bytes=1 << 16)
    first = short.put(1, key="k")
    short.get(timeout=5).ack()
    t0 = time.monotonic()
    assert short.put(2, key="k") == first
    assert time.monotonic() - t0 < 0.3  # (the check above ran within the window)
    end = t0 + 0.3
    while time.monotonic() < end:  # the window is time: wait for its end
        time.sleep(end - time.monotonic())
    assert short.put(3, key="k") != first
    assert short.get(timeout=5).value == 3


def test_dedup_table_full_waits_for_the_oldest_key_then_full(wqs):
    q = wqs(dedup_keys=2, dedup_window=60.0, capacity_bytes=1 << 16)
    assert q.dedup_keys == 2
    k1, k2 = q.put(1, key="k1"), q.put(2, key="k2")
    with pytest.raises(queue.Full, match="dedup table holds 2 keys"):
        q.put(3, key="k3", block=False)
    with pytest.raises(queue.Full, match="dedup"):
        q.put(3, key="k3", timeout=0.1)
    assert (q.put(1, key="k1"), q.put(2, key="k2")) == (k1, k2)  # never pushed out
    q.put(4)  # no key: no table
    s = q.stats()
    assert s["dedup_full"] >= 2 and s["dedup_keys_used"] == 2 and q.qsize() == 3
    # A short window: the put waits for the oldest key to expire.
    t = wqs(dedup_keys=2, dedup_window=0.3, capacity_bytes=1 << 16)
    t.put(1, key="k1")
    t.put(2, key="k2")
    mid = t.put(3, key="k3", timeout=30)
    assert [t.get(timeout=5).value for _ in range(3)] == [1, 2, 3] and mid == 2
    assert t.stats()["dedup_full"] >= 1


@pytest.mark.timeout(240)
def test_killed_producers_retrying_enqueue_each_key_once(ctx, procs, wqs):
    """A soak: a producer puts keys k0..k(n-1) and is SIGKILLed at a random
    point (after some puts, maybe inside one), and the next one retries all
    of them, while the messages are consumed and acked: each key's message
    is delivered exactly once."""
    q = wqs(name=unique_name("wqk"), capacity_bytes=1 << 20, dedup_window=300.0)
    n, rounds = 150, 5
    rng = random.Random(9)
    got = collections.Counter()

    def drain():
        while True:
            try:
                d = q.get_nowait()
            except queue.Empty:
                return
            got[d.value] += 1
            d.ack()

    kills = 0
    for r in range(rounds):
        p = procs.start(ctx, w.put_keys, q, n, 0.002)
        if r == rounds - 1:
            break  # the last one finishes
        target = rng.randrange(1, n)
        s0 = q.stats()

        def progressed():
            drain()
            s = q.stats()
            return (s["enqueued"] + s["deduplicated"] - s0["enqueued"] - s0["deduplicated"]
                    >= target or not p.is_alive())

        wait_until(progressed, timeout=60, interval=0.0005)
        os.kill(p.pid, signal.SIGKILL)
        p.join(30)
        kills += p.exitcode == -signal.SIGKILL
    p.join(120)
    assert p.exitcode == 0
    wait_until(lambda: drain() or q.qsize() == 0, timeout=30)
    drain()
    assert kills >= 2  # most rounds end in a kill in the middle
    assert sorted(got) == list(range(n))
    assert [v for v, c in got.items() if c != 1] == []  # none twice
    s = q.stats()
    assert s["enqueued"] == n and s["acked"] == n and s["deduplicated"] > 0


# -- dead-lettering always completes (issue 9, item 11) ------------------------

class Grows:
    """Pickles larger each time it is unpickled and pickled again."""

    def __init__(self, blob):
        self.blob = blob

    def __reduce__(self):
        return (Grows, (self.blob + b"+" * 6000,))


def test_max_size_messages_land_in_the_dead_letter_queue_intact(wqs):
    dlq = wqs(capacity_bytes=1 << 16)
    q = wqs(capacity_bytes=1 << 16, dead_letter=dlq, max_deliveries=1)
    room = dlq.max_message_bytes - pyqueue.workqueue.DEAD_LETTER_OVERHEAD
    assert q.max_message_bytes == room
    big_bytes = b"\xff" * room
    big_str = "\U0001F600" * (room // 4)  # 4 UTF-8 bytes each
    huge_reason = "\U0001F600" * 5000
    q.put(big_bytes)
    q.put(big_str)
    q.put(Grows(b"g" * (room - 6200)))
    q.get(timeout=5).reject(huge_reason)  # reject
    d = q.get(timeout=5)
    d.value = "changed by the consumer"
    d.nack(error=RuntimeError(huge_reason))  # the last nack
    q.get(timeout=5).reject()
    assert q.qsize() == 0 and q.stats()["dead_pending"] == 0
    dls = dlq.dead_letters()
    assert [x.value for x in dls[:2]] == [big_bytes, big_str]  # as put, not as changed
    assert dls[0].reason.startswith("rejected: \U0001F600") and len(dls[0].reason) <= 256
    assert dls[0].reason.endswith("[truncated]")
    assert len(dls[1].last_error) <= 256 and dls[1].reason == "delivered 1 times, last: nacked"
    # Its value pickles larger than it was put: the DeadLetter goes out of
    # band in the dead-letter queue (tests/test_workqueue_oob.py), value and all.
    assert isinstance(dls[2].value, Grows) and dls[2].raw is None


def test_dead_letter_queue_smaller_than_the_queue_was_made_for_is_refused(wqs):
    big = wqs(capacity_bytes=1 << 20)
    q = wqs(name=unique_name("wqs"), capacity_bytes=1 << 20, dead_letter=big)
    assert q.max_message_bytes == big.max_message_bytes - pyqueue.workqueue.DEAD_LETTER_OVERHEAD
    # The dead-letter queue made anew, smaller, under the same name (another
    # name would be a settings mismatch, tests/test_settings.py).
    big.close()
    big.unlink()
    small = wqs(name=big.name, capacity_bytes=1 << 16)
    with pytest.raises(ValueError, match="do not fit in dead-letter queue"):
        WorkQueue(q.name, dead_letter=small)
    assert q.put("still usable") == 0


@pytest.mark.timeout(60)
def test_full_dead_letter_queue_parks_the_message_until_it_drains(wqs):
    dlq = wqs(capacity_bytes=1 << 16, max_in_flight=2)
    q = wqs(capacity_bytes=1 << 16, dead_letter=dlq, max_deliveries=1)
    q.dead_letter_timeout = 0.05
    q.dead_letter_retry = 0.2
    dlq.put("filler 1")
    dlq.put("filler 2")  # full: 2 messages at most
    q.put("poison")
    q.put("last try")
    q.put("fine")
    q.get(timeout=5).reject("bad")  # returns: parked, not blocked for ever
    q.get(timeout=5).nack(error="failed")  # its last delivery: parked too
    s = q.stats()
    assert s["dead_pending"] == 2 and s["dead_letter_parked"] == 2 and q.qsize() == 3
    d = q.get(timeout=5)  # the others go on meanwhile
    assert d.value == "fine"
    d.ack()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.5)  # retries find the dead-letter queue still full
    assert q.qsize() == 2 and q.stats()["dead_letter_parked"] >= 3
    for _ in range(2):
        dlq.get(timeout=5).ack()  # it drains
    assert wait_until(lambda: q.get_nowait if False else _settled(q), timeout=30)
    assert [x.value for x in dlq.dead_letters()] == ["poison", "last try"]
    assert q.stats()["dead_lettered"] == 2


def _settled(q):
    try:
        q.get(timeout=0.05)
    except queue.Empty:
        pass
    return q.qsize() == 0


def test_stream_processor_over_messages_that_go_dead_does_not_crash_loop(wqs, ctx):
    dlq = wqs(capacity_bytes=1 << 16, max_in_flight=2)
    q = wqs(capacity_bytes=1 << 16, dead_letter=dlq, max_deliveries=2, max_in_flight=8)
    big = b"p" * q.max_message_bytes
    for _ in range(4):
        q.put(big)
    with pyqueue.StreamProcessor(q, w.always_fails, workers=1,
                                 start_method=ctx.get_start_method()) as sp:
        # Two fit in the dead-letter queue; the others are parked until it drains.
        assert wait_until(lambda: len(dlq.dead_letters()) == 2, timeout=60)
        for _ in range(2):
            got = dlq.get(timeout=30)
            assert got.value.value == big
            got.ack()
        assert wait_until(lambda: q.qsize() == 0, timeout=60)
        assert sp.stats()["restarts"] == 0
    assert [x.value for x in dlq.dead_letters()] == [big, big]
    assert q.stats()["dead_lettered"] == 4


# -- a damaged tail (issue 9, item 10) ----------------------------------------

@pytest.mark.timeout(60)
def test_damaged_tail_is_an_error_not_an_endless_scan(wqs):
    q = wqs(name=unique_name("wqc"), capacity_bytes=1 << 16)
    for i in range(3):
        q.put(i)
    with open(os.path.join("/dev/shm", "pyqueue." + q.name), "r+b") as f:
        f.seek(pyqueue._workq.TAIL_OFFSET)
        f.write(struct.pack("<Q", (1 << 63) + 5))
    with pytest.raises(pyqueue.SegmentMismatch, match="corrupt"):
        q.dead_letters()
    with pytest.raises(pyqueue.SegmentMismatch, match="corrupt"):
        q.get(timeout=1)
    s = q.stats()  # bounded too
    assert s["depth"] == 0
    with open(os.path.join("/dev/shm", "pyqueue." + q.name), "r+b") as f:
        f.seek(pyqueue._workq.TAIL_OFFSET)
        f.write(struct.pack("<Q", 3))
    assert [x.value for x in [q.get(timeout=5) for _ in range(3)]] == [0, 1, 2]


# -- huge and bad times (issue 9, item 17) ------------------------------------

@pytest.mark.parametrize("huge", [float("inf"), 1e10, 9.3e9, 1e300])
def test_huge_times_saturate(wqs, huge):
    q = wqs(capacity_bytes=1 << 16, visibility_timeout=huge, dedup_window=huge)
    assert q.visibility_timeout >= 9.2e9 and q.dedup_window >= 9.2e9
    q.put("later", delay=huge)
    q.put("now")
    d = q.get(timeout=5)
    assert d.value == "now"
    d.extend(huge)
    d.nack(delay=huge)
    s = q.stats()
    assert s["delayed"] == 2 and s["in_flight"] == 0
    with pytest.raises(queue.Empty):
        q.get(timeout=huge if huge < 1e9 else 0.05)
    p = pyqueue.Queue()
    try:
        p.put(1)
        assert p.get(timeout=huge) == 1  # a deadline that far is none
    finally:
        p.unlink()
        p.close()


@pytest.mark.parametrize("bad", [float("nan"), -1.0, float("-inf")])
def test_bad_times_are_value_errors(wqs, bad):
    q = wqs(capacity_bytes=1 << 16)
    with pytest.raises(ValueError, match="delay"):
        q.put(1, delay=bad)
    q.put(1)
    d = q.get(timeout=5)
    with pytest.raises(ValueError, match="delay"):
        d.nack(delay=bad)
    with pytest.raises(ValueError, match="seconds"):
        d.extend(bad)
    d.ack()  # still held: nothing changed
    for what in ("visibility_timeout", "dedup_window"):
        with pytest.raises(ValueError, match=what):
            WorkQueue(**{what: bad})


FAR = 3600.0     # a delay or an extension that never comes due in a test
SHORT = 0.03     # one that does: let_time_pass waits for it
EPS = 1e-6
# Which of the held messages (or batches) a rule settles. Time is real, so
# what is held at a step varies from run to run: a rule's draws must not
# depend on it (Hypothesis replays a choice sequence and fails with
# FlakyStrategyDefinition when a precondition or a sampled_from over held
# messages draws differently). A fixed-range index, taken modulo, does not.
PICK = st.integers(0, 63)


class _BatchItem:
    """One message of a Batch, with the verbs of a Delivery (each settles
    that position alone)."""

    def __init__(self, batch, i):
        self.batch, self.i = batch, i
        self.id = batch.ids[i]
        self.delivery_count = batch.delivery_counts[i]
        self.value = batch.values[i]

    def ack(self):
        self.batch.ack([self.i])

    def nack(self, delay=0.0):
        self.batch.nack([self.i], delay=delay)

    def reject(self, reason):
        self.batch.reject([self.i], reason)

    def extend(self, seconds):
        self.batch.extend(seconds, [self.i])


class WorkQueueModel(RuleBasedStateMachine):
    """Against a model of each message's state: deliveries and counts,
    what is dead-lettered and why; delays (of puts and nacks), extend, and
    dedup keys (whatever became of the first message; a full table).
    Batches too: put_many, get_many (messages held as _BatchItems, settled
    alone by settle, or many with one Batch call by settle_batch).
    Time is real: a message's due time is known as an interval (the call
    that set it began and ended), and a get may deliver a message whose
    interval straddles it or not, but never one surely not due, and
    always the oldest surely due."""

    def __init__(self):
        super().__init__()
        self.dlq = WorkQueue(capacity_bytes=1 << 20)
        self.q = WorkQueue(max_deliveries=3, dead_letter=self.dlq, visibility_timeout=60.0,
                           dedup_window=FAR, dedup_keys=4, capacity_bytes=1 << 20)
        self.model = {}     # id -> {"value", "state", "count", "lo", "hi"} (due in [lo, hi])
        self.held = {}      # id -> Delivery
        self.dead = []      # (value, reason prefix)
        self.keys = {}      # dedup key -> the id it was first put with
        self.dups = 0
        self.n = 0

    def _new(self, mid, lo=0.0, hi=0.0):
        self.model[mid] = {"value": self.n, "state": "available", "count": 0, "lo": lo, "hi": hi}
        self.n += 1

    @rule()
    def put(self):
        self._new(self.q.put(self.n))

    @rule(delay=st.sampled_from([SHORT, SHORT, FAR]))
    def put_delayed(self, delay):
        t0 = time.monotonic()
        mid = self.q.put(self.n, delay=delay)
        self._new(mid, t0 + delay, time.monotonic() + delay)

    @rule(k=st.integers(1, 3), delay=st.sampled_from([0.0, 0.0, SHORT]))
    def put_many(self, k, delay):
        t0 = time.monotonic()
        ids = self.q.put_many([self.n + i for i in range(k)], delay=delay)
        t1 = time.monotonic()
        assert ids == sorted(ids) and len(set(ids)) == k
        for mid in ids:
            self._new(mid, t0 + delay if delay else 0.0, t1 + delay if delay else 0.0)

    @rule(keys=st.lists(st.sampled_from("abcdef"), min_size=1, max_size=3))
    def put_many_keyed(self, keys):
        if len(set(self.keys) | set(keys)) > 4:  # put_keyed covers a full table
            return
        values = [self.n + i for i in range(len(keys))]
        ids = self.q.put_many(values, keys=keys)
        for key, mid, v in zip(keys, ids, values):
            if key in self.keys:  # a repeat (maybe of one earlier in this batch)
                assert mid == self.keys[key]
                self.dups += 1
            else:
                self.keys[key] = mid
                self.model[mid] = {"value": v, "state": "available", "count": 0,
                                   "lo": 0.0, "hi": 0.0}
        self.n += len(keys)

    @rule(key=st.sampled_from("abcdef"))
    def put_keyed(self, key):
        if key in self.keys:  # a repeat: dropped, whatever became of the first
            assert self.q.put("repeat", key=key, block=False) == self.keys[key]
            self.dups += 1
        elif len(self.keys) == 4:  # the table is full (nothing expires in FAR)
            with pytest.raises(queue.Full):
                self.q.put(self.n, key=key, block=False)
        else:
            mid = self.q.put(self.n, key=key)
            self.keys[key] = mid
            self._new(mid)

    @rule()
    def let_time_pass(self):
        """Until every message delayed by SHORT is due."""
        due = [m["hi"] for m in self.model.values()
               if m["state"] == "available" and m["hi"] < time.monotonic() + 2 * SHORT]
        end = max(due, default=0.0) + EPS
        while time.monotonic() < end:
            time.sleep(end - time.monotonic())

    @rule()
    def get(self):
        self._get()

    @rule(k=st.sampled_from([1, 2, 5, 20]))
    def get_many(self, k):
        """One scan under the lock: the messages come in id order, each
        one that may be due; every one surely due before the last taken
        (all of them when the scan did not fill k entries) is taken or, out
        of deliveries, moved to the dead-letter queue."""
        t0 = time.monotonic()
        try:
            b = self.q.get_many(k, block=False)
        except queue.Empty:
            b = None
        t1 = time.monotonic()
        ids = [] if b is None else b.ids
        assert ids == sorted(ids) and len(ids) <= k
        moved = [x.id for x in self.dlq.dead_letters()[len(self.dead):]]
        available = sorted(i for i, m in self.model.items() if m["state"] == "available")
        surely = [i for i in available if self.model[i]["hi"] + EPS <= t0]
        for mid in moved:
            m = self.model[mid]
            assert mid in available and m["count"] >= 3 and m["lo"] - EPS <= t1, mid
            m["state"] = "dead"
            self.dead.append((m["value"], "delivered 3 times"))
        for mid in ids:
            m = self.model[mid]
            assert mid in available and m["count"] < 3 and m["lo"] - EPS <= t1, mid
        taken = set(ids) | set(moved)
        if len(ids) + len(moved) < k:
            assert set(surely) <= taken, (surely, taken)
        else:
            assert {i for i in surely if i < max(ids, default=-1)} <= taken
        for i, mid in enumerate(ids):
            m = self.model[mid]
            m["count"] += 1
            m["state"] = "held"
            item = _BatchItem(b, i)
            assert item.delivery_count == m["count"] and item.value == m["value"]
            self.held[mid] = item

    @rule(pick=PICK, verb=st.sampled_from(["ack", "nack", "nack later"]))
    def settle_batch(self, pick, verb):
        """ack or nack, with one Batch call, the messages of a batch still
        held (in the model); nothing when no batch is held."""
        batches = {}
        for mid, d in sorted(self.held.items()):
            if isinstance(d, _BatchItem):
                batches.setdefault(d.batch, []).append(mid)
        if not batches:
            return
        mids = list(batches.values())[pick % len(batches)]
        b = self.held[mids[0]].batch
        positions = [self.held[mid].i for mid in mids]
        t0 = time.monotonic()
        if verb == "ack":
            b.ack(positions)
        else:
            delay = SHORT if verb == "nack later" else 0.0
            b.nack(positions, delay=delay)
        t1 = time.monotonic()
        for mid in mids:
            del self.held[mid]
            m = self.model[mid]
            if verb == "ack":
                m["state"] = "acked"
            elif m["count"] >= 3:
                m["state"] = "dead"
                self.dead.append((m["value"], "delivered 3 times"))
            else:
                delay = SHORT if verb == "nack later" else 0.0
                m.update(state="available", lo=t0 + delay, hi=t1 + delay)

    @rule()
    def drain(self):
        """Ack all held and all that come due: the head passes every
        message but those delayed by FAR (so keyed repeats meet done
        messages the head has passed)."""
        for mid, d in sorted(self.held.items()):
            d.ack()
            self.model[mid]["state"] = "acked"
        self.held.clear()
        self.let_time_pass()
        while True:
            d = self._get()
            if d is None:
                return
            del self.held[d.id]
            d.ack()
            self.model[d.id]["state"] = "acked"

    def _get(self):
        t0 = time.monotonic()
        try:
            d = self.q.get(block=False)
        except queue.Empty:
            d = None
        t1 = time.monotonic()
        allowed, dying = set(), []
        for mid in sorted(i for i, m in self.model.items() if m["state"] == "available"):
            m = self.model[mid]
            if m["hi"] + EPS <= t0:  # surely due
                if m["count"] >= 3:  # out of deliveries: moved on the way
                    dying.append(mid)
                    continue
                allowed.add(mid)
                break
            if m["lo"] - EPS <= t1:  # maybe due
                assert m["count"] < 3
                allowed.add(mid)
        else:
            allowed.add(None)
        got = None if d is None else d.id
        assert got in allowed, (got, allowed)
        for mid in dying:
            if got is None or mid < got:
                self.model[mid]["state"] = "dead"
                self.dead.append((self.model[mid]["value"], "delivered 3 times"))
        if d is None:
            return None
        m = self.model[d.id]
        m["count"] += 1
        m["state"] = "held"
        assert d.delivery_count == m["count"] and d.value == m["value"]
        self.held[d.id] = d
        return d

    @rule(pick=PICK, verb=st.sampled_from(["ack", "nack", "nack later", "reject", "expire",
                                           "keep"]))
    def settle(self, pick, verb):
        """Settle one held message (nothing when none is held)."""
        if not self.held:
            return
        held = sorted(self.held)
        mid = held[pick % len(held)]
        d = self.held[mid]
        m = self.model[mid]
        t0 = time.monotonic()
        if verb == "keep":
            d.extend(FAR)  # still held: not delivered again
            return
        del self.held[mid]
        if verb == "ack":
            d.ack()
            m["state"] = "acked"
        elif verb.startswith("nack"):
            delay = SHORT if verb == "nack later" else 0.0
            d.nack(delay=delay)
            if m["count"] >= 3:
                m["state"] = "dead"
                self.dead.append((m["value"], "delivered 3 times"))
            else:
                m.update(state="available", lo=t0 + delay, hi=time.monotonic() + delay)
        elif verb == "reject":
            d.reject("bad")
            m["state"] = "dead"
            self.dead.append((m["value"], "rejected: bad"))
        else:
            d.extend(0)  # its deadline is now: available again (or dead, next get)
            m.update(state="available", lo=t0, hi=time.monotonic())

    @invariant()
    def counts_agree(self):
        s = self.q.stats()
        states = collections.Counter(m["state"] for m in self.model.values())
        assert s["in_flight"] == states["held"]
        assert s["depth"] + s["delayed"] == states["available"]
        assert s["acked"] == states["acked"]
        assert s["enqueued"] == len(self.model) and s["deduplicated"] == self.dups
        assert s["dedup_keys_used"] == len(self.keys)
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


# ---- serializer= ------------------------------------------------------------

JSON = (w.json_dumps, w.json_loads)


def test_serializer_round_trip_across_processes(ctx, procs, wqs):
    """JSON through a work queue both ways between processes: the handles
    travel with their serializer, bytes-free values come back as JSON
    made them (a tuple as a list), and the segment holds JSON text."""
    q = wqs(capacity_bytes=1 << 20, serializer=JSON)
    back = wqs(capacity_bytes=1 << 20, serializer=JSON)
    values = [{"n": i, "s": "é" * i, "t": (i, None)} for i in range(6)] + ["plain", 7]
    q.put_many(values[:3])
    for v in values[3:]:
        q.put(v)
    p = procs.start(ctx, w.echo_json, q, back, len(values))
    got = []
    while len(got) < len(values):
        b = back.get_many(len(values), timeout=30)
        got.extend(b.values)
        b.ack()
    p.join(30)
    assert p.exitcode == 0
    assert sorted((g["echo"] for g in got), key=json.dumps) == sorted(
        (json.loads(json.dumps(v)) for v in values), key=json.dumps)
    assert {g["pid"] for g in got} == {p.pid}
    # Every value, str included, went through dumps: JSON text in the ring.
    q.put("plain")
    raw, typ = q._copy(q._bounds()[1] - 1)[:2]
    assert raw == b'"plain"' and typ == 5


def test_serializer_errors_reach_the_caller_and_leave_the_queue_usable(wqs):
    q = wqs(capacity_bytes=1 << 20, serializer=JSON)
    with pytest.raises(TypeError):
        q.put({1, 2})  # not JSON: dumps raises, nothing is put
    with pytest.raises(TypeError):
        q.put_many([{"ok": 1}, object()])  # nothing of the batch is put
    assert q.stats()["enqueued"] == 0
    q.put({"ok": 2})
    d = q.get(timeout=5)
    assert d.value == {"ok": 2}
    d.ack()


def test_serializer_failing_loads_is_poison_dead_lettered_with_its_bytes(wqs):
    """A payload the serializer's loads rejects is handled as an
    undecodable pickle is: rejected to the dead-letter queue with the bytes
    that were put, and the consumer gets the next message."""
    dlq = wqs(capacity_bytes=1 << 20, max_deliveries=None)
    q = wqs(capacity_bytes=1 << 20, dead_letter=dlq,
            serializer=(w.json_dumps, lambda b: {"v": json.loads(bytes(b))["v"]}))
    q.put({"no": "v"})       # loads raises KeyError
    q.put({"v": 1})
    d = q.get(timeout=5)
    assert d.value == {"v": 1}
    d.ack()
    q.put({"no": "v again"})
    q.put({"v": 2})
    b = q.get_many(10, timeout=5)
    assert b.values == [{"v": 2}]
    b.ack()
    dead = dlq.dead_letters()
    assert [x.raw for x in dead] == [b'{"no": "v"}', b'{"no": "v again"}']
    assert all(x.value is None and "undecodable: KeyError" in x.reason for x in dead)


def test_serializer_setting_mismatch_on_open(wqs):
    made_plain = wqs(capacity_bytes=1 << 20)
    with pytest.raises(ValueError, match="exists with other settings: serializer"):
        WorkQueue(made_plain.name, serializer=JSON)
    with pytest.raises(ValueError, match="exists with other settings: serializer"):
        WorkQueue.open(made_plain.name, serializer=JSON)
    made_json = wqs(capacity_bytes=1 << 20, serializer=JSON)
    with pytest.raises(pyqueue.PyQueueError, match="custom serializer"):
        WorkQueue.open(made_json.name)
    with pytest.raises(pyqueue.PyQueueError, match="custom serializer"):
        WorkQueue(made_json.name)
    with pytest.raises(TypeError, match="serializer"):
        WorkQueue(made_json.name, serializer=json.dumps)
    again = wqs(made_json.name, serializer=JSON)
    again.put([1])
    d = made_json.get(timeout=5)
    assert d.value == [1]
    d.ack()


def test_plain_handle_refuses_a_custom_record(wqs):
    """A handle without the serializer never hands a custom record's bytes
    out as a value: (the flag is cleared by hand, as a writer of the
    segment can) the record is undecodable, dead-lettered."""
    q = wqs(capacity_bytes=1 << 20, serializer=JSON)
    q.put({"a": 1})
    with open(shm_file(q.name), "r+b") as f:
        f.seek(PARAMS_USER0)
        assert struct.unpack("<Q", f.read(8))[0] == 1
        f.seek(PARAMS_USER0)
        f.write(struct.pack("<Q", 0))
    plain = wqs(q.name)
    with pytest.raises(queue.Empty):
        plain.get(timeout=0.2)
    assert plain.stats()["dead_lettered"] == 1


# pq_segment_header.params[PQ_WQ_PARAM_USER0] (csrc/pq_segment.h, pq_wq.h).
PARAMS_USER0 = 72 + 8 * 6
