"""Patch multiprocessing's queues to pyqueue's and install CPython's queue
tests into a module (see tests/cpython_mp/__init__.py)."""
import fnmatch
import inspect
import multiprocessing
import multiprocessing.context
import unittest

import pyqueue

# Tests of CPython's suite that fail against pyqueue for a documented
# reason (docs/api.md, "CPython's multiprocessing tests"): test id glob
# (Class.method, as installed) -> the reason.  Each is skipped with that
# reason, so the stage stays green and any other failure is red.
KNOWN_FAILURES = {
    "TestSimpleQueue.test_closed":
        "a test of private attributes (SimpleQueue._reader/_writer, the pipe's "
        "ends): pyqueue's SimpleQueue has no pipe",
    "WithProcessesTestQueue.test_queue_feeder_donot_stop_onexc":
        "put() serializes the object itself, so an object that cannot be pickled "
        "raises in put() (and the queue stays usable) instead of in a feeder thread",
}


def _queue(self, maxsize=0):
    return pyqueue.Queue(maxsize)


def _joinable_queue(self, maxsize=0):
    return pyqueue.JoinableQueue(maxsize)


def _simple_queue(self):
    return pyqueue.SimpleQueue()


_queue.__qualname__ = "BaseContext.Queue"
_joinable_queue.__qualname__ = "BaseContext.JoinableQueue"
_simple_queue.__qualname__ = "BaseContext.SimpleQueue"


def patch():
    """multiprocessing.Queue/JoinableQueue/SimpleQueue, and those methods of
    every context, make pyqueue's queues.  Idempotent."""
    ctx_mod = multiprocessing.context
    ctx_mod.BaseContext.Queue = _queue
    ctx_mod.BaseContext.JoinableQueue = _joinable_queue
    ctx_mod.BaseContext.SimpleQueue = _simple_queue
    # The module-level names are methods bound to the default context when
    # multiprocessing was imported: bind them again.
    for name in ("Queue", "JoinableQueue", "SimpleQueue"):
        setattr(multiprocessing, name, getattr(ctx_mod._default_context, name))


def patched():
    """True when a context's Queue() makes a pyqueue queue (checked by the
    children too, see _TestPatched)."""
    ctx = multiprocessing.get_context()
    return (isinstance(multiprocessing.Queue(), pyqueue.Queue)
            and isinstance(ctx.JoinableQueue(), pyqueue.JoinableQueue)
            and isinstance(ctx.SimpleQueue(), pyqueue.SimpleQueue))


def _uses_a_queue(func):
    try:
        src = inspect.getsource(func)
    except (OSError, TypeError):
        return False
    return "Queue(" in src


def install(globs, start_method):
    """Install into the module dict ``globs`` the queue tests of
    test._test_multiprocessing for ``start_method``, patched to pyqueue."""
    patch()
    from test import _test_multiprocessing as tmp

    # ProcessesMixin took multiprocessing.Queue & co. when it was defined:
    # give it the patched ones (in case the module was imported before).
    for name in ("Queue", "JoinableQueue"):
        setattr(tmp.ProcessesMixin, name, staticmethod(getattr(multiprocessing, name)))

    installed = {"__name__": globs["__name__"]}
    tmp.install_tests_in_module_dict(installed, start_method, only_type="processes")
    keep = {"WithProcessesTestQueue", "WithProcessesTestProcess"}
    for name in keep:
        cls = installed[name]
        cls.__module__ = globs["__name__"]
        globs[name] = cls
    # TestSimpleQueue is a plain TestCase, which only_type leaves out.
    simple = type("TestSimpleQueue", (tmp.TestSimpleQueue,), {"__module__": globs["__name__"]})
    globs["TestSimpleQueue"] = simple
    globs["setUpModule"] = installed["setUpModule"]
    globs["tearDownModule"] = installed["tearDownModule"]

    # Of _TestProcess, only the tests that use a queue.
    proc = globs["WithProcessesTestProcess"]
    for attr in dir(proc):
        if attr.startswith("test") and not _uses_a_queue(getattr(proc, attr)):
            setattr(proc, attr, None)  # not callable: unittest's loader ignores it

    globs["TestPatched"] = type("TestPatched", (_TestPatched,), {"__module__": globs["__name__"]})

    for cls_name in ("WithProcessesTestQueue", "WithProcessesTestProcess", "TestSimpleQueue"):
        cls = globs[cls_name]
        for attr in dir(cls):
            if not attr.startswith("test") or getattr(cls, attr) is None:
                continue
            for pattern, reason in KNOWN_FAILURES.items():
                if fnmatch.fnmatchcase("%s.%s" % (cls_name, attr), pattern):
                    setattr(cls, attr, unittest.skip("known difference: " + reason)(
                        getattr(cls, attr)))
                    break


class _TestPatched(unittest.TestCase):
    """The patch holds here and in a child of this start method: otherwise
    every other test here would test multiprocessing's own queues.  The
    child's target is a classmethod of the installed class, as the targets
    of CPython's tests are: the child imports the module it lives in."""

    @classmethod
    def _child_reports(cls, q):
        q.put((patched(), type(q).__module__))

    def test_parent_and_child_use_pyqueue(self):
        self.assertTrue(patched())
        q = multiprocessing.Queue()
        self.assertIsInstance(q, pyqueue.Queue)
        p = multiprocessing.Process(target=self._child_reports, args=(q,))
        p.start()
        try:
            self.assertEqual(q.get(timeout=60), (True, "pyqueue.queues"))
        finally:
            p.join(60)
        self.assertEqual(p.exitcode, 0)
