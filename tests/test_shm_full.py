"""A full /dev/shm is a clear OSError, never a SIGBUS, and leaves the queue
usable. Runs a child in its own mount namespace with a 2 MiB tmpfs on
/dev/shm (needs `unshare --mount`, i.e. root or CAP_SYS_ADMIN)."""
import shutil
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import errno, os, pyqueue
    try:
        pyqueue.Queue(capacity_bytes=4 << 20)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
        assert "no room" in str(e), e
        # It says how big /dev/shm is and which parameter to lower.
        assert "/dev/shm is 2.0 MiB" in str(e), e
        assert "lower capacity_bytes" in str(e), e
    else:
        raise SystemExit("a 4 MiB queue was created in a 2 MiB /dev/shm")
    assert os.listdir("/dev/shm") == [], os.listdir("/dev/shm")  # nothing half-made left
    q = pyqueue.Queue(capacity_bytes=256 << 10)
    q.put(b"before")
    try:
        q.put(os.urandom(3 << 20))          # out of band: needs 3 MiB more
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    else:
        raise SystemExit("a 3 MiB message fit in a 2 MiB /dev/shm")
    q.put(b"after")
    assert q.get(timeout=5) == b"before"
    assert q.get(timeout=5) == b"after"
    assert [f for f in os.listdir("/dev/shm") if ".oob-" in f] == []
    print("OK")
""")


# Docker's default /dev/shm is 64 MiB: a program with a handful of default
# queues must run there (each one used, out-of-band messages included), and
# closing them gives their memory back.
DOCKER_CHILD = textwrap.dedent("""
    import os, pyqueue
    queues = [pyqueue.Queue() for _ in range(5)]
    for i, q in enumerate(queues):
        q.put_many([i] * 10000)
        q.put(bytes(2 << 20))                  # out of band
    for i, q in enumerate(queues):
        assert q.get_many(10000, timeout=5) == [i] * 10000
        assert q.get(timeout=5) == bytes(2 << 20)
    for q in queues:
        q.close()
    del q, queues
    assert os.listdir("/dev/shm") == [], os.listdir("/dev/shm")
    print("OK")
""")


def _run_in_tmpfs(size, code):
    script = f"mount -t tmpfs -o size={size} tmpfs /dev/shm && exec \"$0\" -c \"$1\""
    return subprocess.run(["unshare", "--mount", "sh", "-c", script, sys.executable, code],
                          capture_output=True, text=True, timeout=60)


def _can_unshare():
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare --mount` (root / CAP_SYS_ADMIN)")
def test_full_dev_shm_is_a_clear_error_not_sigbus():
    r = _run_in_tmpfs("2m", CHILD)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert r.stdout.strip() == "OK"


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare --mount` (root / CAP_SYS_ADMIN)")
def test_five_default_queues_fit_in_dockers_64_mib_dev_shm():
    r = _run_in_tmpfs("64m", DOCKER_CHILD)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert r.stdout.strip() == "OK"
