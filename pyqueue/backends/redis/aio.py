"""pyqueue.asyncio on the Redis backend, through redis.asyncio.

pyqueue.asyncio's Queue, JoinableQueue and WorkQueue wrap a Redis handle
(``aq.Queue.from_sync(pyqueue.connect(url).Queue(...))``, or
``aq.connect(url).Queue(...)``) with the subclasses here: the same public
classes, whose waiting calls run the sync classes' Lua scripts (the same
text, the same keys) on a redis.asyncio client instead of blocking the
loop. The documentation's Design page, "asyncio on Redis", has the why; in short:

* **Queue get: a per-handle reservation.** A cancelled coroutine loses the
  reply of a command already sent, and the server may have run it: a
  plain ``await r.blpop()`` (or a take script) that is cancelled after the
  server popped loses the message. So the async get never pops: the take
  script (_ATAKE) moves the head of the queue into this handle's
  reservation list ``pq:{NAME}:res:H`` (LMOVE), and a waiting get blocks
  in ``BLMOVE list res:H`` (the move is the server's, atomic). The
  message is handed to the caller only from the reservation, and the
  reservation is cleared by the handle's *next* script call: the handle
  counts the messages it handed out (a local int, bumped with no await
  between the reply and the return), sends the count, and the script pops
  what the server has not counted yet (``pq:{NAME}:resn:H``). Sending
  the same count twice clears nothing twice, so every step is safe to
  lose, cancel or repeat: a cancelled get leaves its message in the
  reservation and the next get of the handle returns it first; close()
  gives what it holds back to the head of the queue. Each handle has a
  lease (``pq:{NAME}:rsv.lease``, server time, renewed by a task while its
  loop runs): a dead handle's reservation goes back to the queue when its
  lease runs out, reaped by any handle's next step (its last handed-out
  message is then delivered again: at least once for that one).
* **WorkQueue get: the delivery is the reservation.** The acquire script
  (_ACQUIRE's text, inside _AACQ) also records the delivery it made,
  (id, delivery count), under ``pq:{NAME}:wq.res:H``; a get cancelled
  after the script ran leaves it there and the next get of the handle
  returns that same delivery (not counted again) instead of taking a new
  one; close() gives it back (available again, its delivery not counted).
  It never waits for the visibility timeout. A get_many's record is the
  list of the deliveries its step made ("id:n,id:n,..."), returned again
  the same way (a get returns the first and gives the rest back).
* **No resend.** On one server each step goes out once on a connection of
  the pool (as the sync backend's _Once): a connection lost after the
  step was sent is ConnectionLost(sent=True), never a silent replay. On a
  cluster the cluster client's own routing and retries are used, as the
  sync backend does there (with min_replicas, _aio_conn.replicated: WAIT
  on the step's own connection).
* **Waits** are server-side blocking commands (BLMOVE, XREAD BLOCK) on
  redis.asyncio: no thread, no polling. A waiting Queue get holds a
  connection of the pool in BLMOVE and waits for whichever comes first:
  that, or the handle's one watcher task in XREAD on the queue's shutdown
  stream (``pq:{NAME}:down``), which stays parked between waits.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import secrets
import threading
import time
import weakref
from typing import (TYPE_CHECKING, Any, AsyncGenerator, Callable, Dict, Iterable, List, NoReturn,
                    Optional, Sequence, Set, Tuple, Type, TypeVar, Union, cast)

from pyqueue import _api
from pyqueue import asyncio as _aq
from pyqueue.backends.redis import ConnectionLost, _codec
from pyqueue.backends.redis import queue as _rq
from pyqueue.backends.redis import topic as _rt
from pyqueue.backends.redis import workqueue as _rwq
from pyqueue.backends.redis._handle import key_prefix
from pyqueue.backends.redis._aio_conn import keep as _keep, lost as _lost, put_back as _put_back
from pyqueue.backends.redis._aio_conn import replicated, retrieved as _retrieved, shielded as _shielded
from pyqueue.errors import PyQueueError, SegmentNotFound, ShutDown
from pyqueue.workqueue import Delivery as _SyncDelivery

if TYPE_CHECKING:
    from pyqueue.backends.redis import RedisBackend

_HAVE_REDIS = False
try:
    import redis.asyncio as _aredis
    import redis.asyncio.cluster as _aredis_cluster
    from redis import exceptions as _rexc
    _HAVE_REDIS = True
except ImportError:  # pragma: no cover - the Redis backend needs redis-py anyway
    pass

if TYPE_CHECKING:
    _Client = Union[_aredis.Redis, _aredis_cluster.RedisCluster]
    # A handle's closer, parked on its loop (_closing).
    _Closer = AsyncGenerator[None, None]

Empty = _api.Empty
Full = _api.Full


# -- clients: one redis.asyncio client per backend, event loop and process --

async def _closing(client: _Client) -> _Closer:
    # Parked on the loop as an async generator: asyncio.run() (and any loop
    # that runs shutdown_asyncgens) closes it, and with it the client's
    # connections, before the loop closes.
    try:
        yield
    finally:
        await client.aclose()


def _new_client(backend: RedisBackend) -> _Client:
    kind, opts = backend._aio_args
    # No socket timeout (redis-py's asyncio default is 5 s): a wait is a
    # blocking command that lasts as long as its own timeout, as on the
    # synchronous clients.
    common: Dict[str, Any] = {"protocol": 2, "decode_responses": False, "socket_timeout": None}
    if kind == "cluster":
        opts = dict(opts)
        nodes = [_aredis_cluster.ClusterNode(h, p) for h, p in opts.pop("nodes")]
        return _aredis_cluster.RedisCluster(startup_nodes=nodes, **common, **opts)
    if "url" in opts:
        return _aredis.Redis.from_url(opts["url"], **common)
    return _aredis.Redis(**common, **opts)


# loop -> {backend id: (pid, client, closer, backend)}
_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, Dict[int, Tuple[int, _Client, _Closer, RedisBackend]]
] = weakref.WeakKeyDictionary()


async def client_of(backend: RedisBackend) -> _Client:
    """The redis.asyncio client of `backend` for the running loop."""
    if not _HAVE_REDIS:  # pragma: no cover
        raise ImportError("pyqueue.asyncio on Redis needs redis-py: pip install 'pyqueue-shm[redis]'")
    loop = asyncio.get_running_loop()
    per_loop = _clients.get(loop)
    if per_loop is None:
        per_loop = _clients[loop] = {}
    entry = per_loop.get(id(backend))
    if entry is None or entry[0] != os.getpid() or entry[3] is not backend:
        client = _new_client(backend)
        closer = _closing(client)
        await closer.__anext__()
        entry = per_loop[id(backend)] = (os.getpid(), client, closer, backend)
    return entry[1]


async def command(backend: RedisBackend, *args: Any) -> Any:
    """One command, sent once (one server) -- its raw RESP2 reply. On a
    cluster, through the cluster client (its routing and retries, as the
    sync backend there)."""
    client = await client_of(backend)
    if isinstance(client, _aredis_cluster.RedisCluster):   # backend.cluster
        return await client.execute_command(*args)
    pool = client.connection_pool
    try:
        conn = await pool.get_connection()
    except (_rexc.ConnectionError, _rexc.TimeoutError) as e:
        raise _lost(backend, e, False) from e
    broken = True
    try:
        await conn.send_command(*args)
        reply = await conn.read_response()
        broken = False
        return reply
    except _rexc.ResponseError:
        broken = False                          # the connection is fine
        raise
    except (_rexc.ConnectionError, _rexc.TimeoutError) as e:
        raise _lost(backend, e, True) from e
    finally:
        # Cancelled (or worse) with a reply possibly on its way, or lost:
        # that connection cannot be reused for another command. The
        # disconnect and the release run in a task of their own, which a
        # second cancellation of this one does not stop: the connection
        # always goes back to the pool.
        await _shielded(_put_back(pool, conn, broken))


_shas: Dict[str, str] = {}


def _took(reply: Any) -> bool:
    """A take step's reply: did it take messages (status 0)?"""
    return bool(reply[0] == 0)


async def script(backend: RedisBackend, source: str, keys: Sequence[str],
                 args: Sequence[Any], confirm: Optional[Callable[[Any], bool]] = None) -> Any:
    """Runs a Lua script (EVALSHA; EVAL after NOSCRIPT, which ran nothing);
    with min_replicas, followed by WAIT on its connection (_aio_conn).
    confirm(reply), when given, says whether the step wrote what
    min_replicas must confirm (as the sync _Step's): a get that took
    nothing has nothing to confirm."""
    sha = _shas.get(source)
    if sha is None:
        sha = _shas[source] = hashlib.sha1(source.encode()).hexdigest()
    if backend.min_replicas:
        return await replicated(backend, await client_of(backend), sha, source, keys, args,
                                confirm)
    try:
        return await command(backend, "EVALSHA", sha, len(keys), *keys, *args)
    except _rexc.NoScriptError:
        return await command(backend, "EVAL", source, len(keys), *keys, *args)


def _block_seconds(left: Optional[float]) -> float:
    return 0 if left is None else max(left, 0.001)


def _block_ms(left: Optional[float]) -> int:
    return 0 if left is None else max(1, int(left * 1000 + 0.999))


# Held only to check and set a handle's loop (_Handle._loop): no await, no
# call out under it.
_bind_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _bind_lock
    _bind_lock = threading.Lock()   # another thread may have held it at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)


def _cancel(fut: asyncio.Future[Any]) -> None:
    """Cancel fut from any thread: on its loop's thread when that loop runs
    in another one (a handle closed from another thread)."""
    loop = fut.get_loop()
    try:
        if loop.is_running() and not _runs_here(loop):
            loop.call_soon_threadsafe(fut.cancel)
        else:
            fut.cancel()
    except RuntimeError:    # its loop is closed (without cancelling it)
        pass


def _running() -> Optional[asyncio.AbstractEventLoop]:
    """The loop running in this thread, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _runs_here(loop: asyncio.AbstractEventLoop) -> bool:
    return _running() is loop


# How long close() from another thread waits for the handle's own loop to
# run it (a loop that runs no callbacks that long: closed where called).
_CLOSE_HANDOFF_S = 10.0


class _Handle(_aq._Owner):
    """What the Redis async handles share: a handle id per process (a
    forked child gets its own reservation, never its parent's)."""

    _closing = False    # close() has begun (_cancel_waits)

    _pid: Optional[int]
    _id: str
    _lock: Tuple[asyncio.AbstractEventLoop, asyncio.Lock]
    _inflight: Set[asyncio.Future[Any]]

    def _reset(self) -> None:
        """Forget the state of the handle id of another process (each
        subclass that calls _hid defines it)."""
        raise NotImplementedError

    def _hid(self) -> str:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._id = f"{self._pid}-{secrets.token_hex(6)}"
            self._reset()
        return self._id

    def _backend(self) -> RedisBackend:
        b: RedisBackend = self._h._bound
        return b

    def _loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, which this handle is bound to from now on
        until that loop is closed. Its steps' lock, its lease renewal and
        its shutdown watch are tasks and locks of one loop: two loops
        awaiting gets of one handle at once (two threads) would send the
        same state and be handed the same message. Used from a second loop
        while the first is open: RuntimeError, as asyncio.Queue refuses a
        second loop (a later asyncio.run, or another process, may use it
        again)."""
        loop = asyncio.get_running_loop()
        bound: Optional[Tuple[int, asyncio.AbstractEventLoop]] = getattr(self, "_bound_to", None)
        if bound is not None and bound[1] is loop:
            return loop
        with _bind_lock:        # two loops' first calls at once: one binds
            if self._bound_elsewhere(loop):
                raise self._elsewhere()
            self._bound_to = (os.getpid(), loop)
        return loop

    def _elsewhere(self) -> RuntimeError:
        return RuntimeError(
            f"{self!r} is bound to another event loop, which is still open (not "
            f"just stopped): a Redis asyncio handle is used by one loop at a time "
            f"(make one handle per loop and thread; the documentation's "
            f"'Behaviour in detail' page, 'asyncio')")

    def _bound_elsewhere(self, loop: Optional[asyncio.AbstractEventLoop]) -> bool:
        """Whether this handle is bound to an open loop of this process
        other than loop."""
        bound: Optional[Tuple[int, asyncio.AbstractEventLoop]] = getattr(self, "_bound_to", None)
        return (bound is not None and bound[1] is not loop and bound[0] == os.getpid()
                and not bound[1].is_closed())

    def _step_lock(self) -> asyncio.Lock:
        """The lock of this handle's steps on the running loop. A step and
        the handle's update after its reply (the count or the delivery
        handed out, the position) go together: two gets of one handle in
        flight at once would send the same state and be handed the same
        message. Only the step is under it, never a wait."""
        loop = self._loop()
        lk = getattr(self, "_lock", None)
        if lk is None or lk[0] is not loop:
            lk = self._lock = (loop, asyncio.Lock())
        return lk[1]

    def _is_closed(self) -> bool:
        closed: bool = self._h._closed
        return closed

    def _waits(self) -> Set[asyncio.Future[Any]]:
        """The waits (blocking commands) of this handle in flight, which
        close() cancels: a coroutine waiting at close() raises ValueError
        (closed), as on the shared-memory classes."""
        # (dict.setdefault: one set, also when two threads' loops ask at once)
        w: Set[asyncio.Future[Any]] = self.__dict__.setdefault("_inflight", set())
        return w

    def _cancel_waits(self) -> None:
        """Mark the handle closing and cancel the waits in flight, on their
        own loops' threads (close() may be called from any thread; a Log's
        reads may wait on several loops). A wait that starts after this
        ends at once (_wait_for): a coroutine woken before the handle is
        closed does not wait again for its whole timeout."""
        self._closing = True
        for t in list(self._waits()):
            _cancel(t)

    def _check_closing(self) -> None:
        """ValueError (closed) once close() has begun, from another thread
        too."""
        if self._closing:
            raise ValueError(f"{self!r} is closed")

    def close(self) -> None:
        """Close this handle. Called from a thread that runs no loop while
        the loop the handle is bound to runs in another, the close runs on
        that loop's thread (and this call waits for it, up to
        _CLOSE_HANDOFF_S): a close is a synchronous step, so no coroutine
        of the handle runs in the middle of it there (a get completing
        while another thread's close gave its message back would hand it
        out twice). From a coroutine of another loop it closes here (two
        loops closing each other's handles would wait on each other)."""
        bound: Optional[Tuple[int, asyncio.AbstractEventLoop]] = getattr(self, "_bound_to", None)
        if bound is not None and bound[0] == os.getpid() and _running() is None:
            loop = bound[1]
            if not loop.is_closed() and loop.is_running():
                if self._close_on(loop):
                    return
        self._close_now()

    def _close_on(self, loop: asyncio.AbstractEventLoop) -> bool:
        """_close_now on loop's thread; False when that loop ended or ran no
        callbacks in time (the caller then closes where it is)."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def close_there() -> None:
            if not done.set_running_or_notify_cancel():
                return      # given up on: closed where it was called
            try:
                self._close_now()
            except BaseException as e:
                done.set_exception(e)
            else:
                done.set_result(None)
        try:
            loop.call_soon_threadsafe(close_there)
        except RuntimeError:
            return False    # closed since
        end = time.monotonic() + _CLOSE_HANDOFF_S
        while True:
            try:
                # (short slices: a loop that stops or closes meanwhile
                # drops its callbacks, and is not waited for)
                done.result(0.05)
                return True
            except concurrent.futures.TimeoutError:
                pass
            if loop.is_closed() or not loop.is_running() or time.monotonic() >= end:
                if done.cancel():
                    return False
                # it runs there now: let it end
                done.result(_CLOSE_HANDOFF_S)
                return True

    def _close_now(self) -> None:
        """_close; if it fails with the handle still open (a lost connection
        in its give-back), the handle is no longer closing: its waits wait
        again (else every later get would spin without waiting)."""
        try:
            self._close()
        except BaseException:
            if not getattr(self._h, "_closed", True):
                self._closing = False
            raise

    def _close(self) -> None:
        raise NotImplementedError

    async def _wait_for(self, b: RedisBackend, *args: Any) -> Any:
        """One blocking command, as a wait close() cancels -> its reply
        (None when close() cancelled it; the caller then checks closed)."""
        task = asyncio.ensure_future(command(b, *args))
        ws = self._waits()
        ws.add(task)
        if self._closing:       # close() began in another thread: no new wait
            task.cancel()
        try:
            await asyncio.wait((task,))
        finally:
            ws.discard(task)
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        return None if task.cancelled() else task.result()


# -- Queue ------------------------------------------------------------------

# A handle's lease on its reservation: every _ATAKE sets it to this many
# seconds from the server's now, and a task of the handle renews it every
# third of it while the handle is open and its loop runs. Past it, the
# next _ATAKE of any handle of the queue reaps the reservation: what it
# holds goes back to the head of the queue (docs/design.md, "asyncio on
# Redis": the head may be the last message that handle handed out, which
# is then delivered again). A loop blocked longer than this loses its
# reservation (the handle then starts a fresh one).
LEASE_SECONDS = 30.0
_REAP = 16          # expired leases one step reaps at most (bounded)


def _lease_ms() -> int:
    return max(1, int(LEASE_SECONDS * 1000))


# Lua, the start of _ATAKE and _SETTLE: the messages a handle's gets
# returned (handed, its own count) leave the head of its reservation and
# are counted as dequeued, once (resn: how many the server has counted).
_COUNT_HANDED = """
local function count_handed(meta, res, resn, handed)
  local n = tonumber(redis.call('GET', resn) or '0')
  if handed > n then
    for i = n + 1, handed do redis.call('LPOP', res) end
    redis.call('HINCRBY', meta, 'dequeued', handed - n)
    redis.call('SET', resn, handed)
  end
end
"""

# KEYS: meta, list, space, res, resn, down, rsv, rsv.lease; ARGV: messages
# handed out by this handle so far, the handle id, the most messages to
# return, the lease ms, the key prefix -> {0, message...}: the head of the
# reservation, up to ARGV[3] (topped up from the queue now; what a BLMOVE
# or a take whose reply was lost moved earlier comes first); {1}: empty
# and shut down; {2, last id of down, ms until the earliest lease of
# another handle runs out (-1: none)}: empty (wait in BLMOVE list res +
# XREAD down, cut at that lease); {-1}: no queue; {-3}: this handle
# handed messages out and its reservation is no longer listed (close()
# gave it back: this step ran after the close's; or it was reaped: the
# handle starts over), nothing is moved or counted.
# First, up to _REAP reservations whose lease ran out (not this handle's:
# it is alive, this step renews it) go back to the head of the queue, in
# order, counting nothing.
_ATAKE = _COUNT_HANDED + """
local m = redis.call('HMGET', KEYS[1], 'maxsize', 'shutdown', 'kind')
if not m[3] then return {-1} end
local handed = tonumber(ARGV[1])
local hid = ARGV[2]
if handed > 0 and redis.call('SISMEMBER', KEYS[7], hid) == 0 then return {-3} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, d in ipairs(redis.call('ZRANGEBYSCORE', KEYS[8], '-inf', now, 'LIMIT', 0, %(reap)d)) do
  if d ~= hid then
    local rk = ARGV[5] .. 'res:' .. d
    while redis.call('RPOPLPUSH', rk, KEYS[2]) do end
    redis.call('DEL', rk, ARGV[5] .. 'resn:' .. d)
    redis.call('SREM', KEYS[7], d)
    redis.call('ZREM', KEYS[8], d)
  end
end
count_handed(KEYS[1], KEYS[4], KEYS[5], handed)
redis.call('SADD', KEYS[7], hid)
redis.call('ZADD', KEYS[8], now + tonumber(ARGV[4]), hid)
local want = tonumber(ARGV[3])
local have = redis.call('LLEN', KEYS[4])
local earlier = have
local moved = 0
while have < want and redis.call('LMOVE', KEYS[2], KEYS[4], 'LEFT', 'RIGHT') do
  have = have + 1
  moved = moved + 1
end
if have > 0 then
  -- A put waiting for room is told when this step took from a full
  -- queue, or when the reservation holds what this step did not move: a
  -- BLMOVE's (it may have taken from a full queue, telling nobody) or a
  -- lost reply's (told then, or not: telling again is harmless).
  local maxsize = tonumber(m[1] or '0')
  if maxsize > 0 and (earlier > 0 or
                      (moved > 0 and redis.call('LLEN', KEYS[2]) + moved >= maxsize)) then
    redis.call('XADD', KEYS[3], 'MAXLEN', 1, '*', 's', 1)
  end
  local out = redis.call('LRANGE', KEYS[4], 0, want - 1)
  table.insert(out, 1, 0)
  return out
end
if m[2] then return {1} end
local due = -1
local first = redis.call('ZRANGE', KEYS[8], 0, 1, 'WITHSCORES')
for i = 1, #first, 2 do
  if first[i] ~= hid then
    due = math.max(0, tonumber(first[i + 1]) - now)
    break
  end
end
local last = redis.call('XREVRANGE', KEYS[6], '+', '-', 'COUNT', 1)
if #last > 0 then return {2, last[1][1], due} end
return {2, '0-0', due}
""" % {"reap": _REAP}

# KEYS: meta, list, res, resn, rsv, rsv.lease; ARGV: handed, handle id.
# Counts what was handed out, gives the rest of the reservation back to
# the head of the queue (in order), removes the reservation and its lease.
# -> messages given back. A reservation no longer listed was given back
# before (close(), then the give-back of a get that was in flight at the
# close; or it was reaped): what was handed out is counted (or was given
# back by the reap), all it holds now goes back.
_GIVE_BACK = """
local handed = tonumber(ARGV[1])
if redis.call('SISMEMBER', KEYS[5], ARGV[2]) == 0 then handed = 0 end
local n = tonumber(redis.call('GET', KEYS[4]) or '0')
if handed > n then
  for i = n + 1, handed do redis.call('LPOP', KEYS[3]) end
  if redis.call('EXISTS', KEYS[1]) == 1 then
    redis.call('HINCRBY', KEYS[1], 'dequeued', handed - n)
  end
end
local back = 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  while redis.call('RPOPLPUSH', KEYS[3], KEYS[2]) do back = back + 1 end
end
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('SREM', KEYS[5], ARGV[2])
redis.call('ZREM', KEYS[6], ARGV[2])
return back
"""

# KEYS: rsv.lease; ARGV: handle id, lease ms -> 1 renewed, 0 not listed
# (reaped, or given back: not listed again, the handle's next step does)
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[2]), ARGV[1])
"""


# KEYS: meta, res, resn, rsv, list; ARGV: handed, handle id -> 1 done, 0
# not listed (reaped or given back: nothing to do here). Counts what the
# handle handed out and drops it from its reservation (the first part of
# _ATAKE), then gives the rest back to the head of the queue, in order,
# uncounted - but leaves the reservation listed with its lease: a BLMOVE of
# the handle still blocked on the server may yet move a message into it,
# and the reap must find that one.
_SETTLE = _COUNT_HANDED + """
if redis.call('SISMEMBER', KEYS[4], ARGV[2]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local handed = tonumber(ARGV[1])
count_handed(KEYS[1], KEYS[2], KEYS[3], handed)
while redis.call('RPOPLPUSH', KEYS[2], KEYS[5]) do end
return 1
"""

# How long the count at the end of a renewal may take (the loop's end
# waits for it): a server that does not answer in time leaves it to the
# reap (the last message handed out then comes again: at least once).
_SETTLE_WAIT = 1.0


async def _renew(ref: weakref.ReferenceType[RedisQueue], b: RedisBackend,
                 gkeys: List[str], hid: str, handed: List[int]) -> None:
    """The lease renewal of one handle (and loop): every third of the
    lease, until the handle is closed, collected, or the loop ends. When
    it ends without close() (the loop's end: asyncio.run cancels it; the
    handle collected) the messages the handle handed out are counted and
    leave its reservation, and the rest goes back to the queue (_SETTLE):
    nothing it returned is delivered again (a hostile review: a handle
    reused by a later asyncio.run, or dropped without close(), had the
    message its last get returned delivered again by the reap), and what
    it only reserved is at once there for any consumer, sync ones too (a
    later review). The reservation stays listed: a BLMOVE of the handle
    still blocked on the server may yet move a message into it, which the
    reap then returns (unlisting it here made such a message unreachable:
    a later review)."""
    try:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            q = ref()
            if q is None:
                break
            if q._h._closed or q._pid != os.getpid() or q._id != hid:
                return
            del q
            try:
                await script(b, _RENEW, [gkeys[5]], [hid, _lease_ms()])
            except (PyQueueError, _rexc.RedisError, _rexc.RedisClusterException, OSError):
                # this renewal is lost, or applied and not confirmed by the
                # replicas (NotReplicated, min_replicas): the next one (or a
                # step) renews; the task must not end (a review)
                pass
    except asyncio.CancelledError:
        q = ref()
        if q is None or not (q._h._closed or q._pid != os.getpid() or q._id != hid):
            del q
            await _settle(b, gkeys, hid, handed[0])
        raise
    await _settle(b, gkeys, hid, handed[0])


async def _settle(b: RedisBackend, gkeys: List[str], hid: str, handed: int) -> None:
    """_SETTLE, bounded by _SETTLE_WAIT; never raises (a failure leaves the
    count to the reap)."""
    if os.getpid() != int(hid.split("-", 1)[0]):
        return      # a forked child's copy of its parent's task
    try:
        await asyncio.wait_for(
            script(b, _SETTLE, [gkeys[0], gkeys[2], gkeys[3], gkeys[4], gkeys[1]],
                   [handed, hid]),
            _SETTLE_WAIT)
    except (PyQueueError, _rexc.RedisError, _rexc.RedisClusterException, OSError,
            asyncio.TimeoutError, TimeoutError, asyncio.CancelledError):
        pass    # (NotReplicated is a PyQueueError: on 3.9/3.10 not an asyncio.TimeoutError)


class RedisQueue(_Handle, _aq.Queue[Any]):
    """pyqueue.asyncio.Queue over a Redis queue handle."""

    _h: _rq.RedisQueue
    _used: bool
    _count: List[int]     # [messages handed out]: shared with the renewal task
    _watch: Optional[Tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]]
    _renewer: Optional[Tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]]

    @property
    def _handed(self) -> int:
        """Messages this handle's gets handed out (the server counts them
        at the next step: the documentation's Design page, "asyncio on Redis")."""
        return self._count[0]

    @_handed.setter
    def _handed(self, n: int) -> None:
        self._count[0] = n

    def _init(self) -> None:
        self._pid = None
        self._count = [0]
        self._used = False
        self._watch = None
        self._renewer = None

    def _reset(self) -> None:
        self._count = [0]   # a new one: a forked child's is not its parent's
        self._used = False
        self._watch = None
        self._renewer = None

    def _rkeys(self) -> List[str]:
        hid = self._hid()
        k = self._h._keys
        p = key_prefix(self._h._name)
        return [k[0], k[1], k[2], p + "res:" + hid, p + "resn:" + hid, k[5], p + "rsv",
                p + "rsv.lease"]

    def _gkeys(self, keys: Sequence[str]) -> List[str]:
        """_GIVE_BACK's keys of _rkeys."""
        return [keys[0], keys[1], keys[3], keys[4], keys[6], keys[7]]

    def _targs(self, want: int) -> List[Any]:
        return [self._handed, self._id, want, _lease_ms(), key_prefix(self._h._name)]

    def _renewing(self, b: RedisBackend, keys: Sequence[str]) -> None:
        """Starts this handle's lease renewal on the running loop (once)."""
        loop = self._loop()
        r = self._renewer
        if r is not None and r[0] is loop and not r[1].done():
            return
        task = asyncio.ensure_future(_renew(weakref.ref(self), b, self._gkeys(keys), self._id,
                                            self._count))
        task.add_done_callback(_retrieved)
        self._renewer = (loop, task)

    async def put(self, obj: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        """As pyqueue.asyncio.Queue.put, waiting for room in XREAD on the
        queue's space stream. Cancelled while its step's reply is on the
        way, the message may have been put."""
        h = self._h
        h._check_open()
        until = _api.deadline(block, timeout)
        data = h._encode(obj)
        b = self._backend()
        while True:
            # A put is one script: cancelled while its reply is on the way,
            # it may have been applied (a put's own message is not a
            # reservation; docs/design.md, "asyncio on Redis").
            r = await script(b, _rq._PUT, h._keys, [data])
            if r[0] == -2:
                raise ShutDown(f"queue {h._name!r} is shut down")
            if r[0] < 0:
                raise SegmentNotFound(f"queue {h._name!r} was removed from {b.url}")
            if r[0] == 1:
                return
            if h._overflow == "reject" or not block:
                raise Full()
            left = _api.remaining(until)
            if left == 0.0:
                raise Full()
            await command(b, "XREAD", "COUNT", 1, "BLOCK", _block_ms(left), "STREAMS",
                          h._keys[2], r[1])

    async def _take(self, want: int, block: bool, timeout: Optional[float]) -> List[bytes]:
        """Up to `want` raw messages (at least one), through this handle's
        reservation, counted as handed out (from the reply to the return:
        no await, so no cancellation falls between)."""
        h = self._h
        until = _api.deadline(block, timeout)
        b = self._backend()
        while True:
            keys = self._rkeys()
            if h._closed:       # closed under this get (its wait cancelled)
                await self._closed_under_get(b, keys)
            self._used = True
            async with self._step_lock():
                # (Confirmed only when it took messages: a step that took
                # none wrote only this handle's own bookkeeping - its
                # lease, the count of what it handed out, dead handles'
                # reaps - which a failover loses harmlessly, as this
                # handle's next step writes it again; it must not fail a
                # get that would wait.)
                r = await script(b, _ATAKE, keys, self._targs(want), _took)
                if not h._closed:
                    if r[0] == 0:
                        # From the reply to the return: no await (no cancellation).
                        self._handed += len(r) - 1
                    elif r[0] == -3:
                        # Reaped (this loop stalled past the lease): what
                        # the reservation held went back to the queue; the
                        # handle starts a fresh one. (Under the step lock:
                        # no other step of this handle is in flight.)
                        self._handed = 0
            if self._is_closed():   # (after an await: not narrowed)
                await self._closed_under_get(b, keys)
            self._renewing(b, keys)
            if r[0] == 0:
                raws: List[bytes] = r[1:]
                return raws
            if r[0] == -3:
                continue
            if r[0] == 1:
                raise ShutDown(f"queue {h._name!r} is shut down")
            if r[0] < 0:
                raise SegmentNotFound(f"queue {h._name!r} was removed from {b.url}")
            if not block:
                raise Empty()
            left = _api.remaining(until)
            if left == 0.0:
                raise Empty()
            if r[2] >= 0:       # another handle's lease runs out then: reap it
                due = r[2] / 1000.0 + 0.001
                left = due if left is None else min(left, due)
            # Within this handle's own lease (set by the step just made,
            # renewed every third of it): the server ends the BLMOVE before
            # a reap of this handle can run, even when the renewals stop
            # (a frozen process, the loop's end), so it never moves a
            # message into a reservation nobody lists (a hostile review:
            # lost for good once a frozen process was killed).
            own = LEASE_SECONDS * 0.5
            left = own if left is None else min(left, own)
            await self._wait(b, keys, r[1], left)

    async def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """As pyqueue.asyncio.Queue.get, through this handle's reservation:
        cancelled at any point, its message is in the queue or in the
        reservation, and this handle's next get returns it first."""
        h = self._h
        h._check_open()
        _api.check_timeout(timeout, block)  # (before a held message is handed out)
        if h._held:       # what the sync handle holds (a lost connection's)
            return h.get(False)       # (its get_nowait)
        raw = (await self._take(1, block, timeout))[0]
        try:
            return h._decode(raw)
        except Exception:
            h._undecodable += 1
            raise

    async def get_many(self, max_messages: int = 1024,
                       timeout: Optional[float] = None) -> List[Any]:
        """As pyqueue.asyncio.Queue.get_many: waits for one message, then
        returns up to max_messages (one round trip), through this handle's
        reservation (cancelled at any point, they are in the queue or in
        the reservation, and this handle's next get returns them first).
        A message that cannot be decoded is reported by its own call."""
        h = self._h
        h._check_open()
        max_messages = _api.check_max_messages(max_messages)
        _api.check_timeout(timeout)
        if h._held:
            return h.get_many(max_messages, block=False)
        raws = await self._take(max_messages, True, timeout)
        return self._decode_many(raws)

    def _decode_many(self, raws: List[bytes]) -> List[Any]:
        """raws decoded; from an undecodable one on, kept by the sync handle
        (handed out already: its next get returns them, the bad one first,
        raised as the sync get_many raises it)."""
        h = self._h
        h._held.extend(raws)
        return h.get_many(len(raws), block=False)

    def get_nowait(self) -> Any:
        """As pyqueue.asyncio.Queue.get_nowait: one synchronous step (it
        blocks the loop for one round trip), through this handle's
        reservation when no get of this handle is in the middle of its own
        step (else a plain take from the queue: a synchronous call is never
        cancelled half-way)."""
        h = self._h
        h._check_open()
        if _running() is not None:
            try:
                self._loop()    # bound before its step (its step sends the state)
            except RuntimeError:
                return h.get(False)     # another loop's handle: a plain take
        if h._held or _step_busy(self, True):
            return h.get(False)
        b = self._backend()
        keys = self._rkeys()
        self._used = True
        step = b.script("queue_atake", _ATAKE)
        r = step(keys=keys, args=self._targs(1))
        if r[0] == -3:          # reaped: start over (see _take)
            self._handed = 0
            r = step(keys=keys, args=self._targs(1))
        if r[0] == 0:
            self._handed += 1
        self._renewing(b, keys)
        if r[0] == 0:
            try:
                return h._decode(r[1])
            except Exception:
                h._undecodable += 1
                raise
        if r[0] == 1:
            raise ShutDown(f"queue {h._name!r} is shut down")
        if r[0] < 0:
            raise SegmentNotFound(f"queue {h._name!r} was removed from {b.url}")
        raise Empty()

    async def _closed_under_get(self, b: RedisBackend, keys: Sequence[str]) -> NoReturn:
        """close() ran while a get was in flight: the get hands nothing out;
        what its step or wait moved into the reservation after close()'s
        give-back (a BLMOVE that completed, a step already sent) goes back
        to the head of the queue, then ValueError (closed)."""
        await script(b, _GIVE_BACK, self._gkeys(keys), [self._handed, self._id])
        self._h._check_open()
        raise AssertionError("unreachable: the handle is closed")  # pragma: no cover

    def _watcher(self, b: RedisBackend, keys: Sequence[str], down_id: Any
                 ) -> asyncio.Future[Any]:
        """The task of this handle (and loop) that waits in XREAD BLOCK 0
        for the queue's shutdown entry (after down_id, read by an _ATAKE
        that saw the flag unset): shared by every get of the handle that
        waits, and left running between waits (cancelling it would cost
        its connection: a cancelled command's connection is closed), until
        it fires, close(), or the loop's end (asyncio.run cancels it)."""
        loop = self._loop()
        w = self._watch
        if w is not None and w[0] is loop and not w[1].done():
            return w[1]
        if w is not None and w[1].done() and not w[1].cancelled():
            w[1].exception()        # retrieved (a lost connection: watch again)
        task = asyncio.ensure_future(
            command(b, "XREAD", "COUNT", 1, "BLOCK", 0, "STREAMS", keys[5], down_id))
        self._watch = (loop, task)
        return task

    async def _wait(self, b: RedisBackend, keys: Sequence[str], down_id: Any,
                    left: Optional[float]) -> None:
        """Until a message is moved into the reservation (BLMOVE) or the
        queue is shut down (the watcher returns) or left runs out; the
        caller's next _ATAKE tells which."""
        down = self._watcher(b, keys, down_id)
        move = asyncio.ensure_future(
            command(b, "BLMOVE", keys[1], keys[3], "LEFT", "RIGHT", _block_seconds(left)))
        ws = self._waits()
        ws.add(move)        # close() cancels it (and the watcher)
        if self._closing:   # close() began in another thread: no new wait
            move.cancel()
        try:
            await asyncio.wait((move, down), return_when=asyncio.FIRST_COMPLETED)
        finally:
            ws.discard(move)
            # A BLMOVE cancelled here may have moved a message: it is in
            # the reservation, where the next _ATAKE finds it.
            move.cancel()
            await asyncio.gather(move, return_exceptions=True)
        if move.done() and not move.cancelled():
            e = move.exception()
            if e is not None:
                raise e

    @staticmethod
    def _stop(task: Optional[Tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]]) -> None:
        if task is not None:
            _cancel(task[1])

    def _close(self) -> None:
        """Close this handle: what its reservation holds goes back to the
        head of the queue (a get cancelled before it returned), and its
        lease goes."""
        h = self._h
        # The waits in flight end (their gets raise ValueError, after giving
        # back what their BLMOVE moved, if it completed: _closed_under_get).
        self._cancel_waits()
        self._stop(self._watch)
        self._stop(self._renewer)
        self._watch = self._renewer = None
        if self._used and self._pid == os.getpid() and not h._closed:
            keys = self._rkeys()
            h._bound.script("queue_give_back", _GIVE_BACK)(
                keys=self._gkeys(keys), args=[self._handed, self._id])
            self._used = False
        h.close()

    def unlink(self) -> None:
        """Remove the queue, and the reservations of every handle (those of
        handles whose process died included): the sync handle's unlink."""
        self._h.unlink()


class RedisJoinableQueue(RedisQueue, _aq.JoinableQueue[Any]):
    """pyqueue.asyncio.JoinableQueue over a Redis handle."""

    _h: _rq.RedisJoinableQueue

    async def join(self, timeout: Optional[float] = None) -> bool:
        h = self._h
        h._check_open()
        until = _api.deadline(True, timeout)
        b = self._backend()
        keys = [h._keys[0], h._keys[3]]
        r = await script(b, _rq._JOIN, keys, [])
        if r[0] == 1:
            return True
        while True:
            left = _api.remaining(until)
            if left == 0.0:
                return False
            # Returns when the count reaches 0 after the check read r[1].
            if await command(b, "XREAD", "COUNT", 1, "BLOCK", _block_ms(left), "STREAMS",
                             h._keys[3], r[1]):
                return True


def _step_busy(handle: _Handle, no_loop: bool = False) -> bool:
    """Whether a plain call must not send handle's state: a step of it is
    in flight (on any loop), or it belongs to another open loop, or (when
    no_loop) no loop runs here."""
    lk = getattr(handle, "_lock", None)
    bound: Tuple[Optional[int], Any] = getattr(handle, "_bound_to", (None, None))
    if lk is not None and lk[1].locked() and not lk[0].is_closed() and \
            bound[0] == os.getpid():
        return True     # (a closed loop's, or a forked parent's, lock: stale)
    loop = _running()
    if loop is None:
        return no_loop
    return handle._bound_elsewhere(loop)


# -- WorkQueue --------------------------------------------------------------

# _ACQUIRE's text less the head every script of the work queue shares
# (the head is put once, in front of _AACQ's own lines).
if not _rwq._ACQUIRE.startswith(_rwq._LUA_HEAD):  # pragma: no cover - a layout change
    raise ImportError("workqueue._ACQUIRE no longer starts with _LUA_HEAD")
_ACQ_BODY = _rwq._ACQUIRE[len(_rwq._LUA_HEAD):]

# The record under wq.res:H is a list, "id:n,id:n,..." (one entry for a
# get, up to max_messages for a get_many): the deliveries this handle's
# last step made, in the order of its reply. give_back(id) makes one of
# them available again at once, its delivery not counted (as if it had
# never been made): what close() does with a record never handed out,
# and a step with what a record holds beyond what it may return.
_GIVE_ONE = """
local function give_back(rid)
  redis.call('ZREM', F, rid)
  local n = redis.call('HINCRBY', C, rid, -1)
  if n > 0 then redis.call('HINCRBY', M, 'redelivered', -1) end
  redis.call('ZADD', Q, rid, rid)
end
"""

# KEYS: the work queue's 13, then this handle's reservation wq.res:H and
# wq.rsv, the handle ids that have one, each scored by when it expires
# (server ms; unlink() finds the reservations there); ARGV: lease ms, the most deliveries to
# return, the record this handle handed out last ("id:n,...", or ""), the
# handle id. Unless the record is the one handed out, its entries still
# this handle's (held with that count) are returned again, not counted
# again (the first ARGV[2] of them; the rest given back); else
# _ACQUIRE's step (the same text) runs and the deliveries it made are
# recorded.
_AACQ = _rwq._LUA_HEAD + _GIVE_ONE + """
local rk = KEYS[14]
local want = tonumber(ARGV[2])
-- wq.rsv scores each handle by when its record expires: the members of
-- records gone by themselves (dead handles) go at the next acquire of any
-- handle (exclusive: a key expires once its time is past)
redis.call('ZREMRANGEBYSCORE', KEYS[15], '-inf', '(' .. now)
-- (no meta hash: the queue was removed, which _ACQUIRE's step reports)
local vis = math.max(1, tonumber(redis.call('HGET', M, 'vis_ms') or '1'))
local cur = redis.call('GET', rk)
if cur then redis.call('DEL', rk) end
if cur and cur ~= ARGV[3] and redis.call('HGET', KEYS[1], 'shutdown') ~= '2' then
  local out, keep, back = {0}, {}, 0
  for rid, rn in string.gmatch(cur, '(%d+):(%d+)') do
    if held_by(rid, rn) then
      if #keep < want then
        keep[#keep + 1] = rid .. ':' .. rn
        out[#out + 1] = 0
        out[#out + 1] = rid
        out[#out + 1] = rn
        out[#out + 1] = redis.call('HGET', P, rid)
        out[#out + 1] = redis.call('HGET', E, rid)
        out[#out + 1] = redis.call('HGET', R, rid)
      else
        give_back(rid)
        back = back + 1
      end
    end
  end
  if back > 0 then redis.call('XADD', W, 'MAXLEN', 1, '*', 'w', 1) end
  if #keep > 0 then
    redis.call('SET', rk, table.concat(keep, ','), 'PX', vis)
    redis.call('ZADD', KEYS[15], now + vis, ARGV[4])
    return out
  end
end
local r = (function()
""" + _ACQ_BODY + """
end)()
if r[1] == 0 then
  local keep = {}
  for j = 2, #r, 6 do
    if r[j] == 0 then keep[#keep + 1] = r[j + 1] .. ':' .. r[j + 2] end
  end
  if #keep > 0 then
    -- kept as long as the deliveries can be held without an extend (which
    -- only handed-out ones get): a dead handle's record goes by itself
    redis.call('SET', rk, table.concat(keep, ','), 'PX', vis)
    redis.call('ZADD', KEYS[15], now + vis, ARGV[4])
  end
end
return r
"""

# KEYS: the 13, the reservation, wq.rsv; ARGV: the record handed out
# last, the handle id.
# Gives the recorded deliveries back unless they were handed out:
# available again at once, their deliveries not counted. -> how many
_AGIVE_BACK = _rwq._LUA_HEAD + _GIVE_ONE + """
local rk = KEYS[14]
local cur = redis.call('GET', rk)
redis.call('DEL', rk)
redis.call('ZREM', KEYS[15], ARGV[2])
if not cur or cur == ARGV[1] then return 0 end
local back = 0
for rid, rn in string.gmatch(cur, '(%d+):(%d+)') do
  if held_by(rid, rn) then
    give_back(rid)
    back = back + 1
  end
end
if back > 0 then redis.call('XADD', W, 'MAXLEN', 1, '*', 'w', 1) end
return back
"""


def _record_of(r: Sequence[Any]) -> str:
    """The record _AACQ left for its reply r (status 0): "id:n" of each
    delivery in it (kind 0), in order, joined by commas ("" for none)."""
    return ",".join(f"{int(r[j + 1])}:{int(r[j + 2])}" for j in range(1, len(r), 6)
                    if r[j] == 0)


class RedisWorkQueue(_Handle, _aq.WorkQueue[Any]):
    """pyqueue.asyncio.WorkQueue over a Redis work queue handle."""

    _h: _rwq.RedisWorkQueue
    _used: bool
    _handed: str

    def _init(self) -> None:
        self._pid = None
        self._used = False

    def _reset(self) -> None:
        self._handed = ""
        self._used = False

    def _wkeys(self) -> List[str]:
        hid = self._hid()
        p = key_prefix(self._h._name)
        return list(self._h._keys) + [p + "wq.res:" + hid, p + "wq.rsv"]

    async def put(self, obj: Any, *, key: Union[bytes, str, None] = None, delay: float = 0.0,
                  timeout: Optional[float] = None) -> int:
        """As pyqueue.asyncio.WorkQueue.put (cancelled while its reply is on
        the way, it may have been put)."""
        h = self._h
        h._check_open()
        until = _api.deadline(True, timeout)
        delay_ms = _rwq._ms(delay, "delay")
        args: List[Any] = [_codec.encode(obj, h._serializer), _rwq._key_bytes(key)]
        if len(args[0]) - 1 > h.max_message_bytes:
            from pyqueue.errors import MessageTooLarge
            raise MessageTooLarge(f"message of {len(args[0]) - 1} bytes encoded, over "
                                  f"max_message_bytes={h.max_message_bytes}")
        b = self._backend()
        while True:
            r = await script(b, _rwq._PUT_MANY, h._keys, [delay_ms] + args)
            if r[0] == -5:
                raise ShutDown(f"work queue {h._name!r} is shut down")
            if r[0] == -1:
                raise SegmentNotFound(f"work queue {h._name!r} was removed from {b.url}")
            if r[0] == 0:
                return int(r[2])
            if r[0] == -3:
                left = _api.remaining(until)
                if left == 0.0:
                    raise Full()
                await command(b, "XREAD", "COUNT", 1, "BLOCK", _block_ms(left), "STREAMS",
                              h._keys[12], r[1])
                continue
            # the dedup table full, or anything else: the sync call says it
            return h.put(obj, key=key, delay=delay, block=False)

    async def _acquire(self, want: int, timeout: Optional[float]) -> List[Any]:
        """_AACQ's reply with up to `want` deliveries (one at least), waiting
        for one up to the deadline; queue.Empty in time. The record of
        what it returns is this handle's handed-out one from the reply on
        (no await between them and the caller's return)."""
        h = self._h
        h._check_open()
        until = _api.deadline(True, timeout)
        b = self._backend()
        while True:
            keys = self._wkeys()
            if h._closed:       # closed under this get (its wait cancelled)
                await self._closed_under_get(b, keys)
            self._used = True
            async with self._step_lock():
                r = await script(b, _AACQ, keys, [h._lease_ms(), want, self._handed, self._id],
                                 _took)   # (confirmed as the Queue's take: above)
                if r[0] == 0 and not h._closed:
                    # From the reply to the hand-over: no await.
                    self._handed = _record_of(r)
            if self._is_closed():   # (after an await: not narrowed)
                await self._closed_under_get(b, keys)
            if r[0] == 0:
                return r    # type: ignore[no-any-return]
            if r[0] == -1:
                raise SegmentNotFound(f"work queue {h._name!r} was removed from {b.url}")
            if r[0] == -5:
                raise ShutDown(f"work queue {h._name!r} is shut down")
            left = _api.remaining(until)
            if left == 0.0:
                raise Empty()
            if r[2] >= 0:
                due = r[2] / 1000.0
                left = due if left is None else min(left, due)
            await self._wait_for(b, "XREAD", "COUNT", 1, "BLOCK", _block_ms(left), "STREAMS",
                                 h._keys[11], r[1])

    def _dead_on_the_way(self, mid: int, n: int, raw: bytes, enq: int,
                         reason: Optional[str]) -> None:
        """A message out of deliveries that a step returned: to the
        dead-letter queue (the sync code: rare)."""
        self._h._move_dead_quietly(mid, n, enq / 1000.0,
                                   f"delivered {n} times, last: {reason or 'nacked'}"
                                   if reason != "rejected" else "rejected", None, raw, None)

    def _poison(self, mid: int, n: int, raw: bytes, enq: int, e: Exception) -> None:
        """An undecodable delivery: rejected, as the sync get (sync)."""
        h = self._h
        if h._reject(mid, n) == 0:
            h._move_dead_quietly(mid, n, enq / 1000.0, f"undecodable: {type(e).__name__}: {e}",
                                 repr(e), raw, None)

    async def get(self, timeout: Optional[float] = None) -> RedisDelivery:
        """As pyqueue.asyncio.WorkQueue.get (timeout=0: queue.Empty at
        once). Cancelled after its step ran, the delivery it made is
        returned by this handle's next get (or get_many), not counted
        again."""
        h = self._h
        until = _api.deadline(True, timeout)
        while True:
            r = await self._acquire(1, _api.remaining(until))
            # From here to the return: no await (sync calls only).
            kind, mid, n, raw, enq, why = r[1:7]
            mid, n, enq = int(mid), int(n), int(enq)
            reason = why.decode() if why is not None else None
            if kind == 1:       # out of deliveries: dead-lettered on the way (sync)
                self._dead_on_the_way(mid, n, raw, enq, reason)
                continue
            try:
                value = h._decode(raw, None)
            except Exception as e:      # poison, as the sync get (sync)
                self._poison(mid, n, raw, enq, e)
                continue
            # (pyqueue.WorkQueue's Delivery over the Redis handle, as its sync get)
            d = _SyncDelivery(h, mid, n, value, enq, reason)  # type: ignore[arg-type]
            return RedisDelivery(d, self)

    async def get_many(self, max_messages: int = 1024,
                       timeout: Optional[float] = None) -> RedisBatch:
        """As pyqueue.asyncio.WorkQueue.get_many: waits for one message,
        then takes what is there (up to max_messages, and max_in_flight)
        in one step. Cancelled after its step ran, the deliveries it made
        are returned by this handle's next get_many (a get: the first of
        them, the rest given back uncounted), not counted again; close()
        gives them back."""
        h = self._h
        h._check_open()
        want = min(_api.check_max_messages(max_messages), h.max_in_flight)
        until = _api.deadline(True, timeout)
        while True:
            r = await self._acquire(want, _api.remaining(until))
            # From here to the return: no await (sync calls only).
            batch = _rwq.Batch._new(h)
            for j in range(1, len(r), 6):
                kind, mid, n, raw, enq, why = r[j:j + 6]
                mid, n, enq = int(mid), int(n), int(enq)
                reason = why.decode() if why is not None else None
                if kind == 1:
                    self._dead_on_the_way(mid, n, raw, enq, reason)
                    continue
                try:
                    value = h._decode(raw, None)
                except Exception as e:
                    self._poison(mid, n, raw, enq, e)
                    continue
                batch._add(value, mid, n, enq, reason)
            if len(batch):
                return RedisBatch(batch, self)

    async def _closed_under_get(self, b: RedisBackend, keys: Sequence[str]) -> NoReturn:
        """close() ran while a get was in flight: a delivery its step made
        after close()'s give-back is given back too (available again, not
        counted), then ValueError (closed)."""
        await script(b, _AGIVE_BACK, keys, [self._handed, self._id])
        self._h._check_open()
        raise AssertionError("unreachable: the handle is closed")  # pragma: no cover

    def get_nowait(self) -> RedisDelivery:
        """As pyqueue.asyncio.WorkQueue.get_nowait: the sync get, one
        synchronous step (a synchronous call is never cancelled half-way;
        a delivery this handle's cancelled get reserved stays for its next
        await get, or close())."""
        return RedisDelivery(self._h.get(block=False), self)

    def _close(self) -> None:
        """Close this handle: a delivery its last get reserved and never
        handed out (it was cancelled) is given back, uncounted."""
        h = self._h
        self._cancel_waits()    # a get waiting raises ValueError (closed)
        if self._used and self._pid == os.getpid() and not h._closed:
            h._bound.script("wq_give_back", _AGIVE_BACK)(keys=self._wkeys(),
                                                            args=[self._handed, self._id])
            self._used = False
        h.close()

    def unlink(self) -> None:
        """Remove the work queue, and the reservation of every handle: the
        sync handle's unlink."""
        self._h.unlink()


class RedisDelivery(_aq.Delivery[Any]):
    """pyqueue.asyncio.Delivery of a Redis work queue: the settles are
    awaited script calls (the sync class's _SETTLE script)."""

    __slots__ = ("_q",)
    _q: RedisWorkQueue

    def __init__(self, d: _SyncDelivery[Any], q: RedisWorkQueue) -> None:
        super().__init__(d)
        self._q = q

    async def _settle(self, verb: str, ms: int) -> Any:
        d = self._d
        h = d._queue
        h._check_open()
        r = await script(self._q._backend(), _rwq._SETTLE, h._keys,
                         [verb, _rwq.ESTALE, ms, h._lease_ms(), d.id, d.delivery_count])
        rc = r[0]
        if verb == "reject" and rc == 1:
            rc = 0
        return d._verb(verb, rc)

    async def ack(self) -> None:
        await self._settle("ack", 0)
        self._d._settled = "acked"

    async def nack(self, delay: float = 0.0, error: Optional[str] = None) -> None:
        d = self._d
        rc = await self._settle("nack", _rwq._ms(delay, "delay"))
        d._settled = "nacked"
        if rc == 1:     # out of deliveries: to the dead-letter queue (sync)
            d._queue._move_dead(d.id, d.delivery_count, d.enqueued_at,
                                f"delivered {d.delivery_count} times, last: nacked", error)

    async def reject(self, reason: str = "rejected") -> None:
        d = self._d
        await self._settle("reject", 0)
        d._settled = "rejected"
        d._queue._move_dead(d.id, d.delivery_count, d.enqueued_at, f"rejected: {reason}",
                            reason)

    async def extend(self, seconds: float) -> None:
        await self._settle("extend", _rwq._ms(seconds, "seconds"))

    async def __aexit__(self, exc_type: Optional[type], exc: Optional[BaseException],
                        tb: Any) -> None:
        if self._d._settled is None:
            if exc_type is None:
                await self.ack()
            else:
                await self.nack(error=f"{exc_type.__name__}: {exc}")


class RedisBatch(_aq.Batch):
    """pyqueue.asyncio.Batch of a Redis work queue: each settle of the
    chosen positions (or of all not settled) is one awaited _SETTLE call,
    fenced per message as the sync Batch's; moves to the dead-letter
    queue (a nack on a last delivery, a reject) are the sync code's."""

    _b: _rwq.Batch
    _q: RedisWorkQueue

    def __init__(self, batch: _rwq.Batch, q: RedisWorkQueue) -> None:
        super().__init__(batch)
        self._q = q

    async def _apply(self, verb: int, pick: List[int], arg: int) -> Tuple[List[int], List[int]]:
        """The sync Batch's _apply with its one step awaited: (stale
        positions, dead ones to move)."""
        b = self._b
        stale: List[int] = []
        to_move: List[int] = []
        if not pick:
            return stale, to_move
        h = b._queue
        h._check_open()
        pairs: List[Any] = []
        for i in pick:
            pairs.append(b._ids[i])
            pairs.append(b._dels[i])
        r = await script(self._q._backend(), _rwq._SETTLE, h._keys,
                         [_rwq._VERBS[verb], _rwq.ESTALE, arg, h._lease_ms()] + pairs)
        for i, x in zip(pick, r):
            if int(x) < 0:
                stale.append(i)
                continue
            if verb != _api.HELD:
                b._state[i] = verb
            if int(x) == 1:
                to_move.append(i)
        return stale, to_move

    async def ack(self, indices: Optional[Iterable[int]] = None) -> None:
        """As pyqueue.asyncio.Batch.ack (one awaited step)."""
        b: Any = self._b     # (BatchAPI is untyped)
        stale, _ = await self._apply(_api.ACKED, b._pick(indices), 0)
        if stale:
            raise _api.batch_expired("ack", b._ids, stale)

    async def nack(self, indices: Optional[Iterable[int]] = None, delay: float = 0.0,
                   error: Optional[str] = None) -> None:
        """As pyqueue.asyncio.Batch.nack (one awaited step; those on their
        last delivery moved to the dead-letter queue by the sync code)."""
        b: Any = self._b     # (BatchAPI is untyped)
        arg = b._seconds(delay, "delay")
        stale, to_move = await self._apply(_api.NACKED, b._pick(indices), arg)
        b._move(to_move, lambda n: f"delivered {n} times, last: nacked", error)
        if stale:
            raise _api.batch_expired("nack", b._ids, stale)

    async def reject(self, indices: Optional[Iterable[int]] = None,
                     reason: str = "rejected") -> None:
        """As pyqueue.asyncio.Batch.reject (one awaited step, then the
        moves to the dead-letter queue by the sync code)."""
        b: Any = self._b     # (BatchAPI is untyped)
        stale, to_move = await self._apply(_api.REJECTED, b._pick(indices), 0)
        b._move(to_move, lambda n: f"rejected: {reason}", reason)
        if stale:
            raise _api.batch_expired("reject", b._ids, stale)

    async def extend(self, seconds: float, indices: Optional[Iterable[int]] = None) -> None:
        """As pyqueue.asyncio.Batch.extend (one awaited step)."""
        b: Any = self._b     # (BatchAPI is untyped)
        arg = b._seconds(seconds, "seconds")
        stale, _ = await self._apply(_api.HELD, b._pick(indices), arg)
        if stale:
            raise _api.batch_expired("extend", b._ids, stale)


# -- Topic ------------------------------------------------------------------

# _READ with the position this handle handed out last as the one to read
# from (not the server's), and the server's position set to it (not to
# what this read returns): a read whose reply is lost reads the same
# messages again, and a lossless publisher never drops a message this
# subscription has not been handed.
_READ_FROM = ("local pos = redis.call('HGET', P, ARGV[1])\n"
              "if not pos then pos = tonumber(ARGV[4]) else pos = tonumber(pos) end\n")
_SET_POS = "redis.call('HSET', P, ARGV[1], pos)\n"
if _rt._READ.count(_READ_FROM) != 1 or _rt._READ.count(_SET_POS) != 1:  # pragma: no cover
    raise ImportError("topic._READ changed: pyqueue.asyncio's _AREAD no longer fits it")
_AREAD = (_rt._READ.replace(_READ_FROM, "local pos = tonumber(ARGV[4])\nlocal handed = pos\n")
          .replace(_SET_POS, "redis.call('HSET', P, ARGV[1], handed)\n"))


class RedisTopic(_aq.Topic[Any]):
    """pyqueue.asyncio.Topic over a Redis topic handle."""

    _h: _rt.RedisTopic

    def _init(self) -> None:
        pass

    async def publish(self, obj: Any, timeout: Optional[float] = None) -> None:
        """As pyqueue.asyncio.Topic.publish: a lossless topic waits for
        room in XREAD on its space stream. Cancelled while its reply is on
        the way, the message may have been published."""
        h = self._h
        h._check_open()
        until = _api.deadline(True, timeout)
        data = h._encode(obj)
        b = h._bound
        while True:
            for sid in h._take_dropped():   # (as the sync publish: _rt._dropped)
                try:
                    await script(b, _rt._UNSUBSCRIBE, h._keys, [sid])
                except Exception:  # noqa: BLE001 - its lease ends it
                    pass
            r = await script(b, _rt._PUBLISH, h._keys, [data])
            if r[0] == -2:
                raise ShutDown(f"topic {h._name!r} is shut down")
            if r[0] < 0:
                raise SegmentNotFound(f"topic {h._name!r} was removed from {b.url}")
            if len(r) == 1:
                return
            left = _api.remaining(until)
            if left == 0.0:
                raise Full()
            # a dead subscriber's lease running out is the longest wait needed
            lease = h._settings["sub_ms"] / 1000.0
            await command(b, "XREAD", "COUNT", 1, "BLOCK",
                          _block_ms(lease if left is None else min(left, lease)),
                          "STREAMS", h._keys[4], r[1])

    def subscribe(self, start: str = "latest") -> RedisSubscription:
        """As pyqueue.asyncio.Topic.subscribe (read it with the async calls
        only: a sync read of the same subscription reads from the server's
        position, which is one read behind)."""
        return RedisSubscription(self._h.subscribe(start))


# KEYS: the topic's; ARGV: id, a position handed out -> 0. Raises the
# server's position of the subscription to it (never lowers it); on a
# lossless topic tells the publishers waiting for room.
_CONFIRM = _rt._HEAD + """
local p = redis.call('HGET', P, ARGV[1])
if not p or tonumber(p) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', P, ARGV[1], ARGV[2])
if redis.call('HGET', M, 'mode') == 'lossless' then
  redis.call('XADD', W, 'MAXLEN', 1, '*', 'r', 1)
end
return 0
"""


class RedisSubscription(_Handle, _aq.Subscription[Any]):
    """pyqueue.asyncio.Subscription of a Redis topic. The position read
    from is this handle's (updated with no await between the reply and
    the return), so a cancelled read loses and repeats nothing; the
    server's position follows what was handed out (a task after each
    read, and the next read), so a lossless publisher waits for no more
    than what this subscription has been handed."""

    _h: _rt.RedisSubscription

    def _init(self) -> None:
        pass

    def _confirm(self, b: RedisBackend, t: _rt.RedisTopic, pos: int) -> None:
        # Kept referenced until done (_keep): the loop holds only a weak one.
        _keep(asyncio.ensure_future(script(b, _CONFIRM, t._keys, [self._h._sid, pos])))

    async def _read(self, max_messages: int, timeout: Optional[float]) -> List[bytes]:
        s = self._h
        s._check()
        until = _api.deadline(True, timeout)
        t = s._topic
        b = t._bound
        if s._pos is None:      # where subscribe() put it (reading moves nothing)
            p = await command(b, "HGET", t._keys[2], s._sid)
            if s._pos is None:
                s._pos = -1 if p is None else int(p)
        while True:
            async with self._step_lock():
                r = await script(b, _AREAD, t._keys,
                                 [s._sid, max_messages, t._settings["sub_ms"], s._pos])
                if r[0] == -1 and len(r) == 1:
                    raise SegmentNotFound(f"topic {t._name!r} was removed from {b.url}")
                # From the reply to the return: no await.
                s.lost += r[0]
                s._pos, s._seq = r[1], r[2]
            s._check()      # closed under this step: nothing handed out
            if len(r) > 4:
                self._confirm(b, t, s._pos)
                raws: List[bytes] = r[4:]
                return raws
            if r[3] == 1:
                raise ShutDown(f"topic {t._name!r} is shut down")
            left = _api.remaining(until)
            if left == 0.0:
                raise Empty()
            # A message after the position lands on the stream itself; the
            # shutdown adds to t.shut; the lease is renewed before it ends.
            lease = t._settings["sub_ms"] / 2000.0
            await self._wait_for(b, "XREAD", "COUNT", 1, "BLOCK",
                                 _block_ms(lease if left is None else min(left, lease)),
                                 "STREAMS", t._keys[1], t._keys[5], f"0-{s._pos}", "0-0")
            s._check()          # closed under this wait: ValueError

    async def get(self, timeout: Optional[float] = None) -> Any:
        """As pyqueue.asyncio.Subscription.get."""
        s = self._h
        _api.check_timeout(timeout)     # (before a held message is handed out)
        if not s._buf:
            # What was read is the sync handle's to hand out (and to report
            # as UndecodableMessage, the rest kept), as its own get does.
            s._buf = await self._read(1, timeout)
        return s.get(block=False)

    async def get_many(self, max_messages: int = 1024,
                       timeout: Optional[float] = None) -> List[Any]:
        """As pyqueue.asyncio.Subscription.get_many: an undecodable message
        is reported alone, the ones before it returned, the ones after it
        by the next calls (it lost the whole batch)."""
        max_messages = _api.check_max_messages(max_messages)
        _api.check_timeout(timeout)
        s = self._h
        if not s._buf:
            s._buf = await self._read(max_messages, timeout)
        return s.get_many(max_messages, block=False)

    def get_nowait(self) -> Any:
        """As pyqueue.asyncio.Subscription.get_nowait: one synchronous read
        from this handle's position (it blocks the loop for one round
        trip). queue.Empty also while a read of this subscription is in the
        middle of its step on this loop (reading now would hand out the
        same messages twice)."""
        s = self._h
        if s._buf:
            return _codec.decode(s._buf.pop(0), s._topic._serializer)
        s._check()
        if _running() is not None:
            self._loop()        # RuntimeError on another open loop than its own
        elif self._bound_elsewhere(None):
            raise self._elsewhere()     # (a thread with no loop: it reads the same position)
        if _step_busy(self):
            raise Empty()
        t = s._topic
        b = t._bound
        if s._pos is None:
            p = b.client.hget(t._keys[2], s._sid)
            s._pos = -1 if p is None else int(p)
        r = b.script("topic_aread", _AREAD)(keys=t._keys,
                                            args=[s._sid, 1, t._settings["sub_ms"], s._pos])
        if r[0] == -1 and len(r) == 1:
            raise SegmentNotFound(f"topic {t._name!r} was removed from {b.url}")
        s.lost += r[0]
        s._pos, s._seq = r[1], r[2]
        if len(r) > 4:
            b.script("topic_confirm", _CONFIRM)(keys=t._keys, args=[s._sid, s._pos])
            return _codec.decode(r[4], s._topic._serializer)
        if r[3] == 1:
            raise ShutDown(f"topic {t._name!r} is shut down")
        raise Empty()

    def _close(self) -> None:
        """Close this subscription: a read waiting raises ValueError."""
        self._cancel_waits()
        self._h.close()

    @property
    def lag(self) -> int:
        """Messages published and not yet handed out by this subscription
        (counted from this handle's position, not the server's)."""
        s = self._h
        s._check()
        if s._pos is None:
            return s.lag
        t = s._topic
        seq = int(t._bound.client.hget(t._keys[0], "seq") or 0)
        return max(0, seq - s._pos)


_OT = TypeVar("_OT", bound=_aq._Owner)


def wrap(cls: Type[_OT], h: Any) -> Optional[_OT]:
    """The Redis subclass of pyqueue.asyncio class `cls` for handle h, or
    None when there is none (TypeError from the caller)."""
    impl: Type[Union[RedisQueue, RedisWorkQueue, RedisTopic, RedisSubscription]]
    if isinstance(h, _rq.RedisJoinableQueue):
        impl = RedisJoinableQueue
    elif isinstance(h, _rq.RedisQueue):
        impl = RedisQueue
    elif isinstance(h, _rwq.RedisWorkQueue):
        impl = RedisWorkQueue
    elif isinstance(h, _rt.RedisTopic):
        impl = RedisTopic
    elif isinstance(h, _rt.RedisSubscription):
        impl = RedisSubscription
    else:   # a Log, or a Consumer of one: aio_log.py
        from pyqueue.backends.redis import aio_log
        return aio_log.wrap(cls, h)
    return make(cls, impl, h)


def make(cls: Type[_OT], impl: Type[Any], h: Any) -> Optional[_OT]:
    """An `impl` (a Redis subclass of pyqueue.asyncio class `cls`) owning
    sync handle h; None when impl is not a `cls`."""
    if not issubclass(impl, cls):
        return None
    made: Any = impl.__new__(impl)
    made._h = h
    made._init()
    return cast(_OT, made)
