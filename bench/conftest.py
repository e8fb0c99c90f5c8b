"""Collect bench/ only when it is asked for explicitly.

``pytest bench/`` or ``pytest bench/test_micro.py`` runs the micro-benchmarks;
a bare ``pytest`` from the repository root (which would otherwise recurse into
bench/) skips them, and ``pytest tests/`` never looks here.
"""

from pathlib import Path

_BENCH = Path(__file__).resolve().parent


def _asked_for_bench(config):
    base = Path(config.invocation_params.dir)
    for arg in config.args:
        path = (base / arg.split("::", 1)[0]).resolve()
        if path == _BENCH or _BENCH in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path, config):
    if collection_path.suffix == ".py" and not _asked_for_bench(config):
        return True
    return None
