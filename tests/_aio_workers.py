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
