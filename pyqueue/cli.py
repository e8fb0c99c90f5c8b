"""The `pyqueue` command line: list, inspect, remove and collect segments.

    pyqueue ls [--json] [PATTERN...]   every pyqueue segment on this machine
    pyqueue stats NAME [--json]        the counters of a queue, topic, log or work queue
    pyqueue metrics [--serve HOST:PORT] [--path DIR] [PATTERN...]
                                       Prometheus metrics of every segment
    pyqueue top                        a live view of every segment (q quits)
    pyqueue rm NAME...                 remove segments (and their out-of-band segments)
    pyqueue gc [--dry-run] [--oob-grace SECONDS] [--anon-only] [--json] [PATTERN...]
                                       remove the segments nobody can use any more
    pyqueue tail NAME [--partition P] [--from-beginning] [-n COUNT] [--no-follow] [--json]
                                       print a log's records as they come
    pyqueue groups NAME [GROUP...] [--json]
                                       a log's consumer groups: committed offsets, lag
    pyqueue --version                  the installed version

PATTERNs are shell-style globs on queue names (`anon-1234-*`); an
out-of-band segment goes with its queue's name.
"""
import argparse
import fnmatch
import json
import os
import re
import stat as _stat
import struct
import sys
import time

from pyqueue import _cli_log, _core, _procscan, _segment
from pyqueue._version import __version__
from pyqueue.errors import PyQueueError

_KINDS = {1: "queue", 2: "topic", 3: "log", 5: "workqueue"}
_KIND_WORKQ = 5  # pyqueue.workqueue._KIND_WORKQ: its out-of-band references are read by file_references
_KIND_TOPIC = 2  # pyqueue.topic._KIND_TOPIC: its out-of-band references are read by topic_references
_KIND_LOG = 3    # a memory-mode log: its out-of-band references are read by log_references

# The segment header (csrc/pq_segment.h), read here with plain reads rather
# than a mapping: listing must never map (or fault on) files that are not
# ours, truncated, or being created and resized under us.
_HEADER = struct.Struct("<QIIQQQiIQQII16Q")
_HEADER_BYTES = 256
_MAGIC = 0x0045554555515950  # "PYQUEUE\0"
_LAYOUT_VERSION = _core.LAYOUT_VERSION  # PQ_LAYOUT_VERSION (csrc/pq_segment.h)
_READY = 1

_OOB_RE = re.compile(r"^(?P<queue>.+)\.oob-(?P<pid>[0-9]+)-(?P<n>[0-9a-f]+)$", re.S)
_ANON_RE = re.compile(r"^anon-(?P<pid>[0-9]+)-[0-9a-f]+$")

DEFAULT_OOB_GRACE = 300.0

GC_RULE = """\
What gc removes (PATTERNs restrict it to some queue names):

  a queue (or other) segment, when no live process maps it or holds it
  open (/proc/*/maps, /proc/*/fd) AND its creator is dead: the header's
  creator pid no longer runs, is a zombie, or now belongs to another
  process (its start time differs from the header's creator_start_time).
  A segment whose header is not (yet) valid (being created, truncated, not
  pyqueue's) is only removed when it is an unnamed queue "anon-PID-..."
  whose PID is dead; other such segments are listed as "?" and left alone.
  Named queues whose creator exited are removed too, messages and all:
  give --anon-only to collect unnamed queues only.

  an out-of-band segment NAME.oob-PID-N (a large message), when no live
  process maps it or holds it open AND either
    - its queue NAME is gone: no segment of that name exists (or gc removes
      it in this run) and no live process still maps the unlinked queue; or
    - it is older than --oob-grace seconds (default 300) AND its reference
      is not in the unread part of the queue's ring AND either a consumer
      already took its message (the reference is in the read part: the
      consumer died before removing the segment) or its producer PID is
      dead (or the pid now belongs to a process started after the segment).
  For a topic, "referenced" means named by a committed record still in its
  ring (read under the topic's lock); the process that moves the ring past
  a record removes its segment.
  A large message that waits in a live queue is therefore never removed,
  even when its producer has exited; one whose producer died before the
  reference was put, or whose consumer died after taking it, is removed
  after the grace period.

Segments that processes we may not inspect (another user's, hidepid)
could be using are kept. Processes in other PID namespaces are invisible:
do not run gc across containers that share /dev/shm.
"""


# --------------------------------------------------------------------------
# reading the shm directory
# --------------------------------------------------------------------------

class Oob:
    """An out-of-band segment /dev/shm/pyqueue.QUEUE.oob-PID-HEX."""

    def __init__(self, entry, queue, pid, n, st):
        self.entry = entry
        self.queue = queue
        self.pid = pid
        self.n = n
        self.st = st
        self.users = set()
        self.producer_alive = None

    @property
    def size(self):
        # What it holds of /dev/shm: a growing queue's file is sparse, as
        # big as the regions its ring may grow into (docs/design.md).
        return min(self.st.st_size, self.st.st_blocks * 512) if self.st is not None else 0

    def made_at(self):
        """Unix time by which the segment existed (its earliest timestamp)."""
        return min(self.st.st_mtime, self.st.st_ctime)

    def age(self, now):
        # Its newest timestamp: errs on the young side.
        return now - max(self.st.st_mtime, self.st.st_ctime)


class Segment:
    """A segment /dev/shm/pyqueue.NAME (a queue, or something else there)."""

    def __init__(self, entry, name):
        self.entry = entry
        self.name = name
        self.st = None
        self.state = "gone"   # ok, initializing, empty, truncated, not-pyqueue, version,
        #                       not-a-file, unreadable, gone
        self.header = None
        self.creator_alive = None
        self.users = set()
        self.oobs = []
        self.depth = None

    @property
    def kind(self):
        if self.state != "ok":
            return "?"
        return _KINDS.get(self.header["kind"], str(self.header["kind"]))

    @property
    def size(self):
        # What it holds of /dev/shm: a growing queue's file is sparse, as
        # big as the regions its ring may grow into (docs/design.md).
        return min(self.st.st_size, self.st.st_blocks * 512) if self.st is not None else 0

    @property
    def creator_pid(self):
        return self.header["creator_pid"] if self.header else None


def _path(entry):
    return os.path.join(_segment.SHM_DIR, entry)


def _lstat(entry):
    try:
        return os.lstat(_path(entry))
    except OSError:
        return None


def read_header(entry):
    """(state, header dict or None, stat) of /dev/shm/<entry>, with plain
    reads: never blocks (FIFOs), never follows links, never maps."""
    path = _path(entry)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return "gone", None, None
    except OSError:
        st = _lstat(entry)
        if st is not None and not _stat.S_ISREG(st.st_mode):
            return "not-a-file", None, st
        return ("unreadable" if st is not None else "gone"), None, st
    try:
        st = os.fstat(fd)
        if not _stat.S_ISREG(st.st_mode):
            return "not-a-file", None, st
        data = os.pread(fd, _HEADER_BYTES, 0) if st.st_size else b""
    except OSError:
        return "unreadable", None, _lstat(entry)
    finally:
        os.close(fd)
    if not data:
        return "empty", None, st
    if len(data) < _HEADER_BYTES:
        return "truncated", None, st
    f = _HEADER.unpack_from(data)
    magic, version, kind, seg_size, data_off, data_size = f[:6]
    if magic != _MAGIC:
        return ("initializing" if magic == 0 else "not-pyqueue"), None, st
    hdr = {"kind": kind, "layout_version": version, "segment_size": seg_size,
           "data_offset": data_off, "data_size": data_size, "creator_pid": f[6],
           "creator_start_time": f[8], "created_unix_ns": f[9], "state": f[10],
           "params": list(f[12:28])}
    if hdr["state"] != _READY:
        return "initializing", hdr, st
    if version != _LAYOUT_VERSION:
        return "version", hdr, st
    if (seg_size > st.st_size or data_off < _HEADER_BYTES or data_off > seg_size
            or data_size > seg_size - data_off):
        return "truncated", hdr, st
    return "ok", hdr, st


def _matches(name, patterns):
    return not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def collect(patterns=()):
    """Read the shm directory and /proc. Returns (segments, orphans, users,
    entries): segments with their out-of-band segments attached, the
    out-of-band segments whose queue segment does not exist, the
    _procscan.ShmUsers, and the set of every pyqueue entry present."""
    try:
        entries = {e for e in os.listdir(_segment.SHM_DIR) if e.startswith(_segment.PREFIX)}
    except OSError:
        entries = set()
    segs, oobs = {}, []
    for entry in sorted(entries):
        name = entry[len(_segment.PREFIX):]
        m = _OOB_RE.match(name)  # queue names cannot contain ".oob-"
        if m:
            if _matches(m["queue"], patterns):
                oobs.append((entry, m))
        elif _matches(name, patterns):
            segs[name] = Segment(entry, name)
    users = _procscan.scan(_segment.PREFIX, _segment.SHM_DIR)
    for seg in segs.values():
        seg.state, seg.header, seg.st = read_header(seg.entry)
        seg.users = users.users(seg.entry, seg.st)
        if seg.header is not None and seg.header["creator_pid"] > 0:
            seg.creator_alive = _procscan.is_alive(seg.header["creator_pid"],
                                                   seg.header["creator_start_time"])
    orphans = []
    for entry, m in oobs:
        st = _lstat(entry)
        if st is None:
            continue  # taken by a consumer meanwhile
        o = Oob(entry, m["queue"], int(m["pid"]), m["n"], st)
        o.users = users.users(entry, st)
        o.producer_alive = _procscan.is_alive_since(o.pid, o.made_at())
        seg = segs.get(o.queue)
        if seg is not None:
            seg.oobs.append(o)
        else:
            orphans.append(o)
    return list(segs.values()), orphans, users, entries


def _open_counted(name, kind):
    """A queue or work queue opened to read its counters, or None (as
    `pyqueue stats` opens it: an unnamed queue's name is not kept alive)."""
    if kind in (1, 5):
        from pyqueue import _inspect
        return _inspect.open_segment(name, kind)
    return None


def _depth(seg):
    """(messages in a queue or work queue segment, consistent) (opens it
    briefly), or (None, None). Never waits on a lock: a work queue whose
    lock is held (by a stopped process, or a damaged lock word) is counted
    without it, and consistent is False (the counts may disagree)."""
    if seg.state != "ok" or seg.header["kind"] not in (1, 5):
        return None, None
    try:
        q = _open_counted(seg.name, seg.header["kind"])
        try:
            if seg.header["kind"] == 5:
                s = q._stats()
                return (s["depth"] + s["delayed"] + s["in_flight"] + s["dead_pending"],
                        s["consistent"])
            return q.qsize(), True
        finally:
            q.close()
            del q
    except Exception:
        return None, None


# --------------------------------------------------------------------------
# references from a queue's ring to out-of-band segments
# --------------------------------------------------------------------------

def _open_segment_file(entry):
    """(fd, stat) of /dev/shm/<entry> opened for reading - never following
    a link, never blocking (a FIFO) - or None when it cannot be opened or
    is not a regular file. The caller closes fd."""
    try:
        fd = os.open(_path(entry), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        st = None
    if st is None or not _stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st


def _scan_references(fd, queue_entry, pos, end):
    """(file offset, entry) of each reference to one of queue_entry's
    out-of-band segments in bytes [pos, end) of fd: read in chunks, holes
    skipped, each chunk scanned with the end of the one before it (a name
    cut by a chunk's end is found). Bounded: end. OSError propagates."""
    prefix = ("/" + queue_entry + ".oob-").encode()
    pat = re.compile(re.escape(prefix) + rb"([0-9]+)-([0-9a-f]{16}|[0-9]+)")  # now, and before
    overlap = len(prefix) + 48
    tail_bytes = b""
    while pos < end:
        try:
            data_at = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            return  # ENXIO: only a hole is left
        if data_at != pos:
            tail_bytes, pos = b"", data_at
            if pos >= end:
                return  # the data after the hole lies past end
        buf = os.pread(fd, min(4 << 20, end - pos), pos)
        if not buf:
            return
        base = pos - len(tail_bytes)
        for m in pat.finditer(tail_bytes + buf):
            yield base + m.start(), (prefix[1:] + m.group(1) + b"-" + m.group(2)).decode()
        tail_bytes = buf[-overlap:]
        pos += len(buf)


def ring_references(queue_entry):
    """Out-of-band segments a queue segment refers to, as two sets of
    entries: (unread, taken). A reference inside [head, tail) of the ring
    belongs to a message still waiting; one elsewhere is the stale copy of
    a message a consumer already took (who then removes the segment, unless
    it died first). Reads the file (skipping holes), never maps it. None
    when unreadable or not a queue."""
    unread, taken = set(), set()
    opened = _open_segment_file(queue_entry)
    if opened is None:
        return None
    fd, st = opened
    try:
        head_block = os.pread(fd, _core.RING_DATA_OFFSET, 0)
        if len(head_block) < _core.RING_DATA_OFFSET:
            return None
        (data_size,) = struct.unpack_from("<Q", head_block, 32)
        (head,) = struct.unpack_from("<Q", head_block, _core.RING_HEAD_OFFSET)
        (tail,) = struct.unpack_from("<Q", head_block, _core.RING_TAIL_OFFSET)
        f = _HEADER.unpack_from(head_block)
        cap = f[12]                              # params[PQ_RING_PARAM_CAPACITY]
        if (cap == 0 or cap & (cap - 1) or data_size % cap or tail - head > data_size
                or (data_size // cap + 1) & (data_size // cap)):
            return None                          # the regions: cap * (2^levels - 1)
        # The live epochs (docs/design.md, "Unbounded queues"): each runs
        # [from, to) of the positions in the region of its level.
        (epoch,) = struct.unpack_from("<Q", head_block, _core.RING_EPOCH_OFFSET)
        live = []
        to = tail
        for k in range(epoch, max(epoch - _core.RING_EPOCHS, -1), -1):
            start, level = struct.unpack_from(
                "<QQ", head_block, _core.RING_EPOCHS_OFFSET + 16 * (k % _core.RING_EPOCHS))
            if level > 40 or cap * ((1 << (level + 1)) - 1) > data_size:
                return None
            size = cap << level
            first = head if (head - start) % (1 << 64) <= (to - start) % (1 << 64) else start
            live.append((_core.RING_DATA_OFFSET + cap * ((1 << level) - 1), size, start, first, to))
            if first == head:
                break                            # head's epoch: the older ones are read
            to = start

        def waiting(file_offset):
            for region, size, start, first, to in live:
                if region <= file_offset < region + size:
                    rel = (file_offset - region - ((first - start) & (size - 1))) & (size - 1)
                    return rel < (to - first) % (1 << 64)
            return False

        end = min(st.st_size, _core.RING_DATA_OFFSET + data_size)
        for at, entry in _scan_references(fd, queue_entry, _core.RING_DATA_OFFSET, end):
            (unread if waiting(at) else taken).add(entry)
    except (OSError, struct.error):
        return None
    finally:
        os.close(fd)
    return unread, taken - unread


def file_references(queue_entry):
    """Out-of-band segments named anywhere in a work queue's segment file,
    as (referenced, set()): a WorkQueue keeps a message's record (its
    reference) until the message is done, and its records are not laid out
    as a ring's, so every reference found - a waiting message's, or the
    stale bytes of one done - keeps its segment (conservative: a segment
    whose reference was overwritten and whose producer is dead is an
    orphan). Reads the file (skipping holes), never maps it. None when
    unreadable."""
    opened = _open_segment_file(queue_entry)
    if opened is None:
        return None
    fd, st = opened
    try:
        found = {entry for _, entry in _scan_references(fd, queue_entry, 0, st.st_size)}
    except OSError:
        return None
    finally:
        os.close(fd)
    return found, set()


def topic_references(queue_entry):
    """Out-of-band segments a topic refers to, as (referenced, set()): the
    references of the committed records still in its ring, read under the
    topic's lock (a record that is only claimed - its producer died before
    committing it - refers to nothing: no subscriber will read it). A
    record's segment is removed by the process that moves the ring past
    it, so a reference outside the ring is not a live one. None when the
    topic cannot be opened or read."""
    from pyqueue.topic import Topic
    try:
        # Any serializer will do to read references (and is required to
        # open a topic made with a custom one).
        t = Topic.open(queue_entry[len(_segment.PREFIX):], serializer=(bytes, bytes),
                       trust_owner=True)
    except Exception:
        return None
    try:
        found = t._oob_segments()
    except Exception:
        found = None
    finally:
        t.close()
        del t
    return None if found is None else (found, set())


def log_references(queue_entry):
    """Out-of-band segments a memory-mode log refers to, as (referenced,
    set()): the references of the committed records each partition still
    retains, read under the partition's lock (pq_log_scan_refs; not by
    reading the file as a Queue's ring, whose layout a log's is not). A
    record's segment is removed by the process that drops the record, so
    a reference no longer retained is not a live one. None when the log
    cannot be opened or read."""
    from pyqueue.log import MemoryLog
    name = queue_entry[len(_segment.PREFIX):]
    try:
        try:
            lg = MemoryLog.open(name, trust_owner=True)
        except PyQueueError:
            # Made with a custom serializer: any will do to read references.
            lg = MemoryLog.open(name, trust_owner=True, serializer=(bytes, bytes))
    except Exception:
        return None
    try:
        found = lg._oob_segments()
    except Exception:
        found = None
    finally:
        lg.close()
        del lg
    return None if found is None else (found, set())


# --------------------------------------------------------------------------
# gc
# --------------------------------------------------------------------------

def _segment_verdict(seg, users, anon_only):
    """Reason to remove a segment, or None to keep it."""
    anon = _ANON_RE.match(seg.name)
    if anon_only and not anon:
        return None
    if seg.st is None or seg.state in ("not-a-file", "unreadable", "gone"):
        return None
    if seg.users or users.maybe_hidden_user(seg.st):
        return None
    if seg.state == "ok":
        if seg.creator_alive is False:
            return f"creator pid {seg.header['creator_pid']} is dead"
        return None
    if anon:
        pid = int(anon["pid"])
        made = min(seg.st.st_mtime, seg.st.st_ctime)
        if _procscan.is_alive_since(pid, made) is False:
            return f"{seg.state} segment of dead creator pid {pid}"
    return None


def _oob_verdict(o, queue_gone, refs, users, now, grace):
    """Reason to remove an out-of-band segment, or None to keep it.
    refs: callable giving the queue's referenced entries (or None)."""
    if not _stat.S_ISREG(o.st.st_mode):
        return None
    if o.users or users.maybe_hidden_user(o.st):
        return None
    if queue_gone:
        return f"its queue {o.queue!r} is gone"
    if o.age(now) < grace:
        return None
    referenced = refs()
    if referenced is None:
        return None
    unread, taken = referenced
    if o.entry in unread:
        return None  # a message still waiting in the queue
    if o.entry in taken:
        return (f"older than {grace:g} s and its message was taken from queue {o.queue!r} "
                "by a consumer that died before removing it")
    if o.producer_alive is not False:
        return None  # its producer may still be putting the reference
    return (f"producer pid {o.pid} is dead, older than {grace:g} s and not "
            f"referenced by queue {o.queue!r}")


def plan_gc(patterns=(), oob_grace=DEFAULT_OOB_GRACE, anon_only=False, now=None):
    """[(kind, entry, size, reason, st)] of what gc would remove now."""
    segments, orphans, users, entries = collect(patterns)
    now = time.time() if now is None else now
    plan = []
    removed = set()
    for seg in segments:
        why = _segment_verdict(seg, users, anon_only)
        if why:
            plan.append((seg.kind, seg.entry, seg.size, why, seg.st))
            removed.add(seg.name)
    by_queue = {}
    work_queues = set()
    topics = set()
    logs = set()
    for seg in segments:
        by_queue[seg.name] = seg.oobs
        if seg.header and seg.header.get("kind") == _KIND_WORKQ:
            work_queues.add(seg.name)
        if seg.header and seg.header.get("kind") == _KIND_TOPIC:
            topics.add(seg.name)
        if seg.header and seg.header.get("kind") == _KIND_LOG:
            logs.add(seg.name)
    for o in orphans:
        by_queue.setdefault(o.queue, []).append(o)
    for queue, oobs in sorted(by_queue.items()):
        if anon_only and not _ANON_RE.match(queue):
            continue
        queue_entry = _segment.PREFIX + queue
        present = queue_entry in entries and queue not in removed
        queue_gone = not present and not users.deleted_users(queue_entry)
        cache = []

        def refs(queue_entry=queue_entry, present=present, cache=cache,
                 scan=(file_references if queue in work_queues else
                       topic_references if queue in topics else
                       log_references if queue in logs else ring_references)):
            if not cache:
                cache.append(scan(queue_entry) if present else None)
            return cache[0]

        for o in oobs:
            why = _oob_verdict(o, queue_gone, refs, users, now, oob_grace)
            if why:
                plan.append(("oob", o.entry, o.size, why, o.st))
    return plan


def _unlink(entry, st):
    """Remove a segment if it is still the file that was examined.
    Returns None when done (or already gone), else an error message."""
    now_st = _lstat(entry)
    if now_st is None:
        return None
    if st is not None and (now_st.st_dev, now_st.st_ino) != (st.st_dev, st.st_ino):
        return "replaced by a new segment since it was examined; kept"
    try:
        _segment.shm_unlink("/" + entry)
    except OSError as e:
        return str(e) or type(e).__name__
    return None


def _gc_url(args, url):
    """pyqueue gc --url: the Log partitions and consumer groups on a Redis
    backend that no log of their name owns (admin.leftovers)."""
    from pyqueue.backends import connect
    from pyqueue.backends.redis import admin
    if args.anon_only or args.oob_grace is not None:
        print("pyqueue gc: --anon-only and --oob-grace are shared memory's, not --url's",
              file=sys.stderr)
        return 2
    b = connect(url)
    verb = "would remove" if args.dry_run else "removed"
    done = []
    for item in admin.leftovers(b, args.patterns):
        removed = False if args.dry_run else admin.drop_leftover(b, item)
        done.append(dict(item, removed=removed))
        if not args.json:       # (as it goes: a failure later keeps what was said)
            d = done[-1]
            what = (f"partition {d['partition']}" if d["kind"] == "partition"
                    else f"group {d['group']!r}")
            state = (verb if args.dry_run or d["removed"]
                     else "did not remove (gone, or made again, meanwhile)")
            print(f"{state} {what} of log {_show(d['log'])}: no log of that name owns it",
                  flush=True)
    if args.json:
        print(json.dumps(done, indent=2))
        return 0
    n = sum(1 for d in done if args.dry_run or d["removed"])
    print(f"gc: {verb} {n} leftover{'s' if n != 1 else ''} at {url}")
    return 0


def cmd_gc(args):
    # Only an explicit --url, never $PYQUEUE_URL: a `pyqueue gc` run for
    # shared memory (from cron, say) does not start deleting on a server.
    if args.url and _backend_url(args) is not None:
        return _gc_url(args, args.url)
    if args.oob_grace is None:
        args.oob_grace = DEFAULT_OOB_GRACE
    if args.oob_grace < 0:
        print("pyqueue gc: --oob-grace must be >= 0", file=sys.stderr)
        return 2
    plan = plan_gc(args.patterns, args.oob_grace, args.anon_only)
    rc = 0
    done = []
    for kind, entry, size, why, st in plan:
        error = None if args.dry_run else _unlink(entry, st)
        if error:
            rc = 1
        done.append({"segment": entry, "kind": kind, "size": size, "reason": why,
                     "removed": not args.dry_run and error is None, "error": error})
    if args.json:
        print(json.dumps(done, indent=2))
        return rc
    verb = "would remove" if args.dry_run else "removed"
    for d in done:
        if d["error"]:
            print(f"pyqueue gc: cannot remove {_show(d['segment'])}: {d['error']}", file=sys.stderr)
        else:
            print(f"{verb} {_show(d['segment'])} ({d['kind']}, {_bytes(d['size'])}): {d['reason']}")
    ok = [d for d in done if not d["error"]]
    total = sum(d["size"] for d in ok)
    print(f"gc: {verb} {len(ok)} segment{'s' if len(ok) != 1 else ''} ({_bytes(total)})")
    return rc


# --------------------------------------------------------------------------
# ls, stats, rm
# --------------------------------------------------------------------------

# How long a CLI command waits for a lock another process holds.
CLI_LOCK_WAIT = 1.0


def _show(name):
    return name if name.isprintable() else ascii(name)


def _bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _yn(v):
    return "?" if v is None else ("yes" if v else "no")


def _pids(pids):
    if not pids:
        return "-"
    pids = sorted(pids)
    s = ",".join(map(str, pids[:3]))
    return s + (f",+{len(pids) - 3}" if len(pids) > 3 else "")


def _oob_row(o, now):
    return {"name": o.entry[len(_segment.PREFIX):], "segment": o.entry,
            "kind": "oob", "queue": o.queue, "size": o.size, "producer_pid": o.pid,
            "producer_alive": o.producer_alive, "open_by": sorted(o.users),
            "age_s": round(o.age(now), 3)}


def _backend_url(args):
    """A non-shared-memory --url (or PYQUEUE_URL), else None."""
    url = getattr(args, "url", None) or os.environ.get("PYQUEUE_URL")
    if not url or url.split(":", 1)[0].lower() == "shm":
        return None
    return url


def _ls_url(args, url):
    from pyqueue.backends import connect
    from pyqueue.backends.redis import admin
    rows = admin.rows(connect(url), args.patterns)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'NAME':40} {'KIND':10} {'DEPTH':>9}")
    for r in rows:
        print(f"{_show(r['name']):40} {r['kind']:10} {'-' if r['depth'] is None else r['depth']!s:>9}")
    return 0


def cmd_ls(args):
    url = _backend_url(args)
    if url is not None:
        return _ls_url(args, url)
    segments, orphans, _, _ = collect(args.patterns)
    now = time.time()
    rows = []
    for seg in segments:
        seg.depth, consistent = _depth(seg)
        rows.append({
            "name": seg.name, "segment": seg.entry, "kind": seg.kind, "state": seg.state,
            "size": seg.size, "depth": seg.depth, "depth_consistent": consistent,
            "creator_pid": seg.creator_pid,
            "creator_start_time": seg.header["creator_start_time"] if seg.header else None,
            "creator_alive": seg.creator_alive,
            "created_unix_ns": seg.header["created_unix_ns"] if seg.header else None,
            "open_by": sorted(seg.users),
            "mode": oct(seg.st.st_mode & 0o777) if seg.st is not None else None,
            "oob_count": len(seg.oobs), "oob_bytes": sum(o.size for o in seg.oobs),
            "oob": [_oob_row(o, now) for o in seg.oobs],
        })
    orphan_rows = [_oob_row(o, now) for o in orphans]
    if args.json:
        print(json.dumps(rows + orphan_rows, indent=2))
        return 0
    print(f"{'NAME':40} {'KIND':6} {'SIZE':>10} {'DEPTH':>7} {'CREATOR':>8} {'ALIVE':5} "
          f"{'OPEN BY':16} OOB")
    for r in rows:
        kind = r["kind"]
        depth = "-" if r["depth"] is None else r["depth"]
        if r["depth_consistent"] is False:
            depth = f"~{depth}"  # counted without the lock (its holder is stopped?)
        oob = f"{r['oob_count']}/{_bytes(r['oob_bytes'])}" if r["oob_count"] else "-"
        creator = "-" if r["creator_pid"] is None else r["creator_pid"]
        alive = "-" if r["creator_pid"] is None else _yn(r["creator_alive"])
        print(f"{_show(r['name']):40} {kind:6} {r['size']:>10} {depth!s:>7} {creator!s:>8} "
              f"{alive:5} {_pids(r['open_by']):16} {oob}"
              + ("" if r["state"] == "ok" else f"  ({r['state']})"))
    if orphan_rows:
        print()
        print("out-of-band segments whose queue is gone:")
        print(f"{'NAME':48} {'SIZE':>10} {'PRODUCER':>8} {'ALIVE':5} {'OPEN BY':16} AGE")
        for r in orphan_rows:
            print(f"{_show(r['name']):48} {r['size']:>10} {r['producer_pid']:>8} "
                  f"{_yn(r['producer_alive']):5} {_pids(r['open_by']):16} {r['age_s']:.0f} s")
    return 0


def _stats_text(name, kind, s):
    """The counters of stats() as lines of text: plain numbers first,
    then a topic's subscribers and a log's partitions and groups."""
    lines = [f"{kind} {_show(name)}"]
    for k, v in s.items():
        if not isinstance(v, (dict, list)):
            lines.append(f"  {k:24} {v}")
    if kind == "topic" and s.get("subscriber_slots"):
        lines.append(f"  {'SUBSCRIBER PID':>16} {'SLOT':>5} {'LAG':>10} {'LOST':>10}")
        for sub in s["subscriber_slots"]:
            lines.append(f"  {sub['pid']:>16} {sub['slot']:>5} {sub['lag']:>10} "
                         f"{sub['lost']:>10}")
    if kind == "log":
        lines.append(f"  {'PARTITION':>9} {'START':>12} {'END':>12}")
        for p, v in s["partition_offsets"].items():
            lines.append(f"  {p:>9} {v['start']:>12} {v['end']:>12}")
        for g, info in s["groups"].items():
            lines.append(f"  group {_show(g)}: {info['members']} member(s), lag {info['lag']}")
            lines.append(f"    {'PARTITION':>9} {'COMMITTED':>10} {'END':>10} {'LAG':>10} OWNER")
            for p, v in info["partitions"].items():
                committed = "-" if v["committed"] is None else v["committed"]
                owner = "-" if v["owner_pid"] is None else v["owner_pid"]
                lines.append(f"    {p:>9} {committed!s:>10} {v['end']:>10} {v['lag']:>10} {owner}")
    return "\n".join(lines)


def cmd_stats(args):
    from pyqueue import _inspect
    url = _backend_url(args)
    if url is not None:
        from pyqueue.backends import connect
        from pyqueue.backends.redis import admin
        s = admin.stats(connect(url), args.name)
        if s is None:
            print(f"pyqueue stats: no {args.name!r} at {url}", file=sys.stderr)
            return 1
        print(json.dumps(s, indent=2) if args.json
              else _stats_text(args.name, s.get("kind", "stats"), s))
        return 0
    if os.sep in args.name or os.path.isdir(args.name):  # a directory-mode log
        h = _inspect.open_directory_log(args.name)
    else:
        try:
            _segment.check_name(args.name)
        except ValueError as e:
            print(f"pyqueue stats: {e}", file=sys.stderr)
            return 1
        state, header, _st = read_header(_segment.PREFIX + args.name)
        kind = header["kind"] if state == "ok" else 1  # let the opener say what is wrong
        h = _inspect.open_segment(args.name, kind)
        if h is None:
            print(f"pyqueue stats: {args.name!r} is a {_segment.KIND_NAMES.get(kind, kind)}, "
                  "which has no counters (give a directory log by its directory)",
                  file=sys.stderr)
            return 1
    try:
        kind, s = _inspect.stats_of(h)
        if args.json:
            print(json.dumps(s, indent=2))
        else:
            print(_stats_text(args.name, kind, s))
        if s.get("consistent") is False:
            print(f"pyqueue stats: {args.name!r}: its lock is held (by a stopped process?): "
                  "counted without it, the numbers may disagree", file=sys.stderr)
    finally:
        h.close()
    return 0


def _host_port(text):
    """"HOST:PORT" (IPv6 as "[::1]:9464") -> (host, port); ValueError else."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--serve takes HOST:PORT (e.g. 127.0.0.1:9464), not {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def cmd_metrics(args):
    from pyqueue import metrics
    try:
        collector = metrics.PyQueueCollector(patterns=args.patterns, paths=args.path)
    except ImportError as e:
        print(f"pyqueue metrics: {e}", file=sys.stderr)
        return 2
    if args.serve is None:
        sys.stdout.write(metrics.exposition(collector).decode("utf-8"))
        return 0
    try:
        host, port = _host_port(args.serve)
    except ValueError as e:
        print(f"pyqueue metrics: {e}", file=sys.stderr)
        return 2
    try:
        server, _thread = metrics.serve(host, port, collector)
    except OSError as e:
        print(f"pyqueue metrics: cannot listen on {args.serve}: {e}", file=sys.stderr)
        return 1
    bound = server.server_address
    print(f"pyqueue metrics: serving http://{args.serve.rpartition(':')[0] or host}:"
          f"{bound[1]}/metrics", flush=True)
    try:
        import threading
        threading.Event().wait()  # until SIGINT / SIGTERM
    except KeyboardInterrupt:
        return 130
    finally:
        server.shutdown()
    return 0  # pragma: no cover


def cmd_top(args):
    from pyqueue import _top
    if not args.interval > 0:
        print("pyqueue top: --interval must be > 0", file=sys.stderr)
        return 2
    if args.once:
        print("\n".join(_top.once(args.patterns, args.path, args.interval)))
        return 0
    if not sys.stdout.isatty():
        print("pyqueue top: stdout is not a terminal (use --once for a table)",
              file=sys.stderr)
        return 2
    return _top.run(args.patterns, args.path, args.interval)


def cmd_rm(args):
    rc = 0
    for name in args.names:
        try:
            existed = _segment.unlink(name)
        except (OSError, ValueError) as e:
            print(f"pyqueue rm: cannot remove {name!r}: {e}", file=sys.stderr)
            rc = 1
            continue
        if not existed:
            print(f"pyqueue rm: no segment named {name!r}", file=sys.stderr)
            rc = 1
    return rc


def main(argv=None):
    p = argparse.ArgumentParser(prog="pyqueue", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser(
        "ls", help="list pyqueue segments",
        description="List every pyqueue segment: kind, size, depth, creator pid and "
                    "whether it is alive (pid + start time), the live processes that map "
                    "or hold it open, and its out-of-band segments. Segments that are "
                    "not (yet) valid pyqueue segments show kind '?'.")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.add_argument("--url", help="a backend URL (redis://..., default $PYQUEUE_URL or shm://)")
    ls.add_argument("patterns", nargs="*", metavar="PATTERN", help="glob on queue names")
    ls.set_defaults(func=cmd_ls)
    st = sub.add_parser(
        "stats", help="counters of a queue, topic, log or work queue",
        description="The counters of a queue, topic, log or work queue (all processes'), "
                    "as stats() gives them. A topic's subscribers with their lag and "
                    "lost messages; a log's partitions (start and end offsets) and consumer "
                    "groups (committed offsets, lag). NAME: a segment's name, or a "
                    "directory-mode log's directory.")
    st.add_argument("name", metavar="NAME")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.add_argument("--url", help="a backend URL (redis://..., default $PYQUEUE_URL or shm://)")
    st.set_defaults(func=cmd_stats)
    rm = sub.add_parser("rm", help="remove segments",
                        description="Remove segments by queue name, with their out-of-band "
                                    "segments. Exits 1 when a name does not exist.")
    rm.add_argument("names", nargs="+", metavar="NAME")
    rm.set_defaults(func=cmd_rm)
    gc = sub.add_parser("gc", help="remove segments nobody can use any more",
                        description="Remove the segments of dead processes.\n\n" + GC_RULE,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    gc.add_argument("--dry-run", action="store_true", help="print what would be removed")
    gc.add_argument("--oob-grace", type=float, default=None, metavar="SECONDS",
                    help="age below which an out-of-band segment of a live queue is kept "
                         f"(default {DEFAULT_OOB_GRACE:g})")
    gc.add_argument("--anon-only", action="store_true",
                    help="only unnamed queues (anon-PID-...) and their out-of-band segments")
    gc.add_argument("--json", action="store_true", help="print JSON")
    gc.add_argument("--url", help="a Redis URL: the Log partitions and consumer groups "
                                  "there that no log of their name owns (only when given: "
                                  "not $PYQUEUE_URL)")
    gc.add_argument("patterns", nargs="*", metavar="PATTERN", help="glob on queue names")
    gc.set_defaults(func=cmd_gc)
    mt = sub.add_parser(
        "metrics", help="Prometheus metrics of every segment",
        description="The counters and gauges of every queue, topic, log and work queue in "
                    "/dev/shm that this user may read (and of the directory logs given with "
                    "--path), in the Prometheus text format: printed once, or served at "
                    "http://HOST:PORT/metrics with --serve (read afresh at each scrape). "
                    "Needs prometheus_client (pip install 'pyqueue-shm[metrics]').")
    mt.add_argument("--serve", metavar="HOST:PORT",
                    help="serve over HTTP (e.g. 127.0.0.1:9464; port 0: any free one) "
                         "until interrupted")
    mt.add_argument("--path", action="append", default=[], metavar="DIR",
                    help="a directory-mode log to report too (repeatable)")
    mt.add_argument("patterns", nargs="*", metavar="PATTERN", help="glob on segment names")
    mt.set_defaults(func=cmd_metrics)
    top = sub.add_parser(
        "top", help="a live view of every segment (q quits)",
        description="A live view, refreshed like htop, of every queue, topic, log and work "
                    "queue in /dev/shm this user may read (and the directory logs given "
                    "with --path): DEPTH (messages waiting, a log's records), IN/s and OUT/s "
                    "(put/published/appended, and taken/read/committed/acknowledged, per "
                    "second), LAG (a topic's slowest subscriber, a log's consumer groups, a "
                    "work queue's deliveries held), WAIT (blocked producers/consumers) and "
                    "DEAD (abandoned and dropped, lost, dead-lettered). q quits.")
    top.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                     help="refresh every SECONDS (default %(default)g)")
    top.add_argument("--once", action="store_true",
                     help="print one table (rates over one interval) and exit")
    top.add_argument("--path", action="append", default=[], metavar="DIR",
                     help="a directory-mode log to show too (repeatable)")
    top.add_argument("patterns", nargs="*", metavar="PATTERN", help="glob on segment names")
    top.set_defaults(func=cmd_top)
    _cli_log.add_parsers(sub)
    args = p.parse_args(argv)
    # Never hang on a lock held by a stopped process (or a damaged lock
    # word): the counters of ls / stats are read without locks where one is
    # busy, and any other call gives up after CLI_LOCK_WAIT with LockTimeout.
    from pyqueue import _locks
    _locks.set_lock_wait(CLI_LOCK_WAIT)
    try:
        rc = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return rc
    except PyQueueError as e:
        print(f"pyqueue {args.cmd}: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return _broken_pipe()


def _broken_pipe():
    """The reader of stdout went away (`pyqueue ls --json | head`): stop
    quietly, as a command killed by SIGPIPE would, with its exit status
    128 + SIGPIPE. stdout is pointed at /dev/null so that the interpreter's
    last flush does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return 128 + 13  # SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
