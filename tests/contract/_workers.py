"""Targets of the contract suite's child processes (importable under spawn).
Each gets its queues pickled: by segment name (shm) or by name + URL (Redis)."""


def put_all(q, items):
    for item in items:
        q.put(item, timeout=30)


def get_n_to(q, n, out):
    got = [q.get(timeout=30) for _ in range(n)]
    out.put(got, timeout=30)


def get_then_task_done(jq, n):
    for _ in range(n):
        jq.get(timeout=30)
        jq.task_done()


def join_then_report(jq, out):
    jq.join()
    out.put("joined", timeout=30)


def echo(q_in, q_out):
    q_out.put(q_in.get(timeout=30), timeout=30)


def get_report_and_hang(wq, out):
    """Takes a delivery, says which, and never settles it (SIGKILLed)."""
    import threading
    d = wq.get(timeout=30)
    out.put((d.id, d.delivery_count), timeout=30)
    threading.Event().wait(120)


def get_and_ack(wq, out):
    d = wq.get(timeout=30)
    d.ack()
    out.put(d.value, timeout=30)


def double(v):
    if v == "poison":
        raise ValueError("poison")
    return v * 2


def publish_all(topic, items):
    for item in items:
        topic.publish(item, timeout=30)


def subscribe_report_and_hang(topic, out):
    """Subscribes, says so, never reads (SIGKILLed)."""
    import threading
    sub = topic.subscribe()
    out.put("subscribed", timeout=30)
    threading.Event().wait(120)
    sub.close()


def read_inherited_subscription(sub, out):
    """A forked child with its parent's subscription: what a read raises
    (its type, and whether it says whose it is), then close() (only this
    copy)."""
    try:
        sub.get(timeout=1)
        out.put(("read", None))
    except Exception as e:  # noqa: BLE001 - reported
        out.put((type(e).__name__, "belongs to the process" if "belongs to the process"
                 in str(e) else str(e)))
    sub.close()


def reject_and_die_in_the_move(wq, where, how="reject"):
    """Takes the first message and rejects it (how="reject") or nacks its
    last delivery (how="nack"), or gets (how="expired") the message whose
    last delivery another handle holds, which its visibility timeout
    makes this get move; the move to the dead-letter queue that
    this starts is SIGKILLed `where`: "before_put" (the message marked
    dead-pending, nothing put) or "after_put" (the DeadLetter put, the
    message not yet removed). The dead-letter queue's put is replaced in
    this process only (a child of its own)."""
    import os
    import signal
    dlq = wq.dead_letter
    put = type(dlq).put

    def put_then_die(self, *args, **kwargs):
        if where == "after_put":
            put(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    type(dlq).put = put_then_die
    # The mover's lease on Redis (how long its hold outlives it): the
    # longer of the visibility timeout and dead_letter_timeout +
    # dead_letter_retry, here 3 s.
    type(wq).dead_letter_timeout = type(wq).dead_letter_retry = 1.5
    d = wq.get(timeout=30)      # (how="expired": killed in here)
    if how == "reject":
        d.reject("bad input")
    elif how == "nack":
        d.nack(error="bad input")


def append_all(log, key, items):
    for item in items:
        log.append(item, key=key)


def hold_batch_then_hang(wq, out, n):
    """Takes batches until n messages are held, settles none, reports
    (id, value, delivery count) of each, and hangs (SIGKILLed)."""
    import threading
    got = []
    while len(got) < n:
        b = wq.get_many(n - len(got), timeout=30)
        got += list(zip(b.ids, b.values, b.delivery_counts))
    out.put(got, timeout=30)
    threading.Event().wait(120)


def batch_consume_and_ack(wq, out, stop_after, size):
    """get_many + Batch.ack until stop_after messages were acked in all;
    reports (pid, value, delivery count) of each."""
    import os
    import queue
    import time
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            b = wq.get_many(size, timeout=0.2)
        except queue.Empty:
            if wq.stats()["acked"] >= stop_after:
                break
            continue
        b.ack()
        for v, c in zip(b.values, b.delivery_counts):
            out.put((os.getpid(), v, c), timeout=30)


def member_commit_report_and_hang(log, group, commit_to, out, max_poll_interval=3.0):
    """Joins the group (a short lease by default), commits commit_to in
    each of its partitions, says which it has, and never polls again
    (SIGKILLed)."""
    import threading
    c = log.consumer(group, max_poll_interval=max_poll_interval)
    mine = c.assignment()
    c.commit({p: commit_to for p in mine})
    out.put(mine, timeout=30)
    threading.Event().wait(120)
    c.close()


def get_until_shutdown(q, out):
    """get until ShutDown, reporting each message, then "shutdown"."""
    from pyqueue import ShutDown
    while True:
        try:
            out.put(q.get(timeout=30), timeout=30)
        except ShutDown:
            out.put("shutdown", timeout=30)
            return


def take_wake_token_and_die(h):
    """A Queue get killed between its BLPOP and the script that passes
    the wake token on: blocks on the queue's token list (as a get does),
    takes the shutdown's token, and is SIGKILLed there."""
    import os
    import signal
    h._bound.blpop_any([h._keys[4]], None)
    os.kill(os.getpid(), signal.SIGKILL)


def wait_then_report(h, op, out):
    """Blocks in one wait of h with no timeout (op names which), then puts
    what ended it on out: "ShutDown", "ended" (an iteration), or the value."""
    from pyqueue import ShutDown
    try:
        if op == "get":
            r = h.get()
        elif op == "get_many":
            r = h.get_many(10)
        elif op == "put":
            r = h.put("blocked", timeout=None)
        elif op == "wq_get":
            r = h.get().value
        elif op == "wq_put":
            r = h.put("blocked")
        elif op == "publish":
            r = h.publish(b"x" * 1000)
        elif op == "sub_get":
            with h.subscribe() as sub:
                out.put("subscribed", timeout=30)
                r = sub.get()
        elif op == "sub_iter":
            with h.subscribe() as sub:
                out.put("subscribed", timeout=30)
                r = list(sub)
                r = "ended" if r == [] else r
        elif op == "log_read":
            r = h.read(0, h.end_offset(0), timeout=None)
        elif op == "consume":
            with h.consumer("g") as c:
                r = [rec.value for rec in c]
                r = "ended" if r == [] else r
        else:
            raise ValueError(op)
    except ShutDown:
        r = "ShutDown"
    out.put(r, timeout=30)


def slow_first_delivery(v):
    """The first delivery of a message (v: (its number, a directory)) waits
    until its next delivery was processed, by another worker after the
    visibility timeout: fn outlives the timeout on that one, deterministic
    without a sleep. Every other call returns at once. Returns the number."""
    import os
    import time
    i, where = v
    first = os.path.join(where, f"{i}.first")
    try:
        os.close(os.open(first, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except FileExistsError:  # a later delivery: fast
        open(os.path.join(where, f"{i}.again"), "a").close()
        return i
    if i == 0:
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(where, "0.again")) and time.monotonic() < deadline:
            time.sleep(0.005)
    return i
