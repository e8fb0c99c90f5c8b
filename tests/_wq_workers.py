"""Child-process targets of tests/test_workqueue.py and tests/test_stream.py
(module level, so that processes started with ``spawn`` can import them)."""
import os
import time

from tests._crash_workers import arm


def consume_and_ack(q, out, stop_after):
    """Ack messages until stop_after were acked in all (by everyone);
    report (pid, value, delivery count) of each."""
    import queue
    n = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            d = q.get(timeout=0.2)
        except queue.Empty:
            if q.stats()["acked"] >= stop_after:
                break
            continue
        d.ack()
        out.put((os.getpid(), d.value, d.delivery_count))
        n += 1
    out.put(("done", os.getpid(), n))


def hold_then_hang(q, out, n):
    """Get n messages and settle none; report them; then hang."""
    got = [q.get(timeout=30) for _ in range(n)]
    out.put([(d.id, d.value, d.delivery_count) for d in got])
    time.sleep(120)  # killed in here


def hold_batch_then_hang(q, out, n):
    """Take batches until n messages are held, settle none; report (id,
    value, delivery count) of each; then hang."""
    got = []
    while len(got) < n:
        b = q.get_many(n - len(got), timeout=30)
        got += [(i, v, c) for i, v, c in zip(b.ids, b.values, b.delivery_counts)]
    out.put(got)
    time.sleep(120)  # killed in here


def armed_put(q, spec, values):
    arm(spec)
    for v in values:
        q.put(v, key=str(v))


# -- StreamProcessor --------------------------------------------------------------

def double(v):
    if v == "poison":
        raise ValueError("poison")
    return v * 2


def slow_marker(v):
    """Sleeps, then leaves a file named after the value (what was done)."""
    path, i, seconds = v
    time.sleep(seconds)
    with open(os.path.join(path, str(i)), "w"):
        pass
    return None


def mark_and_raise(v):
    """Leaves a file named after the monotonic clock (shared by every
    process: when this attempt ran) in directory v, then raises."""
    with open(os.path.join(v, str(time.monotonic_ns())), "w"):
        pass
    raise ValueError("this worker crashes")


def put_keys(q, n, pace):
    """Put 0..n-1 with key "k<i>" (a producer that retries them all), one
    every `pace` seconds (so that a kill lands in the middle)."""
    for i in range(n):
        q.put(i, key=f"k{i}")
        time.sleep(pace)


def always_fails(v):
    raise ValueError("cannot process")


def json_dumps(obj):
    """A serializer's dumps (module level: it travels to spawned children)."""
    import json
    return json.dumps(obj).encode()


def json_loads(data):
    """A serializer's loads: JSON only, never pickle."""
    import json
    return json.loads(bytes(data))


def echo_json(q, back, n):
    """Take n messages of q (a JSON work queue), one by one and in a batch,
    ack them, and put each back into back as {"echo": value, "pid": pid}."""
    got = []
    while len(got) < n:
        if len(got) % 2:
            b = q.get_many(n - len(got), timeout=30)
            got.extend(b.values)
            b.ack()
        else:
            d = q.get(timeout=30)
            got.append(d.value)
            d.ack()
    back.put_many([{"echo": v, "pid": os.getpid()} for v in got])


def json_loads_ints(data):
    """A serializer's loads that takes JSON ints only (anything else raises
    ValueError: a record it cannot decode)."""
    import json
    v = json.loads(bytes(data))
    if type(v) is not int:
        raise ValueError(f"not an int: {v!r}")
    return v
