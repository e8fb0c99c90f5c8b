"""Fan-out with a `pyqueue.Topic`: every subscriber gets every message.

A publisher process publishes price ticks to a lossless topic; three
subscriber processes each see all of them, in publish order, and do
something different with them (a moving average, the highest price, an
audit checksum). The publisher waits for the slowest live subscriber, so
nobody misses anything.

    python examples/fanout.py [--ticks 20000] [--start-method spawn] [--json]

It imports the installed pyqueue (pip install pyqueue-shm; in a checkout,
pip install . first): run from the repository root or anywhere else.

Exit status 0 when every subscriber received every tick in order, 1 otherwise.
"""
import argparse
import hashlib
import json
import multiprocessing
import sys

from pyqueue import Queue, Topic

ROLES = ("average", "high", "audit")


def subscriber(topic, role, ready, results):
    sub = topic.subscribe()          # receives what is published from now on
    ready.put(role)
    seen, last_seq, in_order = 0, -1, True
    window, high, digest = [], float("-inf"), hashlib.sha256()
    for tick in sub:                  # blocking iteration
        if tick is None:              # the publisher's end-of-stream marker
            break
        seen += 1
        in_order &= tick["seq"] == last_seq + 1
        last_seq = tick["seq"]
        if role == "average":
            window = (window + [tick["px"]])[-50:]
        elif role == "high":
            high = max(high, tick["px"])
        else:
            digest.update(f"{tick['seq']}:{tick['px']}".encode())
    value = {"average": sum(window) / max(len(window), 1), "high": high,
             "audit": digest.hexdigest()}[role]
    results.put({"role": role, "seen": seen, "in_order": in_order, "lost": sub.lost,
                 "value": value})
    sub.close()


def publisher(topic, n):
    for seq in range(n):
        topic.publish({"sym": "ABC", "seq": seq, "px": 100 + (seq * 37 % 101) / 10})
    topic.publish(None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ticks", type=int, default=20000)
    ap.add_argument("--start-method", choices=multiprocessing.get_all_start_methods())
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    ctx = multiprocessing.get_context(args.start_method)

    topic = Topic(capacity_bytes=1 << 20)   # unnamed: removed when this process exits
    ready, results = Queue(), Queue()
    subs = [ctx.Process(target=subscriber, args=(topic, role, ready, results)) for role in ROLES]
    for p in subs:
        p.start()
    for _ in subs:                    # publish only once everybody listens
        ready.get(timeout=60)
    pub = ctx.Process(target=publisher, args=(topic, args.ticks))
    pub.start()
    reports = sorted((results.get(timeout=120) for _ in subs), key=lambda r: r["role"])
    pub.join()
    for p in subs:
        p.join()

    audit = hashlib.sha256()
    for seq in range(args.ticks):
        audit.update(f"{seq}:{100 + (seq * 37 % 101) / 10}".encode())
    ok = (all(r["seen"] == args.ticks and r["in_order"] and r["lost"] == 0 for r in reports)
          and next(r for r in reports if r["role"] == "audit")["value"] == audit.hexdigest()
          and pub.exitcode == 0 and all(p.exitcode == 0 for p in subs))
    if args.json:
        print(json.dumps({"ok": ok, "ticks": args.ticks, "subscribers": reports,
                          "start_method": ctx.get_start_method()}))
    else:
        for r in reports:
            print(f"{r['role']:8} got {r['seen']} ticks, in order: {r['in_order']}, "
                  f"value: {r['value']}")
        print("every subscriber got every tick" if ok else "MISSING TICKS")
    topic.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
