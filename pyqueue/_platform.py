"""What pyqueue needs of the machine, checked once at import (and by
setup.py before it builds anything): Linux with glibc or musl, an
interpreter that runs with the GIL, and the built extension modules.

This module imports nothing of pyqueue and nothing Linux-specific, so that
it can say what is wrong where the rest of the package could not even be
imported. setup.py loads it by file path (the same messages at build time).
"""
import sys
from typing import Optional

# The distribution's name on the package index (`import pyqueue` stays).
DISTRIBUTION = "pyqueue-shm"

# The Cython extension modules pyqueue/__init__.py needs (setup.py builds them).
EXTENSIONS: "tuple[str, ...]" = ("_core", "_topic", "_log", "_workq")

_NEEDS = """\
pyqueue runs on Linux only (x86_64 and aarch64 are the platforms it is built
and published for). What it uses that {where} does not have:
  - futex(2) waits on words in shared memory, across processes, with
    CLOCK_MONOTONIC deadlines (FUTEX_WAIT_BITSET, <linux/futex.h>): every
    blocking put/get and every wake-up;
  - robust process-shared pthread mutexes (glibc's or musl's), whose lock
    word (the holder's thread id, FUTEX_OWNER_DIED) pyqueue reads to take
    over a lock whose holder was killed with SIGKILL, and to refuse a
    damaged one;
  - POSIX shared memory as files in /dev/shm (tmpfs): segments are opened,
    sized, listed and collected (`pyqueue ls`, `pyqueue gc`) there;
  - /proc/PID/stat, /proc/PID/maps and /proc/PID/fd: whether a process is
    alive (pid + start time) and which processes use a segment.
A port would need, on that system, a wait on an address in memory shared
between processes with a deadline (FreeBSD: _umtx_op; macOS 14.4+:
os_sync_wait_on_address with OS_SYNC_WAIT_ON_ADDRESS_SHARED; Windows'
WaitOnAddress works within one process only), a lock that survives its
holder's death (robust mutexes; macOS has none), and a way to tell which
processes are alive and which map a segment. pyqueue has none of these
today."""


def platform_problem(platform: Optional[str] = None) -> Optional[str]:
    """The reason pyqueue cannot run on `platform` (default sys.platform), or
    None on Linux."""
    platform = sys.platform if platform is None else platform
    if platform.startswith("linux"):
        return None
    return _NEEDS.format(where=f"this system (sys.platform {platform!r})")


def glibc_version() -> Optional[str]:
    """This process's glibc ("glibc 2.36"), or None under another C library."""
    import os

    try:
        return os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError, AttributeError):
        return None


def musl_version() -> Optional[str]:
    """This system's musl ("musl 1.2.3", what its dynamic loader says when run
    alone), or None where there is none."""
    import glob
    import re
    import subprocess

    for loader in sorted(glob.glob("/lib/ld-musl-*.so.1")):
        try:
            said = subprocess.run([loader], capture_output=True, text=True,
                                  timeout=30).stderr
        except (OSError, subprocess.SubprocessError):
            continue
        found = re.search(r"(?m)^Version (\d+\.\d+\.\d+)", said)
        if found:
            return f"musl {found.group(1)}"
    return None


def _too_old(version: str, floor: "tuple[int, int]") -> bool:
    try:
        return tuple(int(x) for x in version.split(".")[:2]) < floor
    except ValueError:
        return False


def libc_problem(glibc: Optional[str] = "", musl: Optional[str] = "") -> Optional[str]:
    """The reason the C core cannot be built with this Linux's C library, or
    None under glibc 2.30 or newer, or else musl 1.2 or newer. `glibc`: what
    glibc_version() says, `musl`: what musl_version() says (by default this
    process's and this system's; musl is asked only where there is no glibc).
    Checked at build time."""
    if glibc == "":
        glibc = glibc_version()
    if glibc:
        if not _too_old(glibc.split()[-1], (2, 30)):
            return None
        return (f"pyqueue needs glibc 2.30 or newer, this is {glibc}: its locks "
                "wait with a CLOCK_MONOTONIC deadline (pthread_mutex_clocklock, "
                "glibc 2.30) and name their holder by thread id (gettid, glibc "
                "2.30). The published wheels need glibc 2.34 (manylinux_2_34).")
    if musl == "":
        musl = musl_version()
    if musl:
        if not _too_old(musl.split()[-1], (1, 2)):
            return None
        return (f"pyqueue needs musl 1.2 or newer, this is {musl}: "
                "csrc/pq_lock_word.h reads musl's robust mutex as musl 1.2 lays "
                "it out (checked against 1.2.0 to 1.2.5).")
    return ("pyqueue needs glibc (2.30 or newer) or musl (1.2 or newer), and "
            "this Linux has neither (no CS_GNU_LIBC_VERSION, no /lib/ld-musl-*): "
            "its locks are the C library's robust process-shared pthread mutexes, "
            "and csrc/pq_lock_word.h reads their lock word (the holder's thread "
            "id, FUTEX_OWNER_DIED) and type in the layout of glibc or musl to "
            "take over a lock whose holder died and to refuse a damaged one. "
            "A port would need those accessors for this C library's mutex.")


def gil_problem() -> Optional[str]:
    """The reason pyqueue cannot run in this interpreter's threading model, or
    None: a free-threaded CPython running without the GIL is refused."""
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    if is_gil_enabled is None or is_gil_enabled():
        return None
    return ("pyqueue needs the GIL, and this is a free-threaded CPython "
            f"({sys.version.split()[0]}) running without it: the state of one "
            "handle that lives between calls (its view of the shared ring, a reader's "
            "position, what it has taken and not yet acknowledged) is kept "
            "consistent by the GIL alone, with no lock of its own, so two threads "
            "calling one handle at once could corrupt it. Run this interpreter with the GIL "
            "(PYTHON_GIL=1 or python -X gil=1), or use a regular (non-'t') CPython "
            "build.")


def extensions_problem(package_dir: str) -> Optional[str]:
    """The reason the extension modules of the pyqueue package in `package_dir`
    cannot be imported (not built, or built for another Python), or None."""
    import importlib.util
    import os

    missing = [name for name in EXTENSIONS
               if importlib.util.find_spec(f"pyqueue.{name}") is None]
    if not missing:
        return None
    import importlib.machinery

    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    checkout = os.path.exists(os.path.join(package_dir, "_core.pyx"))
    what = ("a source checkout (pyqueue/_core.pyx is there) whose C extension "
            "modules are not built for this Python" if checkout else
            "a pyqueue without its C extension modules for this Python")
    return (
        f"the pyqueue package imported from {package_dir} is {what} "
        f"(Python {sys.version.split()[0]}: no {', '.join(missing)} "
        f"module, e.g. pyqueue/{missing[0]}{suffix}). Either\n"
        f"  - use the installed package: `pip install {DISTRIBUTION}`, and run from "
        "outside the repository (the current directory, a script's directory, "
        "or a path a script puts on sys.path itself, comes before site-packages "
        "and shadows the installed pyqueue); or\n"
        "  - build the checkout in place: `pip install -e .` (or `pip install "
        "Cython 'setuptools>=77' && python setup.py build_ext --inplace`) in the "
        "repository root.")


def check() -> None:
    """Raise ImportError, with what is missing and what to do, when pyqueue
    cannot run here; called first thing by pyqueue/__init__.py."""
    import os

    for problem in (platform_problem(), gil_problem(),
                    extensions_problem(os.path.dirname(os.path.abspath(__file__)))):
        if problem is not None:
            raise ImportError(problem, name="pyqueue")
