"""Child-process bodies of tests/test_shm_full.py (importable under spawn)."""


def fill_until_enospc(q, conn):
    """Put 0, 1, 2, ... until a put fails; send (count put, errno, message)."""
    n = 0
    try:
        while True:
            q.put(n)
            n += 1
    except OSError as e:
        conn.send((n, e.errno, str(e)))
    conn.close()


def put_sequence(q, n, size):
    """Put n messages of `size` bytes, each starting with its number."""
    for i in range(n):
        q.put(i.to_bytes(8, "little") * (size // 8))


def put_tagged(q, tag, n, wait=None, done=None):
    """After `wait` (an Event, if any) is set: put (tag, 0) .. (tag, n - 1),
    half one by one and half with put_many; then set `done`."""
    if wait is not None:
        assert wait.wait(60)
    half = n // 2
    for i in range(half):
        q.put((tag, i), timeout=60)
    for k in range(half, n, 500):
        q.put_many([(tag, i) for i in range(k, min(n, k + 500))], timeout=60)
    if done is not None:
        done.set()
