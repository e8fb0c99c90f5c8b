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
See docs/api.md ("StreamProcessor").
"""
import multiprocessing
import os
import queue as _queue
import signal
import threading
import time

__all__ = ["StreamProcessor"]

_STATS = 4  # per worker: processed, failed, busy seconds, slowest seconds


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


def _work(spec, index, stop, stats):
    """A worker's loop (a process or a thread): take, process, settle."""
    from pyqueue.errors import CommitFailed
    source, fn, sink, group, batch_size, poll_timeout, options, reject = spec
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
        consumer = source.consumer(group, **options)
        try:
            while not stop.is_set():
                recs = consumer.poll(max_records=batch_size, timeout=poll_timeout)
                for rec in recs:
                    t0 = time.monotonic()
                    try:
                        result = fn(rec.value)
                        if send is not None and result is not None:
                            send(result)
                        ok = True
                    except Exception:  # the record counts as failed and is passed
                        ok = False
                    count(ok, time.monotonic() - t0)
                if recs:
                    try:
                        consumer.commit()
                    except CommitFailed:
                        pass  # a rebalance moved partitions: their new owner redoes them

        finally:
            consumer.close()
        return
    while not stop.is_set():  # a WorkQueue: ack on success, nack on an error
        try:
            d = source.get(timeout=poll_timeout)
        except _queue.Empty:
            continue
        t0 = time.monotonic()
        try:
            result = fn(d.value)
            if send is not None and result is not None:
                send(result)
        except reject as e:  # not worth a retry: straight to the dead letters
            d.reject(f"{type(e).__name__}: {e}")
            count(False, time.monotonic() - t0)
            continue
        except Exception as e:
            d.nack(error=f"{type(e).__name__}: {e}")
            count(False, time.monotonic() - t0)
            continue
        d.ack()
        count(True, time.monotonic() - t0)


def _process_main(spec, index, stop, stats, parent):
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
    _work(spec, index, _Stop, stats)


class StreamProcessor:
    """A pool of `workers` processes (or threads, processes=False) that run
    fn on every message of source.

    StreamProcessor(source, fn, *, sink=None, workers=1, processes=True,
                    batch_size=1, group=None, reject=(), poll_timeout=0.1,
                    start_method=None, handle_signals=True, consumer_options=None)

    source: a WorkQueue, or a Log with group= (the consumer group the
    workers join; consumer_options go to log.consumer()). batch_size: the
    records a Log worker polls (and commits) at a time. reject: exception
    types that send a WorkQueue message straight to the dead-letter queue
    (no retries; other exceptions nack it). fn must be picklable (a
    module-level function) with the spawn start method.
    """

    def __init__(self, source, fn, *, sink=None, workers=1, processes=True, batch_size=1,
                 group=None, reject=(), poll_timeout=0.1, start_method=None,
                 handle_signals=True, consumer_options=None):
        if not callable(fn):
            raise TypeError("fn must be callable")
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError("workers must be a positive int")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError("batch_size must be a positive int")
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
        reject = tuple(reject) if isinstance(reject, (tuple, list)) else (reject,)
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in reject):
            raise TypeError("reject must be exception types")
        self._spec = (source, fn, sink, group, batch_size, float(poll_timeout),
                      dict(consumer_options or {}), reject)
        self._workers = workers
        self._processes = processes
        self._ctx = multiprocessing.get_context(start_method)
        self._handle_signals = handle_signals
        self._stop = threading.Event()  # the parent's side
        if processes:
            self._flag = _Flag(self._ctx.RawValue("b", 0))
            self._stats = self._ctx.RawArray("d", workers * _STATS)
        else:
            self._flag = _Flag([0])
            self._stats = [0.0] * (workers * _STATS)
        self._procs = [None] * workers
        self._restarts = 0
        self._started_at = None
        self._stopped_at = None
        self._supervisor = None
        self._old_handlers = {}
        self._signalled = False  # set by the signal handler: nothing else there
        self._lock = threading.Lock()

    # ---- life ---------------------------------------------------------

    def start(self):
        """Start the workers (and a supervisor that restarts crashed ones)."""
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

    def _spawn(self, i):
        if self._processes:
            p = self._ctx.Process(target=_process_main,
                                  args=(self._spec, i, self._flag, self._stats, os.getpid()),
                                  name=f"pyqueue-worker-{i}", daemon=True)
        else:
            p = threading.Thread(target=_work, args=(self._spec, i, self._flag, self._stats),
                                 name=f"pyqueue-worker-{i}", daemon=True)
        p.start()
        return p

    def _supervise(self):
        while not self._stop.wait(0.05):
            if self._signalled:  # SIGTERM / SIGINT: the handler only said so
                self.stop_nowait()
                break
            with self._lock:
                for i, p in enumerate(self._procs):
                    if not p.is_alive() and not self._stop.is_set():
                        if self._processes:
                            p.join()
                        self._procs[i] = self._spawn(i)  # crashed: again
                        self._restarts += 1

    def _on_signal(self, signum, frame):
        # Only a flag: the handler may run while this very thread holds the
        # stop event's lock (inside its wait), so it must take no lock; the
        # supervisor (or join) sets the event.
        self._signalled = True
        # A second Ctrl-C is a KeyboardInterrupt again.
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, self._old_handlers.get(signal.SIGINT,
                                                                signal.default_int_handler))

    def stop_nowait(self):
        """Ask the workers to stop taking messages (they finish what they hold)."""
        v = self._flag._v
        if hasattr(v, "value"):
            v.value = 1
        else:
            v[0] = 1
        self._stop.set()

    def stop(self, timeout=None):
        """Stop the intake and wait up to timeout seconds for the workers to
        finish what they hold; then terminate what is left. True when all
        stopped in time."""
        self.stop_nowait()
        return self.join(timeout)

    def join(self, timeout=None):
        """Wait until the processor stopped (stop(), SIGTERM, Ctrl-C) and its
        workers finished; True when they did within timeout."""
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
        if self._stopped_at is None:
            self._stopped_at = time.monotonic()
        for sig, old in self._old_handlers.items():
            try:
                signal.signal(sig, old)
            except (ValueError, TypeError):
                pass
        self._old_handlers = {}
        return ok

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- what it did --------------------------------------------------

    def worker_pids(self):
        """The pids of the worker processes now (processes=True)."""
        with self._lock:
            return [p.pid for p in self._procs if p is not None and self._processes]

    def stats(self):
        """processed, failed, rate (processed per second since start),
        mean_latency and max_latency (seconds fn and the send took per
        message), workers, restarts."""
        vals = list(self._stats[:])
        processed = sum(vals[i * _STATS] for i in range(self._workers))
        failed = sum(vals[i * _STATS + 1] for i in range(self._workers))
        busy = sum(vals[i * _STATS + 2] for i in range(self._workers))
        slowest = max((vals[i * _STATS + 3] for i in range(self._workers)), default=0.0)
        end = self._stopped_at or time.monotonic()
        elapsed = end - self._started_at if self._started_at is not None else 0.0
        done = processed + failed
        return {"processed": int(processed), "failed": int(failed),
                "rate": processed / elapsed if elapsed > 0 else 0.0,
                "mean_latency": busy / done if done else 0.0, "max_latency": slowest,
                "workers": self._workers, "restarts": self._restarts}
