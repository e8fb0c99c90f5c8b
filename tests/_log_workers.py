"""Child-process targets of tests/test_log.py (importable under spawn)."""


def appender(log, tag, n, partition_key):
    for i in range(n):
        log.append((tag, i), key=partition_key)


def blocking_reader(log, ready, out):
    ready.put(True)
    recs = log.read(0, 0, max_records=10, timeout=20)
    out.put([(r.offset, r.value) for r in recs])
