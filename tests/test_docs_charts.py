"""bench/docs_charts.py reads the tables of docs/benchmarks.md that its
charts are drawn from (the drawing itself needs matplotlib, which the docs
extra has and the tests do not): every case and every implementation's
rate is found, n/a cells stay empty."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TREE = os.environ.get("PYQUEUE_SOURCE_TREE", ROOT)  # the wheel stage's copy has no bench/, docs/


def load():
    spec = importlib.util.spec_from_file_location(
        "docs_charts", os.path.join(TREE, "bench", "docs_charts.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with open(os.path.join(TREE, "docs", "benchmarks.md"), encoding="utf-8") as f:
        return mod, mod.sections(f.read())


def test_topic_table():
    mod, found = load()
    impls, rows = mod.column_table(found["Topic fan-out"])
    assert impls == ["pyqueue", "mp.Queue", "faster-fifo", "pyzmq"]
    assert len(rows) == 12
    assert rows["topic 1->1 64B msg"]["pyqueue"] == 2.96e6
    assert rows["topic 1->1 64B msg"]["mp.Queue"] == 333e3
    assert rows["topic 1->4 1KiB batch"]["pyzmq"] is None  # n/a (no batch API)
    assert all(r["faster-fifo"] is None for r in rows.values())  # no fan-out


def test_log_table():
    mod, found = load()
    impls, rows = mod.column_table(found["Log"])
    assert len(impls) == 4 and impls[0] == "pyqueue.Log (memory)"
    assert list(rows) == ["64B-msg", "64B-batch", "1KiB-msg", "1KiB-batch"]
    assert all(v for r in rows.values() for v in r.values())


def test_work_table():
    mod, found = load()
    impls, rows = mod.labelled_table(found["Acknowledged work"])
    assert list(rows) == ["acked-1x1", "acked-1x2", "stream-1", "stream-2", "stream-4"]
    assert rows["acked-1x1"] == dict(zip(impls, [559e3, 4.88e6, 139e3]))
    assert rows["stream-4"] == dict(zip(impls, [435e3, 5.91e6, 1.15e6]))
