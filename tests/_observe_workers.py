"""Worker functions of tests/test_observe.py (importable under spawn)."""
from pyqueue import Log, Queue, Topic, WorkQueue


def activity(names, n):
    """In another process: n puts to the queue, n publishes to the topic
    (which laps a lossy subscriber that reads nothing), n appends to the
    log's partition 0, and on the work queue: n puts, one delivery
    nacked (redelivered) and one rejected (dead-lettered)."""
    q = Queue.open(names["queue"])
    for i in range(n):
        q.put(i)
    t = Topic.open(names["topic"])
    for i in range(n):
        t.publish(b"x" * 4096)
    lg = Log.open(names["log"])
    key = next(k for k in map(str, range(100)) if lg.partition_for(k) == 0)
    lg.append_many(list(range(n)), key=key)
    w = WorkQueue.open(names["workqueue"])
    for i in range(n):
        w.put(i)
    w.get(timeout=10).nack()
    w.get(timeout=10).reject("bad")
    for h in (q, t, lg, w):
        h.close()


def paced_put(name, stop):
    """Put into queue `name` about every 10 ms until stop is set."""
    q = Queue.open(name)
    i = 0
    while not stop.is_set():
        q.put(i)
        i += 1
        stop.wait(0.01)
    q.close()


def armed_publish(topic, spec, items):
    """Publish each item; stops at the fault point named by spec."""
    from tests._crash_workers import arm
    arm(spec)
    for item in items:
        topic.publish(item, timeout=30)


def armed_append(log, spec, values):
    """Append each value (a memory-mode log); stops at the fault point."""
    from tests._crash_workers import arm
    arm(spec)
    for v in values:
        log.append(v)
