"""tests/typing/usage.py, the typed-usage file that the typing stage of
.ci/run type-checks (mypy --strict, pyright strict), run for real: the types
it asserts are the ones the calls return, and every error path it types is
taken (each `except` has an `else: raise AssertionError`)."""
import os
import runpy

USAGE = os.path.join(os.path.dirname(__file__), "typing", "usage.py")


def test_typed_usage_runs(pyqueue_mod):
    ns = runpy.run_path(USAGE, run_name="pyqueue_typed_usage")
    ns["main"]()


def test_typed_usage_uses_every_public_name(pyqueue_mod):
    with open(USAGE, encoding="utf-8") as f:
        text = f.read()
    missing = [n for n in pyqueue_mod.__all__ if n not in text]
    assert missing == []


def test_generic_classes_are_subscriptable_without_generic_in_their_mro(pyqueue_mod):
    """Queue[bytes] & co work at run time (annotations are evaluated in
    module bodies) through __class_getitem__ on the Cython bases, so the
    hot paths' classes keep their MRO: no typing.Generic in it."""
    import typing

    pq = pyqueue_mod
    for cls in (pq.Queue, pq.JoinableQueue, pq.SimpleQueue, pq.Topic, pq.Subscription,
                pq.Log, pq.WorkQueue):
        alias = cls[bytes]
        assert typing.get_origin(alias) is cls and typing.get_args(alias) == (bytes,)
        assert typing.Generic not in cls.__mro__, cls
    q = pq.Queue[bytes]()
    try:
        q.put(b"x")
        assert q.get(timeout=5) == b"x"
    finally:
        q.close()
