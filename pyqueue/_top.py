"""`pyqueue top`: a live view of every queue, topic, log and work queue on
the machine (curses, refreshed like htop; q quits), or one table with
--once. Reads what `pyqueue stats` reads (pyqueue/_inspect.py) at each
refresh; the rates are the differences of the counters between two
refreshes, over the time between them.

Columns, per kind (the documentation's Operations page):
  DEPTH   messages waiting: a queue's depth; a topic's retained messages; a
          log's records kept; a work queue's available + delayed + in flight
  IN/s    put / published / appended per second
  OUT/s   taken (queue), read by subscribers (topic), committed by consumer
          groups (log), acknowledged (work queue) per second
  LAG     the slowest subscriber's lag (topic), the groups' total lag (log),
          deliveries held by consumers (work queue)
  WAIT    processes blocked: producers/consumers (queue), publishers/
          subscribers (topic)
  DEAD    abandoned + dropped (queue), lost by lapped subscribers (topic),
          dead-lettered (work queue)
"""
import time

from pyqueue import _inspect

COLUMNS = ("NAME", "KIND", "DEPTH", "IN/s", "OUT/s", "LAG", "WAIT", "DEAD")


def _counts(kind, s):
    """(depth, in counter, out counter, lag, wait, dead) of one stats()."""
    if kind == "queue":
        return (s["depth"], s["enqueued"], s["dequeued"], None,
                f"{s['waiting_producers']}/{s['waiting_consumers']}",
                s["abandoned"] + s["dropped"])
    if kind == "topic":
        slots = s.get("subscriber_slots", [])
        return (s["retained"], s["published"], sum(x["read"] for x in slots),
                max((x["lag"] for x in slots), default=0),
                f"{s['waiting_publishers']}/{s['waiting_subscribers']}", s.get("lost", 0))
    if kind == "log":
        committed = sum((v["committed"] or 0) for g in s["groups"].values()
                        for v in g["partitions"].values())
        return (s["records"], s["appended"], committed,
                sum(g["lag"] for g in s["groups"].values()), None, None)
    return (s["depth"] + s["delayed"] + s["in_flight"], s["enqueued"], s["acked"],
            s["in_flight"], None, s["dead_lettered"])


class Rates:
    """Counters remembered between refreshes, to give rates."""

    def __init__(self):
        self._prev = {}

    def rows(self, snapshot, now=None):
        """[{name, kind, depth, in_rate, out_rate, lag, wait, dead}] of a
        snapshot (_inspect.snapshot); rates None at the first sight of a
        segment (and when a counter went back: a new segment of that name)."""
        now = time.monotonic() if now is None else now
        out, seen = [], {}
        for row in snapshot:
            key = (row["kind"], row["name"])
            depth, cin, cout, lag, wait, dead = _counts(row["kind"], row["stats"])
            rate_in = rate_out = None
            prev = self._prev.get(key)
            if prev is not None and now > prev[0] and cin >= prev[1] and cout >= prev[2]:
                dt = now - prev[0]
                rate_in, rate_out = (cin - prev[1]) / dt, (cout - prev[2]) / dt
            seen[key] = (now, cin, cout)
            out.append({"name": row["name"], "kind": row["kind"], "depth": depth,
                        "in_rate": rate_in, "out_rate": rate_out, "lag": lag, "wait": wait,
                        "dead": dead})
        self._prev = seen
        return out


def _cell(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}" if v < 1e6 else f"{v:.3g}"
    return str(v)


def table(rows, width=None):
    """The rows as lines of text, NAME cut to fit width (None: not cut)."""
    widths = [8, 10, 10, 10, 10, 9, 8]
    rest = sum(widths) + len(widths)
    name_w = max([4] + [len(r["name"]) for r in rows])
    if width is not None:
        name_w = max(8, min(name_w, width - rest - 1))
    fmt = "{:<%d} {:<9} {:>10} {:>10} {:>10} {:>10} {:>9} {:>8}" % name_w
    lines = [fmt.format(*COLUMNS)]
    for r in rows:
        name = r["name"] if len(r["name"]) <= name_w else r["name"][:name_w - 1] + "~"
        lines.append(fmt.format(name, r["kind"], _cell(r["depth"]), _cell(r["in_rate"]),
                                _cell(r["out_rate"]), _cell(r["lag"]), _cell(r["wait"]),
                                _cell(r["dead"])))
    return lines


def once(patterns, paths, interval):
    """Two snapshots `interval` apart: the table with rates."""
    rates = Rates()
    rates.rows(_inspect.snapshot(patterns, paths))
    time.sleep(interval)
    return table(rates.rows(_inspect.snapshot(patterns, paths)))


def run(patterns, paths, interval):
    """The live view until q (or Ctrl-C). Returns the exit status."""
    import curses

    def main(scr):
        curses.curs_set(0)
        rates = Rates()
        while True:
            errors = []
            rows = rates.rows(_inspect.snapshot(patterns, paths, errors))
            h, w = scr.getmaxyx()
            scr.erase()
            head = (f"pyqueue top - {len(rows)} segment(s)"
                    + (f", {len(errors)} unreadable" if errors else "")
                    + f" - every {interval:g}s - {time.strftime('%H:%M:%S')} - q quits")
            lines = [head, ""] + table(rows, w)
            for y, line in enumerate(lines[:h]):
                attr = curses.A_REVERSE if y == 2 else curses.A_NORMAL
                try:
                    scr.addnstr(y, 0, line, w - 1, attr)
                except curses.error:
                    pass
            scr.refresh()
            deadline = time.monotonic() + interval
            while True:  # keys until the next refresh
                scr.timeout(max(1, int((deadline - time.monotonic()) * 1000)))
                ch = scr.getch()
                if ch in (ord("q"), ord("Q")):
                    return 0
                if ch in (-1, curses.KEY_RESIZE) or time.monotonic() >= deadline:
                    break

    try:
        return curses.wrapper(main)
    except KeyboardInterrupt:
        return 130
