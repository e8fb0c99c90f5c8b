"""`pyqueue ls --url` / `pyqueue stats --url` on Redis: what the backend's
keys say (every object has `pq:{NAME}:meta`; a Log's partitions have
`pq:{NAME/P}:l.meta`)."""
from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Tuple

if TYPE_CHECKING:
    from pyqueue.backends.redis import RedisBackend

_CLASS = {"queue": "Queue", "workqueue": "WorkQueue", "topic": "Topic", "log": "Log"}


def _name_of(meta_key: bytes) -> Optional[str]:
    k = meta_key.decode("utf-8", "surrogateescape")
    # pq:{NAME}:meta; a Log partition's is pq:{NAME/P}:l.meta (not a meta key)
    if not (k.startswith("pq:{") and k.endswith("}:meta")):
        return None
    return k[4:-6]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def objects(backend: RedisBackend, patterns: Iterable[str] = ()) -> List[Tuple[str, str]]:
    """[(name, kind)] of every pyqueue object on the server(s), sorted."""
    patterns = list(patterns)
    out = []
    for key in backend.client.scan_iter(match="pq:{*}:meta", count=1000):
        name = _name_of(key)
        if name is None or (patterns and not any(fnmatch.fnmatchcase(name, p)
                                                 for p in patterns)):
            continue
        kind = backend.client.hget(key, "kind")
        out.append((name, _text(kind) if kind else "?"))
    return sorted(set(out))


def open_object(backend: RedisBackend, name: str, kind: str) -> Any:
    cls = getattr(backend, _CLASS[kind])
    if kind == "queue":
        joinable = backend.client.hget(f"pq:{{{name}}}:meta", "joinable") == b"1"
        return (backend.JoinableQueue if joinable else backend.Queue).open(name)
    return cls.open(name)


def depth(obj: Any, kind: str) -> int:
    if kind == "log":
        return sum(int(obj.end_offset(p) - obj.start_offset(p)) for p in range(obj.partitions))
    if kind == "topic":
        return int(obj.stats()["retained"])
    return int(obj.qsize())


def rows(backend: RedisBackend, patterns: Iterable[str] = ()) -> List[Dict[str, Any]]:
    out: List[Dict[str, Any]] = []
    for name, kind in objects(backend, patterns):
        row: Dict[str, Any] = {"name": name, "kind": kind, "depth": None, "url": backend.url}
        if kind in _CLASS:
            obj = open_object(backend, name, kind)
            try:
                row["depth"] = depth(obj, kind)
                if kind == "queue":
                    row["joinable"] = hasattr(obj, "task_done")
                if kind == "log":
                    row["partitions"] = obj.partitions
            finally:
                obj.close()
        out.append(row)
    return out


def stats(backend: RedisBackend, name: str) -> Optional[Dict[str, Any]]:
    """The stats() of the object called name (None when there is none;
    a Log has no stats(): its offsets)."""
    raw = backend.client.hget(f"pq:{{{name}}}:meta", "kind")
    if raw is None:
        return None
    kind = _text(raw)
    obj = open_object(backend, name, kind)
    try:
        if kind == "log":
            return {"kind": "log", "partitions": obj.partitions,
                    "offsets": {p: [obj.start_offset(p), obj.end_offset(p)]
                                for p in range(obj.partitions)}}
        return dict(obj.stats(), kind=kind)
    finally:
        obj.close()


def _log_of(key: bytes) -> Optional[Tuple[str, str, str]]:
    """(kind, log name, what) of a Log partition's hash (pq:{NAME/P}:l.meta:
    "partition", NAME, P) or a consumer group's state (pq:{NAME//G}:g.state:
    "group", NAME, G); None for another key."""
    try:
        k = key.decode("utf-8")     # (pyqueue's names are str: UTF-8)
    except UnicodeDecodeError:
        return None
    for suffix, kind in (("}:l.meta", "partition"), ("}:g.state", "group")):
        if k.startswith("pq:{") and k.endswith(suffix):
            tag = k[4:-len(suffix)]
            name, sep, what = tag.partition("//" if kind == "group" else "/")
            if not (sep and name and what) or "/" in name or "{" in name or "}" in name:
                return None
            if kind == "partition" and not (what.isascii() and what.isdigit()):
                return None         # (a partition is a number: another key)
            return kind, name, what
    return None


def leftovers(backend: RedisBackend, patterns: Iterable[str] = ()) -> List[Dict[str, Any]]:
    """The Log partitions and consumer groups that no log of their name
    owns: its meta hash is gone, or has another incarnation id than the
    one they were made with (a handle of a removed log made them beside
    its unlink, and its process died before it deleted them again; the
    log made next under the name drops them when it meets them). Each:
    {"kind", "log", "partition" or "group", "key", "inc"}."""
    patterns = list(patterns)
    out: List[Dict[str, Any]] = []
    c = backend.client
    for match in ("pq:{*/*}:l.meta", "pq:{*//*}:g.state"):
        for key in c.scan_iter(match=match, count=1000):
            found = _log_of(key)
            if found is None:
                continue
            kind, name, what = found
            if patterns and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
                continue
            inc = c.hget(key, "inc")
            if inc is None:
                continue            # (made by an earlier pyqueue: no id, left alone)
            owner = c.hget(f"pq:{{{name}}}:meta", "inc")
            if owner is not None and owner == inc:
                continue            # its log's
            out.append({"kind": kind, "log": name,
                        ("partition" if kind == "partition" else "group"):
                            int(what) if kind == "partition" else what,
                        "key": key.decode("utf-8"), "inc": _text(inc)})
    return sorted(out, key=lambda d: d["key"])


def drop_leftover(backend: RedisBackend, item: Dict[str, Any]) -> bool:
    """Deletes a leftover of leftovers() - only if it still has the id it
    was listed with (the drop scripts of the Log and its groups: one made
    meanwhile by a log of the name is kept) -> whether it was deleted."""
    from pyqueue.backends.redis import groups, log
    prefix = item["key"].rsplit(":", 1)[0] + ":"
    if item["kind"] == "partition":
        keys = [prefix + "l.meta", prefix + "l.stream", prefix + "l.shut"]
        source = log._DROP_PART
    else:
        keys = [prefix + s for s in ("g.state", "g.exp", "g.info", "g.wake", "g.sess")]
        source = groups._DROP
    return bool(backend.call(keys, "EVAL", source, len(keys), *keys, item["inc"]))
