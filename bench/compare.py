"""Compare pyqueue.Queue with multiprocessing.Queue, faster-fifo and pyzmq.

Run from the repository root::

    python -m bench.compare                  # full run (a few minutes)
    python -m bench.compare --quick          # CI smoke run
    python -m bench.compare --only 1x1-64B   # cases whose id contains "1x1-64B"
    python -m bench.compare --impls mp,faster_fifo,zmq
    python -m bench.compare --list           # print the case ids
    python -m bench.compare --topic --only topic   # topic fan-out cases (opt-in)

See bench/README.md for what each case measures and how to read the output.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import fnmatch
import itertools
import json
import math
import multiprocessing
import os
import platform
import queue as queue_mod
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from array import array

KiB = 1024
MiB = 1024 * KiB

#: End-of-stream marker.  Data messages are never empty and the dict payload
#: is never empty, so ``if msg:`` is enough to tell them apart.
SENTINEL = b""
#: Explicit "forever" timeout for APIs whose default timeout is finite
#: (faster-fifo defaults to 10 s).
FOREVER = 3600.0
#: Batches carry at most BATCH_MAX_MESSAGES (put_many) / GET_MANY_MAX (get_many,
#: pyqueue's default) messages and at most --batch-bytes of payload.  The byte
#: cap matters: batches much larger than the L2 cache make producer and
#: consumer stream through memory instead of handing over cache-hot data
#: (faster-fifo's get_many(max_messages_to_get=1024) on 1 MiB messages runs ~4x
#: slower than get()), so large messages travel in small batches.
BATCH_MAX_MESSAGES = 256
GET_MANY_MAX = 1024
DEFAULT_BATCH_BYTES = 256 * KiB
#: faster-fifo ring size (its default of 1 MB is too small for 1 MiB messages).
FASTER_FIFO_BYTES = 64 * MiB

BASELINE = "mp"
NOISY_SPREAD = 0.3  # (max - min) / median of the repeats above which a cell gets "~"


def _dict_message(i):
    return {"id": i, "name": "x", "value": 1.5}


# ---------------------------------------------------------------------------
# Adapters: one small class per implementation.
#
# Life cycle: the parent calls ``make()`` (creates the shared object), every
# worker process calls ``open(role, index)`` after fork (consumers first, then
# producers), then uses ``put``/``get``/``put_many``/``get_many``; workers call
# ``close()`` when finished and the parent calls ``destroy()``.
#
# ``put`` and ``get`` are set in ``open()`` as plain callables (usually the
# queue's bound methods) so the hot loop pays no extra Python call layer.
# ``shared`` is True for real shared queues (any consumer may take any
# message).  pyzmq is not a shared queue: see ZmqPushPull.
# ---------------------------------------------------------------------------


class Adapter:
    key = ""
    label = ""
    has_batch = False
    shared = True

    def __init__(self, payload):
        self.payload = payload  # "bytes" or "dict"
        self.put = self.get = None

    @staticmethod
    def probe():
        """Return (version string, None) or (None, reason it is unavailable)."""
        return platform.python_version(), None

    def make(self, ctx, case):
        """Parent side: create the queue for ``case`` (a Case)."""
        raise NotImplementedError

    def open(self, role, index):
        pass

    def put_many(self, msgs):
        raise NotImplementedError

    def get_many(self, max_messages):
        raise NotImplementedError

    def ready(self, role, index):
        """After every end is open and before the clock starts (pyzmq PUB/SUB:
        wait until every subscription has reached the publisher)."""

    def flush(self):
        """Producer side: make sure everything put so far is in the queue."""

    def close(self):
        """Worker side: detach."""

    def destroy(self):
        """Parent side: release the queue."""


def _dist_version(name):
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


class PyQueueAdapter(Adapter):
    key = "pyqueue"
    label = "pyqueue"
    has_batch = True

    @staticmethod
    def probe():
        try:
            import pyqueue
        except Exception as exc:  # ImportError or a broken build
            return None, f"import pyqueue failed: {exc!r}"
        if not hasattr(pyqueue, "Queue"):
            return None, f"pyqueue ({getattr(pyqueue, '__path__', '?')}) has no Queue: not built/installed?"
        return getattr(pyqueue, "__version__", None) or _dist_version("pyqueue-shm"), None

    def make(self, ctx, case):
        import pyqueue

        # PYQUEUE_BENCH_CAPACITY=<bytes>: another ring size than the default
        # (to compare ring sizes in one sitting; bench/README.md).
        cap = os.environ.get("PYQUEUE_BENCH_CAPACITY")
        self.q = pyqueue.Queue(capacity_bytes=int(cap)) if cap else pyqueue.Queue()

    def open(self, role, index):
        self.put, self.get = self.q.put, self.q.get

    def put_many(self, msgs):
        n = self.q.put_many(msgs)
        if n != len(msgs):
            raise RuntimeError(f"pyqueue put_many returned {n!r} for a batch of {len(msgs)} (block=True)")

    def get_many(self, max_messages):
        return self.q.get_many(max_messages)

    def close(self):
        self.q.close()

    def destroy(self):
        self.q.close()
        self.q.unlink()


class MPQueueAdapter(Adapter):
    key = "mp"
    label = "mp.Queue"

    def make(self, ctx, case):
        self.q = ctx.Queue()

    def open(self, role, index):
        self.put, self.get = self.q.put, self.q.get

    def flush(self):
        # put() hands the object to a feeder thread; close + join_thread waits
        # until it has been written to the pipe.
        self.q.close()
        self.q.join_thread()

    def destroy(self):
        self.q.close()
        self.q.join_thread()


class FasterFifoAdapter(Adapter):
    key = "faster_fifo"
    label = "faster-fifo"
    has_batch = True

    @staticmethod
    def probe():
        try:
            import faster_fifo  # noqa: F401
        except ImportError as exc:
            return None, f"faster-fifo not installed ({exc})"
        return _dist_version("faster-fifo"), None

    def make(self, ctx, case):
        import faster_fifo

        self.q = faster_fifo.Queue(max_size_bytes=FASTER_FIFO_BYTES)
        # room for the largest get_many (pickle overhead + 8-byte headers)
        self.recv_bytes = 2 * max(case.get_many_max, 1) * (case.size + 64) + 64 * KiB

    def open(self, role, index):
        if role == "consumer":
            # faster-fifo grows its receive buffer on demand and then retries
            # *without blocking*, so with several consumers a blocking get()
            # can raise queue.Empty (faster-fifo 1.5.2, faster_fifo.pyx
            # get_many).  Size the buffer up front for the largest batch.
            self.q.reallocate_msg_buffer(self.recv_bytes)
        # faster-fifo's put/get default to timeout=10 s: pass "forever".
        self.put = lambda obj, _put=self.q.put: _put(obj, True, FOREVER)
        self.get = lambda _get=self.q.get: _get(True, FOREVER)

    def put_many(self, msgs):
        self.q.put_many(msgs, True, FOREVER)

    def get_many(self, max_messages):
        return self.q.get_many(True, FOREVER, max_messages)

    def destroy(self):
        self.q.close()  # faster-fifo: call close() from one process only


class ZmqPushPull(Adapter):
    """pyzmq PUSH/PULL over ipc://.

    ZeroMQ has no shared queue: every consumer binds its own PULL endpoint and
    every producer connects one PUSH socket to each consumer and sends round
    robin (what a single PUSH socket connected to several peers does
    internally, but deterministic, so each consumer can be told the end of
    stream by each producer).  No contention between consumers, so this is a
    slightly favourable setup for zmq.
    """

    key = "zmq"
    label = "pyzmq"
    shared = False

    @staticmethod
    def probe():
        try:
            import zmq
        except ImportError as exc:
            return None, f"pyzmq not installed ({exc})"
        return f"{zmq.pyzmq_version()} (libzmq {zmq.zmq_version()})", None

    def make(self, ctx, case):
        self.dir = tempfile.mkdtemp(prefix="pqbench-zmq-")
        self.endpoints = [f"ipc://{self.dir}/c{i}" for i in range(case.consumers)]
        # Bound the in-flight data to ~32 MiB per side (like the other rings),
        # between 16 and 100k messages.
        self.hwm = max(16, min(100_000, (32 * MiB) // max(1, case.size)))
        self.socks = []
        self.zctx = None

    def _socket(self, kind):
        import zmq

        s = self.zctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, self.hwm)
        s.setsockopt(zmq.RCVHWM, self.hwm)
        s.setsockopt(zmq.RECONNECT_IVL, 5)
        self.socks.append(s)
        return s

    def open(self, role, index):
        import zmq

        self.zctx = zmq.Context()
        pyobj = self.payload != "bytes"
        if role == "consumer":
            s = self._socket(zmq.PULL)
            s.bind(self.endpoints[index])
            self.get = s.recv_pyobj if pyobj else s.recv
        else:
            sends = []
            for ep in self.endpoints:
                s = self._socket(zmq.PUSH)
                s.connect(ep)
                sends.append(s.send_pyobj if pyobj else s.send)
            self._sends = sends
            if len(sends) == 1:
                self.put = sends[0]
            else:
                self.put = lambda obj, _next=itertools.cycle(sends).__next__: _next()(obj)

    def put_end(self):
        """Send the end-of-stream marker to every consumer."""
        for send in self._sends:
            send(SENTINEL)

    def close(self):
        # Only called once every consumer has received everything, so
        # linger=0 cannot drop data.
        for s in self.socks:
            s.close(linger=0)
        self.socks = []
        if self.zctx is not None:
            self.zctx.term()
            self.zctx = None

    def destroy(self):
        shutil.rmtree(self.dir, ignore_errors=True)


ADAPTERS = {cls.key: cls for cls in (PyQueueAdapter, MPQueueAdapter, FasterFifoAdapter, ZmqPushPull)}
OPTIONAL = {"faster_fifo", "zmq"}


# Fan-out ("topic") adapters: one publisher, every subscriber gets every
# message.  Same life cycle as above (role "producer" = the publisher, role
# "consumer" = a subscriber); ``shared`` is False, so each subscriber waits for
# one end-of-stream marker from the publisher, sent by ``put_end()``.


class PyQueueTopicAdapter(PyQueueAdapter):
    """pyqueue.Topic (lossless): publish/publish_many, and in every subscriber
    process a Subscription made in ``open()``, i.e. before the barrier that
    the publisher waits on, so it sees every message."""

    label = "pyqueue.Topic"
    shared = False

    @staticmethod
    def probe():
        version, why = PyQueueAdapter.probe()
        if version is not None:
            import pyqueue

            if not hasattr(pyqueue, "Topic"):
                return None, "this pyqueue has no Topic"
        return version, why

    def make(self, ctx, case):
        import pyqueue

        self.topic = pyqueue.Topic(mode="lossless")
        self.sub = None

    def open(self, role, index):
        if role == "consumer":
            self.sub = self.topic.subscribe()  # "latest": made before anything is published
            self.get = self.sub.get
        else:
            self.put = self.topic.publish

    def put_many(self, msgs):
        n = self.topic.publish_many(msgs)
        if n != len(msgs):
            raise RuntimeError(f"pyqueue publish_many returned {n!r} for a batch of {len(msgs)} (block=True)")

    def get_many(self, max_messages):
        return self.sub.get_many(max_messages)

    def put_end(self):
        self.topic.publish(SENTINEL)  # every subscriber gets it

    def close(self):
        # A lossless topic waits for every live subscriber: detach explicitly.
        if self.sub is not None:
            self.sub.close()
            self.sub = None
        self.topic.close()

    def destroy(self):
        self.topic.close()
        self.topic.unlink()


class MPQueueFanout(MPQueueAdapter):
    """The baseline: one multiprocessing.Queue per subscriber; the publisher
    puts every message into each of them (so it pickles it once per
    subscriber)."""

    label = "mp.Queue per subscriber"
    shared = False

    def make(self, ctx, case):
        self.qs = [ctx.Queue() for _ in range(case.consumers)]

    def open(self, role, index):
        if role == "consumer":
            self.get = self.qs[index].get
        elif len(self.qs) == 1:
            self.put = self.qs[0].put
        else:
            puts = tuple(q.put for q in self.qs)

            def put(obj, _puts=puts):
                for p in _puts:
                    p(obj)

            self.put = put

    def put_end(self):
        for q in self.qs:
            q.put(SENTINEL)

    def destroy(self):
        for q in self.qs:
            q.close()
            q.join_thread()


class ZmqPubSub(ZmqPushPull):
    """pyzmq PUB/SUB over ipc://: the publisher binds an XPUB socket (a PUB
    socket that can be told not to drop), every subscriber connects a SUB
    socket subscribed to b"".

    Nothing is dropped: ZMQ_XPUB_NODROP makes a send to a subscriber whose
    pipe is full (SNDHWM + RCVHWM, 32 MiB worth each as for PUSH/PULL) block
    instead of dropping - lossless flow control like pyqueue's lossless
    topic.  PUB/SUB also drops everything sent before a subscription has
    reached the publisher, so ``ready()`` does a handshake before the clock
    starts: the publisher sends probes until every subscriber has reported
    one (on a semaphore), then a "go" message; subscribers discard probes
    until "go".  The parent checks every subscriber's count.
    """

    label = "pyzmq PUB/SUB"
    PROBE, GO = b"P", b"G"  # 1 byte: never a data message (those are >= 64 B)

    def make(self, ctx, case):
        super().make(ctx, case)
        self.endpoint = f"ipc://{self.dir}/pub"
        self.n_subs = case.consumers
        self.reported = ctx.Semaphore(0)

    def open(self, role, index):
        import zmq

        self.zctx = zmq.Context()
        pyobj = self.payload != "bytes"
        if role == "consumer":
            s = self._socket(zmq.SUB)
            s.setsockopt(zmq.SUBSCRIBE, b"")
            s.connect(self.endpoint)  # before the bind: zmq reconnects every 5 ms
            self.sock = s
            self.get = s.recv_pyobj if pyobj else s.recv
        else:
            s = self._socket(zmq.XPUB)
            s.setsockopt(zmq.XPUB_NODROP, 1)
            s.bind(self.endpoint)
            self.sock = s
            self.put = s.send_pyobj if pyobj else s.send
            self._sends = [self.put]

    def ready(self, role, index):
        if role == "consumer":
            recv = self.sock.recv
            while recv() != self.PROBE:
                pass
            self.reported.release()
            while True:
                msg = recv()
                if msg == self.GO:
                    return
                if msg != self.PROBE:
                    raise RuntimeError(f"unexpected message {msg[:20]!r} before the start of the stream")
        else:
            deadline = time.monotonic() + 60
            seen = 0
            while seen < self.n_subs:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {seen}/{self.n_subs} subscribers answered the probes in 60 s")
                self.sock.send(self.PROBE)
                while seen < self.n_subs and self.reported.acquire(timeout=0.002):
                    seen += 1
            self.sock.send(self.GO)


#: Adapters for the topic (fan-out) cases, by the same keys as ADAPTERS;
#: None = no fan-out in that library (its cells read n/a).
FANOUT_ADAPTERS = {"pyqueue": PyQueueTopicAdapter, "mp": MPQueueFanout, "faster_fifo": None, "zmq": ZmqPubSub}


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------

SIZES = [(64, "64B", 200_000), (1 * KiB, "1KiB", 100_000), (64 * KiB, "64KiB", 10_000), (1 * MiB, "1MiB", 1_000)]
DICT_BASE_COUNT = 100_000


@dataclasses.dataclass
class Case:
    id: str
    kind: str  # "throughput" | "latency"
    payload: str = "bytes"  # "bytes" | "dict"
    size: int = 64  # payload bytes (for dicts: pickled size, for MB/s only)
    size_label: str = "64B"
    producers: int = 1
    consumers: int = 1
    batch: bool = False
    base_count: int = 0
    batch_size: int = 1  # messages per put_many
    get_many_max: int = 1  # max_messages per get_many
    topic: bool = False  # fan-out: every consumer (subscriber) gets every message

    @property
    def title(self):
        if self.kind == "latency":
            return f"latency {self.size_label}"
        mode = "batch" if self.batch else "msg"
        if self.topic:
            return f"topic 1->{self.consumers} {self.size_label} {mode}"
        return f"{self.producers}x{self.consumers} {self.size_label} {mode}"



def all_cases(batch_bytes=DEFAULT_BATCH_BYTES, procs=(1, 2)):
    import pickle

    def case(p, payload, size, label, batch, base):
        mode = "batch" if batch else "msg"
        bsz = max(1, min(BATCH_MAX_MESSAGES, batch_bytes // size)) if batch else 1
        gmax = max(1, min(GET_MANY_MAX, batch_bytes // size)) if batch else 1
        return Case(f"{p}x{p}-{label}-{mode}", "throughput", payload, size, label, p, p, batch, base, bsz, gmax)

    cases = [case(p, "bytes", size, label, batch, base)
             for p in procs for size, label, base in SIZES for batch in (False, True)]
    dict_size = len(pickle.dumps(_dict_message(123456), protocol=5))
    cases += [case(1, "dict", dict_size, "dict", batch, DICT_BASE_COUNT) for batch in (False, True)]
    cases.append(Case("latency-64B", "latency", "bytes", 64, "64B"))
    return cases


TOPIC_SUBSCRIBERS = (1, 2, 4)
TOPIC_SIZES = [s for s in SIZES if s[1] in ("64B", "1KiB")]


def topic_cases(batch_bytes=DEFAULT_BATCH_BYTES):
    """Fan-out cases (``--topic``): 1 publisher, 1/2/4 subscribers that each
    receive every message; ids ``topic-1xN-<size>-<msg|batch>``."""
    cases = []
    for n in TOPIC_SUBSCRIBERS:
        for size, label, base in TOPIC_SIZES:
            for batch in (False, True):
                mode = "batch" if batch else "msg"
                bsz = max(1, min(BATCH_MAX_MESSAGES, batch_bytes // size)) if batch else 1
                gmax = max(1, min(GET_MANY_MAX, batch_bytes // size)) if batch else 1
                cases.append(Case(f"topic-1x{n}-{label}-{mode}", "throughput", "bytes", size, label, 1, n, batch,
                                  base, bsz, gmax, topic=True))
    return cases


def select_cases(cases, patterns):
    """``--only``: comma-separated glob patterns; without wildcards a pattern
    matches as a substring of the case id."""
    if not patterns:
        return cases
    pats = [p.strip() for p in patterns.split(",") if p.strip()]

    def match(cid):
        for p in pats:
            if any(ch in p for ch in "*?["):
                if fnmatch.fnmatchcase(cid, p):
                    return True
            elif p in cid:
                return True
        return False

    return [c for c in cases if match(c.id)]


# ---------------------------------------------------------------------------
# Worker processes
# ---------------------------------------------------------------------------


def _open_in_order(adapters_roles, barrier):
    """Open consumer ends, wait, open producer ends, wait (zmq connects only
    after the PULL sockets are bound, so no reconnect delay is timed)."""
    for adapter, role, index in adapters_roles:
        if role == "consumer":
            adapter.open(role, index)
    barrier.wait(60)
    for adapter, role, index in adapters_roles:
        if role == "producer":
            adapter.open(role, index)
    barrier.wait(60)


def _produce(adapter, case, index, count, prod_barrier):
    t0 = time.perf_counter()
    if case.batch:
        bsz = case.batch_size
        full, rest = divmod(count, bsz)
        if case.payload == "dict":
            i = 0
            for n in [bsz] * full + ([rest] if rest else []):
                adapter.put_many([_dict_message(j) for j in range(i, i + n)])
                i += n
        else:
            msg = b"x" * case.size
            batch = [msg] * bsz
            put_many = adapter.put_many
            for _ in itertools.repeat(None, full):
                put_many(batch)
            if rest:
                put_many(batch[:rest])
    else:
        put = adapter.put
        if case.payload == "dict":
            for i in range(count):
                put({"id": i, "name": "x", "value": 1.5})
        else:
            msg = b"x" * case.size
            for _ in itertools.repeat(None, count):
                put(msg)
    t_sent = time.perf_counter()
    _end_of_stream(adapter, case, index, prod_barrier)
    return {"t0": t0, "t_sent": t_sent, "sent": count}


def _end_of_stream(adapter, case, index, prod_barrier):
    if adapter.shared:
        # All data must be in the queue before the markers: every producer but
        # the first flushes, then they meet; producer 0 (whose own data is
        # already ahead of its markers) puts one marker per consumer.
        if index:
            adapter.flush()
        prod_barrier.wait(FOREVER)
        if index == 0:
            for _ in range(case.consumers):
                adapter.put(SENTINEL)
    else:
        adapter.put_end()


def _check_message(case, msg):
    """Sanity check of a received message (the first one of each consumer)."""
    if case.payload == "dict":
        ok = type(msg) is dict and msg.get("name") == "x" and msg.get("value") == 1.5
    else:
        ok = type(msg) is bytes and msg == b"x" * case.size
    if not ok:
        raise RuntimeError(f"unexpected message {type(msg).__name__} {repr(msg)[:60]}")


def _consume(adapter, case):
    # A shared queue carries one marker per consumer; zmq one per producer.
    needed = 1 if adapter.shared else case.producers
    count = 0
    if case.batch:
        get_many, max_messages = adapter.get_many, case.get_many_max
        checked = False
        while needed > 0:
            msgs = get_many(max_messages)
            if not checked and msgs and msgs[0]:
                _check_message(case, msgs[0])
                checked = True
            # Markers only ever trail the data, so look at the tail only.
            k = 0
            while k < len(msgs) and not msgs[-1 - k]:
                k += 1
            count += len(msgs) - k
            needed -= k
        for _ in range(-needed):  # took another consumer's marker: give it back
            adapter.put(SENTINEL)
    else:
        get = adapter.get
        msg = get()
        if msg:
            _check_message(case, msg)
            count += 1
        else:
            needed -= 1
        while needed:
            if get():
                count += 1
            else:
                needed -= 1
    return {"t1": time.perf_counter(), "received": count}


# Verification runs (untimed): every message carries (producer, sequence
# number); consumers check the payload, that each producer's messages arrive
# in order without duplicates, and report count and sum of sequence numbers
# per producer so the parent can check that nothing was lost.


def _stamped(case, producer, seq, pad):
    if case.payload == "dict":
        return {"id": (producer << 32) | seq, "name": "x", "value": 1.5}
    return producer.to_bytes(4, "little") + seq.to_bytes(4, "little") + pad


def _unstamp(case, msg, pad):
    if case.payload == "dict":
        if type(msg) is not dict or msg.get("name") != "x" or msg.get("value") != 1.5:
            raise RuntimeError(f"corrupt message {repr(msg)[:80]}")
        return msg["id"] >> 32, msg["id"] & 0xFFFFFFFF
    if type(msg) is not bytes or len(msg) != case.size or msg[8:] != pad:
        raise RuntimeError(f"corrupt message: {type(msg).__name__} of {len(msg)} bytes, {repr(msg[:24])}...")
    return int.from_bytes(msg[:4], "little"), int.from_bytes(msg[4:8], "little")


def _produce_verify(adapter, case, index, count, prod_barrier):
    pad = b"x" * (case.size - 8)
    t0 = time.perf_counter()
    step = case.batch_size if case.batch else 1
    for start in range(0, count, step):
        if case.batch:
            adapter.put_many([_stamped(case, index, i, pad) for i in range(start, min(count, start + step))])
        else:
            adapter.put(_stamped(case, index, start, pad))
    t_sent = time.perf_counter()
    _end_of_stream(adapter, case, index, prod_barrier)
    return {"t0": t0, "t_sent": t_sent, "sent": count}


def _consume_verify(adapter, case):
    pad = b"x" * (case.size - 8)
    needed = 1 if adapter.shared else case.producers
    last, per_producer = {}, {}
    while needed > 0:
        msgs = adapter.get_many(case.get_many_max) if case.batch else [adapter.get()]
        for msg in msgs:
            if not msg:
                needed -= 1
                continue
            if needed <= 0:
                raise RuntimeError("a data message arrived after the end-of-stream marker")
            p, seq = _unstamp(case, msg, pad)
            if seq <= last.get(p, -1):
                raise RuntimeError(f"producer {p}: message {seq} after {last[p]} (reordered or duplicated)")
            last[p] = seq
            acc = per_producer.setdefault(p, [0, 0])
            acc[0] += 1
            acc[1] += seq
    for _ in range(-needed):
        adapter.put(SENTINEL)
    return {"t1": time.perf_counter(), "received": sum(c for c, _ in per_producer.values()),
            "per_producer": per_producer}


def _throughput_worker(role, index, adapter, case, count, verify, barrier, prod_barrier, done, results):
    try:
        _open_in_order([(adapter, role, index)], barrier)
        adapter.ready(role, index)
        if role == "producer":
            res = (_produce_verify if verify else _produce)(adapter, case, index, count, prod_barrier)
        else:
            res = (_consume_verify if verify else _consume)(adapter, case)
        results.put(("ok", role, index, res))
        done.wait(FOREVER)  # keep the ends open until everybody is finished
        adapter.close()
    except BaseException:
        results.put(("error", role, index, traceback.format_exc()))
        raise SystemExit(3)


def _latency_worker(role, ping, pong, samples, warmup, barrier, done, results):
    """role "pinger": puts on ping, gets on pong, times the round trip.
    role "echo": gets on ping and puts the same object on pong."""
    try:
        if role == "pinger":
            ends = [(ping, "producer", 0), (pong, "consumer", 0)]
        else:
            ends = [(ping, "consumer", 0), (pong, "producer", 0)]
        _open_in_order(ends, barrier)
        if role == "echo":
            get, put = ping.get, pong.put
            res = 0  # messages echoed, checked by the parent
            while True:
                msg = get()
                put(msg)
                if not msg:
                    break
                res += 1
        else:
            put, get, clock = ping.put, pong.get, time.perf_counter_ns
            msg = b"x" * 64
            rtts = array("q")
            for _ in range(warmup):
                put(msg)
                get()
            for _ in range(samples):
                t = clock()
                put(msg)
                if get() != msg:
                    raise RuntimeError("echo returned a different message")
                rtts.append(clock() - t)
            put(SENTINEL)
            if get() != SENTINEL:
                raise RuntimeError("echo did not return the end marker")
            res = rtts.tolist()
        results.put(("ok", role, 0, res))
        done.wait(FOREVER)
        ping.close()
        pong.close()
    except BaseException:
        results.put(("error", role, 0, traceback.format_exc()))
        raise SystemExit(3)


class RunError(Exception):
    pass


def _run_workers(ctx, target, arglists, results, done, timeout):
    """Start one process per argument tuple, collect one result from each."""
    procs = [ctx.Process(target=target, args=args, daemon=True) for args in arglists]
    collected, error = [], None
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        while len(collected) < len(procs) and error is None:
            try:
                item = results.get(timeout=0.2)
            except queue_mod.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    time.sleep(0.2)  # let an error report arrive
                    try:
                        item = results.get_nowait()
                    except queue_mod.Empty:
                        error = f"worker died with exit code {dead[0].exitcode} without reporting"
                        break
                elif time.monotonic() > deadline:
                    error = f"timed out after {timeout:.0f} s ({len(collected)}/{len(procs)} workers finished)"
                    break
                else:
                    continue
            if item[0] == "error":
                error = f"{item[1]} {item[2]} raised:\n{item[3]}"
            else:
                collected.append(item)
        done.set()
        if error is None:
            for p in procs:
                p.join(30)
            bad = [p.exitcode for p in procs if p.exitcode != 0]
            if bad:
                error = f"worker exit codes {bad} after finishing"
    finally:
        done.set()
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(2)
            if p.is_alive():
                p.kill()
                p.join(2)
    if error:
        raise RunError(error)
    return collected


def measure_throughput(ctx, adapter, case, count, timeout, verify=False):
    """One timed run with fresh worker processes on an existing queue (the
    queue is empty again afterwards); returns a sample dict.  ``verify``:
    stamped messages, checked in order and for completeness (slower)."""
    count = max(count, case.producers)
    results = ctx.Queue()
    try:
        n_workers = case.producers + case.consumers
        barrier, prod_barrier, done = ctx.Barrier(n_workers), ctx.Barrier(case.producers), ctx.Event()
        per_producer = [count // case.producers + (i < count % case.producers) for i in range(case.producers)]
        common = (barrier, prod_barrier, done, results)
        arglists = [("producer", i, adapter, case, per_producer[i], verify) + common for i in range(case.producers)]
        arglists += [("consumer", i, adapter, case, 0, verify) + common for i in range(case.consumers)]
        out = _run_workers(ctx, _throughput_worker, arglists, results, done, timeout)
    finally:
        results.close()
    prod = [r[3] for r in out if r[1] == "producer"]
    cons = [r[3] for r in out if r[1] == "consumer"]
    received = sum(r["received"] for r in cons)
    if case.topic:
        # fan-out: every subscriber must have received every message
        if any(r["received"] != count for r in cons):
            raise RunError(f"published {count} messages but subscribers received {[r['received'] for r in cons]}")
    elif received != count:
        raise RunError(f"sent {count} messages but consumers received {received}")
    if verify:
        for p, n in enumerate(per_producer):
            got = [r["per_producer"].get(p, [0, 0]) for r in cons]
            want = n * (n - 1) // 2
            if case.topic:
                ok = all(c == n and t == want for c, t in got)
            else:
                ok = sum(c for c, _ in got) == n and sum(t for _, t in got) == want
            if not ok:
                raise RunError(f"producer {p} sent messages 0..{n - 1}; consumers got (count, sum of ids) {got}")
    seconds = max(r["t1"] for r in cons) - min(r["t0"] for r in prod)
    return {
        "count": count,
        "seconds": seconds,
        "msgs_per_s": count / seconds,
        "mb_per_s": count * case.size / seconds / 1e6,
        "per_consumer": [r["received"] for r in cons],
    }


def measure_latency(ctx, cls, case, samples, warmup, timeout):
    ping, pong = cls(case.payload), cls(case.payload)
    ping.make(ctx, case)
    pong.make(ctx, case)
    results = ctx.Queue()
    try:
        barrier, done = ctx.Barrier(2), ctx.Event()
        arglists = [(role, ping, pong, samples, warmup, barrier, done, results) for role in ("pinger", "echo")]
        out = _run_workers(ctx, _latency_worker, arglists, results, done, timeout)
    finally:
        results.close()
        ping.destroy()
        pong.destroy()
    rtts = next(r[3] for r in out if r[1] == "pinger")
    echoed = next(r[3] for r in out if r[1] == "echo")
    if echoed != samples + warmup or len(rtts) != samples:
        raise RunError(f"echo saw {echoed} messages, pinger timed {len(rtts)}; expected {samples + warmup}")
    return rtts


def percentile(sorted_values, pct):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


class Progress:
    def __init__(self, total):
        self.total, self.n = total, 0
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()

    def step(self):
        self.n += 1

    def show(self, text, final=False):
        line = f"[{self.n:2d}/{self.total}] {time.monotonic() - self.t0:6.1f}s  {text}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line + ("\n" if final else ""))
        elif final:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def note(self, text):
        if self.tty:
            sys.stderr.write("\r\033[K")
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def fmt_count(x):
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            v = x / div
            return f"{v:.3g}{suffix}" if v < 100 else f"{v:.0f}{suffix}"
    return f"{x:.3g}"


def fmt_ratio(x):
    return f"{x:.2g}x" if x < 0.1 else f"{x:.1f}x"


def fmt_mb(x):
    return f"{x:.3g}" if x < 1000 else f"{x:.0f}"


def run_throughput_case(ctx, case, cls, args, progress):
    label = f"{case.id:22s} {cls.label}" if case.topic else f"{case.id:18s} {cls.label}"
    res = {"status": "ok", "samples": [], "pilots": []}
    # One queue per case and implementation, reused by the pilots and the
    # timed runs (fresh processes each time): the pilots also warm it up
    # (first-touch page faults of a fresh ring are not what is measured).
    adapter = cls(case.payload)
    adapter.make(ctx, case)
    try:
        lo, hi = max(case.base_count // 20, 10), case.base_count * 100
        count = lo
        timeout = args.run_timeout
        progress.show(f"{label}: verification run ({count} messages)")
        res["verify"] = measure_throughput(ctx, adapter, case, count, args.run_timeout, verify=True)
        if not args.quick:
            # Pilots: grow the count until a run lasts >= 0.1 s, then size the
            # timed runs to --target-seconds from the last pilot's rate.
            for attempt in range(6):
                progress.show(f"{label}: pilot {attempt + 1} ({count} messages)")
                pilot = measure_throughput(ctx, adapter, case, count, args.run_timeout)
                res["pilots"].append(pilot)
                if pilot["seconds"] >= 0.1 or count >= hi:
                    break
                count = int(min(hi, count * min(10.0, max(2.0, 0.15 / max(pilot["seconds"], 1e-3)))))
            count = int(min(hi, max(lo, pilot["msgs_per_s"] * args.target_seconds)))
            timeout = max(30.0, 20 * count / pilot["msgs_per_s"])
        rescaled = 0
        while len(res["samples"]) < args.repeat:
            progress.show(f"{label}: run {len(res['samples']) + 1}/{args.repeat} ({count} messages)")
            sample = measure_throughput(ctx, adapter, case, count, timeout)
            if (not args.quick and not res["samples"] and rescaled < 2 and count < hi
                    and sample["seconds"] < args.target_seconds / 2):
                # The pilots underestimated the rate (warm-up): this run
                # becomes another pilot, with a larger count.
                rescaled += 1
                res["pilots"].append(sample)
                count = int(min(hi, sample["msgs_per_s"] * args.target_seconds))
                continue
            res["samples"].append(sample)
    except RunError as exc:
        res["status"] = "error"
        res["error"] = str(exc)
        progress.note(f"ERROR in {case.id} / {cls.label}: {exc}")
        return res
    finally:
        adapter.destroy()
    res["median_msgs_per_s"] = statistics.median(s["msgs_per_s"] for s in res["samples"])
    res["median_mb_per_s"] = statistics.median(s["mb_per_s"] for s in res["samples"])
    rates = [s["msgs_per_s"] for s in res["samples"]]
    res["spread"] = (max(rates) - min(rates)) / res["median_msgs_per_s"] if len(rates) > 1 else 0.0
    progress.show(
        f"{label}: {fmt_count(res['median_msgs_per_s'])} msg/s, {fmt_mb(res['median_mb_per_s'])} MB/s", final=True
    )
    return res


def run_latency_case(ctx, case, cls, args, progress):
    label = f"{case.id:18s} {cls.label}"
    samples, warmup = (2_000, 200) if args.quick else (args.latency_samples, max(200, args.latency_samples // 10))
    progress.show(f"{label}: {samples} round trips")
    try:
        rtts = measure_latency(ctx, cls, case, samples, warmup, args.run_timeout)
    except RunError as exc:
        progress.note(f"ERROR in {case.id} / {cls.label}: {exc}")
        return {"status": "error", "error": str(exc)}
    s = sorted(rtts)
    res = {"status": "ok", "rtt_ns": rtts, "samples": len(rtts), "warmup": warmup}
    for name, pct in (("p50", 50), ("p99", 99), ("p99.9", 99.9)):
        res[f"{name}_us"] = percentile(s, pct) / 2 / 1000  # one-way = RTT / 2
    res["mean_us"] = statistics.fmean(s) / 2 / 1000
    progress.show(f"{label}: one-way p50 {res['p50_us']:.1f} µs, p99 {res['p99_us']:.1f} µs", final=True)
    return res


def add_ratios(case_rec, mp_per_message):
    """Ratio to multiprocessing.Queue in the same run (higher = better).
    Batch rows use mp.Queue's per-message result ``mp_per_message``."""
    results = case_rec["results"]
    if case_rec["kind"] == "latency":
        base = results.get(BASELINE, {})
        for impl, r in results.items():
            if r.get("status") != "ok":
                continue
            for p in ("p50", "p99", "p99.9"):
                b = base.get(f"{p}_us") if base.get("status") == "ok" else None
                r[f"{p}_ratio_vs_mp"] = b / r[f"{p}_us"] if b else None
        return
    base = results.get(BASELINE, {})
    basis = "mp.Queue per-message"
    if case_rec["batch"]:
        # mp.Queue has no batch API: compare with its per-message rate for the
        # same size and topology (filled in by the caller).
        base = mp_per_message
        basis = "mp.Queue per-message (mp.Queue has no batch API)"
    b = base.get("median_msgs_per_s") if base.get("status") == "ok" else None
    for impl, r in results.items():
        if r.get("status") == "ok":
            r["ratio_vs_mp"] = r["median_msgs_per_s"] / b if b else None
            r["ratio_basis"] = basis


def machine_info():
    cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        mem = None
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=5,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model or platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": mem,
        "python": sys.version,
        "python_implementation": platform.python_implementation(),
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "git": commit,
    }


def render_table(report, impls):
    cols = [k for k in impls if report["impls"][k]["available"]]
    labels = {k: ADAPTERS[k].label for k in cols}
    rows = []
    dagger = noisy = False
    for c in report["cases"]:
        res = c["results"]
        if c["kind"] == "throughput":
            cells = []
            for k in cols:
                r = res.get(k, {})
                st = r.get("status")
                if st == "ok":
                    ratio = r.get("ratio_vs_mp")
                    mark = "†" if c["batch"] and ratio is not None else ""
                    dagger |= bool(mark)
                    rs = f"({fmt_ratio(ratio)}{mark})" if ratio is not None else "(n/a)"
                    tilde = "~" if r.get("spread", 0) > NOISY_SPREAD else ""
                    noisy |= bool(tilde)
                    cells.append(f"{tilde}{fmt_count(r['median_msgs_per_s'])} msg/s {fmt_mb(r['median_mb_per_s'])} MB/s {rs}")
                elif st == "n/a":
                    cells.append(r.get("short", "n/a (no batch API)"))
                else:
                    cells.append("ERROR" if st == "error" else "-")
            rows.append([c["title"]] + cells)
        else:
            for p in ("p50", "p99", "p99.9"):
                cells = []
                for k in cols:
                    r = res.get(k, {})
                    if r.get("status") == "ok":
                        ratio = r.get(f"{p}_ratio_vs_mp")
                        rs = f"({fmt_ratio(ratio)})" if ratio is not None else "(n/a)"
                        cells.append(f"{r[f'{p}_us']:.1f} µs {rs}")
                    else:
                        cells.append("ERROR" if r.get("status") == "error" else "-")
                rows.append([f"{c['title']} one-way {p}"] + cells)
    header = ["case"] + [labels[k] for k in cols]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    sep = "  "
    lines = [sep.join(h.ljust(w) for h, w in zip(header, widths)), sep.join("-" * w for w in widths)]
    for r in rows:
        lines.append(sep.join([r[0].ljust(widths[0])] + [x.rjust(w) for x, w in zip(r[1:], widths[1:])]))
    notes = [
        "Rates are medians of the repeats; (Nx) = ratio to multiprocessing.Queue in this run, higher is better",
        "(latency: mp.Queue's one-way time / this one's).  MB/s = payload bytes / 1e6 per second.",
    ]
    if noisy:
        notes.append(f"~ = the repeats of this cell differ by more than {NOISY_SPREAD:.0%} of the median "
                     "(noisy machine; see the raw samples in the JSON, or use --repeat 5).")
    if dagger:
        notes.append("† batch rows: ratio to mp.Queue's *per-message* rate (mp.Queue and pyzmq have no batch API).")
    if "zmq" in cols and any(c["kind"] == "throughput" and not c.get("topic") for c in report["cases"]):
        notes.append("pyzmq 2x2: each producer round-robins over per-consumer PUSH/PULL pipes (not a shared queue).")
    if any(c.get("topic") for c in report["cases"]):
        notes.append("topic 1->N rows: 1 publisher, N subscribers that each get every message; msg/s = messages "
                     "published per second (MB/s: published bytes). pyqueue column = pyqueue.Topic (lossless), "
                     "mp.Queue = one mp.Queue per subscriber (the publisher puts into each), pyzmq = PUB/SUB.")
    return "\n".join(lines + [""] + notes)


def render_png(report, impls, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the chart", file=sys.stderr)
        return False
    cols = [k for k in impls if report["impls"][k]["available"]]
    tput = [c for c in report["cases"] if c["kind"] == "throughput" and not c.get("topic")]
    topic = [c for c in report["cases"] if c["kind"] == "throughput" and c.get("topic")]
    lat = [c for c in report["cases"] if c["kind"] == "latency"]
    colors = {"pyqueue": "#d62728", "mp": "#7f7f7f", "faster_fifo": "#1f77b4", "zmq": "#2ca02c"}
    panels = [(h, x) for h, x in ((3, tput), (3, topic), (2, lat)) if x]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(max(10, 0.75 * max(len(tput), len(topic)) + 4), 
                                    {5: 10, 3: 5.5}.get(sum(h for h, _ in panels), 2 * sum(h for h, _ in panels))),
        squeeze=False, gridspec_kw={"height_ratios": [h for h, _ in panels]},
    )
    axes = list(axes[:, 0])
    m = report["machine"]
    fig.suptitle(
        f"pyqueue vs multiprocessing.Queue — {m['cpu_model']}, {m['cpu_count']} CPUs, "
        f"Python {platform.python_version()}  ({report['started'][:16]})", fontsize=10,
    )
    for group in (tput, topic):
        if not group:
            continue
        tput_ = group
        ax = axes.pop(0)
        bar_impls = [k for k in cols if k != BASELINE and (group is not topic or FANOUT_ADAPTERS.get(k))]
        width = 0.8 / max(1, len(bar_impls))
        for j, k in enumerate(bar_impls):
            xs, ys = [], []
            for i, c in enumerate(tput_):
                r = c["results"].get(k, {})
                if r.get("status") == "ok" and r.get("ratio_vs_mp"):
                    xs.append(i + (j - (len(bar_impls) - 1) / 2) * width)
                    ys.append(r["ratio_vs_mp"])
            # bars grow from the mp.Queue line: up = faster, down = slower
            ax.bar(xs, [y - 1.0 for y in ys], width, bottom=1.0, label=ADAPTERS[k].label, color=colors.get(k))
        ax.axhline(1.0, color=colors["mp"], lw=1, ls="--", label="mp.Queue = 1")
        ax.set_yscale("log")
        ax.set_xticks(range(len(tput_)))
        ax.set_xticklabels([c["title"] + (" †" if c["batch"] else "") for c in tput_], rotation=40, ha="right",
                           fontsize=8)
        ax.set_ylabel("throughput / mp.Queue (log)")
        if group is topic:
            ax.set_title("Topic fan-out (1 publisher -> N subscribers, each gets every message):\npublished msg/s "
                         "ratio to one mp.Queue per subscriber (pyqueue = Topic, pyzmq = PUB/SUB)", fontsize=10)
        else:
            ax.set_title("Throughput ratio to multiprocessing.Queue (median msg/s; † = vs mp.Queue per-message)",
                         fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if lat:
        ax = axes.pop(0)
        res = lat[0]["results"]
        ok = [k for k in cols if res.get(k, {}).get("status") == "ok"]
        pcts = ["p50", "p99", "p99.9"]
        width = 0.8 / max(1, len(ok))
        for j, k in enumerate(ok):
            xs = [i + (j - (len(ok) - 1) / 2) * width for i in range(len(pcts))]
            ax.bar(xs, [res[k][f"{p}_us"] for p in pcts], width, label=ADAPTERS[k].label, color=colors.get(k))
        ax.set_xticks(range(len(pcts)))
        ax.set_xticklabels(pcts)
        ax.set_yscale("log")
        ax.set_ylabel("one-way latency, µs (log)")
        ax.set_title(f"{lat[0]['title']}: ping-pong one-way latency (RTT/2), lower is better", fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def parse_args(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small fixed message counts, 1 repeat (CI smoke)")
    ap.add_argument("--only", metavar="PATTERN",
                    help="comma-separated case-id patterns (glob, or substring without wildcards); see --list")
    ap.add_argument("--impls", default="pyqueue,mp,faster_fifo,zmq",
                    help="comma-separated implementations (default: %(default)s)")
    ap.add_argument("--procs", default="1,2", metavar="N,N,...",
                    help="process counts N of the NxN throughput cases (default 1,2; e.g. 1,2,4,8 for a scaling run)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per case and implementation (default 3)")
    ap.add_argument("--target-seconds", type=float, default=0.75,
                    help="message counts are sized from pilot runs so one timed run lasts about this long "
                         "(default %(default)s)")
    ap.add_argument("--batch-bytes", type=int, default=DEFAULT_BATCH_BYTES,
                    help="payload bytes per put_many/get_many batch, at most 256/1024 messages (default %(default)s)")
    ap.add_argument("--latency-samples", type=int, default=20_000, help="timed round trips (default 20000)")
    ap.add_argument("--run-timeout", type=float, default=120.0, help="seconds before a run counts as hung")
    ap.add_argument("--start-method", default="fork", choices=multiprocessing.get_all_start_methods())
    ap.add_argument("--json", default=os.path.join(here, "results", "compare.json"), help="JSON output path")
    ap.add_argument("--png", default=os.path.join(here, "results", "compare.png"), help="chart path ('' = none)")
    ap.add_argument("--topic", action="store_true",
                    help="add the topic fan-out cases (topic-1xN-*: 1 publisher, 1/2/4 subscribers; pyqueue.Topic vs "
                         "one mp.Queue per subscriber and pyzmq PUB/SUB); also on when an --only pattern contains "
                         "'topic'")
    ap.add_argument("--list", action="store_true", help="list case ids and exit")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeat = 1
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    unknown = [s for s in impls if s not in ADAPTERS]
    if unknown:
        ap.error(f"unknown implementation(s) {unknown}; choose from {list(ADAPTERS)}")
    args.impls = [k for k in ADAPTERS if k in impls]  # fixed column order
    return args


def main(argv=None):
    args = parse_args(argv)
    cases = all_cases(args.batch_bytes, tuple(int(n) for n in args.procs.split(",") if n.strip()))
    with_topic = args.topic or "topic" in (args.only or "")
    if args.list:
        for c in cases + topic_cases(args.batch_bytes):
            print(f"{c.id:22s} {c.title}" + ("  (--topic)" if c.topic else ""))
        return 0
    if with_topic:
        cases += topic_cases(args.batch_bytes)
    cases = select_cases(cases, args.only)
    if not cases:
        print(f"--only {args.only!r} matches no case (see --list)", file=sys.stderr)
        return 2

    failed = False
    impl_info = {}
    for k in args.impls:
        version, why = ADAPTERS[k].probe()
        impl_info[k] = {"label": ADAPTERS[k].label, "available": version is not None, "version": version, "note": why}
        if version is None:
            if k in OPTIONAL:
                print(f"note: skipping {ADAPTERS[k].label}: {why}", file=sys.stderr)
            else:
                print(f"error: {ADAPTERS[k].label} is not usable: {why}", file=sys.stderr)
                failed = True
    if BASELINE not in args.impls:
        print("note: mp.Queue not selected: ratios will be n/a", file=sys.stderr)
    impls = [k for k in args.impls if impl_info[k]["available"]]

    ctx = multiprocessing.get_context(args.start_method)
    load1 = os.getloadavg()[0]
    if load1 > 0.5:
        print(f"note: load average is {load1:.2f} before starting: other work on this machine will add noise",
              file=sys.stderr)
    report = {
        "benchmark": "pyqueue bench.compare",
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "args": {k: v for k, v in vars(args).items()},
        "settings": {
            "sentinel": "b''", "get_many_max": GET_MANY_MAX, "batch_max_messages": BATCH_MAX_MESSAGES,
            "batch_max_bytes": args.batch_bytes, "faster_fifo_max_size_bytes": FASTER_FIFO_BYTES,
            "pyqueue": "pyqueue.Queue() defaults",
            "topic": "pyqueue.Topic(mode='lossless') defaults vs one mp.Queue per subscriber vs pyzmq XPUB "
                     "(XPUB_NODROP)/SUB over ipc; rate = messages published per second, each delivered to every "
                     "subscriber; MB/s = published payload bytes",
            "timer": "time.perf_counter (throughput), perf_counter_ns (latency)",
        },
        "impls": impl_info,
        "cases": [],
    }
    t_start = time.monotonic()
    progress = Progress(len(cases))
    per_message = {}  # (topology, size label) -> mp per-message result, for batch ratios
    for case in cases:
        progress.step()
        rec = dataclasses.asdict(case)
        rec["title"] = case.title
        rec["batch_size"] = case.batch_size if case.batch else None
        rec["get_many_max"] = case.get_many_max if case.batch else None
        rec["results"] = {}
        rec["loadavg_before"] = os.getloadavg()
        for k in impls:
            cls = FANOUT_ADAPTERS[k] if case.topic else ADAPTERS[k]
            if cls is None:
                r = {"status": "n/a", "note": f"{ADAPTERS[k].label} has no fan-out", "short": "n/a (no fan-out)"}
            elif case.kind == "latency":
                r = run_latency_case(ctx, case, cls, args, progress)
            elif case.batch and not cls.has_batch:
                r = {"status": "n/a", "note": f"{cls.label} has no batch API"}
            else:
                r = run_throughput_case(ctx, case, cls, args, progress)
            rec["results"][k] = r
            if r["status"] == "error" and k == "pyqueue":
                failed = True
        key = (case.topic, case.producers, case.consumers, case.size_label)
        if case.kind == "throughput" and not case.batch:
            per_message[key] = rec["results"].get(BASELINE, {})
        if case.batch and BASELINE in impls and key not in per_message:
            # --only picked the batch row without its per-message sibling:
            # measure mp.Queue per-message here so the ratio has a basis.
            sibling = dataclasses.replace(case, id=case.id.replace("-batch", "-msg"), batch=False)
            per_message[key] = run_throughput_case(
                ctx, sibling, (FANOUT_ADAPTERS if case.topic else ADAPTERS)[BASELINE], args, progress)
            rec["mp_per_message_baseline"] = per_message[key]
        add_ratios(rec, per_message.get(key, {}))
        report["cases"].append(rec)

    report["elapsed_s"] = time.monotonic() - t_start
    report["machine"]["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    report["failed"] = failed

    print()
    print(render_table(report, args.impls))
    print(f"\n{len(cases)} cases in {report['elapsed_s']:.0f} s")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")
    if args.png:
        if render_png(report, args.impls, args.png):
            print(f"wrote {args.png}")
    if failed:
        print("FAILED: a pyqueue case crashed or pyqueue is unusable (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
