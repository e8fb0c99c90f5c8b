"""Draws the charts of docs/benchmarks.md from the tables on that page.

    python bench/docs_charts.py [--docs docs/benchmarks.md] [--out docs]

Reads the fenced tables under "## Topic fan-out", "## Log" and
"## Acknowledged work" (the text the bench tools print) and writes
docs/bench-topic.png, docs/bench-log.png and docs/bench-work.png: one bar
per implementation and case, messages (or records) per second, log scale.
Needs matplotlib (the `bench` extra). The numbers are the page's;
rerun the benchmark, paste its table, then rerun this.
"""
import argparse
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
UNITS = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}
RATE = re.compile(r"([\d.]+)([kMG]?) (?:msg|rec)/s")


def sections(text):
    """{heading: first fenced block under it} for the page's ## headings."""
    out = {}
    for m in re.finditer(r"^## (.+?)\n(.*?)(?=^## |\Z)", text, re.S | re.M):
        block = re.search(r"```\n(.*?)```", m.group(2), re.S)
        if block:
            out[m.group(1).strip()] = block.group(1)
    return out


def rate(cell):
    m = RATE.search(cell)
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def column_table(block):
    """A bench.compare / log_compare table: header, dashes, rows of cells
    two or more spaces apart. Returns (implementations, {case: {impl: rate}})."""
    lines = [ln for ln in block.splitlines() if ln.strip()]
    head = re.split(r"\s{2,}", lines[0].strip())
    rows = {}
    for ln in lines[2:]:
        cells = re.split(r"\s{2,}", ln.strip())
        if len(cells) != len(head):
            continue  # a note under the table
        rows[cells[0]] = dict(zip(head[1:], (rate(c) for c in cells[1:])))
    return head[1:], rows


def labelled_table(block):
    """bench.work_compare's lines: `case  label: rate (ratio)  label: ...`,
    the acked implementation first, then plain pyqueue.Queue (the
    baseline), then multiprocessing; the labels differ between the acked-*
    and the stream-* cases, so the columns go by position."""
    impls = ["acked: WorkQueue get+ack / StreamProcessor", "pyqueue.Queue, no acks (1.0x)",
             "multiprocessing: Queue get / Pool.imap_unordered"]
    rows = {}
    for ln in block.splitlines():
        if ln.startswith("machine") or not ln.strip():
            continue
        case, rest = ln.split(None, 1)
        cells = re.split(r"\s{2,}", rest.strip())
        rows[case] = {impl: rate(c) for impl, c in zip(impls, cells)}
    return impls, rows


def draw(title, impls, rows, unit, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(rows)
    impls = [i for i in impls if any(rows[c].get(i) for c in cases)]  # n/a everywhere: no bar
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(cases) + 2), 4.2))
    width = 0.8 / len(impls)
    for i, impl in enumerate(impls):
        xs = [c + (i - (len(impls) - 1) / 2) * width for c in range(len(cases))]
        ys = [rows[case].get(impl) or 0 for case in cases]  # 0: n/a in that case
        ax.bar(xs, ys, width, label=impl)
    ax.set_yscale("log")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels(cases, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"{unit} per second (log scale)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", which="major", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})  # no version: same bytes on rerun
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", default=os.path.join(HERE, "..", "docs", "benchmarks.md"))
    ap.add_argument("--out", default=os.path.join(HERE, "..", "docs"))
    args = ap.parse_args(argv)
    with open(args.docs, encoding="utf-8") as f:
        found = sections(f.read())
    charts = [
        ("Topic fan-out", "Topic: one publisher, every subscriber gets every message",
         column_table, "messages published", "bench-topic.png"),
        ("Log", "Log: one appender, one reader", column_table, "records", "bench-log.png"),
        ("Acknowledged work", "WorkQueue and StreamProcessor, 64 B messages", labelled_table,
         "messages", "bench-work.png"),
    ]
    for heading, title, parse, unit, name in charts:
        if heading not in found:
            sys.exit(f"{args.docs}: no table under '## {heading}'")
        impls, rows = parse(found[heading])
        if not rows:
            sys.exit(f"{args.docs}: the table under '## {heading}' has no rows")
        path = os.path.join(args.out, name)
        draw(title, impls, rows, unit, path)
        print(f"wrote {path} ({len(rows)} cases x {len(impls)})")


if __name__ == "__main__":
    main()
