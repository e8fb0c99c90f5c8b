"""docs/sizing.md's table of what each kind holds in /dev/shm is true: each
row's constructor is run here and the blocks /dev/shm really allocated for
it are compared with the row's first "N MiB"."""
import os
import re
import uuid

import pytest

import pyqueue

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The installed-wheel stage runs a copy of tests/ without docs/ beside it.
DOCS = os.path.join(os.environ.get("PYQUEUE_SOURCE_TREE", ROOT), "docs", "sizing.md")
MiB = 2 ** 20


def table_rows():
    rows = {}
    with open(DOCS, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"\| `([^`]+)` \| ([^|]*)\|", line)
            if m:
                size = re.search(r"([\d.]+) MiB", m.group(2))
                assert size, f"no size in the row of {m.group(1)}"
                rows[m.group(1)] = float(size.group(1))
    return rows


def allocated(names):
    """Bytes /dev/shm allocated for these segments (their blocks, not their
    apparent size: a queue's ring is sparse beyond what is backed)."""
    return sum(os.stat(f"/dev/shm/pyqueue.{n}").st_blocks * 512 for n in names)


def mapped_segments():
    """The pyqueue segments this process maps. Not a listing of /dev/shm:
    .ci/run runs a second pytest beside this one, whose unnamed segments
    come and go there (a CI run once failed on one)."""
    with open("/proc/self/maps", encoding="utf-8") as f:
        return {line.split(maxsplit=5)[5].strip() for line in f if "/dev/shm/pyqueue." in line}


# Each documented constructor, with N a fresh name: returns (handles, names of its segments).
def make(expr, n, tmp_path):
    if expr == "Log(path=DIR)":
        return [pyqueue.Log(path=str(tmp_path / "log"))], []
    env = {"N": n, "Queue": pyqueue.Queue, "Topic": pyqueue.Topic, "Log": pyqueue.Log,
           "WorkQueue": pyqueue.WorkQueue}
    call = expr.replace('"N.dead"', "N + '.dead'")
    if "name=N" not in call:  # an unnamed one in the table: named here, to find it
        call = call.replace("()", "(name=N)") if call.endswith("()") else call.replace("(", "(name=N, ", 1)
    handles = [eval(call, env)]
    names = [n]
    if "dead_letter" in expr:
        handles.append(pyqueue.WorkQueue.open(n + ".dead"))
        names.append(n + ".dead")
    return handles, names


ROWS = table_rows()


def test_the_table_has_a_row_per_kind():
    kinds = {re.match(r"\w+", k).group(0) for k in ROWS}
    assert kinds == {"Queue", "Topic", "Log", "WorkQueue"}
    assert len(ROWS) >= 10


@pytest.mark.parametrize("expr", sorted(ROWS))
def test_documented_size_is_what_dev_shm_allocates(expr, tmp_path):
    n = f"pqtest-size-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    before = mapped_segments()
    handles, names = make(expr, n, tmp_path)
    try:
        if names:
            got = allocated(names) / MiB
        else:
            assert mapped_segments() - before == set()  # a directory-mode log maps none
            got = 0.0
        want = ROWS[expr]
        # the table rounds to 0.1 MiB (and "1 MiB" is 1 MiB plus a header page)
        assert abs(got - want) <= 0.06 + 0.01 * want, (expr, got, want)
    finally:
        for h in reversed(handles):
            if names:
                h.unlink()
            h.close()
