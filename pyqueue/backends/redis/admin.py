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
