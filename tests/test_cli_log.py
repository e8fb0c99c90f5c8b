"""`pyqueue tail` and `pyqueue groups`, in-process and as a subprocess that
follows appends made after it started."""
import json
import subprocess
import sys

import pytest

from pyqueue import Log
from tests._support import close_handles, unique_name
from tests.test_hygiene import cli


@pytest.fixture(params=["memory", "directory"])
def log(request, tmp_path):
    if request.param == "memory":
        lg = Log(name=unique_name("cli"), partitions=2)
        name = lg.name
    else:
        lg = Log(path=tmp_path / "log", partitions=2)
        name = str(tmp_path / "log")
    yield lg, name
    close_handles([lg], unlink=lambda h: h.path is None)


def test_tail_from_beginning_one_partition_and_json(log):
    lg, name = log
    lg._append(0, [b"zero", "one"], b"k", {"h": b"v"}, 1_700_000_000_000)
    lg._append(1, [{"x": 1}], None, None, 1_700_000_000_000)
    rc, out, err = cli("tail", name, "--from-beginning", "--no-follow")
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) == 3
    assert lines[0].split("\t") == ["0", "0", "2023-11-14T22:13:20.000+00:00", "k", "zero"]
    assert lines[2].split("\t")[-1] == "{'x': 1}" and lines[2].split("\t")[3] == "-"
    rc, out, err = cli("tail", name, "--partition", "0", "--from-beginning", "-n", "1",
                       "--json")
    assert rc == 0, err
    row = json.loads(out)
    assert row == {"partition": 0, "offset": 0, "timestamp": 1_700_000_000_000, "key": "k",
                   "value": "zero", "headers": {"h": "v"}}
    rc, out, err = cli("tail", name, "--no-follow")  # only new records: none
    assert rc == 0 and out == ""
    rc, out, err = cli("tail", name, "--partition", "5", "--no-follow")
    assert rc == 1 and "out of range" in err
    rc, out, err = cli("tail", "pqtest-no-such-log", "--no-follow")
    assert rc == 1 and "no log named" in err
    # -n 0 shows nothing and ends (it waited for ever, or raised from
    # read(max_records=0)); a negative count is refused
    rc, out, err = cli("tail", name, "--from-beginning", "-n", "0")
    assert (rc, out) == (0, "")
    rc, out, err = cli("tail", name, "-n", "-1")
    assert rc == 2 and "--count" in err and "Traceback" not in err


def test_tail_follows_new_records(log):
    lg, name = log
    lg.append(b"old")
    proc = subprocess.Popen([sys.executable, "-m", "pyqueue", "tail", name, "-n", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # tail starts at the end: it prints the two records appended after
        # it started (it waits for them), then exits.
        import time
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            lg.append(b"new")
            try:
                out, err = proc.communicate(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and all(line.endswith("\tnew") for line in lines)


def test_groups(log):
    lg, name = log
    lg._append(0, list(range(10)), None, None, 0)
    lg._append(1, list(range(4)), None, None, 0)
    c = lg.consumer("billing")
    c.poll(max_records=100)
    c.commit({0: 7})
    rc, out, err = cli("groups", name, "--json")
    assert rc == 0, err
    rep = json.loads(out)
    import os
    assert list(rep) == ["billing"]
    assert rep["billing"]["partitions"]["0"] == {"committed": 7, "end": 10, "lag": 3,
                                                 "owner_pid": os.getpid()}
    assert rep["billing"]["partitions"]["1"]["committed"] is None
    assert rep["billing"]["partitions"]["1"]["lag"] == 4
    assert [m["pid"] for m in rep["billing"]["members"]] == [os.getpid()]
    rc, out, err = cli("groups", name)
    assert rc == 0 and "group billing: 1 member(s)" in out
    assert out.splitlines()[2].split() == ["0", "7", "10", "3", str(os.getpid())]
    rc, out, err = cli("groups", name, "nope")
    assert rc == 1 and "no consumer group" in err
    c.close()


def test_stats_and_ls_of_a_work_queue():
    from pyqueue import WorkQueue
    q = WorkQueue(name=unique_name("cliwq"))
    try:
        q.put("a")
        q.put("b")
        q.get(timeout=5)
        rc, out, err = cli("stats", "--json", q.name)
        assert rc == 0, err
        st = json.loads(out)
        assert st["in_flight"] == 1 and st["depth"] == 1 and st["enqueued"] == 2
        rc, out, err = cli("ls", "--json", q.name)
        assert rc == 0, err
        (row,) = json.loads(out)
        assert row["kind"] == "workqueue" and row["depth"] == 2
        lg = Log(name=unique_name("clilog"))
        try:
            lg.append(b"x")
            rc, out, err = cli("stats", "--json", lg.name)  # a log has counters too
            assert rc == 0 and json.loads(out)["appended"] == 1, err
        finally:
            lg.unlink()
            lg.close()
    finally:
        q.unlink()
        q.close()


# -- issue 9, item 2: the CLI never unpickles another user's data unasked ---------------

class _TouchesMarker:
    """Unpickling it creates a directory: the marker of code run by a pickle."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os
        return (os.mkdir, (self.path,))


def _give_away(lg, name):
    """Make the log another user's (nobody's): its segment, or its
    directory and every file in it."""
    import os
    if lg.path is None:
        os.chown("/dev/shm/pyqueue." + name, 65534, 65534)
        return
    for root, dirs, files in os.walk(name):
        for entry in dirs + files:
            os.lchown(os.path.join(root, entry), 65534, 65534)
    os.chown(name, 65534, 65534)


def _own_again(lg, name):
    import os
    if lg.path is None:
        os.chown("/dev/shm/pyqueue." + name, 0, 0)
        return
    for root, dirs, files in os.walk(name):
        for entry in dirs + files:
            os.lchown(os.path.join(root, entry), 0, 0)
    os.chown(name, 0, 0)


@pytest.mark.skipif(__import__("os").geteuid() != 0,
                    reason="needs root to give a log to another user (os.chown)")
def test_tail_of_another_users_log_shows_pickles_raw(log, tmp_path):
    import base64
    import os
    import pickle
    lg, name = log
    marker = tmp_path / "pickle-ran"
    crafted = pickle.dumps(_TouchesMarker(str(marker)), protocol=5)
    lg._append(0, [b"raw bytes", "text", _TouchesMarker(str(marker))], None, None,
               1_700_000_000_000)
    assert not marker.exists()
    _give_away(lg, name)
    try:
        rc, out, err = cli("tail", name, "--from-beginning", "--no-follow", "-p", "0")
        assert rc == 0, err
        values = [line.split("\t")[-1] for line in out.splitlines()]
        assert values[:2] == ["raw bytes", "text"]         # bytes and str: shown as they are
        assert values[2] == f"<pickle, not decoded: {crafted!r}>"
        assert not marker.exists()
        rc, out, err = cli("tail", name, "--from-beginning", "--no-follow", "-p", "0",
                           "--json")
        assert rc == 0, err
        rows = [json.loads(line) for line in out.splitlines()]
        assert [r["value"] for r in rows[:2]] == ["raw bytes", "text"]
        assert rows[2]["value"] is None and rows[2]["value_type"] == "pickle"
        assert base64.b64decode(rows[2]["value_base64"]) == crafted
        assert not marker.exists()
        # Asked for: decoded (and the pickle runs, as the user said to trust it).
        rc, out, err = cli("tail", name, "--from-beginning", "--no-follow", "-p", "0",
                           "--unpickle")
        assert rc == 0, err
        assert marker.exists()
        os.rmdir(marker)
        rc, out, err = cli("tail", name, "--from-beginning", "--no-follow", "-p", "0",
                           "--trust", "-n", "3")
        assert rc == 0 and marker.exists(), err
        os.rmdir(marker)
        # Only one part another user's: the segment files of a directory
        # log this user owns, or the directory around files this user owns.
        _own_again(lg, name)
        parts = [name] if lg.path is not None else ["/dev/shm/pyqueue." + name]
        if lg.path is not None:
            parts.append(os.path.join(name, "partition-0"))
            parts.append(os.path.join(name, "partition-0", os.listdir(
                os.path.join(name, "partition-0"))[0]))
        for part in parts:
            os.lchown(part, 65534, 65534)
            rc, out, err = cli("tail", name, "--from-beginning", "--no-follow", "-p", "0")
            assert rc == 0, err
            assert out.splitlines()[2].endswith("<pickle, not decoded: %r>" % crafted), part
            assert not marker.exists()
            os.lchown(part, 0, 0)
    finally:
        _own_again(lg, name)


def test_tail_of_own_log_decodes_pickles(log, tmp_path):
    lg, name = log
    marker = tmp_path / "pickle-ran"
    lg._append(0, [_TouchesMarker(str(marker))], None, None, 1_700_000_000_000)
    rc, out, err = cli("tail", name, "--from-beginning", "--no-follow", "-p", "0")
    assert rc == 0, err
    assert marker.exists()        # this user's own log: its pickles are this user's


# -- issue 9, item 17: a reader that goes away -----------------------------------------

@pytest.mark.parametrize("argv", [["ls", "--json"], ["ls"], ["gc", "--dry-run", "--json"]],
                         ids=["ls-json", "ls", "gc-json"])
def test_closed_pipe_is_quiet(argv):
    """`pyqueue ls --json | head`: the reader closes the pipe before the
    command writes. No traceback, the exit status of a command killed by
    SIGPIPE (128 + 13)."""
    import os
    lg = Log(name=unique_name("pipe"))   # something to list
    r, w = os.pipe()
    os.close(r)                          # the reader is gone before any write
    try:
        proc = subprocess.run([sys.executable, "-m", "pyqueue", *argv, "pqtest-*"], stdout=w,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(w)
        lg.unlink()
        lg.close()
    assert proc.stderr == "", proc.stderr
    assert proc.returncode == 141


def test_pipe_closed_by_head():
    """The same through a real `head -c 1` that exits after one byte."""
    import os
    made = [Log(name=unique_name("pipe")) for _ in range(3)]
    try:
        cmd = f"{sys.executable} -m pyqueue ls --json 'pqtest-*' | head -c 1"
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=60,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
    finally:
        for lg in made:
            lg.unlink()
            lg.close()
    assert proc.stdout == "["
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 141)
