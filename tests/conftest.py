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
import sys
import time

import pytest

# Children started with "spawn" import their targets from tests._workers:
# make sure the repository root is on sys.path (they inherit the parent's)
# whatever pytest's import mode.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
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


def pytest_configure(config):
    # Python >= 3.12 warns when forking a process that has threads (an
    # mp.Queue feeder thread, for instance).  The suite forks on purpose.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:This process .* is multi-threaded, use of fork\\(\\) may lead to deadlocks:DeprecationWarning",
    )


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))


# --------------------------------------------------------------------------
# /dev/shm leak check
# --------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _shm_leak_check():
    before = list_pyqueue_segments()
    started = time.time()
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
        for p in self._procs:
            if p.is_alive():
                p.kill()
            p.join(10)
            try:
                p.close()
            except ValueError:
                pass


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


IMPLS = ["multiprocessing", "pyqueue"]


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
