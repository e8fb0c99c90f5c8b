"""Child-process targets.  They live at module level so that processes
started with ``spawn`` can import them (``tests._workers``).

Nothing here imports pyqueue or numpy at module level: the multiprocessing
half of the suite must run without them.
"""

import os
import queue

from tests._support import payload

WAIT = 30.0  # generous upper bound for any blocking call in a child

EXIT_KEYBOARD_INTERRUPT = 17
EXIT_GOT_ITEM = 18
EXIT_OTHER_EXCEPTION = 19


# -- generic --------------------------------------------------------------

def put_items(q, items):
    for item in items:
        q.put(item)


def put_items_then_cancel(q, items):
    for item in items:
        q.put(item)
    q.cancel_join_thread()


def echo_items(q_in, q_out, n):
    for _ in range(n):
        q_out.put(q_in.get(timeout=WAIT))


def simple_echo(q_in, q_out, n):
    """SimpleQueue has no timeout: plain blocking get."""
    for _ in range(n):
        q_out.put(q_in.get())


def joinable_worker(jq, n, almost_done, go):
    """Take n items; task_done() all but the last, signal, then finish."""
    for _ in range(n):
        jq.get(timeout=WAIT)
    for _ in range(n - 1):
        jq.task_done()
    almost_done.set()
    if not go.wait(WAIT):
        raise SystemExit(3)
    jq.task_done()


def _fail_load(message):
    raise LookupError(message)


class Unloadable:
    """Pickles fine, but unpickling raises LookupError."""

    def __init__(self, message="cannot load me"):
        self.message = message

    def __reduce__(self):
        return (_fail_load, (self.message,))


# -- producers / consumers -------------------------------------------------

def make_message(producer, seq, size):
    return (producer, seq, size, payload(producer, seq, size))


def check_message(msg):
    producer, seq, size, data = msg
    return (producer, seq, type(data) is bytes and data == payload(producer, seq, size))


def producer(q, producer_id, sizes):
    for seq, size in enumerate(sizes):
        q.put(make_message(producer_id, seq, size))


def consumer(q, results, consumer_id):
    """Get until a None sentinel; report [(producer, seq, payload_ok), ...]."""
    records = []
    while True:
        msg = q.get(timeout=WAIT)
        if msg is None:
            break
        records.append(check_message(msg))
    results.put((consumer_id, records))


def batch_producer(q, producer_id, sizes, batch):
    msgs = [make_message(producer_id, seq, size) for seq, size in enumerate(sizes)]
    total = 0
    for i in range(0, len(msgs), batch):
        chunk = msgs[i:i + batch]
        n = q.put_many(chunk, timeout=WAIT)
        if n != len(chunk):
            raise SystemExit(4)
        total += n


def batch_consumer(q, results, consumer_id, max_messages):
    """get_many until it sees a sentinel; surplus sentinels are put back so
    that the other consumers get theirs."""
    records = []
    batches = 0
    done = False
    while not done:
        msgs = q.get_many(max_messages=max_messages, timeout=WAIT)
        if not msgs or len(msgs) > max_messages:
            raise SystemExit(5)
        batches += 1
        sentinels = 0
        for msg in msgs:
            if msg is None:
                sentinels += 1
            else:
                records.append(check_message(msg))
        if sentinels:
            done = True
            for _ in range(sentinels - 1):
                q.put(None)
    results.put((consumer_id, records))


def crash_size(seq, big):
    if big and seq % 5 == 4:
        return 20000  # above a quarter of a 64 KiB ring: out of band
    return 100 + seq % 400


def endless_producer(q, started, big):
    """Puts numbered messages until killed."""
    started.set()
    seq = 0
    while True:
        q.put((seq, payload(7, seq, crash_size(seq, big))))
        seq += 1


def overflow_producer(q, producer_id, n, results):
    """put() n tagged messages; report which went in and how many raised
    queue.Full (overflow="reject" raises at once)."""
    accepted = []
    full = 0
    for seq in range(n):
        try:
            q.put(make_message(producer_id, seq, 50 + seq % 200))
        except queue.Full:
            full += 1
        else:
            accepted.append(seq)
    results.put((producer_id, accepted, full))


def blocked_getter(q, ready, results):
    ready.set()
    item = q.get()
    results.put(item)


# -- Pool --------------------------------------------------------------------

_POOL_QUEUE = None


def pool_init(q):
    global _POOL_QUEUE
    _POOL_QUEUE = q


def pool_put_from_initargs(i):
    _POOL_QUEUE.put(("init", i, os.getpid()))
    return i * 2


def pool_put_from_argument(args):
    q, i = args
    q.put(("arg", i, os.getpid()))
    return i * 3


# -- names / lifecycle ----------------------------------------------------

def open_by_name_and_put(name, n):
    import pyqueue

    q = pyqueue.Queue.open(name)
    for i in range(n):
        q.put(("by-name", i))
    q.close()


def create_unnamed_and_report(report, proceed):
    """Create an unnamed queue, report its name, wait, exit without unlink."""
    import pyqueue

    q = pyqueue.Queue(capacity_bytes=65536)
    q.put("hello")
    report.put(q.name)
    if not proceed.wait(WAIT):
        raise SystemExit(6)
    # No close(), no unlink(): the segment must go when this process exits.


def get_after_and_report(q, go, report):
    """Wait for `go`, then get one message from q and report it."""
    if not go.wait(WAIT):
        raise SystemExit(6)
    report.put(q.get(timeout=WAIT))


def put_and_exit(q, item):
    q.put(item)


# -- signals ------------------------------------------------------------------

def sigint_blocker(q, ready, op):
    """Block in a call that has no timeout and turn a KeyboardInterrupt into
    an exit code (op: "get", "get_many", "put" on a full queue, "join" with a
    task outstanding).  ``ready`` is set inside the try block: the SIGINT may
    arrive just before the call is entered, and it must become a
    KeyboardInterrupt either way."""
    try:
        ready.set()
        if op == "get":
            q.get()
        elif op == "get_many":
            q.get_many()
        elif op == "put":
            q.put("never fits")
        elif op == "join":
            q.join()
        else:
            raise ValueError(op)
    except KeyboardInterrupt:
        os._exit(EXIT_KEYBOARD_INTERRUPT)
    except BaseException:
        os._exit(EXIT_OTHER_EXCEPTION)
    os._exit(EXIT_GOT_ITEM)


def join_gil_probe(jq, results, window=0.3):
    """A thread blocks in jq.join(); this thread counts for ``window``
    seconds meanwhile and reports the count (it cannot count at all if
    join() holds the GIL), then waits for the join to finish."""
    import threading
    import time

    entered = threading.Event()
    joined = threading.Event()

    def joiner():
        entered.set()
        jq.join()
        joined.set()

    t = threading.Thread(target=joiner, daemon=True)
    t.start()
    entered.wait(WAIT)
    count = 0
    start = time.monotonic()
    while time.monotonic() - start < window:
        count += 1
    results.put(("counted", count, joined.is_set()))
    if not joined.wait(WAIT):
        raise SystemExit(7)
