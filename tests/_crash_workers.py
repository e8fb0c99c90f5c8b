"""Child-process targets of tests/test_crash.py and bench/repair_latency.py
(module level, so that processes started with ``spawn`` can import them).

A child that is to stop at a fault point sets PYQUEUE_FAULT itself, first
thing: the core reads it at the first fault point the process reaches (a
forked child reads it afresh), and the parent's environment stays clean.
"""

import os
import queue
import signal
import struct
import time

WAIT = 30.0  # upper bound for any blocking call in a child

EXIT_QUEUE_FULL = 21
EXIT_EMPTY = 23


def arm(spec):
    if spec:
        os.environ["PYQUEUE_FAULT"] = spec
    else:
        os.environ.pop("PYQUEUE_FAULT", None)


# -- one fault point ---------------------------------------------------------

def armed_put(q, spec, items):
    """put() each item; stops at the fault point named by spec."""
    arm(spec)
    for item in items:
        q.put(item, timeout=WAIT)


def armed_put_many(q, spec, items):
    arm(spec)
    q.put_many(items, timeout=WAIT)


def armed_get(q, spec, n=1):
    """get() n messages; stops at the fault point named by spec."""
    arm(spec)
    for _ in range(n):
        q.get(timeout=WAIT)


def armed_get_many(q, spec, max_messages=1024):
    arm(spec)
    q.get_many(max_messages, timeout=WAIT)


def get_then_stop(q):
    """get() one message, then stop (for the test to SIGKILL): a consumer
    that dies after get() returned, holding nothing of the queue's."""
    q.get(timeout=WAIT)
    os.kill(os.getpid(), signal.SIGSTOP)


STOP_ON_LOAD = "PYQUEUE_TEST_STOP_ON_LOAD"


def _stop_on_load():
    if os.environ.get(STOP_ON_LOAD):
        os.kill(os.getpid(), signal.SIGSTOP)
    return StopOnLoad()


class StopOnLoad:
    """Unpickling it stops the process where STOP_ON_LOAD is set: a
    consumer inside get() after its consume CAS, building the object."""

    def __reduce__(self):
        return (_stop_on_load, ())


def get_stop_on_load(q):
    os.environ[STOP_ON_LOAD] = "1"
    q.get(timeout=WAIT)


# -- soak ----------------------------------------------------------------------
#
# Two producer slots, each one sequence space shared by the successive
# incarnations of that slot (a replacement starts after the killed one has
# been reaped, at the sequence after the last one it started). Messages are
# bytes: an 8-byte header (slot, seq) and a payload that is a function of
# both; every 16th is pickled (a tuple), and now and then one is large
# enough to travel out of band.
#
# The bookkeeping lives in shared memory without locks (RawArray: a lock
# held by a killed process would wedge it), and each entry is one aligned
# store, so it survives a SIGKILL at any point:
#   started[slot] = last seq handed to put/put_many (stored before the call)
#   done[slot]    = last seq put/put_many returned for (stored after it)
#   counts (one array per consumer slot, written by one process at a time):
#   counts[slot * cap + seq] += 1 for every message received. A consumer
#   killed between its get() and that store loses the message from the
#   record: exactly the one message it had taken.

_HDR = struct.Struct("<II")


def soak_size(slot, seq):
    if seq % 97 == 50:
        return 70000  # above a quarter of a 256 KiB ring: out of band
    return (seq * 37 + slot * 11) % 600


def soak_payload(slot, seq):
    return bytes([(slot * 31 + seq) % 251]) * soak_size(slot, seq)


def soak_message(slot, seq):
    data = soak_payload(slot, seq)
    if seq % 16 == 7:
        return (slot, seq, data)
    return _HDR.pack(slot, seq) + data


def soak_decode(msg):
    """(slot, seq, intact) of a soak message."""
    if isinstance(msg, tuple):
        slot, seq, data = msg
    else:
        slot, seq = _HDR.unpack_from(msg)
        data = msg[_HDR.size:]
    intact = data == soak_payload(slot, seq) and isinstance(msg, tuple) == (seq % 16 == 7)
    return slot, seq, intact


def soak_producer(q, slot, cap, started, done, stop):
    seq = started[slot] + 1
    try:
        while not stop.value:
            if seq + 4 > cap:
                # The record of this slot is full: idle until the end (on a
                # machine fast enough to get here).
                while not stop.value:
                    time.sleep(0.01)
                return
            if seq % 8 == 3:
                batch = [soak_message(slot, s) for s in range(seq, seq + 4)]
                started[slot] = seq + 3
                q.put_many(batch, timeout=WAIT)
                done[slot] = seq + 3
                seq += 4
            else:
                msg = soak_message(slot, seq)
                started[slot] = seq
                q.put(msg, timeout=WAIT)
                done[slot] = seq
                seq += 1
    except queue.Full:
        os._exit(EXIT_QUEUE_FULL)


def soak_consumer(q, cap, counts, errors):
    """errors[0]: corrupt messages, errors[1]: per-producer order broken."""
    last = [-1, -1]
    while True:
        try:
            msg = q.get(timeout=WAIT)
        except queue.Empty:
            os._exit(EXIT_EMPTY)
        if msg is None:
            return
        slot, seq, intact = soak_decode(msg)
        if not intact or slot > 1 or seq >= cap:
            errors[0] += 1
            continue
        if seq <= last[slot]:
            errors[1] += 1
        last[slot] = seq
        counts[slot * cap + seq] += 1
