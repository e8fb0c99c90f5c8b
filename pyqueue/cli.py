"""The `pyqueue` command line: list, inspect and remove segments.

    pyqueue ls            every pyqueue segment on this machine
    pyqueue stats NAME    the counters of a queue, as JSON
    pyqueue rm NAME...    remove segments by name
"""
import argparse
import json
import mmap
import os
import sys

from pyqueue import _core, _segment
from pyqueue.errors import PyQueueError

_KINDS = {1: "queue", 2: "topic", 3: "log"}


def _segments():
    """(name, size, info or None) for every pyqueue segment in /dev/shm."""
    try:
        files = sorted(os.listdir(_segment.SHM_DIR))
    except OSError:
        return
    for f in files:
        if not f.startswith(_segment.PREFIX) or ".oob-" in f:
            continue
        name = f[len(_segment.PREFIX):]
        path = os.path.join(_segment.SHM_DIR, f)
        info = None
        try:
            size = os.stat(path).st_size
            with open(path, "rb") as fh, mmap.mmap(fh.fileno(), size, prot=mmap.PROT_READ) as mm:
                info = _core.segment_info(mm)
        except (OSError, ValueError, PyQueueError):
            size = size if "size" in locals() else 0
        yield name, size, info


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmd_ls(args):
    rows = []
    for name, size, info in _segments():
        if info is None:
            rows.append((name, "?", size, "-", "-", "-"))
            continue
        depth = "-"
        if info["kind"] == 1:
            try:
                from pyqueue.queues import Queue
                q = Queue.open(name)
                depth = q.qsize()
                q.close()
            except Exception:
                depth = "?"
        pid = info["creator_pid"]
        rows.append((name, _KINDS.get(info["kind"], str(info["kind"])), size, depth, pid,
                     "yes" if _alive(pid) else "no"))
    if args.json:
        keys = ("name", "kind", "size", "depth", "creator_pid", "creator_alive")
        print(json.dumps([dict(zip(keys, r)) for r in rows], indent=2))
        return 0
    print(f"{'NAME':40} {'KIND':6} {'SIZE':>12} {'DEPTH':>8} {'CREATOR':>8} ALIVE")
    for r in rows:
        print(f"{r[0]:40} {r[1]:6} {r[2]:>12} {r[3]!s:>8} {r[4]!s:>8} {r[5]}")
    return 0


def cmd_stats(args):
    from pyqueue.queues import Queue
    q = Queue.open(args.name)
    print(json.dumps(q.stats(), indent=2))
    q.close()
    return 0


def cmd_rm(args):
    rc = 0
    for name in args.names:
        if not _segment.unlink(name):
            print(f"pyqueue rm: no segment named {name!r}", file=sys.stderr)
            rc = 1
    return rc


def main(argv=None):
    p = argparse.ArgumentParser(prog="pyqueue", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("ls", help="list pyqueue segments")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_ls)
    st = sub.add_parser("stats", help="counters of a queue")
    st.add_argument("name")
    st.set_defaults(func=cmd_stats)
    rm = sub.add_parser("rm", help="remove segments")
    rm.add_argument("names", nargs="+")
    rm.set_defaults(func=cmd_rm)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except PyQueueError as e:
        print(f"pyqueue {args.cmd}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
