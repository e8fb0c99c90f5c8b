"""Counters of every kind, read the same way for `pyqueue stats`,
`pyqueue metrics` (pyqueue/metrics.py) and `pyqueue top` (pyqueue/_top.py).

A snapshot is a dict per queue, topic, log or work queue:
{"name", "kind", "stats"}, where stats is what the kind's own stats()
gives (a queue's without this handle's counts), a topic's with its
subscribers' slots, and a log's partitions and consumer groups (a log has
no stats() of its own: log_stats builds one from its offsets and groups).
Opening a segment to read it never waits on a lock for long: the CLI sets
the lock wait (pyqueue._locks), and a work queue whose lock is held is
counted without it (consistent: False).
"""
import os
from typing import Any, Dict, Iterable, List, Optional, Tuple

from pyqueue import _segment

# pq_segment.h kinds, as the CLI shows them.
KINDS = {1: "queue", 2: "topic", 3: "log", 5: "workqueue"}

_RAW = (bytes, bytes)  # any serializer does to read counters


def open_segment(name: str, kind: int) -> Any:
    """A handle of shared-memory segment `name` of `kind` (pq_segment.h),
    opened only to read its counters, whoever owns it; None for a kind
    that has no counters (a directory log's control file)."""
    if kind == 1:
        from pyqueue.queues import Queue
        # (not marked shared: an unnamed queue's creator still removes
        # its name at close)
        return Queue._open(name, _RAW, True, shared=False)
    if kind == 2:
        from pyqueue.topic import Topic
        return Topic.open(name, serializer=_RAW, trust_owner=True)
    if kind == 3:
        from pyqueue.errors import PyQueueError
        from pyqueue.log import MemoryLog
        try:
            return MemoryLog.open(name, trust_owner=True)
        except PyQueueError:  # made with a custom serializer: any will do
            return MemoryLog.open(name, trust_owner=True, serializer=_RAW)
    if kind == 5:
        from pyqueue.workqueue import WorkQueue
        return WorkQueue.open(name, trust_owner=True)
    return None


def open_directory_log(path: str) -> Any:
    """A directory-mode log opened to read its offsets and groups."""
    from pyqueue.errors import PyQueueError
    from pyqueue.log import DirectoryLog
    trust = not _cli_owned(path)
    try:
        return DirectoryLog.open(path, trust_owner=trust)
    except PyQueueError:
        return DirectoryLog.open(path, trust_owner=trust, serializer=_RAW)


def _cli_owned(path: str) -> bool:
    from pyqueue import _cli_log
    return _cli_log._dir_owned(path)


def log_stats(log: Any) -> Dict[str, Any]:
    """The counters of a Log: its partitions' offsets and its consumer
    groups' committed offsets and lag.

    Returns:
        A dict: partitions (count), records (kept now, all partitions),
        appended (records ever appended: the sum of the end offsets),
        partition_offsets ({partition: {start, end}}), groups ({group:
        {members, partitions: {partition: {committed, end, lag,
        owner_pid}}, lag (the sum)}}), path (directory mode) or None.
    """
    parts: Dict[int, Dict[str, int]] = {}
    for p in range(log.partitions):
        start, end = log._bounds(p)
        parts[p] = {"start": start, "end": end}
    groups: Dict[str, Any] = {}
    for g in log.groups():
        try:
            offsets = log.group_offsets(g)
            members = log.group_members(g)
        except KeyError:  # deleted meanwhile
            continue
        groups[g] = {"members": len(members),
                     "lag": sum(v["lag"] for v in offsets.values()),
                     "partitions": offsets}
    return {"partitions": log.partitions,
            "records": sum(v["end"] - v["start"] for v in parts.values()),
            "appended": sum(v["end"] for v in parts.values()),
            "partition_offsets": parts, "groups": groups,
            "path": getattr(log, "path", None)}


def kind_of(handle: Any) -> str:
    """"queue", "topic", "log", "workqueue" or "stream" (a StreamProcessor)
    for a handle; TypeError else."""
    from pyqueue.log import Log
    from pyqueue.queues import Queue
    from pyqueue.stream import StreamProcessor
    from pyqueue.topic import Topic
    from pyqueue.workqueue import WorkQueue
    for cls, kind in ((Queue, "queue"), (Topic, "topic"), (Log, "log"),
                      (WorkQueue, "workqueue"), (StreamProcessor, "stream")):
        if isinstance(handle, cls):
            return kind
    raise TypeError("not a pyqueue Queue, Topic, Log, WorkQueue or StreamProcessor: "
                    f"{type(handle).__name__}")


def stats_of(handle: Any) -> Tuple[str, Dict[str, Any]]:
    """(kind, counters) of an open handle of any kind."""
    kind = kind_of(handle)
    if kind == "queue":
        s = dict(handle.stats())
        s.pop("undecodable", None)  # this handle's, not the queue's
        s.pop("held", None)
    elif kind == "topic":
        s = dict(handle.stats())
        s["mode"] = handle.mode
        s["subscriber_slots"] = handle._subscribers()
        s["lost"] = sum(x["lost"] for x in s["subscriber_slots"])
    elif kind == "log":
        s = log_stats(handle)
    elif kind == "stream":  # in-process: given as a handle, never found in /dev/shm
        s = dict(handle.stats())
        s["group"] = handle._spec[3]
    else:
        s = dict(handle.stats())
    return kind, s


def name_of(handle: Any) -> str:
    """The name a handle is shown by (a directory log: its path; a
    StreamProcessor: its source's)."""
    if kind_of(handle) == "stream":
        return name_of(handle._spec[0])
    path = getattr(handle, "path", None)
    return str(path) if path else str(handle.name)


def snapshot_handles(handles: Iterable[Any]) -> List[Dict[str, Any]]:
    """{name, kind, stats} of each handle."""
    out = []
    for h in handles:
        kind, s = stats_of(h)
        out.append({"name": name_of(h), "kind": kind, "stats": s})
    return out


def _listing(patterns: Iterable[str]) -> List[Tuple[str, int]]:
    """(name, kind) of every valid segment in /dev/shm matching patterns."""
    from pyqueue import cli
    patterns = list(patterns)
    try:
        entries = sorted(e for e in os.listdir(_segment.SHM_DIR)
                         if e.startswith(_segment.PREFIX))
    except OSError:
        return []
    out = []
    for entry in entries:
        name = entry[len(_segment.PREFIX):]
        if cli._OOB_RE.match(name) or not cli._matches(name, patterns):
            continue
        state, header, _st = cli.read_header(entry)
        if state == "ok" and header is not None and header["kind"] in KINDS:
            out.append((name, header["kind"]))
    return out


def snapshot(patterns: Iterable[str] = (), paths: Iterable[str] = (),
             errors: Optional[List[Tuple[str, str]]] = None) -> List[Dict[str, Any]]:
    """{name, kind, stats} of every queue, topic, log and work queue in
    /dev/shm (names matching patterns, shell globs; all when none) and of
    the directory logs at paths. A segment that cannot be read (removed
    meanwhile, not readable by this user, its lock held) is left out, and
    (name, why) appended to errors when given."""
    out = []
    for name, kind in _listing(patterns):
        try:
            h = open_segment(name, kind)
        except Exception as e:  # noqa: BLE001 - gone, not ours to read, ...
            if errors is not None:
                errors.append((name, f"{type(e).__name__}: {e}"))
            continue
        try:
            k, s = stats_of(h)
            out.append({"name": name, "kind": k, "stats": s})
        except Exception as e:  # noqa: BLE001
            if errors is not None:
                errors.append((name, f"{type(e).__name__}: {e}"))
        finally:
            h.close()
    for path in paths:
        try:
            log = open_directory_log(path)
        except Exception as e:  # noqa: BLE001
            if errors is not None:
                errors.append((path, f"{type(e).__name__}: {e}"))
            continue
        try:
            out.append({"name": str(path), "kind": "log", "stats": log_stats(log)})
        except Exception as e:  # noqa: BLE001
            if errors is not None:
                errors.append((path, f"{type(e).__name__}: {e}"))
        finally:
            log.close()
    return out
