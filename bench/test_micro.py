"""Single-process micro-benchmarks (pytest-benchmark).

Run explicitly (never part of ``pytest tests/``)::

    pytest bench/                                  # all of them
    pytest bench/ --benchmark-group-by=group       # (default) one table per operation
    pytest bench/ -k pyqueue --benchmark-only

Each test times one operation pair in one process: the cost of the calls
themselves (serialisation, copy, locking, wake-up bookkeeping), not
cross-process throughput - that is ``python -m bench.compare``.
multiprocessing.Queue's put() hands the object to a feeder thread, so its
round trip also includes that thread hand-off.
"""

import multiprocessing

import pytest

MSG64 = b"x" * 64
DICT = {"id": 1, "name": "x", "value": 1.5}
BATCH = [MSG64] * 1000


def _pyqueue():
    try:
        import pyqueue
    except ImportError as exc:
        pytest.skip(f"pyqueue not importable: {exc}")
    if not hasattr(pyqueue, "Queue"):
        pytest.skip("pyqueue is not built/installed")
    q = pyqueue.Queue()
    yield q
    q.close()
    q.unlink()


def _mp():
    q = multiprocessing.get_context("fork").Queue()
    yield q
    q.close()
    q.join_thread()


def _faster_fifo():
    faster_fifo = pytest.importorskip("faster_fifo")
    q = faster_fifo.Queue(max_size_bytes=16 * 2**20)
    yield q
    q.close()


FACTORIES = {"pyqueue": _pyqueue, "mp.Queue": _mp, "faster-fifo": _faster_fifo}


@pytest.fixture(params=list(FACTORIES))
def impl(request):
    """(name, queue) for each implementation; skipped when unavailable."""
    gen = FACTORIES[request.param]()
    q = next(gen)
    yield request.param, q
    next(gen, None)


def _put_get(name, q):
    if name == "faster-fifo":  # its default timeouts are 10 s; be explicit
        put, get = (lambda obj: q.put(obj, True, 60.0)), (lambda: q.get(True, 60.0))
    else:
        put, get = q.put, q.get
    return put, get


@pytest.mark.benchmark(group="put+get 64 B bytes")
def test_roundtrip_bytes64(benchmark, impl):
    name, q = impl
    put, get = _put_get(name, q)

    def roundtrip():
        put(MSG64)
        return get()

    assert benchmark(roundtrip) == MSG64


@pytest.mark.benchmark(group="put+get small dict")
def test_roundtrip_dict(benchmark, impl):
    name, q = impl
    put, get = _put_get(name, q)

    def roundtrip():
        put(DICT)
        return get()

    assert benchmark(roundtrip) == DICT


@pytest.mark.benchmark(group="1000 x 64 B batch")
def test_batch_1000x64(benchmark, impl):
    """put_many + get_many of 1000 messages; mp.Queue has no batch API, so it
    runs 1000 put() then 1000 get() (labelled loop in the test id)."""
    name, q = impl
    if name == "pyqueue":
        def batch():
            assert q.put_many(BATCH) == len(BATCH)
            got = []
            while len(got) < len(BATCH):
                got += q.get_many(len(BATCH) - len(got))
            return got
    elif name == "faster-fifo":
        def batch():
            q.put_many(BATCH, True, 60.0)
            got = []
            while len(got) < len(BATCH):
                got += q.get_many(True, 60.0, len(BATCH) - len(got))
            return got
    else:  # mp.Queue: loop of single put/get
        put, get = q.put, q.get

        def batch():
            for m in BATCH:
                put(m)
            return [get() for _ in BATCH]

    got = benchmark(batch)
    assert len(got) == len(BATCH) and got[0] == MSG64
