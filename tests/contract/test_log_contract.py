"""Log (memory mode's semantics; consumer groups: test_consumer_contract.py):
the same assertions on every backend; tests/contract/conftest.py."""
import json
import pickle
import uuid

import pytest

import pyqueue
from pyqueue import _log
from pyqueue.errors import MessageTooLarge, OffsetOutOfRange, PoisonRecord, SegmentNotFound
from tests._wq_workers import json_dumps, json_loads
from tests.test_log_serializer import _RunsCode
from tests._support import wait_until
from tests.contract import _workers

pytestmark = pytest.mark.timeout(90)

KiB = 1024
JSON = (json_dumps, json_loads)


def test_append_read_records(make):
    log = make("Log", make.name(), partitions=4)
    assert isinstance(log, pyqueue.Log) and log.partitions == 4
    p = log.partition_for("user-1")
    assert p == _log.kafka_partition(b"user-1", 4)        # Kafka's placement, on every backend
    assert log.append("a", key="user-1") == (p, 0)
    assert log.append_many([{"b": 1}, b"c"], key=b"user-1", headers={"h": "v"}) == [(p, 1), (p, 2)]
    recs = log.read(p, 0)
    assert [(r.partition, r.offset, r.key, r.value, r.headers) for r in recs] == [
        (p, 0, b"user-1", "a", {}), (p, 1, b"user-1", {"b": 1}, {"h": b"v"}),
        (p, 2, b"user-1", b"c", {"h": b"v"})]
    assert all(isinstance(r, pyqueue.Record) and r.timestamp > 0 for r in recs)
    assert log.read(p, 1, max_records=1)[0].offset == 1
    assert (log.start_offset(p), log.end_offset(p)) == (0, 3)
    assert log.read(p, 3) == []                            # the end: nothing yet
    with pytest.raises(OffsetOutOfRange):
        log.read(p, 4)


def test_an_empty_key_is_a_key(make):
    # Before, the Redis backend stored key="" or b"" as no key (None).
    log = make("Log", make.name(), partitions=3)
    p = log.partition_for(b"")
    assert log.append("a", key="") == (p, 0)
    assert log.append_many(["b"], key=b"") == [(p, 1)]
    log.append("c")                                        # no key at all
    got = [(r.key, r.value) for part in range(3) for r in log.read(part, 0)]
    assert sorted(got, key=lambda kv: kv[1]) == [(b"", "a"), (b"", "b"), (None, "c")]


def test_a_removed_logs_handles_never_make_it_again(make, backend):
    # unlink() removes the log; a handle still open keeps writing into the
    # removed one on shared memory (the mapping stays), and raises
    # SegmentNotFound on Redis (the records are gone with the keys); on
    # both, a log made again under the name starts empty and without
    # groups, and the old handle writes nothing into it. Before, on Redis,
    # the old handle's append made the partition again (the new log had
    # its record), its consumer made the group, and after the log was made
    # again the old handle appended into the new one.
    log = make("Log", make.name(), partitions=2)
    p, _ = log.append("a", key="k")
    other = next(k for k in map(str, range(100)) if log.partition_for(k) != p)
    backend.Log.open(log.name).unlink()
    if backend.name == "shm":
        assert log.append("b", key="k") == (p, 1)
        log.consumer("g").close()
    else:
        with pytest.raises(SegmentNotFound):
            log.append("b", key="k")
        with pytest.raises(SegmentNotFound):
            log.append("c", key=other)             # a partition never appended to
        with pytest.raises(SegmentNotFound):
            log.consumer("g")
        assert backend.client.exists(f"pq:{{{log.name}}}:groups") == 0   # no group listed
    with pytest.raises(SegmentNotFound):
        backend.Log.open(log.name)
    again = make("Log", log.name, partitions=2)
    assert [again.end_offset(q) for q in range(2)] == [0, 0]
    with pytest.raises(KeyError):
        again.group_offsets("g")                   # no such group
    assert again.append("new", key="k") == (p, 0)
    if backend.name != "shm":
        # the old handle, with a log of its name there again: not its log
        with pytest.raises(SegmentNotFound):
            log.append("b", key="k")               # a partition the new log made
        with pytest.raises(SegmentNotFound):
            log.append("c", key=other)             # one it has not made yet
        with pytest.raises(SegmentNotFound):
            log.consumer("g")
        with pytest.raises(SegmentNotFound):
            log.read(p, 0)                         # not the new log's records
        with pytest.raises(SegmentNotFound):
            log.end_offset(p)
    assert [again.end_offset(q) for q in range(2)] == [1 if q == p else 0 for q in range(2)]
    assert [r.value for r in again.read(p, 0)] == ["new"]
    with pytest.raises(KeyError):
        again.group_offsets("g")


def test_a_redis_log_made_without_an_incarnation_id_still_works(redis_url):
    # A log made by a pyqueue before incarnation ids (no "inc" field in its
    # meta hash nor in its partitions' hashes) is used as before.
    b = pyqueue.connect(redis_url)
    log = b.Log(name="noinc-" + uuid.uuid4().hex[:8], partitions=2)
    try:
        p, _ = log.append("a", key="k")
        q = 1 - p
        b.client.hdel(f"pq:{{{log.name}}}:meta", "inc")
        b.client.hdel(f"pq:{{{log.name}/{p}}}:l.meta", "inc")
        old = b.Log.open(log.name)
        other = next(k for k in map(str, range(100)) if old.partition_for(k) == q)
        assert old.append("b", key="k") == (p, 1)
        assert old.append("c", key=other) == (q, 0)   # its first append there
        c = old.consumer("g", auto_offset_reset="earliest")
        assert sorted(r.value for r in c.poll(timeout=5)) == ["a", "b", "c"]
        c.close()
        old.close()
    finally:
        log.unlink()
        log.close()


def _fresh(prefix):
    """A log name no other test (nor run) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _log_keys(b, name):
    """Every key of log `name` on the server (its partitions' slots too)."""
    pattern = f"pq:{{{name}*"
    if b.cluster:
        return sorted(k.decode() for node in b.client.get_primaries()
                      for k in b.client.keys(pattern, target_nodes=node))
    return sorted(k.decode() for k in b.client.keys(pattern))


def _on_check(monkeypatch, handle, at, then=None, fail=None):
    """Makes `handle`'s at-th check of its log (RedisLog._check_same_log,
    a call of its own: the log's meta hash is in another slot than its
    partitions and groups) the real check followed by then() (another
    handle's real unlink, say: a schedule, not a stand-in), or raise
    `fail` instead (a lost connection). Other handles' checks run as they
    are. -> the list of handle's checks, one item each."""
    bound = type(handle)
    real = bound._check_same_log
    calls = []

    def check(self):
        if self is not handle:
            return real(self)
        calls.append(1)
        if len(calls) == at and fail is not None:
            raise fail
        real(self)
        if len(calls) == at and then is not None:
            then()

    monkeypatch.setattr(bound, "_check_same_log", check)
    return calls


def test_an_append_made_beside_an_unlink_leaves_nothing_of_the_removed_log(redis_url,
                                                                          monkeypatch):
    # A partition's first append checks that its log is there (in another
    # slot), then makes the partition. An unlink that ran in between (the
    # whole of it here) deleted the partitions before the make: the made
    # partition is deleted again and the append raises SegmentNotFound.
    # Before, it was kept, with the removed log's incarnation id: the log
    # made next under the name read its record, and its own appends to
    # that partition raised SegmentNotFound.
    b = pyqueue.connect(redis_url)
    name = _fresh("race")
    log = b.Log(name=name, partitions=1)
    # (a real unlink, by another handle)
    calls = _on_check(monkeypatch, log, 1, then=lambda: b.Log.open(name).unlink())
    with pytest.raises(SegmentNotFound):
        log.append("stale")
    monkeypatch.undo()
    assert len(calls) == 2 and _log_keys(b, name) == []
    again = b.Log(name=name, partitions=1)
    try:
        assert again.append("new") == (0, 0)
        assert [r.value for r in again.read(0, 0)] == ["new"]
    finally:
        again.unlink()
        again.close()
        log.close()


def test_an_unlink_under_way_lets_no_handle_make_a_partition_or_a_group(redis_url,
                                                                         monkeypatch):
    # unlink() marks the log first: an append that comes while it deletes
    # (here: its partitions deleted, its meta hash not yet) raises
    # SegmentNotFound, where it made the partition again (left behind
    # once the meta hash went), and so does a new consumer.
    b = pyqueue.connect(redis_url)
    name = _fresh("underway")
    log = b.Log(name=name, partitions=2)
    log.append("a", key="k")
    meta = f"pq:{{{name}}}:meta"
    real_delete = b.client.delete
    seen = []

    def delete(*keys):
        if meta in keys and not seen:      # the unlink's last step, not yet run
            seen.append(1)
            for key in ("k", "other", "x", "y"):
                with pytest.raises(SegmentNotFound, match="being removed"):
                    log.append("late", key=key)
            with pytest.raises(SegmentNotFound, match="being removed"):
                log.consumer("g")
        return real_delete(*keys)

    monkeypatch.setattr(b.client, "delete", delete)
    b.Log.open(name).unlink()
    monkeypatch.undo()
    assert seen and _log_keys(b, name) == []
    log.close()


def test_dropping_a_left_partition_never_deletes_the_next_logs(redis_url, monkeypatch):
    # A handle that meets a partition left by a removed log (another id)
    # checks its own log, then drops that partition - only if it still has
    # the id it saw. Here, between the check and the drop, its own log is
    # removed and made again, and the new log's append replaces the left
    # partition with its own: the drop leaves it, and the handle (of a
    # removed log now) raises SegmentNotFound. Before (a drop of any id
    # but the handle's own), the new log's acknowledged record was deleted.
    b = pyqueue.connect(redis_url)
    name = _fresh("dropr")
    left = b.Log(name=name, partitions=1)
    left.append("left")
    b.client.delete(f"pq:{{{name}}}:meta")          # a partition left behind
    log = b.Log(name=name, partitions=1)
    made = []

    def make_again():
        b.Log.open(name).unlink()
        made.append(b.Log(name=name, partitions=1))
        assert made[0].append("new") == (0, 0)

    _on_check(monkeypatch, log, 1, then=make_again)
    with pytest.raises(SegmentNotFound):
        log.end_offset(0)
    monkeypatch.undo()
    again = made[0]
    try:
        assert [r.value for r in again.read(0, 0)] == ["new"]
    finally:
        again.unlink()
        for h in (again, log, left):
            h.close()


def test_an_append_whose_check_after_the_make_is_lost_says_it_was_appended(redis_url,
                                                                          monkeypatch):
    # The check of the log after a partition's first append is a call of
    # its own (another slot): lost, the append raises ConnectionLost with
    # sent=True and the records' ids - they are in - where it raised
    # sent=False (nothing applied: a caller retrying stored them twice).
    from pyqueue.backends.redis import ConnectionLost
    b = pyqueue.connect(redis_url)
    name = _fresh("lostcheck")
    log = b.Log(name=name, partitions=1)
    # (the second: the check after the make)
    _on_check(monkeypatch, log, 2,
              fail=ConnectionLost("the meta hash's node cannot be reached", sent=False))
    try:
        with pytest.raises(ConnectionLost) as e:
            log.append_many(["a", "b"])
        monkeypatch.undo()
        assert e.value.sent and e.value.ids == [(0, 0), (0, 1)]
        assert [r.value for r in log.read(0, 0)] == ["a", "b"]
    finally:
        monkeypatch.undo()
        log.unlink()
        log.close()


def test_unlink_is_not_stopped_by_a_lagging_replica(redis_server):
    # min_replicas: every step waits for its replicas (NotReplicated when
    # they lag); unlink's deletes never did, and its first step (the mark)
    # does not either: with no replica, unlink removes the log.
    from pyqueue.backends.redis import RedisBackend
    name = _fresh("unlinkwait")
    plain = pyqueue.connect(redis_server.url)
    plain.Log(name=name, partitions=2).append("a")
    waited = RedisBackend(redis_server.url + "?min_replicas=1&wait_timeout=50")
    try:
        waited.min_replicas = 0         # opened while the replica kept up
        h = waited.Log.open(name)
        waited.min_replicas = 1         # and now it lags (none here)
        h.unlink()
        assert _log_keys(plain, name) == []
    finally:
        waited.close()


def test_a_removed_logs_handle_neither_expires_nor_shuts_down_the_next_log(redis_url):
    # A handle of a removed log, its settings those of the removed log
    # (here: retention_ms=1), with a log made again under the name: its
    # enforce_retention() and shutdown() raise SegmentNotFound, where they
    # dropped the new log's acknowledged records by the old retention and
    # shut the new log down. (unlink() still removes the log of the name,
    # as on shared memory, where it removes the name.)
    b = pyqueue.connect(redis_url)
    name = _fresh("stale")
    old = b.Log(name=name, partitions=2, retention_ms=1)
    b.Log.open(name).unlink()
    again = b.Log(name=name, partitions=2)
    try:
        ids = again.append_many(["keep"] * 3, key="k")
        p = ids[0][0]
        ts = again.read(p, 0)[-1].timestamp

        def server_ms():
            sec, us = (b.client.get_primaries()[0].redis_connection if b.cluster
                       else b.client).time()
            return sec * 1000 + us // 1000
        # (the records older than the old handle's 1 ms, by the server's clock)
        assert wait_until(lambda: server_ms() > ts + 2, 5)
        with pytest.raises(SegmentNotFound):
            old.enforce_retention()
        with pytest.raises(SegmentNotFound):
            old.shutdown()
        assert not again.is_shutdown
        assert again.append("more", key="k") == (p, 3)
        assert (again.start_offset(p), again.end_offset(p)) == (0, 4)
    finally:
        again.unlink()
        again.close()
        old.close()


def test_a_shutdown_beside_an_unlink_leaves_the_name_usable(redis_url, monkeypatch):
    # shutdown() checks its log, flags each partition, then the meta hash.
    # An unlink that ran after the check: the flag is not set on a meta
    # hash made of it alone (no open could read the name any more), the
    # partitions' flags made after the unlink go again, and shutdown()
    # raises SegmentNotFound; the log made next under the name is neither
    # shut down nor refusing appends.
    b = pyqueue.connect(redis_url)
    name = _fresh("shutrace")
    log = b.Log(name=name, partitions=2)
    log.append("a", key="k")
    calls = _on_check(monkeypatch, log, 1, then=lambda: b.Log.open(name).unlink())
    with pytest.raises(SegmentNotFound):
        log.shutdown()
    monkeypatch.undo()
    assert calls and _log_keys(b, name) == []
    again = b.Log(name=name, partitions=2)
    try:
        assert not again.is_shutdown
        assert [again.append(i, key=str(i))[1] for i in range(6)].count(0) == 2   # both
    finally:
        again.unlink()
        again.close()
        log.close()


def test_a_drop_is_not_held_up_by_a_lagging_replica(redis_server):
    # min_replicas with no replica: an append that meets a left partition
    # drops it (a plain command), then appends (a step: applied, and
    # NotReplicated). Before, the drop was a step: NotReplicated came from
    # it, with nothing appended.
    from pyqueue.backends.redis import NotReplicated, RedisBackend
    name = _fresh("dropwait")
    plain = pyqueue.connect(redis_server.url)
    plain.Log(name=name, partitions=1).append("left")
    plain.client.delete(f"pq:{{{name}}}:meta")
    again = plain.Log(name=name, partitions=1)
    waited = RedisBackend(redis_server.url + "?min_replicas=1&wait_timeout=50")
    try:
        waited.min_replicas = 0         # opened while the replica kept up
        h = waited.Log.open(name)
        waited.min_replicas = 1         # and now it lags (none here)
        with pytest.raises(NotReplicated):
            h.append("new")
        assert [r.value for r in again.read(0, 0)] == ["new"]
    finally:
        again.unlink()
        again.close()
        waited.close()


@pytest.mark.parametrize("how", ["read", "asyncio_read", "group"])
def test_a_partition_or_group_made_under_a_drop_is_found(redis_url, monkeypatch, how):
    # A handle meets a partition (or group) left by a removed log, checks
    # its log, and while it does another handle of its log drops the left
    # one and makes its own, with records (commits): the handle looks
    # again after its drop (which deletes nothing: not the id it saw) and
    # finds them, where it took the partition for empty (an offset past 0:
    # OffsetOutOfRange) and the group for none (KeyError).
    import asyncio
    import pyqueue.asyncio as aq
    b = pyqueue.connect(redis_url)
    name = _fresh("under")
    left = b.Log(name=name, partitions=1)
    left.append("left")
    if how == "group":
        left.consumer("g").close()
    b.client.delete(f"pq:{{{name}}}:meta")
    log = b.Log(name=name, partitions=1)
    other = b.Log.open(name)

    def make():
        other.append_many(["r0", "r1"])
        if how == "group":
            c = other.consumer("g", auto_offset_reset="earliest")
            c.commit({0: 1})
            c.close()

    done = _on_check(monkeypatch, log, 1, then=make)
    try:
        if how == "read":
            got = [r.value for r in log.read(0, 1)]
        elif how == "asyncio_read":
            async def read():
                h = aq.Log.from_sync(log)       # (closed with log, below)
                return [r.value for r in await h.read(0, 1)]
            got = asyncio.run(read())
        else:
            got = [log.group_offsets("g")[0]["committed"]]
        assert done
        assert got == ([1] if how == "group" else ["r1"])
    finally:
        monkeypatch.undo()
        log.unlink()
        for h in (log, other, left):
            h.close()


def test_dropping_a_left_group_never_deletes_the_next_logs(redis_url, monkeypatch):
    # As test_dropping_a_left_partition_never_deletes_the_next_logs, for a
    # consumer group: the handle's log removed and made again between its
    # check and its drop, the new log's group (a live member, a commit)
    # made meanwhile is kept.
    b = pyqueue.connect(redis_url)
    name = _fresh("gdropr")
    left = b.Log(name=name, partitions=1)
    left.consumer("g").close()
    b.client.delete(f"pq:{{{name}}}:meta")
    log = b.Log(name=name, partitions=1)
    made = []

    def make_again():
        b.Log.open(name).unlink()
        made.append(b.Log(name=name, partitions=1))
        made[0].append("x")
        made.append(made[0].consumer("g", auto_offset_reset="earliest"))
        made[1].commit({0: 1})

    _on_check(monkeypatch, log, 1, then=make_again)
    with pytest.raises(SegmentNotFound):
        log.group_offsets("g")
    monkeypatch.undo()
    again, member = made
    try:
        assert again.group_offsets("g")[0]["committed"] == 1
        member.commit({0: 1})           # still a member
    finally:
        member.close()
        again.unlink()
        for h in (again, log, left):
            h.close()


def test_a_join_whose_check_after_it_is_lost_leaves_no_member(redis_url, monkeypatch):
    # The check of the log after a join is a call of its own (another
    # slot): lost, consumer() raises, and the member it made leaves again,
    # instead of holding its partitions, heartbeat by nobody, for its
    # session (10 s).
    from pyqueue.backends.redis import ConnectionLost
    b = pyqueue.connect(redis_url)
    name = _fresh("lostjoin")
    log = b.Log(name=name, partitions=2)
    opened = b.Log.open(name)
    first = opened.consumer("g")                    # a live member, which stays
    # (the third: find's, the join's, then the one after the join)
    calls = _on_check(monkeypatch, log, 3,
                      fail=ConnectionLost("the meta hash's node cannot be reached", sent=False))
    try:
        with pytest.raises(ConnectionLost):
            log.consumer("g")
        monkeypatch.undo()
        assert len(calls) == 3
        assert [m["member_id"] for m in log.group_members("g")] == [first.member_id]
    finally:
        monkeypatch.undo()
        first.close()
        opened.close()
        log.unlink()
        log.close()


def test_a_consumer_joining_beside_an_unlink_leaves_no_group(redis_url, monkeypatch):
    # A consumer's join checks that its log is there (in another slot),
    # then joins (its first join makes the group). An unlink that ran in
    # between deleted the groups before the join: the group made is
    # deleted again and consumer() raises SegmentNotFound. Before, the
    # consumer was made, and its group outlived the log.
    b = pyqueue.connect(redis_url)
    name = _fresh("grace")
    log = b.Log(name=name, partitions=2)
    # (the second: the join's own check; the first is the group's find)
    calls = _on_check(monkeypatch, log, 2, then=lambda: b.Log.open(name).unlink())
    with pytest.raises(SegmentNotFound):
        log.consumer("g")
    monkeypatch.undo()
    assert len(calls) == 3 and _log_keys(b, name) == []
    again = b.Log(name=name, partitions=2)
    try:
        with pytest.raises(KeyError):
            again.group_offsets("g")
    finally:
        again.unlink()
        again.close()
        log.close()


@pytest.mark.parametrize("first", ["group_offsets", "consumer"])
def test_a_group_left_by_a_removed_logs_handle_is_not_the_new_logs(redis_url, first):
    # A group that a removed log's handle left behind (a join beside the
    # unlink, its process killed before it deleted the group again; made
    # by hand here: the log's meta hash and group list deleted under it)
    # is dropped by the log made again under the name, not taken as its
    # group with the old commits.
    b = pyqueue.connect(redis_url)
    name = _fresh("gleft")
    log = b.Log(name=name, partitions=1)
    log.append_many(["a", "b", "c"])
    c = log.consumer("g", auto_offset_reset="earliest")
    c.commit({0: 2})
    c.close()
    b.client.delete(f"pq:{{{name}}}:meta", f"pq:{{{name}}}:groups")
    again = b.Log(name=name, partitions=1)
    try:
        again.append_many(["x", "y"])
        if first == "group_offsets":
            with pytest.raises(KeyError):
                again.group_offsets("g")
        fresh = again.consumer("g", auto_offset_reset="earliest")
        assert fresh.committed(0) is None
        assert [r.value for r in fresh.poll(timeout=5)] == ["x", "y"]
        fresh.close()
    finally:
        again.unlink()
        again.close()
        log.close()


@pytest.mark.parametrize("first", ["append", "read", "end_offset", "asyncio_read"])
def test_a_partition_left_by_a_removed_logs_handle_is_not_the_new_logs(redis_url, first):
    # A partition that a handle of a removed log left behind (made just
    # before the unlink's end, its handle killed before it could delete it
    # again; made by hand here: the log's meta hash deleted under it) is
    # dropped by the first call of the log made again under the name that
    # meets it (an append, a read, end_offset), not read as its own nor
    # refused as another log's.
    import asyncio
    import pyqueue.asyncio as aq
    b = pyqueue.connect(redis_url)
    name = _fresh("left")
    log = b.Log(name=name, partitions=1)
    log.append("old")
    b.client.delete(f"pq:{{{name}}}:meta")
    again = b.Log(name=name, partitions=1)
    try:
        if first == "append":
            assert again.append("new") == (0, 0)
        elif first == "read":
            assert again.read(0, 0, timeout=0) == []
        elif first == "end_offset":
            assert (again.start_offset(0), again.end_offset(0)) == (0, 0)
        else:
            async def read():
                h = aq.connect(redis_url).Log.open(name)
                try:
                    return await h.read(0, 0, timeout=0)
                finally:
                    h.close()
            assert asyncio.run(read()) == []
        assert again.end_offset(0) == (1 if first == "append" else 0)
        assert again.append("new2")[1] == again.end_offset(0) - 1
        assert [r.value for r in again.read(0, 0)] == ["new", "new2"][2 - again.end_offset(0):]
    finally:
        again.unlink()
        again.close()
        log.close()


def test_keyless_records_go_round_robin(make):
    log = make("Log", make.name(), partitions=3)
    placed = [log.append(i)[0] for i in range(6)]
    assert sorted(placed[:3]) == [0, 1, 2] and placed[3:] == placed[:3]
    assert sum(log.end_offset(p) for p in range(3)) == 6


def test_retention_by_size_and_out_of_range(make, backend_url):
    log = make("Log", make.name(), partitions=1, retention_bytes=64 * KiB)
    for i in range(200):
        log.append((i, b"x" * 1000))
    start, end = log.start_offset(0), log.end_offset(0)
    assert end == 200 and 0 < start < 200
    with pytest.raises(OffsetOutOfRange) as e:
        log.read(0, start - 1)
    assert (e.value.partition, e.value.offset, e.value.start_offset) == (0, start - 1, start)
    got = []
    while len(got) < end - start:
        got += log.read(0, start + len(got))
    assert [v[0] for v in (r.value for r in got)] == list(range(start, 200))
    if backend_url == "shm://":
        # Shared memory sends it out of band (tests/test_log_oob.py).
        assert log.append(b"y" * (32 * KiB)) == (0, 200)
        assert log.read(0, 200)[0].value == b"y" * (32 * KiB)
    else:
        with pytest.raises(MessageTooLarge):
            log.append(b"y" * (32 * KiB))
        assert log.end_offset(0) == 200                    # nothing appended


def test_keys_and_headers_count_toward_retention_bytes(make):
    """A record's key and headers take room as its value does: the Redis
    append counts them once per call for all its records."""
    logs = [make("Log", make.name(), partitions=1, retention_bytes=64 * KiB) for _ in range(3)]
    for _ in range(3):
        logs[0].append_many([b"v" * 1000] * 60)
        logs[1].append_many([b"v" * 1000] * 60, key=b"k" * 3000)
        logs[2].append_many([b"v" * 1000] * 60, headers={"h": b"h" * 3000})
    kept = [log.end_offset(0) - log.start_offset(0) for log in logs]
    assert kept[1] * 2 < kept[0] and kept[2] * 2 < kept[0]


def test_retention_by_age(make):
    log = make("Log", make.name(), partitions=1, retention_ms=200)
    log.append_many(range(5))
    assert wait_until(lambda: log.enforce_retention() >= 0 and log.start_offset(0) == 5,
                      timeout=10)
    assert log.end_offset(0) == 5
    log.append("fresh")
    assert [r.value for r in log.read(0, 5)] == ["fresh"]


def test_settings_of_an_existing_log(make, backend):
    log = make("Log", make.name(), partitions=2)
    with pytest.raises(ValueError, match="partitions"):
        make("Log", log.name, partitions=3)
    again = backend.Log.open(log.name)
    assert again.partitions == 2
    again.append("via open", key="k")
    p = log.partition_for("k")
    assert log.read(p, 0)[0].value == "via open"
    again.close()


def test_read_waits_for_an_append_in_another_process(make, ctx, procs):
    log = make("Log", make.name(), partitions=2)
    p = log.partition_for("k")
    assert log.read(p, 0, timeout=0.05) == []
    child = procs.start(ctx, _workers.append_all, log, "k", ["from child", "second"])
    got = log.read(p, 0, timeout=30)
    assert got and got[0].value == "from child"
    child.join(30)
    assert child.exitcode == 0
    assert [r.value for r in log.read(p, 0)] == ["from child", "second"]


def test_partitions_spread_over_the_cluster_masters(redis_cluster):
    b = pyqueue.connect(redis_cluster.url)
    log = b.Log("spread-check", partitions=12)
    try:
        nodes = {b.client.get_node_from_key(log._pkeys(p)[1]).name for p in range(12)}
        assert len(nodes) == 3                             # every master has partitions
        for p in range(12):
            log.append(p, key=None)
        assert sum(log.end_offset(p) for p in range(12)) == 12
    finally:
        log.unlink()


def _plant(backend, log, value):
    """Appends value with the default codec (pickle) to a log made with a
    serializer, as someone who can write its storage can: the log's flag
    cleared (the segment's header; the meta hash on Redis), a plain
    handle's append, the flag set again."""
    if backend.name == "redis":
        from pyqueue.backends.redis._handle import key_prefix
        meta = key_prefix(log.name) + "meta"
        assert backend.client.hget(meta, "custom") == b"1"
        backend.client.hset(meta, "custom", 0)
        plain = backend.Log.open(log.name)
        plain.append(value)
        plain.close()
        backend.client.hset(meta, "custom", 1)
        return
    from tests.test_log_serializer import _LOG_USER0
    from tests._support import shm_file
    with open(shm_file(log.name), "r+b") as f:
        f.seek(_LOG_USER0)
        assert f.read(8) == (1).to_bytes(8, "little")
        f.seek(_LOG_USER0)
        f.write(bytes(8))
        f.flush()
        plain = backend.Log.open(log.name)
        plain.append(value)
        plain.close()
        f.seek(_LOG_USER0)
        f.write((1).to_bytes(8, "little"))


def test_serializer_round_trip_across_processes_through_a_group(make, backend, ctx, procs):
    """Log(serializer=(dumps, loads)) on every backend: every value (str
    too) goes through dumps, a consumer group's member in another process
    gets them through loads, and the log travels with its serializer."""
    from tests import _log_workers as lw
    log = make("Log", make.name(), partitions=1, serializer=JSON)
    values = [{"n": i, "s": "é" * i} for i in range(4)] + ["plain", 3]
    log.append_many(values[:4])
    for v in values[4:]:
        log.append(v)
    out = ctx.Queue()
    p = procs.start(ctx, lw.json_member, log, "g", out, len(values))
    assert out.get(timeout=60) == values
    p.join(60)
    assert p.exitcode == 0
    recs = log.read(0, len(values), max_records=100, timeout=5)
    assert [r.value for r in recs] == [{"echo": v} for v in values]
    raw = backend.Log.open(log.name, serializer=(json_dumps, bytes))
    try:
        assert raw.read(0, 4, 1)[0].value == b'"plain"'    # JSON text, not the raw str
    finally:
        raw.close()


def _consume_past_the_planted_record(log):
    """A consumer of partition 0 ({"before": 1}, the planted record at 1,
    {"after": 2}): the first, PoisonRecord at the planted one, and after a
    seek past it the last."""
    c = log.consumer("g")
    try:
        assert [r.value for r in c.poll(timeout=5)] == [{"before": 1}]
        with pytest.raises(PoisonRecord):
            c.poll(timeout=5)
        c.seek(0, 2)
        assert [r.value for r in c.poll(timeout=5)] == [{"after": 2}]
    finally:
        c.close()


def test_serializer_planted_pickle_refused_not_unpickled(make, backend, tmp_path):
    marker = tmp_path / "ran"
    log = make("Log", make.name(), partitions=1, serializer=JSON)
    log.append({"before": 1})
    _plant(backend, log, _RunsCode("touch '%s'" % marker))
    log.append({"after": 2})
    assert log.read(0, 0, 1)[0].value == {"before": 1}
    with pytest.raises(PoisonRecord, match="refusing to unpickle") as info:
        log.read(0, 1, 10)
    assert info.value.offset == 1 and b"system" in info.value.raw
    _consume_past_the_planted_record(log)
    assert not marker.exists()


def test_redis_record_headers_are_never_unpickled(redis_url, tmp_path, monkeypatch):
    # A record's headers are stored in the log's own format on every
    # backend (pyqueue._log.encode_headers). Before, the Redis backend
    # stored them as a pickle and read them with pickle.loads: a record
    # planted on the server ran code in every reader (read, a consumer,
    # `pyqueue tail --url` without --unpickle), even in a log made with a
    # serializer, which promises nothing is ever unpickled.
    marker = tmp_path / "ran"
    b = pyqueue.connect(redis_url)
    log = b.Log(name="hdr-" + uuid.uuid4().hex[:8], partitions=1, serializer=JSON)
    try:
        log.append({"before": 1}, headers={"a": b"1", "é": "v"})
        with monkeypatch.context() as m:
            # another writer's record: its headers field a crafted pickle
            m.setattr(_log, "encode_headers",
                      lambda headers: pickle.dumps(_RunsCode("touch '%s'" % marker)))
            log.append({"planted": 1}, headers={"x": b"y"})
        log.append({"after": 2})
        first = log.read(0, 0, 1)[0]
        assert (first.value, first.headers) == ({"before": 1}, {"a": b"1", "é": b"v"})
        with pytest.raises(PoisonRecord) as info:
            log.read(0, 1, 10)
        assert info.value.offset == 1
        _consume_past_the_planted_record(log)
        assert not marker.exists()
    finally:
        log.unlink()
        log.close()             # (not b.close(): connect() shares the backend per URL)


def test_serializer_errors_leave_the_log_usable(make):
    log = make("Log", make.name(), partitions=1,
               serializer=(json_dumps, lambda b: json.loads(bytes(b))["v"]))
    with pytest.raises(TypeError):
        log.append({1, 2})                      # dumps' error reaches the caller
    with pytest.raises(TypeError):
        log.append_many([{"v": 0}, object()])  # nothing of the batch is appended
    assert log.end_offset(0) == 0
    log.append({"v": 1})
    log.append({"no": "v"})
    assert [r.value for r in log.read(0, 0, 10)] == [1]   # what came before the poison
    with pytest.raises(PoisonRecord) as info:
        log.read(0, 1, 10)
    assert isinstance(info.value.__cause__, KeyError)
    assert info.value.raw.endswith(b'{"no": "v"}')
    log.append({"v": 3})
    assert [r.value for r in log.read(0, 2, 10)] == [3]


def test_serializer_is_the_logs_own_setting(make, backend):
    plain = make("Log", make.name(), partitions=1)
    with pytest.raises(ValueError, match="exists with other settings: serializer"):
        backend.Log.open(plain.name, serializer=JSON)
    custom = make("Log", make.name(), partitions=1, serializer=JSON)
    with pytest.raises(pyqueue.PyQueueError, match="custom serializer"):
        backend.Log.open(custom.name)
    with pytest.raises(pyqueue.PyQueueError, match="custom serializer"):
        make("Log", custom.name, partitions=1)
    with pytest.raises(TypeError, match="serializer"):
        backend.Log.open(custom.name, serializer=json.dumps)
    again = pickle.loads(pickle.dumps(custom))   # travels with its serializer
    try:
        again.append([1])
        assert custom.read(0, 0, 10)[0].value == [1]
    finally:
        again.close()
