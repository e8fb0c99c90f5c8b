"""Drop-in suite: the SAME test bodies run against multiprocessing's queues
and pyqueue's (``impl`` / ``impl_ctx`` fixtures, ids ``multiprocessing`` and
``pyqueue``), proving identical observable behaviour.

multiprocessing.Queue hands ``put`` to a feeder thread, so right after a
``put`` the tests wait with ``get(timeout=...)`` (or a deadline) instead of
``get_nowait()``.  Behaviour that only pyqueue has lives in
test_pyqueue_api.py.
"""

import queue
import threading
import time

import pytest

from tests import _workers
from tests._support import wait_until

WAIT = 10.0            # upper bound for blocking calls that must succeed
SLACK = 2.0            # generous upper bound on timeout overshoot

KINDS = ["Queue", "JoinableQueue"]

VALUES = [
    pytest.param(b"bytes \x00\xff", id="bytes"),
    pytest.param(b"", id="empty-bytes"),
    pytest.param("str with ünïcödé ☃", id="str"),
    pytest.param("", id="empty-str"),
    pytest.param(0, id="int-zero"),
    pytest.param(-42, id="int-negative"),
    pytest.param(2**100 + 7, id="int-big"),
    pytest.param(3.5, id="float"),
    pytest.param(True, id="bool"),
    pytest.param(None, id="None"),
    pytest.param({"a": 1, "b": [1, 2, 3], 3: "x"}, id="dict"),
    pytest.param((1, "two", b"three", None), id="tuple"),
    pytest.param(
        {"nested": [{"deep": ({1, 2}, frozenset({3}), [b"x", "y"])}], "n": None},
        id="nested",
    ),
]


def make(impl, kind, maxsize=0):
    return getattr(impl, kind)(maxsize)


# -- ordering and values --------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_fifo_order(impl, kind):
    q = make(impl, kind)
    for i in range(200):
        q.put(i)
    assert [q.get(timeout=WAIT) for _ in range(200)] == list(range(200))


def test_fifo_interleaved(impl):
    q = impl.Queue()
    expected = []
    got = []
    n = 0
    for round_ in range(20):
        for _ in range(round_ % 4 + 1):
            q.put(("m", n))
            expected.append(("m", n))
            n += 1
        got.append(q.get(timeout=WAIT))
    while len(got) < len(expected):
        got.append(q.get(timeout=WAIT))
    assert got == expected


@pytest.mark.parametrize("value", VALUES)
def test_roundtrip_value(impl, value):
    q = impl.Queue()
    q.put(value)
    out = q.get(timeout=WAIT)
    assert out == value
    assert type(out) is type(value)


def test_roundtrip_large_bytes(impl):
    q = impl.Queue()
    data = bytes(range(256)) * (5 * 2**20 // 256)  # 5 MiB
    assert len(data) == 5 * 2**20
    q.put(data)
    q.put(b"after")
    out = q.get(timeout=WAIT)
    assert type(out) is bytes
    assert out == data
    assert q.get(timeout=WAIT) == b"after"


def test_roundtrip_large_numpy(impl):
    np = pytest.importorskip("numpy")
    q = impl.Queue()
    arr = np.arange(2 * 2**20 // 8, dtype=np.float64).reshape(512, -1)  # 2 MiB
    assert arr.nbytes == 2 * 2**20
    q.put(arr)
    out = q.get(timeout=WAIT)
    assert isinstance(out, np.ndarray)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    assert np.array_equal(out, arr)
    assert out.flags.writeable
    out[0, 0] = -1.0  # the received array is the receiver's own
    assert arr[0, 0] == 0.0


def test_unpickling_error_propagates_and_queue_survives(impl):
    """mp.Queue unpickles in get(): the error reaches the caller and the
    message is consumed; the next message is still delivered."""
    q = impl.Queue()
    q.put(_workers.Unloadable("boom"))
    q.put("next")
    with pytest.raises(LookupError, match="boom"):
        q.get(timeout=WAIT)
    assert q.get(timeout=WAIT) == "next"


# -- Empty ------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_get_nonblocking_on_empty_raises_empty(impl, kind):
    q = make(impl, kind)
    with pytest.raises(queue.Empty):
        q.get(block=False)
    with pytest.raises(queue.Empty):
        q.get(False)
    with pytest.raises(queue.Empty):
        q.get_nowait()


@pytest.mark.parametrize("timeout", [0.05, 0.2])
def test_get_timeout_on_empty(impl, timeout):
    q = impl.Queue()
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=timeout)
    elapsed = time.monotonic() - t0
    assert elapsed >= timeout
    assert elapsed < timeout + SLACK


def test_zero_timeouts_do_not_wait(impl):
    q = impl.Queue(1)
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0)
    q.put("occupant")
    with pytest.raises(queue.Full):
        q.put("x", timeout=0)
    # A timeout is ignored when block=False.
    with pytest.raises(queue.Full):
        q.put("x", False, 5)
    assert time.monotonic() - t0 < 1.0
    assert q.get(timeout=WAIT) == "occupant"
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(False, 5)
    assert time.monotonic() - t0 < 1.0


def test_get_block_true_with_timeout_positional(impl):
    q = impl.Queue()
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(True, 0.05)
    assert time.monotonic() - t0 >= 0.05


def test_get_after_drain_raises_empty(impl):
    q = impl.Queue()
    q.put(1)
    assert q.get(timeout=WAIT) == 1
    with pytest.raises(queue.Empty):
        q.get_nowait()


def test_blocking_get_wakes_on_put_from_thread(impl):
    q = impl.Queue()
    entered = threading.Event()

    def producer():
        entered.wait(WAIT)
        q.put("wake")

    t = threading.Thread(target=producer)
    t.start()
    try:
        entered.set()
        assert q.get(timeout=WAIT) == "wake"
    finally:
        t.join(WAIT)
    assert not t.is_alive()


# -- Full ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_put_on_full_queue(impl, kind):
    q = make(impl, kind, maxsize=2)
    q.put("a")
    q.put("b")
    with pytest.raises(queue.Full):
        q.put("c", block=False)
    with pytest.raises(queue.Full):
        q.put("c", False)
    with pytest.raises(queue.Full):
        q.put_nowait("c")
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        q.put("c", timeout=0.05)
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.05
    assert elapsed < 0.05 + SLACK
    # Nothing extra went in: exactly a, b come out; then there is room again.
    assert q.get(timeout=WAIT) == "a"
    q.put("c", block=False)
    assert q.get(timeout=WAIT) == "b"
    assert q.get(timeout=WAIT) == "c"
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)


def test_blocking_put_wakes_when_space_frees(impl):
    q = impl.Queue(1)
    q.put("first")
    done = threading.Event()
    errors = []

    def producer():
        try:
            q.put("second", timeout=WAIT)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    try:
        assert q.get(timeout=WAIT) == "first"
        assert done.wait(WAIT)
        assert errors == []
        assert q.get(timeout=WAIT) == "second"
    finally:
        t.join(WAIT)


# -- qsize / empty / full -------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_qsize_empty_full(impl, kind):
    q = make(impl, kind, maxsize=3)
    assert q.qsize() == 0
    assert q.empty()
    assert not q.full()
    q.put(1)
    q.put(2)
    # qsize counts a put at once in both implementations.
    assert q.qsize() == 2
    assert not q.full()
    # mp.Queue.empty() looks at the pipe, which the feeder fills a little later.
    assert wait_until(lambda: not q.empty(), WAIT)
    q.put(3)
    assert q.qsize() == 3
    assert q.full()
    assert q.get(timeout=WAIT) == 1
    assert q.qsize() == 2
    assert not q.full()
    assert q.get(timeout=WAIT) == 2
    assert q.get(timeout=WAIT) == 3
    assert q.qsize() == 0
    assert q.empty()
    assert not q.full()


@pytest.mark.parametrize("maxsize", [0, -1])
def test_nonpositive_maxsize_is_unbounded(impl, maxsize):
    q = impl.Queue(maxsize)
    for i in range(500):
        q.put_nowait(i)
    assert q.qsize() == 500
    assert not q.full()
    assert [q.get(timeout=WAIT) for _ in range(500)] == list(range(500))


# -- close / join_thread / cancel_join_thread -----------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_put_get_after_close_raise_valueerror(impl, kind):
    q = make(impl, kind)
    q.put("x")
    assert q.get(timeout=WAIT) == "x"
    q.close()
    with pytest.raises(ValueError):
        q.put("y")
    with pytest.raises(ValueError):
        q.put_nowait("y")
    with pytest.raises(ValueError):
        q.get()
    with pytest.raises(ValueError):
        q.get(timeout=0.05)
    with pytest.raises(ValueError):
        q.get_nowait()
    q.join_thread()


def test_close_twice_is_harmless(impl):
    q = impl.Queue()
    q.close()
    q.close()
    q.join_thread()


def test_child_puts_many_then_join_thread_delivers_all(impl_ctx, procs):
    q = impl_ctx.Queue()
    items = [("item", i, b"z" * 1000) for i in range(300)]  # > a pipe buffer
    p = procs.start(impl_ctx.ctx, _workers.put_items, q, items)
    got = [q.get(timeout=WAIT) for _ in range(len(items))]
    p.join(WAIT)
    assert p.exitcode == 0
    assert got == items


def test_cancel_join_thread_lets_process_exit(impl_ctx, procs):
    q = impl_ctx.Queue()
    p = procs.start(impl_ctx.ctx, _workers.put_items_then_cancel, q, list(range(10)))
    p.join(WAIT)
    assert p.exitcode == 0


def test_cancel_join_thread_then_close_and_join(impl):
    q = impl.Queue()
    q.put(1)
    assert q.get(timeout=WAIT) == 1
    q.cancel_join_thread()
    q.close()
    q.join_thread()
    with pytest.raises(ValueError):
        q.put(2)


# -- across processes ---------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_queue_as_process_argument_child_puts(impl_ctx, procs, kind):
    q = make(impl_ctx, kind)
    items = [1, "two", b"three", {"four": 4}, None, list(range(100))]
    p = procs.start(impl_ctx.ctx, _workers.put_items, q, items)
    got = [q.get(timeout=WAIT) for _ in items]
    p.join(WAIT)
    assert p.exitcode == 0
    assert got == items


def test_queue_round_trip_through_child(impl_ctx, procs):
    to_child = impl_ctx.Queue()
    from_child = impl_ctx.Queue()
    items = [("m", i, "x" * (i * 37)) for i in range(40)]
    for item in items[:20]:  # some before the child exists
        to_child.put(item)
    p = procs.start(impl_ctx.ctx, _workers.echo_items, to_child, from_child, len(items))
    for item in items[20:]:
        to_child.put(item)
    got = [from_child.get(timeout=WAIT) for _ in items]
    p.join(WAIT)
    assert p.exitcode == 0
    assert got == items


# -- JoinableQueue ------------------------------------------------------------

def test_joinable_task_done_and_join_across_processes(impl_ctx, procs):
    jq = impl_ctx.JoinableQueue()
    almost_done = impl_ctx.ctx.Event()
    go = impl_ctx.ctx.Event()
    n = 20
    for i in range(n):
        jq.put(i)
    p = procs.start(impl_ctx.ctx, _workers.joinable_worker, jq, n, almost_done, go)
    joined = threading.Event()
    joiner = threading.Thread(target=lambda: (jq.join(), joined.set()), daemon=True)
    joiner.start()
    assert almost_done.wait(WAIT)
    # One task is still outstanding: join() must still be blocked.
    assert not joined.wait(0.2)
    go.set()
    assert joined.wait(WAIT), "join() did not return after the last task_done()"
    joiner.join(WAIT)
    p.join(WAIT)
    assert p.exitcode == 0


def test_joinable_join_returns_when_nothing_outstanding(impl):
    jq = impl.JoinableQueue()
    jq.join()  # nothing put
    jq.put("a")
    jq.put("b")
    assert jq.get(timeout=WAIT) == "a"
    jq.task_done()
    assert jq.get(timeout=WAIT) == "b"
    jq.task_done()
    jq.join()


def test_joinable_task_done_too_many_times(impl):
    jq = impl.JoinableQueue()
    with pytest.raises(ValueError):
        jq.task_done()
    jq.put(1)
    assert jq.get(timeout=WAIT) == 1
    jq.task_done()
    with pytest.raises(ValueError):
        jq.task_done()
    # Still usable.
    jq.put(2)
    assert jq.get(timeout=WAIT) == 2
    jq.task_done()
    jq.join()


# -- SimpleQueue ------------------------------------------------------------------

def test_simplequeue_put_get_empty_close(impl):
    q = impl.SimpleQueue()
    assert q.empty()
    values = [1, "two", b"three", None, {"k": [1, 2]}]
    for v in values:
        q.put(v)
    assert not q.empty()
    assert [q.get() for _ in values] == values
    assert q.empty()
    q.close()


def test_simplequeue_across_processes(impl_ctx, procs):
    to_child = impl_ctx.SimpleQueue()
    from_child = impl_ctx.SimpleQueue()
    items = list(range(30)) + ["end", b"x" * 70000]
    p = procs.start(impl_ctx.ctx, _workers.simple_echo, to_child, from_child, len(items))
    for item in items:
        to_child.put(item)
    got = [from_child.get() for _ in items]
    p.join(WAIT)
    assert p.exitcode == 0
    assert got == items


def test_simplequeue_after_close_raises_oserror(impl):
    """multiprocessing.SimpleQueue closes its pipe: put, get and empty raise
    OSError("handle is closed") (not ValueError, and empty() does not say
    True); a second close() is harmless."""
    q = impl.SimpleQueue()
    q.put("left")
    q.close()
    for op in (lambda: q.put("y"), q.get, q.empty):
        with pytest.raises(OSError, match="handle is closed") as info:
            op()
        assert not isinstance(info.value, ValueError)
    q.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("timeout", ["0.1", b"1", [1]], ids=["str", "bytes", "list"])
def test_non_number_timeout_is_typeerror(impl, kind, timeout):
    """A timeout that is not a number is a TypeError, never parsed (as
    multiprocessing's SemLock and deadline arithmetic do), whether or not
    the call would have waited, with block=False too."""
    q = make(impl, kind)
    with pytest.raises(TypeError):
        q.put("x", timeout=timeout)
    with pytest.raises(TypeError):
        q.get(timeout=timeout)
    with pytest.raises(TypeError):
        q.put("x", False, timeout)
    with pytest.raises(TypeError):
        q.get(False, timeout)
    q.put("z")
    with pytest.raises(TypeError):
        q.get(True, timeout)   # even with a message waiting
    assert q.get(timeout=WAIT) == "z"
