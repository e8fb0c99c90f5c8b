"""What pyqueue.asyncio's Redis classes do with a connection of their own:
the errors a lost connection becomes, giving a connection back whatever
happens to the coroutine that used it, and a step followed by WAIT on its
connection (a URL with ``?min_replicas=N``).

A step under min_replicas cannot go through the clients' own command
paths: WAIT counts the replicas that have every write of *its*
connection, so the script and the WAIT must share one, and the cluster
client may resend a command whose reply was lost. As the synchronous
_Step (pyqueue/backends/redis/__init__.py) does, the step goes out once on
a connection taken here (on a cluster, from the node of the first key's
slot), and the replies that say the script did not run (NOSCRIPT, MOVED,
ASK, TRYAGAIN, CLUSTERDOWN, MASTERDOWN) are handled here.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Set, Tuple

from pyqueue.backends.redis import (_REDIRECTS, _UNSENT_TRIES, ConnectionLost, _pack,
                                    check_replicated)

if TYPE_CHECKING:
    from pyqueue.backends.redis import RedisBackend

try:
    import redis.asyncio.cluster as _aredis_cluster
    from redis import exceptions as _rexc
except ImportError:  # pragma: no cover - the Redis backend needs redis-py anyway
    pass


def lost(backend: RedisBackend, e: Exception, sent: bool) -> ConnectionLost:
    """The ConnectionLost of a step whose connection failed with e."""
    if sent:
        return ConnectionLost(f"the connection to Redis at {backend.url} was lost during a "
                              f"call: {e} (the step was sent; it may have been applied)",
                              sent=True)
    return ConnectionLost(f"cannot reach Redis at {backend.url}: {e} (nothing of this call's "
                          f"step was sent)", sent=False)


# Tasks that must run to their end whatever happens to the coroutine that
# started them (strong references: the loop keeps only weak ones).
_background: Set[asyncio.Future[Any]] = set()


def retrieved(task: asyncio.Future[Any]) -> None:
    """A done callback: the task's exception is read (no "never
    retrieved" warning for a task nobody awaits)."""
    if not task.cancelled():
        task.exception()


def keep(task: asyncio.Future[Any]) -> asyncio.Future[Any]:
    """Holds task until it ends."""
    _background.add(task)
    task.add_done_callback(_background.discard)
    task.add_done_callback(retrieved)
    return task


async def shielded(coro: Any) -> None:
    """Runs coro to its end in a task of its own: cancelling the caller
    (even twice) does not stop it."""
    await asyncio.shield(keep(asyncio.ensure_future(coro)))


async def put_back(pool: Any, conn: Any, broken: bool) -> None:
    """Gives conn back to pool (a one-server pool, or a cluster node),
    disconnected first when broken (a reply may still be on its way)."""
    try:
        if broken:
            await conn.disconnect(nowait=True)
    finally:
        released = pool.release(conn)
        if asyncio.iscoroutine(released):   # a pool's is awaited, a node's is not
            await released


async def replicated(backend: RedisBackend, client: Any, sha: str, source: str,
                     keys: Sequence[str], args: Sequence[Any],
                     confirm: Optional[Callable[[Any], bool]] = None) -> Any:
    """Runs a Lua script, then WAIT backend.min_replicas on the same
    connection -> the script's reply. NotReplicated when fewer replicas
    confirmed within wait_timeout (the write was applied) and confirm is
    None or confirm(reply) is true; ConnectionLost as every step
    (sent=True: it may have been applied)."""
    cluster = isinstance(client, _aredis_cluster.RedisCluster)
    if cluster:
        await client.initialize()      # (the slot map, once)
    asking: Optional[Tuple[str, int]] = None
    use_eval = False
    unsent = redirects = 0
    while True:
        run = ("EVAL", source) if use_eval else ("EVALSHA", sha)
        commands: List[Tuple[Any, ...]] = [("ASKING",)] if asking else []
        commands += [(*run, len(keys), *keys, *args),
                     ("WAIT", backend.min_replicas, backend.wait_timeout)]
        try:
            pool, conn = await _connection(client, cluster, keys, asking)
        except (_rexc.ConnectionError, _rexc.TimeoutError, _rexc.RedisClusterException) as e:
            if cluster and unsent < _UNSENT_TRIES:
                await _back_off(client, unsent)
                unsent += 1
                asking = None
                continue
            raise lost(backend, e, False) from e
        replies: List[Any] = []
        broken = True
        try:
            await conn.send_packed_command(_pack.pack_commands(conn, commands))
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except _rexc.ResponseError as e:
                    replies.append(e)
            broken = False
        except (_rexc.ConnectionError, _rexc.TimeoutError) as e:
            raise lost(backend, e, True) from e
        finally:
            await shielded(put_back(pool, conn, broken))
        result = replies[-2]
        asking = None
        if not isinstance(result, _rexc.ResponseError):
            if confirm is None or confirm(result):
                check_replicated(backend, replies[-1])
            return result
        redirects += 1
        if redirects > _REDIRECTS:
            raise result
        if isinstance(result, _rexc.NoScriptError):
            use_eval = True                           # nothing ran
        elif cluster and isinstance(result, _rexc.AskError) and \
                not isinstance(result, _rexc.MovedError):
            asking = client.nodes_manager.remap_host_port(result.host, result.port)
        elif cluster and isinstance(result, _rexc.MovedError):
            await client.nodes_manager.move_slot(result)
        elif cluster and isinstance(result, (_rexc.TryAgainError, _rexc.ClusterDownError,
                                             _rexc.MasterDownError)) and unsent < _UNSENT_TRIES:
            await _back_off(client, unsent)
            unsent += 1
        else:
            raise result


async def _connection(client: Any, cluster: bool, keys: Sequence[str],
                      asking: Optional[Tuple[str, int]]) -> Tuple[Any, Any]:
    """(pool, connected connection) to send a step to: one server's pool,
    or the cluster node of the first key's slot (or the one an ASK named).
    ConnectionError when it cannot be reached (nothing was sent)."""
    if not cluster:
        pool = client.connection_pool
        return pool, await pool.get_connection()
    if asking:
        node = client.get_node(host=asking[0], port=asking[1])
    elif keys:
        node = client.nodes_manager.get_node_from_slot(client.keyslot(keys[0]))
    else:
        node = client.get_default_node()
    if node is None:
        raise _rexc.ConnectionError(f"no node at {asking} in the slot map")
    conn = node.acquire_connection()
    try:
        if not conn.is_connected:
            await conn.connect()
    except BaseException:
        node.release(conn)
        raise
    return node, conn


async def _back_off(client: Any, tries: int) -> None:
    """A cluster failing over: wait (exponential backoff: a failover takes
    a few node timeouts), then read the slot map again."""
    await asyncio.sleep(0.05 * 2 ** tries)
    try:
        await client.nodes_manager.initialize()
    except (_rexc.RedisError, _rexc.RedisClusterException, OSError):
        pass    # the next try finds out
