"""A handle freed by the cycle collector (issue 9, item 9a): the collector
must not unmap a segment (by clearing the buffer view or the mapping of a
handle) before the handle's __dealloc__ is done with it. Each case runs in
a subprocess, so that a crash fails the test instead of killing pytest;
it checks that the handle's resources were released (a subscriber slot, a
consumer-group membership, a work-queue delivery) and that no segment is
left in /dev/shm after the process exits."""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PRELUDE = """
import gc, os, sys, pyqueue
gc.disable()                      # only the explicit collection below frees the cycle
def cycle(*objs):
    c = list(objs)
    c.append(c)
    return c
names = []
"""

CASES = {
    "queue": """
q = pyqueue.Queue(capacity_bytes=1 << 16)
names.append(q.name)
q.put(1); assert q.get(timeout=5) == 1
c = cycle(q); del q, c
""",
    "queue-get-many": """
q = pyqueue.Queue(capacity_bytes=1 << 16)
names.append(q.name)
q.put_many([1, "a", b"b"]); assert q.get_many(3, timeout=5) == [1, "a", b"b"]
c = cycle(q); del q, c
""",
    "joinable": """
q = pyqueue.JoinableQueue(capacity_bytes=1 << 16)
names.append(q.name)
q.put(1); q.get(timeout=5); q.task_done()
c = cycle(q); del q, c
""",
    "simple": """
q = pyqueue.SimpleQueue(capacity_bytes=1 << 16)
names.append(q.name)
q.put(1); q.get()
c = cycle(q); del q, c
""",
    "self-referencing-queue": """
q = pyqueue.Queue(capacity_bytes=1 << 16)
names.append(q.name)
q.put(1); q.get(timeout=5)
q.me = q; del q
""",
    "topic-with-subscription": """
t = pyqueue.Topic(capacity_bytes=1 << 16)
names.append(t.name)
other = pyqueue.Topic.open(t.name)     # outside the cycle: to look at the slots
s = t.subscribe(); t.publish(1); assert s.get(timeout=5) == 1
c = cycle(t, s); t.subs = [s]; del t, s, c
gc.collect()
assert other.stats()["subscribers"] == 0, other.stats()
other.close()
""",
    "log-memory": """
lg = pyqueue.Log(partitions=1, retention_bytes=1 << 16)
names.append(lg.name)
lg.append(1); assert lg.read(0, 0)[0].value == 1
c = cycle(lg); del lg, c
""",
    "log-directory": """
import tempfile
d = tempfile.mkdtemp()
lg = pyqueue.Log(path=d + "/log", partitions=1)
lg.append(1); assert lg.read(0, 0)[0].value == 1
c = cycle(lg); del lg, c
gc.collect()
again = pyqueue.Log.open(d + "/log")
assert again.read(0, 0)[0].value == 1
again.close()
""",
    "log-consumer": """
lg = pyqueue.Log(partitions=1, retention_bytes=1 << 16)
names.append(lg.name)
lg.append(1)
con = lg.consumer("g")
assert [r.value for r in con.poll(10, timeout=5)] == [1]
c = cycle(lg, con); con.me = c; del lg, con, c
""",
    "workqueue-with-delivery": """
wq = pyqueue.WorkQueue(capacity_bytes=1 << 16, visibility_timeout=60)
names.append(wq.name)
wq.put("job")
d = wq.get(timeout=5)              # outstanding: never settled
c = cycle(wq, d); del wq, d, c
""",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_handle_freed_in_a_reference_cycle(case):
    script = PRELUDE + textwrap.dedent(CASES[case]) + """
gc.collect()
gc.collect()
print("names", *names)
print("ok")
"""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONFAULTHANDLER"] = "1"
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60, env=env, cwd=ROOT)
    assert r.returncode == 0, f"rc={r.returncode}\n{r.stdout}\n{r.stderr}"
    lines = r.stdout.split("\n")
    assert "ok" in lines
    names = next(line.split()[1:] for line in lines if line.startswith("names"))
    for name in names:  # removed at exit as every unnamed segment is
        assert not os.path.exists(f"/dev/shm/pyqueue.{name}"), name
