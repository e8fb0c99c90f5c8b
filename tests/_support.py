"""Helpers shared by the tests and the conftest (no pytest fixtures here)."""

import contextlib
import importlib.util
import os
import re
import threading
import time
import uuid

SHM_DIR = "/dev/shm"

# pyqueue maps a name N (of a Queue, Topic, Log or WorkQueue, and of the
# dead-letter WorkQueue one names) to the POSIX shared-memory name
# "/pyqueue.N" (/dev/shm/pyqueue.N); unnamed ones are "anon-<pid>-<hex>" and
# out-of-band messages use "/pyqueue.N.oob-<pid>-<n>".  Consumer groups live
# inside their log's segment and directory logs in their directory (the
# tests' tmp_path), so they need no pattern here.  The leak check also
# watches "pq*" (the prefix of the names the tests hand out) in case that
# mapping changes.
SHM_PREFIX = "pyqueue."
SEGMENT_PREFIXES = ("pyqueue", "pq", "sem.pyqueue", "sem.pq")
# A pid embedded in a segment name: the first all-digit field between dashes
# ("anon-<pid>-", "N.oob-<pid>-<n>", "pqtest-<tag>-<pid>-" from unique_name()
# below, "topic-<pid>-<ns>" and any other "<word>-<pid>-..." a test makes up).
_PID_RE = re.compile(r"(?:^|[-.])[A-Za-z_][A-Za-z0-9_]*-(\d+)(?:-|$)")


def pyqueue_available():
    """True once the real package exists (not the bare source directory,
    which imports as an empty namespace package)."""
    spec = importlib.util.find_spec("pyqueue")
    return spec is not None and spec.origin not in (None, "namespace")


def list_pyqueue_segments():
    try:
        entries = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return set()
    return {e for e in entries if e.startswith(SEGMENT_PREFIXES)}


def proc_state(pid):
    """The state letter of /proc/PID/stat ("R", "S", "T", "Z", ...), None
    when the process is gone (also when it goes while the file is read:
    the read then fails with ESRCH)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def proc_gone(pid):
    """Whether the process is gone or a zombie (dead, not yet reaped)."""
    return proc_state(pid) in (None, "Z", "X")


def _parent_pid(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _is_self_or_descendant(pid):
    me = os.getpid()
    for _ in range(64):
        if pid == me:
            return True
        if pid is None or pid <= 1:
            return False
        pid = _parent_pid(pid)
    return False


def _creator_pid(entry):
    """The creator pid recorded in the header of pyqueue segment
    /dev/shm/<entry>, or None (no header yet, not a pyqueue segment, gone,
    or pyqueue not importable)."""
    try:
        from pyqueue import cli
        _state, header, _st = cli.read_header(entry)
    except Exception:
        return None
    if header is None or header.get("creator_pid", 0) <= 0:
        return None
    return header["creator_pid"]


# Whether a segment named with the pid of a process that is gone counts as
# a leak of this run: when that process was a child this run started
# (CHILD_PIDS, filled by tests/conftest.py from every multiprocessing
# Process.start() and subprocess.Popen of the test process), or, with
# PYQUEUE_SOLE_RUN=1 (a machine where this run is the only pyqueue user),
# whoever it was.  Without it, another test run or benchmark may be going on
# beside this one, and its dead children's segments are not ours to blame
# or remove.  A pid is reused (pid_max is 32768 here), and a run in
# pytest-xdist workers has others' processes beside it: the leak check
# of a test blames only the children started since it began (CHILD_PIDS
# keeps when each was noted), not a pid a child of an earlier test once
# had and another worker's process has now (a CI run blamed, and
# removed, the segment of another worker's test).
SOLE_RUN = os.environ.get("PYQUEUE_SOLE_RUN", "") not in ("", "0")
CHILD_PIDS = {}   # pid -> time.monotonic() when it was noted


def note_child(pid):
    if pid:
        CHILD_PIDS[pid] = time.monotonic()


def segment_belongs_to_this_run(entry, started=None, sole_run=None):
    """Filter for the leak check, which must never blame (or remove) the
    segments of other programs using pyqueue at the same time (benchmarks,
    another test run).  A segment is taken as ours when the first pid in its
    name is this process, a live descendant of it, or a child of this
    process that is gone, started at or after `started` (time.monotonic();
    None: any time) (or, sole_run, default SOLE_RUN: any process that is
    gone -- someone else's leak is a leak all the same); and, whatever its
    name, when the creator pid in its header is this process or a live
    descendant (a segment a test named without a pid)."""
    sole_run = SOLE_RUN if sole_run is None else sole_run
    m = _PID_RE.search(entry[len(SHM_PREFIX):] if entry.startswith(SHM_PREFIX) else entry)
    if m:
        pid = int(m.group(1))
        if _is_self_or_descendant(pid):
            return True
        noted = CHILD_PIDS.get(pid)
        child = noted is not None and (started is None or noted >= started)
        if (sole_run or child) and not os.path.exists("/proc/%d" % pid):
            return True
    creator = _creator_pid(entry)
    return creator is not None and _is_self_or_descendant(creator)


def unique_name(tag="t"):
    return "pqtest-%s-%d-%s" % (tag, os.getpid(), uuid.uuid4().hex[:12])


def posix_name(queue_name):
    """The POSIX shared-memory name of the queue called ``queue_name``."""
    return "/" + SHM_PREFIX + queue_name


def shm_file(queue_name):
    """The /dev/shm path of the queue called ``queue_name``."""
    return os.path.join(SHM_DIR, SHM_PREFIX + queue_name)


def segment_exists(queue_name):
    return os.path.exists(shm_file(queue_name))


def remove_segment_file(entry):
    """Remove /dev/shm/<entry> (an entry name as listed in /dev/shm)."""
    try:
        os.unlink(os.path.join(SHM_DIR, entry))
    except FileNotFoundError:
        pass


def queue_segments(queue_name):
    """/dev/shm entries of one queue: its own and its out-of-band ones."""
    base = SHM_PREFIX + queue_name
    return {
        entry
        for entry in list_pyqueue_segments()
        if entry == base or entry.startswith(base + ".oob-")
    }


def oob_segments(queue_name):
    return queue_segments(queue_name) - {SHM_PREFIX + queue_name}


def interrupt_oob_unlinks(monkeypatch):
    """Make every unlink of an out-of-band segment by a handle
    (pyqueue._oob.discard) raise KeyboardInterrupt before it happens, as a
    Ctrl-C landing there would; the references it was given are appended to
    the list returned. monkeypatch.undo() puts the real one back."""
    from pyqueue import _oob
    calls = []

    def interrupted(handle, ref):
        calls.append(ref)
        raise KeyboardInterrupt

    monkeypatch.setattr(_oob, "discard", interrupted)
    return calls


def remove_queue_segments(queue_name):
    """Remove a queue's segment and its out-of-band leftovers, if any."""
    for entry in queue_segments(queue_name):
        remove_segment_file(entry)


def wait_until(predicate, timeout=10.0, interval=0.002):
    """Poll ``predicate`` until it is true or ``timeout`` passes (a deadline,
    not a settle-sleep).  Returns the last value of the predicate."""
    deadline = time.monotonic() + timeout
    waiter = threading.Event()
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        waiter.wait(interval)


def payload(producer, seq, size):
    """Deterministic payload for message (producer, seq)."""
    return bytes([(producer * 31 + seq) % 251]) * size


def drain(q):
    """Everything a queue holds now (get_nowait until Empty)."""
    import queue as _queue
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except _queue.Empty:
            return out


def read_bytes(path, limit=-1):
    """The bytes of a file (its first `limit` bytes: a queue's file is as
    big as the regions its ring may grow into, sparse)."""
    with open(path, "rb") as f:
        return f.read(limit)


def assert_appenders_in_order(recs, tags, n):
    """Log records of appenders that each appended (tag, 0), ..., (tag, n-1)
    to one partition: dense offsets from 0, and every tag's in order."""
    assert [r.offset for r in recs] == list(range(len(tags) * n))
    for tag in tags:
        assert [i for t, i in (r.value for r in recs) if t == tag] == list(range(n))


# --------------------------------------------------------------------------
# exception-safe teardown
# --------------------------------------------------------------------------

# Errors that only say a test already did the cleanup step itself.
ALREADY_GONE = (FileNotFoundError, ProcessLookupError)


def run_cleanups(steps):
    """Run every step of a teardown (callables), whatever the earlier ones
    raised: a test that already closed or unlinked something, or one step
    that fails, must not leave the rest leaked.  Errors saying the thing is
    already gone are ignored; the first other error is re-raised once every
    step has run."""
    first = None
    for step in steps:
        try:
            step()
        except ALREADY_GONE:
            pass
        except BaseException as exc:  # noqa: B902 -- re-raised below
            if first is None:
                first = exc
    if first is not None:
        raise first


def close_handles(handles, unlink=lambda h: True):
    """Teardown of pyqueue handles: unlink (where ``unlink(h)`` says so and the
    handle has a name) then close each one, every step run even when an
    earlier one raised (see run_cleanups).  A handle a test closed or
    unlinked already is fine."""
    steps = []
    for h in handles:
        if unlink(h) and hasattr(h, "unlink"):
            steps.append(_tolerant(h.unlink))
        steps.append(_tolerant(h.close))
    run_cleanups(steps)


def _tolerant(step):
    """step(), where a ValueError saying the handle is closed means done."""
    def run():
        try:
            step()
        except ValueError as exc:
            if "closed" not in str(exc):
                raise
    return run


# --------------------------------------------------------------------------
# a second local user (permission tests)
# --------------------------------------------------------------------------

OTHER_USER_ENV = "PYQUEUE_OTHER_USER"


def other_user():
    """(name, uid, gid) of the second local user that .ci/run creates when it
    runs as root (its name is in $PYQUEUE_OTHER_USER), or pytest.skip with
    the reason it cannot be used here."""
    import pwd

    import pytest

    name = os.environ.get(OTHER_USER_ENV, "")
    if not name:
        pytest.skip("needs a second local user: run as root with %s set "
                    "(.ci/run creates one)" % OTHER_USER_ENV)
    if os.geteuid() != 0:
        pytest.skip("needs root to act as the second local user %r" % name)
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        pytest.skip("%s=%r names no local user" % (OTHER_USER_ENV, name))
    if pw.pw_uid == 0:
        raise AssertionError("%s=%r is root, not another user" % (OTHER_USER_ENV, name))
    return name, pw.pw_uid, pw.pw_gid


class Outcome:
    """What a function run as another user did: ``value`` when it returned,
    ``exc`` (the exception, or a RuntimeError describing one that would not
    pickle) when it raised."""

    def __init__(self, value=None, exc=None):
        self.value = value
        self.exc = exc

    def __repr__(self):
        return "Outcome(value=%r, exc=%r)" % (self.value, self.exc)


def run_as_other_user(fn, *args, timeout=30.0):
    """Run ``fn(*args)`` in a forked child that has dropped every privilege
    to the second local user (see other_user(); skips when there is none)
    and return its Outcome.  The child is forked, not exec'd: the interpreter
    and the test tree may lie where that user cannot read (/root is 0700),
    and what fn needs is imported already.  Import what fn uses (pyqueue's
    modules) before calling this.  The child is killed at the deadline."""
    import pickle
    import select
    import signal

    _name, uid, gid = other_user()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child
        code = 0
        try:
            os.close(r)
            try:
                os.setgroups([])
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
                if os.geteuid() != uid or os.getegid() != gid:
                    raise RuntimeError("could not drop to uid %d" % uid)
                result = Outcome(value=fn(*args))
            except BaseException as exc:  # noqa: B902 -- reported to the parent
                result = Outcome(exc=exc)
            try:
                data = pickle.dumps(result)
            except Exception:
                data = pickle.dumps(Outcome(exc=RuntimeError(
                    "%s: %s" % (type(result.exc or result.value).__qualname__,
                                result.exc if result.exc is not None else "unpicklable value"))))
            view = memoryview(data)
            while view:
                view = view[os.write(w, view):]
            os.close(w)
        except BaseException:  # noqa: B902
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("the function run as the other user did not finish "
                                     "within %.0f s" % timeout)
            ready, _, _ = select.select([r], [], [], left)
            if ready:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(r)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(pid, 0)
    if not chunks:
        raise AssertionError("the child run as the other user reported nothing "
                             "(wait status %r)" % status)
    return pickle.loads(b"".join(chunks))


# --------------------------------------------------------------------------
# CI: skips must be on an explicit list
# --------------------------------------------------------------------------

ALLOWED_SKIPS_FILE = os.environ.get("PYQUEUE_ALLOWED_SKIPS") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "allowed_skips.txt")


class AllowedSkip:
    def __init__(self, pattern, reason_glob, why, nonroot_only, line):
        self.pattern = pattern
        self.reason_glob = reason_glob
        self.why = why
        self.nonroot_only = nonroot_only
        self.line = line

    def matches(self, nodeid, reason, is_root):
        import fnmatch
        if self.nonroot_only and is_root:
            return False
        return (fnmatch.fnmatchcase(nodeid, self.pattern)
                and fnmatch.fnmatchcase(reason, self.reason_glob))


def load_allowed_skips(path=ALLOWED_SKIPS_FILE):
    """Entries of tests/allowed_skips.txt (see its header for the format).
    A malformed line is an error, never silently ignored."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            nonroot = False
            if line.startswith("nonroot:"):
                nonroot = True
                line = line[len("nonroot:"):].strip()
            parts = [p.strip() for p in line.split(" | ")]
            if len(parts) != 3 or not all(parts):
                raise ValueError("%s:%d: expected 'NODEID-GLOB | REASON-GLOB | WHY', got %r"
                                 % (path, n, raw.rstrip("\n")))
            entries.append(AllowedSkip(parts[0], parts[1], parts[2], nonroot, n))
    return entries


def unapproved_skips(skips, entries, is_root):
    """[(nodeid, reason)] of ``skips`` that no entry allows."""
    return [(nodeid, reason) for nodeid, reason in skips
            if not any(e.matches(nodeid, reason, is_root) for e in entries)]


def spawn_twins(nodeids):
    """The ids among nodeids that run a test under the spawn start method
    and have a twin run under fork: the same id with the parameter id
    "spawn" (one "-"-separated token of the brackets) as "fork". CI's
    ASan run leaves them out (PYQUEUE_SKIP_SPAWN_TWINS=1, tests/conftest.py):
    under ASan a spawned child's fresh interpreter costs most of the run,
    and what it runs in C is what a forked child runs, but for opening
    its handles by name when it unpickles them - which the in-process
    open and pickle tests and the spawn-only and forkserver tests (10)
    still drive there. The plain run keeps both."""
    ids = set(nodeids)
    twins = set()
    for nodeid in ids:
        head, sep, params = nodeid.partition("[")
        if not sep or not params.endswith("]"):
            continue
        tokens = params[:-1].split("-")
        for i, token in enumerate(tokens):
            if token == "spawn":
                fork = head + "[" + "-".join(tokens[:i] + ["fork"] + tokens[i + 1:]) + "]"
                if fork in ids:
                    twins.add(nodeid)
                    break
    return twins


@contextlib.contextmanager
def address_space_left(headroom):
    """RLIMIT_AS set `headroom` bytes above what this process maps now
    (its VmSize), so that a larger mapping or malloc fails; put back on
    leaving."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, ((kb << 10) + headroom, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
