"""Packaging and platforms: what `import pyqueue` and setup.py say where
pyqueue cannot run, and the one place the version is written.

The other platforms are simulated the one way that is honest on a Linux
machine: sys.platform (or sys._is_gil_enabled) replaced in a fresh
interpreter before pyqueue is imported. The built artifacts themselves
(sdist, wheel, their contents, an install in a fresh virtualenv) are
checked by .ci/run's packaging stage (tests/check_dist.py,
tests/smoke_installed.py).
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

import pyqueue
from pyqueue import _platform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIR = os.path.dirname(os.path.abspath(pyqueue.__file__))


def _source_file(rel):
    """A file of the source tree: beside tests/, or (CI's installed-package
    run, from a copy of tests/) in PYQUEUE_SOURCE_TREE."""
    for root in (ROOT, os.environ.get("PYQUEUE_SOURCE_TREE")):
        if root and os.path.exists(os.path.join(root, rel)):
            return os.path.join(root, rel)
    raise AssertionError(f"{rel} is neither in {ROOT} nor in PYQUEUE_SOURCE_TREE")


def _python(code, cwd=None, flags=()):
    return subprocess.run([sys.executable, *flags, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.mark.parametrize("platform", ["darwin", "win32", "freebsd14", "cygwin"])
def test_import_on_another_platform_says_linux_only_and_what_is_missing(platform):
    r = _python(f"""
        import sys
        sys.platform = {platform!r}
        try:
            import pyqueue
        except ImportError as e:
            print(e)
            sys.exit(3)
    """)
    assert r.returncode == 3, (r.stdout, r.stderr)
    msg = r.stdout
    assert "Linux only" in msg and repr(platform) in msg
    for needed in ("futex", "robust", "/dev/shm", "/proc", "A port would need"):
        assert needed in msg, (needed, msg)
    # Nothing of pyqueue was imported past the check: no extension loaded.
    assert "circular import" not in msg and "Traceback" not in r.stderr


def test_import_with_the_gil_disabled_is_refused_with_how_to_run():
    # A free-threaded CPython running without the GIL (no 3.13t here: the
    # interpreter's answer is replaced before the import).
    r = _python("""
        import sys
        sys._is_gil_enabled = lambda: False
        try:
            import pyqueue
        except ImportError as e:
            print(e)
            sys.exit(3)
    """)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "needs the GIL" in r.stdout and "PYTHON_GIL=1" in r.stdout, r.stdout


def test_import_with_the_gil_enabled_works():
    # 3.13+ answers sys._is_gil_enabled(); a build with the GIL answers True.
    r = _python("""
        import sys
        sys._is_gil_enabled = lambda: True
        import pyqueue
        print(pyqueue.Queue.__name__)
    """)
    assert r.returncode == 0 and r.stdout.strip() == "Queue", (r.stdout, r.stderr)


def _copy_package(dest, checkout):
    """The package's Python modules without its built extensions (a source
    checkout that was never built, or one built for another Python)."""
    pkg = os.path.join(dest, "pyqueue")
    os.makedirs(pkg)
    for f in os.listdir(PACKAGE_DIR):
        if f.endswith(".py"):
            shutil.copy2(os.path.join(PACKAGE_DIR, f), pkg)
    if checkout:
        with open(os.path.join(pkg, "_core.pyx"), "w") as f:
            f.write("# the Cython source\n")
        # built for another Python: an extension module with another ABI tag
        with open(os.path.join(pkg, "_core.cpython-30-x86_64-linux-gnu.so"), "w") as f:
            f.write("")
    return pkg


@pytest.mark.parametrize("checkout", [True, False], ids=["checkout", "package"])
def test_import_of_an_unbuilt_tree_says_how_to_build_or_install(tmp_path, checkout):
    pkg = _copy_package(str(tmp_path), checkout)
    # As `python -c` / a script from the repository root does: the tree
    # comes first on sys.path and shadows any installed pyqueue. -S: no
    # site-packages, so no editable install's import hook (it would find
    # the built tree before sys.path is looked at).
    r = _python(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        try:
            import pyqueue
        except ImportError as e:
            print(e)
            sys.exit(3)
    """, cwd=str(tmp_path), flags=["-S"])
    assert r.returncode == 3, (r.stdout, r.stderr)
    msg = r.stdout
    assert "circular import" not in msg, msg
    assert pkg in msg and "_core, _topic, _log, _workq" in msg, msg
    assert "pip install pyqueue-shm" in msg and "pip install -e ." in msg, msg
    assert ("source checkout" in msg) == checkout, msg


def test_setup_py_on_another_platform_stops_before_building(tmp_path):
    # setup.py and the module it reads its messages from, nothing to build:
    # the check must come before Cython or a compiler is needed.
    shutil.copy2(_source_file("setup.py"), tmp_path)
    os.makedirs(tmp_path / "pyqueue")
    shutil.copy2(os.path.join(PACKAGE_DIR, "_platform.py"), tmp_path / "pyqueue")
    r = _python("""
        import runpy, sys
        sys.platform = "darwin"
        sys.argv = ["setup.py", "build_ext", "--inplace"]
        runpy.run_path("setup.py", run_name="__main__")
    """, cwd=str(tmp_path))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "cannot build pyqueue (pyqueue-shm)" in r.stderr, r.stderr
    assert "Linux only" in r.stderr and "futex" in r.stderr, r.stderr
    assert sorted(os.listdir(tmp_path / "pyqueue")) == ["_platform.py"]


@pytest.mark.parametrize("glibc, musl, ok", [
    ("glibc 2.36", "", True), ("glibc 2.30", "", True), ("glibc 2.28", "", False),
    # musl is asked only where there is no glibc (CS_GNU_LIBC_VERSION):
    # csrc/pq_lock_word.h knows musl 1.2's mutex layout.
    (None, "musl 1.2.5", True), (None, "musl 1.2.0", True), (None, "musl 1.1.24", False),
    (None, None, False)])
def test_the_build_needs_glibc_2_30_or_musl_1_2(glibc, musl, ok):
    # 2.30 brought pthread_mutex_clocklock (glibc's deadline wait); under
    # musl pq_lock.c waits on the lock word itself.
    problem = _platform.libc_problem(glibc, musl)
    assert (problem is None) == ok, problem
    if glibc is None and musl is None:
        assert "needs glibc" in problem and "or musl" in problem, problem
        assert "pq_lock_word.h" in problem, problem
    elif glibc is None and not ok:
        assert "needs musl 1.2 or newer" in problem and musl in problem, problem
    elif not ok:
        assert "needs glibc 2.30 or newer" in problem and glibc in problem, problem
    assert _platform.libc_problem() is None  # this machine builds it


def test_musl_version_is_what_its_loader_says():
    # The musl loader, where there is one (Debian's musl package installs it
    # beside glibc; the musllinux images have only it), says its version.
    loaders = glob.glob("/lib/ld-musl-*.so.1")
    found = _platform.musl_version()
    if not loaders:
        assert found is None
        return
    said = subprocess.run([loaders[0]], capture_output=True, text=True).stderr
    assert found is not None and found.startswith("musl 1."), found
    assert f"Version {found.split()[-1]}" in said, said


def test_the_version_is_written_once():
    about = {}
    with open(os.path.join(PACKAGE_DIR, "_version.py")) as f:
        exec(f.read(), about)
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:(?:a|b|rc)\d+)?", about["__version__"])
    assert pyqueue.__version__ == about["__version__"]
    # No other module of the package writes a version string.
    for f in os.listdir(PACKAGE_DIR):
        if f.endswith(".py") and f != "_version.py":
            with open(os.path.join(PACKAGE_DIR, f)) as src:
                assert not re.search(r"__version__\s*=", src.read()), f
    # The distribution's metadata reads the same attribute.
    with open(_source_file("pyproject.toml")) as f:
        pyproject = f.read()
    assert re.search(r'(?m)^dynamic = \["version"\]', pyproject)
    assert 'version = { attr = "pyqueue._version.__version__" }' in pyproject
    project = re.search(r"(?ms)^\[project\]$(.*?)^\[", pyproject).group(1)
    assert not re.search(r"(?m)^version\s*=", project)


def test_cli_version():
    r = subprocess.run([sys.executable, "-m", "pyqueue", "--version"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"pyqueue {pyqueue.__version__}\n"


def test_the_messages_name_the_distribution_users_install():
    # What `pip install ...` in the ImportError and setup.py messages says is
    # the name in pyproject.toml (and in the README's install line).
    with open(_source_file("pyproject.toml")) as f:
        name = re.search(r'(?m)^name = "([^"]+)"$', f.read()).group(1)
    assert name == _platform.DISTRIBUTION == "pyqueue-shm"
    with open(_source_file("README.md")) as f:
        assert f"pip install {name}" in f.read()
    # Every `pip install pyqueue...` a user may read - in the package's
    # messages and docstrings, the README, the docs, the examples - names
    # the distribution: `pyqueue[redis]` installs an unrelated project.
    wrong = []
    for top in ("pyqueue", "docs", "examples", "README.md"):
        path = _source_file(top)
        files = [path] if os.path.isfile(path) else [
            os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
            if f.endswith((".py", ".pyx", ".pxi", ".pyi", ".md"))]
        for fn in files:
            with open(fn, encoding="utf-8") as f:
                for m in re.finditer(r"pip install\s+['\"]?(pyqueue[\w.-]*)", f.read()):
                    if m.group(1) != name:
                        wrong.append(f"{os.path.relpath(fn, os.path.dirname(path))}: {m.group(0)}")
    assert wrong == []
