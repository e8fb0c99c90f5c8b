"""Model-based (hypothesis stateful) tests: non-blocking put/get/put_many/
get_many/qsize/empty/full and the stats() counters of a small
pyqueue.Queue(maxsize=..., capacity_bytes=65536) against a deque model, for
the three overflow modes.

Message sizes go up to 20000 bytes (above a quarter of the 64 KiB ring, so
some travel out of band) while maxsize * the largest in-ring message stays far
below the ring: only maxsize can make the queue full, which the model knows.
"""

import collections
import queue

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

RING = 65536
SIZES = st.sampled_from([0, 1, 7, 100, 1000, 4000, 20000])
KINDS = st.sampled_from(["bytes", "str", "tuple"])
MESSAGE = st.tuples(KINDS, SIZES)

SETTINGS = settings(
    max_examples=80,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def build(kind, size, ident):
    if kind == "bytes":
        return b"%d:" % ident + b"b" * size
    if kind == "str":
        return "%d:" % ident + "s" * size
    return (ident, b"t" * size)


class QueueModel(RuleBasedStateMachine):
    overflow = "block"
    pyqueue = None  # set by the test function

    def __init__(self):
        super().__init__()
        self.q = None

    @initialize(maxsize=st.integers(min_value=1, max_value=6))
    def create(self, maxsize):
        self.maxsize = maxsize
        self.q = self.pyqueue.Queue(maxsize, capacity_bytes=RING, overflow=self.overflow)
        self.model = collections.deque()
        self.enqueued = 0
        self.dequeued = 0
        self.rejected = 0
        self.dropped = 0
        self.ident = 0

    def teardown(self):
        if self.q is not None:
            try:
                self.q.unlink()
            finally:
                self.q.close()

    def _new(self, kind, size):
        self.ident += 1
        return build(kind, size, self.ident)

    # -- model transitions -------------------------------------------------

    def _model_put_one(self, msg):
        """Returns True when the put must succeed."""
        if len(self.model) < self.maxsize:
            self.model.append(msg)
            self.enqueued += 1
            return True
        if self.overflow == "drop_oldest":
            self.model.popleft()
            self.dropped += 1
            self.model.append(msg)
            self.enqueued += 1
            return True
        if self.overflow == "reject":
            self.rejected += 1
        return False

    # -- rules -------------------------------------------------------------

    @rule(m=MESSAGE, how=st.sampled_from(["block=False", "put_nowait"]))
    def put(self, m, how):
        msg = self._new(*m)
        should_succeed = self._model_put_one(msg)
        try:
            if how == "put_nowait":
                self.q.put_nowait(msg)
            else:
                self.q.put(msg, block=False)
        except queue.Full:
            event("put: Full")
            assert not should_succeed, "put raised Full with %d/%d queued" % (
                len(self.model), self.maxsize)
        else:
            event("put: dropped oldest" if self.overflow == "drop_oldest"
                  and self.dropped and len(self.model) == self.maxsize else "put: ok")
            assert should_succeed, "put succeeded on a full queue (%s)" % self.overflow

    @precondition(lambda self: self.overflow == "reject")
    @rule(m=MESSAGE)
    def put_blocking_reject(self, m):
        """overflow="reject" raises Full at once even when blocking."""
        msg = self._new(*m)
        should_succeed = self._model_put_one(msg)
        try:
            self.q.put(msg, timeout=30)
        except queue.Full:
            assert not should_succeed
        else:
            assert should_succeed

    @rule(batch=st.lists(MESSAGE, min_size=1, max_size=4))
    def put_many(self, batch):
        msgs = [self._new(*m) for m in batch]
        free = self.maxsize - len(self.model)
        if self.overflow == "drop_oldest":
            msgs = msgs[: self.maxsize]
            for msg in msgs:
                assert self._model_put_one(msg)
            assert self.q.put_many(msgs, block=False) == len(msgs)
            return
        if len(msgs) <= free:
            for msg in msgs:
                assert self._model_put_one(msg)
            assert self.q.put_many(msgs, block=False) == len(msgs)
            return
        # The batch does not fit.  api.md does not say whether a non-blocking
        # put_many puts a prefix and returns its length, or raises Full; accept
        # either, but what went in must be a prefix of the batch that fits.
        before = self.q.qsize()
        stats_before = self.q.stats()
        try:
            n = self.q.put_many(msgs, block=False)
        except queue.Full:
            n = None
        event("put_many: did not fit (%s)" % ("Full" if n is None else "returned"))
        added = self.q.qsize() - before
        assert 0 <= added <= free
        if n is not None:
            assert n == added, "put_many returned %d but %d were queued" % (n, added)
        for msg in msgs[:added]:
            assert self._model_put_one(msg)
        if self.overflow == "reject":
            got = self.q.stats()["rejected"] - stats_before["rejected"]
            assert 1 <= got <= len(msgs) - added, (got, len(msgs), added)
            self.rejected += got

    @rule(how=st.sampled_from(["block=False", "get_nowait", "timeout=0"]))
    def get(self, how):
        try:
            if how == "get_nowait":
                out = self.q.get_nowait()
            elif how == "timeout=0":
                out = self.q.get(timeout=0)
            else:
                out = self.q.get(block=False)
        except queue.Empty:
            event("get: Empty")
            assert not self.model, "Empty with %d queued" % len(self.model)
        else:
            assert self.model, "got %r from an empty queue" % (out,)
            expected = self.model.popleft()
            self.dequeued += 1
            assert out == expected
            assert type(out) is type(expected)

    @rule(max_messages=st.integers(min_value=1, max_value=8))
    def get_many(self, max_messages):
        try:
            out = self.q.get_many(max_messages=max_messages, block=False)
        except queue.Empty:
            assert not self.model
        else:
            expected = [self.model.popleft() for _ in range(min(max_messages, len(self.model)))]
            event("get_many: %s" % ("all" if not self.model else "partial"))
            self.dequeued += len(expected)
            assert out == expected
            assert isinstance(out, list)

    # -- invariants ----------------------------------------------------------

    @invariant()
    def sizes_agree(self):
        if self.q is None:
            return
        assert self.q.qsize() == len(self.model)
        assert self.q.empty() == (not self.model)
        assert self.q.full() == (len(self.model) >= self.maxsize)

    @invariant()
    def stats_agree(self):
        if self.q is None:
            return
        s = self.q.stats()
        assert s["depth"] == len(self.model)
        assert s["enqueued"] == self.enqueued
        assert s["dequeued"] == self.dequeued
        assert s["dropped"] == self.dropped
        assert s["maxsize"] == self.maxsize
        assert s["capacity_bytes"] == RING
        assert (s["depth_bytes"] == 0) == (not self.model)
        if self.overflow == "reject":
            assert s["rejected"] == self.rejected
        if self.overflow != "drop_oldest":
            assert s["dropped"] == 0


class BlockModel(QueueModel):
    overflow = "block"


class RejectModel(QueueModel):
    overflow = "reject"


class DropOldestModel(QueueModel):
    overflow = "drop_oldest"


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "machine",
    [BlockModel, RejectModel, DropOldestModel],
    ids=["block", "reject", "drop_oldest"],
)
def test_queue_matches_model(pyqueue_mod, machine):
    machine.pyqueue = pyqueue_mod
    run_state_machine_as_test(machine, settings=SETTINGS)
