"""The default codec of every kind (issue 9, items 8, 9b and 17):

- only exact bytes/bytearray/memoryview and str take the raw path: a
  subclass (a StrEnum member, a bytes or str subclass) is pickled and comes
  back as itself, in Queue, Topic, Log and WorkQueue;
- a str with lone surrogates travels in every kind (as through pickle);
- objects are pickled as multiprocessing.Queue pickles them, through
  multiprocessing.reduction.ForkingPickler's reducers: Connections and
  sockets travel as duplicated fds, reducers registered with
  ForkingPickler.register are used, and the process authkey is refused -
  under fork, spawn and forkserver."""
import multiprocessing
import pickle
import socket
from multiprocessing.reduction import ForkingPickler

import pytest

import pyqueue
from pyqueue import _core
from tests import _bindings_workers as bw

WAIT = 30

SUBCLASSED = [bw.Color.RED, bw.Level.LOW, bw.Tag(b"tagged"), bw.Name("named"),
              bw.Tag(b"\x80\x04K\x01.")]  # a bytes subclass whose content is a pickle
SURROGATES = ["a\udc80b", "\ud800", "x" * 100 + "\udfff"]


def _same(a, b):
    return type(a) is type(b) and a == b


# -- every kind: a put/get pair of callables -----------------------------------

@pytest.fixture(params=["queue", "queue-batch", "topic", "topic-batch", "log-memory",
                        "log-memory-batch", "log-directory", "workqueue"])
def roundtrip(request, tmp_path):
    kind = request.param
    closers = []
    if kind.startswith("queue"):
        q = pyqueue.Queue(capacity_bytes=1 << 16)
        closers.append(q)
        if kind == "queue":
            def rt(vals):
                out = []
                for v in vals:
                    q.put(v)
                    out.append(q.get(timeout=WAIT))
                return out
        else:
            def rt(vals):
                q.put_many(vals)
                return q.get_many(len(vals), timeout=WAIT)
    elif kind.startswith("topic"):
        t = pyqueue.Topic(capacity_bytes=1 << 16)
        closers.append(t)
        sub = t.subscribe()
        if kind == "topic":
            def rt(vals):
                out = []
                for v in vals:
                    t.publish(v)
                    out.append(sub.get(timeout=WAIT))
                return out
        else:
            def rt(vals):
                t.publish_many(vals)
                return sub.get_many(len(vals), timeout=WAIT)
    elif kind.startswith("log"):
        if kind.startswith("log-memory"):
            lg = pyqueue.Log(partitions=1, retention_bytes=1 << 16)
            closers.append(lg)
        else:
            lg = pyqueue.Log(path=str(tmp_path / "log"), partitions=1)
        end = [0]

        def rt(vals):
            if kind.endswith("batch"):
                lg.append_many(vals)
            else:
                for v in vals:
                    lg.append(v)
            recs = lg.read(0, end[0], len(vals))
            end[0] += len(recs)
            return [r.value for r in recs]
        closers.append(type("C", (), {"close": lambda self: lg.close(),
                                      "unlink": lambda self: None})())
    else:
        wq = pyqueue.WorkQueue(capacity_bytes=1 << 16)
        closers.append(wq)

        def rt(vals):
            out = []
            for v in vals:
                wq.put(v)
                d = wq.get(timeout=WAIT)
                out.append(d.value)
                d.ack()
            return out
    yield rt
    for c in closers:
        c.unlink()
        c.close()


def test_subclasses_come_back_as_themselves(roundtrip):
    out = roundtrip(SUBCLASSED)
    assert len(out) == len(SUBCLASSED)
    for got, sent in zip(out, SUBCLASSED):
        assert _same(got, sent), (got, sent)


def test_exact_types_keep_the_raw_path(roundtrip):
    vals = [b"\x80\x04K\x01.", "text", bytearray(b"ba"), memoryview(b"mv")]
    out = roundtrip(vals)
    assert [type(v) for v in out] == [bytes, str, bytes, bytes]
    assert out == [b"\x80\x04K\x01.", "text", b"ba", b"mv"]


def test_lone_surrogates_travel_in_every_kind(roundtrip):
    out = roundtrip(SURROGATES)
    assert len(out) == len(SURROGATES)
    for got, sent in zip(out, SURROGATES):
        assert _same(got, sent)


def test_surrogates_out_of_band(make_queue):
    q = make_queue.Queue(capacity_bytes=1 << 16)
    big = "\udc80" * 40000  # above a quarter of the ring: out of band
    q.put(big)
    assert q.get(timeout=WAIT) == big
    q.put_many(["a", big])
    assert q.get_many(2, timeout=WAIT) == ["a", big]


def test_authkey_is_refused_as_multiprocessing_refuses_it(roundtrip):
    key = multiprocessing.current_process().authkey
    with pytest.raises(TypeError, match="AuthenticationString"):
        ForkingPickler.dumps(key)  # what multiprocessing does
    with pytest.raises(TypeError, match="AuthenticationString"):
        roundtrip([key])
    assert roundtrip(["still usable"]) == ["still usable"]


@pytest.fixture
def registered():
    ForkingPickler.register(bw.Marked, bw.reduce_marked)
    try:
        yield
    finally:
        ForkingPickler._extra_reducers.pop(bw.Marked, None)


def test_registered_reducer_is_used_by_every_kind(roundtrip, registered):
    (m,) = roundtrip([bw.Marked(5)])
    assert type(m) is bw.Marked and (m.value, m.how) == (5, "via registered reducer")


def test_reducer_registered_after_first_use_is_honoured(make_queue):
    q = make_queue.Queue(capacity_bytes=1 << 16)
    q.put(bw.Marked(1))
    assert q.get(timeout=WAIT).how == "plain pickle"
    ForkingPickler.register(bw.Marked, bw.reduce_marked)
    try:
        q.put(bw.Marked(2))
        assert q.get(timeout=WAIT).how == "via registered reducer"
        ForkingPickler.register(bw.Marked, bw.reduce_marked_again)  # replaced
        q.put_many([bw.Marked(3)])
        assert q.get(timeout=WAIT).how == "via the reducer registered in its place"
    finally:
        ForkingPickler._extra_reducers.pop(bw.Marked, None)
    q.put(bw.Marked(4))
    assert q.get(timeout=WAIT).how == "plain pickle"


def test_default_dumps_is_forkingpicklers_output():
    for obj in [{"a": 1, "b": [1, 2.5, "x"]}, list(range(1000)), bw.Color.BLUE,
                {"nested": {"deep": [b"x" * 1000] * 3}}]:
        assert _core.default_dumps(obj) == bytes(ForkingPickler.dumps(obj, 5))
        assert pickle.loads(_core.default_dumps(obj)) == obj


def test_default_dumps_reentrant():
    """A reducer that pickles (a put inside a put) gets a pickler of its
    own; the outer one's output is intact."""
    inner = []

    class Outer:
        def __reduce__(self):
            inner.append(_core.default_dumps({"inner": 1}))
            return (dict, ({"outer": 2},))

    assert pickle.loads(_core.default_dumps([Outer(), "tail"])) == [{"outer": 2}, "tail"]
    assert pickle.loads(inner[0]) == {"inner": 1}


# -- multiprocessing's resources across processes --------------------------------

@pytest.fixture(params=["fork", "spawn", "forkserver"])
def any_ctx(request):
    return multiprocessing.get_context(request.param)


def test_connection_travels_as_multiprocessing_queue_carries_it(any_ctx, procs, make_queue):
    q = make_queue.Queue(capacity_bytes=1 << 16)
    out = any_ctx.Queue()
    procs.start(any_ctx, bw.use_connection, q, out)
    # Made after the child started: it cannot have inherited the fds.
    r, w = any_ctx.Pipe(duplex=False)
    q.put(w)
    assert out.get(timeout=WAIT) == "ok"
    assert r.poll(WAIT)
    assert r.recv() == ("hello through", "Connection")
    w.close()  # ours is still open and ours to close (not closed by the copy)
    r.close()
    assert procs.join_all() == [0]


def test_socket_travels_as_multiprocessing_queue_carries_it(any_ctx, procs, make_queue):
    q = make_queue.Queue(capacity_bytes=1 << 16)
    out = any_ctx.Queue()
    procs.start(any_ctx, bw.use_socket, q, out)
    a, b = socket.socketpair()
    with a, b:
        q.put(b)
        assert out.get(timeout=WAIT) == "ok"
        a.settimeout(WAIT)
        assert a.recv(100) == b"hello through a socket"
    assert procs.join_all() == [0]


def test_registered_reducer_across_processes(any_ctx, procs, make_queue, registered):
    q = make_queue.Queue(capacity_bytes=1 << 16)
    out = any_ctx.Queue()
    procs.start(any_ctx, bw.get_marked, q, out)
    q.put(bw.Marked(42))
    assert out.get(timeout=WAIT) == ("Marked", 42, "via registered reducer")
    assert procs.join_all() == [0]


def test_authkey_refused_and_queue_usable(any_ctx, procs, make_queue):
    q = make_queue.Queue(capacity_bytes=1 << 16)
    with pytest.raises(TypeError, match="AuthenticationString"):
        q.put(multiprocessing.current_process().authkey)
    with pytest.raises(TypeError, match="AuthenticationString"):
        q.put_many(["before", multiprocessing.current_process().authkey])
    q.put("after")
    got = q.get_many(10, timeout=WAIT)
    assert got in (["after"], ["before", "after"])  # never the key
    assert q.qsize() == 0


def test_connection_in_the_same_process_is_a_duplicate(make_queue):
    """Before: the Connection was pickled as its fd number, and the copy's
    close (or __del__) closed the original's fd. Now the copy has its own
    duplicated fd."""
    q = make_queue.Queue(capacity_bytes=1 << 16)
    r, w = multiprocessing.Pipe(duplex=False)
    with r, w:
        q.put(w)
        copy = q.get(timeout=WAIT)
        assert copy.fileno() != w.fileno()
        copy.send("from the copy")
        copy.close()
        w.send("from the original")  # still open
        assert r.recv() == "from the copy"
        assert r.recv() == "from the original"
