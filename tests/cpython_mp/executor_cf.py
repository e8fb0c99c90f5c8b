"""CPython's ProcessPoolExecutor tests (test.test_concurrent_futures) run
against pyqueue.Executor, under fork, spawn and forkserver.

concurrent.futures.ProcessPoolExecutor and the executor_type of the test
suite's process-pool mixins are made pyqueue.Executor; the process-pool
test classes of the suite's modules are gathered here. Tests that fail for
a documented reason (docs/api.md, "CPython's pool tests") are skipped from
KNOWN_FAILURES, so any other failure is red.

It needs an interpreter whose `test` package has test_concurrent_futures
as a package (CPython 3.12+; the 3.11 the project tests with ships
without it): `.ci/run` runs it in its CPython 3.13 virtualenv with the
installed wheel (the packaging stage). By hand, with CPython 3.13.0 and
pyqueue built for it, on the loaded 2-core machine: 142 tests in 108 s,
OK (64 skipped: the KNOWN_FAILURES below and the suite's own skips).

    python -m unittest -v tests.cpython_mp.executor_cf
"""
import concurrent.futures
import fnmatch
import unittest

import pyqueue

KNOWN_FAILURES = {
    "*.test_killed_child":
        "the opposite on purpose: a killed worker does not break a pyqueue.Executor "
        "(no BrokenProcessPool); tests/test_pool.py::test_executor_kill_does_not_break_it",
    "*.test_python_finalization_error":
        "expects BrokenProcessPool when a thread cannot start at finalization; "
        "pyqueue.Executor starts its threads in its constructor",
    "*.test_traceback":
        "the cause is multiprocessing.pool.RemoteTraceback (pyqueue.Executor runs "
        "on pyqueue.Pool), not concurrent.futures.process._RemoteTraceback",
    "*.test_processes_terminate": "a test of private attributes (_processes)",
    "*.test_context_manager_shutdown": "a test of private attributes (_processes)",
    "*.test_del_shutdown":
        "a test of private attributes (_processes, _call_queue, "
        "_executor_manager_thread)",
    "*.test_shutdown_no_wait":
        "a test of private attributes (_processes, _call_queue, "
        "_executor_manager_thread)",
    "*.test_idle_process_reuse_one": "a test of private attributes (_processes)",
    "*.test_idle_process_reuse_multiple": "a test of private attributes (_processes)",
    "*.test_saturation": "a test of private attributes (_processes)",
    "*.test_max_tasks_per_child":
        "a test of private attributes (_processes, ProcessPoolExecutor's "
        "_executor_manager_thread)",
    "*.test_ressources_gced_in_workers":
        "tests the garbage collection in the worker of a task's argument through a "
        "multiprocessing.Manager event, after shutdown",
    "*.test_interpreter_shutdown":
        "runs a script in a fresh interpreter where ProcessPoolExecutor is not "
        "patched (it tests concurrent.futures' own)",
    "*.test_submit_after_interpreter_shutdown":
        "runs a script in a fresh interpreter where ProcessPoolExecutor is not "
        "patched (it tests concurrent.futures' own)",
    "*.test_hang_gh83386": "runs a script in a fresh interpreter (not patched)",
    "*.test_hang_gh94440": "runs a script in a fresh interpreter (not patched)",
    "*.test_cancel_futures":
        "shutdown(cancel_futures=True) cancels every future not done (a "
        "pyqueue.Executor future is pending until its result comes), so none is "
        "left to complete, which the test asks for",
    "*.test_max_tasks_per_child_defaults_to_spawn_context":
        "a test of a private attribute (_mp_context)",
    "*FailingInitializerTest.test_initializer":
        "looks for ProcessPoolExecutor's 'Exception in initializer:' record on the "
        "concurrent.futures logger of the worker; the executor breaks all the same "
        "(tests/test_pool.py::test_executor_breaks_when_an_initializer_raises)",
    "*.test_hang_issue12364":
        "a test of the manager thread of ProcessPoolExecutor (waits on futures "
        "cancelled)",
}

concurrent.futures.ProcessPoolExecutor = pyqueue.Executor  # type: ignore[misc]

from test.test_concurrent_futures import util  # noqa: E402

for _mixin in (util.ProcessPoolForkMixin, util.ProcessPoolSpawnMixin,
               util.ProcessPoolForkserverMixin):
    _mixin.executor_type = pyqueue.Executor

from test.test_concurrent_futures import (test_as_completed, test_init,  # noqa: E402
                                          test_process_pool, test_shutdown, test_wait)

for _mod in (test_as_completed, test_init, test_process_pool, test_shutdown, test_wait):
    for _name, _cls in list(vars(_mod).items()):
        if not (_name.startswith("ProcessPool") and isinstance(_cls, type)
                and issubclass(_cls, unittest.TestCase)):
            continue
        _cls = type(_name, (_cls,), {"__module__": __name__})
        for _attr in dir(_cls):
            if not _attr.startswith("test"):
                continue
            for _pattern, _reason in KNOWN_FAILURES.items():
                if fnmatch.fnmatchcase(f"{_name}.{_attr}", _pattern):
                    setattr(_cls, _attr, unittest.skip("known difference: " + _reason)(
                        getattr(_cls, _attr)))
                    break
        globals()[_name] = _cls


def setUpModule():
    util.setup_module()


class TestPatched(unittest.TestCase):
    """The patch holds: else the tests above test ProcessPoolExecutor."""

    def test_executor_is_pyqueue(self):
        self.assertIs(concurrent.futures.ProcessPoolExecutor, pyqueue.Executor)
        self.assertIs(util.ProcessPoolSpawnMixin.executor_type, pyqueue.Executor)
