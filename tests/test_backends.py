"""pyqueue.connect(): URLs, the environment variable, and the shared-memory
backend being today's classes themselves."""
import os
import subprocess
import sys

import pytest

import pyqueue
from pyqueue.backends import connect

redis_backend = pytest.importorskip("pyqueue.backends.redis")


def test_shm_is_the_default_and_gives_the_classes_themselves(monkeypatch):
    monkeypatch.delenv("PYQUEUE_URL", raising=False)
    b = connect()
    assert b is connect("shm://") and b.name == "shm"
    assert (b.Queue, b.JoinableQueue, b.WorkQueue, b.Topic, b.Log) == (
        pyqueue.Queue, pyqueue.JoinableQueue, pyqueue.WorkQueue, pyqueue.Topic, pyqueue.Log)


def test_the_url_comes_from_the_environment(tmp_path):
    sock = tmp_path / "none.sock"
    code = ("import pyqueue; b = pyqueue.connect(); "
            "print(b.url, b.name, type(b).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYQUEUE_URL=f"redis+unix://{sock}",
                                  PYTHONPATH=os.pathsep.join(sys.path)),
                         check=True).stdout
    assert out.split() == [f"redis+unix://{sock}", "redis", "RedisBackend"]


@pytest.mark.parametrize("url", ["ftp://x", "nothing", "shm://somewhere", "redis+cluster://",
                                 "redis+cluster://h1", "redis+unix://"])
def test_bad_urls(url):
    with pytest.raises(ValueError):
        connect(url)
    with pytest.raises(TypeError):
        connect(b"shm://")


def test_parse_url():
    parse = redis_backend.parse_url
    assert parse("redis+unix:///run/r.sock?db=2") == (
        "single", {"unix_socket_path": "/run/r.sock", "db": 2})
    assert parse("redis+cluster://a:7000,[::1]:7001") == (
        "cluster", {"nodes": [("a", 7000), ("::1", 7001)]})
    assert parse("redis+cluster://u:pw@a:7000")[1] == {"nodes": [("a", 7000)],
                                                        "username": "u", "password": "pw"}
    assert parse("redis://h:6379/1") == ("single", {"url": "redis://h:6379/1"})


def test_names_that_would_break_the_hash_tag_are_refused():
    from pyqueue.backends.redis.queue import check_name
    for bad in ("a{b", "c}d", "{x}"):
        with pytest.raises(ValueError, match="hash tag"):
            check_name(bad)
    assert check_name("orders.v2-eu") == "orders.v2-eu"
