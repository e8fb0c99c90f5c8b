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

    python examples/checkout.py [--orders 300] [--workers 4] [--poison 5]
                                [--fail-rate 0.2] [--seed 1] [--json]

Exit status 0 when all three hold, 1 otherwise.
"""
import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time

from pyqueue import StreamProcessor, WorkQueue


class GatewayDown(Exception):
    pass


def pay(order):
    """The payment step: charge an order once. The charge is a file named
    after the order id, created with O_EXCL: a second charge of the same
    order finds it and does nothing (idempotent), whichever worker tries."""
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


def run(orders=300, workers=4, poison=5, fail_rate=0.2, seed=1, work_s=0.002):
    rng = random.Random(seed)
    charges = tempfile.mkdtemp(prefix="pyqueue-checkout-")
    dead = WorkQueue()
    # Up to 10 deliveries: a good order fails one attempt in ~3 here, all
    # ten in ~1 of 170000 runs.
    queue = WorkQueue(max_deliveries=10, visibility_timeout=30.0, dead_letter=dead)
    try:
        bad = set(rng.sample(range(orders), poison))
        for i in range(orders):
            order = {"id": i, "amount": -1 if i in bad else rng.randint(1, 500),
                     "charges": charges, "fail_rate": fail_rate, "work_s": work_s}
            queue.put(order, key=f"order-{i}")
        for i in range(10):  # a client that retries: the keys drop the copies
            queue.put({"id": i, "amount": 1, "charges": charges, "fail_rate": fail_rate,
                       "work_s": work_s}, key=f"order-{i}")
        good = orders - poison
        killed = None
        t0 = time.monotonic()
        # An invalid order is poison: rejected at once (no retries); a
        # gateway error is retried (nack), up to the delivery limit.
        with StreamProcessor(queue, pay, workers=workers, reject=(ValueError,)) as sp:
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
            stats = sp.stats()
        elapsed = time.monotonic() - t0
        charged_ids = sorted(int(f) for f in os.listdir(charges))
        letters = dead.dead_letters()
        qs = queue.stats()
        report = {
            "orders": orders, "good": good, "poison": poison,
            "charged": len(charged_ids),
            "charged_exactly_once": charged_ids == sorted(set(range(orders)) - bad),
            "lost": sorted(set(range(orders)) - bad - set(charged_ids)),
            "dead_letters": sorted(dl.value["id"] for dl in letters),
            "dead_letter_reasons": sorted({dl.reason for dl in letters}),
            "dead_letter_errors": sorted({dl.last_error for dl in letters}),
            "worker_killed": killed, "restarts": stats["restarts"],
            "redelivered": qs["redelivered"], "deduplicated": qs["deduplicated"],
            "failed_attempts": stats["failed"], "seconds": round(elapsed, 3),
        }
        report["ok"] = (report["charged_exactly_once"] and not report["lost"] and
                        report["dead_letters"] == sorted(bad) and
                        report["deduplicated"] == 10 and report["restarts"] >= 1)
        return report
    finally:
        queue.unlink()
        queue.close()
        dead.unlink()
        dead.close()
        shutil.rmtree(charges, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", type=int, default=300)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--poison", type=int, default=5)
    ap.add_argument("--fail-rate", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    report = run(a.orders, a.workers, a.poison, a.fail_rate, a.seed)
    if a.json:
        print(json.dumps(report))
    else:
        print(f"{report['orders']} orders ({report['poison']} poison), {a.workers} workers, "
              f"one SIGKILLed (pid {report['worker_killed']}), {report['restarts']} restart(s)")
        print(f"charged: {report['charged']} of {report['good']}, each exactly once: "
              f"{report['charged_exactly_once']}; lost: {report['lost'] or 'none'}")
        print(f"failed attempts (redelivered): {report['failed_attempts']} "
              f"({report['redelivered']}); duplicate puts dropped: {report['deduplicated']}")
        reasons = report["dead_letter_reasons"]
        print(f"dead letters: orders {report['dead_letters']}, e.g. {reasons[0]!r}"
              if reasons else "dead letters: none")
        print("OK" if report["ok"] else "FAILED", f"in {report['seconds']} s")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
