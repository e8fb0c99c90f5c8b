"""Patch multiprocessing.Pool to pyqueue.Pool and install CPython's pool
tests (_TestPool, _TestPoolWorkerErrors, _TestPoolWorkerLifetime of
test/_test_multiprocessing.py) into a module (see pool_fork.py)."""
import fnmatch
import multiprocessing
import multiprocessing.context
import unittest

import pyqueue

# Tests of CPython's suite that fail against pyqueue.Pool for a documented
# reason (docs/api.md, "CPython's pool tests"): test id glob -> the reason.
# Each is skipped with that reason; any other failure is red.
KNOWN_FAILURES = {
    "WithProcessesTestPoolWorkerLifetime."
    "test_worker_finalization_via_atexit_handler_of_multiprocessing":
        "not applicable: the script runs in a fresh interpreter where "
        "multiprocessing.Pool is not patched (it tests multiprocessing's own)",
}


def _pool(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None):
    return pyqueue.Pool(processes, initializer, initargs, maxtasksperchild, context=self)


_pool.__qualname__ = "BaseContext.Pool"


def patch():
    """multiprocessing.Pool and every context's Pool make a pyqueue.Pool.
    Idempotent."""
    multiprocessing.context.BaseContext.Pool = _pool
    multiprocessing.Pool = multiprocessing.context._default_context.Pool


def install(globs, start_method):
    """Install into the module dict ``globs`` the pool tests of
    test._test_multiprocessing for ``start_method``, patched to pyqueue."""
    patch()
    from test import _test_multiprocessing as tmp

    tmp.ProcessesMixin.Pool = staticmethod(multiprocessing.Pool)
    installed = {"__name__": globs["__name__"]}
    tmp.install_tests_in_module_dict(installed, start_method, only_type="processes")
    for name in ("WithProcessesTestPool", "WithProcessesTestPoolWorkerErrors",
                 "WithProcessesTestPoolWorkerLifetime"):
        cls = installed[name]
        cls.__module__ = globs["__name__"]
        globs[name] = cls
        for attr in dir(cls):
            if not attr.startswith("test"):
                continue
            for pattern, reason in KNOWN_FAILURES.items():
                if fnmatch.fnmatchcase("%s.%s" % (name, attr), pattern):
                    setattr(cls, attr, unittest.skip("known difference: " + reason)(
                        getattr(cls, attr)))
                    break
    globs["setUpModule"] = installed["setUpModule"]
    globs["tearDownModule"] = installed["tearDownModule"]
    globs["TestPatched"] = type("TestPatched", (_TestPatched,),
                                {"__module__": globs["__name__"]})


class _TestPatched(unittest.TestCase):
    """The patch holds: otherwise every other test here would test
    multiprocessing's own Pool."""

    def test_pool_is_pyqueue(self):
        from test import _test_multiprocessing as tmp
        for make in (multiprocessing.Pool, tmp.ProcessesMixin.Pool,
                     multiprocessing.get_context().Pool):
            p = make(1)
            try:
                self.assertIsInstance(p, pyqueue.Pool)
            finally:
                p.terminate()
