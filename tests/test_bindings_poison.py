"""One undecodable message must not lose a batch (issue 9, item 6): the
good messages are returned, the bad one is reported alone by its own call
(pyqueue.UndecodableMessage: position, type code, raw bytes, cause), the
ones after it come with the next calls, and the counters say what
happened. A Log names the partition and offset of a poison record."""
import os
import pickle
import queue

import pytest

import pyqueue
from pyqueue import UndecodableMessage
from tests import _bindings_workers as bw


def _eleven():
    """5 good, 1 poison, 5 good."""
    return [f"good-{i}" for i in range(5)] + [bw.Unloadable("poison")] + \
        [{"good": i} for i in range(5, 10)]


GOOD_AFTER = [{"good": i} for i in range(5, 10)]
GOOD_BEFORE = [f"good-{i}" for i in range(5)]


def _check_error(e, cause_type=LookupError):
    assert isinstance(e, pyqueue.PyQueueError)
    assert isinstance(e.cause, cause_type) and e.__cause__ is e.cause
    assert e.position is not None
    assert e.type_code == 3  # pickle
    with pytest.raises(cause_type):
        pickle.loads(e.raw)  # the raw payload is the message as stored


def test_queue_get_many_reports_the_poison_alone(make_queue):
    q = make_queue.Queue(capacity_bytes=1 << 16)
    q.put_many(_eleven())
    assert q.get_many(100, block=False) == GOOD_BEFORE
    with pytest.raises(UndecodableMessage) as info:
        q.get_many(100, block=False)
    _check_error(info.value)
    assert "poison" in str(info.value)
    assert q.get_many(100, block=False) == GOOD_AFTER
    with pytest.raises(queue.Empty):
        q.get_many(100, block=False)
    s = q.stats()
    assert s["enqueued"] == 11 and s["dequeued"] == 11
    assert s["undecodable"] == 1 and s["held"] == 0 and s["depth"] == 0


def test_queue_poison_first_in_batch_raises_at_once(make_queue):
    q = make_queue.Queue(capacity_bytes=1 << 16)
    q.put_many([bw.Unloadable("first"), "a", "b"])
    with pytest.raises(UndecodableMessage) as info:
        q.get_many(10, block=False)
    _check_error(info.value)
    assert q.stats()["held"] == 2
    assert q.get(block=False) == "a"  # held messages come first, with get too
    assert q.get_many(10, block=False) == ["b"]


def test_queue_positions_are_distinct_and_increasing(make_queue):
    q = make_queue.Queue(capacity_bytes=1 << 16)
    q.put_many([bw.Unloadable("1"), "x", bw.Unloadable("2")])
    positions = []
    for _ in range(2):
        with pytest.raises(UndecodableMessage) as info:
            while True:
                q.get_many(10, block=False)
        positions.append(info.value.position)
    assert positions[0] < positions[1]
    assert q.stats()["undecodable"] == 2


def test_queue_get_raises_the_decoders_exception_as_multiprocessing(make_queue):
    q = make_queue.Queue(capacity_bytes=1 << 16)
    q.put_many([bw.Unloadable("boom"), "next"])
    with pytest.raises(LookupError, match="boom") as info:
        q.get(block=False)
    assert any("position" in n for n in getattr(info.value, "__notes__", []))
    assert q.get(block=False) == "next"
    assert q.stats()["undecodable"] == 1


def test_queue_interrupted_decode_keeps_the_batch(make_queue):
    """A BaseException (Ctrl-C) while a batch is decoded: nothing taken is
    lost; the next call returns the whole batch in order."""
    q = make_queue.Queue(capacity_bytes=1 << 16)
    msgs = ["a", bw.InterruptsOnce(1), "b", bw.InterruptsOnce(2)]
    q.put_many(msgs)
    bw.arm_interrupts(1)
    with pytest.raises(bw.Interrupt):
        q.get_many(10, block=False)
    assert q.stats()["held"] == 4
    assert q.get_many(10, block=False) == msgs
    assert q.stats()["held"] == 0


def test_queue_interrupted_single_get_keeps_the_message(make_queue):
    q = make_queue.Queue(capacity_bytes=1 << 16)
    q.put(bw.InterruptsOnce(7))
    bw.arm_interrupts(1)
    with pytest.raises(bw.Interrupt):
        q.get(block=False)
    assert q.get(block=False) == bw.InterruptsOnce(7)


def test_queue_damaged_str_record_is_reported_not_returned_as_none(make_queue):
    """A str record whose bytes are not UTF-8 (damage) is an undecodable
    message, not a None."""
    q = make_queue.Queue(capacity_bytes=1 << 16)
    q.put("ok")
    q.put("zzzz")
    with open(f"/dev/shm/pyqueue.{q.name}", "r+b") as f:
        data = f.read(1 << 20)  # the records are in the first region
        at = data.index(b"zzzz")
        f.seek(at)
        f.write(b"\xff\xfe\xff\xfe")
    assert q.get_many(10, block=False) == ["ok"]
    with pytest.raises(UndecodableMessage) as info:
        q.get_many(10, block=False)
    assert isinstance(info.value.cause, UnicodeDecodeError)
    assert info.value.raw == b"\xff\xfe\xff\xfe"


def test_topic_get_many_reports_the_poison_alone():
    t = pyqueue.Topic(capacity_bytes=1 << 16)
    try:
        sub = t.subscribe()
        t.publish_many(_eleven())
        assert sub.get_many(100, block=False) == GOOD_BEFORE
        with pytest.raises(UndecodableMessage) as info:
            sub.get_many(100, block=False)
        _check_error(info.value)
        assert sub.get_many(100, block=False) == GOOD_AFTER
        with pytest.raises(queue.Empty):
            sub.get_many(100, block=False)
        assert sub.undecodable == 1
        # get() of a subscription reports it the same way
        t.publish(bw.Unloadable("single"))
        t.publish("after")
        with pytest.raises(UndecodableMessage):
            sub.get(block=False)
        assert sub.get(block=False) == "after"
        assert sub.undecodable == 2
        sub.close()
    finally:
        t.unlink()
        t.close()


def test_topic_poison_in_a_later_batch_of_one_call():
    """get_many reads in batches of up to 256: a poison in the second
    batch of one call still comes alone, after the first batch."""
    t = pyqueue.Topic(capacity_bytes=1 << 20)
    try:
        sub = t.subscribe()
        first = [f"m{i}" for i in range(300)]
        t.publish_many(first + [bw.Unloadable("late"), "tail"])
        assert sub.get_many(1000, block=False) == first
        with pytest.raises(UndecodableMessage):
            sub.get_many(1000, block=False)
        assert sub.get_many(1000, block=False) == ["tail"]
        sub.close()
    finally:
        t.unlink()
        t.close()


def test_topic_interrupted_decode_keeps_the_batch():
    t = pyqueue.Topic(capacity_bytes=1 << 16)
    try:
        sub = t.subscribe()
        msgs = ["a", bw.InterruptsOnce(1), "b"]
        t.publish_many(msgs)
        bw.arm_interrupts(1)
        with pytest.raises(bw.Interrupt):
            sub.get_many(10, block=False)
        assert sub.get_many(10, block=False) == msgs
        sub.close()
    finally:
        t.unlink()
        t.close()


@pytest.fixture(params=["memory", "directory"])
def log(request, tmp_path):
    if request.param == "memory":
        lg = pyqueue.Log(partitions=2, retention_bytes=1 << 16)
    else:
        lg = pyqueue.Log(path=str(tmp_path / "log"), partitions=2)
    yield lg
    if request.param == "memory":
        lg.unlink()
    lg.close()


def _append_eleven(lg, partition):
    for v in _eleven():
        p, _ = lg.append(v, key=_key_for(lg, partition))
        assert p == partition


def _key_for(lg, partition):
    for i in range(1000):
        if lg.partition_for(f"k{i}") == partition:
            return f"k{i}"
    raise AssertionError("no key for that partition")


def test_log_read_names_partition_and_offset_of_a_poison_record(log):
    _append_eleven(log, 1)
    assert [r.value for r in log.read(1, 0, 100)] == GOOD_BEFORE
    with pytest.raises(UndecodableMessage) as info:
        log.read(1, 5, 100)
    e = info.value
    _check_error(e)
    assert (e.partition, e.offset, e.position) == (1, 5, 5)
    assert "partition 1" in str(e) and "offset 5" in str(e)
    # the record stays: a read at it raises again, a read past it works
    with pytest.raises(UndecodableMessage):
        log.read(1, 5, 1)
    assert [r.value for r in log.read(1, 6, 100)] == GOOD_AFTER


def test_log_consumer_poll_returns_good_records_then_names_the_poison(log):
    """A poll that read records of one partition and then meets a poison
    record in another returns what it read; the poison is raised by a poll
    of its own, naming partition and offset; nothing is skipped."""
    log.append(bw.Unloadable("poison"), key=_key_for(log, 1))
    log.append("p1-after", key=_key_for(log, 1))
    for v in ["p0-a", "p0-b"]:
        log.append(v, key=_key_for(log, 0))
    c = log.consumer("g-poison")
    try:
        got = []
        errors = []
        for _ in range(4):  # every partition comes first in one of the polls
            try:
                got += [r.value for r in c.poll(100, timeout=0)]
            except UndecodableMessage as e:
                errors.append((e.partition, e.offset))
        assert errors and set(errors) == {(1, 0)}
        assert got == ["p0-a", "p0-b"]
        assert c.position(0) == 2 and c.position(1) == 0
        c.seek(1, 1)  # skipping it is the caller's choice
        assert [r.value for r in c.poll(100, timeout=0)] == ["p1-after"]
    finally:
        c.close()


def _oob_segments(q):
    prefix = q._shm_name.lstrip("/") + ".oob-"
    return [f for f in os.listdir("/dev/shm") if f.startswith(prefix)]


def test_queue_held_out_of_band_message_leaves_no_segment(make_queue):
    # A large message (out of band) held after a poison one is mapped and
    # its segment name removed when it is held: a handle closed (or
    # collected, or whose process exits) with it held leaves nothing in
    # /dev/shm, and the message still comes with the next call.
    big = b"z" * 100_000
    q = make_queue.Queue(capacity_bytes=1 << 16)
    q.put_many(["a", bw.Unloadable("p"), big, "b"])
    assert len(_oob_segments(q)) == 1
    assert q.get_many(10, block=False) == ["a"]
    assert q.stats()["held"] == 3
    assert _oob_segments(q) == []
    with pytest.raises(UndecodableMessage):
        q.get_many(10, block=False)
    assert q.get_many(10, block=False) == [big, "b"]
    # closed with it held
    q.put_many([bw.Unloadable("p"), big])
    with pytest.raises(UndecodableMessage):
        q.get_many(10, block=False)
    assert q.stats()["held"] == 1 and _oob_segments(q) == []
    q.close()
    assert _oob_segments(q) == []


def test_queue_qsize_counts_what_the_handle_holds(make_queue):
    # A drain loop on empty()/qsize() (the multiprocessing idiom) must not
    # stop while this handle still holds messages for its next calls.
    q = make_queue.Queue(capacity_bytes=1 << 16)
    q.put_many(["a", bw.Unloadable("p"), "b"])
    out, poison = [], 0
    while not q.empty():
        try:
            out += q.get_many(10, block=False)
        except UndecodableMessage:
            poison += 1
    assert out == ["a", "b"] and poison == 1
    assert q.qsize() == 0 and q.stats()["held"] == 0


@pytest.mark.malloc_fails
@pytest.mark.parametrize("small", [0, 256])
def test_a_get_out_of_memory_keeps_the_message(ctx, procs, make_queue, small):
    """A get or get_many whose copy of a message out of the ring fails
    (MemoryError: a child whose RLIMIT_AS leaves it 1 MiB) takes nothing
    of that peek: the message is there for the next get, whole, and
    counted once. A get_many that took batches before (256 small messages:
    one peek's worth, BATCH_MAX) returns them, and the next call raises.
    (The stale read such a call may have made is marked for the next
    trim: pq_ring_peek_abandon, csrc/tests/test_ring_epoch.c.)"""
    size = 4 << 20                                   # in the ring: under a quarter
    q = make_queue.Queue(capacity_bytes=32 << 20)
    out = make_queue.Queue()
    q.put_many([b"s"] * small)
    q.put(b"x" * size)
    # Large blocks freed in this process: a forked child finds free heap
    # chunks of that size (what an earlier test in the same worker leaves).
    x = b"y" * (16 << 20)
    del x
    takes = ["get", "get_many"] if small == 0 else ["get_many", "get_many"]
    p = procs.start(ctx, bw.takes_with_no_memory_left, q, size, takes, out)
    outcomes, got = out.get(timeout=60)
    p.join(30)
    assert p.exitcode == 0
    assert outcomes == (["MemoryError", "MemoryError"] if small == 0
                        else [small, "MemoryError"])
    assert got == size
    assert q.qsize() == 0 and q.stats()["dequeued"] == small + 1
