"""Append + read rates of pyqueue.Log against what a Python program would
use for a persistent, replayable record log instead: sqlite3 (WAL) and a
plain append-only file.

Run from the repository root::

    python -m bench.log_compare              # full run (~1.5 min on 2 cores)
    python -m bench.log_compare --quick      # smoke run: small counts, 1 repeat
    python -m bench.log_compare --only 64B-batch --impls pyqueue-dir,sqlite

Each run: one appender process appends N records of one partition while
one reader process reads them as they come (blocking reads for pyqueue;
polling for the others, which have no way to wait for a record). Both open
the log before the start barrier; the clock runs from the barrier until the
reader has every record, checked by count and by the last record's
payload. Rate = N / elapsed. Cases: 64 B and 1 KiB values (256 distinct
ones, made beforehand), one append per record (msg) or batches of 256.

Implementations:
  pyqueue-mem   pyqueue.Log in shared memory (a 256 MiB ring: holds a whole run)
  pyqueue-dir   pyqueue.Log(path=..., fsync="never") in a temporary directory
  sqlite        sqlite3 in WAL mode, synchronous=NORMAL; one transaction per
                append (msg) or per batch (executemany); reader: SELECT ... WHERE
                id > last ORDER BY id LIMIT 1000, polled
  file          an append-only file of length-prefixed records: os.write per
                record (msg) or per batch; reader: os.read to EOF, polled (no
                index, no checksum, no replay by offset: the floor)
The ratios are to sqlite in the same run.

Results: a table on stdout and bench/results/log_compare.json (every sample).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import multiprocessing
import os
import shutil
import sqlite3
import statistics
import struct
import sys
import tempfile
import time

from bench.compare import fmt_count, fmt_mb, fmt_ratio, machine_info

BATCH = 256
BASELINE = "sqlite"
SIZES = [(64, "64B", 400_000), (1024, "1KiB", 200_000)]


_VALUES = {}


def _values(size):
    """256 distinct values of `size` bytes, made before the clock starts
    (record i carries _values(size)[i % 256]): the benchmark measures the
    log, not the making of payloads."""
    if size not in _VALUES:
        _VALUES[size] = [struct.pack("<Q", i) + b"x" * (size - 8) for i in range(256)]
    return _VALUES[size]


def _last(n, size):
    return _values(size)[(n - 1) % 256]


# ---- implementations: make a target; open(role) before the start barrier,
#      then append or read ------------------------------------------------

class PyqueueMem:
    label = "pyqueue.Log (memory)"

    def make(self, tmp):
        import pyqueue
        self.log = pyqueue.Log(retention_bytes=256 << 20)  # holds every record of a run
        return self.log.name

    def open(self, target):
        import pyqueue
        self.h = pyqueue.Log.open(target)

    def append(self, n, size, batch):
        vals = _values(size)
        if batch:
            append_many = self.h.append_many
            for i in range(0, n, BATCH):
                append_many(vals[:min(BATCH, n - i)])
        else:
            append = self.h.append
            for i in range(n):
                append(vals[i & 255])

    def read(self, n, size, batch):
        at, last = 0, None
        read = self.h.read
        while at < n:
            recs = read(0, at, 4096, None)
            at = recs[-1].offset + 1
            last = recs[-1].value
        assert at == n and last == _last(n, size)

    def destroy(self):
        self.log.unlink()
        self.log.close()


class PyqueueDir(PyqueueMem):
    label = "pyqueue.Log (directory)"

    def make(self, tmp):
        import pyqueue
        path = os.path.join(tmp, "log")
        self.log = pyqueue.Log(path=path, fsync="never")
        return path

    def destroy(self):
        self.log.close()


class Sqlite:
    label = "sqlite3 (WAL)"

    def make(self, tmp):
        path = os.path.join(tmp, "log.db")
        db = sqlite3.connect(path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, value BLOB)")
        db.commit()
        db.close()
        return path

    def open(self, target):
        self.db = sqlite3.connect(target, isolation_level=None)
        self.db.execute("PRAGMA synchronous=NORMAL")

    def append(self, n, size, batch):
        db, vals = self.db, _values(size)
        ins = "INSERT INTO log (value) VALUES (?)"
        if batch:
            for i in range(0, n, BATCH):
                db.execute("BEGIN")
                db.executemany(ins, [(v,) for v in vals[:min(BATCH, n - i)]])
                db.execute("COMMIT")
        else:
            for i in range(n):
                db.execute(ins, (vals[i & 255],))
        db.close()

    def read(self, n, size, batch):
        last_id, got, last = 0, 0, None
        q = "SELECT id, value FROM log WHERE id > ? ORDER BY id LIMIT 1000"
        while got < n:
            rows = self.db.execute(q, (last_id,)).fetchall()
            if not rows:
                time.sleep(0)  # nothing to wait on: poll
                continue
            got += len(rows)
            last_id, last = rows[-1]
        assert got == n and last == _last(n, size)
        self.db.close()

    def destroy(self):
        pass


class AppendFile:
    label = "append-only file"
    _len = struct.Struct("<I")

    def make(self, tmp):
        path = os.path.join(tmp, "log.bin")
        open(path, "wb").close()
        return path

    def open(self, target):
        self.target = target

    def append(self, n, size, batch):
        fd = os.open(self.target, os.O_WRONLY | os.O_APPEND)
        framed = [self._len.pack(size) + v for v in _values(size)]
        if batch:
            for i in range(0, n, BATCH):
                os.write(fd, b"".join(framed[:min(BATCH, n - i)]))
        else:
            for i in range(n):
                os.write(fd, framed[i & 255])
        os.close(fd)

    def read(self, n, size, batch):
        fd = os.open(self.target, os.O_RDONLY)
        buf, got, last = b"", 0, None
        unpack = self._len.unpack_from
        while got < n:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                time.sleep(0)
                continue
            buf += chunk
            at = 0
            while len(buf) - at >= 4:
                (ln,) = unpack(buf, at)
                if len(buf) - at - 4 < ln:
                    break
                last = buf[at + 4:at + 4 + ln]
                at += 4 + ln
                got += 1
            buf = buf[at:]
        assert got == n and last == _last(n, size)
        os.close(fd)

    def destroy(self):
        pass


IMPLS = {"pyqueue-mem": PyqueueMem, "pyqueue-dir": PyqueueDir, "sqlite": Sqlite,
         "file": AppendFile}


def _worker(role, impl_name, target, n, size, batch, barrier, results):
    impl = IMPLS[impl_name]()
    impl.open(target)
    _values(size)
    barrier.wait()
    t0 = time.perf_counter()
    (impl.append if role == "append" else impl.read)(n, size, batch)
    results.put((role, t0, time.perf_counter()))


def run_once(ctx, impl_name, n, size, batch, timeout):
    impl = IMPLS[impl_name]()
    tmp = tempfile.mkdtemp(prefix="pqlogbench-")
    try:
        target = impl.make(tmp)
        barrier = ctx.Barrier(2)
        results = ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(role, impl_name, target, n, size, batch,
                                                   barrier, results))
                 for role in ("read", "append")]
        for p in procs:
            p.start()
        got = {}
        try:
            for _ in procs:
                role, t0, t1 = results.get(timeout=timeout)
                got[role] = (t0, t1)
        finally:
            for p in procs:
                p.join(5)
                if p.is_alive():
                    p.kill()
                    p.join()
        if any(p.exitcode != 0 for p in procs):
            raise RuntimeError(f"{impl_name}: a worker failed")
        start = min(t0 for t0, _ in got.values())
        return got["read"][1] - start, got["append"][1] - got["append"][0]
    finally:
        impl.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts, 1 repeat")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated globs on case ids")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results",
                                                   "log_compare.json"))
    args = ap.parse_args(argv)
    impls = [i for i in args.impls.split(",") if i]
    for i in impls:
        if i not in IMPLS:
            ap.error(f"unknown implementation {i!r} (known: {', '.join(IMPLS)})")
    repeat = 1 if args.quick else args.repeat
    ctx = multiprocessing.get_context("fork")
    cases = [(f"{label}-{'batch' if b else 'msg'}", size, n // (20 if args.quick else 1), b)
             for size, label, n in SIZES for b in (False, True)]
    if args.only:
        pats = [p if any(c in p for c in "*?[") else f"*{p}*" for p in args.only.split(",")]
        cases = [c for c in cases if any(fnmatch.fnmatch(c[0], p) for p in pats)]
    report = {"machine": machine_info(), "repeat": repeat, "cases": []}
    failed = False
    for cid, size, n, batch in cases:
        row = {"id": cid, "records": n, "size": size, "results": {}}
        for name in impls:
            # sqlite commits one transaction per record in "msg": fewer records
            count = n // 10 if (name == "sqlite" and not batch) else n
            samples = []
            try:
                for _ in range(repeat):
                    total, append_s = run_once(ctx, name, count, size, batch, args.timeout)
                    samples.append({"records": count, "seconds": total,
                                    "append_seconds": append_s})
                    print(f"  {cid:12} {name:12} {count / total:12,.0f} records/s", file=sys.stderr)
            except Exception as e:  # noqa: BLE001 - shown in the table
                print(f"  {cid:12} {name:12} ERROR {e}", file=sys.stderr)
                row["results"][name] = {"status": "error", "error": str(e)}
                failed |= name.startswith("pyqueue")
                continue
            rates = [s["records"] / s["seconds"] for s in samples]
            row["results"][name] = {"status": "ok", "samples": samples,
                                    "median_records_per_s": statistics.median(rates),
                                    "spread": (max(rates) - min(rates)) / statistics.median(rates)}
        base = row["results"].get(BASELINE, {}).get("median_records_per_s")
        for r in row["results"].values():
            if r["status"] == "ok" and base:
                r["ratio"] = r["median_records_per_s"] / base
        report["cases"].append(row)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    header = ["case"] + [IMPLS[i].label for i in impls]
    rows = []
    for row in report["cases"]:
        cells = [row["id"]]
        for i in impls:
            r = row["results"].get(i, {})
            if r.get("status") != "ok":
                cells.append("ERROR")
                continue
            rate = r["median_records_per_s"]
            tilde = "~" if r["spread"] > 0.3 else ""
            ratio = f" ({fmt_ratio(r['ratio'])})" if "ratio" in r else ""
            cells.append(f"{tilde}{fmt_count(rate)} rec/s {fmt_mb(rate * row['size'] / 1e6)} "
                         f"MB/s{ratio}")
        rows.append(cells)
    widths = [max(len(r[k]) for r in rows + [header]) for k in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]))
    print(f"\nAppend + read: one appender and one reader process, medians of {repeat}; "
          f"(Nx) = ratio to sqlite3 in this run; ~ = repeats differ by > 30%.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
