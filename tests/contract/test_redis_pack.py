"""pyqueue packs its steps with hiredis.pack_command where redis-py would
pack them with its hiredis packer and default encoding
(pyqueue/backends/redis/_pack.py): the bytes must be the ones redis-py
makes, for every kind of argument a step carries; anywhere else redis-py
packs them itself. Real redis-py connection objects (the sync and the
asyncio one); nothing is sent."""
import pytest

redis = pytest.importorskip("redis")
hiredis = pytest.importorskip("hiredis")

from pyqueue.backends.redis import _pack  # noqa: E402

KEYS = [f"pq:{{jobs-é}}:wq.{k}" for k in ("meta", "msg", "cnt", "enq", "why", "ready")]
STEPS = [
    [("EVALSHA", "a" * 40, len(KEYS), *KEYS, 0, 30000, b"\x01" + b"x" * 64, "")],
    [("EVALSHA", "b" * 40, 2, "k1", "k2", *[b"m" * n for n in range(0, 300, 7)]),
     ("WAIT", 1, 500)],
    [("ASKING",), ("MULTI",), ("RPUSH", "l", b"\x00" * 7000, memoryview(b"mv")),
     ("EVAL", "return 1", 0, 2.5, 1e-05, -3, 10**20), ("EXEC",)],
    [("XREAD", "BLOCK", 1500, "STREAMS", "s", "0-0"), ("BLPOP", "a", "b", 0.25)],
]


def _connections():
    sync = redis.Redis(unix_socket_path="/nonexistent").connection_pool.make_connection()
    import redis.asyncio as aredis
    asy = aredis.Redis(unix_socket_path="/nonexistent").connection_pool.make_connection()
    return [sync, asy]


@pytest.mark.parametrize("commands", STEPS)
def test_the_direct_packing_makes_redis_pys_bytes(commands):
    for conn in _connections():
        assert _pack._direct(conn)
        ours = _pack.pack_commands(conn, commands)
        assert len(ours) == 1                       # one buffer: hiredis packed it
        assert ours[0] == b"".join(bytes(c) for c in conn.pack_commands(commands))


def test_redis_py_packs_where_the_direct_packing_would_differ():
    # A non-default encoding, a packer of the user's, a command name with a
    # space (redis-py splits it): redis-py's own chunks.
    latin = redis.Redis(unix_socket_path="/x", encoding="latin-1").connection_pool
    conn = latin.make_connection()
    assert not _pack._direct(conn)
    cmd = [("SET", "k", "é")]
    assert _pack.pack_commands(conn, cmd) == conn.pack_commands(cmd)
    assert b"\xe9" in b"".join(_pack.pack_commands(conn, cmd))    # latin-1, not UTF-8

    conn = redis.Redis(unix_socket_path="/x").connection_pool.make_connection()
    spaced = [("SCRIPT LOAD", "return 1")]
    assert _pack.pack_commands(conn, spaced) == conn.pack_commands(spaced)
    assert b"$6\r\nSCRIPT\r\n$4\r\nLOAD\r\n" in b"".join(_pack.pack_commands(conn, spaced))

    class Packer:
        def pack(self, *args):
            return [b"mine"]
    custom = redis.Redis(unix_socket_path="/x").connection_pool.make_connection()
    custom._command_packer = Packer()
    assert not _pack._direct(custom)
    assert _pack.pack_commands(custom, [("PING",)]) == [b"mine"]
