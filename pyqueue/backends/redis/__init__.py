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
import time
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

try:
    import redis as _redis
    import redis.cluster as _redis_cluster
except ImportError as e:  # pragma: no cover - depends on the install
    _redis = None
    _IMPORT_ERROR = e

from pyqueue import log as _shm_log
from pyqueue.errors import PyQueueError
from pyqueue import queues as _shm_queues
from pyqueue import topic as _shm_topic
from pyqueue import workqueue as _shm_workqueue

__all__ = ["RedisBackend", "ConnectionLost", "NotReplicated", "parse_url"]


class NotReplicated(PyQueueError, TimeoutError):
    """A write of a backend made with min_replicas=N was applied by the
    master, but fewer than N replicas confirmed it within wait_timeout ms
    (WAIT): it may be lost if the master fails now. Attributes: replicas
    (how many confirmed), wanted."""

    def __init__(self, message, replicas=0, wanted=0):
        super().__init__(message)
        self.replicas = replicas
        self.wanted = wanted


class ConnectionLost(PyQueueError, ConnectionError):
    """The connection to Redis was lost during a call of a queue, topic or
    log handle on one server. Each step of a call is one Lua script, all or
    nothing: `sent` is False when the server never got this step (nothing
    of it applied: the server was down or unreachable, after redis-py's
    reconnect with backoff), True when the connection dropped after it was
    sent (it may have been applied, its reply lost). Such a step is not
    sent again behind the caller's back: a replay could store a put twice,
    or take messages a second time while the first take's are lost. `ids`:
    what a put_many / append_many stored before this step (those are
    committed), or None. The handle stays usable: its next call
    reconnects."""

    def __init__(self, message, sent=False, ids=None):
        super().__init__(message)
        self.sent = sent
        self.ids = ids


_WAIT_PARAMS = ("min_replicas", "wait_timeout")
_WAITED_TRIES = 8         # a write under min_replicas through a failover: ~6 s of backoff


def split_wait(url):
    """(url without min_replicas/wait_timeout, min_replicas, wait_timeout ms)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    mine = {k: query.pop(k)[-1] for k in _WAIT_PARAMS if k in query}
    try:
        n = int(mine.get("min_replicas", 0))
        ms = int(mine.get("wait_timeout", 1000))
    except ValueError:
        raise ValueError(f"min_replicas and wait_timeout (ms) must be ints in {url!r}") from None
    if n < 0 or ms < 1:
        raise ValueError(f"min_replicas must be >= 0 and wait_timeout >= 1 ms in {url!r}")
    if not mine:
        return url, n, ms
    rest = urlencode([(k, v) for k, vs in query.items() for v in vs])
    plain = f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{rest}" if rest else "")
    return plain, n, ms


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
    consumer groups are pyqueue.Consumer over Lua scripts: groups.py)."""

    name = "redis"

    def __init__(self, url):
        if _redis is None:
            raise ImportError("the Redis backend needs redis-py: pip install 'pyqueue[redis]'"
                              ) from _IMPORT_ERROR
        self.url = url
        plain, self.min_replicas, self.wait_timeout = split_wait(url)
        kind, opts = parse_url(plain)
        self.cluster = kind == "cluster"
        self._aio_args = (kind, dict(opts))   # pyqueue.asyncio's clients (aio.py)
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
        return type(attr, (cls,), {"_backend": self, "_attr": attr, "__module__": cls.__module__,
                                   "__qualname__": f"RedisBackend.{attr}"})

    # -- helpers for the classes -----------------------------------------
    def script(self, name, source):
        """A registered Lua script (EVALSHA, loaded again after NOSCRIPT);
        with min_replicas, each call is followed by WAIT on its connection."""
        s = self._scripts.get(name)
        if s is None:
            with self._lock:
                s = self._scripts.get(name)
                if s is None:
                    s = self.client.register_script(source)
                    if self.min_replicas:
                        s = _Waited(self, s)
                    elif not self.cluster:
                        s = _Once(self, s)
                    self._scripts[name] = s
        return s

    @staticmethod
    def _block_seconds(left):
        # Redis reads a blocking timeout of 0 as "forever": a deadline
        # under a millisecond away waits a millisecond instead.
        return 0 if left is None else max(left, 0.001)

    def blpop_any(self, keys, left):
        """(key, head) of the first non-empty list of `keys` (one cluster
        slot), waiting up to `left` seconds (None: forever); None on
        timeout."""
        return self.client.blpop(keys, timeout=self._block_seconds(left))

    def wait_stream(self, key, last_id, left):
        """Waits (up to `left` seconds; None: forever) for an entry of
        stream `key` after `last_id`; True if one came."""
        ms = 0 if left is None else max(1, math.ceil(left * 1000))
        return bool(self.client.xread({key: last_id}, count=1, block=ms))

    def close(self):
        self.client.close()

    def __repr__(self):
        return f"<pyqueue backend {self.url}>"


class _Once:
    """A script run once per call on one server: connecting (redis-py's
    reconnect with backoff) comes before the command is sent, and a
    connection lost after it was sent raises ConnectionLost instead of
    redis-py's retry sending it again (see ConnectionLost). As a Script's
    `client`: its evalsha sends on a connection of the pool itself."""

    def __init__(self, backend, script):
        self._b = backend
        self._script = script

    def __call__(self, keys=(), args=()):
        return self._script(keys=keys, args=args, client=self)

    def evalsha(self, sha, numkeys, *args):
        client = self._b.client
        pool = client.connection_pool
        try:
            conn = pool.get_connection()
        except (_redis.ConnectionError, _redis.TimeoutError) as e:
            raise ConnectionLost(f"cannot reach Redis at {self._b.url}: {e} (nothing of this "
                                 f"call's step was sent)", sent=False) from e
        try:
            conn.send_command("EVALSHA", sha, numkeys, *args)
            return client.parse_response(conn, "EVALSHA")
        except (_redis.ConnectionError, _redis.TimeoutError) as e:
            conn.disconnect()
            raise ConnectionLost(f"the connection to Redis at {self._b.url} was lost during a "
                                 f"call: {e} (the step was sent; it may have been applied)",
                                 sent=True) from e
        finally:
            pool.release(conn)

    def script_load(self, source):
        return self._b.client.script_load(source)


class _Waited:
    """A script followed by WAIT min_replicas wait_timeout on the same
    connection (a pipeline to the node that holds the keys): WAIT counts
    the replicas that have every write of that connection so far."""

    def __init__(self, backend, script):
        self._b = backend
        self._script = script

    def __call__(self, keys=(), args=()):
        b = self._b
        for attempt in range(_WAITED_TRIES):
            if b.cluster:
                node = b.client.get_node_from_key(keys[0]).redis_connection
            else:
                node = b.client
            pipe = node.pipeline(transaction=False)
            self._script(keys=keys, args=args, client=pipe)
            pipe.wait(b.min_replicas, b.wait_timeout)
            try:
                result, replicas = pipe.execute()
                break
            except (_redis.ConnectionError, _redis.TimeoutError, _redis.ResponseError) as e:
                # This bypasses the cluster client (WAIT must follow the
                # write on its connection), so its redirects and failovers
                # are handled here: look at the cluster again and retry
                # (a write whose reply was lost may be applied twice).
                if (not b.cluster or attempt == _WAITED_TRIES - 1 or
                        (isinstance(e, _redis.ResponseError) and
                         not str(e).startswith(("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN")))):
                    raise
                time.sleep(0.05 * 2 ** attempt)   # back off while the cluster fails over
                b.client.nodes_manager.initialize()
        if replicas < b.min_replicas:
            raise NotReplicated(f"the write was applied by the master but confirmed by "
                                f"{replicas} of the {b.min_replicas} replicas wanted within "
                                f"{b.wait_timeout} ms: it may be lost if the master fails",
                                replicas=replicas, wanted=b.min_replicas)
        return result


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
