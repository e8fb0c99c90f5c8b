#!/usr/bin/env bash
# The main job: build pyqueue in .venv with the comparison targets
# (faster-fifo, pyzmq, matplotlib) and run the side-by-side benchmark.
# Arguments go to `python -m bench.compare` (e.g. --quick, --only 64B).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# (A .venv from before the rename to pyqueue-shm has the editable "pyqueue".)
python -m pip uninstall -q -y pyqueue >/dev/null 2>&1 || true
python -m pip install -q -e ".[bench]"
exec python -m bench.compare "$@"
