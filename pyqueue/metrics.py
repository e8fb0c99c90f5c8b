"""Prometheus metrics of every queue, topic, log and work queue.

A collector for ``prometheus_client`` (the optional extra ``metrics``:
``pip install pyqueue-shm[metrics]``) that reads, at each scrape, the
counters and gauges of the segments this user may see on the machine (or
of the handles it is given), and ``pyqueue metrics`` (print them once, or
``--serve HOST:PORT``)::

    from prometheus_client import REGISTRY
    from pyqueue.metrics import PyQueueCollector
    REGISTRY.register(PyQueueCollector())            # every segment in /dev/shm
    REGISTRY.register(PyQueueCollector(handles=[q]))  # these handles only

Names follow Prometheus' conventions: ``pyqueue_<kind>_<what>``, counters
end in ``_total``, sizes in ``_bytes``; the label named after the kind
holds the name (``pyqueue_queue_enqueued_total{queue="jobs"}``; a
directory log's label is its path). The documentation's Operations page
lists them.
Reading is what ``pyqueue stats`` does: nothing on any queue's hot path,
no lock held for long (a work queue whose lock is busy is read without it).
"""
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from pyqueue import _inspect

_MISSING = ("pyqueue.metrics needs prometheus_client, which is not installed: "
            "pip install 'pyqueue-shm[metrics]' (or pip install prometheus_client)")


def _prometheus() -> Any:
    try:
        import prometheus_client.core as core
    except ImportError as e:
        raise ImportError(_MISSING) from e
    return core


# (stats key, metric suffix, type, help); type "counter" or "gauge".
_Spec = Tuple[str, str, str, str]

QUEUE_METRICS: Sequence[_Spec] = (
    ("enqueued", "enqueued", "counter", "Messages put"),
    ("dequeued", "dequeued", "counter", "Messages taken"),
    ("rejected", "rejected", "counter", "Puts refused (full, overflow='reject')"),
    ("dropped", "dropped", "counter", "Messages dropped to make room (overflow='drop_oldest')"),
    ("abandoned", "abandoned", "counter", "Messages of producers that died in a put"),
    ("abandoned_by_consumers", "abandoned_by_consumers", "counter",
     "Messages taken by consumers that died before returning them"),
    ("depth", "depth", "gauge", "Messages waiting"),
    ("depth_bytes", "depth_bytes", "gauge", "Bytes of the messages waiting"),
    ("capacity_bytes", "capacity_bytes", "gauge", "The ring's size"),
    ("maxsize", "maxsize", "gauge", "The most messages held (0: no limit)"),
    ("waiting_producers", "waiting_producers", "gauge", "Producers blocked in put"),
    ("waiting_consumers", "waiting_consumers", "gauge", "Consumers blocked in get"),
    ("unfinished_tasks", "unfinished_tasks", "gauge", "JoinableQueue: tasks not done"),
)

TOPIC_METRICS: Sequence[_Spec] = (
    ("published", "published", "counter", "Messages published"),
    ("retained", "retained", "gauge", "Messages still in the ring"),
    ("capacity", "capacity_bytes", "gauge", "The ring's size"),
    ("subscribers", "subscribers", "gauge", "Subscriptions held"),
    ("waiting_publishers", "waiting_publishers", "gauge", "Publishers blocked (lossless)"),
    ("waiting_subscribers", "waiting_subscribers", "gauge", "Subscribers blocked in get"),
)

WORKQUEUE_METRICS: Sequence[_Spec] = (
    ("enqueued", "enqueued", "counter", "Messages put"),
    ("acked", "acked", "counter", "Deliveries acknowledged"),
    ("redelivered", "redelivered", "counter",
     "Deliveries made again (nacked, lease expired, consumer died)"),
    ("dead_lettered", "dead_lettered", "counter", "Messages moved to the dead-letter queue"),
    ("deduplicated", "deduplicated", "counter", "Puts dropped as duplicates"),
    ("abandoned", "abandoned", "counter", "Messages of producers that died in a put"),
    ("dedup_full", "dedup_full", "counter", "Keyed puts that found the dedup table full"),
    ("dead_letter_parked", "dead_letter_parked", "counter",
     "Moves to a full dead-letter queue put off"),
    ("depth", "depth", "gauge", "Messages available now"),
    ("delayed", "delayed", "gauge", "Messages not yet due"),
    ("in_flight", "in_flight", "gauge", "Deliveries held by consumers"),
    ("dead_pending", "dead_pending", "gauge", "Messages being moved to the dead-letter queue"),
    ("dedup_keys_used", "dedup_keys_used", "gauge", "Keys in the dedup table"),
    ("capacity", "capacity_bytes", "gauge", "The message area's size"),
    ("used_bytes", "used_bytes", "gauge", "Bytes of the message area in use"),
    ("max_in_flight", "max_in_flight", "gauge", "The most deliveries held at once"),
)


STREAM_METRICS: Sequence[_Spec] = (
    ("processed", "processed", "counter", "Messages or records processed"),
    ("failed", "failed", "counter", "Messages or records whose fn raised"),
    ("poison", "poison", "counter", "Log records passed: undecodable or damaged"),
    ("restarts", "restarts", "counter", "Workers restarted"),
    ("crashes", "crashes", "counter", "Workers that died"),
    ("expired", "expired", "counter",
     "WorkQueue messages whose settle came after the visibility timeout"),
    ("workers", "workers", "gauge", "Workers"),
    ("restart_delay", "restart_delay_seconds", "gauge", "The back-off before the last restart"),
    ("mean_latency", "mean_latency_seconds", "gauge", "Mean seconds fn and the send took"),
    ("max_latency", "max_latency_seconds", "gauge", "Most seconds fn and the send took"),
)


class PyQueueCollector:
    """A ``prometheus_client`` collector of pyqueue's counters and gauges.

    Args:
        handles: Open Queue, Topic, Log and WorkQueue handles (and
            StreamProcessors, labelled by their source) to report; None
            (the default): every segment in /dev/shm this user may read
            (and the directory logs at paths).
        patterns: With handles=None, shell globs on the names to report
            (all when empty).
        paths: Directories of directory-mode logs to report too.

    Raises:
        ImportError: prometheus_client is not installed.
        TypeError: A handle is not a Queue, Topic, Log, WorkQueue or
            StreamProcessor.
    """

    def __init__(self, handles: Optional[Iterable[Any]] = None, *,
                 patterns: Iterable[str] = (), paths: Iterable[str] = ()) -> None:
        _prometheus()
        self._handles = None if handles is None else list(handles)
        for h in self._handles or ():
            _inspect.kind_of(h)
        self._patterns = list(patterns)
        self._paths = [str(p) for p in paths]

    def snapshot(self) -> Tuple[List[Dict[str, Any]], List[Tuple[str, str]]]:
        """What one scrape reads.

        Returns:
            ([{name, kind, stats}], [(name, why)] of the segments that
            could not be read).
        """
        errors: List[Tuple[str, str]] = []
        if self._handles is not None:
            return _inspect.snapshot_handles(self._handles), errors
        return _inspect.snapshot(self._patterns, self._paths, errors), errors

    def describe(self) -> List[Any]:
        """Nothing: the metrics depend on the segments at scrape time."""
        return []

    def collect(self) -> Iterator[Any]:
        """The metric families of one scrape (called by prometheus_client).

        Yields:
            prometheus_client metric families.
        """
        rows, errors = self.snapshot()
        yield from families(rows, errors)


class _Families:
    def __init__(self) -> None:
        self.core = _prometheus()
        self.by_name: Dict[str, Any] = {}

    def add(self, name: str, typ: str, doc: str, labels: Dict[str, str], value: float) -> None:
        fam = self.by_name.get(name)
        if fam is None:
            cls = (self.core.CounterMetricFamily if typ == "counter"
                   else self.core.GaugeMetricFamily)
            fam = self.by_name[name] = cls(name, doc, labels=list(labels))
        fam.add_metric([labels[k] for k in labels], float(value))


def families(rows: List[Dict[str, Any]],
             errors: Sequence[Tuple[str, str]] = ()) -> List[Any]:
    """The metric families of a snapshot (see PyQueueCollector.snapshot).

    Args:
        rows: [{name, kind, stats}] as pyqueue._inspect.snapshot gives.
        errors: The segments that could not be read.

    Returns:
        A list of prometheus_client metric families.

    Raises:
        ImportError: prometheus_client is not installed.
    """
    f = _Families()
    specs = {"queue": QUEUE_METRICS, "topic": TOPIC_METRICS, "workqueue": WORKQUEUE_METRICS,
             "stream": STREAM_METRICS}
    for row in rows:
        kind, name, s = row["kind"], row["name"], row["stats"]
        label = {kind: name}
        if kind == "stream":
            label["group"] = s.get("group") or ""
        for key, suffix, typ, doc in specs.get(kind, ()):
            if key in s and s[key] is not None:
                f.add(f"pyqueue_{kind}_{suffix}", typ, doc, label, s[key])
        if kind == "topic":
            for sub in s.get("subscriber_slots", ()):
                sl = {"topic": name, "pid": str(sub["pid"]), "slot": str(sub["slot"])}
                f.add("pyqueue_topic_subscriber_lag", "gauge",
                      "Messages published that a subscriber has not read", sl, sub["lag"])
                f.add("pyqueue_topic_subscriber_lost", "counter",
                      "Messages a lossy subscriber missed by being lapped", sl, sub["lost"])
        elif kind == "log":
            for p, off in s["partition_offsets"].items():
                pl = {"log": name, "partition": str(p)}
                f.add("pyqueue_log_appended", "counter",
                      "Records appended to a partition (its end offset)", pl, off["end"])
                f.add("pyqueue_log_records", "gauge",
                      "Records a partition keeps (end - start offset)", pl,
                      off["end"] - off["start"])
                f.add("pyqueue_log_start_offset", "gauge",
                      "The oldest offset a partition keeps", pl, off["start"])
            for g, info in s["groups"].items():
                f.add("pyqueue_log_group_members", "gauge", "Members of a consumer group",
                      {"log": name, "group": g}, info["members"])
                for p, v in info["partitions"].items():
                    gl = {"log": name, "group": g, "partition": str(p)}
                    f.add("pyqueue_log_group_lag", "gauge",
                          "Records of a partition a consumer group has not committed",
                          gl, v["lag"])
                    if v["committed"] is not None:
                        f.add("pyqueue_log_group_committed_offset", "gauge",
                              "A consumer group's committed offset in a partition",
                              gl, v["committed"])
    f.add("pyqueue_scrape_errors", "gauge",
          "Segments that could not be read in this scrape", {}, len(errors))
    return list(f.by_name.values())


def exposition(collector: Optional[PyQueueCollector] = None) -> bytes:
    """The Prometheus text exposition of one scrape.

    Args:
        collector: What to read (default: a PyQueueCollector of every
            segment).

    Returns:
        The text format (version 0.0.4), as bytes.

    Raises:
        ImportError: prometheus_client is not installed.
    """
    _prometheus()
    from prometheus_client import CollectorRegistry, generate_latest
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector or PyQueueCollector())  # type: ignore[arg-type, unused-ignore]
    return bytes(generate_latest(registry))


def serve(host: str, port: int, collector: Optional[PyQueueCollector] = None) -> Any:
    """Serve /metrics over HTTP at host:port, in a daemon thread.

    Args:
        host: The address to listen on ("127.0.0.1", "::", "0.0.0.0").
        port: The port (0: any free one).
        collector: What to read (default: every segment).

    Returns:
        (server, thread), as prometheus_client.start_http_server gives
        them: server.server_address is where it listens; server.shutdown()
        stops it.

    Raises:
        ImportError: prometheus_client is not installed.
        OSError: The address cannot be bound.
    """
    _prometheus()
    from prometheus_client import CollectorRegistry, start_http_server
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector or PyQueueCollector())  # type: ignore[arg-type, unused-ignore]
    return start_http_server(port, addr=host, registry=registry)
