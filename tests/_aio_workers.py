"""Child-process targets of tests/test_asyncio.py (module level, so that
processes started with ``spawn`` can import them)."""


def put_range(q, start, n):
    """Put start .. start + n - 1 on a (synchronous) queue or work queue."""
    for i in range(start, start + n):
        q.put(i)


def publish_range(t, start, n):
    """Publish start .. start + n - 1 on a (synchronous) topic."""
    for i in range(start, start + n):
        t.publish(i)


def append_range(log, n):
    """Append 0 .. n - 1 to a (synchronous) log, key "k"."""
    for i in range(n):
        log.append(i, key="k")


def echo(requests, replies, n):
    """Ping-pong: n times, wait for a request and put it back as a reply."""
    for _ in range(n):
        replies.put(requests.get(timeout=30))


def drain_and_mark_done(q, n):
    """Take n messages from a (synchronous) JoinableQueue, marking each done."""
    for _ in range(n):
        q.get(timeout=30)
        q.task_done()


def take(q, n, out):
    """Take n messages (synchronously) and report them."""
    out.put([q.get(timeout=30) for _ in range(n)])


def async_consume(q, n, out):
    """In a child: take n messages with the asyncio API (its own loop and
    waiter thread, also after a fork from a parent that had one) and
    report them."""
    import asyncio

    import pyqueue.asyncio as aq

    async def main():
        aqq = q if isinstance(q, aq.Queue) else aq.Queue.from_sync(q)
        return [await aqq.get(timeout=30) for _ in range(n)]

    out.put(asyncio.run(main()))


def take_and_ack(q, n, out):
    """Take n deliveries from a (synchronous) WorkQueue, ack each, report the values."""
    got = []
    for _ in range(n):
        d = q.get(timeout=30)
        d.ack()
        got.append(d.value)
    out.put(got)


def read_subscription(sub_topic, n, out, ready, go):
    """Subscribe to a (synchronous) lossless topic, say so, wait for go,
    then read n messages."""
    sub = sub_topic.subscribe()
    ready.put(True)
    go.get(timeout=60)
    out.put([sub.get(timeout=30) for _ in range(n)])
    sub.close()


def async_reserve_and_wait(q, lease, then, ready):
    """In a child: an async Redis Queue handle with a lease of `lease`
    seconds takes "a" and, with then == "lost-reply", runs one more get's
    step and drops its reply (as a get cancelled after the server ran it
    leaves it: "a" counted, "b" in the reservation); reports its handle
    id, then waits until it is killed."""
    import asyncio

    from pyqueue.backends.redis import aio
    aio.LEASE_SECONDS = lease

    async def main():
        assert await q.get(timeout=30) == "a"
        if then == "lost-reply":
            await aio.script(q._backend(), aio._ATAKE, q._rkeys(), q._targs(1))
        ready.put(q._id)
        await asyncio.Event().wait()        # until SIGKILL

    asyncio.run(main())


def put_one(q, obj):
    """Put obj (waiting for room as long as it takes)."""
    q.put(obj)


def async_blocked_get(q, lease, ready):
    """In a child: an async Redis Queue handle with a lease of `lease`
    seconds, alone, gets from an empty queue with no timeout (its wait is
    a BLMOVE on the server); reports that it starts, then waits."""
    import asyncio

    from pyqueue.backends.redis import aio
    aio.LEASE_SECONDS = lease

    async def main():
        ready.put("waiting")
        await q.get()

    asyncio.run(main())
