"""How long calls that do not block by their API (WorkQueue ack/nack/...,
Log append and commit, consumer-group changes) wait for a lock held by
another process before they raise pyqueue.LockTimeout: 10 s by default, or
PYQUEUE_LOCK_WAIT seconds from the environment when pyqueue is imported, or
what set_lock_wait() says. Blocking calls wait
as their timeout says."""
from pyqueue import _core, _log, _topic, _workq


def set_lock_wait(seconds=None):
    """Set the wait of every kind (None: the environment's, else the
    default). Process-wide; a forked child inherits it."""
    for mod in (_core, _topic, _log, _workq):
        mod._set_lock_wait(seconds)
