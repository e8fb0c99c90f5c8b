"""Process liveness and who-has-it-open scans over /proc, for `pyqueue ls`
and `pyqueue gc`.

Pure Python, Linux only; nothing here imports the extension.

Liveness follows csrc/pq_proc.c: a process is identified by its pid and its
start time (field 22 of /proc/PID/stat, clock ticks since boot). A pid whose
start time differs from the recorded one belongs to another process (the pid
was reused), and a zombie counts as dead.

"Who uses a segment" reads every /proc/PID/maps (mappings) and every
/proc/PID/fd/* link (open descriptors). Limits, all erring towards "in
use" where they can: processes in another PID namespace (a container sharing
/dev/shm) are invisible; processes whose /proc files we may not read (another
user's, or /proc mounted with hidepid) are reported in `ShmUsers.hidden`,
and `ShmUsers.maybe_hidden_user` says whether one of them could be using a
given segment (root's processes are not counted there, see it).
"""
import os

SHM_DIR = "/dev/shm"
_DELETED = " (deleted)"


# --------------------------------------------------------------------------
# process identity and liveness
# --------------------------------------------------------------------------

def read_stat(pid):
    """(state letter, start time in clock ticks since boot) of `pid`.
    Raises ProcessLookupError when there is no such process, PermissionError
    when /proc does not let us look, ValueError on an unparsable line."""
    if not isinstance(pid, int) or pid <= 0:
        raise ProcessLookupError(pid)
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            line = f.read()
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    except ProcessLookupError:  # ESRCH: the process exited while we read
        raise
    # The command name (field 2) is in parentheses and may contain spaces
    # and parentheses itself: parse after the last ')'.
    close = line.rfind(b")")
    if close < 0:
        raise ValueError(f"/proc/{pid}/stat: unexpected format")
    fields = line[close + 2:].split()
    if len(fields) < 20:
        raise ValueError(f"/proc/{pid}/stat: unexpected format")
    # fields[0] is field 3 (state); field 22 (starttime) is fields[19].
    return fields[0].decode("ascii", "replace"), int(fields[19])


def start_time(pid):
    """Start time of a live (non-zombie) `pid` in clock ticks since boot, or
    None when it does not exist or is a zombie. Raises PermissionError when
    that cannot be known."""
    try:
        state, started = read_stat(pid)
    except ProcessLookupError:
        return None
    if state in ("Z", "X", "x"):
        return None
    return started


def is_alive(pid, start_ticks=0):
    """True when `pid` runs and, if `start_ticks` is non-zero, is the
    process that started at that time (a reused pid is not alive); False
    when it is dead or a zombie; None when /proc does not tell us."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        actual = start_time(pid)
    except (PermissionError, ValueError, OSError):
        return None
    if actual is None:
        return False
    if start_ticks and actual != start_ticks:
        return False
    return True


_boot_time = None


def boot_time():
    """Unix time of the boot (the `btime` line of /proc/stat; whole seconds)."""
    global _boot_time
    if _boot_time is None:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    _boot_time = float(line.split()[1])
                    break
            else:
                raise OSError("no btime in /proc/stat")
    return _boot_time


def started_at(pid):
    """Unix time at which `pid` started (to about a second), or None when it
    is dead, a zombie or cannot be looked at."""
    try:
        ticks = start_time(pid)
    except (PermissionError, ValueError, OSError):
        return None
    if ticks is None:
        return None
    try:
        return boot_time() + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None


def is_alive_since(pid, before, slack=2.0):
    """Liveness of a process known only by pid that must have existed at
    unix time `before` (it made a file then): True when `pid` runs and
    started no later than `before` (+ slack for clock granularity); False when
    it is dead, a zombie, or a newer process that reuses the pid; None when
    /proc does not tell us."""
    alive = is_alive(pid)
    if not alive:
        return alive
    t = started_at(pid)
    if t is not None and t > before + slack:
        return False  # the pid was reused by a process started later
    return True


# --------------------------------------------------------------------------
# who has a /dev/shm segment mapped or open
# --------------------------------------------------------------------------

def _pids():
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    return [int(n) for n in names if n.isdigit()]


def _proc_uid(pid):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


class ShmUsers:
    """Result of scan(): which live processes map or hold open which
    entries of the shm directory.

    by_entry   entry name -> pids that map it or hold an fd on it (the name
               as it is now in the directory)
    by_inode   (st_dev, st_ino) -> pids that map it (precise: survives a
               rename or a new file of the same name)
    deleted    entry name -> pids that still map or hold an unlinked file
               that had that name ("/dev/shm/NAME (deleted)")
    hidden     [(pid, uid)] of processes whose maps or fds we could not read
    """

    def __init__(self):
        self.by_entry = {}
        self.by_inode = {}
        self.deleted = {}
        self.hidden = []

    def users(self, entry, st=None):
        """Live pids that map or hold open the segment `entry` (with `st`,
        its os.stat result, mappings are also matched by inode)."""
        pids = set(self.by_entry.get(entry, ()))
        if st is not None:
            pids |= self.by_inode.get((st.st_dev, st.st_ino), set())
        return pids

    def deleted_users(self, entry):
        """Live pids that still use an unlinked segment once named `entry`."""
        return set(self.deleted.get(entry, ()))

    def maybe_hidden_user(self, st):
        """True when a process we could not look into could be using a
        segment with stat `st`: it runs as the segment's owner, or the
        segment's mode lets group or others open it. Processes running as
        root are not counted: root sees every process unless it is in
        another user namespace or under an LSM rule (a sandbox's init, say),
        and a non-root scanner cannot inspect root's processes at all; and
        the /proc files of a non-dumpable process (ssh-agent, setuid
        programs) belong to root whoever runs it."""
        hidden = [uid for _, uid in self.hidden if uid != 0]
        if not hidden:
            return False
        if st is None or st.st_mode & 0o077:
            return True
        return st.st_uid in hidden


def scan(prefix="pyqueue.", shm_dir=SHM_DIR):
    """Scan /proc/*/maps and /proc/*/fd for files `shm_dir`/`prefix`*."""
    res = ShmUsers()
    base = shm_dir.rstrip("/") + "/"
    want = base + prefix
    want_b = want.encode()
    me = os.getpid()
    for pid in _pids():
        hidden = False
        # Mappings.
        try:
            with open(f"/proc/{pid}/maps", "rb") as f:
                data = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
        except OSError:
            data = None
            hidden = True
        if data and want_b in data:
            for line in data.splitlines():
                if want_b not in line:
                    continue
                parts = line.split(None, 5)
                if len(parts) < 6:
                    continue
                path = os.fsdecode(parts[5])
                if not path.startswith(want):
                    continue
                deleted = path.endswith(_DELETED)
                if deleted:
                    path = path[:-len(_DELETED)]
                # The kernel writes a '\n' of the path as "\012" in maps.
                entry = path[len(base):].replace("\\012", "\n")
                (res.deleted if deleted else res.by_entry).setdefault(entry, set()).add(pid)
                try:
                    major, minor = (int(x, 16) for x in parts[3].split(b":"))
                    key = (os.makedev(major, minor), int(parts[4]))
                except ValueError:
                    continue
                if not deleted:
                    res.by_inode.setdefault(key, set()).add(pid)
        # Open descriptors.
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except (FileNotFoundError, ProcessLookupError):
            continue
        except OSError:
            fds = ()
            hidden = True
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if not target.startswith(want):
                continue
            deleted = target.endswith(_DELETED)
            if deleted:
                target = target[:-len(_DELETED)]
            entry = target[len(base):]
            (res.deleted if deleted else res.by_entry).setdefault(entry, set()).add(pid)
        if hidden and pid != me:
            uid = _proc_uid(pid)
            if uid is not None:
                res.hidden.append((pid, uid))
    return res
