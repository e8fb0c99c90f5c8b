"""Build of pyqueue's extension: declares the extension and reads switches.

Switches (environment variables):
  PYQUEUE_SANITIZE=1   AddressSanitizer + UndefinedBehaviorSanitizer build
                       (run Python with LD_PRELOAD of libasan, see .ci/run)
  PYQUEUE_DEBUG=1      -O0 -g, C asserts on
  PYQUEUE_COVERAGE=1   gcov instrumentation of the C core
  PYQUEUE_FAULT_INJECTION=1
                       test-only fault points (csrc/pq_fault.h): the test
                       suite's build; benchmarks and releases build without
  PYQUEUE_BUILD_JOBS=N extensions compiled at once (default: one per CPU;
                       the C core is compiled once, before them)
  PYQUEUE_NO_STRIP=1   keep the symbol tables (the extensions are stripped
                       unless a debug, sanitizer or coverage build)

The C core's symbols are hidden (-fvisibility=hidden): each extension
exports only its PyInit_ function. Linux with glibc (2.30+) or musl (1.2+)
only: anywhere else the build stops here with what is missing
(pyqueue/_platform.py).
"""
import glob
import hashlib
import importlib.util
import os
import shutil
import sys
import sysconfig


def _load_platform():
    # pyqueue/_platform.py by path: importing the package would need the
    # extensions this script is about to build.
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location(
        "_pyqueue_platform", os.path.join(here, "pyqueue", "_platform.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_platform = _load_platform()
_problem = _platform.platform_problem() or _platform.libc_problem()
if _problem is not None:
    raise SystemExit(f"cannot build pyqueue ({_platform.DISTRIBUTION}):\n{_problem}")

from setuptools import Extension, setup  # noqa: E402 (after the check: see above)
from setuptools.command.build_clib import build_clib as _build_clib  # noqa: E402
from setuptools.command.build_ext import build_ext as _build_ext  # noqa: E402


def _flag(name):
    return os.environ.get(name, "") not in ("", "0")


# -fvisibility=hidden: the C core (linked into each extension) exports
# nothing; Python's PyMODINIT_FUNC marks PyInit_* visible. Function and data
# sections let the linker drop the parts of the core an extension never calls.
compile_args = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                "-Wno-unused-function", "-Wno-missing-field-initializers",
                "-fvisibility=hidden", "-ffunction-sections", "-fdata-sections"]
link_args = ["-pthread", "-Wl,--gc-sections"]
undef_macros = []
define_macros = []
if _flag("PYQUEUE_DEBUG") or _flag("PYQUEUE_SANITIZE"):
    compile_args += ["-O0", "-g3", "-fno-omit-frame-pointer"]
    undef_macros += ["NDEBUG"]
else:
    compile_args += ["-O2"]
if _flag("PYQUEUE_SANITIZE"):
    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    compile_args += san
    link_args += san
if _flag("PYQUEUE_FAULT_INJECTION"):
    define_macros += [("PQ_FAULT_INJECTION", "1")]
if _flag("PYQUEUE_COVERAGE"):
    compile_args += ["--coverage"]
    link_args += ["--coverage"]
if not any(_flag(f) for f in ("PYQUEUE_DEBUG", "PYQUEUE_SANITIZE", "PYQUEUE_COVERAGE",
                              "PYQUEUE_NO_STRIP")):
    link_args += ["-s"]  # stripped: no symbol table, no debug sections

# The C core (csrc/*.c) is compiled once, into a static library each
# extension links (build_clib), not once per extension: then the four
# extensions compile side by side (build_ext's parallel, one per CPU) with
# no object file in common. Its directory is named after what goes into
# its objects - the switches, the compiler and its flags, the sources'
# names, the Python it is for - so a sanitizer, debug or release build, a
# build with another compiler or Python, never links a core compiled for
# another (and a renamed source leaves no stale member in an archive
# `ar` only adds to). A header change rebuilds it (obj_deps), and so every
# extension (depends); so does a build with other switches than the last
# one (build/pqcore-last, in depends: back to the earlier switches, the
# extensions in place are the other build's).
_sources = sorted(glob.glob("csrc/*.c"))
_switches = repr((compile_args, define_macros, undef_macros, _sources,
                  [os.environ.get(v) for v in ("CC", "CFLAGS", "CPPFLAGS")],
                  [sysconfig.get_config_var(v) for v in ("CC", "CFLAGS", "EXT_SUFFIX")],
                  sysconfig.get_platform())).encode()
_clib_dir = os.path.join("build", "pqcore-" + hashlib.sha256(_switches).hexdigest()[:12])
_last_build = os.path.join("build", "pqcore-last")
_headers = sorted(glob.glob("csrc/*.h"))
_core_lib = ("pqcore", {
    "sources": _sources,
    "include_dirs": ["csrc"],
    "macros": define_macros + [(m,) for m in undef_macros],
    "cflags": compile_args,
    "obj_deps": {"": _headers},
})


def _extension(name, pyx):
    # Every extension links the C core and shares the switches above.
    return Extension(
        name,
        sources=[pyx],
        include_dirs=["csrc"],
        libraries=["pqcore"],
        library_dirs=[_clib_dir],
        depends=_headers + [os.path.join(_clib_dir, "libpqcore.a"), _last_build],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        undef_macros=undef_macros,
        define_macros=define_macros,
    )


class build_clib(_build_clib):
    """build_clib whose --debug (-g) build of the core goes to a
    directory of its own: the switches named above do not say it."""

    def finalize_options(self):
        super().finalize_options()
        if self.debug and not self.build_clib.endswith("-g"):
            self.build_clib += "-g"
            self.build_temp = os.path.join(self.build_clib, "obj")


class build_ext(_build_ext):
    """build_ext that builds the C core first: `build` runs build_clib
    before it, but `build_ext --inplace` (and an editable install) alone
    would not. --force rebuilds the core too, and --debug (-g) builds it
    with -g as well (before, only the extensions got it)."""

    def run(self):
        if self.debug:
            # (before build_clib's options are finalized: it takes its
            # --debug from `build`'s, which build_ext --debug does not set)
            self.distribution.get_command_obj("build_clib").debug = True
        clib = self.get_finalized_command("build_clib")
        clib.force = clib.force or self.force
        lib = os.path.join(clib.build_clib, "libpqcore.a")
        for ext in self.extensions:
            # (the -g core when debug: build_clib's directory, not _clib_dir)
            ext.library_dirs = [clib.build_clib]
            ext.depends = [lib if d.endswith("libpqcore.a") else d for d in ext.depends]
        if clib.force and not self.distribution.have_run.get("build_clib"):
            # (build_clib itself recompiles only what is out of date)
            shutil.rmtree(clib.build_temp, ignore_errors=True)
        self.run_command("build_clib")
        try:
            with open(_last_build) as f:
                last = f.read()
        except OSError:
            last = None
        if last != clib.build_clib:  # written only on a change: its time is the change's
            os.makedirs(os.path.dirname(_last_build), exist_ok=True)
            with open(_last_build, "w") as f:
                f.write(clib.build_clib)
        super().run()


extensions = [_extension("pyqueue._core", "pyqueue/_core.pyx"),
              _extension("pyqueue._topic", "pyqueue/_topic.pyx"),
              _extension("pyqueue._log", "pyqueue/_log.pyx"),
              _extension("pyqueue._workq", "pyqueue/_workq.pyx")]

try:
    from Cython.Build import cythonize
except ImportError as exc:  # pragma: no cover - Cython is a build requirement
    raise SystemExit("building pyqueue needs Cython (pip install Cython)") from exc

# PYQUEUE_BUILD_JOBS=N (or `build_ext -j N`): extensions compiled at once.
jobs = int(os.environ.get("PYQUEUE_BUILD_JOBS", "0") or 0) or os.cpu_count() or 1

setup(
    libraries=[_core_lib],
    cmdclass={"build_clib": build_clib, "build_ext": build_ext},
    options={"build_ext": {"parallel": jobs},
             "build_clib": {"build_clib": _clib_dir,
                            "build_temp": os.path.join(_clib_dir, "obj")}},
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3", "boundscheck": False,
                             "wraparound": False, "cdivision": True,
                             "embedsignature": True},
    ),
)
