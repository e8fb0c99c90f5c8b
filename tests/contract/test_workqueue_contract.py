"""WorkQueue: the same assertions on every backend (shared memory, one
Redis, a Redis Cluster); tests/contract/conftest.py."""
import math
import os
import pickle
import queue
import signal
import time

import pytest

import pyqueue
from pyqueue.errors import DeliveryExpired, MessageTooLarge, SegmentMismatch, SegmentNotFound
from tests.contract import _workers
from tests.test_workqueue import Bomb

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


@pytest.mark.parametrize("how, where", [("reject", "before_put"), ("reject", "after_put"),
                                        ("nack", "before_put"), ("expired", "before_put"),
                                        ("expired", "after_put")])
def test_a_mover_killed_in_the_move_leaves_the_message_dead_lettered(make, backend_url, ctx,
                                                                       procs, how, where):
    # The move to the dead-letter queue is three steps (mark dead-pending,
    # put the DeadLetter, remove): a mover SIGKILLed between them leaves
    # the message dead-pending, and a get after the mover's death (shared
    # memory) or lease (Redis) moves it: in the dead-letter queue at least
    # once, at most twice, and gone from this queue. The mover is a
    # consumer that rejects, one that nacks the last delivery, or a get
    # that finds a message whose last delivery's visibility timeout passed
    # (how="expired": the get moves it on its way).
    dead = make("WorkQueue", make.name(), max_deliveries=None)
    wq = make("WorkQueue", make.name(), max_deliveries=1, visibility_timeout=0.5,
              dead_letter=dead)
    mid = wq.put({"order": "poison"})
    if how == "expired":
        held = wq.get(timeout=5)      # its only delivery, never settled
        assert held.id == mid
    else:
        wq.put("next")
    p = procs.start(ctx, _workers.reject_and_die_in_the_move, wq, where, how)
    p.join(30)
    died = time.monotonic()
    assert p.exitcode == -signal.SIGKILL
    assert wq.stats()["dead_pending"] == 1
    if how == "expired":
        wq.put("next")
    d = wq.get(timeout=30)
    assert d.value == "next"
    d.ack()
    if not backend_url.startswith("shm"):
        # Redis cannot see a mover die: its hold lasts its lease (3 s from
        # the mark, just before `died`), and a get meanwhile leaves the
        # message alone - also one that waits past the visibility timeout
        # (0.5 s) - asserted when the check surely fell in the lease.
        with pytest.raises(queue.Empty):
            wq.get(timeout=max(0.0, 1.0 - (time.monotonic() - died)))
        pending = wq.stats()["dead_pending"]
        if time.monotonic() - died < 2.0:
            assert pending == 1
    # A get moves it: on shared memory one that sees the mover dead (a get
    # looks for dead holders every 100 ms at most), on Redis one after the
    # dead mover's lease ended.
    deadline = time.monotonic() + 30
    while wq.stats()["dead_pending"] and time.monotonic() < deadline:
        with pytest.raises(queue.Empty):
            wq.get(timeout=0.25)
    s = wq.stats()
    assert (s["dead_pending"], s["in_flight"], s["depth"], wq.qsize()) == (0, 0, 0, 0)
    letters = dead.dead_letters()
    assert {(dl.id, dl.queue) for dl in letters} == {(mid, wq.name)}
    assert all(dl.value == {"order": "poison"} for dl in letters)
    # the dead mover's put (with its error text), then the second mover's
    why = {"reject": "rejected", "nack": "delivered 1 times, last: nacked",
           "expired": "delivered 1 times, last: visibility timeout"}[how]
    first = {"reject": ("rejected: bad input", "bad input"), "nack": (why, "bad input"),
             "expired": (why, None)}[how]
    reasons = [(dl.reason, dl.last_error) for dl in letters]
    assert reasons == ([(why, None)] if where == "before_put" else [first, (why, None)])


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


@pytest.mark.parametrize("setting, bad, error", [
    ("max_in_flight", 3, ValueError), ("max_in_flight", 1, ValueError),
    ("max_in_flight", 2.0, TypeError), ("dedup_keys", 3, ValueError),
    ("dedup_keys", 1 << 25, ValueError), ("dedup_keys", True, TypeError),
    ("visibility_timeout", 0, ValueError), ("visibility_timeout", -1, ValueError),
    ("visibility_timeout", math.nan, ValueError), ("visibility_timeout", "1", ValueError),
    ("dedup_window", -0.5, ValueError), ("dedup_window", True, ValueError),
    ("max_deliveries", 0, ValueError), ("max_deliveries", 1 << 31, ValueError),
    ("max_deliveries", 2.0, ValueError), ("perm", 0o1000, ValueError),
    ("perm", -1, ValueError), ("perm", True, ValueError)])
def test_bad_creation_setting(make, backend, setting, bad, error):
    # One check for every backend (pyqueue._api.check_workqueue_settings):
    # the error names the setting, and nothing is made.
    name = make.name()
    with pytest.raises(error, match=setting):
        make("WorkQueue", name, **{setting: bad})
    with pytest.raises(SegmentNotFound):
        backend.WorkQueue.open(name)
    make("WorkQueue", name).put("the name is still free")


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


# -- batches: put_many / get_many / Batch ----------------------------------------


def test_put_many_get_many_ack(make):
    wq = make("WorkQueue", make.name())
    ids = wq.put_many([b"a", "b", {"c": 1}, 4])
    assert ids == sorted(ids) and len(set(ids)) == 4
    b = wq.get_many(3)
    assert len(b) == 3 and bool(b)
    assert list(b) == [b"a", "b", {"c": 1}] and b.values == list(b) and b[2] == {"c": 1}
    assert b.ids == ids[:3] and b.delivery_counts == [1, 1, 1]
    assert b.redelivered_because == [None] * 3 and b.settled == [None] * 3
    assert all(abs(t - time.time()) < 60 for t in b.enqueued_at)
    assert repr(b) == "<pyqueue.Batch of 3 messages, 3 held>"
    assert wq.stats()["in_flight"] == 3
    b.ack()
    assert b.settled == ["acked"] * 3
    s = wq.stats()
    assert s["acked"] == 3 and s["in_flight"] == 0 and s["depth"] == 1
    with pytest.raises(ValueError, match="acked already"):
        b.ack([0])
    b.ack()  # nothing left to settle: a no-op
    last = wq.get_many(10)
    assert last.values == [4] and last.ids == ids[3:]
    last.ack()
    assert wq.qsize() == 0


def test_get_many_waits_then_empty(make):
    wq = make("WorkQueue", make.name())
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        wq.get_many(10, timeout=0.2)
    assert time.monotonic() - t0 >= 0.19
    with pytest.raises(queue.Empty):
        wq.get_many(10, block=False)
    with pytest.raises(ValueError):
        wq.get_many(0)
    wq.put("x")
    assert wq.get_many(10, timeout=5).values == ["x"]


def test_batch_settles_by_position_and_nack_redelivers(make):
    wq = make("WorkQueue", make.name(), max_deliveries=None)
    ids = wq.put_many(list(range(6)))
    b = wq.get_many(6)
    b.ack([0, -1])          # positions, negative from the end
    b.nack([1, 2], delay=0.0)
    assert b.settled == ["acked", "nacked", "nacked", None, None, "acked"]
    with pytest.raises(IndexError):
        b.ack([6])
    with pytest.raises(ValueError):
        b.nack([1])          # settled already: nothing settled
    with pytest.raises(ValueError):
        b.ack([3, 1])        # one of them settled: nothing settled, 3 neither
    assert b.settled[3:5] == [None, None]
    again = wq.get_many(10)
    assert again.values == [1, 2] and again.ids == ids[1:3]
    assert again.delivery_counts == [2, 2]
    assert again.redelivered_because == ["nacked", "nacked"]
    b.ack()                  # the rest: 3 and 4
    again.ack()
    s = wq.stats()
    assert s["acked"] == 6 and s["redelivered"] == 2 and wq.qsize() == 0


def test_batch_nack_with_delay(make):
    wq = make("WorkQueue", make.name())
    wq.put_many(["a", "b"])
    t0 = time.monotonic()
    wq.get_many(2).nack(delay=0.3)
    with pytest.raises(queue.Empty):
        wq.get_many(2, block=False)
    assert wq.stats()["delayed"] == 2
    b = wq.get_many(2, timeout=10)
    assert time.monotonic() - t0 >= 0.25
    assert b.values == ["a", "b"] and b.delivery_counts == [2, 2]
    b.ack()
    with pytest.raises(ValueError):
        b.nack(delay=-1)


def test_stale_messages_of_a_batch_are_reported_and_the_rest_settled(make):
    wq = make("WorkQueue", make.name(), max_deliveries=None)
    wq.put_many(["a", "b", "c"])
    b = wq.get_many(3)
    b.extend(0, [0])          # a: its deadline is now
    other = wq.get(timeout=5)  # the old holder of a loses it
    assert other.value == "a"
    for verb in (b.nack, b.reject, lambda indices: b.extend(60, indices)):
        with pytest.raises(DeliveryExpired) as ei:
            verb([0])
        assert ei.value.indices == [0]
    assert b.settled == [None, None, None]
    with pytest.raises(DeliveryExpired) as ei:
        b.ack()
    assert ei.value.indices == [0]
    assert b.settled == [None, "acked", "acked"]
    other.ack()
    assert wq.stats()["acked"] == 3 and wq.qsize() == 0


def test_an_ack_after_the_deadline_neither_loses_nor_doubles_a_message(make):
    """A Batch.ack() of messages whose visibility deadline passed, that
    another get made available again without delivering them yet: each
    is either acked (never delivered again) or reported stale (delivered
    again); the Redis ack checks that each is still held, not only its
    delivery count."""
    wq = make("WorkQueue", make.name(), max_deliveries=None)
    wq.put_many(["a", "b"])
    b = wq.get_many(2)
    b.extend(0)                # both deadlines: now
    other = wq.get(timeout=5)  # takes a again; b is available again too
    assert other.value == "a"
    try:
        b.ack()
        stale = []
    except DeliveryExpired as e:
        stale = e.indices
    assert 0 in stale
    other.ack()
    again = []
    while True:
        try:
            d = wq.get(timeout=0.5)
        except queue.Empty:
            break
        again.append(d.value)
        d.ack()
    assert again == (["b"] if 1 in stale else [])
    assert wq.stats()["acked"] == 2 and wq.qsize() == 0


def test_a_batch_position_given_twice_is_acked_once(make):
    wq = make("WorkQueue", make.name())
    wq.put_many(["a", "b"])
    b = wq.get_many(2)
    with pytest.raises(DeliveryExpired) as ei:
        b.ack([0, 0])                # the second: settled by the first
    assert ei.value.indices == [0]
    assert b.settled == ["acked", None]
    assert wq.stats()["acked"] == 1
    b.ack()
    assert wq.stats()["acked"] == 2 and wq.qsize() == 0


def test_batch_extend_keeps_it(make):
    wq = make("WorkQueue", make.name(), visibility_timeout=0.5)
    wq.put_many(["a", "b"])
    b = wq.get_many(2)
    b.extend(60)
    with pytest.raises(queue.Empty):
        wq.get_many(2, timeout=1.0)               # past 0.5 s: still held
    b.ack()
    assert wq.qsize() == 0


def test_batch_context_manager(make):
    wq = make("WorkQueue", make.name(), max_deliveries=None)
    wq.put_many([1, 2])
    with wq.get_many(2) as b:
        pass
    assert b.settled == ["acked", "acked"]
    wq.put_many([3, 4])
    with pytest.raises(RuntimeError):
        with wq.get_many(2) as b:
            b.ack([0])
            raise RuntimeError("boom")
    assert b.settled == ["acked", "nacked"]
    again = wq.get_many(2)
    assert again.values == [4] and again.redelivered_because == ["nacked"]
    again.ack()


def test_batch_is_not_picklable_nor_constructible(make):
    wq = make("WorkQueue", make.name())
    wq.put(1)
    b = wq.get_many(1)
    with pytest.raises(TypeError):
        pickle.dumps(b)
    with pytest.raises(TypeError):
        type(b)()
    b.ack()


def test_max_deliveries_with_batches_dead_letters(make):
    dead = make("WorkQueue", make.name(), max_deliveries=None)
    wq = make("WorkQueue", make.name(), max_deliveries=2, dead_letter=dead)
    wq.put_many(["a", "b", "c", "d"])
    wq.get_many(4).nack()
    b = wq.get_many(4)
    assert b.delivery_counts == [2, 2, 2, 2]
    b.nack([0, 1], error="bad")   # their last delivery: dead-lettered
    dls = dead.dead_letters()
    assert [(x.value, x.attempts, x.last_error) for x in dls] == [("a", 2, "bad"),
                                                                 ("b", 2, "bad")]
    assert all(x.reason == "delivered 2 times, last: nacked" for x in dls)
    b.reject([3], "poison")        # straight there, whatever its count
    b.extend(0, [2])  # c comes due again with 2 deliveries: out of them
    with pytest.raises(queue.Empty):
        wq.get_many(4, block=False)  # moved on the way, nothing delivered
    dls = dead.dead_letters()
    assert [x.value for x in dls] == ["a", "b", "d", "c"]
    assert dls[2].reason == "rejected: poison" and dls[2].last_error == "poison"
    assert dls[3].reason.startswith("delivered 2 times")
    assert wq.qsize() == 0 and wq.stats()["dead_lettered"] == 4


def test_get_many_moves_dead_and_poison_and_returns_the_rest(make):
    dead = make("WorkQueue", make.name(), max_deliveries=None)
    wq = make("WorkQueue", make.name(), max_deliveries=1, dead_letter=dead)
    wq.put_many(["a", "b"])
    wq.get_many(1).nack()          # a: out of deliveries, moved by the nack
    wq.put(Bomb())                 # undecodable
    wq.put("d")
    b = wq.get_many(10)
    assert b.values == ["b", "d"]
    dls = dead.dead_letters()
    assert [x.value for x in dls] == ["a", None]
    assert dls[1].reason.startswith("undecodable") and dls[1].raw is not None
    b.ack()
    assert wq.qsize() == 0


def test_put_many_dedup_keys_and_delay(make):
    wq = make("WorkQueue", make.name(), dedup_window=60.0)
    ids = wq.put_many(["a", "b", "a2", "c", "a3"], keys=["ka", None, "ka", b"kc", b"ka"])
    assert ids[2] == ids[0] == ids[4] and len(set(ids)) == 3   # repeated within the call
    assert wq.put_many(["again", "new"], keys=["kc", ""]) == [ids[3], ids[3] + 1]
    assert wq.put("twice", key="") == ids[3] + 1                # the empty key is a key
    assert wq.stats()["deduplicated"] == 4
    assert wq.put_many(["later"], delay=0.3) == [ids[3] + 2]
    assert wq.get_many(10).values == ["a", "b", "c", "new"]
    assert wq.get_many(10, timeout=10).values == ["later"]
    with pytest.raises(ValueError, match="keys"):
        wq.put_many(["x", "y"], keys=["k"])
    with pytest.raises(TypeError):
        wq.put_many(["x"], keys=[1])
    with pytest.raises(ValueError):
        wq.put_many(["x"], delay=-1)
    assert wq.put_many([]) == []
    assert wq.qsize() == 5


def test_put_many_larger_than_a_chunk(make):
    """More messages than one step puts (Redis: 256 per script; shared
    memory: 1024 per hold of the lock): all of them, in order, a key
    repeated across steps a duplicate."""
    wq = make("WorkQueue", make.name(), dedup_window=60.0)
    n = 1500
    keys = [None] * n
    keys[3] = keys[1400] = "same"
    ids = wq.put_many(list(range(n)), keys=keys)
    assert ids[1400] == ids[3]
    fresh = ids[:1400] + ids[1401:]
    assert fresh == list(range(fresh[0], fresh[0] + n - 1))
    got = []
    while len(got) < n - 1:
        b = wq.get_many(1000, timeout=5)
        got += b.values
        b.ack()
    assert got == [v for v in range(n) if v != 1400]
    assert wq.qsize() == 0 and wq.stats()["deduplicated"] == 1


def test_put_many_checks_sizes_before_putting_and_full_keeps_what_fit(make, backend_url):
    wq = make("WorkQueue", make.name(), capacity_bytes=1 << 16, max_in_flight=4)
    big = b"x" * (wq.max_message_bytes + 1)
    if backend_url != "shm://":  # shared memory sends it out of band (test_workqueue_oob.py)
        with pytest.raises(MessageTooLarge):
            wq.put_many([b"ok", big])
        assert wq.qsize() == 0  # nothing was put
    with pytest.raises(queue.Full) as ei:
        wq.put_many(list(range(6)), timeout=0.1)
    ids = ei.value.ids
    assert len(ids) == 4 and ids == list(range(ids[0], ids[0] + 4))
    with pytest.raises(queue.Full) as ei:
        wq.put_many(["no room"], block=False)
    assert ei.value.ids == []
    b = wq.get_many(10)
    assert b.values == [0, 1, 2, 3] and b.ids == ids
    b.ack()


def test_batch_ack_frees_the_room_at_once(make):
    wq = make("WorkQueue", make.name(), capacity_bytes=1 << 16, max_in_flight=8)
    for _ in range(3):
        assert len(wq.put_many(list(range(8)), block=False)) == 8
        with pytest.raises(queue.Full):
            wq.put_nowait("no room")
        b = wq.get_many(8, block=False)
        assert len(b) == 8
        b.ack()
    assert wq.stats()["acked"] == 24 and wq.qsize() == 0


def test_put_many_waits_for_room_a_consumer_makes(make, ctx, procs):
    wq = make("WorkQueue", make.name(), max_in_flight=8)
    out = make("Queue", name=make.name())
    procs.start(ctx, _workers.batch_consume_and_ack, wq, out, 100, 5)
    ids = wq.put_many(list(range(100)), timeout=60)
    assert len(ids) == 100 and ids == sorted(ids)
    got = sorted(out.get(timeout=60) for _ in range(100))
    assert sorted(v for _, v, _ in got) == list(range(100))


def test_batch_consumers_in_processes_ack_each_message_once(make, ctx, procs):
    wq = make("WorkQueue", make.name())
    out = make("Queue", name=make.name())
    n = 1000
    for _ in range(2):
        procs.start(ctx, _workers.batch_consume_and_ack, wq, out, n, 64)
    for k in range(0, n, 100):
        wq.put_many(list(range(k, k + 100)))
    got = [out.get(timeout=60) for _ in range(n)]
    assert sorted(v for _, v, _ in got) == list(range(n))
    assert all(c == 1 for _, _, c in got)
    s = wq.stats()
    assert s["acked"] == n and s["redelivered"] == 0


def test_consumer_killed_holding_a_batch_gets_every_message_redelivered(make, ctx, procs):
    wq = make("WorkQueue", make.name(), visibility_timeout=1.0)
    out = make("Queue", name=make.name())
    ids = wq.put_many(list(range(8)))
    p = procs.start(ctx, _workers.hold_batch_then_hang, wq, out, 6)
    held = out.get(timeout=30)
    assert held == [(ids[v], v, 1) for v in range(6)]   # the child holds them now
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    got = {}
    deadline = time.monotonic() + 30
    while len(got) < 8 and time.monotonic() < deadline:
        try:
            b = wq.get_many(8, timeout=1)
        except queue.Empty:
            continue
        got.update(zip(b.values, zip(b.ids, b.delivery_counts, b.redelivered_because)))
        b.ack()
    assert sorted(got) == list(range(8))
    for v in range(6):
        assert got[v][:2] == (ids[v], 2)
        assert got[v][2] in ("consumer died", "visibility timeout")
    assert got[6] == (ids[6], 1, None) and got[7] == (ids[7], 1, None)
    assert wq.stats()["acked"] == 8 and wq.qsize() == 0


def test_custom_serializer(make):
    """serializer=(dumps, loads) on every backend: every value (str too)
    goes through it, loads failing dead-letters the message with its
    bytes, and the setting is the queue's own on open."""
    import json
    from tests._wq_workers import json_dumps, json_loads_ints
    dlq = make("WorkQueue", name=make.name(), max_deliveries=None)
    name = make.name()
    q = make("WorkQueue", name=name, dead_letter=dlq,
             serializer=(json_dumps, json_loads_ints))
    q.put(1)
    q.put_many([2, "three", 4])
    got = []
    for _ in range(3):
        d = q.get(timeout=5)
        got.append(d.value)
        d.ack()
    assert got == [1, 2, 4]
    (dl,) = dlq.dead_letters()
    # (Redis keeps its one-byte codec tag in front of the raw bytes.)
    assert dl.raw.endswith(b'"three"') and "undecodable" in dl.reason
    with pytest.raises(TypeError):
        q.put({1})  # not JSON: the caller gets dumps' error
    q.put(5)
    d = q.get(timeout=5)
    assert d.value == 5
    d.ack()
    with pytest.raises(pyqueue.PyQueueError, match="custom serializer"):
        make("WorkQueue", name=name)
    plain = make("WorkQueue", name=make.name())
    with pytest.raises(ValueError, match="serializer"):
        make("WorkQueue", name=plain.name, serializer=(json_dumps, json.loads))
    again = pickle.loads(pickle.dumps(q))  # travels with its serializer
    try:
        again.put(6)
        assert q.get(timeout=5).value == 6
    finally:
        again.close()
