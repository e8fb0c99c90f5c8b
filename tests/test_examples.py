"""The examples run as a user would run them, and do what they say."""
import json
import os
import subprocess
import sys

import pytest

from tests.contract.conftest import _url as backend_url
from tests.contract.conftest import redis_cluster, redis_server  # noqa: F401  (the servers)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The checkout example on each backend: shared memory, one redis-server, the
# cluster. The same code: a Redis URL reaches it only by PYQUEUE_URL.
CHECKOUT_BACKENDS = ["shm", pytest.param("redis", marks=pytest.mark.redis),
                     pytest.param("redis-cluster", marks=pytest.mark.redis)]


@pytest.mark.parametrize("which", CHECKOUT_BACKENDS)
def test_checkout_charges_every_order_once_and_dead_letters_the_poison(which, ctx, request):
    url = backend_url(request, which)
    env = dict(os.environ)
    env.pop("PYQUEUE_URL", None)
    if which != "shm":
        env["PYQUEUE_URL"] = url
    # 2 process trees: this program's StreamProcessor and a `checkout.py
    # worker` program (no order is charged before a worker of each holds
    # one); 10 ms of work a charge; a visibility timeout of 2 s brings the
    # killed worker's order back soon on Redis.
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "checkout.py"),
                        "--orders", "200", "--poison", "4", "--trees", "2", "--work-ms", "10",
                        "--visibility-timeout", "2", "--start-method", ctx.get_start_method(),
                        "--json"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    rep = json.loads(r.stdout)
    assert rep["url"] == url and rep["start_method"] == ctx.get_start_method()
    assert rep["backend"] == ("shm" if which == "shm" else "redis")
    assert rep["ok"]
    assert rep["charged"] == rep["good"] == 196 and rep["charged_exactly_once"]
    assert rep["lost"] == []
    # Each poison order dead-lettered once, with its error; at most one
    # moved by a get after its mover (the SIGKILLed worker) died, without
    # the text, and at most one twice (its mover had put it): beside it.
    assert len(set(rep["dead_letters"])) == 4
    assert rep["dead_letters_moved_by_a_get"] <= 1
    assert len(rep["dead_letters"]) - 4 == rep["dead_lettered_twice"] <= 1
    assert all(reason == "rejected" or reason.startswith("rejected: ValueError: invalid amount")
               for reason in rep["dead_letter_reasons"])
    assert rep["worker_killed"] and rep["restarts"] >= 1
    assert rep["redelivered"] > 0  # the gateway failures were retried
    assert rep["deduplicated"] == 10
    # Both process trees took orders from the one queue, and every order
    # was processed (at least once: a redelivery after a lost confirmation
    # is processed again and charges nothing).
    trees = rep["trees"]
    assert len(trees) == 2 and len({t["tree"] for t in trees}) == 2
    assert all(t["processed"] > 0 for t in trees), (trees, r.stderr)
    assert sum(t["processed"] for t in trees) >= 196
    # The killed worker was the first tree's, and no other worker died: a
    # worker whose fn took past the visibility timeout (its tree waited
    # at the start line for the other, slow to start under load) goes on.
    assert trees[0]["crashes"] == 1 and trees[1]["crashes"] == 0, (trees, r.stderr)


def run_example(script, *args):
    """Runs examples/SCRIPT as a user would (a new interpreter, its own
    argv) with --json; returns its report."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), "--json", *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.stdout, r.stderr)
    rep = json.loads(r.stdout)
    assert rep["ok"]
    return rep


def test_log_pipeline_parses_every_line_once_across_processes(ctx):
    rep = run_example("log_pipeline.py", "--lines", "5000", "--workers", "3", "--batch", "64",
                      "--start-method", ctx.get_start_method())
    assert rep["start_method"] == ctx.get_start_method()
    assert rep["lines"] == 5000
    assert rep["malformed"] == 6  # every 997th generated line: 0, 997, ..., 4985
    assert sum(rep["status"].values()) == 5000 - 6
    assert set(rep["status"]) == {"200", "304", "404", "500"}
    # 79 batches and one end marker per parser went through the drop-in Queue
    assert rep["queue_stats"]["enqueued"] == rep["queue_stats"]["dequeued"] == 79 + 3


def test_fanout_every_subscriber_gets_every_tick_in_order(ctx):
    rep = run_example("fanout.py", "--ticks", "5000", "--start-method", ctx.get_start_method())
    subs = {s["role"]: s for s in rep["subscribers"]}
    assert set(subs) == {"average", "high", "audit"}
    for s in subs.values():
        assert s["seen"] == 5000 and s["in_order"] and s["lost"] == 0
    assert subs["high"]["value"] == 110.0  # 100 + 100/10: seq * 37 % 101 reaches 100


def test_event_log_group_replay_resume_and_new_group(ctx):
    rep = run_example("event_log.py", "--events", "1200", "--members", "2",
                      "--start-method", ctx.get_start_method())
    assert rep["billed"] == rep["replayed"] == 1200 and rep["replay_matches"]
    assert rep["appended_later"] == rep["resumed"] == 120 and rep["resumed_only_new"]
    assert rep["audited"] == 1320
    assert rep["lag"] == {"billing": 0, "audit": 0}
    assert rep["users"] == 37


def test_event_log_keeps_the_log_in_the_given_directory(tmp_path):
    path = tmp_path / "orders"
    run_example("event_log.py", "--events", "200", "--members", "1", "--path", str(path))
    assert (path / "log.json").is_file()
    assert sorted(p.name for p in path.glob("partition-*")) == [f"partition-{i}" for i in range(4)]
