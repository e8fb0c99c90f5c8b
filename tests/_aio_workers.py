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


def _refuse_io_uring():
    """Install a seccomp filter on this process that refuses io_uring_setup
    with EPERM, as container runtimes' default profiles do (the syscall is
    425 on every architecture)."""
    import ctypes

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte),
                    ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    ld_nr, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|W|ABS of seccomp_data.nr, BPF_JMP|JEQ|K, BPF_RET|K
    rules = [Filter(ld_nr, 0, 0, 0), Filter(jeq, 0, 1, 425),
             Filter(ret, 0, 0, 0x00050000 | 1),  # SECCOMP_RET_ERRNO | EPERM
             Filter(ret, 0, 0, 0x7FFF0000)]      # SECCOMP_RET_ALLOW
    table = (Filter * len(rules))(*rules)
    prog = Prog(len(rules), table)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")


def async_get_without_io_uring(q, out):
    """With io_uring refused, await q.get() (an async handle) woken by the
    parent's put: reports the value, whether the waiter thread ran, the
    kinds of registration, and why the ring was refused."""
    import asyncio
    import threading

    from pyqueue import _aio, _aio_ring

    _refuse_io_uring()
    _aio.SLICE_S = 120.0  # a missing wake-up would hang, not be retried

    async def main():
        task = asyncio.ensure_future(q.get())
        while not _aio.registered():
            await asyncio.sleep(0.001)
        regs = [type(r).__name__ for r in _aio.registered()]
        thread = any(t.name == "pyqueue-aio-waiter" for t in threading.enumerate())
        out.put("parked")
        return await asyncio.wait_for(task, 60), thread, regs

    value, thread, regs = asyncio.run(main())
    out.put((value, thread, regs, _aio_ring._refused))
