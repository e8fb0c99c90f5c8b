"""`pyqueue ls --url` / `pyqueue stats --url` on Redis: what the backend's
keys say (every object has `pq:{NAME}:meta`; a Log's partitions have
`pq:{NAME/P}:l.meta`)."""
import fnmatch

_CLASS = {"queue": "Queue", "workqueue": "WorkQueue", "topic": "Topic", "log": "Log"}


def _name_of(meta_key):
    k = meta_key.decode("utf-8", "surrogateescape")
    # pq:{NAME}:meta; a Log partition's is pq:{NAME/P}:l.meta (not a meta key)
    if not (k.startswith("pq:{") and k.endswith("}:meta")):
        return None
    return k[4:-6]


def objects(backend, patterns=()):
    """[(name, kind)] of every pyqueue object on the server(s), sorted."""
    out = []
    for key in backend.client.scan_iter(match="pq:{*}:meta", count=1000):
        name = _name_of(key)
        if name is None or (patterns and not any(fnmatch.fnmatchcase(name, p)
                                                 for p in patterns)):
            continue
        kind = backend.client.hget(key, "kind")
        out.append((name, kind.decode() if kind else "?"))
    return sorted(set(out))


def open_object(backend, name, kind):
    cls = getattr(backend, _CLASS[kind])
    if kind == "queue":
        joinable = backend.client.hget(f"pq:{{{name}}}:meta", "joinable") == b"1"
        return (backend.JoinableQueue if joinable else backend.Queue).open(name)
    return cls.open(name)


def depth(obj, kind):
    if kind == "log":
        return sum(obj.end_offset(p) - obj.start_offset(p) for p in range(obj.partitions))
    if kind == "topic":
        return obj.stats()["retained"]
    return obj.qsize()


def rows(backend, patterns=()):
    out = []
    for name, kind in objects(backend, patterns):
        row = {"name": name, "kind": kind, "depth": None, "url": backend.url}
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


def stats(backend, name):
    """The stats() of the object called name (None when there is none;
    a Log has no stats(): its offsets)."""
    kind = backend.client.hget(f"pq:{{{name}}}:meta", "kind")
    if kind is None:
        return None
    kind = kind.decode()
    obj = open_object(backend, name, kind)
    try:
        if kind == "log":
            return {"kind": "log", "partitions": obj.partitions,
                    "offsets": {p: [obj.start_offset(p), obj.end_offset(p)]
                                for p in range(obj.partitions)}}
        return dict(obj.stats(), kind=kind)
    finally:
        obj.close()
