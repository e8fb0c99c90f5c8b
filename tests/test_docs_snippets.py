"""The Python examples of the README and of the getting-started pages run,
as a user would run them: each block is written to a file and run by a new
interpreter. A block that cannot run as it stands (it waits for SIGTERM, or
loops for ever) is preceded in the page by a line
`<!-- snippet: not run (REASON) -->`, and only those are left out.

So that a run cannot meet another run's segments, the names a block gives
(`name="jobs"`, `dead_letter="orders.dead"`, `Queue.open("jobs")`) get a
prefix of this test's own, the example path /var/lib/app/events becomes a
temporary directory, and a `charge()` the block calls but does not define is
defined as doing nothing. Named segments a block leaves (on purpose: they
outlive their processes) are removed afterwards; the suite's leak check
fails the test on any unnamed one it leaves."""
import glob
import os
import re
import subprocess
import sys
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The installed-wheel stage runs a copy of tests/ without docs/ beside it.
TREE = os.environ.get("PYQUEUE_SOURCE_TREE", ROOT)
PAGES = ["README.md", "docs/index.md"] + sorted(
    os.path.relpath(p, TREE) for p in glob.glob(os.path.join(TREE, "docs", "start", "*.md")))
NOT_RUN = re.compile(r"<!-- snippet: not run \((.+)\) -->\s*$")


def blocks():
    found = []
    for page in PAGES:
        with open(os.path.join(TREE, page), encoding="utf-8") as f:
            lines = f.read().split("\n")
        i = 0
        while i < len(lines):
            if lines[i].strip() == "```python":
                j = lines.index("```", i + 1)
                skip = i > 0 and NOT_RUN.search(lines[i - 1])
                found.append((f"{page}:{i + 1}", "\n".join(lines[i + 1:j]),
                              skip.group(1) if skip else None))
                i = j
            i += 1
    return found


BLOCKS = blocks()
RUN = [(where, code) for where, code, reason in BLOCKS if reason is None]


def test_every_page_has_examples_and_most_run():
    assert {w.split(":")[0] for w, _ in RUN} == set(PAGES)
    assert len(RUN) >= 8, [w for w, _ in RUN]


@pytest.mark.parametrize("where,code", RUN, ids=[w for w, _ in RUN])
def test_snippet_runs(where, code, tmp_path):
    prefix = f"pqtest-doc-{os.getpid()}-{uuid.uuid4().hex[:6]}-"
    names = set(re.findall(r'(?:name|dead_letter)="([^"]+)"', code))
    names |= set(re.findall(r'\.open\("([^"/]+)"\)', code))
    for n in sorted(names, key=len, reverse=True):
        code = code.replace(f'"{n}"', f'"{prefix}{n}"')
    code = code.replace("/var/lib/app/events", str(tmp_path / "events"))
    if "charge(" in code and "def charge" not in code:
        code = "def charge(value):\n    pass\n\n" + code
    script = tmp_path / "snippet.py"
    script.write_text(code)
    try:
        r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                           text=True, timeout=90)
        assert r.returncode == 0, (where, code, r.stdout, r.stderr)
    finally:
        for n in names:
            path = f"/dev/shm/pyqueue.{prefix}{n}"
            if os.path.exists(path):
                os.unlink(path)
