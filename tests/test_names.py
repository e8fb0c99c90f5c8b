"""Segment names (issue 9, items 3, 4 and the wrong-kind message of 17):

- the byte limit of a name in UTF-8, checked up front for every kind, with
  room for the longest suffix pyqueue adds (".oob-<pid>-<16 hex>");
- out-of-band names that cannot be guessed, a collision retried, and no
  exception of another library (posix_ipc) ever reaching a user;
- the exit-time cleanup of unnamed queues goes on past a segment it may
  not remove;
- opening a segment of another kind names the kind asked for and the kind
  found.
Workers live in this module: spawn children import it as tests.test_names.
"""
import os
import re

import pytest

from tests._support import SHM_DIR, list_pyqueue_segments, remove_segment_file, unique_name

pytestmark = pytest.mark.usefixtures("pyqueue_mod")

CAP = 65536
WAIT = 30.0
LIMIT = 200  # bytes of a name in UTF-8 (docs/api.md, "Names")


def _kinds():
    import pyqueue

    return {
        "Queue": lambda n: pyqueue.Queue(name=n, capacity_bytes=CAP),
        "JoinableQueue": lambda n: pyqueue.JoinableQueue(name=n, capacity_bytes=CAP),
        "SimpleQueue": lambda n: pyqueue.SimpleQueue(name=n, capacity_bytes=CAP),
        "Topic": lambda n: pyqueue.Topic(n, capacity_bytes=CAP),
        "Log": lambda n: pyqueue.Log(n, partitions=1, retention_bytes=CAP),
        "WorkQueue": lambda n: pyqueue.WorkQueue(n, capacity_bytes=CAP, max_in_flight=64,
                                                 dedup_keys=64),
        "WorkQueue dead_letter": lambda n: pyqueue.WorkQueue(
            unique_name("dlq-owner"), capacity_bytes=CAP, max_in_flight=64, dedup_keys=64,
            dead_letter=n),
    }


KINDS = ["Queue", "JoinableQueue", "SimpleQueue", "Topic", "Log", "WorkQueue",
         "WorkQueue dead_letter"]


def _mine(name):
    return {e for e in list_pyqueue_segments() if e.startswith("pyqueue." + name)}


@pytest.fixture
def cleanup_names():
    made = []
    yield made
    for prefix in made:
        for e in list_pyqueue_segments():
            if e.startswith("pyqueue." + prefix):
                remove_segment_file(e)


# -- item 4: the limit in bytes --------------------------------------------------------

def _name_of(nbytes, char):
    """A unique name of exactly nbytes in UTF-8, mostly `char` (multibyte)."""
    head = "pqtest-n%d-" % os.getpid()
    width = len(char.encode())
    body = (nbytes - len(head)) // width
    name = head + char * body
    name += "x" * (nbytes - len(name.encode()))
    assert len(name.encode()) == nbytes
    return name


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("char", ["é", "€", "😀"], ids=["2-byte", "3-byte", "4-byte"])
def test_name_at_the_byte_limit_works(kind, char, cleanup_names):
    name = _name_of(LIMIT, char)
    cleanup_names.append(name)
    h = _kinds()[kind](name)
    try:
        assert os.path.exists(os.path.join(SHM_DIR, "pyqueue." + name))
        if kind in ("Queue", "JoinableQueue", "SimpleQueue"):
            # The longest suffix pyqueue adds fits too: a large message
            # travels in "<name>.oob-<pid>-<16 hex>".
            big = os.urandom(3 * CAP)
            h.put(big)
            assert any(".oob-" in e for e in _mine(name))
            assert h.get(timeout=WAIT) == big
    finally:
        h.close()
        for e in _mine(name):
            remove_segment_file(e)
        if kind == "WorkQueue dead_letter":  # the queue that owns the dead-letter queue
            for e in _mine(h.name):
                remove_segment_file(e)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("nbytes,char", [(LIMIT + 1, "é"), (LIMIT + 2, "😀"), (300, "é"),
                                         (380, "é")], ids=["201", "202", "300", "380"])
def test_name_over_the_byte_limit_is_refused_up_front(kind, nbytes, char, cleanup_names):
    name = _name_of(nbytes, char)
    assert len(name) <= LIMIT  # within the old limit in characters
    cleanup_names.append(name)
    with pytest.raises(ValueError) as info:
        _kinds()[kind](name)
    msg = str(info.value)
    assert f"{nbytes} bytes in UTF-8" in msg and f"at most {LIMIT} bytes" in msg, msg
    assert "Invalid parameter" not in msg
    assert not _mine(name)


def test_open_and_unnameable_names():
    import pyqueue

    name = _name_of(LIMIT + 1, "é")
    for opener in (pyqueue.Queue.open, pyqueue.Topic.open, pyqueue.WorkQueue.open,
                   pyqueue.Log.open):
        with pytest.raises(ValueError, match="bytes in UTF-8"):
            opener(name)
    with pytest.raises(ValueError, match="not encodable in UTF-8"):
        pyqueue.Queue(name="pqtest-\udc80")


# -- item 3: out-of-band names -------------------------------------------------------

def test_out_of_band_names_are_random(make_queue):
    name = make_queue.unique_name("oobname")
    q = make_queue.Queue(name=name, capacity_bytes=CAP)
    before = set()
    names = []
    for _ in range(3):
        q.put(os.urandom(3 * CAP))
        now = _mine(name)
        (new,) = now - before - {"pyqueue." + name}
        before = now
        names.append(new)
        assert re.fullmatch(re.escape(f"pyqueue.{name}.oob-{os.getpid()}-") + "[0-9a-f]{16}",
                            new), new
    assert len({n.rsplit("-", 1)[1] for n in names}) == 3
    for _ in range(3):
        q.get(timeout=WAIT)
    assert _mine(name) == {"pyqueue." + name}


def _plant(entry, content=b"planted", owner=None):
    path = os.path.join(SHM_DIR, entry)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)
    if owner is not None:
        os.chown(path, owner, owner)
    return path


def test_planted_out_of_band_name_is_retried(make_queue, monkeypatch):
    """Names planted for the first random suffixes drawn (another user who
    guessed them): the put retries with new ones, leaves the planted files
    alone, and the message arrives. When every try collides, the error is
    FileExistsError (an OSError), never another library's exception, and
    the queue stays usable."""
    from pyqueue import _oob

    name = make_queue.unique_name("plant")
    q = make_queue.Queue(name=name, capacity_bytes=CAP)
    tokens = ["%016x" % i for i in range(1, 4)]
    planted = [_plant(f"pyqueue.{name}.oob-{os.getpid()}-{t}") for t in tokens[:2]]
    draws = iter(tokens)
    monkeypatch.setattr(_oob, "_token", lambda: next(draws))
    big = os.urandom(3 * CAP)
    q.put(big)
    assert os.path.exists(os.path.join(SHM_DIR, f"pyqueue.{name}.oob-{os.getpid()}-{tokens[2]}"))
    assert q.get(timeout=WAIT) == big
    for path in planted:
        with open(path, "rb") as f:
            assert f.read() == b"planted"

    monkeypatch.setattr(_oob, "_token", lambda: tokens[0])  # always taken
    with pytest.raises(FileExistsError, match="random names were all taken"):
        q.put(big)
    assert q.qsize() == 0
    monkeypatch.undo()
    q.put(big)
    assert q.get(timeout=WAIT) == big
    for path in planted:
        os.unlink(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file of another user")
def test_other_users_segment_errors_are_oserrors(ctx):
    """A segment another user made with mode 0600 under a name this process
    opens or removes: PermissionError (an OSError) with the segment's name,
    never posix_ipc's exceptions. (Root is refused nothing by the kernel,
    so the opener drops to uid nobody for the check, in a child.)"""
    name = unique_name("perm")
    path = _plant("pyqueue." + name, b"x" * 4096)
    os.chmod(path, 0o600)
    try:
        r, w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_open_as_nobody, args=(name, w))
        p.start()
        w.close()
        got = r.recv()
        p.join(WAIT)
        assert p.exitcode == 0
    finally:
        os.unlink(path)
    assert got["open"][0] == "PermissionError" and name in got["open"][1], got
    assert got["unlink"][0] == "PermissionError" and name in got["unlink"][1], got


def _open_as_nobody(name, conn):
    import pyqueue

    os.setgid(65534)
    os.setuid(65534)
    out = {}
    for what, fn in (("open", lambda: pyqueue.Queue.open(name, trust_owner=True)),
                     ("unlink", lambda: pyqueue.Queue.unlink(_Named(name)))):
        try:
            fn()
            out[what] = ("no error", "")
        except Exception as e:  # noqa: BLE001 - the test reports the class
            out[what] = (type(e).__name__, str(e))
    conn.send(out)


class _Named:
    def __init__(self, name):
        self._name = name


# -- item 3: cleanup goes on past a segment it may not remove -----------------------------

def make_three_and_exit(conn, go, drop_to):
    """Make 3 unnamed queues, each with a large message waiting (an
    out-of-band segment), report their names, wait for `go`, exit normally
    (the exit hooks remove them). drop_to: an effective uid to run as."""
    import pyqueue

    if drop_to is not None:
        os.setegid(drop_to)
        os.seteuid(drop_to)
    qs = [pyqueue.Queue(capacity_bytes=CAP) for _ in range(3)]
    for q in qs:
        q.put(os.urandom(3 * CAP))
    conn.send([q.name for q in qs])
    if not go.wait(WAIT):
        os._exit(3)


OBSTACLES = ["directory"] + (["other-user", "replaced"] if os.geteuid() == 0 else [])


@pytest.mark.parametrize("obstacle", OBSTACLES)
def test_exit_cleanup_goes_on_past_a_segment_it_may_not_remove(ctx, procs, obstacle):
    """Three unnamed queues; under the second one's prefix sits an
    out-of-band name the exiting process may not remove (a directory, which
    unlink() refuses to anyone; or, as root, a file of root's in the sticky
    /dev/shm while the process runs as nobody), or ("replaced") the second
    queue's own name is now a file of root's that the process, running as
    nobody, may not remove. The cleanup removes everything else: all three
    queues (but a replaced one) and their out-of-band segments."""
    drop_to = None if obstacle == "directory" else 65534
    r, w = ctx.Pipe(duplex=False)
    go = ctx.Event()
    p = procs.start(ctx, make_three_and_exit, w, go, drop_to)
    w.close()
    assert r.poll(WAIT)
    names = r.recv()
    assert len(names) == 3
    obstacle_entry = f"pyqueue.{names[1]}.oob-1-{'0' * 16}"
    if obstacle == "replaced":
        obstacle_entry = f"pyqueue.{names[1]}"
    path = os.path.join(SHM_DIR, obstacle_entry)
    try:
        if obstacle == "directory":
            os.mkdir(path, 0o700)
        else:
            if obstacle == "replaced":
                os.unlink(path)
            _plant(obstacle_entry, owner=0)
        assert all(len(_mine(n)) == 2 for n in (names[0], names[2]))
        go.set()
        p.join(WAIT)
        assert p.exitcode == 0
        left = {e for n in names for e in _mine(n)}
        assert left == {obstacle_entry}, left
    finally:
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        elif os.path.lexists(path):
            os.unlink(path)
        for n in names:
            for e in _mine(n):
                remove_segment_file(e)


# -- item 17: a segment of another kind ---------------------------------------------------

def _openers():
    import pyqueue

    return {
        "queue": lambda n: pyqueue.Queue.open(n),
        "queue (created)": lambda n: pyqueue.Queue(name=n),
        "JoinableQueue": lambda n: pyqueue.JoinableQueue.open(n),
        "topic": lambda n: pyqueue.Topic.open(n),
        "topic (created)": lambda n: pyqueue.Topic(n),
        "log": lambda n: pyqueue.Log.open(n),
        "log (created)": lambda n: pyqueue.Log(n),
        "work queue": lambda n: pyqueue.WorkQueue.open(n),
        "work queue (created)": lambda n: pyqueue.WorkQueue(n),
    }


def _asked_kind(asked):
    return {"JoinableQueue": "queue"}.get(asked, asked.split(" (")[0])


WRONG_KINDS = [(made, asked) for made in ("queue", "topic", "log", "work queue")
               for asked in ("queue", "queue (created)", "JoinableQueue", "topic",
                             "topic (created)", "log", "log (created)", "work queue",
                             "work queue (created)")
               if _asked_kind(asked) != made]


@pytest.mark.parametrize("made,asked", WRONG_KINDS)
def test_wrong_kind_names_both_kinds(made, asked, cleanup_names):
    import pyqueue

    asked_kind = _asked_kind(asked)
    name = unique_name("kind")
    cleanup_names.append(name)
    h = {"queue": lambda: pyqueue.Queue(name=name, capacity_bytes=CAP),
         "topic": lambda: pyqueue.Topic(name, capacity_bytes=CAP),
         "log": lambda: pyqueue.Log(name, partitions=1, retention_bytes=CAP),
         "work queue": lambda: pyqueue.WorkQueue(name, capacity_bytes=CAP, max_in_flight=64,
                                                 dedup_keys=64)}[made]()
    try:
        with pytest.raises(pyqueue.SegmentMismatch) as info:
            _openers()[asked](name)
        assert f"is a pyqueue {made}, not a {asked_kind}" in str(info.value), info.value
    finally:
        h.unlink()
        h.close()


def test_planted_unnamed_queue_name_is_retried(monkeypatch):
    """The name an unnamed queue draws exists already (planted): another
    one is drawn; the planted file is left alone."""
    import pyqueue
    from pyqueue import _segment

    taken = f"anon-{os.getpid()}-{'ab' * 8}"
    fresh = f"anon-{os.getpid()}-{'cd' * 8}"
    path = _plant("pyqueue." + taken)
    draws = iter([taken, fresh])
    monkeypatch.setattr(_segment, "unique_name", lambda: next(draws))
    try:
        q = pyqueue.Queue(capacity_bytes=CAP)
        assert q.name == fresh
        q.put("ok")
        assert q.get(timeout=WAIT) == "ok"
        q.close()
        q.unlink()
        with open(path, "rb") as f:
            assert f.read() == b"planted"
    finally:
        os.unlink(path)
