"""Helpers of the binding tests (threads sharing a handle, poison messages,
the default codec, handles dying in reference cycles): importable by
spawned and forkserver children."""
import enum
import pickle
import socket
import time


class Color(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1


class Tag(bytes):
    """A bytes subclass: it must come back as a Tag."""


class Name(str):
    """A str subclass: it must come back as a Name."""


def _rebuild_slow(n, payload):
    time.sleep(0)  # releases the GIL: another thread may use the same handle now
    return SlowToLoad(n, payload)


class SlowToLoad:
    """Unpickling it releases the GIL (time.sleep(0) in its rebuild)."""

    def __init__(self, n, payload=b""):
        self.n = n
        self.payload = payload

    def __reduce__(self):
        return (_rebuild_slow, (self.n, self.payload))

    def __eq__(self, other):
        return type(other) is SlowToLoad and (other.n, other.payload) == (self.n, self.payload)

    def __hash__(self):
        return hash(("slow", self.n))

    def __repr__(self):
        return f"SlowToLoad({self.n})"


def stress_messages(n):
    """n messages of three kinds: raw bytes whose content is a valid pickle
    (handed to pickle.loads it would come out as a tuple), objects whose
    unpickling releases the GIL, and str."""
    out = []
    for i in range(n):
        k = i % 3
        if k == 0:
            out.append(pickle.dumps(("raw", i)))
        elif k == 1:
            out.append(SlowToLoad(i, b"p" * (i % 50)))
        else:
            out.append(f"s{i}-" + "x" * (i % 40))
    return out


def message_key(m):
    """A message as (type, value): equal keys mean the same message, intact,
    of the same type."""
    return (type(m).__name__, m if not isinstance(m, SlowToLoad) else (m.n, m.payload))


def _fail_load(message):
    raise LookupError(message)


class Unloadable:
    """Pickles fine; unpickling raises LookupError."""

    def __init__(self, message="cannot load me"):
        self.message = message

    def __reduce__(self):
        return (_fail_load, (self.message,))


class Interrupt(BaseException):
    """A BaseException raised while decoding (as a Ctrl-C would be)."""


_interrupts_left = [0]


def arm_interrupts(n):
    _interrupts_left[0] = n


def _load_interrupting(value):
    if _interrupts_left[0] > 0:
        _interrupts_left[0] -= 1
        raise Interrupt("interrupted while decoding")
    return InterruptsOnce(value)


class InterruptsOnce:
    """Its unpickling raises Interrupt while armed (arm_interrupts)."""

    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        return (_load_interrupting, (self.value,))

    def __eq__(self, other):
        return type(other) is InterruptsOnce and other.value == self.value

    def __hash__(self):
        return hash(self.value)


# -- multiprocessing's pickler ---------------------------------------------------

class Marked:
    """Carried by a reducer registered with ForkingPickler.register."""

    def __init__(self, value, how="plain pickle"):
        self.value = value
        self.how = how


def rebuild_marked(value, how):
    return Marked(value, how)


def reduce_marked(obj):
    return (rebuild_marked, (obj.value, "via registered reducer"))


def reduce_marked_again(obj):
    return (rebuild_marked, (obj.value, "via the reducer registered in its place"))


def use_connection(q, out):
    """Gets a Connection from pyqueue queue q, sends through it, reports."""
    try:
        conn = q.get(timeout=30)
        conn.send(("hello through", type(conn).__name__))
        conn.close()
        out.put("ok")
    except BaseException as e:  # reported to the test, which asserts "ok"
        out.put(f"{type(e).__name__}: {e}")


def use_socket(q, out):
    """Gets a socket from pyqueue queue q, sends through it, reports."""
    try:
        s = q.get(timeout=30)
        assert isinstance(s, socket.socket), type(s)
        s.sendall(b"hello through a socket")
        s.close()
        out.put("ok")
    except BaseException as e:
        out.put(f"{type(e).__name__}: {e}")


def get_marked(q, out):
    try:
        m = q.get(timeout=30)
        out.put((type(m).__name__, m.value, m.how))
    except BaseException as e:
        out.put(f"{type(e).__name__}: {e}")


def takes_with_no_memory_left(q, size, takes, out):
    """The calls of takes ("get": get(), "get_many": get_many(300)) while
    RLIMIT_AS leaves this process 1 MiB of address space, so that a copy
    of a message of `size` bytes out of the ring fails (MemoryError); then,
    the limit put back, one get(). Reports (each call's outcome: "got" for
    a get, the number of messages for a get_many, or the exception's type
    name; the length of what the last get returned)."""
    from tests._support import address_space_left
    outcomes = []
    hold = []
    with address_space_left(1 << 20):
        # A forked child inherits its parent's heap, and free chunks there
        # of the message's size (glibc keeps large freed blocks in the heap
        # once its mmap threshold has grown) would serve the copy without
        # any new address space: blocks of that size are taken until there
        # is none left.
        while True:
            try:
                hold.append(bytearray(size))
            except MemoryError:
                break
        for take in takes:
            try:
                if take == "get":
                    q.get(timeout=10)
                    outcomes.append("got")
                else:
                    outcomes.append(len(q.get_many(300, timeout=10)))
            except BaseException as e:  # noqa: BLE001 - reported
                outcomes.append(type(e).__name__)
        del hold[:]
    out.put((outcomes, len(q.get(timeout=10))))
