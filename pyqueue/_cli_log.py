"""The Log commands of the `pyqueue` command line (pyqueue/cli.py):

    pyqueue tail NAME [--partition P] [--from-beginning] [-n COUNT] [--no-follow] [--json]
                 [--unpickle]
    pyqueue groups NAME [GROUP...] [--json] [--url URL]

NAME is a memory-mode log's name, or a directory-mode log's directory (a
path with a '/', or an existing directory); with --url (or $PYQUEUE_URL), a Log there.
"""
import base64
import datetime
import json
import os
import stat
import sys

from pyqueue.errors import SegmentNotFound, SegmentNotOwned


def _dir_owned(path):
    """Whether a log directory and every file in it are this user's
    (owned by the effective uid, not writable by group or others, no
    symbolic links): only then may its pickles be trusted."""
    me = os.geteuid()
    try:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != me or st.st_mode & 0o022:
            return False
        for root, dirs, files in os.walk(path):
            for entry in dirs + files:
                st = os.lstat(os.path.join(root, entry))
                if stat.S_ISLNK(st.st_mode) or st.st_uid != me or (
                        stat.S_ISDIR(st.st_mode) and st.st_mode & 0o022):
                    return False
    except OSError:
        return False
    return True


def open_log(name, unpickle=False):
    """The log NAME names, opened for reading. Its pickled values are
    decoded only when this user owns it (the segment, or the directory and
    every file in it) or unpickle is true: a pickle runs its writer's code,
    and an administrator's `pyqueue tail` of another user's log must not
    run that user's code. Otherwise values stay raw (RawValue)."""
    from pyqueue.log import DirectoryLog, MemoryLog
    if os.sep in name or os.path.isdir(name):
        trusted = _dir_owned(name)
        # Reading another user's log is the point; its values stay raw.
        log = DirectoryLog.open(name, trust_owner=not trusted)
    else:
        try:
            log = MemoryLog.open(name)
            trusted = True
        except SegmentNotOwned:
            log = MemoryLog.open(name, trust_owner=True)
            trusted = False
        except SegmentNotFound:
            raise SegmentNotFound(f"no log named {name!r} in /dev/shm, and no directory "
                                  f"{name!r}") from None
    log.raw_values = not (trusted or unpickle)
    return log


def _text(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "backslashreplace")
    if type(v).__name__ == "RawValue":
        return f"<{v.type}, not decoded: {v.data!r}>"
    return v if isinstance(v, str) else repr(v)


def _json_value(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "backslashreplace")
    if isinstance(v, (str, int, float, bool, type(None), list, dict)):
        try:
            json.dumps(v)
            return v
        except (TypeError, ValueError):
            pass
    return repr(v)


def _line(r, as_json):
    if as_json:
        row = {"partition": r.partition, "offset": r.offset, "timestamp": r.timestamp,
               "key": None if r.key is None else _text(r.key),
               "value": _json_value(r.value),
               "headers": {k: _text(v) for k, v in r.headers.items()}}
        if type(r.value).__name__ == "RawValue":  # left encoded: its type and bytes
            row["value"] = None
            row["value_type"] = r.value.type
            row["value_base64"] = base64.b64encode(r.value.data).decode("ascii")
        return json.dumps(row)
    ts = datetime.datetime.fromtimestamp(r.timestamp / 1000, datetime.timezone.utc)
    key = "-" if r.key is None else _text(r.key)
    return f"{r.partition}\t{r.offset}\t{ts.isoformat(timespec='milliseconds')}\t{key}\t" \
           f"{_text(r.value)}"


def _open_url_log(args, url, command):
    """The Redis log args.name at url, or None (said on stderr)."""
    from pyqueue.backends import connect
    try:
        return connect(url).Log.open(args.name)
    except SegmentNotFound:
        print(f"pyqueue {command}: no log {args.name!r} at {url}", file=sys.stderr)
        return None


def cmd_tail(args):
    from pyqueue.cli import _backend_url
    if args.count is not None and args.count < 0:
        print(f"pyqueue tail: -n/--count must be 0 or more, not {args.count}", file=sys.stderr)
        return 2
    if args.count == 0:
        return 0            # (as tail -n 0: nothing to show)
    url = _backend_url(args)
    if url is None:
        log = open_log(args.name, args.unpickle)
    else:  # a Redis log, by URL: anyone who can reach the server may have
        # written its pickles, so they stay raw unless --unpickle
        log = _open_url_log(args, url, "tail")
        if log is None:
            return 1
        log.raw_values = not args.unpickle
    try:
        parts = list(range(log.partitions)) if args.partition is None else [args.partition]
        for p in parts:
            if not 0 <= p < log.partitions:
                print(f"pyqueue tail: partition {p} out of range 0..{log.partitions - 1}",
                      file=sys.stderr)
                return 1
        pos = {p: log.start_offset(p) if args.from_beginning else log.end_offset(p)
               for p in parts}
        shown = 0
        out = sys.stdout
        while True:
            got = False
            for p in parts:
                want = 1000 if args.count is None else min(1000, args.count - shown)
                try:
                    recs = log.read(p, pos[p], max_records=want)
                except LookupError as e:  # OffsetOutOfRange: retention went past us
                    pos[p] = e.start_offset
                    continue
                for r in recs:
                    out.write(_line(r, args.json) + "\n")
                    pos[p] = r.offset + 1
                    shown += 1
                got = got or bool(recs)
                if args.count is not None and shown >= args.count:
                    out.flush()
                    return 0
            out.flush()
            if not got:
                if args.no_follow:
                    return 0
                log._wait_any(parts, [pos[p] for p in parts], None, 0, 0, 1.0)
    except KeyboardInterrupt:
        return 130
    finally:
        log.close()


def cmd_groups(args):
    from pyqueue.cli import _backend_url
    url = _backend_url(args)
    if url is None:
        log = open_log(args.name)
    else:  # a Redis log, by URL (--url or $PYQUEUE_URL)
        log = _open_url_log(args, url, "groups")
        if log is None:
            return 1
    try:
        names = args.groups or log.groups()
        report = {}
        for g in names:
            try:
                offsets = log.group_offsets(g)
                members = log.group_members(g)
            except KeyError:
                print(f"pyqueue groups: no consumer group {g!r}", file=sys.stderr)
                return 1
            report[g] = {"members": members,
                         "partitions": {str(p): v for p, v in offsets.items()}}
        if args.json:
            print(json.dumps(report, indent=2))
            return 0
        if not report:
            print("no consumer groups")
        for g, info in report.items():
            members = info["members"]
            who = ", ".join(f"{m['pid']}{'' if m['alive'] else ' (dead)'}" for m in members)
            print(f"group {g}: {len(members)} member(s){': ' + who if who else ''}")
            print(f"  {'PARTITION':>9} {'COMMITTED':>10} {'END':>10} {'LAG':>10} OWNER")
            for p, v in info["partitions"].items():
                committed = "-" if v["committed"] is None else v["committed"]
                owner = "-" if v["owner_pid"] is None else v["owner_pid"]
                print(f"  {p:>9} {committed!s:>10} {v['end']:>10} {v['lag']:>10} {owner}")
        return 0
    finally:
        log.close()


def add_parsers(sub):
    tail = sub.add_parser(
        "tail", help="print a log's records as they come",
        description="Print the records of a log (all partitions, or one) as they are "
                    "appended: partition, offset, timestamp, key, value. Reads without "
                    "joining any consumer group. NAME: a memory-mode log's name or a "
                    "directory-mode log's directory. Pickled values of a log this user "
                    "does not own are not unpickled unless --unpickle is given.")
    tail.add_argument("name", metavar="NAME")
    tail.add_argument("--partition", "-p", type=int, default=None, metavar="P")
    tail.add_argument("--from-beginning", action="store_true",
                      help="start at the oldest record kept (default: only new ones)")
    tail.add_argument("-n", "--count", type=int, default=None, metavar="COUNT",
                      help="exit after COUNT records")
    tail.add_argument("--no-follow", action="store_true",
                      help="exit at the end instead of waiting for more")
    tail.add_argument("--json", action="store_true", help="one JSON object a line")
    tail.add_argument("--unpickle", "--trust", dest="unpickle", action="store_true",
                      help="decode pickled values of a log this user does not own (a pickle "
                           "runs code of whoever wrote it: only for a writer you trust). "
                           "Without it such values are shown undecoded: their type and "
                           "bytes")
    tail.add_argument("--url", help="a backend URL (redis://..., default $PYQUEUE_URL or "
                      "shm://); pickled values of a log there are shown undecoded unless "
                      "--unpickle")
    tail.set_defaults(func=cmd_tail)
    groups = sub.add_parser(
        "groups", help="consumer groups of a log: committed offsets and lag",
        description="For each consumer group of the log (or the groups named): its "
                    "members (pid, alive) and, per partition, the committed offset, the "
                    "end offset, the lag and the owner's pid.")
    groups.add_argument("name", metavar="NAME")
    groups.add_argument("groups", nargs="*", metavar="GROUP")
    groups.add_argument("--json", action="store_true", help="print JSON")
    groups.add_argument("--url", help="a backend URL (redis://..., default $PYQUEUE_URL or "
                        "shm://)")
    groups.set_defaults(func=cmd_groups)
