"""CPython's own queue tests, run against pyqueue.

The modules mp_fork, mp_spawn and mp_forkserver are what CPython's
test_multiprocessing_fork/spawn/forkserver are: each installs the tests of
``test/_test_multiprocessing.py`` (of the running interpreter) for one start
method -- here only ``_TestQueue``, ``TestSimpleQueue`` and the
``_TestProcess`` tests that use a queue -- after ``_install.patch()`` has
made ``multiprocessing.Queue``/``JoinableQueue``/``SimpleQueue`` and the
contexts' methods of those names pyqueue's classes.  The patch lives in the
module the test classes belong to, so every child (spawned, forkserver'd)
imports it before it unpickles its target.

Run (``.ci/run`` does, one start method a process):

    python -m unittest -v tests.cpython_mp.mp_fork

Tests that fail for a documented reason are skipped from one list,
``_install.KNOWN_FAILURES`` (docs/api.md repeats it with the reasons).

Not named test_*.py: pytest does not collect them with the rest of tests/.
"""
