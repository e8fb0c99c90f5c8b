"""Consumer groups of a Log (memory and directory mode): assignment among
live members, rebalances on join, leave and death, commits fenced by
epochs, seek/position/committed/lag, auto-commit, members removed after
max_poll_interval, offsets that survive a restart, and members in other
processes, one of them SIGKILLed in the middle of a poll."""
import os
from signal import SIGKILL
import time

import pytest
from hypothesis import example, given, settings, strategies as st

import pyqueue
from pyqueue import CommitFailed, Log
from tests import _log_workers as w
from tests._support import close_handles, wait_until


@pytest.fixture(params=["memory", "directory"])
def make_log(request, tmp_path):
    made = []

    def make(**kwargs):
        if request.param == "memory":
            lg = Log(**kwargs)
        else:
            lg = Log(path=tmp_path / f"log{len(made)}", **kwargs)
        made.append(lg)
        return lg

    make.mode = request.param
    yield make
    close_handles(made, unlink=lambda h: h.path is None)


def fill(lg, per_partition):
    for p in range(lg.partitions):
        lg._append(p, [(p, i) for i in range(per_partition)], None, None, 0)


def test_one_member_reads_everything_and_commits(make_log):
    lg = make_log(partitions=3)
    fill(lg, 50)
    c = lg.consumer("g")
    assert c.assignment() == [0, 1, 2] and c.member_id and c.generation
    assert lg.groups() == ["g"]
    assert c.lag() == {0: 50, 1: 50, 2: 50}
    got = []
    while True:
        recs = c.poll(max_records=40)
        if not recs:
            break
        assert len(recs) <= 40
        got.extend(recs)
    assert sorted((r.partition, r.offset) for r in got) == [(p, i) for p in range(3)
                                                            for i in range(50)]
    for p in range(3):  # per partition in offset order
        assert [r.offset for r in got if r.partition == p] == list(range(50))
    assert c.committed(0) is None
    c.commit()
    assert [c.committed(p) for p in range(3)] == [50, 50, 50]
    assert c.lag() == {0: 0, 1: 0, 2: 0}
    offs = lg.group_offsets("g")
    assert offs[1] == {"committed": 50, "end": 50, "lag": 0, "owner_pid": os.getpid()}
    c.close()
    assert lg.group_offsets("g")[1]["owner_pid"] is None
    # A new member goes on from the committed offsets.
    lg._append(1, ["new"], None, None, 0)
    c2 = lg.consumer("g")
    assert [(r.partition, r.offset, r.value) for r in c2.poll()] == [(1, 50, "new")]
    c2.close()


def test_poll_waits_for_an_append_or_times_out(make_log):
    lg = make_log(partitions=2)
    c = lg.consumer("g")
    t0 = time.monotonic()
    assert c.poll(timeout=0.2) == []
    assert 0.15 < time.monotonic() - t0 < 5
    lg.append("x", key="k")
    assert [r.value for r in c.poll(timeout=5)] == ["x"]
    c.close()


def test_rebalance_on_join_and_leave_is_balanced_and_fenced(make_log):
    lg = make_log(partitions=4)
    fill(lg, 10)
    a = lg.consumer("g")
    assert a.assignment() == [0, 1, 2, 3]
    got = a.poll(max_records=100)
    assert len(got) == 40
    b = lg.consumer("g")  # takes two partitions from a
    moved = b.assignment()
    assert len(moved) == 2
    assert sorted(a.assignment() + moved) == [0, 1, 2, 3]
    # a's commit of everything it read is fenced: nothing is written ...
    a2 = lg.consumer("other")  # (another group is unaffected)
    with pytest.raises(CommitFailed) as ei:
        a.commit({p: 10 for p in range(4)})
    assert sorted(ei.value.partitions) == moved
    assert [a.committed(p) for p in range(4)] == [None] * 4
    # ... its own partitions it commits; b starts the moved ones afresh.
    a.commit()
    kept = a.assignment()
    assert [a.committed(p) for p in kept] == [10, 10]
    assert sorted((r.partition, r.offset) for r in b.poll(max_records=100)) == [
        (p, i) for p in moved for i in range(10)]
    b.commit()
    b.close()  # leaving hands its partitions back
    assert a.assignment() == [0, 1, 2, 3]
    assert a.poll() == []  # everything committed: nothing to redo
    assert a2.assignment() == [0, 1, 2, 3]
    a.close()
    a2.close()
    assert sorted(lg.groups()) == ["g", "other"]
    lg.delete_group("other")
    assert lg.groups() == ["g"]


def test_seek_position_and_errors(make_log):
    lg = make_log(partitions=2)
    fill(lg, 20)
    c = lg.consumer("g")
    assert c.position(0) == 0
    c.seek(0, 15)
    assert [r.offset for r in c.poll(max_records=100) if r.partition == 0] == list(range(15, 20))
    c.seek_to_beginning([1])
    assert c.position(1) == 0
    c.seek_to_end()
    assert c.position(0) == c.position(1) == 20 and c.poll() == []
    c.seek(1, 10_000)  # out of range: reset at the next poll
    assert c.poll() == [] and c.position(1) == 20
    with pytest.raises(ValueError):
        c.seek(5, 0)
    with pytest.raises(ValueError):
        c.seek(0, -1)
    with pytest.raises(ValueError):
        c.poll(max_records=0)
    with pytest.raises(TypeError):
        import pickle
        pickle.dumps(c)
    with pytest.raises(ValueError):
        lg.consumer("g", auto_offset_reset="middle")
    with pytest.raises(ValueError):
        lg.consumer("", )
    with pytest.raises(ValueError):
        lg.consumer("x" * 64)
    with pytest.raises(KeyError):
        lg.group_offsets("nope")
    with pytest.raises(pyqueue.PyQueueError):
        lg.delete_group("g")  # it has a live member
    c.close()
    with pytest.raises(ValueError):
        c.poll()
    c.close()  # twice: fine


def test_commit_of_a_partition_the_log_lacks_is_a_value_error(make_log):
    """commit({99: 1}) on a 2-partition log is a caller's mistake
    (ValueError; a partition that is not an int, TypeError, as for seek),
    not a fenced commit (CommitFailed); nothing of such a commit is written
    and the consumer goes on."""
    lg = make_log(partitions=2)
    fill(lg, 5)
    c = lg.consumer("g")
    assert len(c.poll(max_records=100)) == 10
    for bad, error in (({99: 1}, ValueError), ({2: 1}, ValueError), ({-1: 1}, ValueError),
                       ({"0": 1}, TypeError), ({True: 1}, TypeError), ({None: 1}, TypeError),
                       ({0: 3, 99: 1}, ValueError)):
        with pytest.raises(error) as ei:
            c.commit(bad)
        assert not isinstance(ei.value, CommitFailed)
        assert [c.committed(p) for p in range(2)] == [None, None]
    c.commit({0: 3})
    assert [c.committed(p) for p in range(2)] == [3, None]
    c.commit()
    assert [c.committed(p) for p in range(2)] == [5, 5]
    c.close()


def test_latest_reset_and_retention_overtaking(make_log):
    small = {} if make_log.mode == "memory" else {"segment_bytes": 16384}
    lg = make_log(partitions=1, retention_bytes=64 * 1024, **small)
    fill(lg, 10)
    c = lg.consumer("late", auto_offset_reset="latest")
    assert c.position(0) == 10 and c.poll() == []
    c.close()
    e = lg.consumer("early")
    e.poll(max_records=1)
    e.commit()
    assert e.committed(0) == 1
    # Retention drops what "early" has not read: it resets to the start.
    for _i in range(3000):
        lg.append(b"x" * 200)
    start = lg.start_offset(0)
    assert start > 1
    recs = e.poll(max_records=5)
    assert recs[0].offset >= start and e.skipped >= start - 1
    e.close()


def test_auto_commit(make_log):
    lg = make_log(partitions=2)
    fill(lg, 5)
    c = lg.consumer("g", auto_commit=True, auto_commit_interval=0.05)
    assert len(c.poll(max_records=100)) == 10
    assert wait_until(lambda: (c.poll(timeout=0.01), c.committed(0))[1] == 5, timeout=10)
    lg._append(1, ["late"], None, None, 0)
    assert [r.value for r in c.poll(timeout=5)] == ["late"]
    c.close()  # commits on close
    c2 = lg.consumer("g")
    assert c2.committed(1) == 6
    c2.close()


def test_silent_member_is_removed_then_rejoins(make_log):
    lg = make_log(partitions=2)
    fill(lg, 5)
    slow = lg.consumer("g", max_poll_interval=0.1)
    assert slow.assignment() == [0, 1]
    slow.poll(max_records=100)
    other = lg.consumer("g")
    assert len(other.assignment()) == 1
    # slow stops polling for longer than its max_poll_interval; the other
    # member's polls remove it and take its partition.
    assert wait_until(lambda: (other.poll(timeout=0.05), other.assignment())[1] == [0, 1],
                      timeout=10)
    with pytest.raises(CommitFailed):
        slow.commit()
    slow.poll()  # joins again: a new member, with a share of the partitions
    assert len(slow.assignment()) == 1 and len(other.assignment()) == 1
    slow.close()
    other.close()


def test_committed_offsets_survive_a_restart(tmp_path):
    path = tmp_path / "log"
    lg = Log(path=path, partitions=2)
    fill(lg, 30)
    c = lg.consumer("g")
    c.poll(max_records=25)
    c.commit()
    committed = {p: c.committed(p) for p in range(2)}
    assert sum(committed.values()) == 25
    c.close()
    lg.close()
    lg = Log.open(str(path))  # alone: the control file is rebuilt
    assert lg.groups() == ["g"]
    c = lg.consumer("g")
    assert {p: c.committed(p) for p in range(2)} == committed
    assert len(c.poll(max_records=100)) == 35
    c.close()
    lg.close()


def test_members_in_processes_share_and_finish(ctx, procs, make_log):
    lg = make_log(partitions=4)
    fill(lg, 200)
    out = ctx.Queue()
    for _ in range(2):
        procs.start(ctx, w.member_until_done, lg, "g", out, 800, 37)
    results = [out.get(timeout=60) for _ in range(2)]
    assert procs.join_all() == [0, 0]
    seen = set()
    for _pid, recs, _assignment in results:
        seen.update(recs)
    assert seen == {(p, i) for p in range(4) for i in range(200)}  # at least once
    offs = lg.group_offsets("g")
    assert all(v["committed"] == 200 and v["lag"] == 0 for v in offs.values())


def test_member_killed_in_poll_its_partitions_move_on(ctx, procs, make_log):
    lg = make_log(partitions=4)
    fill(lg, 30)
    out = ctx.Queue()
    p = procs.start(ctx, w.member_then_hang, lg, "g", out, 20)
    pid, committed, uncommitted, assignment = out.get(timeout=60)
    assert assignment == [0, 1, 2, 3] and len(committed) == 20 and len(uncommitted) == 20
    # The child committed 5 records of every partition (so a restart at
    # offset 0 is told apart from one at the committed offset).
    assert [lg.group_offsets("g")[q]["committed"] for q in range(4)] == [5, 5, 5, 5]
    survivor = lg.consumer("g")  # joins while the child is alive: shares
    assert len(survivor.assignment()) == 2
    os.kill(pid, SIGKILL)  # the child is blocked in poll()
    p.join(30)
    # Another member joining removes the dead one (and leaves again): the
    # survivor gets every partition without having read anything yet.
    helper = lg.consumer("g")
    helper.close()
    assert survivor.assignment() == [0, 1, 2, 3]
    # Every partition starts at the group's committed offset: nothing the
    # dead member committed comes again, nothing it had not is skipped.
    for q in range(4):
        assert survivor.position(q) == survivor.committed(q) == 5
    got = []
    while True:
        recs = survivor.poll(max_records=500)
        if not recs:
            break
        got.extend((r.partition, r.offset) for r in recs)
    # Everything the dead member had not committed comes again (at least
    # once), nothing it committed does.
    assert sorted(got) == sorted({(q, i) for q in range(4) for i in range(30)} - set(committed))
    assert set(uncommitted) <= set(got)
    members = lg.group_members("g")
    assert [m["pid"] for m in members] == [os.getpid()]
    survivor.close()


def test_a_dead_member_is_removed_by_the_survivors_poll(ctx, procs, make_log):
    """The survivor's own polls (no other member joining) find the dead
    member and take its partitions, from the committed offsets."""
    lg = make_log(partitions=4)
    fill(lg, 30)
    out = ctx.Queue()
    p = procs.start(ctx, w.member_then_hang, lg, "g", out, 20)
    pid, committed, _uncommitted, _assignment = out.get(timeout=60)
    survivor = lg.consumer("g")
    mine = survivor.assignment()
    assert len(mine) == 2
    os.kill(pid, SIGKILL)
    p.join(30)
    got = []

    def taken_over():
        got.extend((r.partition, r.offset) for r in survivor.poll(timeout=0.05))
        return survivor.assignment() == [0, 1, 2, 3]

    assert wait_until(taken_over, timeout=10)
    while True:
        recs = survivor.poll(max_records=500)
        if not recs:
            break
        got.extend((r.partition, r.offset) for r in recs)
    assert sorted(got) == sorted({(q, i) for q in range(4) for i in range(30)} - set(committed))
    survivor.close()


def test_consumer_belongs_to_its_process(ctx, procs, make_log):
    lg = make_log(partitions=1)
    c = lg.consumer("g")
    if ctx.get_start_method() == "fork":
        pid = os.fork()
        if pid == 0:  # the child's copy must refuse, and not leave the group
            try:
                c.poll()
                os._exit(1)
            except pyqueue.PyQueueError:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert c.assignment() == [0]
    c.close()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(0, 2), st.integers(1, 5)),
    st.tuples(st.just("poll"), st.integers(1, 8), st.just(0)),
    st.tuples(st.just("commit"), st.just(0), st.just(0)),
    st.tuples(st.just("restart"), st.just(0), st.just(0)),
), max_size=40))
def test_model_at_least_once_in_order(ops):
    """A single member against a model (a list per partition, a committed
    and a read position each): poll returns, per partition, the next
    records in order; a restart (close, new consumer) resumes at the
    committed offsets, so what is delivered is every record at least once
    and nothing committed twice."""
    lg = Log(partitions=3)
    try:
        model = [[] for _ in range(3)]
        pos, committed = [0, 0, 0], [0, 0, 0]
        c = lg.consumer("m")
        n = 0
        for op, a, b in ops:
            if op == "append":
                lg._append(a, [n + i for i in range(b)], None, None, 0)
                model[a].extend(n + i for i in range(b))
                n += b
            elif op == "poll":
                recs = c.poll(max_records=a)
                assert len(recs) <= a
                for r in recs:
                    assert r.offset == pos[r.partition]
                    assert r.value == model[r.partition][r.offset]
                    pos[r.partition] += 1
                if not recs:
                    assert pos == [len(m) for m in model]
            elif op == "commit":
                c.commit()
                committed = list(pos)
            else:
                c.close()
                c = lg.consumer("m")
                pos = list(committed)
            assert [c.committed(p) or 0 for p in range(3)] == committed
        c.close()
    finally:
        lg.unlink()
        lg.close()


# The model test's steps (tests/contract/test_consumer_contract.py runs the
# same model on every backend).
MODEL_OPS = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(0, 3), st.integers(1, 6)),
    st.tuples(st.just("join"), st.just(0), st.just(0)),
    st.tuples(st.just("leave"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("poll"), st.integers(0, 3), st.integers(1, 24)),
    st.tuples(st.just("poll"), st.integers(0, 3), st.integers(1, 24)),
    st.tuples(st.just("commit"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("commit"), st.integers(0, 3), st.just(0)),
), max_size=60)


MODEL_EXAMPLES = [
    # A partition that moves after a commit starts at the committed offset.
    [("append", p, 5) for p in range(4)] + [("join", 0, 0), ("poll", 0, 24), ("commit", 0, 0),
                                            ("append", 3, 2), ("join", 0, 0), ("poll", 1, 24)],
    # Lost and given back while the member did not look: its old position
    # is void (another member may have committed meanwhile).
    [("append", p, 5) for p in range(4)] + [("join", 0, 0), ("poll", 0, 3), ("join", 0, 0),
                                            ("poll", 1, 24), ("commit", 1, 0), ("leave", 1, 0),
                                            ("poll", 0, 24), ("commit", 0, 0)],
    # Lost and given back, then a fenced commit: the member follows the new
    # assignment from the committed offset, not from its old position
    # (found by this model: the fenced commit's refresh kept the stale
    # position).
    [("append", 2, 2), ("join", 0, 0), ("poll", 0, 1), ("join", 0, 0), ("leave", 1, 0),
     ("commit", 0, 0), ("poll", 0, 1), ("commit", 0, 0)],
]


def model_examples(test):
    """test, with MODEL_EXAMPLES as hypothesis examples (argument ops)."""
    for ops in reversed(MODEL_EXAMPLES):
        test = example(ops=ops)(test)
    return test


@settings(max_examples=100, deadline=None)
@given(ops=MODEL_OPS)
@model_examples
def test_model_several_members(ops):
    """Several members of one group (in one process) joining, leaving,
    polling and committing in any interleaving, against a model that
    tracks who owns each partition (read from the group table after each
    step) and what each member knows:

    - the live members' assignments are disjoint, cover every partition and
      are balanced (sizes differ by at most one);
    - a poll returns, per partition, the next records in order: from the
      member's own position when it kept the partition since it last
      looked, else from the group's committed offset (never from 0 or from
      another member's position);
    - a commit succeeds exactly when none of the partitions the member
      knows has changed owner since it looked, and writes those
      positions; a fenced commit (CommitFailed) writes nothing and names
      the partitions lost; committed offsets never go back."""
    run_model(Log(partitions=4), ops,
              lambda lg, p, values: lg._append(p, values, None, None, 0))


def run_model(lg, ops, append):
    """test_model_several_members on lg (4 partitions; unlinked and closed
    at the end); append(lg, partition, values) appends there."""
    P = 4
    assert lg.partitions == P
    members = []  # [consumer, {partition: (position, owner changes seen)}]
    try:
        model = [[] for _ in range(P)]
        committed = [None] * P
        changes = [0] * P  # how often each partition changed owner
        table = lg._group_table()
        owners = [0] * P
        n = 0

        def observe():
            """Owners after a step: count changes, check the assignment."""
            if not members:
                return
            g = members[0][0]._g
            now = [table.owner(g, p) for p in range(P)]
            for p in range(P):
                if now[p] != owners[p]:
                    changes[p] += 1
                    owners[p] = now[p]
            ids = [m[0].member_id for m in members]
            assert set(now) <= set(ids) and 0 not in now
            sizes = [now.count(i) for i in ids]
            assert max(sizes) - min(sizes) <= 1

        def look(m):
            """What the member does when it follows the assignment (poll,
            or a fenced commit): keep what it still owns, take the new
            partitions from the committed offsets."""
            c, known = m
            for p in list(known):
                if owners[p] != c.member_id or changes[p] != known[p][1]:
                    del known[p]
            for p in range(P):
                if owners[p] == c.member_id and p not in known:
                    known[p] = (committed[p] or 0, changes[p])

        for op, a, b in ops:
            if op == "append":
                append(lg, a, [n + i for i in range(b)])
                model[a].extend(n + i for i in range(b))
                n += b
            elif op == "join" and len(members) < 4:
                members.append([lg.consumer("m"), {}])
                observe()
                look(members[-1])
            elif op == "leave" and members:
                members.pop(a % len(members))[0].close()
                observe()
            elif op == "poll" and members:
                m = members[a % len(members)]
                c, known = m
                look(m)
                recs = c.poll(max_records=b)
                assert len(recs) <= b
                for r in recs:
                    at, seen = known[r.partition]
                    assert r.offset == at, (r, known)
                    assert r.value == model[r.partition][r.offset]
                    known[r.partition] = (at + 1, seen)
                if len(recs) < b:  # a short poll read every partition to its end
                    assert all(at == len(model[p]) for p, (at, _) in known.items())
                assert sorted(known) == c.assignment()
                for p, (at, _) in known.items():
                    assert c.position(p) == at
            elif op == "commit" and members:
                m = members[a % len(members)]
                c, known = m
                lost = sorted(p for p, (_, seen) in known.items()
                              if owners[p] != c.member_id or changes[p] != seen)
                before = [c.committed(p) for p in range(P)]
                if lost:
                    with pytest.raises(CommitFailed) as ei:
                        c.commit()
                    assert list(ei.value.partitions) == lost
                    assert [c.committed(p) for p in range(P)] == before
                    look(m)
                else:
                    c.commit()
                    for p, (at, _) in known.items():
                        assert committed[p] is None or at >= committed[p]
                        committed[p] = at
            if "m" in lg.groups():
                assert [lg.group_offsets("m")[p]["committed"] for p in range(P)] == committed
    finally:
        for c, _ in members:
            c.close()
        lg.unlink()
        lg.close()
