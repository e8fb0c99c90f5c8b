"""Backends: the same public classes over shared memory or Redis.

    import pyqueue
    b = pyqueue.connect()                           # PYQUEUE_URL, else "shm://"
    b = pyqueue.connect("redis://localhost:6379/0")
    b = pyqueue.connect("redis+unix:///run/redis.sock?db=0")
    b = pyqueue.connect("redis+cluster://h1:7000,h2:7001")
    q = b.Queue(maxsize=100, name="jobs")

A backend is an object whose attributes `Queue`, `JoinableQueue`,
`WorkQueue`, `Topic`, `Log` are the classes of that backend (same
constructor signatures, `open()` classmethods and methods as pyqueue.Queue
and the others). The documentation's Design page, "Backends".
"""
from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple, Type, cast
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from typing import Protocol

    from pyqueue.log import Log
    from pyqueue.queues import JoinableQueue, Queue
    from pyqueue.topic import Topic
    from pyqueue.workqueue import WorkQueue

    class Backend(Protocol):
        """What connect() returns: the classes of one backend (instances
        of a Redis backend's classes are instances of the public classes
        too: they register as virtual subclasses)."""

        url: str
        name: str
        Queue: Type[Queue[Any]]
        JoinableQueue: Type[JoinableQueue[Any]]
        WorkQueue: Type[WorkQueue[Any]]
        Topic: Type[Topic[Any]]
        Log: Type[Log[Any]]

        def close(self) -> None: ...

ENV_URL = "PYQUEUE_URL"
DEFAULT_URL = "shm://"

_cache: Dict[Tuple[int, str], Any] = {}
_cache_lock = threading.Lock()


class ShmBackend:
    """Today's shared-memory classes, unchanged: b.Queue is pyqueue.Queue."""

    url = DEFAULT_URL
    name = "shm"

    def __init__(self) -> None:
        from pyqueue.log import Log
        from pyqueue.queues import JoinableQueue, Queue, SimpleQueue
        from pyqueue.topic import Topic
        from pyqueue.workqueue import WorkQueue
        self.Queue = Queue
        self.JoinableQueue = JoinableQueue
        self.SimpleQueue = SimpleQueue
        self.WorkQueue = WorkQueue
        self.Topic = Topic
        self.Log = Log

    def close(self) -> None:
        """Nothing to release: the classes hold no connection."""

    def __repr__(self) -> str:
        return "<pyqueue backend shm://>"


def _scheme(url: object) -> str:
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    scheme = urlsplit(url).scheme.lower()
    if not scheme:
        raise ValueError(f"not a pyqueue URL: {url!r} (shm://, redis://host:port/db, "
                         "redis+unix:///path, redis+cluster://host:port,host:port)")
    return scheme


def connect(url: Optional[str] = None) -> "Backend":
    """The backend a URL names, with the classes of that backend.

    One backend object per URL and process (a forked child gets its own
    connections).

    Args:
        url: "shm://" (the default), "redis://host:port/db", "rediss://...",
            "redis+unix:///path?db=N", "redis+cluster://h1:p1,h2:p2". None:
            the environment variable PYQUEUE_URL, else "shm://".

    Returns:
        An object whose attributes Queue, JoinableQueue, WorkQueue, Topic
        and Log are that backend's classes (the shared-memory one also has
        SimpleQueue).

    Raises:
        TypeError: url is not a str.
        ValueError: not a pyqueue URL, or an unknown scheme.
        ImportError: a Redis URL without redis-py installed.
    """
    if url is None:
        url = os.environ.get(ENV_URL) or DEFAULT_URL
    scheme = _scheme(url)
    key = (os.getpid(), url)
    with _cache_lock:
        backend: Any = _cache.get(key)
        if backend is not None:
            return cast("Backend", backend)
        if scheme == "shm":
            if url.rstrip("/") not in ("shm:", "shm:/"):
                raise ValueError(f"the shared-memory backend takes no address: {url!r} "
                                 "(use 'shm://')")
            backend = ShmBackend()
        elif scheme in ("redis", "rediss", "redis+unix", "unix", "redis+cluster"):
            from pyqueue.backends.redis import RedisBackend
            backend = RedisBackend(url)
        else:
            raise ValueError(f"unknown pyqueue backend {scheme!r} in {url!r} (shm, redis, "
                             "rediss, redis+unix, redis+cluster)")
        # Entries of other processes (before a fork) are dropped: their
        # connections belong to the parent.
        for k in [k for k in _cache if k[0] != key[0]]:
            del _cache[k]
        _cache[key] = backend
        return cast("Backend", backend)
