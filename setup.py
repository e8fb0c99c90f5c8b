"""Build of pyqueue's extension: declares the extension and reads switches.

Switches (environment variables):
  PYQUEUE_SANITIZE=1   AddressSanitizer + UndefinedBehaviorSanitizer build
                       (run Python with LD_PRELOAD of libasan, see .ci/run)
  PYQUEUE_DEBUG=1      -O0 -g, C asserts on
  PYQUEUE_COVERAGE=1   gcov instrumentation of the C core
  PYQUEUE_FAULT_INJECTION=1
                       test-only fault points (csrc/pq_fault.h): the test
                       suite's build; benchmarks and releases build without
"""
import glob
import os

from setuptools import Extension, setup


def _flag(name):
    return os.environ.get(name, "") not in ("", "0")


compile_args = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                "-Wno-unused-function", "-Wno-missing-field-initializers"]
link_args = ["-pthread"]
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

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3", "boundscheck": False,
                             "wraparound": False, "cdivision": True,
                             "embedsignature": True},
    ),
)
