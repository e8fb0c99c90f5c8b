"""Failover of a Redis Cluster master under a producer: a real
3-master/3-replica cluster (tests/redis_support.py), the master that holds
the queue's slot SIGKILLed while a thread puts 0, 1, 2, ... one at a time;
its replica takes over (cluster-node-timeout 2 s), and what the queue
holds afterwards is compared with what each put reported
(docs/guarantees.md, "Redis backend"):

* with `?min_replicas=1` (WAIT after every step), no put that returned is
  lost; a put after the failover is applied but raises NotReplicated (the
  new master has no replica);
* without, the acknowledged puts lost are at most the tail acknowledged
  before the kill that had not reached the replica (replication is in
  order: never a hole), counted and recorded (the `failover` property);
* in both, nothing is stored twice (a step is never sent again after its
  connection was lost: ConnectionLost), and the queue itself (its meta
  hash, made before the producer started and confirmed on the replica
  before the kill) survives.

Every wait is a poll of the servers or of the producer with a deadline.
"""
import threading
import time

import pytest

from tests import redis_support

pytestmark = [pytest.mark.redis,
              pytest.mark.skipif(not redis_support.available(),
                                 reason="redis-server is not installed"),
              pytest.mark.timeout(180)]

ACKED_BEFORE_KILL = 200
FAILOVER_DEADLINE = 60.0      # a failover takes ~2-6 s (node timeout 2 s); a loaded CI machine more


@pytest.fixture
def cluster():
    pytest.importorskip("redis", reason="redis-py is not installed (pip install redis)")
    with redis_support.own_cluster("pq-failover-") as c:
        yield c


class Producer(threading.Thread):
    """Puts 0, 1, 2, ... until stopped; notes what each put did, with the
    time it returned: acked, unreplicated (NotReplicated: applied, not
    confirmed), lost (ConnectionLost: sent or not), failed (anything
    else)."""

    def __init__(self, q):
        super().__init__(daemon=True)
        self.q = q
        self.outcome = {}             # i -> (what, monotonic time it returned)
        self.acked_count = 0
        self.errors = []
        self.stop = threading.Event()

    def run(self):
        from pyqueue.backends.redis import ConnectionLost, NotReplicated
        i = 0
        while not self.stop.is_set():
            try:
                self.q.put(i)
                what = "acked"
                self.acked_count += 1
            except NotReplicated:
                what = "unreplicated"
            except ConnectionLost as e:
                what = "sent-lost" if e.sent else "not-sent"
                self.errors.append(e)
            except Exception as e:            # reported by the test
                what = "failed"
                self.errors.append(e)
                self.stop.wait(0.02)          # this producer's back-off on an unexpected error
            self.outcome[i] = (what, time.monotonic())
            i += 1

    def which(self, what, after=None):
        return {i for i, (w, t) in list(self.outcome.items())
                if w == what and (after is None or t > after)}


def _node_id(port):
    return redis_support._cli("-p", str(port), "cluster", "myid").stdout.strip()


def _nodes(port):
    """CLUSTER NODES as {id: (flags, master id)} seen from `port`."""
    out = {}
    for line in redis_support._cli("-p", str(port), "cluster", "nodes").stdout.splitlines():
        f = line.split()
        if len(f) >= 8:
            out[f[0]] = (set(f[2].split(",")), f[3])
    return out


def _owner(cluster, slot):
    """The port of the master that serves `slot`, in its own view (not the
    client's slot map, which may be stale)."""
    for port in cluster.ports:
        for line in redis_support._cli("-p", str(port), "cluster", "nodes").stdout.splitlines():
            f = line.split()
            if len(f) >= 8 and "myself" in f[2] and "master" in f[2]:
                for r in f[8:]:
                    lo, _, hi = r.partition("-")
                    if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                        return port
    raise AssertionError(f"no master serves slot {slot}")


def _replica_of(cluster, master_port):
    mid = _node_id(master_port)
    for port in cluster.ports:
        if port != master_port and _nodes(port).get(_node_id(port), (set(), ""))[1] == mid:
            return port
    raise AssertionError(f"no replica of the master on port {master_port}")


def _repl_offset(port, field):
    """An offset of INFO replication; a replica's only while its link to
    its master is up (else -1)."""
    info = redis_support._cli("-p", str(port), "info", "replication").stdout.splitlines()
    if "role:slave" in info and "master_link_status:up" not in info:
        return -1
    for line in info:
        if line.startswith(field + ":"):
            return int(line.split(":", 1)[1])
    raise AssertionError(f"no {field} in INFO replication of port {port}")


def _wait(what, check, deadline):
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within the deadline"
        time.sleep(0.02)      # polling a server (or the producer) with a deadline


def _has_key(port, key):
    """Whether the node on `port` holds `key` (a replica too: READONLY)."""
    import redis
    r = redis.Redis(port=port, protocol=2)
    try:
        r.execute_command("READONLY")
        return bool(r.exists(key))
    finally:
        r.close()


def _run_failover(cluster, url, name):
    import pyqueue
    from pyqueue.backends.redis import RedisBackend
    # A backend of its own, not connect()'s (one per URL and process): a
    # later cluster may get the same ports, and a client that saw this one
    # fail over must not be handed to it.
    b = RedisBackend(url)
    q = b.Queue(name=name)
    meta = q._keys[0]
    master = _owner(cluster, b.client.keyslot(meta))
    replica = _replica_of(cluster, master)
    facts = {"master": master, "replica": replica}
    # The queue's creation on the replica before anything else (without
    # WAIT it is replicated asynchronously like every write).
    created_at = _repl_offset(master, "master_repl_offset")
    _wait("the replica has the queue's creation",
          lambda: _repl_offset(replica, "slave_repl_offset") >= created_at,
          time.monotonic() + 30)
    producer = Producer(q)
    producer.start()
    try:
        deadline = time.monotonic() + FAILOVER_DEADLINE
        _wait(f"{ACKED_BEFORE_KILL} puts acknowledged",
              lambda: producer.acked_count >= ACKED_BEFORE_KILL or not producer.is_alive(),
              deadline)
        facts["offsets"] = (_repl_offset(master, "master_repl_offset"),
                            _repl_offset(replica, "slave_repl_offset"))
        facts["meta_on_replica"] = _has_key(replica, meta)
        cluster.procs[cluster.ports.index(master)].kill()
        killed_at = time.monotonic()
        cluster.procs[cluster.ports.index(master)].wait(30)
        rid, mid = _node_id(replica), _node_id(master)

        def promoted():
            nodes = _nodes(replica)
            return ("master" in nodes.get(rid, (set(), ""))[0]
                    and "fail" in nodes.get(mid, ({"fail"}, ""))[0])

        _wait("the replica promoted", promoted, time.monotonic() + FAILOVER_DEADLINE)
        failed_over_at = time.monotonic()
        facts["failover_s"] = round(failed_over_at - killed_at, 2)
        facts["meta_on_new_master"] = _has_key(replica, meta)
        # Until a put started after the promotion is applied: the client
        # found the new master.
        _wait(f"a put applied after the failover (errors: {producer.errors[-3:]!r}, "
              f"facts: {facts})",
              lambda: (producer.which("acked", failed_over_at) or
                       producer.which("unreplicated", failed_over_at) or
                       not producer.is_alive()),
              time.monotonic() + FAILOVER_DEADLINE)
    finally:
        producer.stop.set()
        producer.join(60)
    assert not producer.is_alive()
    reader = RedisBackend(cluster.url)            # no WAIT for reading it back
    try:
        rq = reader.Queue.open(name)              # SegmentNotFound: the queue was lost
        present = []
        while True:
            try:
                present += rq.get_many(10000, block=False)
            except pyqueue.Empty:
                break
    finally:
        b.close()
        reader.close()
    return producer, present, killed_at, failed_over_at, facts


def _check_common(producer, present, failed_over_at, facts):
    assert len(present) == len(set(present)), (
        f"stored twice: {sorted(i for i in set(present) if present.count(i) > 1)}; {facts}")
    # Nothing appears that was never put.
    assert set(present) <= set(producer.outcome), facts
    # A put that raised before it was sent was not applied.
    assert not set(present) & producer.which("not-sent"), facts


def test_failover_with_min_replicas_loses_no_acknowledged_put(cluster, record_property):
    producer, present, killed_at, failed_over_at, facts = _run_failover(
        cluster, cluster.url + "?min_replicas=1&wait_timeout=1000", "failover-wait")
    acked = producer.which("acked")
    lost = acked - set(present)
    facts.update(acked=len(acked), lost=len(lost), present=len(present),
                 unreplicated=len(producer.which("unreplicated")),
                 connection_lost=len(producer.which("sent-lost") | producer.which("not-sent")))
    record_property("failover", facts)
    _check_common(producer, present, failed_over_at, facts)
    assert not lost, f"acknowledged under min_replicas=1 and lost: {sorted(lost)}; {facts}"
    # The new master has no replica: what it applies is not confirmed.
    after = producer.which("unreplicated", failed_over_at)
    assert after and after <= set(present), facts
    assert not producer.which("acked", failed_over_at), facts


def test_failover_without_wait_loses_at_most_the_unreplicated_tail(cluster, record_property):
    producer, present, killed_at, failed_over_at, facts = _run_failover(
        cluster, cluster.url, "failover-nowait")
    acked = producer.which("acked")
    lost = acked - set(present)
    facts.update(acked=len(acked), lost=len(lost), present=len(present),
                 connection_lost=len(producer.which("sent-lost") | producer.which("not-sent")))
    record_property("failover", facts)
    _check_common(producer, present, failed_over_at, facts)
    # Asynchronous replication loses a tail, in order, never a hole: every
    # put acknowledged before the kill from the first lost one on is lost,
    # and none acknowledged after the kill is.
    before_kill = {i for i, (w, t) in producer.outcome.items() if w == "acked" and t < killed_at}
    assert lost <= before_kill, f"acknowledged after the kill and lost: {sorted(lost)}; {facts}"
    if lost:
        assert lost == {i for i in before_kill if i >= min(lost)}, (
            f"a hole in what replication lost: {sorted(lost)}; {facts}")
    after = producer.which("acked", failed_over_at)
    assert after and after <= set(present), facts
