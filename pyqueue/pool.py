"""pyqueue.Pool and pyqueue.Executor: multiprocessing.Pool and
concurrent.futures.ProcessPoolExecutor on a WorkQueue, so that a worker
killed in the middle of a task neither hangs nor breaks the pool.

    with pyqueue.Pool(4) as pool:
        print(pool.map(f, range(1000)))

Each task (a call, or a chunk of a map) is one message of a WorkQueue; a
worker takes it, runs it, puts the result on a result Queue, then acks it.
A worker that dies holding a task (SIGKILL, the OOM killer, os._exit) is
found dead by the WorkQueue (the other workers' reaper, pid liveness) and
its task is delivered again, to another worker, with its delivery count
raised; the pool starts a fresh worker. After 1 + max_task_retries
deliveries the WorkQueue dead-letters the task and the pool fails it alone
with WorkerLost, naming the worker's pid and the signal. The results, the
AsyncResult objects and their semantics are multiprocessing.pool's own.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import logging
import mmap
import multiprocessing
import multiprocessing.pool as _mpp
import multiprocessing.util
import os
import pickle
import queue as _queue
import signal
import struct
import sys
import threading
import time
import traceback
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.reduction import ForkingPickler
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Set,
                    Tuple, TypeVar, Union, cast)

from pyqueue import _procscan
from pyqueue.errors import ShutDown, UndecodableMessage, WorkerLost
from pyqueue.queues import Queue
from pyqueue.workqueue import WorkQueue

__all__ = ["Pool", "Executor", "WorkerLost", "AsyncResult", "ApplyResult", "MapResult",
           "IMapIterator", "IMapUnorderedIterator"]

# multiprocessing.pool's result types: what the methods return, so that
# code (and isinstance checks) written for multiprocessing.Pool keeps working.
AsyncResult = _mpp.AsyncResult
ApplyResult = _mpp.ApplyResult
MapResult = _mpp.MapResult
IMapIterator = _mpp.IMapIterator
IMapUnorderedIterator = _mpp.IMapUnorderedIterator

# (not in typeshed's stub of multiprocessing.pool)
_ExceptionWithTraceback: Any = getattr(_mpp, "ExceptionWithTraceback")
_MaybeEncodingError: Any = getattr(_mpp, "MaybeEncodingError")

_T = TypeVar("_T")
_S = TypeVar("_S")
_P = TypeVar("_P", bound="Pool")
_E = TypeVar("_E", bound="Executor")

_logger = logging.getLogger("pyqueue.pool")

_RUN, _CLOSE, _TERMINATE = "RUN", "CLOSE", "TERMINATE"
# What a task message asks: func(*args, **kwds); list(map(func, chunk));
# list(starmap(func, chunk)).
_CALL, _MAP, _STARMAP = 0, 1, 2
# A task message: (job, index) in a fixed header (read even when the rest
# cannot be unpickled), then the pickled (kind, func, args).
_HEADER = struct.Struct("<qq")
# What the workers put on the result queue: bytes, a fixed header (kind,
# job, index, pid) and, for _DONE, the pickled (success, value): the parent
# reads the header even when the value cannot be unpickled, and fails that
# task alone (a result handler that died of it would hang the pool).
_DONE, _STARTED, _INIT_FAILED = 0, 1, 2
_RESULT = struct.Struct("<Bqqq")
# A task that may run longer than this is delivered again while it runs.
_VISIBILITY = 1e8
_POLL = 0.05           # the handler's longest wait between looks at the workers
_DEAD_GRACE = 5.0      # how long a dead-lettered task waits to learn its worker's exit code
DEFAULT_MAX_TASK_RETRIES = 2
_MAX_REPORT = 16384  # characters of a failed initializer's traceback kept
# How often (seconds) a waiting worker looks whether the pool's process is
# still there (a worker of a SIGKILLed pool ends within about this).
_OWNER_CHECK = 1.0
# What a worker sends for a call cancelled before it started (Executor).
_CANCELLED = bytes(ForkingPickler.dumps((False, concurrent.futures.CancelledError())))


def _running(p: Any) -> bool:
    """Whether worker process p runs. is_alive() (waitpid) alone says True
    for ever about a child whose status another waitpid took (a test
    harness's reap_children(), a SIGCHLD handler): its pid gone says no."""
    if not p.is_alive():
        return False
    try:
        os.kill(p.pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass
    return True


def _describe(exitcode: Optional[int]) -> str:
    if exitcode is None:
        return "died"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def _run_task(kind: int, func: Callable[..., Any], args: Any) -> Any:
    if kind == _CALL:
        return func(*args[0], **args[1])
    if kind == _MAP:
        return list(map(func, args))
    return list(itertools.starmap(func, args))


def _owner_gone(owner: Tuple[int, int]) -> bool:
    """Whether the pool's process (pid, start time in clock ticks) is gone:
    dead, a zombie, or its pid reused by a newer process. Not known (/proc
    does not say): not gone."""
    return _procscan.is_alive(owner[0], owner[1]) is False


def _orphaned(tasks: WorkQueue[bytes], results: Queue[Any]) -> None:
    """The pool's process died (SIGKILL, the OOM killer): nobody reads the
    results nor removes the pool's segments any more. Each worker that sees
    it removes them (the second finds them gone) and ends."""
    dlq: Any = None
    try:
        dlq = tasks.dead_letter
    except Exception:  # noqa: BLE001 - gone already
        pass
    for h in (tasks, results, dlq):
        if h is not None:
            try:
                h.unlink()
            except Exception:  # noqa: BLE001 - removed by another worker meanwhile
                pass


def _worker_main(tasks: WorkQueue[bytes], results: Queue[Any],
                 initializer: Optional[Callable[..., Any]], initargs: Tuple[Any, ...],
                 maxtasks: Optional[int], max_deliveries: int,
                 owner: Tuple[int, int] = (0, 0),
                 cancelled: Optional["_CancelTable"] = None) -> None:
    """A worker process: take a task, run it, put its result, ack it.

    It watches the pool's process (owner: pid and start time): every
    _OWNER_CHECK seconds while it waits for a task or for room for a
    result, and between tasks, it ends when that process is gone."""
    pid = os.getpid()
    loads = pickle.loads
    dumps = ForkingPickler.dumps
    head = _RESULT.pack
    watch = owner[0] > 0
    monotonic = time.monotonic
    check_at = monotonic() + _OWNER_CHECK

    def put(data: bytes) -> bool:
        """Put a result; False: the pool's process is gone."""
        while True:
            try:
                results.put(data, timeout=_OWNER_CHECK if watch else None)
                return True
            except _queue.Full:
                if _owner_gone(owner):
                    return False

    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException:  # said to the pool, then this worker dies of it
            put(head(_INIT_FAILED, 0, 0, pid) +
                traceback.format_exc()[-_MAX_REPORT:].encode("utf-8", "replace"))
            raise
    done = 0
    while maxtasks is None or done < maxtasks:
        if watch and monotonic() >= check_at:
            # (a worker busy with a backlog whose pool died: between tasks)
            check_at = monotonic() + _OWNER_CHECK
            if _owner_gone(owner):
                break
        try:
            d = tasks.get(timeout=_OWNER_CHECK if watch else None)
        except _queue.Empty:
            check_at = monotonic() + _OWNER_CHECK
            if _owner_gone(owner):
                break
            continue
        except ShutDown:
            return  # the pool is done with its workers
        msg = d.value
        job, i = _HEADER.unpack_from(msg)
        if cancelled is not None and cancelled.cancelled(job):
            # Executor: a call cancelled before it started never runs.
            if not put(head(_DONE, job, i, pid) + _CANCELLED):
                break
            d.ack()
            continue
        if d.delivery_count > 1 or max_deliveries == 1:
            # A task that may have killed a worker already: say who runs it
            # now, so that its WorkerLost can name this pid.
            if not put(head(_STARTED, job, i, pid)):
                break
        try:
            kind, func, args = loads(memoryview(msg)[_HEADER.size:])
            result: Tuple[bool, Any] = (True, _run_task(kind, func, args))
        except Exception as e:
            result = (False, _ExceptionWithTraceback(e, e.__traceback__))
        try:
            data = dumps(result)
        except Exception as e:  # the result (or its exception) cannot be pickled
            data = dumps((False, _MaybeEncodingError(e, result[1])))
        result = None  # type: ignore[assignment]
        if not put(head(_DONE, job, i, pid) + data):
            break
        data = None  # type: ignore[assignment]
        d.ack()
        done += 1
    else:
        return
    if watch and _owner_gone(owner):
        _orphaned(tasks, results)


class _CancelTable:
    """The calls an Executor cancelled, for its workers to skip: slot
    job % SLOTS holds the job id last cancelled there (-1: none), written
    only by the executor's process, read by a worker before it runs a call.
    An anonymous mapping (memfd): nothing to name or remove; a forked worker
    inherits it, a spawn or forkserver worker gets its descriptor.

    Two cancelled calls whose ids differ by a multiple of SLOTS (65536)
    share a slot: while both wait in the queue, the older one is no longer
    seen as cancelled and runs (its result is dropped, as before)."""

    SLOTS = 1 << 16

    def __init__(self, fd: int = -1) -> None:
        size = self.SLOTS * 8
        if fd < 0:
            fd = os.memfd_create("pyqueue-pool-cancelled", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, size)
                with mmap.mmap(fd, size) as mm:
                    mm.write(b"\xff" * size)  # every slot -1: job ids start at 0
            except BaseException:
                os.close(fd)
                raise
        self._fd = fd
        self._mm = mmap.mmap(fd, size)
        self._slots = memoryview(self._mm).cast("q")

    def cancel(self, job: int) -> None:
        # An aligned 8-byte store: a worker reads the old id or the new one.
        try:
            self._slots[job % self.SLOTS] = job
        except ValueError:
            pass  # closed: the pool is gone, nothing runs any more

    def cancelled(self, job: int) -> bool:
        return bool(self._slots[job % self.SLOTS] == job)

    def close(self) -> None:
        if self._fd < 0:
            return  # (closed: the fd number may be another file's now)
        self._slots.release()
        self._mm.close()
        os.close(self._fd)
        self._fd = -1

    def unlink(self) -> None:
        pass  # (nothing named: see _cleanup)

    def __reduce__(self) -> Any:
        # (only while a spawn or forkserver worker is started: its descriptor)
        from multiprocessing.reduction import DupFd
        return (_rebuild_cancel_table, (DupFd(self._fd),))


def _rebuild_cancel_table(dup: Any) -> _CancelTable:
    return _CancelTable(dup.detach())


# The largest default chunk: a chunk is pickled, sent, run and sent back
# whole, so smaller ones let the parent pickle the next while the workers
# run this one (multiprocessing's heuristic alone gives 125000 items for
# 1M items on 2 workers: both pools are then 2x slower than with 10000).
MAX_DEFAULT_CHUNKSIZE = 8192


def _default_context() -> Any:
    """The start method of a Pool given no context. From Python 3.12 on:
    forkserver (as CPython 3.14's default), or spawn when the program set
    it (multiprocessing.set_start_method); never fork, which a pool does
    from a process with threads: it forks replacement workers from its
    result thread while its feeder thread runs, which Python 3.12+ warns
    about (DeprecationWarning "This process is multi-threaded, use of
    fork() may lead to deadlocks") and which may deadlock the child. ("fork"
    as the process-wide method cannot be told from the default once any
    multiprocessing.get_context() call fixed it: it is not followed.)
    Before 3.12: multiprocessing's default."""
    if sys.version_info >= (3, 12) and "forkserver" in multiprocessing.get_all_start_methods():
        chosen = multiprocessing.get_start_method(allow_none=True)
        return multiprocessing.get_context("spawn" if chosen == "spawn" else "forkserver")
    return multiprocessing.get_context()


def _default_chunksize(n: int, processes: int) -> int:
    """multiprocessing.Pool.map's (about four chunks per worker), capped
    at MAX_DEFAULT_CHUNKSIZE items."""
    chunksize, extra = divmod(n, processes * 4)
    return min(chunksize + 1 if extra else chunksize, MAX_DEFAULT_CHUNKSIZE)


class _Job:
    """What the feeder sends for one job: its tasks (job, index, kind,
    func, args), and what to call with the count once they are sent."""

    __slots__ = ("tasks", "set_length")

    def __init__(self, tasks: Iterable[Tuple[int, int, int, Any, Any]],
                 set_length: Optional[Callable[[int], None]] = None) -> None:
        self.tasks = tasks
        self.set_length = set_length


class _Failed:
    """A task the feeder could not produce: its exception."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _cleanup(handles: List[Any], procs: List[Any], lock: Any, stopping: threading.Event,
             threads: List[threading.Thread]) -> None:
    """terminate() and join() end with it, and it runs at exit for a pool
    left running: the pool's threads stop (no worker is started after
    this), the workers are killed, the queues' segments removed."""
    stopping.set()
    for t in threads:
        if t is not threading.current_thread():
            t.join(5)
    with lock:
        for p in procs:
            if p is not None and p.is_alive():
                p.kill()
        for p in procs:
            if p is not None:
                p.join(5)
    for h in handles:
        try:
            h.unlink()
        except (OSError, ValueError):
            pass
        try:
            h.close()
        except (OSError, ValueError):
            pass


class Pool:
    """A process pool with multiprocessing.Pool's API whose tasks survive
    the death of the worker running them.

    Tasks travel on a pyqueue.WorkQueue and results on a pyqueue.Queue. A
    worker that dies in the middle of a task (SIGKILL, OOM-killed,
    os._exit) is replaced, and its task runs again on another worker, up to
    max_task_retries times; then that task alone fails with
    pyqueue.WorkerLost ("worker pid N killed by SIGKILL while running
    task ..."). A task runs at least once: one that was retried may have
    run (in part) before.

    As multiprocessing.Pool: results come back as multiprocessing.pool
    AsyncResult objects, exceptions raised by a task are re-raised in the
    caller, callbacks run in the pool's result thread, the context manager
    terminates the pool, close() then join() waits for the work to end.

    Args:
        processes: The number of workers (None: os.cpu_count()).
        initializer: Called as initializer(*initargs) in each worker when
            it starts.
        initargs: Its arguments.
        maxtasksperchild: Tasks a worker runs before it is replaced by a
            fresh one (None: no limit). A map chunk counts as one task.
        context: A multiprocessing context or start method name ("fork",
            "spawn", "forkserver"; None: from Python 3.12 on forkserver, or
            spawn if multiprocessing.set_start_method() chose it, never
            fork from the pool's threads; before 3.12 the default).
        max_task_retries: How many times a task whose worker died is run
            again before it fails with WorkerLost (default 2).

    Raises:
        ValueError: processes < 1, maxtasksperchild not a positive int, or
            max_task_retries negative.
        TypeError: initializer is not callable.
    """

    # (Executor's pool: calls cancelled before they start are skipped)
    _CANCELLABLE = False
    # The task queue's max_in_flight (None: WorkQueue's default)
    _MAX_IN_FLIGHT: Optional[int] = None

    def __init__(self, processes: Optional[int] = None,
                 initializer: Optional[Callable[..., Any]] = None,
                 initargs: Iterable[Any] = (), maxtasksperchild: Optional[int] = None,
                 context: Any = None, *,
                 max_task_retries: int = DEFAULT_MAX_TASK_RETRIES) -> None:
        self._state = "INIT"  # (first: __del__ looks at it)
        self._handles: List[Any] = []
        self._pool: List[Any] = []
        if processes is None:
            processes = os.cpu_count() or 1
        if not isinstance(processes, int) or processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (
                not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if not isinstance(max_task_retries, int) or max_task_retries < 0:
            raise ValueError("max_task_retries must be an int >= 0")
        if context is None:
            context = _default_context()
        elif isinstance(context, str):
            context = multiprocessing.get_context(context)
        self._ctx = context
        self._processes = processes
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._maxtasks = maxtasksperchild
        self._max_retries = max_task_retries
        self._max_deliveries = max_task_retries + 1
        self._cache: Dict[int, Any] = {}   # job -> its result (multiprocessing.pool's)
        self._finished: Dict[int, Set[int]] = {}  # job -> indexes done (a retry may repeat one)
        self._started: Dict[Tuple[int, int], int] = {}  # (job, index) -> pid running it now
        self._exits: Dict[int, Optional[int]] = {}  # pid -> exit code, of workers that died
        self._dead: List[Tuple[float, Any]] = []  # dead letters waiting for their exit code
        self._dlq: WorkQueue[bytes] = WorkQueue(max_deliveries=None)
        self._handles.append(self._dlq)
        slots: Dict[str, Any] = ({} if self._MAX_IN_FLIGHT is None
                                 else {"max_in_flight": self._MAX_IN_FLIGHT})
        self._tasks: WorkQueue[bytes] = WorkQueue(
            visibility_timeout=_VISIBILITY, max_deliveries=self._max_deliveries,
            dead_letter=self._dlq, **slots)
        self._handles.append(self._tasks)
        # The workers watch this process: they end when it is gone.
        self._owner = (os.getpid(), _procscan.start_time(os.getpid()) or 0)
        self._cancel: Optional[_CancelTable] = None
        if self._CANCELLABLE:
            self._cancel = _CancelTable()
            self._handles.append(self._cancel)
        self._results: Queue[Any] = Queue()
        self._handles.append(self._results)
        self._pool = [None] * processes
        self._lock = threading.Lock()   # the worker list
        self._set_lock = threading.Lock()  # _finished (not held while callbacks run)
        self._feed: _queue.SimpleQueue[Optional[_Job]] = _queue.SimpleQueue()
        self._stopping = threading.Event()  # terminate(): every thread ends now
        self._threads: List[threading.Thread] = []
        self._cleanup_lock = threading.Lock()
        self._finalizer = multiprocessing.util.Finalize(
            self, _cleanup, args=(self._handles, self._pool, self._lock, self._stopping,
                                  self._threads), exitpriority=15)
        self._tasks_shut = False
        # What the Executor does when a worker's initializer raises (the
        # Pool itself starts another worker, as multiprocessing.Pool does).
        self._on_initializer_error: Optional[Callable[[str], None]] = None
        try:
            for i in range(processes):
                self._pool[i] = self._spawn()
        except BaseException:
            self._state = _TERMINATE
            self._finalizer()
            raise
        self._feeder = threading.Thread(target=self._run_feeder, daemon=True,
                                        name="pyqueue-pool-feeder")
        self._handler = threading.Thread(target=self._run_handler, daemon=True,
                                         name="pyqueue-pool-results")
        self._threads += [self._feeder, self._handler]
        self._feeder.start()
        self._handler.start()
        self._state = _RUN

    # ---- the workers ---------------------------------------------------

    def _spawn(self) -> Any:
        p = self._ctx.Process(target=_worker_main,
                              args=(self._tasks, self._results, self._initializer,
                                    self._initargs, self._maxtasks, self._max_deliveries,
                                    self._owner, self._cancel),
                              name="pyqueue-pool-worker", daemon=True)
        p.start()
        return p

    def _spawn_or_none(self) -> Any:
        try:
            return self._spawn()
        except Exception:  # (EAGAIN, ENOMEM...): tried again at the next turn
            _logger.exception("pyqueue.Pool: could not start a worker; trying again")
            return None

    def _maintain(self) -> None:
        """Reap the workers that ended (noting the exit code of one that
        died) and fill every empty slot while the pool runs or work is
        left."""
        with self._lock:
            want = (not self._stopping.is_set() and not self._tasks_shut
                    and (self._state == _RUN or bool(self._cache)))
            for i, p in enumerate(self._pool):
                if p is not None:
                    if _running(p):
                        continue
                    p.join()  # (reaped: the WorkQueue's reaper sees the pid gone)
                    code = p.exitcode
                    if code != 0:
                        self._exits[p.pid] = code
                        if len(self._exits) > 4096:
                            self._exits.pop(next(iter(self._exits)))
                        _logger.warning("pyqueue.Pool worker pid %s %s; starting another",
                                        p.pid, _describe(code))
                    self._pool[i] = None
                if want:  # (also a slot whose start failed last turn)
                    self._pool[i] = self._spawn_or_none()

    def _repopulate_pool(self) -> None:
        # multiprocessing.Pool's name (CPython's tests call it).
        self._maintain()

    # ---- the feeder: tasks to the WorkQueue ------------------------------

    def _run_feeder(self) -> None:
        while True:
            job = self._feed.get()
            if job is None or self._stopping.is_set():
                return
            if not self._send(job):
                return
            job = None  # keep nothing of a job sent (its items) alive

    def _send(self, job: _Job) -> bool:
        """Put a job's tasks on the WorkQueue; False when the pool is
        terminated meanwhile."""
        dumps = ForkingPickler.dumps
        pack = _HEADER.pack
        tasks = self._tasks
        cancel = self._cancel
        n = 0
        for task in job.tasks:
            if self._stopping.is_set():
                return False
            jid, i, kind, func, args = task
            if kind < 0:  # the iterable raised: that position fails
                self._set(jid, i, (False, args.exc))
                n = i + 1
                break
            n = i + 1
            if cancel is not None and cancel.cancelled(jid):
                self._set(jid, i, (False, concurrent.futures.CancelledError()))
                continue  # (Executor) cancelled before it was sent
            try:
                msg = pack(jid, i) + dumps((kind, func, args))
                # Encoded once (a task above the queue's max_message_bytes:
                # its out-of-band segment made once), put as often as the
                # queue is full.
                enc = tasks._encode_put(msg, None, 0.0)
            except Exception as e:
                # Cannot be pickled, or its out-of-band segment cannot be
                # made (OSError: /dev/shm full, EMFILE; MemoryError): that
                # task fails alone. A feeder that died here left its job,
                # and every later one, waiting for ever.
                self._set(jid, i, (False, e))
                continue
            msg = None  # type: ignore[assignment]
            while True:
                try:
                    tasks._put_prepared(enc, True, _POLL)
                    break
                except _queue.Full:
                    if self._stopping.is_set():
                        tasks._drop_prepared(enc)
                        return False
                except (ShutDown, ValueError):
                    tasks._drop_prepared(enc)
                    return False
                except Exception as e:  # (as above)
                    tasks._drop_prepared(enc)
                    self._set(jid, i, (False, e))
                    break
            enc = None  # type: ignore[assignment]
        if job.set_length is not None:
            job.set_length(n)
        return True

    def _guarded(self, jid: int, kind: int, func: Any,
                 items: Iterable[Any]) -> Iterator[Tuple[int, int, int, Any, Any]]:
        """The tasks of a job; an exception of the iterable is a task of
        kind -1 (the feeder fails that position)."""
        i = -1
        try:
            for i, x in enumerate(items):
                yield jid, i, kind, func, x
        except Exception as e:
            yield jid, i + 1, -1, None, _Failed(e)

    # ---- the handler: results, dead letters, workers -------------------

    def _set(self, job: int, i: int, obj: Tuple[bool, Any]) -> None:
        """Settle position i of a job, once (the feeder and the handler
        both do; a retried task may have sent its result before)."""
        with self._set_lock:
            done = self._finished.setdefault(job, set())
            if i in done:
                return  # a task run again after its worker died having sent it
            r = self._cache.get(job)
            if r is None:
                self._finished.pop(job, None)
                return
            done.add(i)
        try:
            r._set(i, obj)
        except Exception:  # a callback raised: as multiprocessing's, it is logged
            _logger.exception("pyqueue.Pool: a callback raised")
        if job not in self._cache:
            self._finished.pop(job, None)

    def _run_handler(self) -> None:
        while not self._stopping.is_set():
            try:
                if not self._handle_once():
                    return
            except Exception:  # never die: the pool would hang
                _logger.exception("pyqueue.Pool: the result thread failed; going on")
                self._stopping.wait(_POLL)

    def _handle_once(self) -> bool:
        """One turn of the result thread: results, workers, dead letters,
        the end after close(). False: the thread is done."""
        items: Optional[List[bytes]]
        try:
            items = self._results.get_many(1024, timeout=_POLL)
        except _queue.Empty:
            items = []
        except (ValueError, OSError, ShutDown):
            return False  # closed: terminated
        if items:
            self._dispatch(items)
            items = None  # (the results must not outlive their use: test_release_task_refs)
        if self._stopping.is_set():
            return False
        self._maintain()
        self._take_dead()
        if (self._state != _RUN and not self._cache and not self._feeder.is_alive()
                and not self._tasks_shut):
            # Closed and every job done: the workers may go.
            self._tasks_shut = True
            try:
                self._tasks.shutdown()
            except ValueError:
                return False
        if self._tasks_shut:
            with self._lock:
                if all(p is None or not _running(p) for p in self._pool):
                    return False
        return True

    def _dispatch(self, items: List[bytes]) -> None:
        unpack = _RESULT.unpack_from
        size = _RESULT.size
        for raw in items:
            kind, job, i, pid = unpack(raw)
            if kind == _STARTED:
                self._started[(job, i)] = pid
                continue
            if kind == _INIT_FAILED:
                report = bytes(memoryview(raw)[size:]).decode("utf-8", "replace")
                _logger.error("pyqueue.Pool worker pid %s: its initializer raised:\n%s",
                              pid, report)
                if self._on_initializer_error is not None:
                    self._on_initializer_error(report)
                continue
            self._started.pop((job, i), None)
            try:
                obj = pickle.loads(memoryview(raw)[size:])
            except Exception as e:  # e.g. an exception class that does not unpickle
                err = UndecodableMessage(
                    f"the result of task {i} of job {job} could not be unpickled: "
                    f"{type(e).__name__}: {e}", cause=e)
                err.__cause__ = e
                obj = (False, err)
            self._set(job, i, obj)

    def _take_dead(self) -> None:
        now = time.monotonic()
        while True:
            try:
                b = self._dlq.get_many(64, block=False)
            except (_queue.Empty, ShutDown, ValueError):
                break
            for letter in b.values:
                self._dead.append((now + _DEAD_GRACE, letter))
            b.ack()
        if not self._dead:
            return
        self._maintain()  # the exit codes of the workers that just died
        keep = []
        for due, letter in self._dead:
            raw = letter.value if isinstance(letter.value, (bytes, bytearray)) else letter.raw
            job, i = _HEADER.unpack_from(raw)
            pid = self._started.get((job, i))
            if (pid is None or pid not in self._exits) and now < due:
                keep.append((due, letter))  # its death is not seen yet
                continue
            self._started.pop((job, i), None)
            code = self._exits.get(pid) if pid is not None else None
            who = f"worker pid {pid}" if pid is not None else "a worker"
            exc = WorkerLost(f"{who} {_describe(code)} while running task {i} of job {job} "
                             f"({letter.attempts} tries, max_task_retries="
                             f"{self._max_retries}; last: {letter.reason})",
                             pid=pid, exitcode=code, attempts=letter.attempts)
            self._set(job, i, (False, exc))
        self._dead = keep

    # ---- the API -------------------------------------------------------

    def _check_running(self) -> None:
        if self._state != _RUN:
            raise ValueError("Pool not running")

    def _submit(self, result: Any, kind: int, func: Any, items: Iterable[Any],
                set_length: Optional[Callable[[int], None]] = None) -> None:
        self._feed.put(_Job(self._guarded(result._job, kind, func, items), set_length))

    def apply(self, func: Callable[..., _T], args: Iterable[Any] = (),
              kwds: Mapping[str, Any] = {}) -> _T:
        """Call func(*args, **kwds) in a worker and return its result.

        Args:
            func: A picklable callable.
            args: Its positional arguments.
            kwds: Its keyword arguments.

        Returns:
            What func returned.

        Raises:
            ValueError: The pool is closed ("Pool not running").
            WorkerLost: Every try's worker died while running it.
            Exception: What func raised.
        """
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func: Callable[..., _T], args: Iterable[Any] = (),
                    kwds: Mapping[str, Any] = {},
                    callback: Optional[Callable[[_T], object]] = None,
                    error_callback: Optional[Callable[[BaseException], object]] = None
                    ) -> "_mpp.ApplyResult[_T]":
        """Call func(*args, **kwds) in a worker.

        Args:
            func: A picklable callable.
            args: Its positional arguments.
            kwds: Its keyword arguments.
            callback: Called with the result (in the pool's result thread).
            error_callback: Called with the exception when it fails.

        Returns:
            An AsyncResult (get, wait, ready, successful).

        Raises:
            ValueError: The pool is closed ("Pool not running").
        """
        self._check_running()
        result: Any = ApplyResult(cast(Any, self), callback, error_callback)
        self._submit(result, _CALL, func, [(tuple(args), dict(kwds))])
        return result  # type: ignore[no-any-return]

    def _map_async(self, func: Any, iterable: Iterable[Any], kind: int,
                   chunksize: Optional[int], callback: Any, error_callback: Any) -> Any:
        self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        items: Any = iterable
        if chunksize is None:
            chunksize = _default_chunksize(len(items), self._processes)
        if len(items) == 0:
            chunksize = 0
        result: Any = MapResult(cast(Any, self), chunksize, len(items), callback, error_callback)
        if chunksize:
            self._submit(result, kind, func, _chunks(items, chunksize))
        return result

    def map(self, func: Callable[[_S], _T], iterable: Iterable[_S],
            chunksize: Optional[int] = None) -> List[_T]:
        """[func(x) for x in iterable], run in the workers, in order.

        Args:
            func: A picklable callable.
            iterable: The arguments (made a list first if it has no len()).
            chunksize: Items sent as one task (None: about four tasks per
                worker, as multiprocessing.Pool).

        Returns:
            The results, in order.

        Raises:
            ValueError: The pool is closed ("Pool not running").
            WorkerLost: A chunk's worker died on every try.
            Exception: The first exception a call raised.
        """
        return self._map_async(func, iterable, _MAP, chunksize, None,  # type: ignore
                               None).get()

    def starmap(self, func: Callable[..., _T], iterable: Iterable[Iterable[Any]],
                chunksize: Optional[int] = None) -> List[_T]:
        """[func(*args) for args in iterable], run in the workers.

        Args:
            func: A picklable callable.
            iterable: The argument tuples.
            chunksize: As map().

        Returns:
            The results, in order.

        Raises:
            ValueError: The pool is closed ("Pool not running").
            Exception: The first exception a call raised.
        """
        return self._map_async(func, iterable, _STARMAP, chunksize, None,  # type: ignore
                               None).get()

    def map_async(self, func: Callable[[_S], _T], iterable: Iterable[_S],
                  chunksize: Optional[int] = None,
                  callback: Optional[Callable[[List[_T]], object]] = None,
                  error_callback: Optional[Callable[[BaseException], object]] = None
                  ) -> "_mpp.MapResult[_T]":
        """map(), without waiting.

        Args:
            func: A picklable callable.
            iterable: The arguments.
            chunksize: As map().
            callback: Called with the list of results.
            error_callback: Called with the first exception.

        Returns:
            An AsyncResult whose get() returns the list.

        Raises:
            ValueError: The pool is closed ("Pool not running").
        """
        return self._map_async(func, iterable, _MAP, chunksize, callback,  # type: ignore
                               error_callback)

    def starmap_async(self, func: Callable[..., _T], iterable: Iterable[Iterable[Any]],
                      chunksize: Optional[int] = None,
                      callback: Optional[Callable[[List[_T]], object]] = None,
                      error_callback: Optional[Callable[[BaseException], object]] = None
                      ) -> "_mpp.MapResult[_T]":
        """starmap(), without waiting.

        Args:
            func: A picklable callable.
            iterable: The argument tuples.
            chunksize: As map().
            callback: Called with the list of results.
            error_callback: Called with the first exception.

        Returns:
            An AsyncResult whose get() returns the list.

        Raises:
            ValueError: The pool is closed ("Pool not running").
        """
        return self._map_async(func, iterable, _STARMAP, chunksize,  # type: ignore
                               callback, error_callback)

    def _imap(self, cls: Any, func: Any, iterable: Iterable[Any], chunksize: int) -> Any:
        self._check_running()
        if chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
        result: Any = cls(self)
        if chunksize == 1:
            self._submit(result, _CALL, func, (((x,), {}) for x in iterable),
                         result._set_length)
            return result
        self._submit(result, _MAP, func, _chunks(iterable, chunksize), result._set_length)
        return (item for chunk in result for item in chunk)

    def imap(self, func: Callable[[_S], _T], iterable: Iterable[_S],
             chunksize: int = 1) -> Iterator[_T]:
        """func(x) for each x of iterable, lazily, in order (the iterable is
        read by the pool's feeder thread as the workers need it).

        Args:
            func: A picklable callable.
            iterable: The arguments.
            chunksize: Items sent as one task.

        Returns:
            An iterator of the results; its next() re-raises a call's
            exception (and takes timeout= when chunksize is 1).

        Raises:
            ValueError: The pool is closed, or chunksize < 1.
        """
        return self._imap(IMapIterator, func, iterable, chunksize)  # type: ignore

    def imap_unordered(self, func: Callable[[_S], _T], iterable: Iterable[_S],
                       chunksize: int = 1) -> Iterator[_T]:
        """imap(), the results in the order they are ready.

        Args:
            func: A picklable callable.
            iterable: The arguments.
            chunksize: Items sent as one task.

        Returns:
            An iterator of the results.

        Raises:
            ValueError: The pool is closed, or chunksize < 1.
        """
        return self._imap(IMapUnorderedIterator, func, iterable, chunksize)  # type: ignore

    def close(self) -> None:
        """Take no more work; the workers end once what was given is done
        (join() waits for that)."""
        if self._state == _RUN:
            self._state = _CLOSE
            self._feed.put(None)

    def terminate(self) -> None:
        """Stop the workers now (SIGTERM, then SIGKILL), without finishing
        the work; the results not ready stay not ready. Then release the
        queues."""
        if self._state == _TERMINATE and not self._handler.is_alive():
            return
        self._state = _TERMINATE
        self._stopping.set()
        self._feed.put(None)
        with self._lock:
            procs = [p for p in self._pool if p is not None]
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
        self._feeder.join()
        self._handler.join()
        with self._cleanup_lock:  # a second caller waits for the first's cleanup
            self._finalizer()

    def join(self) -> None:
        """Wait for the workers to end, after close() (all work done) or
        terminate(); then release the queues.

        Raises:
            ValueError: The pool is still running (call close() first).
        """
        if self._state == _RUN:
            raise ValueError("Pool is still running")
        self._feeder.join()
        self._handler.join()
        with self._lock:
            procs = [p for p in self._pool if p is not None]
        for p in procs:
            p.join()
        with self._cleanup_lock:  # a second caller waits for the first's cleanup
            self._finalizer()

    def __enter__(self: _P) -> _P:
        self._check_running()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    def __reduce__(self) -> Any:
        raise NotImplementedError(
            "pool objects cannot be passed between processes or pickled")

    def __repr__(self) -> str:
        return (f"<pyqueue.Pool state={self._state} "
                f"pool_size={self.__dict__.get('_processes')}>")

    def __del__(self) -> None:
        if getattr(self, "_state", None) == _RUN:
            import warnings
            warnings.warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning,
                          source=self)


def _chunks(items: Iterable[Any], size: int) -> Iterator[Any]:
    """items in chunks of size: slices of a list, tuple or range (one
    copy in C), else tuples."""
    if type(items) in (list, tuple, range):
        seq: Any = items
        for k in range(0, len(seq), size):
            yield seq[k:k + size]
        return
    it = iter(items)
    while True:
        chunk = tuple(itertools.islice(it, size))
        if not chunk:
            return
        yield chunk


# ---- Executor -----------------------------------------------------------

def _process_chunk(fn: Callable[..., Any], chunk: Iterable[Tuple[Any, ...]]) -> List[Any]:
    return [fn(*args) for args in chunk]


class _ExecutorPool(Pool):
    """The Executor's Pool: its workers skip the calls cancelled before
    they start."""

    _CANCELLABLE = True


class Executor(concurrent.futures.Executor):
    """concurrent.futures.ProcessPoolExecutor's API on a pyqueue.Pool: a
    worker killed in the middle of a task does not break the executor (no
    BrokenProcessPool); the task is run again on a fresh worker, up to
    max_task_retries times, then its future alone fails with WorkerLost.

    A future is pending until its result comes: cancel() succeeds until
    then. A call cancelled before a worker took it never runs (as
    ProcessPoolExecutor); one already started runs on and its result is
    dropped.

    Args:
        max_workers: The number of workers (None: os.cpu_count()).
        mp_context: A multiprocessing context or start method name (None:
            as Pool(context=None)).
        initializer: Called as initializer(*initargs) in each worker.
        initargs: Its arguments.
        max_tasks_per_child: Tasks a worker runs before it is replaced.
        max_task_retries: As Pool (default 2).

    Raises:
        ValueError: max_workers < 1, or a bad max_tasks_per_child.
        TypeError: initializer is not callable.
    """

    def __init__(self, max_workers: Optional[int] = None, mp_context: Any = None,
                 initializer: Optional[Callable[..., Any]] = None,
                 initargs: Tuple[Any, ...] = (), *,
                 max_tasks_per_child: Optional[int] = None,
                 max_task_retries: int = DEFAULT_MAX_TASK_RETRIES) -> None:
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self._shutdown_lock = threading.Lock()
        self._shut = False
        self._broken: Optional[str] = None
        self._pending: Set["concurrent.futures.Future[Any]"] = set()
        self._joiner: Optional[threading.Thread] = None
        self._pool = _ExecutorPool(max_workers, initializer, initargs, max_tasks_per_child,
                                   mp_context, max_task_retries=max_task_retries)
        self._pool._on_initializer_error = self._initializer_failed

    def _initializer_failed(self, report: str) -> None:
        """A worker's initializer raised: as ProcessPoolExecutor, the
        executor is broken (every pending future fails, submit raises)."""
        with self._shutdown_lock:
            if self._broken is not None:
                return
            self._broken = ("a worker's initializer raised; the executor is not usable "
                            "any more:\n" + report)
            pending = list(self._pending)
            self._pending.clear()
        for f in pending:
            try:
                f.set_exception(BrokenProcessPool(self._broken))
            except (concurrent.futures.InvalidStateError, RuntimeError):
                pass  # done or cancelled meanwhile
        # (from the pool's result thread, which terminate() joins: another thread)
        threading.Thread(target=self._pool.terminate, daemon=True,
                         name="pyqueue-executor-broken").start()

    def submit(self, fn: Callable[..., _T], /, *args: Any,
               **kwargs: Any) -> "concurrent.futures.Future[_T]":
        """Run fn(*args, **kwargs) in a worker.

        Args:
            fn: A picklable callable.
            *args: Its positional arguments.
            **kwargs: Its keyword arguments.

        Returns:
            A Future: its result, or the exception fn raised, or WorkerLost.

        Raises:
            RuntimeError: The executor was shut down.
            BrokenProcessPool: A worker's initializer raised (as
                ProcessPoolExecutor, the executor is then unusable).
        """
        f: concurrent.futures.Future[_T] = concurrent.futures.Future()
        pending = self._pending

        def ok(value: Any) -> None:
            pending.discard(f)
            try:
                if f.set_running_or_notify_cancel():
                    f.set_result(value)
            except (concurrent.futures.InvalidStateError, RuntimeError):
                pass  # failed already (the executor broke)

        def failed(exc: BaseException) -> None:
            pending.discard(f)
            try:
                if f.set_running_or_notify_cancel():
                    f.set_exception(exc)
            except (concurrent.futures.InvalidStateError, RuntimeError):
                pass

        with self._shutdown_lock:
            if self._broken is not None:
                raise BrokenProcessPool(self._broken)
            if self._shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
            pending.add(f)
            job: int = cast(Any, self._pool.apply_async(fn, args, kwargs, callback=ok,
                                                        error_callback=failed))._job
            cancel = self._pool._cancel
            assert cancel is not None

            def cancelled(f: "concurrent.futures.Future[Any]") -> None:
                if f.cancelled():  # (the workers skip it if it has not started)
                    cancel.cancel(job)

            f.add_done_callback(cancelled)
        return f

    def map(self, fn: Callable[..., _T], *iterables: Iterable[Any],
            timeout: Optional[float] = None, chunksize: int = 1) -> Iterator[_T]:
        """fn over the iterables, as the built-in map(), run in the workers.

        Args:
            fn: A picklable callable.
            *iterables: Its arguments.
            timeout: Seconds from this call until next() raises TimeoutError
                (None: no limit).
            chunksize: Calls sent as one task.

        Returns:
            An iterator of the results, in order; next() re-raises a call's
            exception.

        Raises:
            ValueError: chunksize < 1.
            RuntimeError: The executor was shut down.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        chunks = _chunks(zip(*iterables), chunksize)
        results = super().map(_process_chunk_of(fn), chunks, timeout=timeout)
        return _each_of_lists(results)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more work; with wait, wait until what was submitted is
        done and the workers ended.

        Args:
            wait: Wait for the pending futures and the workers.
            cancel_futures: Cancel the futures not done yet first.
        """
        with self._shutdown_lock:
            if cancel_futures:
                for f in list(self._pending):
                    f.cancel()
            if not self._shut:
                self._shut = True
                self._pool.close()
                if not wait:
                    self._joiner = threading.Thread(target=self._pool.join, daemon=True,
                                                    name="pyqueue-executor-join")
                    self._joiner.start()
        if wait:
            if self._joiner is not None:
                self._joiner.join()
            else:
                self._pool.join()


def _each_of_lists(lists: Iterable[List[_T]]) -> Iterator[_T]:
    """The items of each list in turn, each popped before it is yielded:
    nothing here keeps a result alive once the caller dropped it."""
    for chunk in lists:
        chunk.reverse()
        while chunk:
            yield chunk.pop()


class _process_chunk_of:
    """fn applied to a chunk of argument tuples (picklable)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, chunk: Iterable[Tuple[Any, ...]]) -> List[Any]:
        return _process_chunk(self.fn, chunk)
