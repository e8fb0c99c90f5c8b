"""Checks of the built distributions (.ci/run's packaging stage):

    python tests/check_dist.py --source TREE dist/pyqueue_shm-X.tar.gz dist/pyqueue_shm-X-*.whl

The sdist has everything a build needs (every Cython source and C file of
TREE's pyqueue/ and csrc/, setup.py, pyproject.toml, LICENSE) and no
generated or built file; the wheel has the modules, stubs and the four
extensions and nothing else (no .c/.pyx/.pxi/.pxd/.h); each extension is
stripped and exports its PyInit_ function alone (the C core's symbols are
hidden); the metadata has the distribution's name, the version of
pyqueue/_version.py, the SPDX license with its file, and the classifiers.
Uses nm and readelf (binutils, there wherever the C compiler is).
Exit status 0 when everything holds; each failure is printed.
"""
import argparse
import email.parser
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile

NAME = "pyqueue-shm"
EXTENSIONS = ("_core", "_topic", "_log", "_workq")
BUILD_SOURCES = (".pyx", ".pxi", ".pxd", ".pyi", ".py")
GENERATED = {f"pyqueue/{e}.c" for e in EXTENSIONS}
SUBPACKAGES = ("backends", "backends/redis")
CLASSIFIERS = ["Operating System :: POSIX :: Linux", "Typing :: Typed",
               "Programming Language :: Python :: 3.9", "Programming Language :: Python :: 3.13",
               "Programming Language :: Python :: Implementation :: CPython"]

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


def version_of(tree):
    about = {}
    with open(os.path.join(tree, "pyqueue", "_version.py")) as f:
        exec(f.read(), about)
    return about["__version__"]


def check_metadata(text, version, where):
    meta = email.parser.Parser().parsestr(text)
    check(meta["Name"] == NAME, f"{where}: Name {meta['Name']!r}")
    check(meta["Version"] == version, f"{where}: Version {meta['Version']!r}, want {version}")
    check(meta["License-Expression"] == "MIT",
          f"{where}: License-Expression {meta['License-Expression']!r}")
    check("LICENSE" in (meta.get_all("License-File") or []), f"{where}: no License-File LICENSE")
    check(meta["Requires-Python"] == ">=3.9", f"{where}: Requires-Python {meta['Requires-Python']!r}")
    classifiers = meta.get_all("Classifier") or []
    for c in CLASSIFIERS:
        check(c in classifiers, f"{where}: no classifier {c!r}")
    check(not any(c.startswith("License ::") for c in classifiers),
          f"{where}: a License classifier beside License-Expression")
    check("pip install pyqueue-shm" in (meta.get_payload() or ""),
          f"{where}: the description (README) has no `pip install pyqueue-shm`")


def check_sdist(path, tree, version):
    base = f"pyqueue_shm-{version}"
    check(os.path.basename(path) == f"{base}.tar.gz", f"sdist name {os.path.basename(path)}")
    with tarfile.open(path) as tar:
        names = {n[len(base) + 1:] for n in tar.getnames() if n.startswith(base + "/")}
        pkg_info = tar.extractfile(f"{base}/PKG-INFO").read().decode()
    check_metadata(pkg_info, version, "sdist PKG-INFO")
    # What builds and checks it too: the docs site (mkdocs.yml and its
    # hooks) and the type checks' configuration.
    needed = {"setup.py", "pyproject.toml", "LICENSE", "README.md", "CHANGELOG.md",
              "MANIFEST.in", "tests/smoke_installed.py", "mkdocs.yml",
              "docs/_hooks/cli_help.py", "docs/_hooks/griffe_cython.py",
              "tests/typing/mypy.ini", "tests/typing/pyrightconfig.json"}
    for d, _dirs, files in os.walk(os.path.join(tree, "pyqueue")):
        rel = os.path.relpath(d, tree)
        if "__pycache__" in rel:
            continue
        for f in files:
            if f.endswith(BUILD_SOURCES) or f == "py.typed":
                needed.add(f"{rel}/{f}")
    for f in os.listdir(os.path.join(tree, "csrc")):
        if f.endswith((".c", ".h")):
            needed.add(f"csrc/{f}")
    for f in sorted(needed - names):
        failures.append(f"sdist lacks {f}")
    for f in sorted(names):
        check(f not in GENERATED and not f.endswith((".so", ".o", ".pyc")),
              f"sdist has a generated or built file {f}")


def check_wheel(path, version):
    with zipfile.ZipFile(path) as whl:
        names = whl.namelist()
        dist_info = f"pyqueue_shm-{version}.dist-info"
        check(os.path.basename(path).startswith(f"pyqueue_shm-{version}-"),
              f"wheel name {os.path.basename(path)}")
        check(f"{dist_info}/licenses/LICENSE" in names, "wheel has no dist-info/licenses/LICENSE")
        check_metadata(whl.read(f"{dist_info}/METADATA").decode(), version, "wheel METADATA")
        entry_points = whl.read(f"{dist_info}/entry_points.txt").decode()
        check(re.search(r"(?m)^pyqueue = pyqueue\.cli:main$", entry_points) is not None,
              "wheel: no `pyqueue` console script")
        package = [n for n in names if not n.startswith(dist_info + "/")]
        for n in package:
            top = n.startswith("pyqueue/") and "/" not in n[len("pyqueue/"):]
            # Modules and stubs, also of the subpackages (the backends);
            # extensions at the top only.
            ok = n.startswith("pyqueue/") and (n.endswith((".py", ".pyi"))
                                               or top and n.endswith(".so")
                                               or n == "pyqueue/py.typed")
            check(ok, f"wheel has {n}")
        check("pyqueue/py.typed" in names, "wheel has no py.typed")
        for sub in SUBPACKAGES:
            check(f"pyqueue/{sub}/__init__.py" in names, f"wheel lacks the package pyqueue.{sub}")
        with tempfile.TemporaryDirectory() as tmp:
            for ext in EXTENSIONS:
                so = [n for n in package if re.fullmatch(rf"pyqueue/{ext}\.[^/]*\.so", n)]
                check(len(so) == 1, f"wheel: extension {ext}: {so}")
                if len(so) != 1:
                    continue
                whl.extract(so[0], tmp)
                check_extension(os.path.join(tmp, so[0]), ext)


def check_extension(path, ext):
    where = os.path.basename(path)
    nm = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True, text=True,
                        check=True).stdout
    exported = sorted(line.split()[-1] for line in nm.splitlines() if line.strip())
    check(exported == [f"PyInit_{ext}"], f"{where} exports {exported[:8]}"
          f"{' ...' if len(exported) > 8 else ''} ({len(exported)} symbols)")
    sections = subprocess.run(["readelf", "-S", "-W", path], capture_output=True, text=True,
                              check=True).stdout
    for section in (".symtab", ".debug_info"):
        check(f" {section} " not in sections, f"{where} is not stripped: it has {section}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", required=True, help="the source tree the artifacts came from")
    ap.add_argument("artifacts", nargs="+")
    args = ap.parse_args()
    version = version_of(args.source)
    sdists = [a for a in args.artifacts if a.endswith(".tar.gz")]
    wheels = [a for a in args.artifacts if a.endswith(".whl")]
    check(len(sdists) == 1 and len(wheels) >= 1, f"want one sdist and wheels: {args.artifacts}")
    for s in sdists:
        check_sdist(s, args.source, version)
    for w in wheels:
        check_wheel(w, version)
    for f in failures:
        print(f"check_dist: {f}", file=sys.stderr)
    if not failures:
        print(f"check_dist: {NAME} {version}: {len(sdists)} sdist, {len(wheels)} wheel(s) ok")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
