"""Build of pyqueue's extension: declares the extension and reads switches.

Switches (environment variables):
  PYQUEUE_SANITIZE=1   AddressSanitizer + UndefinedBehaviorSanitizer build
                       (run Python with LD_PRELOAD of libasan, see .ci/run)
  PYQUEUE_DEBUG=1      -O0 -g, C asserts on
  PYQUEUE_COVERAGE=1   gcov instrumentation of the C core
  PYQUEUE_FAULT_INJECTION=1
                       test-only fault points (csrc/pq_fault.h): the test
                       suite's build; benchmarks and releases build without
  PYQUEUE_BUILD_JOBS=N extensions compiled at once (default: one per CPU)
  PYQUEUE_NO_STRIP=1   keep the symbol tables (the extensions are stripped
                       unless a debug, sanitizer or coverage build)

The C core's symbols are hidden (-fvisibility=hidden): each extension
exports only its PyInit_ function. Linux with glibc (2.30+) or musl (1.2+)
only: anywhere else the build stops here with what is missing
(pyqueue/_platform.py).
"""
import glob
import importlib.util
import os
import sys


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


def _flag(name):
    return os.environ.get(name, "") not in ("", "0")


# -fvisibility=hidden: the C core (compiled into each extension) exports
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

def _extension(name, pyx):
    # Every extension shares the C core and the switches above.
    return Extension(
        name,
        sources=[pyx] + sorted(glob.glob("csrc/*.c")),
        include_dirs=["csrc"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        undef_macros=undef_macros,
        define_macros=define_macros,
    )


extensions = [_extension("pyqueue._core", "pyqueue/_core.pyx"),
              _extension("pyqueue._topic", "pyqueue/_topic.pyx"),
              _extension("pyqueue._log", "pyqueue/_log.pyx"),
              _extension("pyqueue._workq", "pyqueue/_workq.pyx")]

try:
    from Cython.Build import cythonize
except ImportError as exc:  # pragma: no cover - Cython is a build requirement
    raise SystemExit("building pyqueue needs Cython (pip install Cython)") from exc

# The four extensions compile one after the other. They share the C core's
# sources, and build_ext writes an object file per source path
# (build/temp.../csrc/pq_ring.o): extensions built side by side (-j) write
# and link the same object files at once, and an extension linked against
# one half-written by another misses symbols (a clean-clone CI run: the
# ASan _core failed to import, "undefined symbol: pq_ring_full_ctl").
# PYQUEUE_BUILD_JOBS (or `build_ext -j N`) still asks for it, at that risk.
jobs = int(os.environ.get("PYQUEUE_BUILD_JOBS", "1") or 1)

setup(
    options={"build_ext": {"parallel": jobs}},
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3", "boundscheck": False,
                             "wraparound": False, "cdivision": True,
                             "embedsignature": True},
    ),
)
