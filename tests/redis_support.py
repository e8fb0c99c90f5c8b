"""Real Redis servers for the tests: Debian's redis-server, started here.

* `RedisServer(dir)`: one server on a Unix socket in `dir` (no TCP port).
* `tcp_server(dir)`: one that also listens on a free loopback port (`port`),
  for a replica to follow.
* `RedisCluster(dir)`: 3 masters + 3 replicas on loopback ports, made with
  `redis-cli --cluster create ... --cluster-replicas 1` (`replicas=0`: the
  3 masters alone, as bench/redis_compare.py starts it).

No server outlives the test run: each one is stopped by `stop()` (the
fixtures' teardown), by an atexit hook if the run ends without teardown,
and by the kernel (PR_SET_PDEATHSIG: SIGKILL when the process that started
it dies, even by SIGKILL).
"""
import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
START_TIMEOUT = 30.0

_PR_SET_PDEATHSIG = 1
_live = set()


def available():
    return REDIS_SERVER is not None and REDIS_CLI is not None


def _die_with_parent():
    # In the child between fork and exec: SIGKILL when the parent dies.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _env():
    # The servers are not under test: not under the sanitizer stage's
    # LD_PRELOAD=libasan either.
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def _spawn(args, log):
    with open(log, "wb") as out:
        p = subprocess.Popen([REDIS_SERVER, *args], stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, env=_env())
    _live.add(p)
    return p


def _stop(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
    _live.discard(p)


@atexit.register
def _stop_all():
    for p in list(_live):
        _stop(p)


def _cli(*args, timeout=30):
    return subprocess.run([REDIS_CLI, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=_env())


def _wait_until(what, check, procs, logs, timeout=START_TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        for p, log in zip(procs, logs):
            if p.poll() is not None:
                with open(log, errors="replace") as f:
                    raise RuntimeError(f"redis-server exited ({p.returncode}) while waiting "
                                       f"for {what}:\n{f.read()[-2000:]}")
        if check():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis: {what} not reached in {timeout}s")
        time.sleep(0.02)  # polling a server's readiness, with a deadline


_COMMON = ["--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no",
           "--loglevel", "warning"]


class RedisServer:
    """One redis-server on a Unix socket in `directory`."""

    def __init__(self, directory, *extra):
        self.dir = directory
        self.sock = os.path.join(directory, "redis.sock")
        self.log = os.path.join(directory, "redis.log")
        self.url = f"redis+unix://{self.sock}"
        self.proc = _spawn(["--port", "0", "--unixsocket", self.sock, "--unixsocketperm", "700",
                            "--dir", directory, *_COMMON, *extra], self.log)

        def ready():
            r = _cli("-s", self.sock, "ping")
            return r.returncode == 0 and r.stdout.strip() == "PONG"

        try:
            _wait_until("PING", ready, [self.proc], [self.log])
        except BaseException:
            self.stop()
            raise

    def stop(self):
        _stop(self.proc)


def _free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tcp_server(directory, attempts=5):
    """A RedisServer (in a new directory under `directory`) that also
    listens on a free loopback port, its `port`; tried on other ports, as
    RedisCluster is, when one is taken between _free_ports and the bind
    (another test, another pytest-xdist worker)."""
    for attempt in range(attempts):
        port = _free_ports(1)[0]
        d = os.path.join(directory, f"try{attempt}-{port}")
        os.makedirs(d)
        try:
            server = RedisServer(d, "--port", str(port), "--bind", "127.0.0.1")
        except RuntimeError:
            if attempt == attempts - 1:
                raise
            continue
        server.port = port
        return server


class RedisCluster:
    """3 masters + 3 replicas on 127.0.0.1, one directory each; each node
    also listens on a Unix socket (`socks`, in the order of `ports`), for
    a CuttingProxy in front of one node."""

    MASTERS = 3

    def __init__(self, directory, attempts=3, replicas=1):
        self.replicas = replicas
        for attempt in range(attempts):
            try:
                self._start(directory, attempt)
                return
            except RuntimeError:
                # Most likely a port taken between _free_ports and the
                # server's bind: try other ports.
                if attempt == attempts - 1:
                    raise

    def _start(self, directory, attempt):
        n = self.MASTERS * (1 + self.replicas)
        ports = _free_ports(2 * n)
        self.ports, bus = ports[:n], ports[n:]
        self.procs, self.logs, self.socks = [], [], []
        try:
            for port, bport in zip(self.ports, bus):
                d = os.path.join(directory, f"try{attempt}-{port}")
                os.makedirs(d)
                log = os.path.join(d, "redis.log")
                self.logs.append(log)
                self.socks.append(os.path.join(d, "redis.sock"))
                self.procs.append(_spawn(
                    ["--port", str(port), "--cluster-port", str(bport), "--bind", "127.0.0.1",
                     "--unixsocket", self.socks[-1], "--unixsocketperm", "700",
                     "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", "2000", "--dir", d, *_COMMON], log))
            for port in self.ports:
                _wait_until(f"PING on port {port}",
                            lambda port=port: _cli("-p", str(port), "ping").stdout.strip()
                            == "PONG", self.procs, self.logs)
            r = _cli("--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
                     "--cluster-replicas", str(self.replicas), "--cluster-yes", timeout=60)
            if r.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{r.stdout}{r.stderr}")

            def cluster_ok():
                for port in self.ports:
                    info = _cli("-p", str(port), "cluster", "info").stdout
                    if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
                        return False
                return True

            _wait_until("cluster_state:ok on every node", cluster_ok, self.procs, self.logs)
        except BaseException:
            self.stop()
            raise
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])

    def wait_replicas_synced(self):
        """Until every replica has its link to its master up (a write can
        then be confirmed by WAIT)."""
        def synced():
            replicas = 0
            for port in self.ports:
                info = _cli("-p", str(port), "info", "replication").stdout
                if "role:slave" in info:
                    if "master_link_status:up" not in info:
                        return False
                    replicas += 1
            return replicas == self.MASTERS * self.replicas

        _wait_until("every replica in sync", synced, self.procs, self.logs)

    def stop(self):
        for p in self.procs:
            _stop(p)


@contextlib.contextmanager
def own_cluster(prefix):
    """A RedisCluster of a test module's own (one it may break: kill a
    master, route a node through a proxy) in a new temporary directory,
    its replicas in sync; stopped and removed afterwards."""
    d = tempfile.mkdtemp(prefix=prefix)
    c = RedisCluster(d)
    try:
        c.wait_replicas_synced()
        yield c
    finally:
        c.stop()
        shutil.rmtree(d, ignore_errors=True)


class CuttingProxy:
    """A Unix-socket proxy in front of a server's socket that drops a
    connection in the middle of a call, as a network or a restart does
    (the server is real; only the path between is cut):

    * `cut_reply(n)`: the n-th EVALSHA from now reaches the server (it is
      applied), its reply never reaches the client: the connection closes.
    * `cut_request(n)`: the n-th EVALSHA from now never reaches the server.
    * `hold_request(n)`: the n-th EVALSHA from now is held (`held` is set);
      `release()` then closes that connection without sending it (kill and
      restart the server in between).

    Each counts the commands named `on` (b"EVALSHA", the steps; b"MULTI",
    the transactions of the Queue's batches). `done` is set when the cut
    happened. The proxy connects each new
    client connection to `target` (a socket path) afresh, so a restarted
    server at the same path serves the reconnect."""

    def __init__(self, directory, target):
        import threading
        self.target = target
        self.sock = os.path.join(directory, "proxy.sock")
        self.url = f"redis+unix://{self.sock}"
        self._lock = threading.Lock()
        self._mode, self._left, self._on = None, 0, b"EVALSHA"
        self.done = threading.Event()
        self.held = threading.Event()
        self._release = threading.Event()
        self._socks = set()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.sock)
        self._listener.listen(64)
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _arm(self, mode, n, on):
        with self._lock:
            self._mode, self._left, self._on = mode, n, on
            self.done.clear()
            self.held.clear()
            self._release.clear()

    def cut_reply(self, n=1, on=b"EVALSHA"):
        self._arm("reply", n, on)

    def cut_request(self, n=1, on=b"EVALSHA"):
        self._arm("request", n, on)

    def hold_request(self, n=1, on=b"EVALSHA"):
        self._arm("hold", n, on)

    def release(self):
        self._release.set()

    def _accept(self):
        import threading
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return                              # stopped
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                server.connect(self.target)
            except OSError:
                client.close()                      # the server is down: refused
                server.close()
                continue
            pair = {"doomed": False}
            with self._lock:
                self._socks.update((client, server))
            threading.Thread(target=self._up, args=(client, server, pair), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, pair),
                             daemon=True).start()

    def _close(self, *socks):
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
            with self._lock:
                self._socks.discard(s)

    @staticmethod
    def _recv(s):
        try:
            return s.recv(1 << 16)
        except OSError:
            return b""              # closed: as the end of the stream

    @staticmethod
    def _send(s, data):
        try:
            s.sendall(data)
            return True
        except OSError:
            return False

    def _up(self, client, server, pair):
        """client -> server: counts the commands named `on`, cuts or holds
        the n-th."""
        while True:
            data = self._recv(client)
            if not data:
                return self._close(client, server)
            act = None
            with self._lock:
                if self._mode is not None:
                    self._left -= data.count(self._on)
                    if self._left <= 0:
                        act, self._mode = self._mode, None
            if act == "request":
                self.done.set()
                return self._close(client, server)
            if act == "hold":
                self.held.set()
                self._release.wait(60)
                self.done.set()
                return self._close(client, server)
            if act == "reply":
                pair["doomed"] = True
            if not self._send(server, data):
                return self._close(client, server)

    def _down(self, server, client, pair):
        """server -> client: drops the doomed call's reply and closes."""
        while True:
            data = self._recv(server)
            if not data or pair["doomed"]:
                if data:
                    self.done.set()
                return self._close(client, server)
            if not self._send(client, data):
                return self._close(client, server)

    def stop(self):
        self._release.set()
        self._listener.close()
        with self._lock:
            socks = list(self._socks)
        self._close(*socks)
