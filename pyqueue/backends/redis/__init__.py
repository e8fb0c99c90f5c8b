"""The Redis backend: pyqueue's classes over one redis-server or a Redis
Cluster, through redis-py (`pip install pyqueue[redis]`).

URLs:
    redis://[user:password@]host:port/db     one server over TCP
    rediss://...                             the same over TLS
    redis+unix:///path/to/redis.sock[?db=N]  one server over a Unix socket
    redis+cluster://host:port[,host:port...] a Redis Cluster (any nodes of it)

docs/design.md, "Backends", has the key layout and why.
"""
import math
import threading
from urllib.parse import parse_qs, unquote, urlsplit

try:
    import redis as _redis
    import redis.cluster as _redis_cluster
except ImportError as e:  # pragma: no cover - depends on the install
    _redis = None
    _IMPORT_ERROR = e

from pyqueue import log as _shm_log
from pyqueue import queues as _shm_queues
from pyqueue import topic as _shm_topic
from pyqueue import workqueue as _shm_workqueue

__all__ = ["RedisBackend", "parse_url"]


def parse_url(url):
    """(kind, options) for redis-py: kind is "single" or "cluster"."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if scheme in ("redis+unix", "unix"):
        if not parts.path:
            raise ValueError(f"no socket path in {url!r} (redis+unix:///path/to/redis.sock)")
        opts = {"unix_socket_path": unquote(parts.path), "db": int(query.get("db", 0))}
        if parts.username:
            opts["username"] = unquote(parts.username)
        if parts.password:
            opts["password"] = unquote(parts.password)
        return "single", opts
    if scheme == "redis+cluster":
        nodes = []
        hostports = parts.netloc.rsplit("@", 1)[-1]
        for hp in filter(None, hostports.split(",")):
            host, sep, port = hp.rpartition(":")
            if not sep or not port.isdigit():
                raise ValueError(f"cluster node {hp!r} in {url!r} is not host:port")
            nodes.append((host.strip("[]"), int(port)))
        if not nodes:
            raise ValueError(f"no cluster node in {url!r} (redis+cluster://host:port,...)")
        opts = {"nodes": nodes}
        if "@" in parts.netloc:
            cred = parts.netloc.rsplit("@", 1)[0]
            user, _, password = cred.partition(":")
            if user:
                opts["username"] = unquote(user)
            if password:
                opts["password"] = unquote(password)
        return "cluster", opts
    if scheme in ("redis", "rediss"):
        return "single", {"url": url}
    raise ValueError(f"not a Redis URL: {url!r}")


class RedisBackend:
    """pyqueue over Redis. Its attributes Queue, JoinableQueue, WorkQueue,
    Topic, Log are classes bound to this backend's connection pool (a Log's
    consumer groups are not there yet: NotImplementedError)."""

    name = "redis"

    def __init__(self, url):
        if _redis is None:
            raise ImportError("the Redis backend needs redis-py: pip install 'pyqueue[redis]'"
                              ) from _IMPORT_ERROR
        self.url = url
        kind, opts = parse_url(url)
        self.cluster = kind == "cluster"
        # RESP2 (the replies' shapes do not depend on redis-py's default);
        # bytes, not str: messages are bytes.
        common = {"protocol": 2, "decode_responses": False}
        if self.cluster:
            nodes = [_redis_cluster.ClusterNode(h, p) for h, p in opts.pop("nodes")]
            self.client = _redis_cluster.RedisCluster(startup_nodes=nodes, **common, **opts)
        elif "url" in opts:
            self.client = _redis.Redis.from_url(opts["url"], **common)
        else:
            self.client = _redis.Redis(**common, **opts)
        self._scripts = {}
        self._lock = threading.Lock()
        from pyqueue.backends.redis.queue import RedisJoinableQueue, RedisQueue
        from pyqueue.backends.redis.log import RedisLog
        from pyqueue.backends.redis.topic import RedisTopic
        from pyqueue.backends.redis.workqueue import RedisWorkQueue
        self.Queue = self._bind(RedisQueue, "Queue")
        self.JoinableQueue = self._bind(RedisJoinableQueue, "JoinableQueue")
        self.WorkQueue = self._bind(RedisWorkQueue, "WorkQueue")
        self.Topic = self._bind(RedisTopic, "Topic")
        self.Log = self._bind(RedisLog, "Log")

    def _bind(self, cls, attr):
        return type(attr, (cls,), {"_backend": self, "__module__": cls.__module__,
                                   "__qualname__": f"RedisBackend.{attr}"})

    # -- helpers for the classes -----------------------------------------
    def script(self, name, source):
        """A registered Lua script (EVALSHA, loaded again after NOSCRIPT)."""
        s = self._scripts.get(name)
        if s is None:
            with self._lock:
                s = self._scripts.get(name)
                if s is None:
                    s = self._scripts[name] = self.client.register_script(source)
        return s

    @staticmethod
    def _block_seconds(left):
        # Redis reads a blocking timeout of 0 as "forever": a deadline
        # under a millisecond away waits a millisecond instead.
        return 0 if left is None else max(left, 0.001)

    def blpop(self, key, left):
        """The head of list `key`, waiting up to `left` seconds (None:
        forever); None on timeout."""
        r = self.client.blpop([key], timeout=self._block_seconds(left))
        return None if r is None else r[1]

    def wait_stream(self, key, last_id, left):
        """Waits (up to `left` seconds; None: forever) for an entry of
        stream `key` after `last_id`; True if one came."""
        ms = 0 if left is None else max(1, math.ceil(left * 1000))
        return bool(self.client.xread({key: last_id}, count=1, block=ms))

    def close(self):
        self.client.close()

    def __repr__(self):
        return f"<pyqueue backend {self.url}>"


def _register():
    # isinstance(b.Queue(...), pyqueue.Queue) for every backend: the public
    # classes are ABCs (metaclass ABCMeta) and these are their virtual
    # subclasses; the shared-memory classes keep their Cython methods.
    from pyqueue.backends.redis.queue import RedisJoinableQueue, RedisQueue
    from pyqueue.backends.redis.log import RedisLog
    from pyqueue.backends.redis.topic import RedisSubscription, RedisTopic
    from pyqueue.backends.redis.workqueue import RedisWorkQueue
    _shm_topic.Topic.register(RedisTopic)
    _shm_log.Log.register(RedisLog)
    _shm_topic.Subscription.register(RedisSubscription)
    _shm_queues.Queue.register(RedisQueue)
    _shm_queues.JoinableQueue.register(RedisJoinableQueue)
    _shm_workqueue.WorkQueue.register(RedisWorkQueue)


_register()
