"""Log(serializer=(dumps, loads)), memory and directory mode: values go
through the serializer both ways (across processes, through consumer
groups), nothing in such a log is ever unpickled, and the setting is the
log's own (docs/api.md, "Log")."""
import json
import os

import pytest

import pyqueue
from pyqueue import Log, PoisonRecord
from tests import _log_workers as lw
from tests._support import shm_file
from tests._wq_workers import json_dumps, json_loads

JSON = (json_dumps, json_loads)
# pq_segment_header.params[PQ_LOG_PARAM_USER0] (csrc/pq_segment.h, pq_log.h).
_LOG_USER0 = 72 + 8 * 5


@pytest.fixture(params=["memory", "directory"])
def make_log(request, tmp_path):
    """make(serializer=..., **kw) -> a new log of the mode; reopen(log, **kw)."""
    made = []
    mode = request.param

    def make(**kwargs):
        if mode == "directory":
            kwargs.setdefault("path", str(tmp_path / f"log{len(made)}"))
        else:
            kwargs.setdefault("retention_bytes", 1 << 16)
        lg = Log(**kwargs)
        made.append(lg)
        return lg

    def reopen(lg, **kwargs):
        other = Log.open(lg.path or lg.name, **kwargs)
        made.append(other)
        return other

    make.reopen = reopen
    make.mode = mode
    yield make
    for lg in made:
        lg.close()
    if mode == "memory":
        for lg in made:
            lg.unlink()


def _plant(make_log, lg, value):
    """Append value with the default codec (pickle) to a log made with a
    serializer, as someone who can write its storage can: the log's flag
    cleared, a plain handle's append, the flag set again."""
    if make_log.mode == "memory":
        with open(shm_file(lg.name), "r+b") as f:
            f.seek(_LOG_USER0)
            assert f.read(8) == (1).to_bytes(8, "little")
            f.seek(_LOG_USER0)
            f.write(bytes(8))
            f.flush()
            plain = Log.open(lg.name)
            plain.append(value)
            plain.close()
            f.seek(_LOG_USER0)
            f.write((1).to_bytes(8, "little"))
    else:
        meta_path = os.path.join(lg.path, "log.json")
        with open(meta_path) as f:
            meta = json.load(f)
        assert meta.pop("serializer") == "custom"
        with open(meta_path, "w") as f:
            json.dump(meta, f)
        plain = Log.open(lg.path)
        plain.append(value)
        plain.close()
        meta["serializer"] = "custom"
        with open(meta_path, "w") as f:
            json.dump(meta, f)


class _RunsCode:
    """Pickles to a call of os.system: unpickling it runs a shell command."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_round_trip_across_processes_through_a_consumer_group(make_log, ctx, procs):
    lg = make_log(serializer=JSON)
    values = [{"n": i, "t": [i, None], "s": "é" * i} for i in range(5)] + ["plain", 3]
    lg.append_many(values[:4])
    for v in values[4:]:
        lg.append(v)
    out = ctx.Queue()
    p = procs.start(ctx, lw.json_member, lg, "g", out, len(values))
    assert out.get(timeout=60) == values
    p.join(60)
    assert p.exitcode == 0
    recs = lg.read(0, len(values), max_records=100, timeout=5)
    assert [r.value for r in recs] == [{"echo": v} for v in values]
    # Every value, str included, went through dumps (JSON text stored).
    raw = Log.open(lg.path or lg.name, serializer=(json_dumps, lambda b: bytes(b)))
    try:
        assert raw.read(0, 5, 1)[0].value == b'"plain"'
    finally:
        raw.close()


def test_planted_pickle_is_refused_not_unpickled(make_log, tmp_path):
    marker = tmp_path / "ran"
    lg = make_log(serializer=JSON)
    lg.append({"before": 1})
    _plant(make_log, lg, _RunsCode("touch '%s'" % marker))
    lg.append({"after": 2})
    assert lg.read(0, 0, 1)[0].value == {"before": 1}
    with pytest.raises(PoisonRecord) as info:
        lg.read(0, 1, 10)
    assert "refusing to unpickle" in str(info.value)
    assert info.value.offset == 1 and b"system" in info.value.raw
    assert not marker.exists()
    c = lg.consumer("g")
    try:
        assert [r.value for r in c.poll(timeout=5)] == [{"before": 1}]
        with pytest.raises(PoisonRecord):
            c.poll(timeout=5)
        assert not marker.exists()
        c.seek(0, 2)
        assert [r.value for r in c.poll(timeout=5)] == [{"after": 2}]
    finally:
        c.close()
    assert not marker.exists()


def test_serializer_errors_reach_the_caller_and_leave_the_log_usable(make_log):
    lg = make_log(serializer=JSON)
    with pytest.raises(TypeError):
        lg.append({1, 2})
    with pytest.raises(TypeError):
        lg.append_many([{"ok": 1}, object()])  # nothing of the batch is appended
    assert lg.end_offset(0) == 0
    lg.append({"ok": 2})
    assert [r.value for r in lg.read(0, 0, 10)] == [{"ok": 2}]


def test_failing_loads_is_a_poison_record(make_log):
    lg = make_log(serializer=(json_dumps, lambda b: json.loads(bytes(b))["v"]))
    lg.append({"v": 1})
    lg.append({"no": "v"})
    assert [r.value for r in lg.read(0, 0, 10)] == [1]  # what came before the poison
    with pytest.raises(PoisonRecord) as info:
        lg.read(0, 1, 10)
    assert isinstance(info.value.__cause__, KeyError)
    assert info.value.raw == b'{"no": "v"}'
    lg.append({"v": 3})
    assert [r.value for r in lg.read(0, 2, 10)] == [3]


def test_serializer_setting_mismatch_on_open(make_log):
    plain = make_log()
    with pytest.raises(ValueError, match="exists with other settings: serializer"):
        make_log.reopen(plain, serializer=JSON)
    custom = make_log(serializer=JSON)
    with pytest.raises(pyqueue.PyQueueError, match="custom serializer"):
        make_log.reopen(custom)
    with pytest.raises(TypeError, match="serializer"):
        make_log.reopen(custom, serializer=json.dumps)
    again = make_log.reopen(custom, serializer=JSON)
    again.append([1])
    assert custom.read(0, 0, 10)[0].value == [1]


def test_plain_handle_never_hands_out_a_custom_record(make_log):
    """A handle without the serializer (the flag cleared by hand) refuses
    a custom record (PoisonRecord) instead of returning its bytes."""
    lg = make_log(serializer=JSON)
    lg.append("x")
    if make_log.mode == "memory":
        with open(shm_file(lg.name), "r+b") as f:
            f.seek(_LOG_USER0)
            f.write(bytes(8))
        plain = make_log.reopen(lg)
    else:
        meta_path = os.path.join(lg.path, "log.json")
        with open(meta_path) as f:
            meta = json.load(f)
        del meta["serializer"]
        with open(meta_path, "w") as f:
            json.dump(meta, f)
        plain = make_log.reopen(lg)
    with pytest.raises(PoisonRecord, match="custom serializer this handle lacks"):
        plain.read(0, 0, 10)


def test_planted_bytes_record_is_refused(make_log):
    """A bytes record (the default codec's raw path) in a log with a
    serializer is refused, not handed out as it is: only dumps' output
    is a value there."""
    lg = make_log(serializer=JSON)
    _plant(make_log, lg, b"not json")
    with pytest.raises(PoisonRecord, match="not encoded with this log's serializer"):
        lg.read(0, 0, 10)


@pytest.mark.parametrize("mode", ["fork", "spawn"])
def test_stream_processor_decodes_with_the_serializer(make_log, mode):
    """A StreamProcessor over a Log with a serializer: its workers (handles
    pickled to them with the serializer) decode each record with loads; a
    record loads rejects is a poison record, counted and committed past."""
    from pyqueue import Queue, StreamProcessor
    from tests._support import wait_until
    from tests._wq_workers import double, json_loads_ints
    lg = make_log(serializer=(json_dumps, json_loads_ints))
    lg.append_many(list(range(20)) + ["bad"] + list(range(20, 40)))
    out = Queue()
    try:
        with StreamProcessor(lg, double, group="g", sink=out, workers=2, batch_size=5,
                             processes=True, start_method=mode) as sp:
            assert wait_until(lambda: "g" in lg.groups() and all(
                v["committed"] == v["end"] for v in lg.group_offsets("g").values()),
                timeout=20), (lg.groups(), "g" in lg.groups() and lg.group_offsets("g"),
                              sp.stats())
        got = set()
        while not out.empty():
            got.add(out.get(timeout=5))
        assert got == {2 * i for i in range(40)}
        assert sp.stats()["poison"] >= 1 and sp.stats()["crashes"] == 0
    finally:
        out.close()
        out.unlink()


@pytest.mark.parametrize("mode", ["fork", "spawn"])
def test_stream_processor_over_a_json_work_queue(mode):
    from pyqueue import Queue, StreamProcessor, WorkQueue
    q = WorkQueue(serializer=JSON, capacity_bytes=1 << 20)
    out = Queue()
    try:
        q.put_many(list(range(50)))
        from tests._wq_workers import double
        with StreamProcessor(q, double, sink=out, workers=2, processes=True,
                             start_method=mode):
            got = sorted(out.get(timeout=30) for _ in range(50))
        assert got == [2 * i for i in range(50)]
        assert q.stats()["acked"] == 50
    finally:
        for h in (q, out):
            h.close()
            h.unlink()
