"""Smoke test of an installed pyqueue (a wheel or an sdist install), run from
outside the repository: `python tests/smoke_installed.py` with the Python of
the environment it is installed in (.ci/run, cibuildwheel's test-command).

It checks that the installed package is the one imported (not a source
tree), that its version is the distribution's, that the `pyqueue` command
runs, and that each pattern works across processes under fork and spawn: a
Queue, a Topic, a Log and a WorkQueue. Plain asserts, no pytest: nothing
but the package needs to be installed. Exit status 0 when all hold.
"""
import importlib.metadata
import multiprocessing as mp
import os
import queue
import shutil
import subprocess
import sys
import tempfile

import pyqueue

DISTRIBUTION = "pyqueue-shm"
TIMEOUT = 30.0


def check_installed():
    here = os.path.dirname(os.path.abspath(pyqueue.__file__))
    # A source checkout has the Cython sources beside the modules; an
    # installed package has only the built extensions.
    leftovers = sorted(f for f in os.listdir(here)
                       if f.endswith((".pyx", ".pxi", ".pxd", ".c", ".h")))
    assert not leftovers, f"{here} is not an installed pyqueue: it has {leftovers}"
    assert "site-packages" in here.split(os.sep), f"pyqueue imported from {here}"
    dist = importlib.metadata.distribution(DISTRIBUTION)
    assert dist.version == pyqueue.__version__, (dist.version, pyqueue.__version__)
    assert dist.metadata["License-Expression"] == "MIT", dist.metadata["License-Expression"]
    return here


def check_cli():
    # The console script installed beside this interpreter, then `-m pyqueue`.
    script = os.path.join(os.path.dirname(sys.executable), "pyqueue")
    if not os.path.exists(script):
        script = shutil.which("pyqueue")
    assert script, "no `pyqueue` command installed"
    for argv in ([script, "--version"], [sys.executable, "-m", "pyqueue", "--version"]):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=True)
        assert out.stdout.strip() == f"pyqueue {pyqueue.__version__}", (argv, out.stdout)
    ls = subprocess.run([script, "ls", "--json", "pyqueue-smoke-none-*"], capture_output=True,
                        text=True, timeout=TIMEOUT, check=True)
    assert ls.stdout.strip() == "[]", ls.stdout


# -- the workers (module level: spawn children import this file by path) --

def queue_worker(q_in, q_out):
    for _ in range(3):
        item = q_in.get(timeout=TIMEOUT)
        q_out.put(("echo", item))


def topic_worker(topic, n):
    for i in range(n):
        topic.publish({"i": i}, timeout=TIMEOUT)


def log_worker(log):
    for i in range(5):
        log.append(f"event-{i}".encode(), key=b"k")


def workqueue_worker(wq, done):
    d = wq.get(timeout=TIMEOUT)
    value = d.value
    d.ack()
    done.put(value)


def run(ctx, proc_target, *args):
    p = ctx.Process(target=proc_target, args=args)
    p.start()
    return p


def join(p):
    p.join(TIMEOUT)
    assert p.exitcode == 0, f"{p.name} exit code {p.exitcode}"


def check_queue(ctx):
    q_in, q_out = pyqueue.Queue(), pyqueue.Queue()
    try:
        p = run(ctx, queue_worker, q_in, q_out)
        sent = [b"bytes", "str", {"a": [1, 2.5, None]}]
        for item in sent:
            q_in.put(item)
        got = [q_out.get(timeout=TIMEOUT) for _ in sent]
        join(p)
        assert got == [("echo", item) for item in sent], got
    finally:
        for q in (q_in, q_out):
            q.close()
            q.join_thread()


def check_topic(ctx):
    topic = pyqueue.Topic(capacity_bytes=64 * 1024)
    try:
        sub = topic.subscribe()
        p = run(ctx, topic_worker, topic, 10)
        got = [sub.get(timeout=TIMEOUT) for _ in range(10)]
        join(p)
        assert got == [{"i": i} for i in range(10)], got
        sub.close()
    finally:
        topic.close()


def check_log(ctx, tmp):
    path = os.path.join(tmp, "log")
    log = pyqueue.Log(path=path)
    try:
        p = run(ctx, log_worker, log)
        join(p)
        recs = log.read(0, 0)
        assert [r.value for r in recs] == [f"event-{i}".encode() for i in range(5)], recs
        assert [r.offset for r in recs] == list(range(5))
        assert all(r.key == b"k" for r in recs)
    finally:
        log.close()


def check_workqueue(ctx):
    wq = pyqueue.WorkQueue(capacity_bytes=1024 * 1024, max_in_flight=16)
    done = pyqueue.Queue()
    try:
        wq.put({"job": 1})
        p = run(ctx, workqueue_worker, wq, done)
        assert done.get(timeout=TIMEOUT) == {"job": 1}
        join(p)
        try:
            wq.get(timeout=0)
        except queue.Empty:
            pass
        else:
            raise AssertionError("the acknowledged message came again")
    finally:
        wq.close()
        done.close()
        done.join_thread()


def main():
    where = check_installed()
    check_cli()
    for method in ("fork", "spawn"):
        ctx = mp.get_context(method)
        tmp = tempfile.mkdtemp(prefix="pyqueue-smoke-")
        try:
            check_queue(ctx)
            check_topic(ctx)
            check_log(ctx, tmp)
            check_workqueue(ctx)
        finally:
            shutil.rmtree(tmp)
    print(f"smoke test passed: pyqueue {pyqueue.__version__} from {where}, "
          f"Python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
