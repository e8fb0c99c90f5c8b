"""WorkQueue on Redis (in progress)."""
from pyqueue import _api


class RedisWorkQueue(_api.WorkQueueAPI):
    __slots__ = ()
    _backend = None

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("WorkQueue on Redis is not there yet (issue 10)")
