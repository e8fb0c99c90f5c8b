"""The test suite's own machinery does what CI relies on: the /dev/shm leak
check sees every name pyqueue and the tests make, a skip that is not on
tests/allowed_skips.txt fails a strict run, and teardown helpers run every
step whatever the earlier ones raised."""
import os
import subprocess
import sys
import textwrap
import time

import pytest

from tests import _support
from tests._support import segment_belongs_to_this_run, SHM_PREFIX

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RING = 65536


def _entry(name):
    return SHM_PREFIX + name


def test_leak_check_sees_every_kind_and_name(pyqueue_mod, tmp_path):
    """Every segment a test of this process makes is attributed to this run:
    unnamed ones of every kind, out-of-band segments, names handed out by
    unique_name(), names a test makes up with its pid ("topic-<pid>-<ns>",
    which the check once missed), and names without any pid (by the
    creator pid in the segment's header)."""
    from pyqueue import Log, Topic, WorkQueue

    pid = os.getpid()
    made = [
        pyqueue_mod.Queue(capacity_bytes=RING),
        Topic(capacity_bytes=RING),
        Log(),
        WorkQueue(),
        Topic(name="topic-%d-%d" % (pid, time.monotonic_ns()), capacity_bytes=RING),
        pyqueue_mod.Queue(name=_support.unique_name("infra_x1"), capacity_bytes=RING),
        WorkQueue(name="pqinfra%d" % time.monotonic_ns()),  # no pid in the name
    ]
    try:
        q = made[0]
        q.put(b"x" * (2 * RING))  # an out-of-band message
        names = [h.name for h in made]
        entries = [e for e in _support.list_pyqueue_segments()
                   if any(e == _entry(n) or e.startswith(_entry(n) + ".oob-") for n in names)]
        assert len(entries) == len(names) + 1, entries
        assert any(".oob-" in e for e in entries)
        assert [e for e in entries if not segment_belongs_to_this_run(e)] == []
    finally:
        _support.close_handles(made)


def test_leak_check_blames_dead_children_not_other_dead_processes():
    """A name with the pid of a process that is gone is a leak of this run
    when the process was a child of the test process (multiprocessing or
    subprocess), and not otherwise unless PYQUEUE_SOLE_RUN=1: another run
    beside this one has dead children too."""
    import multiprocessing

    p = multiprocessing.get_context("fork").Process(target=int)
    p.start()
    p.join()
    sp = subprocess.Popen([sys.executable, "-c", "pass"])
    assert sp.wait(60) == 0
    later = time.monotonic()
    for pid in (p.pid, sp.pid):
        assert not os.path.exists("/proc/%d" % pid)
        assert segment_belongs_to_this_run(_entry("anon-%d-00112233aabbccdd" % pid),
                                           sole_run=False)
        # Not for a test that began after the child was started: its pid
        # may be another process's now (pytest-xdist's workers side by side).
        assert not segment_belongs_to_this_run(_entry("anon-%d-00112233aabbccdd" % pid),
                                               started=later, sole_run=False)
    # A dead process that was not ours: a grandchild.
    q = multiprocessing.get_context("fork").SimpleQueue()
    p = multiprocessing.get_context("fork").Process(target=_report_grandchild, args=(q,))
    p.start()
    grandchild = q.get()
    p.join()
    assert grandchild not in _support.CHILD_PIDS
    dead = _entry("anon-%d-00112233aabbccdd" % grandchild)
    assert not segment_belongs_to_this_run(dead, sole_run=False)
    assert segment_belongs_to_this_run(dead, sole_run=True)


def _report_grandchild(q):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    q.put(pid)


def test_leak_check_leaves_other_programs_alone(pyqueue_mod):
    """A live process that is not ours (pid 1) is never blamed, by name or
    by header."""
    assert not segment_belongs_to_this_run(_entry("topic-1-123"))
    assert not segment_belongs_to_this_run(_entry("jobs.oob-1-2"))
    assert not segment_belongs_to_this_run(_entry("pqtest-t-1-abcdef"))


def test_run_cleanups_runs_every_step_and_reraises_the_first_error():
    ran = []

    def fail(tag, exc):
        def step():
            ran.append(tag)
            raise exc
        return step

    with pytest.raises(RuntimeError, match="first"):
        _support.run_cleanups([fail("a", FileNotFoundError()), fail("b", RuntimeError("first")),
                               lambda: ran.append("c"), fail("d", OSError("second")),
                               lambda: ran.append("e")])
    assert ran == ["a", "b", "c", "d", "e"]
    _support.run_cleanups([fail("f", FileNotFoundError())])  # already gone: fine
    assert ran[-1] == "f"


def test_close_handles_closes_everything_when_a_test_unlinked_first(pyqueue_mod):
    a = pyqueue_mod.Queue(name=_support.unique_name("infra"), capacity_bytes=RING)
    b = pyqueue_mod.Queue(name=_support.unique_name("infra"), capacity_bytes=RING)
    a.unlink()          # the test did part of the cleanup itself
    b.close()
    _support.close_handles([a, b, pyqueue_mod.Queue(capacity_bytes=RING)])
    assert not _support.segment_exists(a.name)
    assert not _support.segment_exists(b.name)


# -- strict skips -------------------------------------------------------------

_PROBE = '''
import pytest

def test_runs():
    assert 1 + 1 == 2

def test_skips():
    pytest.skip("probe: cffi is not installed")
'''

_PROBE_CONFTEST = '''
import sys
sys.path.insert(0, {root!r})
from tests.conftest import (pytest_collectreport, pytest_configure,  # noqa: F401
                            pytest_runtest_logreport, pytest_sessionfinish,
                            pytest_terminal_summary)
'''


def _run_probe(tmp_path, allowed, strict=True):
    (tmp_path / "test_probe.py").write_text(_PROBE)
    (tmp_path / "conftest.py").write_text(_PROBE_CONFTEST.format(root=ROOT))
    (tmp_path / "allowed.txt").write_text(textwrap.dedent(allowed))
    env = dict(os.environ, PYQUEUE_ALLOWED_SKIPS=str(tmp_path / "allowed.txt"),
               PYQUEUE_STRICT_SKIPS="1" if strict else "0")
    env.pop("PYQUEUE_EXPECT_INSTALLED", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-rs", str(tmp_path)],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)


def test_strict_run_fails_on_a_skip_not_on_the_list(tmp_path):
    r = _run_probe(tmp_path, "# nothing allowed\n")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "skips not on tests/allowed_skips.txt" in r.stdout
    assert "test_probe.py::test_skips: probe: cffi is not installed" in r.stdout


def test_strict_run_passes_a_listed_skip(tmp_path):
    r = _run_probe(tmp_path, "*::test_skips | probe: cffi* | the probe skips on purpose\n")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 1 skipped" in r.stdout


def test_strict_run_matches_the_reason_too(tmp_path):
    r = _run_probe(tmp_path, "*::test_skips | probe: numpy* | another reason\n")
    assert r.returncode == 1, r.stdout + r.stderr


def test_non_strict_run_accepts_skips(tmp_path):
    r = _run_probe(tmp_path, "# nothing allowed\n", strict=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_root_only_entries_do_not_excuse_root(tmp_path):
    r = _run_probe(tmp_path, "nonroot: *::test_skips | probe* | only without root\n")
    assert r.returncode == (1 if os.geteuid() == 0 else 0), r.stdout + r.stderr


def test_malformed_allow_list_is_an_error(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("tests/x.py::test_y | no reason given\n")
    with pytest.raises(ValueError, match="expected"):
        _support.load_allowed_skips(str(bad))


def test_the_allow_list_is_well_formed_and_justified():
    entries = _support.load_allowed_skips()
    # Run as root (as CI runs), nothing may be skipped at all.
    assert all(e.nonroot_only for e in entries), [e.line for e in entries if not e.nonroot_only]


def test_expect_installed_refuses_a_source_tree(tmp_path, pyqueue_mod):
    """PYQUEUE_EXPECT_INSTALLED=1 stops the run when pyqueue comes from the
    tree named in PYQUEUE_SOURCE_TREE (here: wherever this run's pyqueue
    comes from, so the check must refuse it)."""
    (tmp_path / "test_probe.py").write_text("def test_runs():\n    assert True\n")
    (tmp_path / "conftest.py").write_text(_PROBE_CONFTEST.format(root=ROOT))
    here = os.path.dirname(os.path.dirname(os.path.abspath(pyqueue_mod.__file__)))
    env = dict(os.environ, PYQUEUE_EXPECT_INSTALLED="1", PYQUEUE_SOURCE_TREE=here,
               PYQUEUE_STRICT_SKIPS="0")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(tmp_path)], cwd=str(tmp_path), env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 4, r.stdout + r.stderr   # pytest's usage error
    assert "PYQUEUE_EXPECT_INSTALLED=1 but pyqueue is imported from" in r.stdout + r.stderr


def test_spawn_twins_are_the_spawn_cases_with_a_fork_case_beside():
    """CI's ASan run leaves out (PYQUEUE_SKIP_SPAWN_TWINS=1) a spawn case
    only where the same test runs under fork: a test parametrized by
    spawn alone, a token that merely contains "spawn", and the fork case
    itself stay."""
    ids = [
        "tests/a.py::test_x[fork]", "tests/a.py::test_x[spawn]",
        "tests/a.py::test_y[redis-spawn-get]", "tests/a.py::test_y[redis-fork-get]",
        "tests/a.py::test_y[redis-cluster-spawn-get]",        # no fork twin
        "tests/a.py::test_z[spawn]",                          # spawn only
        "tests/a.py::test_w[spawned-1]", "tests/a.py::test_w[fork-1]",
        "tests/a.py::test_v[spawn-spawn]", "tests/a.py::test_v[fork-spawn]",
        "tests/a.py::test_plain",
    ]
    assert _support.spawn_twins(ids) == {
        "tests/a.py::test_x[spawn]", "tests/a.py::test_y[redis-spawn-get]",
        "tests/a.py::test_v[spawn-spawn]"}     # (fork-spawn: no fork-fork beside it)


def test_a_run_with_spawn_twins_skipped_deselects_them(tmp_path):
    (tmp_path / "test_probe.py").write_text(textwrap.dedent('''
        import pytest

        @pytest.mark.parametrize("method", ["fork", "spawn"])
        def test_both(method):
            pass

        @pytest.mark.parametrize("method", ["spawn"])
        def test_spawn_only(method):
            pass

        @pytest.mark.parametrize("method", [pytest.param("fork", marks=pytest.mark.slow),
                                            "spawn"])
        def test_fork_deselected(method):
            pass

        def test_redis(redis_server):
            pass
        '''))
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f'''
        import sys
        import pytest
        sys.path.insert(0, {ROOT!r})
        from tests.conftest import (pytest_collection_modifyitems,  # noqa: F401
                                    pytest_configure)

        @pytest.fixture
        def redis_server():
            pass    # (its name marks the test redis; nothing starts)
        '''))
    env = dict(os.environ, PYQUEUE_SKIP_SPAWN_TWINS="1")
    # (-m runs first: the spawn case whose fork twin it deselects stays;
    # and -m sees the redis mark a redis fixture gives)
    r = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
                        "-m", "not slow and not redis", str(tmp_path)], cwd=str(tmp_path),
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "test_both[fork] PASSED" in r.stdout
    assert "test_spawn_only[spawn] PASSED" in r.stdout
    assert "test_fork_deselected[spawn] PASSED" in r.stdout
    assert "test_both[spawn]" not in r.stdout
    assert "test_redis" not in r.stdout
    assert "3 deselected" in r.stdout
