"""The commands of a step, packed for the wire.

redis-py's packer with hiredis (HiredisRespSerializer.pack) first encodes
every argument in Python (an isinstance chain and a call each), then hands
them to hiredis.pack_command. A step of pyqueue is an EVALSHA with all its
keys: measured with timeit on the 2-core development machine (2026-12-07,
redis-py 8.2, hiredis 3.5), a WorkQueue step's (13 keys) took 16.0 us to
pack, a Queue step's (4 keys) 7.7 us, a plain RPUSH 4.2 us; hiredis alone
packs the same commands in 2.0 and 1.1 us. So where redis-py would use that
packer with its default encoding (UTF-8, strict: what hiredis does to a
str), the commands go to hiredis.pack_command directly: the same bytes
(tests/contract/test_redis_pack.py), without the Python pass. Anywhere else
(no hiredis, a packer or an encoding of the user's choice) redis-py packs
them, as before.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

_hiredis_pack: Optional[Callable[[Any], bytes]] = None
_HiredisPacker: Optional[type] = None
try:
    import hiredis as _hiredis
    from redis import connection as _connection
    _hiredis_pack = _hiredis.pack_command
    _HiredisPacker = _connection.HiredisRespSerializer
except (ImportError, AttributeError):  # pragma: no cover - no hiredis, or one
    pass                                 # (or a redis-py) too old to have these


def _direct(conn: Any) -> bool:
    """Whether conn packs with redis-py's hiredis packer and its default
    encoding: then hiredis.pack_command makes the same bytes."""
    encoder = getattr(conn, "encoder", None)
    return (_hiredis_pack is not None
            and type(getattr(conn, "_command_packer", None)) is _HiredisPacker
            and encoder is not None and encoder.encoding in ("utf-8", "utf8")
            and encoder.encoding_errors == "strict")


def pack_commands(conn: Any, commands: Sequence[Tuple[Any, ...]]) -> List[bytes]:
    """What conn.pack_commands(commands) returns, to send with
    conn.send_packed_command: one buffer packed by hiredis when _direct,
    else redis-py's own chunks. (A command name with a space, which
    redis-py splits, goes to redis-py's packer. A bool or None, which
    redis-py refuses with DataError and hiredis with TypeError, never
    occurs in a step.)"""
    pack = _hiredis_pack
    if (pack is not None and _direct(conn)
            and all(type(c[0]) is str and " " not in c[0] for c in commands)):
        return [b"".join([pack(c) for c in commands])]
    packed: List[bytes] = conn.pack_commands(commands)
    return packed
