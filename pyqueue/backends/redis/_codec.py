"""Message encoding for the Redis backend: pyqueue's default codec (exact
bytes and str travel raw, everything else is pickled as
multiprocessing.Queue pickles it, by pyqueue._core.default_dumps), with a
one-byte tag in front so that a reader knows which it is; or a custom
(dumps, loads) pair."""
from __future__ import annotations

import pickle
from typing import Any, Callable, Optional, Tuple, cast

from pyqueue import _core

# A handle's custom serializer: (dumps, loads), or None for the default codec.
Serializer = Optional[Tuple[Callable[[Any], Any], Callable[[bytes], Any]]]

T_BYTES = b"b"
T_STR = b"s"
T_PICKLE = b"p"
T_CUSTOM = b"c"


def encode(obj: Any, serializer: Serializer) -> bytes:
    if serializer is not None:
        data = serializer[0](obj)
        try:
            view = memoryview(data)
        except TypeError:
            raise TypeError(f"the serializer's dumps returned {type(data).__name__}, "
                            "not a bytes-like object") from None
        return T_CUSTOM + view.tobytes()
    t = type(obj)
    if t is bytes:
        return T_BYTES + cast(bytes, obj)
    if t is str:
        return T_STR + cast(str, obj).encode("utf-8", "surrogatepass")
    if t is bytearray or t is memoryview:
        return T_BYTES + bytes(obj)
    return T_PICKLE + bytes(_core.default_dumps(obj))


def decode(raw: bytes, serializer: Serializer, raw_values: bool = False) -> Any:
    """The value of an encoded message. raw_values (pyqueue tail of a
    log): a pickled or custom-encoded value is not decoded but returned as
    pyqueue._log.RawValue (its type, its bytes)."""
    tag = raw[:1]
    if raw_values and tag in (T_PICKLE, T_CUSTOM):
        from pyqueue._log import RawValue
        return RawValue("pickle" if tag == T_PICKLE else "custom", bytes(raw[1:]))
    if serializer is not None and tag != T_CUSTOM:
        # A handle with a serializer never unpickles (nor hands out raw
        # bytes): whatever else is in its keys was not put through it.
        if tag == T_PICKLE:
            raise ValueError("refusing to unpickle: this handle uses a custom serializer")
        raise ValueError("a message not encoded with this handle's serializer")
    if tag == T_BYTES:
        return raw[1:]
    if tag == T_STR:
        return raw[1:].decode("utf-8", "surrogatepass")
    if tag == T_PICKLE:
        return pickle.loads(memoryview(raw)[1:])
    if tag == T_CUSTOM:
        if serializer is None:
            raise ValueError("a message encoded with a custom serializer read by a handle "
                             "without one")
        return serializer[1](raw[1:])
    raise ValueError(f"not a pyqueue message (tag {tag!r})")


def as_bytes(value: object, what: str) -> bytes:
    """A key or header value as bytes: str as UTF-8, a bytes-like object
    as it is; else a TypeError naming `what`."""
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")
