"""The checkout pipeline of the pattern text, on pyqueue.

Orders go into a WorkQueue; a StreamProcessor of worker processes runs the
payment step on them. The payment gateway fails at random (before charging,
or after charging but before the ack: the message comes again), one worker
process is SIGKILLed in the middle of the run, and some orders are poison
(their amount is invalid: they fail every time). The payment step is
idempotent by order id (a charge is a file created with O_EXCL), so:

- every good order is charged exactly once, however often it is delivered;
- no order is lost, not even the one the killed worker held;
- the poison orders end in the dead-letter queue, with the reason.

The same code runs on shared memory and on Redis: the backend is the URL
of --url, else $PYQUEUE_URL, else shared memory (pyqueue.connect()). The
workers run in several process trees (--trees, 2 by default): this
program's StreamProcessor, and one more `checkout.py worker` program per
extra tree, which opens the queue by name and runs its own
StreamProcessor on it until the queue is shut down. No order is charged
before a worker of every tree holds one (a start line), so each tree's part
shows in the report. On Redis the trees could as well be on other hosts
(here they share two local directories: the charges, which stand for the
payment provider's record of charges, on several hosts a database with a
unique key on the order id; and the start line).

    python examples/checkout.py [--orders 300] [--workers 4] [--poison 5]
                                [--fail-rate 0.2] [--seed 1] [--trees 2]
                                [--work-ms 2] [--visibility-timeout 5]
                                [--start-method spawn] [--json]
                                [--url redis://localhost:6379/0]
    python examples/checkout.py worker --queue NAME [--workers 4] [--url URL]
                                       [--start-method spawn]

It imports the installed pyqueue (pip install pyqueue-shm; in a checkout,
pip install . first): run from the repository root or anywhere else.

Exit status 0 when all three hold (and every worker tree ended well), 1
otherwise.
"""
import argparse
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pyqueue
from pyqueue import StreamProcessor


class GatewayDown(Exception):
    pass


_past_start_line = False


def wait_at_start_line(order):
    """No order is charged before a worker of every process tree holds one:
    so that each tree takes part in the run however late its workers start
    (a new interpreter, the spawn start method, a loaded machine). Each
    tree's workers mark the start line with the pid of their parent (one
    per tree); at most 60 s, then the run goes on."""
    global _past_start_line
    if _past_start_line:
        return
    line = order["start_line"]
    open(os.path.join(line, str(os.getppid())), "a").close()
    deadline = time.monotonic() + 60
    while len(os.listdir(line)) < order["trees"] and time.monotonic() < deadline:
        time.sleep(0.005)
    _past_start_line = True


def pay(order):
    """The payment step: charge an order once. The charge is a file named
    after the order id, created with O_EXCL: a second charge of the same
    order finds it and does nothing (idempotent), whichever worker tries."""
    wait_at_start_line(order)
    if order["amount"] <= 0:
        raise ValueError(f"invalid amount {order['amount']} for order {order['id']}")
    rng = random.Random(f"{order['id']}-{time.monotonic_ns()}")
    if rng.random() < order["fail_rate"]:
        raise GatewayDown("payment gateway timed out")  # before charging
    path = os.path.join(order["charges"], str(order["id"]))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return None  # charged already (a redelivery): nothing to do
    with os.fdopen(fd, "w") as f:
        f.write(f"{order['amount']}\n")
    time.sleep(order["work_s"])  # the rest of the checkout
    if rng.random() < order["fail_rate"] / 2:
        raise GatewayDown("the confirmation was lost")  # charged, but not acked
    return None


def serve(name, workers=4, url=None, start_method=None):
    """One more process tree of workers: opens the work queue NAME on the
    backend of URL and runs a StreamProcessor on it until the queue is shut
    down (or SIGTERM / Ctrl-C). Prints one JSON line when its workers run
    ({"ready": pid}) and one with what they did when they ended."""
    queue = pyqueue.connect(url).WorkQueue.open(name)
    try:
        with StreamProcessor(queue, pay, workers=workers, reject=(ValueError,),
                             start_method=start_method) as sp:
            print(json.dumps({"ready": os.getpid()}), flush=True)
            sp.join()  # returns once the queue is shut down and drained
            stats = sp.stats()
    finally:
        queue.close()
    report = {"tree": os.getpid(), "processed": stats["processed"], "failed": stats["failed"],
              "crashes": stats["crashes"], "last_error": stats["last_error"]}
    print(json.dumps(report), flush=True)
    return report


def _start_tree(url, name, workers, start_method):
    """Starts `checkout.py worker` as a new process tree (its own session)
    and waits until its workers are started."""
    args = ["--start-method", start_method] if start_method else []
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "worker", "--queue", name,
                          "--workers", str(workers), "--url", url, *args],
                         stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                         start_new_session=True)
    line = p.stdout.readline()
    if not line.startswith('{"ready"'):
        p.kill()
        p.wait()
        raise RuntimeError(f"worker tree did not start: {line!r} (exit code {p.returncode})")
    return p


def _end_tree(p, timeout):
    """What the worker tree P reported, once it ended (None: it failed)."""
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return None
    lines = out.strip().splitlines()
    return json.loads(lines[-1]) if p.returncode == 0 and lines else None


def run(orders=300, workers=4, poison=5, fail_rate=0.2, seed=1, work_s=0.002, url=None,
        trees=2, visibility_timeout=5.0, start_method=None):
    rng = random.Random(seed)
    backend = pyqueue.connect(url)
    charges = tempfile.mkdtemp(prefix="pyqueue-checkout-")
    start_line = tempfile.mkdtemp(prefix="pyqueue-checkout-start-")
    name = f"checkout-{uuid.uuid4().hex[:12]}"  # a run of its own, on a shared server too
    dead = backend.WorkQueue(name + "-dead")
    # Up to 10 deliveries: a good order fails one attempt in ~3 here, all
    # ten in ~1 of 170000 runs. A delivery whose worker was killed comes
    # again after the visibility timeout on Redis (a worker on another host
    # cannot be seen dying); the shared-memory queue sees the dead process
    # at once.
    queue = backend.WorkQueue(name, max_deliveries=10, visibility_timeout=visibility_timeout,
                              dead_letter=dead)
    others = []
    try:
        bad = set(rng.sample(range(orders), poison))
        good = orders - poison
        killed = None
        t0 = time.monotonic()
        # An invalid order is poison: rejected at once (no retries); a
        # gateway error is retried (nack), up to the delivery limit.
        with StreamProcessor(queue, pay, workers=workers, reject=(ValueError,),
                             start_method=start_method) as sp:
            # The other trees start while this one's workers do.
            others = [_start_tree(backend.url, name, workers, start_method)
                      for _ in range(trees - 1)]
            for i in range(orders):
                order = {"id": i, "amount": -1 if i in bad else rng.randint(1, 500),
                         "charges": charges, "fail_rate": fail_rate, "work_s": work_s,
                         "start_line": start_line, "trees": trees}
                queue.put(order, key=f"order-{i}")
            for i in range(10):  # a client that retries: the keys drop the copies
                queue.put({"id": i, "amount": 1, "charges": charges, "fail_rate": fail_rate,
                           "work_s": work_s, "start_line": start_line, "trees": trees},
                          key=f"order-{i}")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                charged = len(os.listdir(charges))
                if killed is None and charged >= good // 3:
                    killed = sp.worker_pids()[0]
                    os.kill(killed, signal.SIGKILL)  # in the middle of its work
                if charged >= good and queue.qsize() == 0:
                    break
                time.sleep(0.01)
            # The killed worker comes back after the restart back-off (0.1 s
            # at first), which can be after the others finished the work.
            while killed is not None and sp.stats()["restarts"] < 1 and \
                    time.monotonic() < deadline:
                time.sleep(0.01)
            # Done: the shutdown ends the workers of every tree (each
            # StreamProcessor stops once its workers drained the queue).
            queue.shutdown()
            sp.join(max(1.0, deadline - time.monotonic()))
            stats = sp.stats()
        tree_reports = [_end_tree(p, max(1.0, deadline - time.monotonic())) for p in others]
        others = []
        elapsed = time.monotonic() - t0
        charged_ids = sorted(int(f) for f in os.listdir(charges))
        letters = dead.dead_letters()
        qs = queue.stats()
        report = {
            "backend": backend.name, "url": backend.url,
            "start_method": multiprocessing.get_context(start_method).get_start_method(),
            "orders": orders, "good": good, "poison": poison,
            "charged": len(charged_ids),
            "charged_exactly_once": charged_ids == sorted(set(range(orders)) - bad),
            "lost": sorted(set(range(orders)) - bad - set(charged_ids)),
            "dead_letters": sorted(dl.value["id"] for dl in letters),
            "dead_letter_reasons": sorted({dl.reason for dl in letters}),
            # (None: a dead letter moved by a get after its mover died - a
            # worker SIGKILLed between the reject's steps - keeps no error)
            "dead_letter_errors": sorted({dl.last_error for dl in letters},
                                         key=lambda e: (e is not None, e or "")),
            "worker_killed": killed, "restarts": stats["restarts"],
            "redelivered": qs["redelivered"], "deduplicated": qs["deduplicated"],
            "failed_attempts": stats["failed"] + sum(t["failed"] for t in tree_reports if t),
            "trees": [{"tree": os.getpid(), "processed": stats["processed"],
                       "failed": stats["failed"], "crashes": stats["crashes"],
                       "last_error": stats["last_error"]}] + tree_reports,
            "seconds": round(elapsed, 3),
        }
        # A worker killed in a move to the dead-letter queue leaves the
        # message to a get that moves it (without the error text, which
        # died with the worker) - again if the worker had put it
        # (docs/guarantees.md: "at least once, at most twice"). One kill:
        # at most one such move, and a copy twice only beside it.
        copies: dict = {}
        for dl in letters:
            copies.setdefault(dl.value["id"], []).append(dl.last_error is None)
        moved_again = sum(sum(c) for c in copies.values())
        twice = [i for i, c in copies.items() if len(c) > 1]
        report["dead_letters_moved_by_a_get"] = moved_again
        report["dead_lettered_twice"] = len(twice)
        report["ok"] = (report["charged_exactly_once"] and not report["lost"] and
                        sorted(copies) == sorted(bad) and
                        moved_again <= (1 if killed is not None else 0) and
                        all(sorted(copies[i]) == [False, True] for i in twice) and
                        report["deduplicated"] == 10 and report["restarts"] >= 1 and
                        None not in tree_reports)
        return report
    finally:
        for p in others:  # an error above: no worker tree outlives the run
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
        queue.unlink()
        queue.close()
        dead.unlink()
        dead.close()
        shutil.rmtree(charges, ignore_errors=True)
        shutil.rmtree(start_line, ignore_errors=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["worker"]:
        wp = argparse.ArgumentParser(prog="checkout.py worker",
                                     description="one more process tree of workers")
        wp.add_argument("--queue", required=True, help="the work queue's name")
        wp.add_argument("--workers", type=int, default=4)
        wp.add_argument("--url", help="a backend URL (default $PYQUEUE_URL, else shm://)")
        wp.add_argument("--start-method", choices=multiprocessing.get_all_start_methods())
        w = wp.parse_args(argv[1:])
        serve(w.queue, w.workers, w.url, w.start_method)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", type=int, default=300)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--poison", type=int, default=5)
    ap.add_argument("--fail-rate", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--trees", type=int, default=2,
                    help="process trees of workers (this one and TREES-1 `worker` programs)")
    ap.add_argument("--work-ms", type=float, default=2.0, help="the work of a charge")
    ap.add_argument("--visibility-timeout", type=float, default=5.0)
    ap.add_argument("--url", help="a backend URL (default $PYQUEUE_URL, else shm://)")
    ap.add_argument("--start-method", choices=multiprocessing.get_all_start_methods(),
                    help="of the worker processes (default: multiprocessing's)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.trees < 1:
        ap.error("--trees must be at least 1")
    report = run(a.orders, a.workers, a.poison, a.fail_rate, a.seed, a.work_ms / 1000.0,
                 a.url, a.trees, a.visibility_timeout, a.start_method)
    if a.json:
        print(json.dumps(report))
    else:
        print(f"{report['orders']} orders ({report['poison']} poison) on {report['url']}, "
              f"{a.trees} process tree(s) of {a.workers} workers, one SIGKILLed (pid {report['worker_killed']}), {report['restarts']} restart(s)")
        print(f"charged: {report['charged']} of {report['good']}, each exactly once: "
              f"{report['charged_exactly_once']}; lost: {report['lost'] or 'none'}")
        print(f"failed attempts (redelivered): {report['failed_attempts']} "
              f"({report['redelivered']}); duplicate puts dropped: {report['deduplicated']}")
        reasons = report["dead_letter_reasons"]
        print(f"dead letters: orders {report['dead_letters']}, e.g. {reasons[0]!r}"
              if reasons else "dead letters: none")
        print("processed per tree: " + ", ".join(
            f"{t['tree']}: {t['processed']}" if t else "FAILED" for t in report["trees"]))
        print("OK" if report["ok"] else "FAILED", f"in {report['seconds']} s")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
