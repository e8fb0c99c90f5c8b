"""`pyqueue ls --url`, `pyqueue stats --url` and `pyqueue groups --url` on a Redis server and a
cluster: the objects there, their kinds and depths, and their stats()."""
import json
import os

import pytest

from pyqueue import cli

pytestmark = [pytest.mark.timeout(60), pytest.mark.redis]  # a real redis-server


@pytest.mark.parametrize("where", ["redis", "redis-cluster"])
def test_ls_and_stats_by_url(request, where, capsys):
    import pyqueue
    server = request.getfixturevalue("redis_server" if where == "redis" else "redis_cluster")
    b = pyqueue.connect(server.url)
    made = [b.JoinableQueue(name="cli-q"), b.WorkQueue("cli-w"), b.Topic("cli-t"),
            b.Log("cli-l", partitions=3)]
    try:
        made[0].put_many([1, 2, 3])
        made[1].put("job")
        made[2].publish("news")
        made[3].append_many(range(4))
        assert cli.main(["ls", "--url", server.url, "--json", "cli-*"]) == 0
        rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
        assert {n: (r["kind"], r["depth"]) for n, r in rows.items()} == {
            "cli-q": ("queue", 3), "cli-w": ("workqueue", 1), "cli-t": ("topic", 1),
            "cli-l": ("log", 4)}
        assert rows["cli-q"]["joinable"] is True and rows["cli-l"]["partitions"] == 3
        assert cli.main(["stats", "--url", server.url, "--json", "cli-q"]) == 0
        s = json.loads(capsys.readouterr().out)
        assert (s["kind"], s["enqueued"], s["unfinished_tasks"]) == ("queue", 3, 3)
        assert cli.main(["stats", "--url", server.url, "cli-q"]) == 0  # text: one a line
        out = capsys.readouterr().out
        assert out.startswith("queue cli-q\n") and "enqueued" in out
        assert cli.main(["stats", "--url", server.url, "no-such-thing"]) == 1
        assert "no 'no-such-thing'" in capsys.readouterr().err
        assert cli.main(["ls", "--url", server.url]) == 0
        assert "cli-w" in capsys.readouterr().out
    finally:
        for obj in made:
            obj.unlink()


@pytest.mark.parametrize("where", ["redis", "redis-cluster"])
def test_groups_by_url(request, where, capsys):
    import pyqueue
    server = request.getfixturevalue("redis_server" if where == "redis" else "redis_cluster")
    log = pyqueue.connect(server.url).Log("cli-groups", partitions=2)
    try:
        log.append_many(range(3), key="k")
        p = log.partition_for("k")
        with log.consumer("readers") as c:
            assert len(c.poll(max_records=10)) == 3
            c.commit({p: 2})
            assert cli.main(["groups", "--url", server.url, "--json", "cli-groups"]) == 0
            report = json.loads(capsys.readouterr().out)["readers"]
            assert [m["member_id"] for m in report["members"]] == [c.member_id]
            assert report["partitions"][str(p)] == {"committed": 2, "end": 3, "lag": 1,
                                                    "owner_pid": os.getpid()}
        assert cli.main(["groups", "--url", server.url, "cli-groups"]) == 0
        assert "group readers: 0 member(s)" in capsys.readouterr().out
        assert cli.main(["groups", "--url", server.url, "cli-groups", "nobody"]) == 1
        assert cli.main(["groups", "--url", server.url, "no-such-log"]) == 1
        assert "no log 'no-such-log'" in capsys.readouterr().err
    finally:
        log.unlink()


@pytest.mark.parametrize("where", ["redis", "redis-cluster"])
def test_tail_by_url(request, where, capsys, tmp_path):
    import pickle
    import subprocess
    import sys
    import pyqueue
    server = request.getfixturevalue("redis_server" if where == "redis" else "redis_cluster")
    log = pyqueue.connect(server.url).Log("cli-tail", partitions=2)
    try:
        p = log.partition_for("k")
        log.append_many([b"zero", "one"], key="k", headers={"h": "v"})
        log.append({"x": 1}, key="k")
        tail = ["tail", "--url", server.url, "cli-tail"]
        assert cli.main(tail + ["--from-beginning", "--no-follow"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [ln.split("\t")[:2] + ln.split("\t")[3:] for ln in lines] == [
            [str(p), "0", "k", "zero"], [str(p), "1", "k", "one"],
            [str(p), "2", "k", f"<pickle, not decoded: {pickle.dumps({'x': 1}, 5)!r}>"]]
        # Anyone who reaches the server may have written a pickle: it runs
        # only with --unpickle.
        assert cli.main(tail + ["--from-beginning", "--no-follow", "--unpickle", "--json",
                                "-p", str(p)]) == 0
        rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
        assert [(r["offset"], r["value"], r["headers"]) for r in rows] == [
            (0, "zero", {"h": "v"}), (1, "one", {"h": "v"}), (2, {"x": 1}, {})]
        assert cli.main(tail + ["--no-follow"]) == 0          # only new records: none
        assert capsys.readouterr().out == ""
        assert cli.main(tail + ["-p", "5", "--no-follow"]) == 1
        assert "out of range" in capsys.readouterr().err
        assert cli.main(["tail", "--url", server.url, "no-such-log", "--no-follow"]) == 1
        assert "no log 'no-such-log'" in capsys.readouterr().err
        # Following: the two records appended after it started, then exit.
        env = dict(os.environ, PYQUEUE_URL=server.url)
        proc = subprocess.Popen([sys.executable, "-m", "pyqueue", "tail", "cli-tail", "-n", "2"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        try:
            while True:
                log.append(b"new", key="k")
                try:
                    out, err = proc.communicate(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    continue
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        assert [ln.split("\t")[-1] for ln in out.splitlines()] == ["new", "new"]
    finally:
        log.unlink()


@pytest.mark.parametrize("where", ["redis", "redis-cluster"])
def test_gc_by_url_removes_what_no_log_owns(request, where, capsys):
    # Partitions and groups a removed log's handle left behind (made by
    # hand here: the log's meta hash deleted under them, then a log made
    # again under the name) are listed by `pyqueue gc --url --dry-run` and
    # removed by `pyqueue gc --url`; the live log's own partitions and
    # groups, and another live log, are kept.
    import uuid
    import pyqueue
    server = request.getfixturevalue("redis_server" if where == "redis" else "redis_cluster")
    b = pyqueue.connect(server.url)
    tag = uuid.uuid4().hex[:6]
    gone, live = f"gc-gone-{tag}", f"gc-live-{tag}"
    old = b.Log(gone, partitions=3)
    old.append_many(["a", "b"], key="k")             # one partition made
    p_old = old.partition_for("k")
    old.consumer("g").close()                        # a group made
    b.client.delete(f"pq:{{{gone}}}:meta", f"pq:{{{gone}}}:groups")
    again = b.Log(gone, partitions=3)
    p_new = next(q for q in range(3) if q != p_old)
    again.append("new", key=next(k for k in map(str, range(100))
                                 if again.partition_for(k) == p_new))
    other = b.Log(live, partitions=2)
    other.append_many(range(4))
    other.consumer("readers").close()
    try:
        assert cli.main(["gc", "--url", server.url, "--dry-run", "--json", f"gc-*-{tag}"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert sorted((d["kind"], d.get("partition", d.get("group")), d["removed"])
                      for d in listed) == [("group", "g", False), ("partition", p_old, False)]
        assert cli.main(["gc", "--url", server.url, f"gc-*-{tag}"]) == 0
        out = capsys.readouterr().out
        assert out.count(": no log of that name owns it") == 2
        assert "gc: removed 2 leftovers" in out
        assert cli.main(["gc", "--url", server.url, "--json", f"gc-*-{tag}"]) == 0
        assert json.loads(capsys.readouterr().out) == []
        assert [r.value for r in again.read(p_new, 0)] == ["new"]     # kept
        assert again.end_offset(p_old) == 0                            # removed
        assert [other.end_offset(q) for q in range(2)] != [0, 0]
        assert other.groups() == ["readers"]
    finally:
        for h in (again, other):
            h.unlink()
            h.close()
        old.close()


@pytest.mark.parametrize("where", ["redis", "redis-cluster"])
def test_gc_by_url_deletes_only_what_it_listed(request, where, monkeypatch, capsys):
    # A leftover listed, then dropped and made again by the log of its name
    # (its first append): gc's delete, which names the id it listed, leaves
    # the log's own partition. Leftovers without an id (an earlier pyqueue)
    # and of other names than the patterns' are not listed; keys of that
    # shape that are not a log's (a partition that is no number) neither.
    # Only an explicit --url goes to the server: $PYQUEUE_URL does not turn
    # a plain `pyqueue gc` (shared memory's, from cron say) into this one.
    import uuid
    import pyqueue
    from pyqueue.backends.redis import admin
    server = request.getfixturevalue("redis_server" if where == "redis" else "redis_cluster")
    b = pyqueue.connect(server.url)
    tag = uuid.uuid4().hex[:6]
    name, legacy, elsewhere = f"gco-{tag}", f"gco-old-{tag}", f"other-{tag}"
    made = []
    for n in (name, legacy, elsewhere):
        log = b.Log(n, partitions=1)
        log.append("left")
        log.close()
        b.client.delete(f"pq:{{{n}}}:meta")
    b.client.hdel(f"pq:{{{legacy}/0}}:l.meta", "inc")
    b.client.hset(f"pq:{{{name}/x}}:l.meta", mapping={"inc": "abc", "next": 1})
    try:
        items = admin.leftovers(b, ["gco-*"])
        assert [(d["log"], d["partition"]) for d in items] == [(name, 0)]
        again = b.Log(name, partitions=1)
        made.append(again)
        assert again.append("mine") == (0, 0)       # dropped the left one, made its own
        assert admin.drop_leftover(b, items[0]) is False
        assert [r.value for r in again.read(0, 0)] == ["mine"]
        monkeypatch.setenv("PYQUEUE_URL", server.url)
        assert cli.main(["gc", "--json", "--dry-run", f"*-{tag}"]) == 0
        assert all(d.get("kind") != "partition" for d in json.loads(capsys.readouterr().out))
        assert cli.main(["gc", "--url", server.url, "--anon-only", f"*-{tag}"]) == 2
        assert cli.main(["gc", "--url", server.url, "--json", "--dry-run", f"*-{tag}"]) == 0
        assert [d["log"] for d in json.loads(capsys.readouterr().out)] == [elsewhere]
    finally:
        for h in made:
            h.unlink()
            h.close()
        for key in [f"pq:{{{n}/0}}:l.{k}" for n in (legacy, elsewhere)
                    for k in ("meta", "stream")] + [f"pq:{{{name}/x}}:l.meta"]:
            b.client.delete(key)    # (one at a time: the keys of several slots)
