"""Topic: the same assertions on every backend (shared memory, one Redis,
a Redis Cluster); tests/contract/conftest.py."""
import os
import pickle
import queue
import signal

import pytest

import pyqueue
from pyqueue.errors import MessageTooLarge
from tests._support import wait_until
from tests import _bindings_workers as bw
from tests.contract import _workers

pytestmark = pytest.mark.timeout(90)

KiB = 1024


def _redis_only(backend, **kwargs):
    return {} if backend.name == "shm" else kwargs


def test_every_subscriber_gets_every_message_in_order(make):
    t = make("Topic", make.name())
    assert isinstance(t, pyqueue.Topic)
    early = t.subscribe()
    t.publish("before")
    late = t.subscribe()                           # "latest": from now on
    assert t.publish_many(range(50)) == 50
    assert early.get(timeout=5) == "before"
    assert early.get_many(100, timeout=5) == list(range(50))
    got = []
    while len(got) < 50:
        got += late.get_many(7, timeout=5)
    assert got == list(range(50))
    with pytest.raises(queue.Empty):
        late.get(timeout=0.05)
    replay = t.subscribe(start="earliest")         # what is still retained
    assert replay.get(timeout=5) == "before"
    for s in (early, late, replay):
        s.close()


def test_an_interrupt_while_a_subscription_decodes_keeps_its_messages(make):
    """A BaseException (a Ctrl-C) while get_many or get decodes: the
    interrupt goes on, and the next call returns what was taken."""
    t = make("Topic", name=make.name())
    s = t.subscribe()
    msgs = ["a", bw.InterruptsOnce(1), "b"]
    t.publish_many(msgs)
    bw.arm_interrupts(1)
    with pytest.raises(bw.Interrupt):
        s.get_many(10, timeout=5)
    assert s.get_many(10, timeout=5) == msgs
    t.publish(bw.InterruptsOnce(2))
    bw.arm_interrupts(1)
    with pytest.raises(bw.Interrupt):
        s.get(timeout=5)
    assert s.get(timeout=5) == bw.InterruptsOnce(2)
    s.close()


def test_an_undecodable_message_is_reported_alone(make):
    """An undecodable message (its unpickling raises) in a batch: the ones
    before it are returned, it is raised alone as UndecodableMessage by the
    next call, and the ones after it come after that."""
    t = make("Topic", name=make.name())
    s = t.subscribe()
    t.publish_many(["a", bw.Unloadable("bad"), "b"])
    assert s.get_many(10, timeout=5) == ["a"]
    with pytest.raises(pyqueue.UndecodableMessage) as info:
        s.get_many(10, timeout=5)
    assert isinstance(info.value.cause, LookupError)
    assert s.get_many(10, timeout=5) == ["b"]
    t.publish(bw.Unloadable("bad again"))
    t.publish("c")
    with pytest.raises(pyqueue.UndecodableMessage):
        s.get(timeout=5)
    assert s.get(timeout=5) == "c"
    s.close()


def test_lag_and_subscription_not_picklable(make):
    t = make("Topic", make.name())
    s = t.subscribe()
    t.publish_many(["a", "b", "c"])
    assert s.lag == 3
    assert s.get(timeout=5) == "a"
    assert s.lag == 2
    with pytest.raises(TypeError):
        pickle.dumps(s)
    s.close()


def test_a_dropped_subscription_gives_its_slot_back(make):
    # A subscription dropped without close() (garbage) holds nothing back:
    # a lossless topic's publisher does not wait for it, and subscribing
    # and dropping again and again never runs out of slots. Before, on
    # Redis, it held its slot until its lease ended (subscriber_timeout,
    # 30 s): publishers got queue.Full, and the 65th subscribe failed.
    import gc
    t = make("Topic", make.name(), capacity_bytes=64 * KiB, mode="lossless")
    s = t.subscribe()
    del s
    gc.collect()
    msg = b"x" * 1000
    for n in range(200):                             # three times the capacity
        t.publish((n, msg), block=False)
    for _ in range(100):                             # more than the 64 slots
        t.subscribe()
    assert t.stats()["subscribers"] <= 1
    keep = t.subscribe()
    t.publish("after", block=False)
    assert keep.get(timeout=5) == "after"
    keep.close()


def test_asyncio_publish_gives_a_dropped_subscription_back(backend_url):
    # The asyncio publish too (on Redis it runs its own steps).
    import asyncio
    import gc
    import uuid

    import pyqueue.asyncio as aq
    t = aq.connect(backend_url).Topic(name="dropa-" + uuid.uuid4().hex[:8],
                                      capacity_bytes=64 * KiB, mode="lossless")

    async def main():
        s = t.subscribe()
        del s
        gc.collect()
        for n in range(200):                         # three times the capacity
            await t.publish((n, b"x" * 1000), timeout=0)

    try:
        asyncio.run(main())
    finally:
        t.close()
        t.sync.unlink()


def test_a_subscription_belongs_to_its_process(make):
    # A subscription's cursor is its process's: a forked child's copy
    # refuses to read (PyQueueError) and its close() leaves the parent's
    # open. Before, on Redis, the child read from the parent's cursor and
    # the parent never got what the child took. (fork only: a
    # subscription cannot be pickled for a spawned child.)
    import multiprocessing
    t = make("Topic", make.name())
    s = t.subscribe()
    t.publish_many([0, 1, 2])
    out = multiprocessing.get_context("fork").Queue()
    p = multiprocessing.get_context("fork").Process(target=_workers.read_inherited_subscription,
                                                     args=(s, out))
    p.start()
    assert out.get(timeout=60) == ("PyQueueError", "belongs to the process")
    p.join(60)
    assert p.exitcode == 0
    assert s.get_many(10, timeout=5) == [0, 1, 2]    # nothing taken, still subscribed
    t.publish(3)
    assert s.get(timeout=5) == 3
    t.close()
    with pytest.raises(ValueError, match="closed"):  # as its topic's handle is
        s.get(timeout=0)
    s.close()


def test_lossless_publisher_waits_for_a_slow_subscriber(make):
    t = make("Topic", make.name(), capacity_bytes=64 * KiB, mode="lossless")
    s = t.subscribe()
    msg = b"x" * 1000
    n = 0
    while True:                                    # fill it: the subscriber reads nothing
        try:
            t.publish((n, msg), block=False)
        except queue.Full:
            break
        n += 1
        assert n < 1000, "a lossless topic took more than its capacity"
    assert n > 10
    with pytest.raises(queue.Full):
        t.publish((n, msg), timeout=0.2)
    first = s.get_many(5, timeout=5)               # room again
    t.publish((n, msg), timeout=10)
    got = first + s.get_many(10000, timeout=5)
    while len(got) < n + 1:
        got += s.get_many(10000, timeout=5)
    assert [i for i, _ in got] == list(range(n + 1)) and s.lost == 0
    s.close()


def test_lossy_subscriber_counts_what_it_lost(make):
    t = make("Topic", make.name(), capacity_bytes=64 * KiB, mode="lossy")
    s = t.subscribe()
    msg = b"y" * 1000
    for i in range(300):
        t.publish((i, msg), block=False)           # never waits
    got = []
    while True:
        try:
            got += s.get_many(10000, block=False)
        except queue.Empty:
            break
    numbers = [i for i, _ in got]
    assert 0 < len(numbers) < 300 and s.lost > 0
    assert numbers == list(range(300 - len(numbers), 300))   # the newest, contiguous
    assert s.lost + len(numbers) == 300
    s.close()


def test_message_too_large_and_bad_settings(make, backend_url):
    t = make("Topic", make.name(), capacity_bytes=64 * KiB)
    if backend_url == "shm://":
        # Shared memory sends it out of band (tests/test_topic_oob.py).
        s = t.subscribe()
        t.publish(b"z" * (32 * KiB))
        assert s.get(timeout=10) == b"z" * (32 * KiB)
        s.close()
    else:
        with pytest.raises(MessageTooLarge):
            t.publish(b"z" * (32 * KiB))
    with pytest.raises(ValueError):
        make("Topic", make.name(), mode="sometimes")
    with pytest.raises(ValueError, match="mode"):
        make("Topic", t.name, mode="lossy")


def test_publisher_in_another_process(make, ctx, procs):
    t = make("Topic", make.name())
    s = t.subscribe()
    p = procs.start(ctx, _workers.publish_all, t, ["x", {"y": 1}, b"z"])
    assert [s.get(timeout=30) for _ in range(3)] == ["x", {"y": 1}, b"z"]
    p.join(30)
    assert p.exitcode == 0
    s.close()


def test_sigkilled_subscriber_does_not_stop_a_lossless_topic(make, backend, ctx, procs):
    t = make("Topic", make.name(), capacity_bytes=64 * KiB,
             **_redis_only(backend, subscriber_timeout=1.0))
    out = make("Queue", name=make.name())
    p = procs.start(ctx, _workers.subscribe_report_and_hang, t, out)
    assert out.get(timeout=30) == "subscribed"
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    for i in range(200):                           # far past the capacity
        t.publish((i, b"w" * 1000), timeout=30)


def test_blocked_publisher_wakes_when_a_subscriber_reads(make, ctx, procs):
    t = make("Topic", make.name(), capacity_bytes=64 * KiB, mode="lossless")
    s = t.subscribe()
    n = 0
    while True:                                    # full: the next publish must wait
        try:
            t.publish((n, b"v" * 1000), block=False)
        except queue.Full:
            break
        n += 1
    p = procs.start(ctx, _workers.publish_all, t, [(n + i, b"v" * 1000) for i in range(20)])
    assert wait_until(lambda: t.stats()["waiting_publishers"] == 1, timeout=30)
    got = []
    while len(got) < n + 20:
        got += s.get_many(10000, timeout=30)
    assert [i for i, _ in got] == list(range(n + 20)) and s.lost == 0
    p.join(30)
    assert p.exitcode == 0
    s.close()
