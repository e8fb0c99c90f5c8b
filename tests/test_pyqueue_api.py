"""pyqueue-only behaviour, as specified in docs/api.md."""

import json
import multiprocessing
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests import _workers
from tests._support import (
    drain,
    read_bytes,
    oob_segments,
    queue_segments,
    segment_exists,
    shm_file,
    unique_name,
    wait_until,
)

RING = 65536
WAIT = 10.0
SLACK = 2.0



# -- exceptions -----------------------------------------------------------------

def test_exception_hierarchy(pyqueue_mod):
    pq = pyqueue_mod
    import pyqueue.errors as errors

    assert issubclass(pq.PyQueueError, Exception)
    assert issubclass(pq.SegmentNotFound, pq.PyQueueError)
    assert issubclass(pq.SegmentNotFound, FileNotFoundError)
    assert issubclass(pq.SegmentMismatch, pq.PyQueueError)
    assert issubclass(pq.SegmentMismatch, ValueError)
    assert issubclass(pq.MessageTooLarge, pq.PyQueueError)
    assert issubclass(pq.MessageTooLarge, ValueError)
    for name in ("PyQueueError", "SegmentNotFound", "SegmentMismatch", "MessageTooLarge"):
        assert getattr(errors, name) is getattr(pq, name)


# -- default codec ---------------------------------------------------------------

def _bytes_likes(size):
    np = pytest.importorskip("numpy")
    raw = (bytes(range(256)) * (size // 256 + 1))[:size]
    floats = np.arange(size // 8, dtype=np.float64)
    return [
        ("bytes", raw),
        ("bytearray", bytearray(raw)),
        ("memoryview-bytes", memoryview(raw)),
        ("memoryview-bytearray", memoryview(bytearray(raw))),
        ("memoryview-slice", memoryview(raw + b"tail")[3:]),
        ("memoryview-numpy-float64", memoryview(floats)),
    ]


@pytest.mark.parametrize("size", [768, 40000, 3 * RING], ids=["in-ring", "out-of-band", "above-ring"])
def test_bytes_like_comes_out_as_bytes(make_queue, size):
    q = make_queue.Queue(capacity_bytes=RING)
    for label, obj in _bytes_likes(size):
        expected = memoryview(obj).tobytes()
        q.put(obj)
        out = q.get(timeout=WAIT)
        assert type(out) is bytes, label
        assert out == expected, label


@pytest.mark.parametrize(
    "text",
    ["", "ascii", "ünïcödé ☃ \U0001f600 \x00 nul", "x" * 40000, "é" * (3 * RING)],
    ids=["empty", "ascii", "unicode", "out-of-band", "above-ring"],
)
def test_str_comes_out_as_str(make_queue, text):
    q = make_queue.Queue(capacity_bytes=RING)
    q.put(text)
    out = q.get(timeout=WAIT)
    assert type(out) is str
    assert out == text


def test_other_objects_are_pickled(make_queue):
    q = make_queue.Queue(capacity_bytes=RING)
    values = [1, 2.5, None, True, (1, 2), [b"a", "b"], {"k": {1, 2}}, 2**70]
    for v in values:
        q.put(v)
    for v in values:
        out = q.get(timeout=WAIT)
        assert out == v and type(out) is type(v)


# -- custom serializer ------------------------------------------------------------

def _json_dumps(obj):
    return json.dumps(obj).encode("utf-8")


def _json_loads(data):
    return json.loads(bytes(data))


class PickleBomb:
    """Raises as soon as anything tries to pickle it."""

    def __reduce_ex__(self, protocol):
        raise AssertionError("pickle was called")

    def __reduce__(self):
        raise AssertionError("pickle was called")


def test_json_serializer(make_queue):
    q = make_queue.Queue(capacity_bytes=RING, serializer=(_json_dumps, _json_loads))
    q.put({"a": (1, 2), "b": None})
    q.put("text")
    q.put([1, 2, 3])
    # JSON turns tuples into lists: proof the serializer was used.
    assert q.get(timeout=WAIT) == {"a": [1, 2], "b": None}
    assert q.get(timeout=WAIT) == "text"
    assert q.get(timeout=WAIT) == [1, 2, 3]


def test_serializer_is_used_for_every_message(make_queue):
    calls = {"dumps": [], "loads": 0}

    def dumps(obj):
        calls["dumps"].append(obj)
        return b"<" + repr(obj).encode() + b">"

    def loads(data):
        calls["loads"] += 1
        return ("loaded", bytes(data))

    q = make_queue.Queue(capacity_bytes=RING, serializer=(dumps, loads))
    q.put(b"raw bytes")
    q.put("a str")
    q.put(PickleBomb())  # pickle must never be called
    q.put_many([1, 2])
    assert len(calls["dumps"]) == 5
    assert calls["dumps"][:2] == [b"raw bytes", "a str"]
    assert q.get(timeout=WAIT) == ("loaded", b"<b'raw bytes'>")
    assert q.get(timeout=WAIT) == ("loaded", b"<'a str'>")
    out = q.get(timeout=WAIT)
    assert out[0] == "loaded" and out[1].startswith(b"<<")
    assert q.get_many(max_messages=10, timeout=WAIT) == [("loaded", b"<1>"), ("loaded", b"<2>")]
    assert calls["loads"] == 5


def test_serializer_never_calls_pickle(make_queue, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle was called")

    for attr in ("dumps", "loads", "Pickler", "Unpickler"):
        monkeypatch.setattr(pickle, attr, forbidden)
    q = make_queue.Queue(capacity_bytes=RING, serializer=(_json_dumps, _json_loads))
    q.put({"x": 1})
    q.put_many([[1], [2]])
    assert q.get(timeout=WAIT) == {"x": 1}
    assert q.get_many(timeout=WAIT) == [[1], [2]]
    monkeypatch.undo()
    q2 = make_queue.Queue(capacity_bytes=RING, serializer=(repr_dumps, repr_loads))
    q2.put(PickleBomb())
    assert q2.get(timeout=WAIT) == "PickleBomb"


def repr_dumps(obj):
    return type(obj).__name__.encode()


def repr_loads(data):
    return bytes(data).decode()


def test_serializer_may_return_any_bytes_like(make_queue):
    q = make_queue.Queue(
        capacity_bytes=RING,
        serializer=(lambda o: bytearray(o.encode()), lambda b: bytes(b).decode() + "!"),
    )
    q.put("abc")
    assert q.get(timeout=WAIT) == "abc!"
    q2 = make_queue.Queue(
        capacity_bytes=RING,
        serializer=(lambda o: memoryview(o.encode()), lambda b: bytes(b).decode() + "?"),
    )
    q2.put("xyz")
    assert q2.get(timeout=WAIT) == "xyz?"


def test_serializer_errors_reach_the_caller(make_queue):
    q = make_queue.Queue(capacity_bytes=RING, serializer=(_json_dumps, _json_loads))
    with pytest.raises(TypeError):
        q.put(b"json cannot encode bytes")  # no raw bypass with a serializer
    with pytest.raises(TypeError):
        q.put({1, 2})
    assert q.qsize() == 0
    q.put({"ok": True})
    assert q.get(timeout=WAIT) == {"ok": True}


def test_serializer_returning_non_bytes_is_an_error(make_queue):
    q = make_queue.Queue(capacity_bytes=RING, serializer=(lambda o: 12345, lambda b: b))
    with pytest.raises((TypeError, ValueError)):
        q.put("x")
    assert q.qsize() == 0


# -- max_message_bytes -------------------------------------------------------------

def test_message_too_large(pyqueue_mod, make_queue):
    q = make_queue.Queue(capacity_bytes=RING, max_message_bytes=1024)
    for big in (b"x" * 4096, "y" * 4096, list(range(2000)), bytearray(5000)):
        with pytest.raises(pyqueue_mod.MessageTooLarge) as info:
            q.put(big)
        assert isinstance(info.value, ValueError)
        assert isinstance(info.value, pyqueue_mod.PyQueueError)
    assert q.qsize() == 0
    q.put(b"s" * 512)
    q.put("small")
    assert q.get(timeout=WAIT) == b"s" * 512
    assert q.get(timeout=WAIT) == "small"


def test_message_too_large_is_raised_at_once_on_a_full_queue(pyqueue_mod, make_queue):
    q = make_queue.Queue(1, capacity_bytes=RING, max_message_bytes=1024)
    q.put("occupant")
    t0 = time.monotonic()
    with pytest.raises(pyqueue_mod.MessageTooLarge):
        q.put(b"x" * 4096, timeout=5)
    assert time.monotonic() - t0 < 1.0
    assert q.get(timeout=WAIT) == "occupant"


def test_no_cap_by_default(make_queue):
    q = make_queue.Queue(capacity_bytes=RING)
    big = b"b" * (4 * RING)
    q.put(big)
    assert q.get(timeout=WAIT) == big


# -- unpicklable objects -----------------------------------------------------------

def _unpicklables():
    def local_function():
        pass

    return [
        ("lambda", lambda: None),
        ("local-function", local_function),
        ("lock", threading.Lock()),
        ("generator", (i for i in range(3))),
    ]


@pytest.mark.parametrize("which", ["lambda", "local-function", "lock", "generator"])
def test_unpicklable_raises_in_caller_and_queue_survives(make_queue, which):
    obj = dict(_unpicklables())[which]
    with pytest.raises(Exception) as expected:
        pickle.dumps(obj, protocol=5)
    q = make_queue.Queue(4, capacity_bytes=RING)
    q.put("before")
    with pytest.raises(type(expected.value)):
        q.put(obj)
    with pytest.raises(type(expected.value)):
        q.put_nowait(obj)
    assert q.qsize() == 1
    q.put("after")
    assert q.get(timeout=WAIT) == "before"
    assert q.get(timeout=WAIT) == "after"
    s = q.stats()
    assert s["enqueued"] == 2 and s["depth"] == 0


def test_unpicklable_in_put_many(make_queue):
    q = make_queue.Queue(capacity_bytes=RING)
    with pytest.raises(Exception):
        pickle.dumps(threading.Lock())
    with pytest.raises(TypeError):
        q.put_many([1, threading.Lock(), 3])
    # Whether the items before the bad one went in is not specified; if
    # anything went in it is a prefix of the batch.
    assert drain(q) in ([], [1])
    q.put("ok")
    assert q.get(timeout=WAIT) == "ok"


# -- negative timeouts ---------------------------------------------------------------
# As in multiprocessing, a negative timeout means "do not wait" (like 0).

@pytest.mark.parametrize("maxsize", [0, 2])
def test_negative_timeout_means_no_wait(make_queue, maxsize):
    q = make_queue.Queue(maxsize, capacity_bytes=RING)
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=-1)
    with pytest.raises(queue.Empty):
        q.get_many(timeout=-1)
    assert time.monotonic() - t0 < WAIT
    q.put("a", timeout=-1)
    assert q.put_many(["b"], timeout=-0.5) == 1
    assert q.get(timeout=-0.001) == "a"
    assert q.get_many(timeout=-1) == ["b"]
    assert q.qsize() == 0


def test_negative_timeout_on_full_queue(make_queue):
    q = make_queue.Queue(1, capacity_bytes=RING)
    q.put("a")
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        q.put("b", timeout=-1)
    assert time.monotonic() - t0 < WAIT
    assert drain(q) == ["a"]


# -- exactness (no feeder thread) ------------------------------------------------------

def test_qsize_empty_full_are_exact_immediately(make_queue):
    q = make_queue.Queue(3, capacity_bytes=RING)
    q.put("a")
    assert q.qsize() == 1 and not q.empty() and not q.full()
    assert q.get_nowait() == "a"  # visible at once, unlike mp.Queue
    q.put_nowait(1)
    q.put_nowait(2)
    q.put_nowait(3)
    assert q.qsize() == 3 and q.full()
    assert q.get_nowait() == 1
    assert q.qsize() == 2 and not q.full()


def test_qsize_exact_after_child_puts(ctx, procs, make_queue):
    q = make_queue.Queue(capacity_bytes=RING)
    p = procs.start(ctx, _workers.put_items, q, list(range(25)))
    p.join(WAIT)
    assert p.exitcode == 0
    assert q.qsize() == 25
    assert drain(q) == list(range(25))


# -- batches ---------------------------------------------------------------------------

def test_put_many_get_many_basics(make_queue):
    q = make_queue.Queue(capacity_bytes=RING)
    assert q.put_many([]) == 0
    assert q.put_many(i for i in range(10)) == 10
    assert q.qsize() == 10
    assert q.get_many(max_messages=3) == [0, 1, 2]
    assert q.get_many() == list(range(3, 10))
    with pytest.raises(queue.Empty):
        q.get_many(block=False)
    mixed = [b"small", "x" * 20000, b"y" * (2 * RING), {"d": 1}, "end"]
    assert q.put_many(mixed) == len(mixed)
    assert q.get_many(max_messages=100, timeout=WAIT) == mixed


def test_get_many_returns_at_most_max_messages(make_queue):
    q = make_queue.Queue(capacity_bytes=2**20)
    assert q.put_many(range(1500)) == 1500
    first = q.get_many()
    assert first == list(range(1024))  # default max_messages=1024
    assert q.get_many(max_messages=5000) == list(range(1024, 1500))


def test_get_many_timeout_on_empty(make_queue):
    q = make_queue.Queue(capacity_bytes=RING)
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get_many(timeout=0.1)
    elapsed = time.monotonic() - t0
    assert 0.1 <= elapsed < 0.1 + SLACK


def test_get_many_waits_for_at_least_one(make_queue):
    q = make_queue.Queue(capacity_bytes=RING)
    go = threading.Event()

    def producer():
        go.wait(WAIT)
        q.put("first")

    t = threading.Thread(target=producer)
    t.start()
    try:
        go.set()
        out = q.get_many(timeout=WAIT)
    finally:
        t.join(WAIT)
    assert out == ["first"]


def test_put_many_larger_than_maxsize_blocks_until_drained(make_queue):
    q = make_queue.Queue(4, capacity_bytes=RING)
    got = []
    errors = []

    def consumer():
        try:
            while len(got) < 30:
                got.append(q.get(timeout=5))
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=consumer)
    t.start()
    try:
        # timeout=5 so that a put_many that can never fit fails quickly
        assert q.put_many(range(30), timeout=5) == 30
    finally:
        t.join(WAIT)
    assert errors == []
    assert got == list(range(30))


def test_batches_after_close_raise_valueerror(make_queue):
    q = make_queue.Queue(capacity_bytes=RING)
    q.close()
    with pytest.raises(ValueError):
        q.put_many([1])
    with pytest.raises(ValueError):
        q.get_many(block=False)


# -- overflow modes ------------------------------------------------------------------

def test_overflow_reject(make_queue):
    q = make_queue.Queue(2, capacity_bytes=RING, overflow="reject")
    q.put("a")
    q.put("b")
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        q.put("c")  # block=True, but reject answers at once
    with pytest.raises(queue.Full):
        q.put("c", timeout=5)
    with pytest.raises(queue.Full):
        q.put_nowait("c")
    assert time.monotonic() - t0 < 1.0
    s = q.stats()
    assert s["rejected"] == 3
    assert s["enqueued"] == 2
    assert s["dropped"] == 0
    assert drain(q) == ["a", "b"]
    q.put("d")
    assert q.get(timeout=WAIT) == "d"
    assert q.stats()["rejected"] == 3


def test_overflow_drop_oldest(make_queue):
    q = make_queue.Queue(3, capacity_bytes=RING, overflow="drop_oldest")
    for i in range(10):
        q.put(i, block=False)
    assert q.qsize() == 3
    s = q.stats()
    assert s["dropped"] == 7
    assert s["enqueued"] == 10
    assert s["depth"] == 3
    assert drain(q) == [7, 8, 9]
    assert q.stats()["dequeued"] == 3


def test_overflow_drop_oldest_by_bytes(make_queue):
    """maxsize=0: the ring's bytes are the limit; put never blocks or fails."""
    q = make_queue.Queue(0, capacity_bytes=RING, overflow="drop_oldest")
    n = 40
    for i in range(n):
        q.put((i, b"p" * 8000), block=False)
    got = drain(q)
    seqs = [i for i, _ in got]
    assert seqs, "everything was dropped"
    assert seqs == list(range(n - len(seqs), n)), "not the newest, in order: %r" % seqs
    assert all(data == b"p" * 8000 for _, data in got)
    assert len(seqs) < n
    s = q.stats()
    assert s["dropped"] == n - len(seqs)
    assert s["enqueued"] == n


def test_overflow_drop_oldest_frees_out_of_band_segments(make_queue):
    q = make_queue.Queue(2, capacity_bytes=RING, overflow="drop_oldest")
    for i in range(6):
        q.put(bytes([i]) * 30000)  # above RING/4: out of band
    assert len(oob_segments(q.name)) == 2
    assert drain(q) == [bytes([4]) * 30000, bytes([5]) * 30000]
    assert oob_segments(q.name) == set()
    assert queue_segments(q.name) == {os.path.basename(shm_file(q.name))}


def test_block_mode_ring_grows_past_capacity_bytes(make_queue):
    """maxsize=0 is unbounded (issue 9, item 9c): a full ring grows instead
    of making the put wait or raise Full (tests/test_unbounded.py)."""
    q = make_queue.Queue(0, capacity_bytes=RING)
    n = 4 * RING // 1000
    for _ in range(n):
        q.put_nowait(b"m" * 1000)
    assert q.qsize() == n and not q.full()
    assert q.get_many(n, timeout=WAIT) == [b"m" * 1000] * n


@pytest.mark.parametrize("bad", ["nope", "", "BLOCK", "drop-oldest"])
def test_bad_overflow_value(pyqueue_mod, bad):
    with pytest.raises(ValueError):
        pyqueue_mod.Queue(capacity_bytes=RING, overflow=bad)


def test_overflow_modes_on_joinable_queue(make_queue):
    jq = make_queue.JoinableQueue(1, capacity_bytes=RING, overflow="reject")
    jq.put("a")
    with pytest.raises(queue.Full):
        jq.put("b")
    assert jq.get(timeout=WAIT) == "a"
    jq.task_done()
    jq.join()


# -- sizes ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "requested,expected",
    [(1, RING), (RING, RING), (RING + 1, 2 * RING), (100000, 2**17), (2**20, 2**20)],
)
def test_capacity_rounding(make_queue, requested, expected):
    q = make_queue.Queue(capacity_bytes=requested)
    assert q.stats()["capacity_bytes"] == expected


def test_default_capacity(make_queue):
    q = make_queue.Queue()
    assert q.stats()["capacity_bytes"] == 32 * 2**20  # pyqueue.queues.DEFAULT_CAPACITY, reserved lazily
    assert q.stats()["maxsize"] <= 0


# -- stats ------------------------------------------------------------------------------

STATS_KEYS = {
    "enqueued", "dequeued", "rejected", "dropped", "abandoned", "depth",
    "depth_bytes", "capacity_bytes", "maxsize", "waiting_producers", "waiting_consumers",
}


def test_stats_keys_and_values(make_queue):
    q = make_queue.Queue(10, capacity_bytes=RING)
    s = q.stats()
    assert STATS_KEYS <= set(s), STATS_KEYS - set(s)
    assert all(isinstance(v, int) for v in s.values()), s
    assert s["depth"] == 0 and s["depth_bytes"] == 0
    for _ in range(3):
        q.put(b"d" * 1000)
    assert q.get(timeout=WAIT) == b"d" * 1000
    s = q.stats()
    assert s["enqueued"] == 3
    assert s["dequeued"] == 1
    assert s["depth"] == 2
    assert s["depth_bytes"] >= 2000
    assert s["capacity_bytes"] == RING
    assert s["maxsize"] == 10
    assert s["rejected"] == s["dropped"] == s["abandoned"] == 0
    assert s["waiting_producers"] == s["waiting_consumers"] == 0
    drain(q)
    s = q.stats()
    assert s["depth"] == 0 and s["depth_bytes"] == 0 and s["dequeued"] == 3


def test_stats_shared_between_handles(make_queue):
    q = make_queue.Queue(capacity_bytes=RING)
    other = pickle.loads(pickle.dumps(q))
    make_queue.track(other)
    q.put(1)
    q.put(2)
    assert other.stats()["enqueued"] == 2
    assert other.get(timeout=WAIT) == 1
    assert q.stats()["dequeued"] == 1


def test_stats_waiting_consumers_and_producers(make_queue):
    q = make_queue.Queue(1, capacity_bytes=RING)
    result = []
    t = threading.Thread(target=lambda: result.append(q.get(timeout=WAIT)))
    t.start()
    try:
        assert wait_until(lambda: q.stats()["waiting_consumers"] == 1, WAIT), q.stats()
        q.put("wake")
    finally:
        t.join(WAIT)
    assert result == ["wake"]
    assert q.stats()["waiting_consumers"] == 0

    q.put("occupant")
    t = threading.Thread(target=lambda: q.put("second", timeout=WAIT))
    t.start()
    try:
        assert wait_until(lambda: q.stats()["waiting_producers"] == 1, WAIT), q.stats()
        assert q.get(timeout=WAIT) == "occupant"
    finally:
        t.join(WAIT)
    assert q.stats()["waiting_producers"] == 0
    assert q.get(timeout=WAIT) == "second"


# -- names --------------------------------------------------------------------------------

def test_named_queue_create_or_open(make_queue):
    name = make_queue.unique_name()
    q1 = make_queue.Queue(5, name=name, capacity_bytes=RING)
    assert q1.name == name
    assert segment_exists(q1.name)
    # Other settings over an existing queue are refused, naming each one
    # (tests/test_settings.py); with no settings, or the same ones, it opens.
    with pytest.raises(ValueError, match="maxsize=5, not 99"):
        make_queue.Queue(99, name=name, capacity_bytes=2**20, overflow="reject")
    q2 = make_queue.Queue(name=name)
    assert q2.name == q1.name
    s = q2.stats()
    assert s["maxsize"] == 5
    assert s["capacity_bytes"] == RING
    q1.put("through q1")
    assert q2.get(timeout=WAIT) == "through q1"
    for i in range(5):
        q2.put(i, block=False)
    with pytest.raises(queue.Full):
        q2.put("sixth", block=False)  # maxsize 5 from q1
    q3 = make_queue.open(name)
    assert q3.get(timeout=WAIT) == 0
    assert q3.stats()["maxsize"] == 5


def test_named_queue_outlives_handles_until_unlink(pyqueue_mod, make_queue):
    name = make_queue.unique_name()
    q = pyqueue_mod.Queue(name=name, capacity_bytes=RING)
    q.put("persisted")
    q.close()
    assert segment_exists(name)
    q2 = make_queue.open(name)
    assert q2.get(timeout=WAIT) == "persisted"
    q2.unlink()
    assert not segment_exists(name)
    with pytest.raises(pyqueue_mod.SegmentNotFound):
        pyqueue_mod.Queue.open(name)


def test_open_missing_name(pyqueue_mod):
    name = unique_name("missing")
    with pytest.raises(pyqueue_mod.SegmentNotFound) as info:
        pyqueue_mod.Queue.open(name)
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, pyqueue_mod.PyQueueError)
    assert not segment_exists(name)


_read = read_bytes


@pytest.fixture
def foreign_segment(raw_segments):
    """Raw segments named like queues (see conftest.raw_segments)."""
    return lambda content, size=None: raw_segments(content, size, tag="foreign")


@pytest.mark.parametrize(
    "content,size",
    [
        (bytes(range(256)) * 16, None),
        (b"\xde\xad\xbe\xef" * 1024, None),
        (b"\x00" * 4096, None),
        (b"", 0),
        (b"PYQUEUE\x00", 8),
        (b"", RING + 4096),
    ],
    ids=["junk", "deadbeef", "zeros", "zero-size", "magic-only", "zeros-large"],
)
def test_open_foreign_segment_is_a_mismatch(pyqueue_mod, foreign_segment, content, size):
    name = foreign_segment(content, size)
    before = _read(shm_file(name))
    with pytest.raises(pyqueue_mod.SegmentMismatch) as info:
        pyqueue_mod.Queue.open(name)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, pyqueue_mod.PyQueueError)
    # Neither overwritten nor removed.
    assert _read(shm_file(name)) == before


def test_create_or_open_on_a_foreign_segment_is_a_mismatch(pyqueue_mod, foreign_segment):
    content = b"\xde\xad\xbe\xef" * 1024
    name = foreign_segment(content)
    # Queue(name=...) opens it since it exists: same answer, and the segment
    # is not overwritten.
    with pytest.raises(pyqueue_mod.SegmentMismatch):
        pyqueue_mod.Queue(name=name, capacity_bytes=RING)
    assert _read(shm_file(name)) == content


def test_open_truncated_copy_of_a_queue_is_a_mismatch(pyqueue_mod, make_queue, foreign_segment):
    q = make_queue.Queue(capacity_bytes=RING)
    head = _read(shm_file(q.name), 1024)
    name = foreign_segment(head)
    with pytest.raises(pyqueue_mod.SegmentMismatch):
        pyqueue_mod.Queue.open(name)


def test_unlink_removes_the_name(pyqueue_mod, make_queue):
    q = make_queue.Queue(capacity_bytes=RING)
    name = q.name
    assert segment_exists(name)
    q.unlink()
    assert not segment_exists(name)
    with pytest.raises(pyqueue_mod.SegmentNotFound):
        pyqueue_mod.Queue.open(name)


def test_unnamed_queues_get_distinct_names(make_queue):
    names = {make_queue.Queue(capacity_bytes=RING).name for _ in range(5)}
    assert len(names) == 5
    for name in names:
        assert segment_exists(name)


# -- permissions ------------------------------------------------------------------------

@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_segment_mode_is_0600_by_default(make_queue, umask_022):
    unnamed = make_queue.Queue(capacity_bytes=RING)
    named = make_queue.Queue(name=make_queue.unique_name(), capacity_bytes=RING)
    for q in (unnamed, named):
        assert os.stat(shm_file(q.name)).st_mode & 0o777 == 0o600


def test_segment_mode_parameter(make_queue, umask_022):
    q = make_queue.Queue(name=make_queue.unique_name(), capacity_bytes=RING, mode=0o640)
    assert os.stat(shm_file(q.name)).st_mode & 0o777 == 0o640


def test_mode_is_exact_whatever_the_umask(make_queue):
    """The mode is what the queue is shared with; a restrictive umask must
    not narrow it -- neither for the queue's segment nor for the segments
    its large (out-of-band) messages travel in."""
    old = os.umask(0o077)
    try:
        q = make_queue.Queue(name=make_queue.unique_name(), capacity_bytes=RING, mode=0o640)
        q.put(b"o" * 40000)  # out of band
        new = oob_segments(q.name)
    finally:
        os.umask(old)
    assert os.stat(shm_file(q.name)).st_mode & 0o777 == 0o640
    assert new, "expected an out-of-band segment"
    for entry in new:
        mode = os.stat(os.path.join("/dev/shm", entry)).st_mode & 0o777
        assert mode == 0o640, "%s has mode %o" % (entry, mode)
    assert q.get(timeout=WAIT) == b"o" * 40000


def test_out_of_band_segments_are_private_too(make_queue, umask_022):
    q = make_queue.Queue(capacity_bytes=RING)
    q.put(b"o" * 40000)  # out of band
    new = oob_segments(q.name)
    assert new
    for entry in new:
        assert os.stat(os.path.join("/dev/shm", entry)).st_mode & 0o077 == 0, entry
    assert q.get(timeout=WAIT) == b"o" * 40000


# -- lifecycle of unnamed queues -------------------------------------------------------------

def test_unnamed_segment_removed_when_creator_exits(ctx, procs, pyqueue_mod):
    report = ctx.Queue()
    proceed = ctx.Event()
    p = procs.start(ctx, _workers.create_unnamed_and_report, report, proceed)
    name = report.get(timeout=WAIT)
    q = None
    try:
        assert segment_exists(name)
        q = pyqueue_mod.Queue.open(name)
        assert q.get(timeout=WAIT) == "hello"
        # The creator exits while this process keeps its handle open ...
        proceed.set()
        p.join(WAIT)
        assert p.exitcode == 0
        assert not segment_exists(name), "segment %s outlived its creator" % name
        # ... and keeps using the queue after the name is gone.
        q.put_many(["after", "the creator"])
        assert q.get_many(2, timeout=WAIT) == ["after", "the creator"]
        assert q.qsize() == 0
    finally:
        proceed.set()
        if q is not None:
            q.close()
    report.close()
    report.join_thread()


def test_closed_unnamed_queues_give_their_memory_back(pyqueue_mod):
    """20 x Queue() + close() + del held 640 MiB until exit: the creator's
    close() or collection of a handle nobody else can reach unlinks it."""
    names = []
    for _ in range(20):
        q = pyqueue_mod.Queue()
        q.put(1)
        names.append(q.name)
        q.close()
        del q
    assert [n for n in names if segment_exists(n)] == []
    for _ in range(5):                      # no close(): collected
        q = pyqueue_mod.Queue()
        q.put(1)
        names.append(q.name)
    del q
    assert [n for n in names if segment_exists(n)] == []


def test_unnamed_queue_handed_out_keeps_its_name_after_creator_close(pyqueue_mod):
    pickled = pyqueue_mod.Queue(capacity_bytes=RING)
    data = pickle.dumps(pickled)
    pickled.close()
    assert segment_exists(pickled.name)     # a pickle of it is still out there
    copy = pickle.loads(data)
    copy.put("via the pickle")
    assert copy.get(timeout=WAIT) == "via the pickle"
    copy.close()

    opened = pyqueue_mod.Queue(capacity_bytes=RING)
    other = pyqueue_mod.Queue.open(opened.name)
    del opened
    assert segment_exists(other.name)       # opened by name: it stays
    other.put("still here")
    assert other.get(timeout=WAIT) == "still here"
    other.close()
    for q in (pickled, other):
        q.unlink()                          # otherwise at exit, as before
        assert not segment_exists(q.name)


def test_creator_close_leaves_children_working(ctx, procs, pyqueue_mod):
    """A child holding the creator's queue (inherited under fork, a pickle
    under spawn) keeps using it after the creator closed its handle."""
    q = pyqueue_mod.Queue(capacity_bytes=RING)
    go = ctx.Event()
    report = ctx.Queue()
    p = procs.start(ctx, _workers.get_after_and_report, q, go, report)
    q.put("for the child")
    q.close()
    # Under fork nothing was pickled: the name went with the close (the
    # child maps the segment); under spawn the pickle keeps it until exit.
    assert segment_exists(q.name) == (ctx.get_start_method() != "fork")
    go.set()
    assert report.get(timeout=WAIT) == "for the child"
    p.join(WAIT)
    assert p.exitcode == 0
    q.unlink()
    report.close()
    report.join_thread()


def test_unnamed_segment_removed_when_creator_interpreter_exits(pyqueue_mod):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        "import sys, pyqueue\n"
        "q = pyqueue.Queue(capacity_bytes=65536)\n"
        "q.put(b'x' * 40000)\n"  # an out-of-band message left in it, too
        "print(q.name, flush=True)\n"
        "sys.stdin.readline()\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [root, env.get("PYTHONPATH")] if p)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        name = proc.stdout.readline().strip()
        assert name, proc.stderr.read()
        assert segment_exists(name)
        proc.stdin.write("\n")
        proc.stdin.flush()
        _out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert not segment_exists(name)
    assert queue_segments(name) == set()  # out-of-band leftovers too


def test_unnamed_segment_survives_a_child_that_used_it(ctx, procs, make_queue):
    q = make_queue.Queue(capacity_bytes=RING)
    p = procs.start(ctx, _workers.put_and_exit, q, "from child")
    p.join(WAIT)
    assert p.exitcode == 0
    assert segment_exists(q.name)
    assert q.get(timeout=WAIT) == "from child"
    q.put("still works")
    assert q.get(timeout=WAIT) == "still works"


# -- pickling -----------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_pickle_round_trip_outside_spawning(make_queue, protocol):
    q = make_queue.Queue(3, capacity_bytes=RING, overflow="reject")
    data = pickle.dumps(q, protocol=protocol)
    assert len(data) < 4096  # a reference, not the contents
    q2 = make_queue.track(pickle.loads(data))
    assert q2.name == q.name
    q2.put("via copy")
    assert q.get(timeout=WAIT) == "via copy"
    q.put("via original")
    assert q2.get(timeout=WAIT) == "via original"
    # Parameters live in the segment.
    for i in range(3):
        q2.put(i)
    with pytest.raises(queue.Full):
        q2.put("rejected", timeout=5)
    assert q2.stats()["maxsize"] == 3
    # Closing the copy does not close or remove the original.
    q2.close()
    with pytest.raises(ValueError):
        q2.put("closed")
    assert segment_exists(q.name)
    assert drain(q) == [0, 1, 2]


def test_pickle_joinable_and_simple(make_queue):
    jq = make_queue.JoinableQueue(capacity_bytes=RING)
    jq2 = make_queue.track(pickle.loads(pickle.dumps(jq)))
    jq.put("task")
    assert jq2.get(timeout=WAIT) == "task"
    jq2.task_done()
    jq.join()
    with pytest.raises(ValueError):
        jq.task_done()

    sq = make_queue.SimpleQueue(capacity_bytes=RING)
    sq2 = make_queue.track(pickle.loads(pickle.dumps(sq)))
    sq2.put("simple")
    assert sq.get() == "simple"
    assert sq.empty() and sq2.empty()


def test_pickled_copy_of_unnamed_queue_does_not_own_it(make_queue):
    """A pickled handle that is dropped must not remove the segment."""
    q = make_queue.Queue(capacity_bytes=RING)
    copy = pickle.loads(pickle.dumps(q))
    copy.put("x")
    copy.close()
    del copy
    assert segment_exists(q.name)
    assert q.get(timeout=WAIT) == "x"


def test_pass_to_forkserver_process(procs, make_queue):
    fs = multiprocessing.get_context("forkserver")
    q = make_queue.Queue(capacity_bytes=RING)
    jq = make_queue.JoinableQueue(capacity_bytes=RING)
    p = procs.start(fs, _workers.put_items, q, ["via forkserver", b"b" * 40000])
    assert q.get(timeout=WAIT) == "via forkserver"
    assert q.get(timeout=WAIT) == b"b" * 40000
    p.join(WAIT)
    assert p.exitcode == 0
    almost, go = fs.Event(), fs.Event()
    jq.put("t1")
    jq.put("t2")
    p2 = procs.start(fs, _workers.joinable_worker, jq, 2, almost, go)
    assert almost.wait(WAIT)
    go.set()
    p2.join(WAIT)
    assert p2.exitcode == 0
    jq.join()


# -- SimpleQueue / JoinableQueue specifics ------------------------------------------------------

def test_simplequeue_options_and_batches(pyqueue_mod, make_queue):
    name = make_queue.unique_name()
    sq = make_queue.SimpleQueue(capacity_bytes=RING, name=name, serializer=(_json_dumps, _json_loads))
    assert sq.name == name
    assert sq.empty()
    assert sq.put_many([(1, 2), {"a": None}]) == 2
    sq.put("three")
    assert sq.get_many(max_messages=2) == [[1, 2], {"a": None}]
    assert sq.get() == "three"
    assert sq.empty()
    sq.close()


def test_joinable_counts_batches(make_queue):
    jq = make_queue.JoinableQueue(capacity_bytes=RING)
    assert jq.put_many(["a", "b", "c"]) == 3
    assert jq.get_many(timeout=WAIT) == ["a", "b", "c"]
    done = threading.Event()
    joiner = threading.Thread(target=lambda: (jq.join(), done.set()), daemon=True)
    joiner.start()
    jq.task_done()
    jq.task_done()
    assert not done.wait(0.2)  # one task still outstanding
    jq.task_done()
    assert done.wait(WAIT)
    joiner.join(WAIT)
    with pytest.raises(ValueError):
        jq.task_done()


def test_joinable_queue_options(make_queue):
    name = make_queue.unique_name()
    jq = make_queue.JoinableQueue(2, name=name, capacity_bytes=RING)
    jq.put(1)
    jq.put(2)
    with pytest.raises(queue.Full):
        jq.put(3, block=False)
    other = make_queue.JoinableQueue(name=name)
    assert other.get(timeout=WAIT) == 1
    other.task_done()
    assert jq.get(timeout=WAIT) == 2
    jq.task_done()
    jq.join()
    other.join()


# -- numpy ----------------------------------------------------------------------------------

def _arrays(np):
    base = np.arange(3 * 2**20 // 8, dtype=np.float64)
    return {
        "float64-2MiB": np.arange(2 * 2**20 // 8, dtype=np.float64).reshape(1024, -1),
        "int16-noncontiguous": np.arange(400000, dtype=np.int16).reshape(800, 500)[::3, 1::2],
        "bool": (np.arange(100003) % 7) == 0,
        "float32-fortran": np.asfortranarray(np.linspace(0, 1, 300000, dtype=np.float32).reshape(600, 500)),
        "structured": np.array([(i, float(i) / 3) for i in range(5000)], dtype=[("i", "<i8"), ("f", "<f8")]),
        "view-of-large": base[1000:2**17],
    }


@pytest.mark.parametrize("capacity", [RING, 32 * 2**20], ids=["small-ring", "default-ring"])
def test_numpy_round_trip(make_queue, capacity):
    np = pytest.importorskip("numpy")
    q = make_queue.Queue(capacity_bytes=capacity)
    arrays = _arrays(np)
    for arr in arrays.values():
        q.put(arr)
    for label, arr in arrays.items():
        out = q.get(timeout=WAIT)
        assert isinstance(out, np.ndarray), label
        assert out.dtype == arr.dtype and out.shape == arr.shape, label
        assert np.array_equal(out, arr), label


def test_numpy_12mib_out_of_band_in_default_ring(make_queue):
    np = pytest.importorskip("numpy")
    q = make_queue.Queue()
    arr = np.random.default_rng(1).standard_normal(12 * 2**20 // 8)
    q.put(arr)
    out = q.get(timeout=WAIT)
    assert np.array_equal(out, arr)


@pytest.mark.parametrize("nbytes", [8000, 40000], ids=["in-ring", "out-of-band"])
def test_received_array_is_not_aliased_to_shared_memory(make_queue, nbytes):
    np = pytest.importorskip("numpy")
    q = make_queue.Queue(capacity_bytes=RING)
    arr = np.full(nbytes // 8, 1.5)
    q.put(arr)
    out = q.get(timeout=WAIT)
    # Push enough other data through to overwrite the ring several times.
    for i in range(40):
        q.put(np.full(nbytes // 8, float(i)))
        q.get(timeout=WAIT)
    assert np.array_equal(out, arr)
    out[:] = 0  # and it is writable and ours
    assert arr[0] == 1.5


# -- blocking, timeouts, GIL, SIGINT -------------------------------------------------------------

@pytest.mark.parametrize("op", ["get", "get_many", "put"])
def test_blocking_call_releases_the_gil(make_queue, op):
    q = make_queue.Queue(1, capacity_bytes=RING)
    if op == "put":
        q.put("occupant")
    counter = [0]
    seen = {}
    done = threading.Event()
    errors = []

    def blocker():
        seen["before"] = counter[0]
        try:
            if op == "put":
                with pytest.raises(queue.Full):
                    q.put("x", timeout=0.3)
            elif op == "get_many":
                with pytest.raises(queue.Empty):
                    q.get_many(timeout=0.3)
            else:
                with pytest.raises(queue.Empty):
                    q.get(timeout=0.3)
        except BaseException as e:
            errors.append(e)
        seen["after"] = counter[0]
        done.set()

    t = threading.Thread(target=blocker)
    t.start()
    deadline = time.monotonic() + WAIT
    while not done.is_set() and time.monotonic() < deadline:
        counter[0] += 1
    t.join(WAIT)
    assert errors == []
    assert seen["after"] - seen["before"] > 1000, seen


def test_joinable_join_releases_the_gil(ctx, procs, make_queue):
    """Checked in a child: a join() that held the GIL would freeze the
    process that calls it, and this one must stay able to time out."""
    jq = make_queue.JoinableQueue(capacity_bytes=RING)
    jq.put("task")
    assert jq.get(timeout=WAIT) == "task"
    results = ctx.Queue()
    p = procs.start(ctx, _workers.join_gil_probe, jq, results)
    tag, count, joined_early = results.get(timeout=WAIT)
    assert not joined_early  # a task was outstanding
    assert count > 1000
    jq.task_done()
    p.join(WAIT)
    assert p.exitcode == 0
    results.close()
    results.join_thread()


@pytest.mark.parametrize("timeout", [0.05, 0.3])
def test_get_and_put_timeouts_are_honoured(make_queue, timeout):
    q = make_queue.Queue(1, capacity_bytes=RING)
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=timeout)
    elapsed = time.monotonic() - t0
    assert timeout <= elapsed < timeout + SLACK
    q.put("occupant")
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        q.put("x", timeout=timeout)
    elapsed = time.monotonic() - t0
    assert timeout <= elapsed < timeout + SLACK
    assert drain(q) == ["occupant"]


def test_blocked_get_wakes_on_put_from_other_process(ctx, procs, make_queue):
    q = make_queue.Queue(capacity_bytes=RING)
    p = procs.start(ctx, _workers.put_items, q, ["hello"])
    t0 = time.monotonic()
    assert q.get(timeout=WAIT) == "hello"
    assert time.monotonic() - t0 < WAIT
    p.join(WAIT)


@pytest.mark.parametrize("op", ["get", "get_many", "put", "join"])
def test_sigint_interrupts_blocking_call(ctx, procs, make_queue, op):
    q = make_queue.JoinableQueue(1, capacity_bytes=RING)
    if op in ("put", "join"):
        q.put("occupant")  # full, and one unfinished task
    ready = ctx.Event()
    p = procs.start(ctx, _workers.sigint_blocker, q, ready, op)
    assert ready.wait(WAIT)
    key = {"put": "waiting_producers", "join": None}.get(op, "waiting_consumers")
    if key is not None:
        # Best effort: let it get into the blocking wait (the signal may also
        # arrive just before it; a KeyboardInterrupt is due either way).
        wait_until(lambda: q.stats()[key] >= 1, 5.0)
    os.kill(p.pid, signal.SIGINT)
    p.join(WAIT)
    assert p.exitcode == _workers.EXIT_KEYBOARD_INTERRUPT, p.exitcode
    # The interrupted call left the queue consistent.
    if key is not None:
        assert wait_until(lambda: q.stats()[key] == 0, WAIT), q.stats()
    if op in ("put", "join"):
        assert drain(q) == ["occupant"]
        q.task_done()
    q.put("after")
    assert q.get(timeout=WAIT) == "after"
    q.task_done()
    q.join()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown a segment to another user")
def test_segment_of_another_user_is_refused(make_queue, pyqueue_mod):
    """Names are predictable: a segment another user made (a squatter) is
    refused unless the caller trusts its owner on purpose."""
    name = make_queue.unique_name("owner")
    q = make_queue.Queue(name=name, capacity_bytes=RING)
    os.chown(shm_file(name), 65534, 65534)
    with pytest.raises(pyqueue_mod.SegmentNotOwned, match="uid 65534"):
        pyqueue_mod.Queue.open(name)
    with pytest.raises(PermissionError):
        pyqueue_mod.Queue(name=name, capacity_bytes=RING)     # create-or-open
    shared = pyqueue_mod.Queue.open(name, trust_owner=True)
    shared.put("hello")
    assert q.get(timeout=WAIT) == "hello"
    again = pickle.loads(pickle.dumps(shared))                 # the trust travels
    again.put("again")
    assert q.get(timeout=WAIT) == "again"
    for h in (shared, again):
        h.close()
