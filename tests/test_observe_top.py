"""`pyqueue top` (issue 12): the rates it computes, `--once`, and the live
view in a real terminal: started in a detached tmux session, its screen
captured (tmux capture-pane), its rows checked against known activity of
another process, then `q` sent and its exit checked. Needs tmux (.ci/run
installs it)."""
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from pyqueue import Log, Queue, Topic, WorkQueue, _inspect
from pyqueue._top import Rates
from tests import _observe_workers as W
from tests._support import close_handles, unique_name, wait_until
from tests.test_hygiene import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT = 30.0


@pytest.fixture
def known(tmp_path):
    """A queue holding 7 (10 put, 3 taken), a work queue with one message
    dead-lettered and 4 waiting, a log with a group 6 records behind, a
    topic whose subscriber is 5 behind; and an empty queue "rate"."""
    tag = unique_name("top")
    q = Queue(name=f"{tag}-queue")
    q.put_many(list(range(10)))
    for _ in range(3):
        q.get(timeout=WAIT)
    w = WorkQueue(f"{tag}-wq", max_deliveries=1, dead_letter=None)
    for i in range(5):
        w.put(i)
    w.get(timeout=WAIT).reject("bad")
    lg = Log(f"{tag}-log", partitions=1)
    lg.append_many(list(range(8)))
    c = lg.consumer("g")
    assert len(c.poll(max_records=2, timeout=WAIT)) == 2
    c.commit()
    t = Topic(f"{tag}-topic")
    sub = t.subscribe()
    t.publish_many(list(range(5)))
    rate = Queue(name=f"{tag}-rate")
    yield tag, {"queue": q, "wq": w, "log": lg, "topic": t, "rate": rate}
    sub.close()
    c.close()
    close_handles([q, w, lg, t, rate])


def test_rates_between_two_snapshots(known):
    tag, h = known
    rates = Rates()
    first = {r["name"]: r for r in rates.rows(_inspect.snapshot([f"{tag}-*"]), now=100.0)}
    assert first[f"{tag}-queue"]["in_rate"] is None  # first sight: no rate yet
    h["rate"].put_many(list(range(10)))
    h["rate"].get(timeout=WAIT)
    rows = {r["name"]: r for r in rates.rows(_inspect.snapshot([f"{tag}-*"]), now=102.0)}
    r = rows[f"{tag}-rate"]
    assert (r["in_rate"], r["out_rate"], r["depth"]) == (5.0, 0.5, 9)
    assert rows[f"{tag}-queue"]["in_rate"] == 0.0 and rows[f"{tag}-queue"]["depth"] == 7
    assert rows[f"{tag}-wq"]["dead"] == 1 and rows[f"{tag}-wq"]["depth"] == 4
    assert rows[f"{tag}-log"]["lag"] == 6 and rows[f"{tag}-log"]["depth"] == 8
    assert rows[f"{tag}-topic"]["lag"] == 5 and rows[f"{tag}-topic"]["wait"] == "0/0"


def test_once_prints_the_table(known):
    tag, h = known
    rc, out, err = cli("top", "--once", "--interval", "0.01", f"{tag}-*")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "DEPTH", "IN/s", "OUT/s", "LAG", "WAIT", "DEAD"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    assert rows[f"{tag}-queue"][1:3] == ["queue", "7"]
    assert rows[f"{tag}-wq"][1:3] == ["workqueue", "4"] and rows[f"{tag}-wq"][-1] == "1"
    rc, out, err = cli("top", "--interval", "0")
    assert rc == 2 and "--interval" in err
    rc, out, err = cli("top")  # the live view needs a terminal
    assert rc == 2 and "not a terminal" in err


def _tmux():
    path = shutil.which("tmux")
    if path is None:
        pytest.fail("tmux is not installed (apt-get install tmux; .ci/run installs it)")
    return path


def _rows(screen, tag):
    rows = {}
    for line in screen.splitlines():
        f = line.split()
        if f and f[0].startswith(tag):
            rows[f[0]] = f
    return rows


@pytest.mark.timeout(120)
def test_live_view_in_a_terminal(ctx, procs, known, tmp_path):
    tag, h = known
    tm = [_tmux(), "-L", f"pyqueue-test-{os.getpid()}", "-f", "/dev/null"]
    rc_file = tmp_path / "rc"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TMUX", None)
    # The screen's size is tmux's window (-x/-y below), not the size a test
    # runner passed down (pytest-xdist's workers get COLUMNS=80, LINES=24).
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    cmd = (f"{shlex.quote(sys.executable)} -m pyqueue top --interval 0.2 "
           f"{shlex.quote(tag + '-*')}; echo $? > {shlex.quote(str(rc_file))}")
    stop = ctx.Event()
    procs.start(ctx, W.paced_put, h["rate"].name, stop)
    subprocess.run(tm + ["new-session", "-d", "-s", "top", "-x", "150", "-y", "30", cmd],
                   env=env, check=True, timeout=WAIT)
    try:
        def screen():
            r = subprocess.run(tm + ["capture-pane", "-p", "-t", "top"], capture_output=True,
                               text=True, timeout=WAIT)
            return r.stdout

        def ready():
            rows = _rows(screen(), tag)
            rate = rows.get(f"{tag}-rate")
            return len(rows) == 5 and rate is not None and rate[3] not in ("-", "0.0") and rows
        rows = wait_until(ready, timeout=WAIT, interval=0.05)
        assert rows, screen()
        assert "pyqueue top - " in screen() and "q quits" in screen()
        assert rows[f"{tag}-queue"][1:3] == ["queue", "7"]
        assert rows[f"{tag}-queue"][3:5] == ["0.0", "0.0"]
        assert rows[f"{tag}-wq"][1:3] == ["workqueue", "4"] and rows[f"{tag}-wq"][-1] == "1"
        assert rows[f"{tag}-log"][1:3] == ["log", "8"] and rows[f"{tag}-log"][5] == "6"
        assert rows[f"{tag}-topic"][1:3] == ["topic", "5"] and rows[f"{tag}-topic"][5] == "5"
        assert float(rows[f"{tag}-rate"][3]) > 0  # the other process's puts, per second
        # It refreshes: a new segment shows up.
        extra = Queue(name=f"{tag}-late")
        try:
            extra.put(1)
            assert wait_until(lambda: f"{tag}-late" in _rows(screen(), tag), timeout=WAIT,
                              interval=0.05), screen()
        finally:
            extra.unlink()
            extra.close()
        subprocess.run(tm + ["send-keys", "-t", "top", "q"], check=True, timeout=WAIT)
        assert wait_until(lambda: rc_file.exists() and rc_file.read_text().strip(),
                          timeout=WAIT), screen()
        assert rc_file.read_text().strip() == "0"
    finally:
        stop.set()
        subprocess.run(tm + ["kill-server"], capture_output=True, timeout=WAIT)
