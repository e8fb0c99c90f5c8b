"""Queue and JoinableQueue: the same assertions on every backend (shared
memory, one Redis, a Redis Cluster); tests/contract/conftest.py."""
import pickle
import queue
import time

import pytest

import pyqueue
from pyqueue.errors import MessageTooLarge, SegmentMismatch, SegmentNotFound
from tests._support import wait_until
from tests import _bindings_workers as bw
from tests.contract import _workers

pytestmark = pytest.mark.timeout(90)


def test_fifo_and_types(make):
    q = make("Queue", name=make.name())
    items = [b"raw", "str \udcff", {"a": 1}, 7, None, bytearray(b"ba"), ("t", 2.5)]
    for item in items:
        q.put(item)
    got = [q.get(timeout=5) for _ in items]
    expected = [bytes(i) if isinstance(i, bytearray) else i for i in items]
    assert got == expected
    assert type(got[0]) is bytes and type(got[5]) is bytes
    assert q.qsize() == 0 and q.empty()


def test_isinstance_of_the_public_classes(make):
    q = make("Queue", name=make.name())
    jq = make("JoinableQueue", name=make.name())
    assert isinstance(q, pyqueue.Queue) and not isinstance(q, pyqueue.JoinableQueue)
    assert isinstance(jq, pyqueue.Queue) and isinstance(jq, pyqueue.JoinableQueue)


def test_maxsize_full_and_timeouts(make):
    q = make("Queue", 2, name=make.name())
    assert q.maxsize == 2
    q.put(1)
    q.put_nowait(2)
    assert q.full() and q.qsize() == 2
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    with pytest.raises(queue.Full):
        q.put(3, block=False)
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.2)
    assert time.monotonic() - t0 >= 0.19           # it waited out its timeout
    with pytest.raises(queue.Full):
        q.put(3, timeout=-1)                       # negative: like 0
    with pytest.raises(TypeError):
        q.put(3, timeout="0.1")
    assert [q.get(), q.get_nowait()] == [1, 2]
    with pytest.raises(queue.Empty):
        q.get_nowait()
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.2)
    assert time.monotonic() - t0 >= 0.19
    with pytest.raises(TypeError):
        q.get(timeout=b"1")
    assert q.qsize() == 0


def test_put_many_get_many(make):
    q = make("Queue", name=make.name())
    assert q.put_many(range(2500)) == 2500
    assert q.put_many([]) == 0
    assert q.qsize() == 2500
    first = q.get_many(1000)
    assert first == list(range(1000))
    rest = q.get_many(5000, block=False)
    assert rest == list(range(1000, 2500))
    with pytest.raises(queue.Empty):
        q.get_many(block=False)
    with pytest.raises(queue.Empty):
        q.get_many(timeout=0.05)
    with pytest.raises(ValueError):
        q.get_many(0)


def test_put_many_on_a_bounded_queue_keeps_what_fit(make):
    q = make("Queue", 3, name=make.name())
    with pytest.raises(queue.Full):
        q.put_many(range(5), timeout=0.1)
    assert q.qsize() == 3
    assert q.get_many(10) == [0, 1, 2]


def test_overflow_reject(make):
    q = make("Queue", 2, name=make.name(), overflow="reject")
    assert q.overflow == "reject"
    q.put_many([1, 2])
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        q.put(3, timeout=30)                       # at once, whatever block says
    assert time.monotonic() - t0 < 20
    assert q.stats()["rejected"] == 1
    assert q.get_many(10) == [1, 2]


def test_overflow_drop_oldest(make):
    q = make("Queue", 3, name=make.name(), overflow="drop_oldest")
    for i in range(5):
        q.put(i, block=False)
    assert q.put_many([5, 6]) == 2
    assert q.get_many(10) == [4, 5, 6]
    assert q.stats()["dropped"] == 4


# A batch of 5 goes through one script on Redis; one of 40 through a
# transaction: a plain RPUSH, then the script that takes back what does
# not fit (backends/redis/queue.py, _PUT_PUSHED). (Into a queue that
# already holds some, shared memory puts a batch in groups of maxsize and
# Redis what fits: tests/test_redis_queue_batches.py compares the two
# Redis forms there.)
@pytest.mark.parametrize("n", [5, 40])
def test_put_many_past_maxsize_by_overflow(make, n):
    cap = n // 2 + 1
    q = make("Queue", cap, name=make.name())
    with pytest.raises(queue.Full):
        q.put_many(range(n), timeout=0.05)
    assert q.stats()["enqueued"] == cap
    assert q.get_many(1000) == list(range(cap))
    r = make("Queue", cap, name=make.name(), overflow="reject")
    with pytest.raises(queue.Full):
        r.put_many(range(n))
    assert r.stats()["rejected"] == n - cap
    assert r.get_many(1000) == list(range(cap))
    d = make("Queue", cap, name=make.name(), overflow="drop_oldest")
    assert d.put_many(range(n)) == n
    assert d.stats()["dropped"] == n - cap
    assert d.get_many(1000) == list(range(n - cap, n))
    f = make("Queue", 1, name=make.name())
    f.put(-1)
    with pytest.raises(queue.Full):                 # none fits: none put
        f.put_many(range(n), block=False)
    assert f.get_many(1000) == [-1]
    with pytest.raises(queue.Full):                 # empty, and none fits after one
        f.put_many(range(n), block=False)
    assert f.get_many(1000) == [0]


@pytest.mark.parametrize("n", [5, 40])
def test_joinable_batch_with_drops_counts_each_task_once(make, n):
    jq = make("JoinableQueue", 3, name=make.name(), overflow="drop_oldest")
    assert jq.put_many(range(n)) == n
    got = jq.get_many(1000)
    assert got == list(range(n - 3, n))
    for _ in got:
        jq.task_done()
    jq.join()                                      # the dropped counted as done
    with pytest.raises(ValueError):
        jq.task_done()


@pytest.mark.parametrize("n", [5, 40])
def test_a_batch_into_a_shut_down_or_removed_queue_puts_nothing(make, n):
    q = make("Queue", name=make.name())
    q.put_many(["kept"])
    q.shutdown()
    with pytest.raises(pyqueue.ShutDown):
        q.put_many(range(n))
    assert q.get_many(1000) == ["kept"]
    with pytest.raises(pyqueue.ShutDown):
        q.get_many(1000, timeout=0.05)


@pytest.mark.parametrize("n", [5, 40])
def test_redis_a_batch_into_a_removed_queue_puts_nothing(redis_url, n):
    # (On shared memory a removed queue's handles keep their mapping.)
    b = pyqueue.connect(redis_url)
    q = b.Queue(name="c-removed-" + str(n))
    again = b.Queue.open(q.name)
    q.unlink()
    with pytest.raises(SegmentNotFound):
        again.put_many(range(n))
    assert b.client.exists(*q._keys) == 0           # nothing left behind
    with pytest.raises(SegmentNotFound):
        again.get_many(1000, block=False)


def test_an_interrupt_while_a_batch_is_decoded_keeps_the_batch(make):
    """A BaseException (a Ctrl-C) while get_many decodes: the interrupt
    goes on, nothing taken is lost, and the next call returns the whole
    batch in order."""
    q = make("Queue", name=make.name())
    msgs = ["a", bw.InterruptsOnce(1), "b", bw.InterruptsOnce(2)]
    q.put_many(msgs)
    bw.arm_interrupts(1)
    with pytest.raises(bw.Interrupt):
        q.get_many(10, block=False)
    assert q.get_many(10, block=False) == msgs
    bw.arm_interrupts(1)
    q.put(bw.InterruptsOnce(3))                    # the first of its batch
    with pytest.raises(bw.Interrupt):
        q.get_many(10, block=False)
    assert q.get_many(10, block=False) == [bw.InterruptsOnce(3)]


def test_an_interrupt_while_a_get_decodes_keeps_the_message(make):
    q = make("Queue", name=make.name())
    q.put(bw.InterruptsOnce(7))
    q.put("next")
    bw.arm_interrupts(1)
    with pytest.raises(bw.Interrupt):
        q.get(block=False)
    assert q.get(block=False) == bw.InterruptsOnce(7)
    assert q.get(block=False) == "next"


def test_bad_settings(make):
    with pytest.raises(ValueError):
        make("Queue", name=make.name(), overflow="sometimes")
    with pytest.raises(TypeError):
        make("Queue", "3")
    with pytest.raises(ValueError):
        make("Queue", name="a/b")
    name = make.name()
    q = make("Queue", 4, name=name)
    with pytest.raises(ValueError, match="maxsize"):
        make("Queue", 5, name=name)
    same = make("Queue", name=name)                # settings not passed: the queue's
    assert same.maxsize == 4
    same.put("via same")
    assert q.get(timeout=5) == "via same"


def test_open_missing_and_mismatched(make, backend):
    with pytest.raises(SegmentNotFound):
        backend.Queue.open(make.name())
    name = make.name()
    make("Queue", name=name)
    with pytest.raises(SegmentMismatch):
        backend.JoinableQueue.open(name)
    with pytest.raises(SegmentMismatch):
        make("JoinableQueue", name=name)
    jname = make.name()
    jq = make("JoinableQueue", name=jname)
    plain = backend.Queue.open(jname)              # a Queue handle on a joinable one is fine
    plain.put(1)
    assert jq.get(timeout=5) == 1
    plain.close()


def test_closed_handle(make, backend):
    q = make("Queue", name=make.name())
    other = backend.Queue.open(q.name)
    other.close()
    with pytest.raises(ValueError):
        other.put(1)
    with pytest.raises(ValueError):
        other.get(block=False)
    q.put(1)                                       # the queue and other handles go on
    assert q.get(timeout=5) == 1
    other.join_thread()
    with pytest.raises(AssertionError):
        q.join_thread()


def test_max_message_bytes(make):
    q = make("Queue", name=make.name(), max_message_bytes=100)
    with pytest.raises(MessageTooLarge):
        q.put(b"x" * 101)
    q.put(b"x" * 100)
    assert q.get(timeout=5) == b"x" * 100
    assert q.qsize() == 0
    with pytest.raises(MessageTooLarge):
        q.put_many([b"a", b"x" * 101, b"b"])       # checked before anything is put
    assert q.qsize() == 0


def test_custom_serializer(make):
    ser = (lambda o: repr(o).encode(), lambda b: ("decoded", bytes(b).decode()))
    q = make("Queue", name=make.name(), serializer=ser)
    q.put([1, 2])
    assert q.get(timeout=5) == ("decoded", "[1, 2]")


def test_blocked_get_wakes_on_a_put_from_another_process(make, ctx, procs):
    q = make("Queue", name=make.name())
    p = procs.start(ctx, _workers.put_all, q, ["from child"])
    assert q.get(timeout=30) == "from child"
    p.join(30)
    assert p.exitcode == 0


def test_blocked_put_wakes_when_another_process_gets(make, ctx, procs):
    q = make("Queue", 1, name=make.name())
    out = make("Queue", name=make.name())
    q.put(0)
    p = procs.start(ctx, _workers.get_n_to, q, 3, out)
    q.put(1, timeout=30)                           # room only once the child got 0
    q.put(2, timeout=30)
    assert out.get(timeout=30) == [0, 1, 2]
    p.join(30)
    assert p.exitcode == 0


def test_stats_waiting_consumers_counts_gets_blocked_in_any_process(make, ctx, procs,
                                                                    backend):
    q = make("Queue", name=make.name())
    out = make("Queue", name=make.name())
    assert q.stats()["waiting_consumers"] == 0
    p = procs.start(ctx, _workers.get_n_to, q, 1, out)     # blocked in get(timeout=30)
    assert wait_until(lambda: q.stats()["waiting_consumers"] == 1, 30), q.stats()
    q.put("wake")
    assert out.get(timeout=30) == ["wake"]
    p.join(30)
    assert p.exitcode == 0
    assert q.stats()["waiting_consumers"] == 0              # counted out once it got one
    with pytest.raises(queue.Empty):
        q.get(timeout=0.2)
    assert q.stats()["waiting_consumers"] == 0              # and when its timeout ends
    if backend.name != "redis":
        return  # shared memory: tests/test_crash.py::test_killed_while_parked_in_get
    # A get killed while blocked is never counted out: one too high, for good
    # (docs/api.md); the queue works on.
    p = procs.start(ctx, _workers.get_n_to, q, 1, out)
    assert wait_until(lambda: q.stats()["waiting_consumers"] == 1, 30), q.stats()
    p.kill()
    p.join(30)
    assert q.stats()["waiting_consumers"] == 1
    q.put("after")
    assert q.get(timeout=5) == "after"
    assert q.stats()["waiting_consumers"] == 1


def test_pickled_by_name_into_a_child(make, ctx, procs):
    q_in = make("Queue", name=make.name())
    q_out = make("Queue", name=make.name())
    q_in.put({"payload": [1, 2, 3]})
    p = procs.start(ctx, _workers.echo, q_in, q_out)
    assert q_out.get(timeout=30) == {"payload": [1, 2, 3]}
    p.join(30)
    assert p.exitcode == 0
    again = pickle.loads(pickle.dumps(q_in))
    q_in.put("same queue")
    assert again.get(timeout=5) == "same queue"
    again.close()


def test_joinable_across_processes(make, ctx, procs):
    jq = make("JoinableQueue", name=make.name())
    out = make("Queue", name=make.name())
    jq.put_many(["a", "b"])
    joiner = procs.start(ctx, _workers.join_then_report, jq, out)
    with pytest.raises(queue.Empty):               # 2 tasks unfinished: no join yet
        out.get(timeout=0.3)
    worker = procs.start(ctx, _workers.get_then_task_done, jq, 2)
    assert out.get(timeout=30) == "joined"
    for p in (joiner, worker):
        p.join(30)
        assert p.exitcode == 0
    jq.join()                                      # nothing unfinished: at once
    with pytest.raises(ValueError):
        jq.task_done()
    # ... and that task_done() changed nothing: the count is still right.
    jq.put("c")
    jq.get(timeout=5)
    jq.task_done()
    jq.join()
    with pytest.raises(ValueError):
        jq.task_done()


def _bad_loads(b):
    raise ValueError("cannot decode this")


def test_undecodable_message_is_reported_alone_and_counted(make):
    import pickle as p
    q = make("Queue", name=make.name(), serializer=(p.dumps, _bad_loads))
    q.put_many([1, 2])
    with pytest.raises(ValueError, match="cannot decode"):
        q.get(timeout=5)
    assert q.stats()["undecodable"] == 1
    with pytest.raises(pyqueue.UndecodableMessage) as e:   # get_many: wrapped
        q.get_many(10, timeout=5)
    assert isinstance(e.value.cause, ValueError)
    assert q.stats()["undecodable"] == 2 and q.qsize() == 0


def test_custom_serializer_refuses_a_planted_pickle(make, tmp_path):
    """A pickle record planted where a custom-serializer queue keeps its
    messages (shm: a record of another handle, the segment's flag cleared
    meanwhile; Redis: pushed onto its list by the raw client) is refused,
    never unpickled (the pickle would create a marker file)."""
    import json
    import os
    import pickle
    import struct
    from tests._support import shm_file
    marker = tmp_path / "ran"
    ser = (lambda o: json.dumps(o).encode(), lambda b: json.loads(bytes(b)))
    q = make("Queue", name=make.name(), serializer=ser)
    planted = _RunsCode("touch '%s'" % marker)
    if type(q).__module__.startswith("pyqueue.backends.redis"):
        q._backend.client.rpush(q._keys[1], b"p" + pickle.dumps(planted))
    else:
        # The flags: params[PQ_RING_PARAM_USER0 + PARAM_FLAGS] of the header
        # (csrc/pq_segment.h, pq_ring.h; pyqueue/_core.pyx).
        with open(shm_file(q.name), "r+b") as f:
            f.seek(72 + 8 * 4)
            flags = struct.unpack("<Q", f.read(8))[0]
            f.seek(72 + 8 * 4)
            f.write(struct.pack("<Q", flags & ~1))
            f.flush()
            plain = type(q).open(q.name)
            plain.put(planted)
            plain.close()
            f.seek(72 + 8 * 4)
            f.write(struct.pack("<Q", flags))
    q.put({"after": 1})
    with pytest.raises(Exception, match="unpickle"):
        q.get(timeout=5)
    assert not os.path.exists(marker)
    assert q.get(timeout=5) == {"after": 1}
    assert not os.path.exists(marker)


class _RunsCode:
    """Pickles to a call of os.system: unpickling it runs a shell command."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os
        return (os.system, (self.command,))
