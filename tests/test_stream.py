"""pyqueue.StreamProcessor over a WorkQueue (threads and processes) and over
a Log consumer group: results to a sink, failures nacked into the
dead-letter queue, a worker SIGKILLed mid-message restarted and its message
processed again, SIGTERM to the process running it stopping the intake
after the work in hand, stats."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pyqueue import Log, Queue, StreamProcessor, WorkQueue
from tests import _wq_workers as w
from tests._support import close_handles, unique_name, wait_until


@pytest.fixture
def made():
    objs = []
    yield objs
    close_handles(objs, unlink=lambda o: getattr(o, "path", None) is None)


@pytest.mark.parametrize("processes", [False, True])
def test_work_queue_source_to_a_sink(made, processes):
    dlq = WorkQueue()
    q = WorkQueue(max_deliveries=2, dead_letter=dlq)
    out = Queue()
    made += [q, dlq, out]
    for i in range(200):
        q.put(i)
    q.put("poison")
    with StreamProcessor(q, w.double, sink=out, workers=3, processes=processes) as sp:
        got = sorted(out.get(timeout=30) for _ in range(200))
        assert wait_until(lambda: len(dlq.dead_letters()) == 1, timeout=10)
    assert got == [2 * i for i in range(200)]
    s = sp.stats()
    assert s["processed"] == 200 and s["failed"] == 2 and s["workers"] == 3
    assert s["rate"] > 0 and s["mean_latency"] >= 0 and s["restarts"] == 0
    (dl,) = dlq.dead_letters()
    assert dl.value == "poison" and dl.last_error == "ValueError: poison"
    assert q.qsize() == 0 and q.stats()["acked"] == 200


def test_crashed_worker_is_restarted_and_its_message_processed(made, tmp_path):
    q = WorkQueue(visibility_timeout=60.0)
    made.append(q)
    for i in range(6):
        q.put((str(tmp_path), i, 0.3))
    sp = StreamProcessor(q, w.slow_marker, workers=2).start()
    try:
        # Kill a worker while it is inside fn (every message takes 0.3 s).
        assert wait_until(lambda: q.stats()["in_flight"] == 2, timeout=20)
        victim = sp.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: sorted(os.listdir(tmp_path)) ==
                          [str(i) for i in range(6)], timeout=30)
        assert wait_until(lambda: q.stats()["acked"] == 6, timeout=10)
        assert sp.stats()["restarts"] >= 1 and victim not in sp.worker_pids()
        assert q.stats()["redelivered"] >= 1  # the victim's message came again
    finally:
        assert sp.stop(30)


def test_log_group_source_commits_after_processing(made, tmp_path):
    log = Log(path=tmp_path / "log", partitions=4)
    out = Queue()
    made += [log, out]
    for i in range(400):
        log.append(i, key=str(i))
    with StreamProcessor(log, w.double, group="doublers", sink=out, workers=2,
                         batch_size=50) as sp:
        assert wait_until(lambda: all(v["lag"] == 0 and v["committed"] is not None
                                      for v in log.group_offsets("doublers").values()),
                          timeout=30)
    got = []
    while not out.empty():
        got.append(out.get(timeout=5))
    # At least once: a rebalance (the second worker joining) can make a
    # batch that was processed but not committed be processed again.
    assert sorted(set(got)) == [2 * i for i in range(400)]
    assert sp.stats()["processed"] == len(got) >= 400
    assert log.group_members("doublers") == []  # the workers left


def test_arguments_are_checked(made):
    q = WorkQueue()
    made.append(q)
    with pytest.raises(TypeError):
        StreamProcessor(q, 3)
    with pytest.raises(ValueError):
        StreamProcessor(q, w.double, workers=0)
    plain = Queue()
    made.append(plain)
    with pytest.raises(TypeError):
        StreamProcessor(plain, w.double)
    log = Log(partitions=1)
    made.append(log)
    with pytest.raises(ValueError):
        StreamProcessor(log, w.double)  # no group
    with pytest.raises(ValueError):
        StreamProcessor(q, w.double, group="g")
    with pytest.raises(TypeError):
        StreamProcessor(q, w.double, sink=42)


SIGTERM_CHILD = textwrap.dedent("""
    import sys, time
    from pyqueue import StreamProcessor, WorkQueue
    from tests import _wq_workers as w
    q = WorkQueue.open(sys.argv[1])
    sp = StreamProcessor(q, w.slow_marker, workers=2).start()
    print("started", flush=True)
    sp.join()
    print("stopped", flush=True)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_intake_and_finishes_the_work_in_hand(made, tmp_path, sig):
    q = WorkQueue(name=unique_name("sp"), visibility_timeout=60.0)
    made.append(q)
    for i in range(20):
        q.put((str(tmp_path), i, 0.4))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.Popen([sys.executable, "-c", SIGTERM_CHILD, q.name], cwd=root,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "started"
        assert wait_until(lambda: q.stats()["in_flight"] == 2, timeout=20)
        p.send_signal(sig)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert out.strip() == "stopped"
    done = len(os.listdir(tmp_path))
    s = q.stats()
    # What was taken was finished (and acked); the rest waits in the queue.
    assert 2 <= done < 20
    assert s["acked"] == done and s["in_flight"] == 0 and q.qsize() == 20 - done


KILLED_PARENT_CHILD = textwrap.dedent("""
    import sys
    from pyqueue import StreamProcessor, WorkQueue
    from tests import _wq_workers as w
    q = WorkQueue.open(sys.argv[1])
    sp = StreamProcessor(q, w.double, workers=2).start()
    print(" ".join(map(str, sp.worker_pids())), flush=True)
    sp.join()
""")


def test_workers_end_when_their_parent_is_killed(made):
    q = WorkQueue(name=unique_name("spk"))
    made.append(q)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.Popen([sys.executable, "-c", KILLED_PARENT_CHILD, q.name], cwd=root,
                         stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(x) for x in p.stdout.readline().split()]
        assert len(pids) == 2
        p.kill()  # SIGKILL: the parent can tell nobody
        p.wait(30)

        def gone(pid):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    return f.read().rsplit(")", 1)[1].split()[0] == "Z"
            except FileNotFoundError:
                return True

        assert wait_until(lambda: all(gone(pid) for pid in pids), timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()


def test_results_to_a_log_or_a_topic(made):
    from pyqueue import Topic
    q = WorkQueue()
    log = Log(partitions=2)
    topic = Topic()
    made += [q, log, topic]
    sub = topic.subscribe()
    for i in range(50):
        q.put(i)
    with StreamProcessor(q, w.double, sink=log, workers=2, processes=False):
        assert wait_until(lambda: log.end_offset(0) + log.end_offset(1) == 50, timeout=20)
    got = sorted(r.value for p in range(2) for r in log.read(p, 0, max_records=100))
    assert got == [2 * i for i in range(50)]
    for i in range(20):
        q.put(i)
    with StreamProcessor(q, w.double, sink=topic, workers=1, processes=False):
        received = sorted(sub.get(timeout=10) for _ in range(20))
    assert received == [2 * i for i in range(20)]
    sub.close()
