"""A multiprocess log-parsing pipeline on the drop-in `pyqueue.Queue`.

A reader (the main process) sends the lines of a web server's access log,
in batches, to a pool of parser processes through one `pyqueue.Queue`; the
parsers send per-batch counts back through another. The code is what you
would write with `multiprocessing.Queue`: only the import differs.

    python examples/log_pipeline.py [--lines 20000] [--workers 3] [--batch 500]
                                    [--file ACCESS_LOG] [--start-method spawn] [--json]

It imports the installed pyqueue (pip install pyqueue-shm; in a checkout,
pip install . first): run from the repository root or anywhere else.

Without `--file` it parses a generated log. It then parses the same lines
in one process and compares: exit status 0 when the pipeline's totals are
the same, 1 otherwise.
"""
import argparse
import collections
import json
import multiprocessing
import random
import re
import sys

from pyqueue import Queue  # instead of: from multiprocessing import Queue

# 127.0.0.1 - - [06/Dec/2026:05:00:00 +0000] "GET /index.html HTTP/1.1" 200 512
LINE = re.compile(r'\S+ \S+ \S+ \[[^\]]+\] "(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" '
                  r'(?P<status>\d{3}) (?P<size>\d+|-)')


def parse(lines):
    """Counts of one batch: requests per status, bytes per path, malformed lines."""
    status = collections.Counter()
    size = collections.Counter()
    bad = 0
    for line in lines:
        m = LINE.match(line)
        if m is None:
            bad += 1
            continue
        status[m["status"]] += 1
        size[m["path"]] += 0 if m["size"] == "-" else int(m["size"])
    return {"status": status, "bytes": size, "malformed": bad, "lines": len(lines)}


def parser(jobs, results):
    """A parser process: batches from `jobs` until None, counts to `results`."""
    while True:
        batch = jobs.get()
        if batch is None:
            break
        results.put(parse(batch))
    results.put(None)  # this parser is done


def generated_log(n, seed=7):
    rng = random.Random(seed)
    paths = ["/", "/index.html", "/api/orders", "/api/users", "/static/app.js"]
    for i in range(n):
        if i % 997 == 0:
            yield "garbage line without a request\n"
            continue
        yield (f'10.0.{rng.randrange(256)}.{rng.randrange(256)} - - '
               f'[06/Dec/2026:05:{i // 600 % 60:02d}:{i // 10 % 60:02d} +0000] '
               f'"{rng.choice(["GET", "GET", "POST"])} {rng.choice(paths)} HTTP/1.1" '
               f'{rng.choice([200, 200, 200, 304, 404, 500])} {rng.randrange(100, 50000)}\n')


def merge(total, part):
    total["status"].update(part["status"])
    total["bytes"].update(part["bytes"])
    total["malformed"] += part["malformed"]
    total["lines"] += part["lines"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=20000, help="lines of the generated log")
    ap.add_argument("--file", help="parse this access log instead")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--start-method", choices=multiprocessing.get_all_start_methods())
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    ctx = multiprocessing.get_context(args.start_method)

    if args.file:
        with open(args.file, errors="replace") as f:
            lines = f.readlines()
    else:
        lines = list(generated_log(args.lines))

    jobs = Queue()       # batches of lines to the parsers
    results = Queue()    # their counts back
    workers = [ctx.Process(target=parser, args=(jobs, results)) for _ in range(args.workers)]
    for w in workers:
        w.start()
    for i in range(0, len(lines), args.batch):
        jobs.put(lines[i:i + args.batch])
    for _ in workers:
        jobs.put(None)

    total = {"status": collections.Counter(), "bytes": collections.Counter(),
             "malformed": 0, "lines": 0}
    done = 0
    while done < len(workers):
        part = results.get(timeout=60)
        if part is None:
            done += 1
        else:
            merge(total, part)
    for w in workers:
        w.join()

    expected = parse(lines)  # the same work in one process
    ok = (total["lines"] == len(lines) and total["status"] == expected["status"]
          and total["bytes"] == expected["bytes"] and total["malformed"] == expected["malformed"]
          and all(w.exitcode == 0 for w in workers))
    report = {"ok": ok, "lines": total["lines"], "malformed": total["malformed"],
              "status": dict(sorted(total["status"].items())),
              "bytes": dict(sorted(total["bytes"].items())),
              "workers": args.workers, "start_method": ctx.get_start_method(),
              "queue_stats": jobs.stats()}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['lines']} lines, {report['malformed']} malformed, "
              f"by {args.workers} parser processes ({report['start_method']})")
        for code, n in report["status"].items():
            print(f"  HTTP {code}: {n}")
        for path, n in report["bytes"].items():
            print(f"  {path}: {n} bytes")
        print("same totals as a single-process parse" if ok else "MISMATCH")
    jobs.close()
    results.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
