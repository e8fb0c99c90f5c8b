"""Log (memory mode's semantics; consumer groups: test_consumer_contract.py):
the same assertions on every backend; tests/contract/conftest.py."""
import pytest

import pyqueue
from pyqueue import _log
from pyqueue.errors import MessageTooLarge, OffsetOutOfRange
from tests._support import wait_until
from tests.contract import _workers

pytestmark = pytest.mark.timeout(90)

KiB = 1024


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


def test_keyless_records_go_round_robin(make):
    log = make("Log", make.name(), partitions=3)
    placed = [log.append(i)[0] for i in range(6)]
    assert sorted(placed[:3]) == [0, 1, 2] and placed[3:] == placed[:3]
    assert sum(log.end_offset(p) for p in range(3)) == 6


def test_retention_by_size_and_out_of_range(make):
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
    with pytest.raises(MessageTooLarge):
        log.append(b"y" * (32 * KiB))
    assert log.end_offset(0) == 200                        # nothing appended


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
