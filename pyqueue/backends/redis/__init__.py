"""The Redis backend: pyqueue's classes over one redis-server or a Redis
Cluster, through redis-py (`pip install 'pyqueue-shm[redis]'`).

URLs:
    redis://[user:password@]host:port/db     one server over TCP
    rediss://...                             the same over TLS
    redis+unix:///path/to/redis.sock[?db=N]  one server over a Unix socket
    redis+cluster://host:port[,host:port...] a Redis Cluster (any nodes of it)

The documentation's Design page, "Backends", has the key layout and why.
"""
from __future__ import annotations

import hashlib
import inspect
import math
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

_IMPORT_ERROR: Optional[ImportError] = None
try:
    import redis as _redis
    import redis.cluster as _redis_cluster
    import redis.exceptions as _redis_exceptions
    _HAVE_REDIS = True
except ImportError as e:  # pragma: no cover - depends on the install
    _HAVE_REDIS = False
    _IMPORT_ERROR = e

from pyqueue import log as _shm_log
from pyqueue.backends.redis import _pack
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

    def __init__(self, message: str, replicas: int = 0, wanted: int = 0) -> None:
        super().__init__(message)
        self.replicas = replicas
        self.wanted = wanted


class ConnectionLost(PyQueueError, ConnectionError):
    """The connection to Redis was lost during a call of a queue, topic or
    log handle (one server or a cluster). Each step of a call is one Lua script, all or
    nothing: `sent` is False when the server never got this step (nothing
    of it applied: the server was down or unreachable, after redis-py's
    reconnect with backoff; on a cluster, no node took the slot within
    ~13 s of backoff), True when the connection dropped after it was
    sent (it may have been applied, its reply lost). Such a step is not
    sent again behind the caller's back: a replay could store a put twice,
    or take messages a second time while the first take's are lost. `ids`:
    what a put_many / append_many stored before this step (those are
    committed), or None. The handle stays usable: its next call
    reconnects."""

    def __init__(self, message: str, sent: bool = False, ids: Optional[List[Any]] = None
                 ) -> None:
        super().__init__(message)
        self.sent = sent
        self.ids = ids


_WAIT_PARAMS = ("min_replicas", "wait_timeout")
_UNSENT_TRIES = 8         # a step not sent, through a cluster's failover: ~13 s of backoff
_REDIRECTS = 16           # replies that say a step did not run (MOVED, ASK ...) in one call
_READ_MARGIN = 5.0        # seconds a blocking command's reply may take past its own timeout
_FOREVER_WINDOW = 60.0    # seconds of one command of a wait for good (blocking())
_SOCKET_DEFAULT = object()  # (_exchange: read with the connection's socket timeout)


def split_wait(url: str) -> Tuple[str, int, int]:
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


def parse_url(url: str) -> Tuple[str, Dict[str, Any]]:
    """(kind, options) for redis-py: kind is "single" or "cluster"."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if scheme in ("redis+unix", "unix"):
        if not parts.path:
            raise ValueError(f"no socket path in {url!r} (redis+unix:///path/to/redis.sock)")
        opts: Dict[str, Any] = {"unix_socket_path": unquote(parts.path),
                                "db": int(query.get("db", 0))}
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
        opts = {"nodes": nodes}  # (the same dict type as above)
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
    client: Union[_redis.Redis, _redis_cluster.RedisCluster]

    def __init__(self, url: str) -> None:
        if not _HAVE_REDIS:
            raise ImportError("the Redis backend needs redis-py: pip install 'pyqueue-shm[redis]'"
                              ) from _IMPORT_ERROR
        self.url = url
        plain, self.min_replicas, self.wait_timeout = split_wait(url)
        kind, opts = parse_url(plain)
        self.cluster = kind == "cluster"
        self._aio_args = (kind, dict(opts))   # pyqueue.asyncio's clients (aio.py)
        # RESP2 (the replies' shapes do not depend on redis-py's default);
        # bytes, not str: messages are bytes.
        common: Dict[str, Any] = {"protocol": 2, "decode_responses": False}
        if self.cluster:
            nodes = [_redis_cluster.ClusterNode(h, p) for h, p in opts.pop("nodes")]
            self.client = _redis_cluster.RedisCluster(startup_nodes=nodes, **common, **opts)
        elif "url" in opts:
            self.client = _redis.Redis.from_url(opts["url"], **common)
        else:
            self.client = _redis.Redis(**common, **opts)
        self._scripts: Dict[str, _Step] = {}
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

    def _bind(self, cls: type, attr: str) -> Any:
        return type(attr, (cls,), {"_backend": self, "_attr": attr, "__module__": cls.__module__,
                                   "__qualname__": f"RedisBackend.{attr}"})

    # -- helpers for the classes -----------------------------------------
    def script(self, name: str, source: str) -> _Step:
        """A registered Lua script (EVALSHA, loaded again after NOSCRIPT),
        run once per call (_Step); with min_replicas, each call is followed
        by WAIT on its connection."""
        s = self._scripts.get(name)
        if s is None:
            with self._lock:
                s = self._scripts.get(name)
                if s is None:
                    s = self._scripts[name] = _Step(self, source)
        return s

    @staticmethod
    def _block_seconds(left: Optional[float]) -> float:
        # Redis reads a blocking timeout of 0 as "forever": a deadline
        # under a millisecond away waits a millisecond instead.
        return 0 if left is None else max(left, 0.001)

    def blpop_any(self, keys: Sequence[str], left: Optional[float]) -> Any:
        """(key, head) of the first non-empty list of `keys` (one cluster
        slot), waiting up to `left` seconds (None: forever); None on
        timeout."""
        return self.blocking(keys, lambda s: ("BLPOP", *keys, s), self._block_seconds(left))

    def wait_stream(self, key: str, last_id: Any, left: Optional[float]) -> bool:
        """Waits (up to `left` seconds; None: forever) for an entry of
        stream `key` after `last_id`; True if one came."""
        return bool(self.xread_block({key: last_id}, 0 if left is None else
                                     max(1, math.ceil(left * 1000))))

    def xread_block(self, streams: Dict[str, Any], ms: int) -> Any:
        """XREAD COUNT 1 BLOCK ms on streams (one cluster slot; ms 0:
        forever) -> its raw reply (None: nothing came)."""
        keys = list(streams)
        return self.blocking(keys, lambda s: ("XREAD", "COUNT", 1, "BLOCK",
                                              max(1, math.ceil(s * 1000)), "STREAMS", *keys,
                                              *streams.values()), ms / 1000.0)

    def transaction(self, keys: Sequence[str], *commands: Tuple[Any, ...],
                    confirm: Optional[Callable[[List[Any]], bool]] = None) -> List[Any]:
        """commands as one MULTI/EXEC transaction (atomic) on the node of
        keys' slot (one slot), sent once like a step (_Step), with WAIT
        after it under min_replicas -> the replies of commands (an error
        reply as its exception object). For the batch steps whose messages
        must not pass through Lua (a plain command moves them; a script
        beside it decides and counts, with nothing in between): a script
        in a transaction is sent as EVAL, never EVALSHA, since a NOSCRIPT
        inside one would let the plain command run without its script.
        confirm(replies): as a script step's (_Step)."""
        wait = [("WAIT", self.min_replicas, self.wait_timeout)] if self.min_replicas else []
        replies = _send_once(self, keys, _Transaction(commands), wait, _SOCKET_DEFAULT,
                             "a call: {e} (the step was sent; it may have been applied)")
        if self.min_replicas and (confirm is None or confirm(replies[0])):
            check_replicated(self, replies[-1])
        result: List[Any] = replies[0]
        return result

    def call(self, keys: Sequence[str], *command: Any) -> Any:
        """One plain command on the node of keys' slot, sent once (no
        redis-py retry: ConnectionLost as a step) -> its reply."""
        return _send_once(self, keys, command, (), _SOCKET_DEFAULT,
                          "a call: {e} (it was sent; it may have been applied)")[0]

    def blocking(self, keys: Sequence[str], build: Callable[[float], Tuple[Any, ...]],
                 seconds: float) -> Any:
        """One blocking command (BLPOP, XREAD BLOCK), build(s) for a wait
        of s seconds, that waits up to `seconds` (0: for good) on the node
        of keys' slot -> its raw reply (None: nothing came). Each command
        is sent once and its reply read with a deadline of its own (its
        wait + _READ_MARGIN): with the client's socket timeout (redis-py's
        default is 5 s) a longer wait was cut, and redis-py's retry sent it
        again, so a get(timeout=12) raised TimeoutError after a minute and
        a BLPOP whose reply the cut lost had popped a message for nobody.
        A redirect (MOVED, ASK: nothing ran) sends it again for the time
        left, not the whole wait; a wait for good is made of waits of
        _FOREVER_WINDOW seconds, so a host gone without a word is found
        out (ConnectionLost) instead of waited on for ever."""
        while True:
            window = _FOREVER_WINDOW if seconds == 0 else seconds
            until = time.monotonic() + window
            reply = _send_once(
                self, keys, lambda: build(max(0.001, until - time.monotonic())), (),
                window + _READ_MARGIN,
                "a wait: {e} (it was sent; a message it took may be lost)")[0]
            if reply is not None or seconds != 0:
                return reply

    @property
    def cluster_client(self) -> _redis_cluster.RedisCluster:
        """The client of a cluster URL (TypeError for one server)."""
        if not isinstance(self.client, _redis_cluster.RedisCluster):
            raise TypeError(f"{self.url} is not a cluster URL")
        return self.client

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"<pyqueue backend {self.url}>"


def check_replicated(b: RedisBackend, replicas: Any) -> None:
    """WAIT's reply after a step of backend b (min_replicas): the error
    it is, or NotReplicated when fewer replicas than wanted confirmed."""
    if isinstance(replicas, Exception):
        raise replicas
    assert isinstance(replicas, int)
    if replicas < b.min_replicas:
        raise NotReplicated(
            f"the write was applied by the master but confirmed by {replicas} of the "
            f"{b.min_replicas} replicas wanted within {b.wait_timeout} ms: it may be lost "
            f"if the master fails", replicas=replicas, wanted=b.min_replicas)


class _Step:
    """A registered Lua script, run as one step of a call: sent once,
    never again behind the caller's back (see ConnectionLost), on one
    server and on a cluster alike; with min_replicas, followed by WAIT on
    the same connection (WAIT counts the replicas that have every write of
    that connection so far).

    The command goes to the node that holds the keys' slot (one server:
    the server), on a connection its pool has checked: connecting, with
    redis-py's backoff, comes before anything is sent. Replies that say
    the script did not run are handled here and the step sent again:
    MOVED (the slot moved: the slot map is patched), ASK (ASKING first),
    NOSCRIPT (loaded on that node), TRYAGAIN, CLUSTERDOWN, MASTERDOWN and
    a node that cannot be reached before sending (on a cluster: a
    failover under way; the slot map is read again after a backoff,
    _UNSENT_TRIES times). A connection lost once the step was sent
    raises ConnectionLost(sent=True): redis-py's own retry (the single
    client's Retry, the cluster client's cluster_error_retry_attempts and
    the pipeline's) is never used for a step, since a step whose reply
    was lost may have been applied."""

    def __init__(self, backend: RedisBackend, source: str) -> None:
        self._b = backend
        self._source = source.encode()
        self._sha = hashlib.sha1(self._source).hexdigest()

    def __call__(self, keys: Sequence[str] = (), args: Sequence[Any] = (),
                 confirm: Optional[Callable[[Any], bool]] = None) -> Any:
        """Runs the script -> its reply. confirm(reply), when given, says
        whether the step wrote what min_replicas must confirm: a step that
        only kept a count of the handle's own (a get that took nothing and
        counts itself in "waiting") raises no NotReplicated."""
        b = self._b
        keys = list(keys)
        evalsha: Tuple[Any, ...] = ("EVALSHA", self._sha, len(keys), *keys, *args)
        wait = [("WAIT", b.min_replicas, b.wait_timeout)] if b.min_replicas else []
        replies = _send_once(b, keys, evalsha, wait, _SOCKET_DEFAULT,
                             "a call: {e} (the step was sent; it may have been applied)",
                             self._load)
        if b.min_replicas and (confirm is None or confirm(replies[0])):
            check_replicated(b, replies[-1])
        return replies[0]

    def _load(self, node: _redis.Redis) -> None:
        """After NOSCRIPT (nothing ran): the script, loaded on that node."""
        try:
            node.script_load(self._source)    # idempotent: may be sent again
        except (_redis.ConnectionError, _redis.TimeoutError) as e:
            raise ConnectionLost(f"the connection to Redis at {self._b.url} was lost "
                                 f"loading a script: {e} (the step did not run)",
                                 sent=False) from e


class _Transaction(tuple):  # type: ignore[type-arg]
    """The commands of a MULTI/EXEC transaction, for _send_once."""


def _send_once(b: RedisBackend, keys: Sequence[str],
               command: Union[Tuple[Any, ...], Callable[[], Tuple[Any, ...]], _Transaction],
               tail: Sequence[Tuple[Any, ...]], read_timeout: Any, lost: str,
               load: Optional[Callable[[_redis.Redis], None]] = None) -> List[Any]:
    """Sends command (or what command() makes, at each try) and the
    commands of tail after it, on the same connection, once to the node of
    keys' slot -> the replies of command and tail. A _Transaction is sent
    as MULTI, its commands, EXEC: its reply is EXEC's (the list of its
    commands' replies), and when EXEC was refused (EXECABORT: none ran)
    the first error among its commands' replies is the one handled. The
    replies that say command did not run are handled here and it is sent
    again: MOVED (the slot map patched), ASK (ASKING first),
    NOSCRIPT (load(node) first), TRYAGAIN, CLUSTERDOWN, MASTERDOWN and a
    node that cannot be reached before sending (on a cluster, with
    backoff, _UNSENT_TRIES times; then ConnectionLost(sent=False)). A
    connection lost once sent raises ConnectionLost(sent=True), `lost`
    (with {e}) saying what of it may have happened."""
    asking: Optional[Tuple[str, int]] = None   # (host, port) an ASK redirect named
    unsent = 0           # tries that found no node to send to
    redirects = 0
    while True:
        try:
            node = _node_of(b, keys, asking)
            pool = node.connection_pool
            conn = pool.get_connection()
        except (_redis.ConnectionError, _redis.TimeoutError,
                _redis_exceptions.RedisClusterException) as e:
            if _back_off(b, unsent):
                unsent += 1
                asking = None
                continue
            raise ConnectionLost(f"cannot reach Redis at {b.url}: {e} (nothing of this "
                                 f"call's step was sent)", sent=False) from e
        # ASKING before MULTI holds for the whole transaction (Redis keeps
        # the flag inside MULTI).
        commands: List[Tuple[Any, ...]] = [("ASKING",)] if asking else []
        if isinstance(command, _Transaction):
            commands.append(("MULTI",))
            commands.extend(command)
            commands.append(("EXEC",))
        else:
            commands.append(command() if callable(command) else command)
        commands.extend(tail)
        try:
            replies = _exchange(node, conn, commands, read_timeout)
        except (_redis.ConnectionError, _redis.TimeoutError) as e:
            raise ConnectionLost(f"the connection to Redis at {b.url} was lost during "
                                 + lost.format(e=e), sent=True) from e
        finally:
            pool.release(conn)
        if asking:
            replies = replies[1:]
        if isinstance(command, _Transaction):
            queued, replies = replies[:len(command) + 2], replies[len(command) + 2:]
            result = queued[-1]
            if isinstance(result, _redis_exceptions.ExecAbortError):
                result = next((r for r in queued if isinstance(r, _redis_exceptions.ResponseError)
                               and not isinstance(r, _redis_exceptions.ExecAbortError)), result)
            elif isinstance(queued[0], _redis_exceptions.ResponseError):
                result = queued[0]          # MULTI refused (nested): EXEC's error says why
            replies = [result, *replies]
        else:
            result = replies[0]
        asking = None
        if not isinstance(result, _redis_exceptions.ResponseError):
            return replies
        redirects += 1
        if redirects > _REDIRECTS:
            raise result
        if isinstance(result, _redis_exceptions.NoScriptError) and load is not None:
            load(node)
        elif isinstance(result, _redis_exceptions.MovedError):   # (an AskError too)
            b.cluster_client.nodes_manager.move_slot(result)
        elif isinstance(result, _redis_exceptions.AskError):
            asking = b.cluster_client.nodes_manager.remap_host_port(result.host, result.port)
        elif isinstance(result, (_redis_exceptions.TryAgainError,
                                 _redis_exceptions.ClusterDownError,
                                 _redis_exceptions.MasterDownError)) and _back_off(b, unsent):
            unsent += 1
        else:
            raise result


def _node_of(b: RedisBackend, keys: Sequence[str],
             asking: Optional[Tuple[str, int]]) -> _redis.Redis:
    """The redis.Redis of the server to send to (a cluster: the node of
    the first key's slot, or the one an ASK named)."""
    if not isinstance(b.client, _redis_cluster.RedisCluster):
        return b.client
    c = b.client
    if asking:
        node = c.get_node(host=asking[0], port=asking[1])
        if node is None:
            node = _redis_cluster.ClusterNode(asking[0], asking[1])
            c.nodes_manager.create_redis_connections([node])
            r: _redis.Redis = node.redis_connection
            return r
    elif keys:
        node = c.get_node_from_key(keys[0])
    else:
        node = c.get_default_node()
    return c.get_redis_connection(node)


def _back_off(b: RedisBackend, tries: int) -> bool:
    """On a cluster, while tries are left: waits (exponential backoff: a
    failover takes a few node timeouts) and reads the slot map again;
    True to try again."""
    if not b.cluster or tries >= _UNSENT_TRIES:
        return False
    time.sleep(0.05 * 2 ** tries)     # the cluster fails over meanwhile
    try:
        b.cluster_client.nodes_manager.initialize()
    except (_redis.RedisError, _redis_exceptions.RedisClusterException):
        pass                          # no node answered yet: the next try reads it again
    return True


_TIMEOUT_KW: Dict[type, bool] = {}   # connection class -> read_response takes timeout=


def _read_reply(conn: Any, timeout: Optional[float]) -> Any:
    """conn's next reply, raw, read with a deadline of `timeout` seconds
    (None: none) instead of the socket's own timeout. redis-py 8 takes it
    as read_response(timeout=); before (7.x on Python 3.9, 5.x) the socket's
    timeout is set for this read and put back after."""
    takes = _TIMEOUT_KW.get(type(conn))
    if takes is None:
        takes = _TIMEOUT_KW[type(conn)] = (
            "timeout" in inspect.signature(conn.read_response).parameters)
    if takes:
        return conn.read_response(timeout=timeout)
    sock = conn._sock
    sock.settimeout(timeout)
    try:
        return conn.read_response()
    finally:
        if conn._sock is sock:        # (not disconnected by a failed read)
            sock.settimeout(conn.socket_timeout)


def _exchange(node: _redis.Redis, conn: Any, commands: List[Tuple[Any, ...]],
              read_timeout: Any = _SOCKET_DEFAULT) -> List[Any]:
    """Sends commands in one write on conn and reads a reply for each (an
    error reply as its exception object, so every reply is read and the
    connection stays in step), raw, each read with read_timeout (seconds,
    None: none; default: the connection's socket timeout, and the reply
    parsed as redis-py does). A connection or timeout error disconnects
    conn and is raised."""
    try:
        conn.send_packed_command(_pack.pack_commands(conn, commands), check_health=False)
        replies: List[Any] = []
        for command in commands:
            try:
                if read_timeout is _SOCKET_DEFAULT:
                    replies.append(node.parse_response(conn, command[0]))
                else:
                    replies.append(_read_reply(conn, read_timeout))
            except _redis_exceptions.ResponseError as e:
                replies.append(e)
        return replies
    except BaseException:
        conn.disconnect()
        raise


def _register() -> None:
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
