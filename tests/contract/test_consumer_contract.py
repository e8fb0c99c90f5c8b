"""Consumer groups of a Log (Kafka's semantics) on every backend: a sticky,
balanced assignment among live members, rebalances on join, close and
death (a SIGKILLed member's partitions move, after its lease on Redis,
and resume at its committed offsets), commits fenced by epochs
(CommitFailed), seek/position/committed/lag, auto-commit, group_offsets
and delete_group. tests/contract/conftest.py has the backends."""
import os
import signal
import time

import pytest
from hypothesis import HealthCheck, given, settings

import pyqueue
from pyqueue import CommitFailed
from pyqueue.errors import PyQueueError
from tests._support import wait_until
from tests.contract import _workers
from tests.test_consumer import MODEL_OPS, model_examples, run_model

pytestmark = pytest.mark.timeout(120)


def filled(make, partitions, per_partition):
    """A log with per_partition records (0..n-1) in each partition."""
    log = make("Log", make.name(), partitions=partitions)
    for _ in range(partitions):      # keyless batches go round-robin
        log.append_many(range(per_partition))
    assert [log.end_offset(p) for p in range(partitions)] == [per_partition] * partitions
    return log


@pytest.fixture
def consumers():
    made = []
    yield made
    for c in reversed(made):
        c.close()


def fresh(cs):
    return [c.assignment() for c in cs]


def test_assignment_is_disjoint_complete_balanced_and_sticky(make, consumers):
    log = filled(make, 5, 1)
    before = None
    for n in (1, 2, 3):
        consumers.append(log.consumer("g"))
        got = fresh(consumers)
        flat = [p for a in got for p in a]
        assert sorted(flat) == list(range(5))                # disjoint and complete
        assert max(map(len, got)) - min(map(len, got)) <= 1  # balanced
        if before is not None:                               # sticky: the old members keep
            for old, new in zip(before, got):                # a part of what they had
                assert set(new) <= set(old)
        before = got
    assert log.groups() == ["g"]
    assert len({c.member_id for c in consumers}) == 3
    assert len({c.generation for c in consumers}) == 1


def test_close_rebalances_to_the_others(make, consumers):
    log = filled(make, 4, 1)
    consumers.extend(log.consumer("g") for _ in range(3))
    leaving = consumers.pop()
    had = leaving.assignment()
    assert had
    leaving.close()
    leaving.close()                                          # twice: nothing
    got = fresh(consumers)
    assert sorted(p for a in got for p in a) == [0, 1, 2, 3]
    assert all(len(a) == 2 for a in got)
    with pytest.raises(ValueError, match="closed"):
        leaving.poll()


def test_fenced_commit_raises_and_writes_nothing(make, consumers):
    log = filled(make, 4, 10)
    c1 = log.consumer("g")
    consumers.append(c1)
    assert len(c1.poll(max_records=1000)) == 40
    consumers.append(log.consumer("g"))                      # takes partitions from c1
    moved = consumers[1].assignment()
    with pytest.raises(CommitFailed) as e:
        c1.commit()                                          # at the epochs it got them
    assert sorted(e.value.partitions) == moved
    assert [c1.committed(p) for p in range(4)] == [None] * 4  # all or nothing
    kept = c1.assignment()
    assert sorted(kept + moved) == [0, 1, 2, 3]
    c1.commit()                                              # what it still owns
    assert [c1.committed(p) for p in kept] == [10] * len(kept)
    assert all(c1.committed(p) is None for p in moved)
    with pytest.raises(CommitFailed):
        c1.commit({moved[0]: 1})
    with pytest.raises(ValueError):
        c1.commit({99: 1})


def test_seek_position_committed_lag_and_group_offsets(make, consumers):
    log = filled(make, 2, 10)
    c = log.consumer("g")
    consumers.append(c)
    assert c.assignment() == [0, 1] and c.lag() == {0: 10, 1: 10}
    assert c.position(0) == 0 and c.committed(0) is None
    recs = c.poll(max_records=20)
    assert sorted((r.partition, r.offset, r.value) for r in recs) == [
        (p, i, i) for p in range(2) for i in range(10)]
    assert c.lag() == {0: 0, 1: 0} and c.position(1) == 10
    c.seek(0, 3)
    assert [r.offset for r in c.poll(max_records=3)] == [3, 4, 5]
    assert c.position(0) == 6
    c.commit({0: 6, 1: 10})
    assert (c.committed(0), c.committed(1)) == (6, 10)
    offs = log.group_offsets("g")
    assert offs[0]["committed"] == 6 and offs[0]["lag"] == 4 and offs[0]["end"] == 10
    assert offs[1]["owner_pid"] == os.getpid()
    c.seek_to_beginning([1])
    assert c.position(1) == 0
    c.seek_to_end()
    assert (c.position(0), c.position(1)) == (10, 10)
    log.append_many(["new"], key=None)
    assert [r.value for r in c.poll(timeout=30)] == ["new"]
    with pytest.raises(ValueError):
        c.seek(0, -1)
    with pytest.raises(KeyError):
        log.group_offsets("no-such-group")
    with pytest.raises(PyQueueError):
        log.delete_group("g")                                # a live member
    consumers.remove(c)
    c.close()
    log.delete_group("g")
    assert log.groups() == []
    again = log.consumer("g")                                # a new group: nothing committed
    consumers.append(again)
    assert again.committed(0) is None and again.position(0) == 0


def test_bad_group_names_and_options_are_refused(make, consumers):
    log = filled(make, 2, 1)
    with pytest.raises(TypeError):
        log.consumer(5)
    for bad in ("", "x" * 64, "a\0b"):
        with pytest.raises(ValueError):
            log.consumer(bad)
    with pytest.raises(ValueError):
        log.consumer("g", auto_offset_reset="middle")
    with pytest.raises(ValueError):
        log.consumer("g", max_poll_interval=0)
    assert log.groups() == []                                # nothing made
    c = log.consumer("g}{x")                                 # braces: still one slot
    consumers.append(c)
    assert c.assignment() == [0, 1] and len(c.poll(max_records=5)) == 2
    c.commit()
    assert log.groups() == ["g}{x"] and c.committed(1) == 1


def test_a_new_member_starts_at_the_committed_offsets(make, consumers):
    log = filled(make, 3, 10)
    with log.consumer("g", auto_commit=True) as c:
        assert len(c.poll(max_records=30)) == 30
        c.seek(1, 4)                                         # committed by close()
    c2 = log.consumer("g", auto_offset_reset="latest")
    consumers.append(c2)
    assert [c2.position(p) for p in range(3)] == [10, 4, 10]
    assert [r.offset for r in c2.poll(max_records=100) if r.partition == 1] == list(range(4, 10))


def test_a_killed_member_s_partitions_move_and_resume_at_its_commits(make, consumers, ctx,
                                                                     procs, backend):
    log = filled(make, 4, 10)
    c = log.consumer("g")
    consumers.append(c)
    out = make("Queue", name=make.name())
    child = procs.start(ctx, _workers.member_commit_report_and_hang, log, "g", 5, out)
    theirs = out.get(timeout=60)
    assert len(theirs) == 2
    assert c.assignment() == sorted(set(range(4)) - set(theirs))
    mine = {p: c.position(p) for p in c.assignment()}
    os.kill(child.pid, signal.SIGKILL)
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    got = []

    def took_all():
        got.extend(c.poll(max_records=100, timeout=0.2))
        return c.assignment() == [0, 1, 2, 3]
    assert wait_until(took_all, timeout=60)                  # after its lease on Redis
    while True:
        recs = c.poll(max_records=100)
        if not recs:
            break
        got.extend(recs)
    for p in range(4):
        start = 5 if p in theirs else mine[p]
        assert [r.offset for r in got if r.partition == p] == list(range(start, 10))
    assert [m["member_id"] for m in log.group_members("g")] == [c.member_id]


def test_a_killed_member_with_a_long_poll_interval_is_removed_by_its_session(make, consumers,
                                                                            procs):
    """Redis has no pids across hosts: a member's process heartbeats (a
    thread) a session lease of at most 10 s (SESSION_TIMEOUT), so a dead
    member goes after that, not after its max_poll_interval (120 s here)."""
    import multiprocessing
    log = filled(make, 2, 3)
    c = log.consumer("g")
    consumers.append(c)
    out = make("Queue", name=make.name())
    child = procs.start(multiprocessing.get_context("fork"),
                        _workers.member_commit_report_and_hang, log, "g", 1, out, 120.0)
    theirs = out.get(timeout=60)
    assert len(theirs) == 1 and c.assignment() == [1 - theirs[0]]
    os.kill(child.pid, signal.SIGKILL)
    child.join(30)
    assert wait_until(lambda: c.poll(timeout=0.2) is not None and c.assignment() == [0, 1],
                      timeout=60)
    assert c.committed(theirs[0]) == 1


def test_a_live_member_busy_longer_than_its_session_stays(make, consumers, monkeypatch):
    """Its process's heartbeat thread renews the session lease while it
    does not poll (within max_poll_interval): it keeps its partitions."""
    from pyqueue.backends.redis import groups
    monkeypatch.setattr(groups, "SESSION_TIMEOUT", 0.6)
    log = filled(make, 2, 1)
    busy = log.consumer("g", max_poll_interval=60)
    consumers.append(busy)
    other = log.consumer("g")
    consumers.append(other)
    mine = busy.assignment()
    until = time.monotonic() + 5 * 0.6                       # five sessions without a poll,
    while time.monotonic() < until:                          # while the other member reaps
        other.poll(timeout=0.1)
    assert sorted(m["member_id"] for m in log.group_members("g")) == sorted(
        [busy.member_id, other.member_id])
    me = busy.member_id
    assert busy.assignment() == mine and busy.member_id == me


def test_a_silent_member_is_removed_and_fenced_then_rejoins(make, consumers):
    log = filled(make, 2, 10)
    silent = log.consumer("g", max_poll_interval=0.5)
    consumers.append(silent)
    first_id = silent.member_id
    assert len(silent.poll(max_records=100)) == 20
    other = log.consumer("g")
    consumers.append(other)
    held = silent.assignment()
    assert len(held) == 1                                    # shared while it polls
    assert wait_until(lambda: other.poll(timeout=0.1) is not None
                      and other.assignment() == [0, 1], timeout=30)
    with pytest.raises(CommitFailed) as e:                   # removed: its commit is fenced
        silent.commit()
    assert list(e.value.partitions) == held
    assert [other.committed(p) for p in range(2)] == [None, None]
    assert silent.member_id != first_id                      # it joined again, as a new member
    silent.poll()
    assert len(silent.assignment()) == 1 and len(other.assignment()) == 1


def test_polling_keeps_a_short_lease(make, consumers):
    log = filled(make, 2, 1)
    c = log.consumer("g", max_poll_interval=1.0)
    consumers.append(c)
    me = c.member_id
    assert len(c.poll(max_records=10)) == 2
    assert c.poll(timeout=3.0) == []        # a wait 3x the lease: renewed while it waits
    assert c.member_id == me and c.assignment() == [0, 1]


def _append(lg, p, values):
    if type(lg).__module__.startswith("pyqueue.backends."):
        lg._append(p, values, None, None)
    else:
        lg._append(p, values, None, None, 0)   # shared memory's takes flags too


# the backend (one per test, not per example) is what the health check means
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=MODEL_OPS)
@model_examples
def test_model_several_members(backend, ops):
    """tests/test_consumer.py's model of several members joining, leaving,
    polling and committing in any interleaving (assignments disjoint,
    complete, balanced; polls from the member's own position or the
    committed offset; commits fenced exactly when a partition changed
    owner, writing nothing then), on each backend."""
    import uuid
    run_model(backend.Log("model-" + uuid.uuid4().hex[:12], partitions=4), ops, _append)


def test_a_removed_member_stays_fenced_after_the_group_is_made_again(make):
    log = filled(make, 2, 5)
    stale = log.consumer("g", max_poll_interval=0.3)
    assert len(stale.poll(max_records=10)) == 10
    with log.consumer("g") as other:                        # removes the silent one
        assert wait_until(lambda: other.poll(timeout=0.1) is not None
                          and other.assignment() == [0, 1], timeout=30)
    log.delete_group("g")                                   # no live member: deleted
    with log.consumer("g") as fresh_member:                 # the group made again
        assert fresh_member.assignment() == [0, 1]
        assert fresh_member.member_id != stale.member_id
        with pytest.raises(CommitFailed):
            stale.commit({0: 5, 1: 5})
        assert [fresh_member.committed(p) for p in range(2)] == [None, None]
    stale.close()


def _closing_the_log_closes_its_consumers(log, other):
    """log.close() with two consumers made from it: both leave (the
    auto-committing one commits first), and other (a second handle of the
    same log) sees the group empty and the commit; closing a consumer
    after its log is closed does nothing."""
    plain = log.consumer("g")
    auto = log.consumer("g", auto_commit=True)
    got = auto.poll(max_records=100, timeout=5)
    assert got and {r.partition for r in got} <= set(auto.assignment())
    assert len(other.group_members("g")) == 2
    log.close()
    assert other.group_members("g") == []
    committed = other.group_offsets("g")
    for p in sorted({r.partition for r in got}):
        assert committed[p]["committed"] == max(r.offset for r in got if r.partition == p) + 1
    plain.close()
    auto.close()                       # closed already: nothing
    with pytest.raises(ValueError, match="closed"):
        plain.poll()


def test_closing_the_log_closes_the_consumers_made_from_it(make):
    log = filled(make, 4, 3)
    other = make("Log", log.name)
    _closing_the_log_closes_its_consumers(log, other)


def test_closing_a_directory_log_closes_the_consumers_made_from_it(tmp_path):
    log = pyqueue.Log(path=tmp_path / "log", partitions=4)
    try:
        for _ in range(4):
            log.append_many(range(3))
        other = pyqueue.Log(path=tmp_path / "log")
        try:
            _closing_the_log_closes_its_consumers(log, other)
        finally:
            other.close()
    finally:
        log.close()


def test_a_consumer_made_while_another_thread_closes_the_log_does_not_stay(make):
    """Threads share a Log handle: one makes a consumer while another
    closes the handle. Either the consumer is refused (ValueError: the log
    is closed) or it is made and closed with the log; never a member left
    in the group (a review: one made between its join and being listed
    stayed a member until it looked dead)."""
    import sys
    import threading
    first = filled(make, 2, 1)
    other = make("Log", first.name)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)     # threads switch as often as they can: more interleavings
    try:
        _join_while_closing(make, first, other)
    finally:
        sys.setswitchinterval(switch)


def _join_while_closing(make, first, other):
    import threading
    for _ in range(200):
        log = make.backend.Log.open(first.name)
        go = threading.Barrier(2)
        made = []

        def join():
            go.wait()
            try:
                made.append(log.consumer("g"))
            except ValueError:
                pass

        t = threading.Thread(target=join)
        t.start()
        go.wait()
        log.close()
        t.join(60)
        assert "g" not in other.groups() or other.group_members("g") == []
        for c in made:
            c.close()                 # closed with the log: nothing
