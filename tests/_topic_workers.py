"""Child-process targets of tests/test_topic.py (importable under spawn)."""
import os
import signal


def subscriber(topic, ready, out, n):
    sub = topic.subscribe()
    ready.put(os.getpid())
    got = [sub.get(timeout=20) for _ in range(n)]
    out.put(got)
    sub.close()


def stuck_subscriber(topic, ready):
    sub = topic.subscribe()  # noqa: F841 - held, never read
    ready.put(os.getpid())
    signal.pause()


def publisher(topic, pid, n):
    for i in range(n):
        topic.publish((pid, i), timeout=20)


def child_reads_pickled(topic, out):
    sub = topic.subscribe("earliest")
    out.put([sub.get(timeout=10) for _ in range(3)])
    sub.close()


def hoard_subscriptions(topic, n, ready):
    """Take n subscriptions and hold them (until SIGKILLed)."""
    subs = [topic.subscribe() for _ in range(n)]
    ready.put(len(subs))
    signal.pause()
