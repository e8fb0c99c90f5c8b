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
        rc, out, err = cli("stats", q.name)
        assert rc == 0, err
        st = json.loads(out)
        assert st["in_flight"] == 1 and st["depth"] == 1 and st["enqueued"] == 2
        rc, out, err = cli("ls", "--json", q.name)
        assert rc == 0, err
        (row,) = json.loads(out)
        assert row["kind"] == "workqueue" and row["depth"] == 2
        lg = Log(name=unique_name("clilog"))
        try:
            rc, out, err = cli("stats", lg.name)
            assert rc == 1 and "is a log" in err
        finally:
            lg.unlink()
            lg.close()
    finally:
        q.unlink()
        q.close()
