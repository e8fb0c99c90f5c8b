"""`pyqueue ls --url` and `pyqueue stats --url` on a Redis server and a
cluster: the objects there, their kinds and depths, and their stats()."""
import json

import pytest

from pyqueue import cli

pytestmark = pytest.mark.timeout(60)


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
        assert cli.main(["stats", "--url", server.url, "cli-q"]) == 0
        s = json.loads(capsys.readouterr().out)
        assert (s["kind"], s["enqueued"], s["unfinished_tasks"]) == ("queue", 3, 3)
        assert cli.main(["stats", "--url", server.url, "no-such-thing"]) == 1
        assert "no 'no-such-thing'" in capsys.readouterr().err
        assert cli.main(["ls", "--url", server.url]) == 0
        assert "cli-w" in capsys.readouterr().out
    finally:
        for obj in made:
            obj.unlink()
