"""Shared fixtures for the pyqueue test suite.

* ``ctx``            -- parametrized over the ``fork`` and ``spawn`` start methods.
* ``make_queue``     -- factory for pyqueue queues; closes and unlinks them at teardown.
* ``impl`` / ``impl_ctx`` -- drop-in factories (``multiprocessing`` vs ``pyqueue``)
  used by tests/test_dropin.py so the same test body runs against both.
* ``_shm_leak_check`` (autouse) -- fails a test that leaves new pyqueue segments
  in /dev/shm behind.
* every test gets a default ``timeout`` marker (60 s) unless it sets its own.
"""

import multiprocessing
import multiprocessing.queues
import os
import signal
import sys
import time

import pytest

# Children started with "spawn" import their targets from tests._workers:
# make sure the directory holding tests/ is on sys.path (they inherit the
# parent's) whatever pytest's import mode.  A developer's run puts it first,
# so that the source tree (built in place, or installed editable) is what
# is tested.  CI's packaging stage sets PYQUEUE_EXPECT_INSTALLED=1 and
# runs a copy of tests/ from outside the repository: there the directory
# goes last and pytest_configure checks that pyqueue is the installed one.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPECT_INSTALLED = os.environ.get("PYQUEUE_EXPECT_INSTALLED", "") not in ("", "0")
STRICT_SKIPS = os.environ.get("PYQUEUE_STRICT_SKIPS", "") not in ("", "0")
if _ROOT not in sys.path:
    if EXPECT_INSTALLED:
        sys.path.append(_ROOT)
    else:
        sys.path.insert(0, _ROOT)

from tests import _support  # noqa: E402
from tests._support import (  # noqa: E402
    SHM_DIR,
    list_pyqueue_segments,
    pyqueue_available,
    remove_segment_file,
)

DEFAULT_TIMEOUT = 60

START_METHODS = ["fork", "spawn"]


def _allow_sigint():
    # Tests send SIGINT to their children and expect a KeyboardInterrupt, as
    # a Ctrl-C in a terminal gives. A run started in the background by a
    # non-interactive shell (`pytest ... &`: CI's runs side by side, and the
    # pytest-xdist workers such a run starts) inherits SIGINT ignored, and
    # so would every child: give this process, and so its children, the
    # disposition a terminal's program has.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_allow_sigint()


def pytest_configure(config):
    # Python >= 3.12 warns when forking a process that has threads (an
    # mp.Queue feeder thread, for instance).  The suite forks on purpose.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:This process .* is multi-threaded, use of fork\\(\\) may lead to deadlocks:DeprecationWarning",
    )
    if STRICT_SKIPS:
        # Without pytest-timeout the timeout markers do nothing and a hang
        # is only caught by CI's outer timeout: refuse to run.
        if not config.pluginmanager.hasplugin("timeout"):
            raise pytest.UsageError("PYQUEUE_STRICT_SKIPS=1: pytest-timeout is not installed "
                                    "(pip install -e '.[test]')")
        config._pyqueue_allowed_skips = _support.load_allowed_skips()
    if EXPECT_INSTALLED:
        _check_installed()
    if os.environ.get("PYQUEUE_SKIP_SPAWN_TWINS") == "1":
        config.pluginmanager.register(_SkipSpawnTwins(), "pyqueue-skip-spawn-twins")


def _under(path, root):
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root + os.sep)


def _check_installed():
    """PYQUEUE_EXPECT_INSTALLED=1: pyqueue must be an installed package, not
    the source tree this copy of the tests came from (PYQUEUE_SOURCE_TREE)
    nor anything beside the tests."""
    import pyqueue
    import pyqueue._core

    where = pyqueue.__file__
    trees = [_ROOT] + [t for t in [os.environ.get("PYQUEUE_SOURCE_TREE")] if t]
    for tree in trees:
        if _under(where, tree):
            raise pytest.UsageError("PYQUEUE_EXPECT_INSTALLED=1 but pyqueue is imported from %s, "
                                    "under %s" % (where, tree))
    if not any(_under(where, d) for d in sys.path if d.endswith("site-packages")):
        raise pytest.UsageError("PYQUEUE_EXPECT_INSTALLED=1 but pyqueue (%s) is not in a "
                                "site-packages directory" % where)
    if not _under(pyqueue._core.__file__, os.path.dirname(where)):
        raise pytest.UsageError("pyqueue._core (%s) is not the installed package's"
                                % pyqueue._core.__file__)


# --------------------------------------------------------------------------
# CI: every skip must be on tests/allowed_skips.txt (PYQUEUE_STRICT_SKIPS=1)
# --------------------------------------------------------------------------

_skipped = []  # (nodeid, reason)


def _skip_reason(report):
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        reason = lr[2]
    else:
        reason = str(lr)
    return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append((report.nodeid, _skip_reason(report)))


def pytest_collectreport(report):
    # A module that skips itself (importorskip at the top, pytest.skip(allow_module_level)).
    if report.skipped:
        _skipped.append((report.nodeid, _skip_reason(report)))


def _unapproved(config):
    entries = getattr(config, "_pyqueue_allowed_skips", None)
    if entries is None:
        return []
    return _support.unapproved_skips(_skipped, entries, os.geteuid() == 0)


def pytest_sessionfinish(session, exitstatus):
    if _unapproved(session.config) and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    bad = _unapproved(config)
    if bad:
        terminalreporter.section("skips not on tests/allowed_skips.txt", sep="=", red=True)
        for nodeid, reason in bad:
            terminalreporter.line("%s: %s" % (nodeid, reason), red=True)
        terminalreporter.line("PYQUEUE_STRICT_SKIPS=1: a skip that is not on the list fails "
                              "the run; make the test run here, or add it with the reason",
                              red=True)


class _SkipSpawnTwins:
    """PYQUEUE_SKIP_SPAWN_TWINS=1 (CI's ASan run): a spawn case whose fork
    twin runs is left out (tests/_support.py spawn_twins; the plain run
    keeps both). A plugin of its own, so that it can run last: after -m
    and -k, and so after pytest_collection_modifyitems below, whose redis
    mark -m must see first."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config, items):
        twins = _support.spawn_twins(item.nodeid for item in items)
        if twins:
            config.hook.pytest_deselected(items=[i for i in items if i.nodeid in twins])
            items[:] = [i for i in items if i.nodeid not in twins]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))
        # A test that starts a real redis-server is a Redis test: .ci/run
        # runs those apart (-m redis) and not under ASan.
        if {"redis_server", "redis_cluster"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)


# --------------------------------------------------------------------------
# /dev/shm leak check
# --------------------------------------------------------------------------

# The leak check blames segments named after a dead process only when that
# process was a child of this run: note every child the tests start.
def _note_children():
    import multiprocessing.process
    import subprocess

    start = multiprocessing.process.BaseProcess.start
    popen_init = subprocess.Popen.__init__

    def noting_start(self, *args, **kwargs):
        start(self, *args, **kwargs)
        _support.note_child(self.pid)

    def noting_popen_init(self, *args, **kwargs):
        popen_init(self, *args, **kwargs)
        _support.note_child(self.pid)

    multiprocessing.process.BaseProcess.start = noting_start
    subprocess.Popen.__init__ = noting_popen_init


_note_children()


@pytest.fixture(autouse=True)
def _shm_leak_check():
    before = list_pyqueue_segments()
    started = time.monotonic()
    yield
    after = list_pyqueue_segments()
    leaked = sorted(
        name
        for name in after - before
        if _support.segment_belongs_to_this_run(name, started)
    )
    if leaked:
        # Remove them so that one leak does not cascade into later tests.
        for name in leaked:
            remove_segment_file(name)
        pytest.fail(
            "test left pyqueue shared-memory segments behind in %s: %s"
            % (SHM_DIR, ", ".join(leaked)),
            pytrace=False,
        )


# --------------------------------------------------------------------------
# start methods
# --------------------------------------------------------------------------

@pytest.fixture(params=START_METHODS)
def ctx(request):
    return multiprocessing.get_context(request.param)


@pytest.fixture
def spawn_ctx():
    return multiprocessing.get_context("spawn")


# --------------------------------------------------------------------------
# process hygiene: every Process started through ``procs`` is joined (and
# killed if it outlives the test).
# --------------------------------------------------------------------------

class ProcessGroup:
    def __init__(self):
        self._procs = []

    def start(self, ctx, target, *args, **kwargs):
        p = ctx.Process(target=target, args=args, kwargs=kwargs, daemon=True)
        p.start()
        self._procs.append(p)
        return p

    def join_all(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        for p in self._procs:
            p.join(max(0.0, deadline - time.monotonic()))
        return [p.exitcode for p in self._procs]

    def cleanup(self):
        # Every step runs whatever an earlier one raised (a process that
        # exits between is_alive() and kill(), a close() of one still
        # running): one failure must not leave the other processes alive.
        def kill(p):
            if p.is_alive():
                p.kill()

        def reap(p):
            p.join(10)
            try:
                p.close()
            except ValueError:
                pass

        _support.run_cleanups([lambda p=p: kill(p) for p in self._procs]
                              + [lambda p=p: reap(p) for p in self._procs])


@pytest.fixture
def procs():
    group = ProcessGroup()
    yield group
    group.cleanup()


# --------------------------------------------------------------------------
# pyqueue factories
# --------------------------------------------------------------------------

def _require_pyqueue():
    if not pyqueue_available():
        pytest.skip("pyqueue is not built/installed yet")
    import pyqueue

    return pyqueue


@pytest.fixture
def pyqueue_mod(_shm_leak_check):
    return _require_pyqueue()


class PyQueueFactory:
    """Creates pyqueue queues and closes + unlinks them at teardown."""

    def __init__(self, pyqueue):
        self.pyqueue = pyqueue
        self._queues = []
        self._names = set()

    def track(self, q):
        self._queues.append(q)
        return q

    def __call__(self, *args, **kwargs):
        return self.Queue(*args, **kwargs)

    def Queue(self, *args, **kwargs):
        return self.track(self.pyqueue.Queue(*args, **kwargs))

    def JoinableQueue(self, *args, **kwargs):
        return self.track(self.pyqueue.JoinableQueue(*args, **kwargs))

    def SimpleQueue(self, *args, **kwargs):
        return self.track(self.pyqueue.SimpleQueue(*args, **kwargs))

    def open(self, name):
        return self.track(self.pyqueue.Queue.open(name))

    def unique_name(self, tag="t"):
        name = _support.unique_name(tag)
        self._names.add(name)
        return name

    def cleanup(self):
        for q in reversed(self._queues):
            name = getattr(q, "name", None)
            if name is not None:
                self._names.add(name)
            for method in ("unlink", "close"):
                try:
                    getattr(q, method)()
                except (FileNotFoundError, ValueError, OSError):
                    pass
        self._queues.clear()
        # Named queues created by children from names handed out here.
        for name in self._names:
            _support.remove_queue_segments(name)


@pytest.fixture
def make_queue(pyqueue_mod):
    factory = PyQueueFactory(pyqueue_mod)
    yield factory
    factory.cleanup()


# --------------------------------------------------------------------------
# drop-in implementations (multiprocessing vs pyqueue)
# --------------------------------------------------------------------------

class MPFactory:
    """multiprocessing's queues, from a given context."""

    name = "multiprocessing"

    def __init__(self, ctx):
        self.ctx = ctx
        self._queues = []

    def Queue(self, maxsize=0):
        q = self.ctx.Queue(maxsize)
        self._queues.append(q)
        return q

    def JoinableQueue(self, maxsize=0):
        q = self.ctx.JoinableQueue(maxsize)
        self._queues.append(q)
        return q

    def SimpleQueue(self):
        q = self.ctx.SimpleQueue()
        self._queues.append(q)
        return q

    def cleanup(self):
        for q in self._queues:
            if isinstance(q, multiprocessing.queues.SimpleQueue):
                q.close()
                continue
            # Never hang at teardown on unflushed data of a failed test.
            q.cancel_join_thread()
            q.close()
        # Let the feeder threads of the closed queues finish (bounded: one
        # blocked on a full pipe nobody reads is left behind). A thread
        # still running when a later test forks can leave the child stuck
        # on a lock that thread held at the fork (the allocator's, under
        # ASan): the ASan stage of a clean-clone CI run saw the forked
        # child of the next test (after test_cancel_join_thread_then_close_
        # and_join, whose feeder outlives it) never put anything.
        deadline = time.monotonic() + 5.0
        for q in self._queues:
            feeder = getattr(q, "_thread", None)  # multiprocessing's own attribute
            if feeder is not None:
                feeder.join(max(0.0, deadline - time.monotonic()))
        self._queues.clear()


class PQDropInFactory:
    """pyqueue's queues with the multiprocessing constructor signature."""

    name = "pyqueue"

    def __init__(self, ctx, pyqueue):
        self.ctx = ctx
        self._inner = PyQueueFactory(pyqueue)

    def Queue(self, maxsize=0):
        return self._inner.Queue(maxsize)

    def JoinableQueue(self, maxsize=0):
        return self._inner.JoinableQueue(maxsize)

    def SimpleQueue(self):
        return self._inner.SimpleQueue()

    def cleanup(self):
        self._inner.cleanup()


# The reference implementation's cases are marked "reference": the
# sanitizer pass leaves them out (they run none of pyqueue's C code, and a
# fork child of the ASan-instrumented test process that starts a thread,
# as multiprocessing.Queue's feeder does, can hang there: CI run 28).
IMPLS = [pytest.param("multiprocessing", marks=pytest.mark.reference), "pyqueue"]


def _make_impl(name, ctx):
    if name == "multiprocessing":
        return MPFactory(ctx)
    return PQDropInFactory(ctx, _require_pyqueue())


@pytest.fixture(params=IMPLS)
def impl(request, _shm_leak_check):
    """Drop-in factory; multiprocessing queues come from the default context."""
    factory = _make_impl(request.param, multiprocessing.get_context())
    yield factory
    factory.cleanup()


@pytest.fixture(params=IMPLS)
def impl_ctx(request, ctx, _shm_leak_check):
    """Drop-in factory bound to the ``ctx`` start method (for process tests)."""
    factory = _make_impl(request.param, ctx)
    yield factory
    factory.cleanup()


@pytest.fixture
def raw_segments():
    """create(content, size=None, tag="raw") makes a raw POSIX shared-memory
    segment named like a queue, holding `content` (not necessarily a pyqueue
    segment), and returns its queue name; all are removed at teardown."""
    import mmap

    posix_ipc = pytest.importorskip("posix_ipc")
    made = []

    def create(content, size=None, tag="raw"):
        name = _support.unique_name(tag)
        size = len(content) if size is None else size
        shm = posix_ipc.SharedMemory(_support.posix_name(name), posix_ipc.O_CREX, mode=0o600,
                                     size=size)
        made.append(name)
        try:
            if content:
                with mmap.mmap(shm.fd, size) as m:
                    m[:len(content)] = content
        finally:
            shm.close_fd()
        return name

    yield create
    for name in made:
        try:
            posix_ipc.unlink_shared_memory(_support.posix_name(name))
        except posix_ipc.ExistentialError:
            pass
