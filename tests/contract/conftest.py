"""The contract suite: one set of tests, run against every backend.

The `backend` fixture is parametrized over "shm" (today's shared-memory
classes), "redis" (one redis-server on a Unix socket) and "redis-cluster"
(3 masters + 3 replicas on loopback ports), as uvloop runs one suite
against two event loops. The servers are real (tests/redis_support.py),
started once per session, on first use, and stopped at its end.
"""
import shutil
import tempfile
import uuid

import pytest

from tests import redis_support

# "redis" marks the Redis ones: the sanitizer stage of .ci/run deselects
# them (pure Python over redis-py: nothing of the C core to check there).
BACKENDS = ["shm", pytest.param("redis", marks=pytest.mark.redis),
            pytest.param("redis-cluster", marks=pytest.mark.redis)]


def _server(request, make):
    if not redis_support.available():
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    pytest.importorskip("redis", reason="redis-py is not installed (pip install redis)")
    directory = tempfile.mkdtemp(prefix="pq-redis-")
    request.addfinalizer(lambda: shutil.rmtree(directory, ignore_errors=True))
    server = make(directory)
    request.addfinalizer(server.stop)
    return server


@pytest.fixture(scope="session")
def redis_server(request):
    """One redis-server on a Unix socket (started on first use)."""
    return _server(request, redis_support.RedisServer)


@pytest.fixture(scope="session")
def redis_cluster(request):
    """A 3-master/3-replica Redis Cluster on 127.0.0.1 (started on first use)."""
    return _server(request, redis_support.RedisCluster)


class Made:
    """What a test made on a backend, removed at its end."""

    def __init__(self, backend):
        self.backend = backend
        self._made = []

    def name(self):
        return "c-" + uuid.uuid4().hex[:12]

    def __call__(self, kind, *args, **kwargs):
        obj = getattr(self.backend, kind)(*args, **kwargs)
        self._made.append(obj)
        return obj

    def cleanup(self):
        for obj in reversed(self._made):
            try:
                obj.unlink()
            except FileNotFoundError:
                pass
            obj.close()


def _url(request, which):
    if which == "shm":
        return "shm://"
    if which == "redis":
        return request.getfixturevalue("redis_server").url
    return request.getfixturevalue("redis_cluster").url


@pytest.fixture(params=BACKENDS)
def backend_url(request):
    return _url(request, request.param)


@pytest.fixture
def backend(backend_url):
    import pyqueue
    return pyqueue.connect(backend_url)


@pytest.fixture
def make(backend):
    """make("Queue", maxsize, name=...): a class of the backend under test,
    called; unlinked and closed at the test's end."""
    made = Made(backend)
    yield made
    made.cleanup()


@pytest.fixture(params=BACKENDS[1:])
def redis_url(request):
    """The URL of one Redis server, then of the cluster (the asyncio Redis
    tests: they have no shared-memory case)."""
    return _url(request, request.param)


@pytest.fixture
def ab(redis_url):
    """pyqueue.asyncio.connect(redis_url)."""
    import pyqueue.asyncio as aq
    return aq.connect(redis_url)
