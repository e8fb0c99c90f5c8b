"""Bad arguments of the per-call methods: the same exception, naming the
argument, on every backend (tests/contract/conftest.py), and nothing
changed - the handle goes on.

The checks live in pyqueue._api (check_timeout, check_seconds,
check_max_messages, check_max_records, check_partition), and the
shared-memory cores check the same way (pyqueue/_common.pxd). Timeouts
take what multiprocessing takes (a C double: an int or a bool is a
number); delays, max_messages, max_records and partitions do not take a
bool. Before, a shared-memory Log read partition 1 for partition=1.5 or
True, a Consumer seeked partition 1 for True, get_many(True) took one
message there, and a Redis queue waited not at all for timeout=NaN.
"""
import math
import queue

import pytest

pytestmark = pytest.mark.timeout(90)

NAN = math.nan

TIMEOUT_BAD = [("a", TypeError, "timeout"), (b"1", TypeError, "timeout"),
               (object(), TypeError, "timeout"), (NAN, ValueError, "timeout")]


@pytest.fixture
def handles(make):
    q = make("Queue", name=make.name())
    wq = make("WorkQueue", make.name(), max_deliveries=None)
    topic = make("Topic", name=make.name())
    sub = topic.subscribe()
    log = make("Log", make.name(), partitions=2)
    return {"q": q, "wq": wq, "topic": topic, "sub": sub, "log": log}


def _still_works(h):
    q, wq, topic, sub, log = h["q"], h["wq"], h["topic"], h["sub"], h["log"]
    q.put("ok")
    assert q.get(timeout=5) == "ok"
    wq.put("ok")
    d = wq.get(timeout=5)
    assert d.value == "ok"
    d.ack()
    topic.publish("ok")
    assert sub.get(timeout=5) == "ok"
    p, off = log.append("ok", key="k")
    assert [r.value for r in log.read(p, off)] == ["ok"]


TIMEOUT_CALLS = {
    "Queue.put": lambda h, t: h["q"].put("x", timeout=t),
    "Queue.get": lambda h, t: h["q"].get(timeout=t),
    "Queue.get_many": lambda h, t: h["q"].get_many(5, timeout=t),
    "WorkQueue.put": lambda h, t: h["wq"].put("x", timeout=t),
    "WorkQueue.get": lambda h, t: h["wq"].get(timeout=t),
    "WorkQueue.get_many": lambda h, t: h["wq"].get_many(5, timeout=t),
    "Topic.publish": lambda h, t: h["topic"].publish("x", timeout=t),
    "Subscription.get": lambda h, t: h["sub"].get(timeout=t),
    "Subscription.get_many": lambda h, t: h["sub"].get_many(5, timeout=t),
    "Log.read": lambda h, t: h["log"].read(0, 0, timeout=t),
}


def test_a_bad_timeout_is_refused(handles):
    # (each handle is empty, and a get with a good timeout would wait:
    # a check that came after the wait would show as queue.Empty)
    for what, call in TIMEOUT_CALLS.items():
        for bad, error, word in TIMEOUT_BAD:
            with pytest.raises(error, match=word):
                call(handles, bad)
                pytest.fail(f"{what} took timeout={bad!r}")
    assert handles["q"].qsize() == handles["wq"].qsize() == 0   # nothing was put
    _still_works(handles)


def test_timeouts_take_what_multiprocessing_takes(handles):
    # an int, a float, a bool (a number to a C double), a negative one (no wait)
    for good in (0, 0.05, True, -1):
        with pytest.raises(queue.Empty):
            handles["q"].get(timeout=good)
        with pytest.raises(queue.Empty):
            handles["wq"].get(timeout=good)
        with pytest.raises(queue.Empty):
            handles["sub"].get(timeout=good)
        assert handles["log"].read(0, 0, timeout=good) == []


@pytest.mark.parametrize("call", [
    lambda h, s: h["wq"].put("x", delay=s),
    lambda h, s: h["wq"].put_many(["x"], delay=s),
    lambda h, s: h["d"].nack(delay=s),
    lambda h, s: h["d"].extend(s),
    lambda h, s: h["batch"].nack(delay=s),
    lambda h, s: h["batch"].extend(s),
], ids=["put", "put_many", "Delivery.nack", "Delivery.extend", "Batch.nack", "Batch.extend"])
def test_a_bad_delay_or_duration_is_refused(handles, call):
    wq = handles["wq"]
    wq.put("held")
    wq.put("held too")
    handles["d"] = wq.get(timeout=5)
    handles["batch"] = wq.get_many(5, timeout=5)
    for bad, error in [("1", TypeError), (None, TypeError), (True, TypeError),
                       ([1], TypeError), (-1, ValueError), (-0.5, ValueError),
                       (NAN, ValueError)]:
        with pytest.raises(error, match="delay|seconds"):
            call(handles, bad)
    # nothing put, nothing settled: both still held, and settle now
    assert wq.qsize() == 2 and wq.stats()["in_flight"] == 2
    handles["d"].ack()
    handles["batch"].ack()
    assert wq.qsize() == 0
    _still_works(handles)


@pytest.mark.parametrize("which", ["q", "wq", "sub"])
def test_a_bad_max_messages_is_refused(handles, which):
    h = handles
    h["q"].put("first")
    h["wq"].put("first")
    h["topic"].publish("first")
    for bad, error in [(0, ValueError), (-3, ValueError), (True, TypeError), (1.5, TypeError),
                       ("2", TypeError), (None, TypeError)]:
        with pytest.raises(error, match="max_messages"):
            h[which].get_many(bad, timeout=0)
    # nothing taken
    got = h[which].get_many(5, timeout=5)
    if which == "wq":
        assert got.values == ["first"]
        got.ack()
    else:
        assert got == ["first"]


@pytest.mark.parametrize("bad, error", [
    (True, TypeError), (1.5, TypeError), ("0", TypeError), (None, TypeError),
    (-1, ValueError), (2, ValueError)])
def test_a_bad_partition_is_refused(handles, bad, error):
    log = handles["log"]
    log.append("x", key="k")
    for call in (lambda: log.read(bad, 0), lambda: log.start_offset(bad),
                 lambda: log.end_offset(bad)):
        with pytest.raises(error, match="partition"):
            call()
    with log.consumer(make_group()) as c:
        c.poll(timeout=0)
        for call in (lambda: c.seek(bad, 0), lambda: c.position(bad),
                     lambda: c.committed(bad)):
            with pytest.raises(error, match="partition"):
                call()
        assert sorted(c.assignment()) == [0, 1]
        assert c.position(0) >= 0 and c.position(1) >= 0
    _still_works(handles)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "3", None])
def test_a_bad_max_records_is_refused(handles, bad):
    log = handles["log"]
    p, off = log.append("x", key="k")
    with pytest.raises(ValueError, match="max_records"):
        log.read(p, off, max_records=bad)
    with log.consumer(make_group()) as c:
        with pytest.raises(ValueError, match="max_records"):
            c.poll(max_records=bad, timeout=0)
        assert [r.value for r in c.poll(timeout=5)] == ["x"]  # nothing consumed by the refusal
    _still_works(handles)


def make_group():
    import uuid
    return "g-" + uuid.uuid4().hex[:8]


class Index:
    """An integer that is not an int (as a numpy integer is)."""

    def __init__(self, n):
        self.n = n

    def __index__(self):
        return self.n


def test_integers_and_numbers_that_are_not_int_or_float_are_taken(handles):
    from decimal import Decimal
    from fractions import Fraction
    h = handles
    for q in (h["q"], h["wq"]):
        q.put("a")
    h["topic"].publish("a")
    p, off = h["log"].append("a", key="k")
    assert h["q"].get_many(Index(5), timeout=Fraction(1, 2)) == ["a"]
    b = h["wq"].get_many(Index(5), timeout=Decimal("0.5"))
    assert b.values == ["a"]
    b.nack(delay=Decimal("0"))
    d = h["wq"].get(timeout=5)
    d.extend(Fraction(1, 1))
    d.nack(delay=Fraction(0))
    h["wq"].get(timeout=5).ack()
    h["wq"].put("delayed", delay=Decimal("0.01"))
    h["wq"].get(timeout=5).ack()
    assert h["sub"].get_many(Index(5), timeout=1) == ["a"]
    assert [r.value for r in h["log"].read(Index(p), off, max_records=Index(1))] == ["a"]
    assert h["log"].end_offset(p) == off + 1
    with h["log"].consumer(make_group(), auto_offset_reset="earliest") as c:
        c.poll(max_records=Index(10), timeout=5)
        c.seek(Index(p), off)
        assert c.position(Index(p)) == off
        assert c.committed(Index(p)) is None


def test_huge_counts_saturate_and_huge_partitions_are_out_of_range(handles):
    h = handles
    p, off = h["log"].append("a", key="k")
    for huge in (2 ** 31, 2 ** 63, 10 ** 20):
        h["q"].put_many(["a", "b"])
        assert h["q"].get_many(huge, timeout=5) == ["a", "b"]
        h["wq"].put_many(["a", "b"])
        b = h["wq"].get_many(huge, timeout=5)
        assert b.values == ["a", "b"]
        b.ack()
        h["topic"].publish("a")
        h["topic"].publish("b")
        assert h["sub"].get_many(huge, timeout=5) == ["a", "b"]
        assert [r.value for r in h["log"].read(p, off, max_records=huge)] == ["a"]
    for huge in (2 ** 32, 2 ** 64):
        with pytest.raises(ValueError, match="partition"):
            h["log"].read(huge, 0)
        with pytest.raises(ValueError, match="partition"):
            h["log"].end_offset(huge)
    _still_works(h)


def test_asyncio_checks_the_same_and_before_it_takes(backend_url):
    import asyncio

    import pyqueue.asyncio as aq
    ab = aq.connect(backend_url)
    q = ab.Queue(name=make_group())
    wq = ab.WorkQueue(name=make_group())
    topic = ab.Topic(name=make_group())

    async def main():
        sub = topic.subscribe()
        await q.put("kept")
        await wq.put("kept")
        await topic.publish("kept")
        for bad in ("a", b"1", "0.3"):
            # a message is there: the fast path would have taken it
            with pytest.raises(TypeError, match="timeout"):
                await q.get(timeout=bad)
            with pytest.raises(TypeError, match="timeout"):
                await wq.get(timeout=bad)
            with pytest.raises(TypeError, match="timeout"):
                await sub.get(timeout=bad)
            with pytest.raises(TypeError, match="timeout"):
                await q.put("never", timeout=bad)
        with pytest.raises(ValueError, match="timeout"):
            await q.get(timeout=NAN)
        for bad, error in ((True, TypeError), ("0", TypeError), (-1, ValueError)):
            with pytest.raises(error, match="delay"):
                await wq.put("never", delay=bad)
        assert await q.get(timeout=-1) == "kept"            # negative: no wait
        d = await wq.get(timeout=-1)
        assert d.value == "kept"
        await d.ack()
        assert await sub.get(timeout=-1) == "kept"
        with pytest.raises(queue.Empty):
            await q.get(timeout=-1)
        with pytest.raises(queue.Empty):
            await wq.get(timeout=0)
        sub.close()

    try:
        asyncio.run(main())
    finally:
        for h in (q, wq, topic):
            h.close()
            h.sync.unlink()


def test_an_infinite_or_huge_timeout_waits_for_ever(handles):
    # inf (or 31 years and more) is no deadline, as None: it overflowed a
    # time_t or a Redis block time where the call had to wait.
    import threading
    h = handles
    p, off = h["log"].append("first", key="k")
    for huge in (math.inf, 1e10):
        timers = [threading.Timer(0.2, h["wq"].put, ("w",)),
                  threading.Timer(0.2, h["q"].put, ("q",)),
                  threading.Timer(0.2, h["log"].append, ("l",), {"key": "k"})]
        for t in timers:
            t.start()
        try:
            d = h["wq"].get(timeout=huge)
            assert d.value == "w"
            d.ack()
            assert h["q"].get(timeout=huge) == "q"
            off += 1
            assert [r.value for r in h["log"].read(p, off, timeout=huge)] == ["l"]
        finally:
            for t in timers:
                t.join()
    with h["log"].consumer(make_group()) as c:
        assert [r.value for r in c.poll(timeout=math.inf)] == ["first", "l", "l"]


def test_offsets_and_dead_letter_counts(handles):
    h = handles
    p, off = h["log"].append("a", key="k")
    assert h["log"].start_offset(Index(p)) == 0 and h["log"].end_offset(Index(p)) == off + 1
    for bad, error in ((True, TypeError), (1.5, TypeError), (0, ValueError), (-1, ValueError)):
        with pytest.raises(error, match="max_messages"):
            h["wq"].dead_letters(bad)
        with pytest.raises(error, match="max_messages"):
            h["wq"].requeue(bad)
    assert h["wq"].dead_letters(Index(1)) == []


def test_an_offset_is_an_integer_from_0_to_2_63_on_every_backend(handles):
    # Before: read(p, 2**64) and commit({p: 2**64}) were OverflowError on
    # shared memory while Redis read OffsetOutOfRange and committed it; an
    # IntEnum member, taken on shared memory, was a TypeError of the
    # command packer on Redis; an Index was refused on both.
    import enum

    from pyqueue import OffsetOutOfRange

    class Pos(enum.IntEnum):
        ZERO = 0
        ONE = 1

    log = handles["log"]
    p, off = log.append("a", key="k")
    assert off == 0
    log.append("b", key="k")
    assert [r.value for r in log.read(p, Pos.ONE)] == ["b"]
    assert [r.value for r in log.read(p, Index(0))] == ["a", "b"]
    with pytest.raises(OffsetOutOfRange):
        log.read(p, 2 ** 63 - 1)            # the largest offset: out of range, not refused
    bad = [True, 1.5, "1", None, -1, 2 ** 63, 2 ** 64, 10 ** 30]
    for b in bad:
        with pytest.raises(ValueError, match="offset"):
            log.read(p, b)
    with log.consumer(make_group(), auto_offset_reset="earliest") as c:
        assert [r.value for r in c.poll(timeout=5)] == ["a", "b"]
        c.commit({p: Pos.ONE})
        assert c.committed(p) == 1 and type(c.committed(p)) is int
        c.seek(p, Index(0))
        assert c.position(p) == 0 and type(c.position(p)) is int
        for b in bad:
            with pytest.raises(ValueError, match="offset"):
                c.seek(p, b)
            with pytest.raises(ValueError, match="offset"):
                c.commit({p: b})
            assert c.committed(p) == 1 and c.position(p) == 0     # nothing changed
        c.commit({Index(p): 5})                 # a partition is any integer too, as for seek
        assert c.committed(p) == 5
        for bad, error in ((True, TypeError), ("0", TypeError), (2, ValueError), (-1, ValueError)):
            with pytest.raises(error, match="partition"):
                c.commit({bad: 1})
        assert c.committed(p) == 5
        c.commit({p: 2 ** 63 - 1})
        assert c.committed(p) == 2 ** 63 - 1
    _still_works(handles)


def test_asyncio_log_read_checks_the_offset_alike(backend_url):
    import asyncio

    import pyqueue.asyncio as aq
    log = aq.connect(backend_url).Log(name=make_group(), partitions=2)

    async def main():
        p, off = log.append("a", key="k")
        for bad in (True, 1.5, -1, 2 ** 63, 2 ** 64):
            with pytest.raises(ValueError, match="offset"):
                await log.read(p, bad, timeout=0)
        assert [r.value for r in await log.read(p, Index(off), timeout=5)] == ["a"]

    try:
        asyncio.run(main())
    finally:
        log.close()
        log.sync.unlink()


# Calls with two bad arguments: the first of them (in the signature's
# order) is the one reported, sync and asyncio, on every backend. Before,
# pyqueue.asyncio's shared-memory gets checked the timeout first, its Log
# read the timeout before the rest, and its Redis Log read the offset
# before the partition.
TWO_BAD = [
    ("Queue.get_many", lambda h: h["q"].get_many(0, timeout="a"), ValueError, "max_messages"),
    ("WorkQueue.get_many", lambda h: h["wq"].get_many(0, timeout="a"), ValueError,
     "max_messages"),
    ("Subscription.get_many", lambda h: h["sub"].get_many(0, timeout="a"), ValueError,
     "max_messages"),
    ("Log.read", lambda h: h["log"].read(9, -1), ValueError, "partition"),
    ("Log.read", lambda h: h["log"].read(True, 0, 1, timeout="a"), TypeError, "partition"),
    ("Log.read", lambda h: h["log"].read(0, -1, 0, timeout="a"), ValueError, "offset"),
    ("Log.read", lambda h: h["log"].read(0, 0, 0, timeout="a"), ValueError, "max_records"),
]


def test_the_first_bad_argument_is_the_one_reported(handles):
    for _, call, error, match in TWO_BAD:
        with pytest.raises(error, match=match):
            call(handles)
    _still_works(handles)


def test_asyncio_reports_the_first_bad_argument_too(backend_url):
    import asyncio

    import pyqueue.asyncio as aq
    ab = aq.connect(backend_url)
    topic = ab.Topic(name=make_group())
    h = {"q": ab.Queue(name=make_group()), "wq": ab.WorkQueue(name=make_group()),
         "topic": topic, "log": ab.Log(name=make_group(), partitions=2)}

    async def main():
        h["sub"] = topic.subscribe()
        for _, call, error, match in TWO_BAD:
            with pytest.raises(error, match=match):
                await call(h)
        h["sub"].close()

    try:
        asyncio.run(main())
    finally:
        for k in ("q", "wq", "topic", "log"):
            h[k].close()
            h[k].sync.unlink()


def test_asyncio_subscription_reports_an_undecodable_message_alone(backend_url):
    # (Redis asyncio's get_many raised the decoder's error and lost the
    # batch: every message it had read)
    import asyncio

    import pyqueue.asyncio as aq
    from pyqueue.errors import UndecodableMessage
    from tests._bindings_workers import Unloadable
    ab = aq.connect(backend_url)
    topic = ab.Topic(name=make_group())

    async def main():
        sub = topic.subscribe()
        topic.sync.publish_many(["a", Unloadable("bad"), "c", "d"])
        assert await sub.get_many(10, timeout=5) == ["a"]
        with pytest.raises(UndecodableMessage):
            await sub.get_many(10, timeout=5)
        assert await sub.get_many(10, timeout=5) == ["c", "d"]
        topic.sync.publish_many([Unloadable("bad"), "f"])
        with pytest.raises(UndecodableMessage):
            await sub.get(timeout=5)
        with pytest.raises(TypeError, match="timeout"):
            await sub.get(timeout="x")               # "f" is held: checked first
        assert await sub.get(timeout=5) == "f"
        sub.close()

    try:
        asyncio.run(main())
    finally:
        topic.close()
        topic.sync.unlink()


def test_asyncio_nan_timeout_without_block_does_not_wait(backend_url):
    import asyncio

    import pyqueue.asyncio as aq
    ab = aq.connect(backend_url)
    q = ab.Queue(name=make_group())

    async def main():
        await q.put("m", block=False, timeout=NAN)
        assert await q.get(block=False, timeout=NAN) == "m"
        with pytest.raises(queue.Empty):
            await q.get(block=False, timeout=NAN)

    try:
        asyncio.run(main())
    finally:
        q.close()
        q.sync.unlink()
