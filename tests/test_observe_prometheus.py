"""A real Prometheus server scrapes `pyqueue metrics --serve` (issue 12).

tests/test_observe.py parses the exposition with prometheus_client's own
parser; this file has Debian's `prometheus` (installed by .ci/run) scrape
the exporter and answers queries through its HTTP API, so the format is
checked by the consumer it is written for: a sample Prometheus rejects
(a bad name, a duplicate series, a counter without `_total` in the
OpenMetrics form it negotiates) makes the target's `lastError` non-empty
and the query below empty. It fails (not skips) when the binary is
missing, as tests/test_observe_top.py does for tmux.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest

from pyqueue import Log, Queue, Topic, WorkQueue
from tests._support import close_handles, unique_name, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Scrapes every second; a first scrape can take a few intervals on a busy
# machine (the server's start, its first target refresh).
DEADLINE = 60.0
# Once a scrape has succeeded its samples are queryable at once; a later
# scrape comes within a few intervals.
QUERY_DEADLINE = 15.0


def _prometheus():
    path = shutil.which("prometheus")
    if path is None:
        pytest.fail("prometheus is not installed "
                    "(apt-get install --no-install-recommends prometheus; .ci/run installs it)")
    return path


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("LD_PRELOAD", None)  # the sanitizer stage's runtime is not for Go
    return env


def _api(base, path, **params):
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read().decode())
    except OSError:
        return None  # not listening yet
    assert body["status"] == "success", body
    return body["data"]


def _value(base, query):
    data = _api(base, "query", query=query)
    if not data or not data["result"]:
        return None
    (series,) = data["result"]
    return float(series["value"][1])


@pytest.fixture
def exporter(tmp_path):
    tag = unique_name("prom")
    q = Queue(name=f"{tag}-queue")
    w = WorkQueue(f"{tag}-wq", max_deliveries=None, dead_letter=None)
    t = Topic(f"{tag}-topic", mode="lossy", capacity_bytes=65536)
    lg = Log(f"{tag}-log", partitions=2)
    p = subprocess.Popen([sys.executable, "-m", "pyqueue", "metrics", "--serve",
                          "127.0.0.1:0", f"{tag}-*"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=_env())
    try:
        line = p.stdout.readline()
        assert line.startswith("pyqueue metrics: serving http://127.0.0.1:"), \
            line + p.stderr.read()
        url = urllib.parse.urlsplit(line.split()[-1])
        yield tag, (url.netloc, url.path or "/"), {"queue": q, "wq": w, "topic": t, "log": lg}
    finally:
        p.terminate()
        p.wait(30)
        p.stdout.close()
        p.stderr.close()
        close_handles([q, w, t, lg], unlink=lambda h: True)


def _start_prometheus(tmp_path, target):
    """Prometheus scraping `target` (host:port, path) every second, on a free port (tried
    again on another one if a race took it)."""
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: pyqueue\n"
        f"    metrics_path: '{target[1]}'\n"
        f"    static_configs:\n      - targets: ['{target[0]}']\n")
    for _attempt in range(3):
        port = _free_port()
        log = open(tmp_path / f"prometheus-{port}.log", "w")
        p = subprocess.Popen(
            [_prometheus(), f"--config.file={config}",
             f"--storage.tsdb.path={tmp_path / f'data-{port}'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        if wait_until(lambda: p.poll() is not None or _api(base, "targets") is not None,
                      timeout=DEADLINE, interval=0.05) and p.poll() is None:
            return p, base, log
        p.wait(30)
        log.close()
    pytest.fail("prometheus did not start: "
                + (tmp_path / f"prometheus-{port}.log").read_text()[-2000:])


def _stop(p, log):
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
    p.wait(60)
    log.close()


@pytest.mark.timeout(300)
def test_prometheus_scrapes_every_kind(exporter, tmp_path):
    tag, target, h = exporter
    for i in range(7):
        h["queue"].put(i)
    h["queue"].get(timeout=10)
    for i in range(3):
        h["wq"].put(i)
    h["wq"].get(timeout=10).ack()
    for i in range(5):
        h["topic"].publish(i)
    h["log"].append_many(list(range(4)), key="k")
    part = h["log"].partition_for("k")

    p, base, log = _start_prometheus(tmp_path, target)
    try:
        def healthy():
            data = _api(base, "targets")
            if not data or not data["activeTargets"]:
                return None
            (t,) = data["activeTargets"]
            return t if t["health"] != "unknown" else None

        t = wait_until(healthy, timeout=DEADLINE, interval=0.1)
        assert t, "prometheus never scraped the exporter"
        assert t["health"] == "up" and t["lastError"] == "", t
        expected = {
            f'pyqueue_queue_enqueued_total{{queue="{tag}-queue"}}': 7,
            f'pyqueue_queue_depth{{queue="{tag}-queue"}}': 6,
            f'pyqueue_workqueue_enqueued_total{{workqueue="{tag}-wq"}}': 3,
            f'pyqueue_workqueue_depth{{workqueue="{tag}-wq"}}': 2,
            f'pyqueue_topic_published_total{{topic="{tag}-topic"}}': 5,
            f'pyqueue_log_appended_total{{log="{tag}-log",partition="{part}"}}': 4,
        }
        for query, value in expected.items():
            got = wait_until(lambda: _value(base, query), timeout=QUERY_DEADLINE,
                             interval=0.1)
            assert got == value, (query, got)
        # A later scrape sees what changed: the exporter reads the segments
        # afresh each time, and Prometheus stores the new sample.
        h["queue"].put("more")
        query = f'pyqueue_queue_enqueued_total{{queue="{tag}-queue"}}'
        assert wait_until(lambda: _value(base, query) == 8, timeout=QUERY_DEADLINE,
                          interval=0.1)
        data = _api(base, "targets")
        (t,) = data["activeTargets"]
        assert t["lastError"] == "", t
    finally:
        _stop(p, log)
