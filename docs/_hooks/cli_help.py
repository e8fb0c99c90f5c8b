"""MkDocs hook: fills docs/cli.md with the `--help` of `pyqueue` and of each
of its subcommands, as the installed (or in-place built) pyqueue prints it,
so the CLI reference cannot drift from the code. The subcommands are read
from the top-level usage line; a command that fails fails the build."""
import os
import re
import subprocess
import sys

MARKER = "<!-- cli-help -->"


def _help(*args):
    env = dict(os.environ, COLUMNS="100")  # argparse wraps to COLUMNS
    r = subprocess.run([sys.executable, "-m", "pyqueue", *args, "--help"],
                       capture_output=True, text=True, env=env, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"`pyqueue {' '.join(args)} --help` failed "
                           f"(is pyqueue built and importable?):\n{r.stderr}")
    return r.stdout.rstrip()


def on_page_markdown(markdown, page, config, files):
    if MARKER not in markdown:
        return markdown
    top = _help()
    m = re.search(r"\{([a-z,_-]+)\}", top)
    if m is None:
        raise RuntimeError("no subcommands in `pyqueue --help`:\n" + top)
    parts = ["## pyqueue\n", "```text\n" + top + "\n```\n"]
    for cmd in m.group(1).split(","):
        parts.append(f"## pyqueue {cmd}\n")
        parts.append("```text\n" + _help(cmd) + "\n```\n")
    return markdown.replace(MARKER, "\n".join(parts))
