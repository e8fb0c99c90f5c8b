"""Child-process targets of tests/contract/test_redis_asyncio_log.py
(module level, so that processes started with ``spawn`` can import them)."""
import asyncio


def append_values(log, values, keys):
    """Append each value of values to a (synchronous) log, with the key
    keys[i % len(keys)] (None: round-robin)."""
    for i, v in enumerate(values):
        log.append(v, key=keys[i % len(keys)])


def async_member(log, group, report, max_poll_interval):
    """An asyncio member of group (pyqueue.asyncio over the Redis log): it
    reports its assignment once it holds partitions, then polls (and
    commits) for ever, until it is killed."""
    import pyqueue.asyncio as aq

    async def main():
        c = aq.Log.from_sync(log).consumer(group, max_poll_interval=max_poll_interval)
        reported = False
        while True:
            await c.poll(timeout=0.2)
            if not reported and c.assignment():
                report.put(c.assignment())
                reported = True

    asyncio.run(main())
