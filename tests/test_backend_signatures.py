"""One API on every backend, down to the signatures: each public method of
a shared-memory class (pyqueue's and pyqueue.asyncio's) exists on its
Redis twin with the same parameters (names, kinds, defaults), so a
program that moves by URL calls nothing the other backend lacks or reads
differently. (The Redis asyncio WorkQueue.get had a `block` parameter the
shared-memory one does not have: a program written against Redis broke on
shared memory.) Annotations are not compared: a Redis class returns its
own handle types. The contract suite (tests/contract/) checks the
behaviour behind the signatures.
"""
import inspect
import re

import pytest

import pyqueue
import pyqueue.asyncio as aq

pytestmark = pytest.mark.redis
redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install redis)")

from pyqueue.backends.redis import aio as _ra  # noqa: E402
from pyqueue.backends.redis import aio_log as _ral  # noqa: E402
from pyqueue.backends.redis import log as _rlog  # noqa: E402
from pyqueue.backends.redis import queue as _rq  # noqa: E402
from pyqueue.backends.redis import topic as _rt  # noqa: E402
from pyqueue.backends.redis import workqueue as _rw  # noqa: E402

PAIRS = {
    "Queue": (pyqueue.Queue, _rq.RedisQueue),
    "JoinableQueue": (pyqueue.JoinableQueue, _rq.RedisJoinableQueue),
    "WorkQueue": (pyqueue.WorkQueue, _rw.RedisWorkQueue),
    "Topic": (pyqueue.Topic, _rt.RedisTopic),
    "Log": (pyqueue.Log, _rlog.RedisLog),
    "Subscription": (pyqueue.Subscription, _rt.RedisSubscription),
    "asyncio.Queue": (aq.Queue, _ra.RedisQueue),
    "asyncio.JoinableQueue": (aq.JoinableQueue, _ra.RedisJoinableQueue),
    "asyncio.WorkQueue": (aq.WorkQueue, _ra.RedisWorkQueue),
    "asyncio.Topic": (aq.Topic, _ra.RedisTopic),
    "asyncio.Subscription": (aq.Subscription, _ra.RedisSubscription),
    "asyncio.Delivery": (aq.Delivery, _ra.RedisDelivery),
    "asyncio.Batch": (aq.Batch, _ra.RedisBatch),
    "asyncio.Log": (aq.Log, _ral.RedisLog),
    "asyncio.Consumer": (aq.Consumer, _ral.RedisConsumer),
}

# Public names of a shared-memory class that its Redis twin need not
# have, and why.
SHM_ONLY = {
    # the ring's own figures (the bytes a message may take in the ring,
    # the overflow and subscription modes as the C core's codes): no ring
    # on Redis
    "Queue": {"inline_max", "overflow_code"},
    "JoinableQueue": {"inline_max", "overflow_code"},
    "Topic": {"mode_code"},
}

# Methods whose signatures differ on purpose, and why (none now: before,
# Log.open took (name_or_path, **kwargs) on shared memory and (name,
# trust_owner=False, *, serializer=None) on Redis).
DIFFERENT = set()


def _params(f):
    sig = inspect.signature(f)
    return [(p.name, p.kind.name, repr(p.default)) for p in sig.parameters.values()]


def _public(cls):
    return {n for n in dir(cls) if not n.startswith("_")}


def _set_in_init(cls):
    """The public attributes a Python class's __init__ (or a base's) sets
    on each instance (self.name = ...): not in dir() of the class."""
    names = set()
    for k in cls.__mro__:
        init = vars(k).get("__init__")
        if init is not None and inspect.isfunction(init):
            names |= set(re.findall(r"\bself\.([a-z]\w*)\s*=[^=]", inspect.getsource(init)))
    return names


@pytest.mark.parametrize("what", sorted(PAIRS))
def test_the_redis_class_has_every_public_name_of_the_shared_memory_one(what):
    shm, red = PAIRS[what]
    missing = _public(shm) - _public(red) - _set_in_init(red) - SHM_ONLY.get(what, set())
    assert missing == set(), f"{what}: not on Redis: {sorted(missing)}"


@pytest.mark.parametrize("what", sorted(PAIRS))
def test_the_methods_take_the_same_parameters(what):
    shm, red = PAIRS[what]
    differ = {}
    compared = 0
    for name in sorted(_public(shm) & _public(red)):
        a, b = getattr(shm, name), getattr(red, name)
        if isinstance(a, type) or not callable(a) or not callable(b):
            continue
        compared += 1
        pa, pb = _params(a), _params(b)
        if pa != pb and (what, name) not in DIFFERENT:
            differ[name] = (pa, pb)
    assert compared > 0
    assert differ == {}, f"{what}: (shared memory, Redis): {differ}"
