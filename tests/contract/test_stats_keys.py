"""Every stats() key of a shared-memory Queue, JoinableQueue, WorkQueue and
Topic is a stats() key of the same class on Redis (which adds its own)."""
import pytest

import pyqueue

pytestmark = [pytest.mark.timeout(60), pytest.mark.redis]  # a real redis-server


@pytest.mark.parametrize("kind", ["Queue", "JoinableQueue", "WorkQueue", "Topic"])
def test_redis_stats_have_every_shared_memory_key(redis_server, kind):
    shm = getattr(pyqueue, kind)()
    b = pyqueue.connect(redis_server.url)
    red = getattr(b, kind)(name=f"stats-keys-{kind}") if kind in ("Queue", "JoinableQueue") \
        else getattr(b, kind)(f"stats-keys-{kind}")
    try:
        missing = set(shm.stats()) - set(red.stats())
        assert not missing, f"Redis {kind}.stats() lacks {sorted(missing)}"
        assert red.stats()["backend"] == "redis"
    finally:
        red.unlink()
        shm.close()
        if kind == "WorkQueue" or kind == "Topic":
            shm.unlink()
