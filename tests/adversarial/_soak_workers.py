"""Worker processes of tests/adversarial/test_soak.py (importable, for spawn)."""

import queue
import time

from pyqueue import DeliveryExpired

# Slots of the shared `report` array each worker writes.
R_MAX_OVER = 0     # worst lateness of a timed call past its timeout, in microseconds
R_ERRORS = 1       # corrupt values or sequence breaks seen


class Me:
    """A worker's view of its own stops: the parent bumps stops[slot]
    before it SIGSTOPs the worker and again before it SIGCONTs it, so a
    call during which the worker itself was stopped is not counted as late
    (its own stop, not a peer's)."""

    def __init__(self, stops, slot):
        self.stops, self.slot = stops, slot

    def mark(self):
        stops = self.stops[self.slot]
        return time.monotonic(), stops

    def late(self, report, mark, timeout):
        started, stops = mark
        if self.stops[self.slot] != stops:
            return
        over = int((time.monotonic() - started - timeout) * 1e6)
        if over > report[R_MAX_OVER]:
            report[R_MAX_OVER] = over


def wq_consumer(me, q, acked, report, stop, timeout):
    """Get, check, ack; count successful acks per message (acked[seq])."""
    while not stop.value:
        t0 = me.mark()
        try:
            d = q.get(timeout=timeout)
        except queue.Empty:
            me.late(report, t0, timeout)
            continue
        seq = d.value
        if not isinstance(seq, int) or not 0 <= seq < len(acked):
            report[R_ERRORS] += 1
            continue
        try:
            d.ack()
        except DeliveryExpired:
            continue  # redelivered to someone else meanwhile: theirs to ack
        acked[seq] += 1


def topic_publisher(me, t, epoch, published, report, timeout):
    """Publish (epoch, 0), (epoch, 1), ... for ever; published.value counts
    the publishes that returned (over every incarnation)."""
    seq = 0
    while True:
        t0 = me.mark()
        try:
            t.publish((epoch, seq), timeout=timeout)
        except queue.Full:
            me.late(report, t0, timeout)
            continue
        published.value += 1
        seq += 1


def topic_subscriber(me, t, first, last, report, ready, timeout):
    """Subscribe and check that, within one publisher incarnation (epoch),
    every message is the next in order and epochs only grow; first/last
    count the messages seen (last: how many, first: 1 once any came)."""
    sub = t.subscribe("latest")
    ready.value = 1
    prev = None
    while True:
        t0 = me.mark()
        try:
            v = sub.get(timeout=timeout)
        except queue.Empty:
            me.late(report, t0, timeout)
            continue
        if v is None:
            return
        if not (isinstance(v, tuple) and len(v) == 2):
            report[R_ERRORS] += 1
            continue
        if prev is not None and not (v[0] > prev[0] or (v[0] == prev[0] and v[1] == prev[1] + 1)):
            report[R_ERRORS] += 1
        first.value = 1
        prev = v
        last.value += 1


def log_appender(me, log, aid, epoch, n, appended, report):
    """Append (aid, epoch, seq) for seq in 0..n-1 to the partition of key aid."""
    key = "appender-%d" % aid
    for seq in range(n):
        log.append((aid, epoch, seq), key=key)
        appended[aid] += 1


def log_member(me, log, group, cap, processed, report, stop, timeout):
    """A consumer-group member: mark what it polled, then commit."""
    from pyqueue import CommitFailed
    with log.consumer(group, auto_offset_reset="earliest") as c:
        while not stop.value:
            t0 = me.mark()
            recs = c.poll(timeout=timeout)
            if not recs:
                me.late(report, t0, timeout)
            for r in recs:
                if r.offset >= cap:
                    report[R_ERRORS] += 1
                    continue
                processed[r.partition * cap + r.offset] += 1
            try:
                c.commit()
            except CommitFailed:
                pass  # fenced: the new owner reads those again


def queue_producer(me, q, epoch, report, timeout):
    """Put (epoch, seq) for ever, with put(timeout=...)."""
    seq = 0
    while True:
        t0 = me.mark()
        try:
            q.put((epoch, seq), timeout=timeout)
        except queue.Full:
            me.late(report, t0, timeout)
            continue
        seq += 1


def queue_consumer(me, q, report, got, timeout):
    """get(timeout=...) for ever; within one producer incarnation the
    sequence numbers a consumer sees only grow (FIFO per producer, no
    duplicate delivered twice to it)."""
    last = {}
    while True:
        t0 = me.mark()
        try:
            v = q.get(timeout=timeout)
        except queue.Empty:
            me.late(report, t0, timeout)
            continue
        if v is None:
            return
        if not (isinstance(v, tuple) and len(v) == 2) or v[1] <= last.get(v[0], -1):
            report[R_ERRORS] += 1
            continue
        last[v[0]] = v[1]
        got.value += 1
