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
