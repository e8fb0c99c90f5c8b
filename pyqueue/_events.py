"""The events the Cython cores log (the documentation's Operations page, "Logging"), on
their slow paths only: after a wait slice that timed out, or when a
subscriber slot is wanted. Loggers: pyqueue.queue, pyqueue.topic,
pyqueue.log (the "pyqueue" logger has a NullHandler: nothing is printed
unless the application configures logging)."""
import logging

_WHAT = {"queue": "queue", "topic": "topic", "log": "log"}


def _name(handle):
    try:
        return handle.name
    except Exception:  # noqa: BLE001 - a closed or half-made handle
        return "?"


def repaired(kind, handle, where=""):
    """A record a dead producer left half-written was marked abandoned
    (consumers pass it; it is counted in the kind's "abandoned")."""
    logging.getLogger(f"pyqueue.{kind}").warning(
        "%s %r: repaired a record left half-written by a producer that died%s; "
        "its message is lost (counted as abandoned)", _WHAT.get(kind, kind), _name(handle),
        where)


def reaped(handle, n):
    """A work queue's messages held by processes that died were taken
    back (pq_wq_reap): a consumer's made available again, a producer's
    half-written one dropped (abandoned), a mover's dead letter handed out
    again."""
    logging.getLogger("pyqueue.workqueue").warning(
        "work queue %r: took back %d message(s) held by processes that died (a consumer's "
        "delivered again, a producer's half-written put dropped as abandoned)", _name(handle), n)


def evicted(handle, n, why):
    """n subscribers that died were evicted from a topic."""
    logging.getLogger("pyqueue.topic").warning(
        "topic %r: evicted %d subscriber(s) whose process died (%s)", _name(handle), n, why)


def subscribers_full(handle, slots):
    """A subscribe found every slot held by a live subscriber."""
    logging.getLogger("pyqueue.topic").warning(
        "topic %r: all %d subscriber slots are held by live subscribers; subscribe refused",
        _name(handle), slots)
