"""A replayable event log with a consumer group, on `pyqueue.Log`.

Order events are appended to a partitioned log kept in segment files on
disk (directory mode), keyed by user so that each user's events stay in
order in one partition. A consumer group "billing" of worker processes
shares the partitions, totals the amounts per user and commits its offsets.
Then:

- the log is closed, opened again and **replayed** from offset 0 of every
  partition: the totals rebuilt from the replay are the group's;
- more events are appended and the group runs again: it **resumes** from
  its committed offsets and processes only the new events;
- a new group "audit" starts from the beginning and sees every event.

    python examples/event_log.py [--events 3000] [--members 2] [--partitions 4]
                                 [--path DIR] [--start-method spawn] [--json]

It imports the installed pyqueue (pip install pyqueue-shm; in a checkout,
pip install . first): run from the repository root or anywhere else.

Without `--path` the log lives in a temporary directory removed at the
end. Exit status 0 when all three checks hold, 1 otherwise.
"""
import argparse
import collections
import json
import multiprocessing
import shutil
import sys
import tempfile
import time

from pyqueue import CommitFailed, Log, Queue


def append_events(log, first, count):
    for i in range(first, first + count):
        user = f"user-{i % 37}"
        log.append({"order": i, "user": user, "amount": i % 90 + 10}, key=user)


def member(path, group, results, deadline_s):
    """One member of the group: poll, process, commit, until the group has
    committed everything (its lag is 0) or the deadline passes."""
    log = Log.open(path)
    deadline = time.monotonic() + deadline_s
    with log.consumer(group) as c:
        while time.monotonic() < deadline:
            records = c.poll(max_records=200, timeout=0.2)
            if records:
                # at least once: a rebalance may hand a partition over before
                # the commit, and the new owner reads those records again
                results.put([(r.partition, r.offset, r.value["user"], r.value["amount"])
                             for r in records])
            # Every turn, records or not: a commit is all or nothing, so
            # after a fenced one the next commits what this member kept.
            try:
                c.commit()
            except CommitFailed:
                pass  # those partitions moved; their new owner goes on
            if not records and all(o["lag"] == 0 for o in log.group_offsets(group).values()):
                break
    results.put(None)
    log.close()


def run_group(ctx, path, group, members, deadline_s=60):
    """Runs `members` processes of `group`; returns {(partition, offset): (user, amount)}."""
    results = Queue()
    procs = [ctx.Process(target=member, args=(path, group, results, deadline_s))
             for _ in range(members)]
    for p in procs:
        p.start()
    seen, done = {}, 0
    while done < members:
        batch = results.get(timeout=deadline_s + 30)
        if batch is None:
            done += 1
            continue
        for p, off, user, amount in batch:
            seen[(p, off)] = (user, amount)  # a record processed twice counts once
    for p in procs:
        p.join()
    results.close()
    return seen, all(p.exitcode == 0 for p in procs)


def totals(records):
    t = collections.Counter()
    for user, amount in records:
        t[user] += amount
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=3000)
    ap.add_argument("--members", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--path", help="the log's directory (default: a temporary one)")
    ap.add_argument("--start-method", choices=multiprocessing.get_all_start_methods())
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    ctx = multiprocessing.get_context(args.start_method)
    tmp = None
    path = args.path
    if path is None:
        tmp = tempfile.mkdtemp(prefix="pyqueue-event-log-")
        path = f"{tmp}/orders"
    try:
        log = Log(path=path, partitions=args.partitions, fsync="never")
        append_events(log, 0, args.events)
        log.close()

        billed, members_ok = run_group(ctx, path, "billing", args.members)
        billing = totals(billed.values())

        log = Log.open(path)                  # reopened: everything is still there
        replayed = []
        for p in range(args.partitions):
            offset = log.start_offset(p)
            while offset < log.end_offset(p):
                for r in log.read(p, offset, max_records=1000):
                    replayed.append((r.value["user"], r.value["amount"]))
                    offset = r.offset + 1
        replay_ok = len(replayed) == args.events and totals(replayed) == billing

        more = max(1, args.events // 10)
        append_events(log, args.events, more)
        resumed, resumed_ok = run_group(ctx, path, "billing", 1)
        resume_ok = len(resumed) == more and not set(resumed) & set(billed)

        audited, audit_ok = run_group(ctx, path, "audit", 1)
        audit_ok = audit_ok and len(audited) == args.events + more
        lag = {g: sum(o["lag"] for o in log.group_offsets(g).values()) for g in log.groups()}
        log.close()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp)

    ok = (members_ok and resumed_ok and len(billed) == args.events and replay_ok
          and resume_ok and audit_ok and all(v == 0 for v in lag.values()))
    report = {"ok": ok, "events": args.events, "billed": len(billed),
              "replayed": len(replayed), "replay_matches": replay_ok,
              "appended_later": more, "resumed": len(resumed), "resumed_only_new": resume_ok,
              "audited": len(audited), "lag": lag, "users": len(billing),
              "start_method": ctx.get_start_method()}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"billing group ({args.members} members): {len(billed)} events, "
              f"{len(billing)} users")
        print(f"replay from offset 0 after reopening: {len(replayed)} events, "
              f"same totals: {replay_ok}")
        print(f"{more} more events: the group resumed and processed {len(resumed)}")
        print(f"a new group 'audit' read {len(audited)} events from the beginning")
        print("all checks passed" if ok else "CHECK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
