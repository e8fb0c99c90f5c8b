"""Another local user cannot get in.  These tests act as a second local
user (tests/_support.run_as_other_user: a forked child that dropped to the
uid .ci/run creates and names in $PYQUEUE_OTHER_USER); they skip, with the
reason, when the run is not root or has no such user -- and in CI (as root)
a skip of theirs fails the run (tests/allowed_skips.txt)."""
import os
import shutil
import tempfile

import pytest

import pyqueue
import pyqueue.cli  # noqa: F401 -- imported before the fork: the child may not read the tree
from pyqueue import Log, Topic, WorkQueue
from tests._support import close_handles, read_bytes, run_as_other_user, shm_file, unique_name

RING = 65536

KINDS = {
    "Queue": (lambda name: pyqueue.Queue(name=name, capacity_bytes=RING),
              pyqueue.Queue.open, lambda h: (h.put("secret"), h.qsize())),
    "Topic": (lambda name: Topic(name=name, capacity_bytes=RING),
              Topic.open, lambda h: h.publish("secret")),
    "Log": (lambda name: Log(name=name),
            Log.open, lambda h: h.append("secret")),
    "WorkQueue": (lambda name: WorkQueue(name=name),
                  WorkQueue.open, lambda h: h.put("secret")),
}


def _open_as_other(open_fn, create_fn, name):
    """In the other user's process: open by name, then create-or-open; the
    exception each one raised (None if it got in)."""
    got = []
    for fn in (open_fn, create_fn):
        try:
            h = fn(name)
        except Exception as exc:  # noqa: BLE001 -- reported to the test
            got.append(exc)
        else:
            h.close()
            got.append(None)
    return got


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_other_user_cannot_open_a_default_segment(kind):
    """A segment made with the default mode (0600) by one user cannot be
    opened -- nor taken over by create-or-open -- by another user, and is
    left as it was."""
    out, name = _try_as_other(kind)
    assert all(exc is not None for exc in out.value), out.value


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_other_user_gets_a_permission_error_naming_the_segment(kind):
    out, name = _try_as_other(kind)
    for exc in out.value:
        assert isinstance(exc, PermissionError), out.value
        assert name in str(exc), exc


def _try_as_other(kind):
    """Make a `kind` by name with the default mode, have the other user try
    to open it both ways, check that nothing changed and that the owner's
    handle still works.  (the Outcome, the name)"""
    create, open_fn, use = KINDS[kind]
    name = unique_name("perm")
    h = create(name)
    try:
        use(h)
        assert os.stat(shm_file(name)).st_mode & 0o777 == 0o600
        before = read_bytes(shm_file(name), 1 << 20)  # control block and first records
        out = run_as_other_user(_open_as_other, open_fn, create, name)
        assert out.exc is None, out
        assert len(out.value) == 2
        assert read_bytes(shm_file(name), 1 << 20) == before
        use(h)  # still the owner's, and working
    finally:
        close_handles([h])
    return out, name


def _read_dir_log(path):
    # The directory above must be reachable, or the test proves nothing.
    got = {"parent_reachable": os.access(os.path.dirname(path), os.X_OK)}
    try:
        lg = Log(path=path)
    except Exception as exc:  # noqa: BLE001
        got["open"] = exc
    else:
        got["open"] = None
        got["records"] = [r.value for r in lg.read(0, 0, max_records=10)]
        lg.close()
    # Every file of the log, as deep as this user can list.
    for top, _dirs, files in os.walk(path):
        for entry in files:
            try:
                with open(os.path.join(top, entry), "rb") as f:
                    if b"secret" in f.read():
                        got.setdefault("readable", []).append(
                            os.path.relpath(os.path.join(top, entry), path))
            except OSError:
                pass
    return got


def test_other_user_cannot_read_a_directory_log():
    """A directory-mode log root makes is closed to another user: it cannot
    open it, and none of its files that hold records can be read."""
    # Not tmp_path: pytest's base temp directory is 0700, which would keep
    # the other user out whatever the log does.  Here only the log can.
    parent = tempfile.mkdtemp(prefix="pqtest-perm-", dir="/tmp")
    os.chmod(parent, 0o755)
    path = os.path.join(parent, "log")
    lg = Log(path=path)
    try:
        lg.append("secret")
        out = run_as_other_user(_read_dir_log, path)
        assert out.exc is None, out
        assert out.value["parent_reachable"], out.value
        assert isinstance(out.value["open"], PermissionError), out.value
        assert "records" not in out.value
        assert out.value.get("readable", []) == []
    finally:
        lg.close()
        shutil.rmtree(parent)
