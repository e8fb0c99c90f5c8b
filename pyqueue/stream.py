"""pyqueue.StreamProcessor: a pool of workers that drains a WorkQueue or a
Log consumer group through a function, with the guarantees of its source.

    with StreamProcessor(orders, charge, sink=receipts, workers=4) as sp:
        sp.join()        # until stop(), SIGTERM or Ctrl-C

A WorkQueue source: each message is acked when fn returns, nacked (with the
error) when it raises, and so dead-lettered after its delivery limit; a
worker that crashes is restarted and what it held is delivered again. A Log
source (`source=log, group="name"`): each worker is a member of the group
and commits after each batch it processed; a worker that crashes is
restarted and the group rebalances, so its uncommitted records are read
again. Results that are not None go to `sink` (a Queue or WorkQueue: put, a
Topic: publish, a Log: append). SIGTERM and SIGINT (in the process that
called start()) stop the intake; every worker finishes what it holds.

A worker also ends when its source is shut down (source.shutdown() or
StreamProcessor.shutdown(), by any process): it wakes at once if it was
waiting, drains what is left, and ends; the processor restarts no worker
then and stops once every worker ended (join() returns). SIGTERM, stop()
and the source's shutdown end a worker's loop at the same place, after the
message it holds.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import queue as _queue
import signal
import threading
import time
import traceback
from typing import (TYPE_CHECKING, Any, Callable, Dict, List, Mapping, NamedTuple,
                    Optional, Set, Tuple, Type, TypeVar, Union)

from pyqueue.errors import ShutDown

if TYPE_CHECKING:
    from pyqueue.log import Log
    from pyqueue.queues import Queue
    from pyqueue.topic import Topic
    from pyqueue.workqueue import WorkQueue

    #: Where results (or DeadRecords) go: a queue, topic, log, or a callable.
    Sink = Union[Queue[Any], WorkQueue[Any], Topic[Any], Log[Any], Callable[[Any], Any]]

_SP = TypeVar("_SP", bound="StreamProcessor")

__all__ = ["StreamProcessor", "DeadRecord"]

# per worker: processed, failed, busy seconds, slowest seconds, bad records,
# expired (settles refused: past the visibility timeout)
_STATS = 6
ON_ERROR = ("skip", "raise")
_MAX_REPORT = 16384  # bytes of a crashed worker's traceback kept
_CRASH_LOOP = 3      # crashes in a row logged as a crash loop

_logger = logging.getLogger("pyqueue.stream")


class DeadRecord(NamedTuple):
    """What on_error (a sink or a callable) gets for a Log record that was
    passed: its fn raised (value is the record's value), or it could not
    be decoded or is damaged (value None).

    Attributes:
        partition: The record's partition.
        offset: The record's offset.
        key: The record's key (bytes), or None.
        value: The record's value; None when it could not be decoded.
        error: "ExceptionType: message".
    """
    partition: int
    offset: int
    key: Optional[bytes]
    value: Any
    error: str


def _sender(sink):
    """The call that sends one result to the sink."""
    if sink is None:
        return None
    for name in ("publish", "append", "put"):  # Topic, Log, queues
        f = getattr(sink, name, None)
        if callable(f):
            return f
    if callable(sink):
        return sink
    raise TypeError(f"sink must be a Queue, WorkQueue, Topic or Log, not {type(sink).__name__}")


def _is_log(source):
    from pyqueue.log import Log
    return isinstance(source, Log)


class _Flag:
    """The stop flag the workers look at before each message: a byte of
    shared memory (a plain load, no lock: a worker waiting in get() sees it
    within its poll_timeout)."""

    def __init__(self, value):
        self._v = value  # multiprocessing.RawValue("b"), or a list for threads

    def is_set(self):
        return bool(self._v.value if hasattr(self._v, "value") else self._v[0])


def _on_error_sender(on_error):
    """None for "skip" and "raise", else the call that takes a DeadRecord."""
    if isinstance(on_error, str):
        return None
    return _sender(on_error)


def _work(spec, index, stop, stats, up=None):
    """A worker's loop (a process or a thread): take, process, settle.
    up() is called once it is ready to take messages."""
    from pyqueue.errors import CommitFailed
    source, fn, sink, group, batch_size, poll_timeout, options, reject, on_error = spec
    send = _sender(sink)
    base = index * _STATS

    def count(ok, seconds):
        # Only this worker writes its slots (a raw shared array: no lock on
        # the hot path); stats() reads them as they are.
        stats[base + (0 if ok else 1)] += 1
        stats[base + 2] += seconds
        if seconds > stats[base + 3]:
            stats[base + 3] = seconds

    if group is not None:  # a Log consumer group: commit after each batch
        _work_log(source, fn, send, group, batch_size, poll_timeout, options, on_error,
                  stop, stats, base, count, up)
        return
    if up is not None:
        up()
    _work_queue(source, fn, sink, send, batch_size, poll_timeout, reject, stop, stats, base)


# A worker's batches: at most this many messages (batch_size=None), and
# small enough that one takes under a quarter of the visibility timeout (a
# WorkQueue) or about _LOG_BATCH_SECONDS (a Log: what a crash makes the
# successor process again).
_MAX_BATCH = 256
_LOG_BATCH_SECONDS = 1.0


def _many_sender(sink):
    """The call that sends a list of results to the sink, or None."""
    if sink is None:
        return None
    for name in ("publish_many", "append_many", "put_many"):  # Topic, Log, queues
        f = getattr(sink, name, None)
        if callable(f):
            return f
    return None


def _work_queue(source, fn, sink, send, batch_size, poll_timeout, reject, stop, stats, base):
    """A WorkQueue worker: take a batch (get_many: what is there, up to
    `size`, so one message alone is not kept waiting), run fn on each,
    send the results to the sink in one call, nack (or reject) the ones
    whose fn raised and ack the rest under one lock hold. `size` adapts:
    it doubles while batches come back full (a backlog) and processing
    them stays under an eighth of the visibility timeout, and halves when
    a batch takes more than a quarter of it."""
    send_many = _many_sender(sink)
    limit = _MAX_BATCH if batch_size is None else batch_size
    visibility = source.visibility_timeout
    size = 1
    get_many = source.get_many
    mono = time.monotonic
    while not stop.is_set():
        try:
            b = get_many(size, timeout=poll_timeout)
        except _queue.Empty:
            continue
        except ShutDown:
            return  # the source is shut down and drained: this worker is done
        values = b.values
        n = len(values)
        results = []
        bad = []
        slowest = 0.0
        t = start = mono()
        for i in range(n):
            try:
                r = fn(values[i])
                if r is not None:
                    results.append(r)
            except reject as e:  # not worth a retry: straight to the dead letters
                bad.append((i, True, e))
            except Exception as e:
                bad.append((i, False, e))
            now = mono()
            if now - t > slowest:
                slowest = now - t
            t = now
        sent = True
        try:
            if results and send is not None:
                if send_many is not None:
                    send_many(results)
                else:
                    for r in results:
                        send(r)
        except Exception as e:  # the sink failed: every message comes again
            sent = False
            bad = [(i, False, e) for i in range(n)]
        # Counted before the settle: a worker killed while its ack is on the
        # wire (applied, never answered) has counted what it processed, and
        # one killed before the ack has its batch delivered again (counted
        # twice, never not at all: "processed" is at least what was acked).
        # Only this worker writes its slots (a raw shared array: no lock on
        # the hot path); stats() reads them as they are.
        stats[base] += n - len(bad)
        stats[base + 1] += len(bad)
        stats[base + 2] += t - start
        if slowest > stats[base + 3]:
            stats[base + 3] = slowest
        # A settle refused for messages no longer this worker's (fn took
        # past the visibility timeout: they were delivered again, another
        # worker has them) is no crash: the rest of the batch is settled,
        # and those are counted and logged. (A crash would restart the
        # worker, after a back-off, only for the next slow batch to crash
        # it again: the whole tree out of the work under load.)
        expired = _settle_batch(b, bad, sent)
        took = t - start
        if expired:
            stats[base + 5] += len(expired)
            _logger.warning("StreamProcessor worker: %d of a batch of %d message(s) took past "
                            "the visibility timeout (%gs, this batch %.3gs): they were "
                            "delivered again and are processed again; a longer "
                            "visibility_timeout avoids it", len(expired), n, visibility, took)
        if took > visibility / 4 or expired:
            size = max(1, size // 2)
        elif n == size and size < limit and took < visibility / 8:
            size = min(limit, size * 2)


def _settle_batch(b: Any, bad: List[Tuple[int, bool, BaseException]], sent: bool) -> Set[Any]:
    """Settles a worker's batch b: all nacked when the send failed (not
    sent), else those whose fn raised rejected or nacked (bad: position,
    rejected, error) and the rest acked. Returns the positions refused as
    no longer this consumer's (DeliveryExpired: the others were
    settled)."""
    from pyqueue.errors import DeliveryExpired
    expired: Set[Any] = set()

    def settle(call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            call(*args, **kwargs)
        except DeliveryExpired as e:
            expired.update(getattr(e, "indices", None) or ("?",))

    if not sent:
        settle(b.nack, error=f"{type(bad[0][2]).__name__}: {bad[0][2]}")
        return expired
    for i, rejected, err in bad:
        if rejected:
            settle(b.reject, [i], f"{type(err).__name__}: {err}")
        else:
            settle(b.nack, [i], error=f"{type(err).__name__}: {err}")
    settle(b.ack)
    return expired


def _commit_owned(consumer):
    """A Log worker's commit after a batch. A rebalance that moved some of
    its partitions fences it (their new owner redoes them); the commit was
    all or nothing, so what the worker still owns is committed now,
    against the fresh assignment: else the last batch of a partition it
    keeps stays uncommitted until more records come (a lag that never
    drops)."""
    from pyqueue.errors import CommitFailed
    try:
        consumer.commit()
    except CommitFailed:
        try:
            consumer.commit()
        except CommitFailed:
            pass  # moved again meanwhile: the next batch commits


def _work_log(source, fn, send, group, batch_size, poll_timeout, options, on_error, stop,
              stats, base, count, up):
    """A Log worker: poll, run fn on each record, commit after the batch.
    A record whose fn raises, or that cannot be decoded or is damaged,
    follows on_error: "skip" counts it and passes it, a sink or callable
    gets a DeadRecord first, "raise" ends the worker (the supervisor
    restarts it, with a back-off) without committing."""
    from pyqueue.errors import CorruptRecord, PoisonRecord
    dead = _on_error_sender(on_error)
    consumer = source.consumer(group, **options)
    if up is not None:
        up()

    def commit():
        _commit_owned(consumer)

    # batch_size None: adaptive, as for a WorkQueue (poll returns what is
    # there, never waiting for the batch to fill), up to _MAX_BATCH; 1 with
    # on_error="raise", whose crash makes the successor process again what
    # was polled but not committed.
    adaptive = batch_size is None
    limit = batch_size or (1 if on_error == "raise" else _MAX_BATCH)
    size = 1 if adaptive else limit
    try:
        while not stop.is_set():
            try:
                recs = consumer.poll(max_records=size, timeout=poll_timeout)
            except ShutDown:
                break  # the log is shut down and read to its end: done
            except (PoisonRecord, CorruptRecord) as e:
                if on_error == "raise" or e.partition is None or e.offset is None:
                    raise
                # Counted (the slot only this worker writes), dead-lettered
                # when asked, skipped, and the skip committed.
                stats[base + 4] += 1
                if dead is not None:
                    dead(DeadRecord(e.partition, e.offset, None, None,
                                    f"{type(e).__name__}: {e}"))
                if e.partition in consumer.assignment():
                    consumer.seek(e.partition, e.offset + 1)
                    commit()
                continue  # (moved by a rebalance: its new owner meets it)
            polled = time.monotonic()
            for rec in recs:
                t0 = time.monotonic()
                try:
                    result = fn(rec.value)
                    if send is not None and result is not None:
                        send(result)
                    ok = True
                except Exception as e:
                    if on_error == "raise":
                        raise
                    ok = False  # counted as failed and passed
                    if dead is not None:
                        dead(DeadRecord(rec.partition, rec.offset, rec.key, rec.value,
                                        f"{type(e).__name__}: {e}"))
                count(ok, time.monotonic() - t0)
            if recs:
                commit()
            if adaptive:
                took = time.monotonic() - polled
                if took > _LOG_BATCH_SECONDS:
                    size = max(1, size // 2)
                elif len(recs) == size and size < limit and took < _LOG_BATCH_SECONDS / 8:
                    size = min(limit, size * 2)
    finally:
        consumer.close()


class _ThreadReport:
    """The crash report channel of a worker thread (processes use a pipe)."""

    def __init__(self, box):
        self._box = box

    def send(self, msg):
        self._box.append(msg)

    def close(self):
        pass


def _run(spec, index, stop, stats, report):
    """_work, and on a crash the traceback down the report channel (a
    process then exits with it, code 1; a thread just ends: the
    supervisor reports it)."""
    try:
        _work(spec, index, stop, stats, lambda: report.send(("up", time.monotonic())))
    except BaseException:
        try:
            report.send(("crash", traceback.format_exc()[-_MAX_REPORT:]))
        except Exception:
            pass
        if not isinstance(report, _ThreadReport):
            raise
    finally:
        report.close()


def _process_main(spec, index, stop, stats, parent, report):
    # Ctrl-C in a terminal reaches the whole process group: the parent
    # decides (it asks the workers to stop); SIGTERM to a worker stops its
    # intake as well. Either way the message in hand is finished. A parent
    # that is gone (SIGKILLed: no stop comes) stops the worker too.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    local = [0, 0.0]  # stop asked (SIGTERM); when the parent was last looked at

    class _Stop:
        @staticmethod
        def is_set():
            if local[0] or stop.is_set():
                return True
            now = time.monotonic()
            if now - local[1] >= 0.25:  # (a system call: not before every message)
                local[1] = now
                return os.getppid() != parent
            return False

    def on_term(*_):
        local[0] = 1  # a flag only: a handler must take no lock

    signal.signal(signal.SIGTERM, on_term)
    _run(spec, index, _Stop, stats, report)


class StreamProcessor:
    """A pool of `workers` processes (or threads, processes=False) that run
    fn on every message of source, with the guarantees of the source.

    Use it as a context manager (start on entry, stop on exit), or call
    start() and join()/stop().

    Args:
        source: A WorkQueue (each message acked when fn returns, nacked
            with the error when it raises), or a Log with group= (each
            worker is a member of the group and commits after each batch).
        fn: The function run on each message's value (picklable, a
            module-level function, with the spawn start method); a result
            that is not None goes to sink.
        sink: Where results go: a Queue or WorkQueue (put), a Topic
            (publish), a Log (append), or a callable.
        workers: The number of workers.
        processes: Worker processes (True) or threads (False).
        batch_size: The most records a Log worker polls (and commits) at
            a time, or messages a WorkQueue worker takes and settles at a
            time; None: adaptive up to 256 (1 for a Log with
            on_error="raise"). A poll or get_many never waits for a batch
            to fill, so a lone message goes through at once.
        group: The consumer group of a Log source.
        reject: Exception types that send a WorkQueue message straight to
            the dead-letter queue (no retries; other exceptions nack it).
        poll_timeout: Seconds a worker waits for a message before it looks
            at the stop flag.
        start_method: "fork", "spawn" or "forkserver" (None:
            multiprocessing's default).
        handle_signals: SIGTERM and SIGINT (in the process that calls
            start(), from its main thread) stop the intake.
        consumer_options: Options of log.consumer() for a Log source.
        on_error: Log sources: what happens to a record whose fn raises,
            or that cannot be decoded (PoisonRecord) or is damaged
            (CorruptRecord): "skip" (default) counts it (stats() "failed",
            or "poison") and passes it; a sink or a callable gets a
            DeadRecord of it, then it is passed; "raise" ends the worker
            without committing it (it is restarted and meets the record
            again).
        restart_backoff: (first, most): a worker that died is restarted
            after `first` seconds, doubling for each further crash up to
            `most`; one that worked for `most` seconds before it died
            starts again from `first`.

    Raises:
        TypeError: fn is not callable, source, sink, on_error, reject or
            restart_backoff is of the wrong kind.
        ValueError: workers or batch_size is not a positive int, a Log
            source without group= (or group= with a WorkQueue), on_error
            with a WorkQueue source, or a bad restart_backoff.
    """

    def __init__(self, source: Union[WorkQueue[Any], Log[Any]], fn: Callable[[Any], Any], *,
                 sink: Optional[Sink] = None, workers: int = 1, processes: bool = True,
                 batch_size: Optional[int] = None, group: Optional[str] = None,
                 reject: Union[Type[BaseException], Tuple[Type[BaseException], ...],
                               List[Type[BaseException]]] = (),
                 poll_timeout: float = 0.1, start_method: Optional[str] = None,
                 handle_signals: bool = True,
                 consumer_options: Optional[Mapping[str, Any]] = None,
                 on_error: Union[str, Sink, None] = None,
                 restart_backoff: Tuple[float, float] = (0.1, 30.0)) -> None:
        if not callable(fn):
            raise TypeError("fn must be callable")
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError("workers must be a positive int")
        if batch_size is not None and (not isinstance(batch_size, int) or
                                       isinstance(batch_size, bool) or batch_size < 1):
            raise ValueError("batch_size must be a positive int, or None")
        from pyqueue.workqueue import WorkQueue
        if _is_log(source):
            if group is None:
                raise ValueError("a Log source needs group= (the consumer group of the workers)")
        elif isinstance(source, WorkQueue):
            if group is not None:
                raise ValueError("group= is for a Log source")
        else:
            raise TypeError("source must be a WorkQueue, or a Log with group=")
        _sender(sink)  # a bad sink fails here, not in the workers
        if on_error is None:
            on_error = "skip"
        elif group is None:
            raise ValueError("on_error is for a Log source (a WorkQueue nacks a message whose "
                             "fn raises and dead-letters it after max_deliveries; see reject=)")
        if isinstance(on_error, str):
            if on_error not in ON_ERROR:
                raise ValueError(f"on_error must be one of {ON_ERROR}, a sink or a callable, "
                                 f"not {on_error!r}")
        else:
            try:
                _sender(on_error)
            except TypeError:
                raise TypeError("on_error must be 'skip', 'raise', a sink (Queue, WorkQueue, "
                                "Topic, Log) or a callable") from None
        try:
            first, most = (float(x) for x in restart_backoff)
        except (TypeError, ValueError):
            raise TypeError("restart_backoff must be (first, most) seconds") from None
        if not 0 < first <= most:
            raise ValueError("restart_backoff must be (first, most) with 0 < first <= most")
        self._backoff = (first, most)
        rejects: Tuple[Any, ...] = (tuple(reject) if isinstance(reject, (tuple, list))
                                    else (reject,))
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in rejects):
            raise TypeError("reject must be exception types")
        self._spec = (source, fn, sink, group, batch_size, float(poll_timeout),
                      dict(consumer_options or {}), rejects, on_error)
        self._workers = workers
        self._processes = processes
        self._ctx: Any = multiprocessing.get_context(start_method)
        self._handle_signals = handle_signals
        self._stop = threading.Event()  # the parent's side
        if processes:
            self._flag = _Flag(self._ctx.RawValue("b", 0))
            self._stats = self._ctx.RawArray("d", workers * _STATS)
        else:
            self._flag = _Flag([0])
            self._stats = [0.0] * (workers * _STATS)
        self._procs: List[Any] = [None] * workers
        self._reports: List[Any] = [None] * workers   # the read end of each worker's crash report
        self._crashes = [0] * workers      # crashes in a row, for the back-off
        self._due: List[Any] = [None] * workers  # when a crashed worker starts again
        self._restarts = 0
        self._crash_count = 0
        self._restart_delay = 0.0
        self._last_error: Optional[str] = None
        self._started_at: Optional[float] = None
        self._stopped_at: Optional[float] = None
        self._supervisor: Optional[threading.Thread] = None
        self._old_handlers: Dict[int, Any] = {}
        self._signalled = False  # set by the signal handler: nothing else there
        self._lock = threading.Lock()

    # ---- life ---------------------------------------------------------

    def start(self: _SP) -> _SP:
        """Start the workers (and a supervisor that restarts crashed ones).

        Returns:
            The processor itself.

        Raises:
            RuntimeError: It was started before (a StreamProcessor starts
                once).
        """
        if self._started_at is not None:
            raise RuntimeError("a StreamProcessor starts once")
        self._started_at = time.monotonic()
        for i in range(self._workers):
            self._procs[i] = self._spawn(i)
        self._supervisor = threading.Thread(target=self._supervise, name="pyqueue-stream",
                                            daemon=True)
        self._supervisor.start()
        if self._handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    def _spawn(self, i: int) -> Any:
        if self._processes:
            reader, writer = self._ctx.Pipe(duplex=False)
            p = self._ctx.Process(target=_process_main,
                                  args=(self._spec, i, self._flag, self._stats, os.getpid(),
                                        writer),
                                  name=f"pyqueue-worker-{i}", daemon=True)
            try:
                p.start()
            finally:
                writer.close()  # the worker has its own copy
            self._reports[i] = reader
        else:
            box: List[Any] = []
            p = threading.Thread(target=_run, args=(self._spec, i, self._flag, self._stats,
                                                    _ThreadReport(box)),
                                 name=f"pyqueue-worker-{i}", daemon=True)
            p.start()
            self._reports[i] = box
        return p

    def _collect_report(self, i):
        """What a dead worker said: (when it was up, or None; its
        traceback, or None when it sent none: SIGKILLed)."""
        r, self._reports[i] = self._reports[i], None
        if r is None:
            return None, None
        if isinstance(r, list):
            msgs = r
        else:
            msgs = []
            try:
                while r.poll():
                    msgs.append(r.recv())
            except (EOFError, OSError):
                pass
            finally:
                r.close()
        up = next((m[1] for m in msgs if m[0] == "up"), None)
        crash = next((m[1] for m in msgs if m[0] == "crash"), None)
        return up, crash

    def _source_shut_down(self) -> bool:
        try:
            return bool(getattr(self._spec[0], "is_shutdown", False))
        except (ValueError, NotImplementedError):  # closed, or a backend without it
            return False

    def _supervise(self):
        while not self._stop.wait(0.05):
            if self._signalled:  # SIGTERM / SIGINT: the handler only said so
                self.stop_nowait()
                break
            with self._lock:
                now = time.monotonic()
                if self._source_shut_down():
                    # The workers drain and end on their own (ShutDown):
                    # none is restarted; stopped once all have ended.
                    for i, p in enumerate(self._procs):
                        if p is not None and not p.is_alive():
                            if self._processes:
                                p.join()
                            report = self._collect_report(i)[1]
                            if report is not None:  # died of an error while draining
                                self._last_error = report
                                self._crash_count += 1
                            self._procs[i] = None
                    if all(p is None for p in self._procs):
                        self.stop_nowait()
                        break
                    continue
                for i, p in enumerate(self._procs):
                    if self._stop.is_set():
                        break
                    if p is None:  # crashed: waiting out its back-off
                        if now >= self._due[i]:
                            self._restarts += 1  # (counted before it can run)
                            self._procs[i] = self._spawn(i)
                            _logger.info("StreamProcessor worker %d restarted (pid %s)", i,
                                         getattr(self._procs[i], "pid", None))
                        continue
                    if not p.is_alive():
                        self._crashed(i, p, now)

    def _crashed(self, i, p, now):
        """A worker died without being asked to stop: report it and
        schedule its restart after an exponential, capped back-off."""
        if self._processes:
            p.join()
        up, report = self._collect_report(i)
        if report is None:
            report = f"worker {i} (pid {p.pid}) exited with code {p.exitcode}" if (
                self._processes) else f"worker thread {i} ended"
        self._last_error = report
        first, most = self._backoff
        if up is not None and now - up >= most:
            self._crashes[i] = 0  # it worked a good while: not a crash loop
        self._crashes[i] += 1
        self._crash_count += 1
        delay = min(most, first * 2 ** min(self._crashes[i] - 1, 60))
        self._restart_delay = delay
        self._due[i] = now + delay
        self._procs[i] = None
        _logger.error("StreamProcessor worker %d died (%d time(s) in a row%s); restarting it "
                      "in %gs:\n%s", i, self._crashes[i],
                      ": crash-looping" if self._crashes[i] >= _CRASH_LOOP else "", delay,
                      report)

    def _on_signal(self, signum, frame):
        # Only a flag: the handler may run while this very thread holds the
        # stop event's lock (inside its wait), so it must take no lock; the
        # supervisor (or join) sets the event.
        self._signalled = True
        # A second Ctrl-C is a KeyboardInterrupt again.
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, self._old_handlers.get(signal.SIGINT,
                                                                signal.default_int_handler))

    def shutdown(self, immediate: bool = False) -> None:
        """Shut the source down (source.shutdown(), for every process that
        uses it): the workers take what is left, then end, and the
        processor stops (join() returns once they have).

        Args:
            immediate: Also stop the intake now (as stop_nowait()): each
                worker finishes what it holds and takes nothing more; what
                is left stays in the source (a WorkQueue is shut down with
                immediate=True, a Log as always: nothing is discarded).

        Raises:
            ValueError: The source's handle is closed.
        """
        from pyqueue.log import Log
        source = self._spec[0]
        if isinstance(source, Log):
            source.shutdown()
        else:
            source.shutdown(immediate=immediate)
        if immediate:
            self.stop_nowait()

    def stop_nowait(self) -> None:
        """Ask the workers to stop taking messages (they finish what they hold)."""
        v = self._flag._v
        if hasattr(v, "value"):
            v.value = 1
        else:
            v[0] = 1
        self._stop.set()

    def stop(self, timeout: Optional[float] = None) -> bool:
        """Stop the intake and wait for the workers to finish what they
        hold; then terminate what is left.

        Args:
            timeout: The longest wait in seconds (None: for ever).

        Returns:
            True when all stopped in time.
        """
        self.stop_nowait()
        return self.join(timeout)

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until the processor stopped (stop(), SIGTERM, Ctrl-C) and its
        workers finished.

        Args:
            timeout: The longest wait in seconds (None: for ever).

        Returns:
            True when they did within timeout.
        """
        end = None if timeout is None else time.monotonic() + timeout
        while not self._stop.is_set():
            if self._signalled:
                self.stop_nowait()
                break
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._stop.wait(0.1 if left is None else min(0.1, left))
        if self._supervisor is not None:
            self._supervisor.join()
        ok = True
        with self._lock:
            for p in self._procs:
                if p is None:
                    continue
                left = None if end is None else max(0.0, end - time.monotonic())
                p.join(left)
                if p.is_alive():
                    ok = False
                    if self._processes:
                        p.terminate()  # SIGTERM: it finishes its message
                        p.join(5)
                        if p.is_alive():
                            p.kill()
                            p.join()
            for i in range(self._workers):  # a crash while stopping is reported too
                if self._procs[i] is not None and not self._procs[i].is_alive():
                    report = self._collect_report(i)[1]
                    if report is not None:
                        self._last_error = report
        if self._stopped_at is None:
            self._stopped_at = time.monotonic()
        for sig, old in self._old_handlers.items():
            try:
                signal.signal(sig, old)
            except (ValueError, TypeError):
                pass
        self._old_handlers = {}
        return ok

    def __enter__(self: _SP) -> _SP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- what it did --------------------------------------------------

    def worker_pids(self) -> List[int]:
        """The pids of the worker processes now (empty with
        processes=False)."""
        with self._lock:
            return [p.pid for p in self._procs if p is not None and self._processes]

    def stats(self) -> Dict[str, Any]:
        """What the workers did.

        Returns:
            A dict: processed, failed, poison (Log records passed because
            they could not be decoded or are damaged), rate (processed per
            second since start), mean_latency and max_latency (seconds fn
            and the send took per message), workers, restarts, crashes
            (workers that died), restart_delay (the back-off before the last
            restart, seconds), last_error (the last dead worker's
            traceback, or None) and expired (WorkQueue messages whose
            settle was refused because fn took past the visibility
            timeout: delivered again, so processed more than once).
        """
        vals = list(self._stats[:])
        processed = sum(vals[i * _STATS] for i in range(self._workers))
        failed = sum(vals[i * _STATS + 1] for i in range(self._workers))
        poison = sum(vals[i * _STATS + 4] for i in range(self._workers))
        expired = sum(vals[i * _STATS + 5] for i in range(self._workers))
        busy = sum(vals[i * _STATS + 2] for i in range(self._workers))
        slowest = max((vals[i * _STATS + 3] for i in range(self._workers)), default=0.0)
        end = self._stopped_at or time.monotonic()
        elapsed = end - self._started_at if self._started_at is not None else 0.0
        done = processed + failed
        # (no lock: join holds it while workers finish; each is one read)
        crashes, delay, last = self._crash_count, self._restart_delay, self._last_error
        return {"processed": int(processed), "failed": int(failed), "poison": int(poison),
                "rate": processed / elapsed if elapsed > 0 else 0.0,
                "mean_latency": busy / done if done else 0.0, "max_latency": slowest,
                "workers": self._workers, "restarts": self._restarts, "crashes": crashes,
                "restart_delay": delay, "last_error": last, "expired": int(expired)}
