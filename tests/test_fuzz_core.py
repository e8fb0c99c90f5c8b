"""Fuzzing of the C core's validation and ring walk on hostile memory,
through the test-only cffi binding (tests/cffi_core.py).

Whoever can write a segment can put anything in it, so every function that
reads a segment must answer with a code, never read or write outside it,
and never loop forever:

(a) pq_segment_check / pq_ring_open on random bytes and on mutations of a
    valid header, buffers of 0..8 KiB;
(b) a valid ring (small capacity, committed, padding, abandoned and
    in-progress records, wrapped) whose cursors, message counts, cached
    cursors, record header words and process slots (owner, announced
    batch) are overwritten with chosen values;
(c) the same ring with random bytes of its data area overwritten.

After the damage: pq_ring_peek returns an error code or records whose
payload lies entirely inside the data area (checked with pointer
arithmetic and by reading every byte), consume/take/repair/reap/stats/depth
do not trap, a peek-consume loop ends within a bound, and pq_ring_claim either
refuses or hands out room inside the data area (then written in full)
without touching the segment header. The buffers end at a PROT_NONE page,
or, under PYQUEUE_SANITIZE=1 (ASan), are malloc'd to their exact size.
"""

import errno
import os

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests import cffi_core

SANITIZE = cffi_core.sanitize_requested()
# ASan makes each example several times slower; fewer of them keeps the
# file well under a minute there (about 10 s normally).
SCALE = 1.0


def fuzz_settings(n):
    return settings(
        max_examples=max(20, int(n * SCALE)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                               HealthCheck.data_too_large],
    )


U64 = (1 << 64) - 1

_core = None


def core():
    global _core
    if _core is None:
        _core = cffi_core.require()
    return _core


@pytest.fixture(scope="module", autouse=True)
def _binding():
    core()


def lib():
    return core().lib


def ffi():
    return core().ffi


CAP = 4096  # PQ_RING_MIN_CAPACITY: a small ring laps often


def seg_size():
    return int(lib().pq_ring_segment_size(CAP))


def codes():
    L = lib()
    return {
        "check": {0, -errno.EAGAIN, L.PQ_ERR_NOT_PYQUEUE, L.PQ_ERR_VERSION, L.PQ_ERR_KIND,
                  L.PQ_ERR_TRUNCATED},
        "peek": {-errno.EAGAIN, -errno.EINPROGRESS, -errno.ESTALE, L.PQ_ERR_CORRUPT},
    }


def addr(p):
    return int(ffi().cast("uintptr_t", p))


def u64_at(base, off):
    return ffi().cast("uint64_t *", base + off)


def touch(ptr, n):
    """Read every byte (a stray pointer faults here, or ASan reports)."""
    return ffi().buffer(ptr, n)[:]


# --------------------------------------------------------------------------
# checks shared by (a), (b), (c)
# --------------------------------------------------------------------------

def check_records(r, rc, recs, batch, max_):
    """Everything pq_ring_peek returned lies inside the data area."""
    cap = r.capacity
    assert rc == batch.count <= max_
    assert (batch.next - batch.head) & U64 <= cap
    data = addr(r.data)
    for i in range(rc):
        rec = recs[i]
        pl = addr(rec.payload)
        assert data + lib().PQ_RECORD_HEADER <= pl <= data + cap, (pl - data, rec.len)
        assert pl + rec.len <= data + cap, (pl - data, rec.len)
        touch(rec.payload, rec.len)


def exercise_consumer(r, max_=16):
    """peek (bounds), consume, repair, stats, then a peek loop that must end."""
    F, L = ffi(), lib()
    peek_codes = codes()["peek"]
    recs = F.new("pq_ring_record[]", 64)
    batch = F.new("pq_ring_batch *")

    rc = L.pq_ring_peek(r, recs, max_, batch)
    assert rc >= 0 or rc in peek_codes, rc
    event("peek: %s" % (errno.errorcode.get(-rc, rc) if rc < 0 else
                        "records" if rc else "skipped only"))
    if rc >= 0:
        check_records(r, rc, recs, batch, max_)
    rr = L.pq_ring_repair_head(r)
    assert rr in (0, 1) or rr < 0
    assert L.pq_ring_reap_dead_consumers(r) >= 0
    stats = F.new("pq_ring_stats *")
    L.pq_ring_get_stats(r, stats)
    L.pq_ring_depth(r)

    # Nothing else moves head here, so -ESTALE cannot happen and every
    # successful peek is consumed, which moves head forward by >= 16
    # bytes, never past a tail within one capacity of it (a cached tail
    # may add one more capacity).
    bound = 2 * (r.capacity // 16) + 4
    for i in range(bound):
        rc = L.pq_ring_peek(r, recs, 64, batch)
        if rc < 0:
            assert rc in peek_codes and rc != -errno.ESTALE, rc
            break
        check_records(r, rc, recs, batch, 64)
        assert batch.next != batch.head
        if i % 2:
            assert L.pq_ring_take(r, batch) == 0  # announced in this process's slot
            L.pq_ring_taken_done(r)
        else:
            assert L.pq_ring_consume(r, batch) == 0
        assert r.ctl.head == batch.next
    else:
        pytest.fail("peek/consume loop on a corrupt ring did not end")
    L.pq_ring_get_stats(r, stats)
    rr = L.pq_ring_repair_head(r)
    assert rr in (0, 1) or rr < 0
    assert L.pq_ring_reap_dead_consumers(r) >= 0


def exercise_producer(r, base, lens):
    """pq_ring_claim refuses, or hands out room inside the data area."""
    F, L = ffi(), lib()
    header = bytes(F.buffer(base, lib().PQ_SEGMENT_HEADER_BYTES))
    n = len(lens)
    clens = F.new("uint32_t[]", lens)
    pos = F.new("uint64_t[]", n)
    rc = L.pq_ring_claim(r, clens, n, pos)
    assert rc in (0, -errno.EAGAIN, -errno.EMSGSIZE, L.PQ_ERR_CORRUPT), rc
    event("claim: %s" % (errno.errorcode.get(-rc, rc) if rc < 0 else "ok"))
    data = addr(r.data)
    cap = r.capacity
    if rc == 0:
        for i in range(n):
            p = L.pq_ring_payload(r, pos[i])
            assert data + L.PQ_RECORD_HEADER <= addr(p), hex(pos[i])
            assert addr(p) + lens[i] <= data + cap, (hex(pos[i]), lens[i])
            F.memmove(p, b"\xa5" * lens[i], lens[i])
            L.pq_ring_commit(r, pos[i], 1)
    elif rc == -errno.EAGAIN:
        # "Full" must mean a consistent ring that consumers can empty:
        # with impossible cursors a producer would wait forever.
        # (Full by maxsize is told by the counts alone; then it is up to
        # the consumers, who do check the cursors.)
        c = r.ctl
        depth = (c.tail_msgs - c.head_msgs) & U64
        if r.maxsize:
            assert depth <= r.maxsize, (c.tail_msgs, c.head_msgs)
        if not r.maxsize or depth + n <= r.maxsize:
            h, t = c.head, c.tail
            assert (t - h) & U64 <= cap, (h, t)
            assert t % 16 == 0, t
    assert bytes(F.buffer(base, L.PQ_SEGMENT_HEADER_BYTES)) == header


# --------------------------------------------------------------------------
# (a) headers
# --------------------------------------------------------------------------

_template = None


def template():
    """The bytes of a fresh, valid queue segment with a 4 KiB ring, and a few
    records in it."""
    global _template
    if _template is None:
        F, L = ffi(), lib()
        size = seg_size()
        base = core().alloc(size)
        assert L.pq_ring_create(base, size, CAP, 7, F.NULL, 0) == 0
        r = F.new("pq_ring *")
        assert L.pq_ring_open(r, base, size) == 0
        for n in (0, 5, 100, 1000):
            lens = F.new("uint32_t[]", [n])
            pos = F.new("uint64_t[]", 1)
            assert L.pq_ring_claim(r, lens, 1, pos) == 0
            F.memmove(L.pq_ring_payload(r, pos[0]), b"x" * n, n)
            L.pq_ring_commit(r, pos[0], 1)
        _template = bytes(F.buffer(base, size))
    return _template


INTERESTING = [0, 1, 2, 3, 15, 16, 255, 256, 257, 4095, 4096, 4097, 8191, 8192, 8193, 12288,
               1 << 31, (1 << 32) - 1, 1 << 32, 1 << 40, (1 << 40) + 4096, 1 << 63, U64,
               U64 - 4095, U64 - 15]
HEADER_FIELDS = [  # (field, params index or None, width)
    ("magic", None, 8), ("layout_version", None, 4), ("kind", None, 4),
    ("segment_size", None, 8), ("data_offset", None, 8), ("data_size", None, 8),
    ("state", None, 4), ("params", 0, 8), ("params", 1, 8),
]


@st.composite
def header_buffers(draw):
    full = len(template())  # 8 KiB: the only size a 4 KiB ring opens in
    size = draw(st.one_of(
        st.sampled_from([0, 1, 8, 64, 255, 256, 257, 4095, 4096, 4097, full - 1, full]),
        st.just(full),
        st.integers(0, full)))
    how = draw(st.sampled_from(["truncated", "fields", "flips", "magic+ready", "random"]))
    tmpl = template()
    if how == "random":
        return size, draw(st.binary(min_size=size, max_size=size))
    buf = bytearray(tmpl[:size].ljust(size, b"\0"))
    F = ffi()
    hdr = {name: F.offsetof("pq_segment_header", name) for name, _, _ in HEADER_FIELDS}
    if how == "magic+ready":
        # Past the first two checks, the rest random: the sizes decide.
        buf = bytearray(draw(st.binary(min_size=size, max_size=size)))
        if size >= 256:
            buf[0:8] = tmpl[0:8]
            buf[hdr["state"]:hdr["state"] + 4] = (1).to_bytes(4, "little")
            buf[8:16] = tmpl[8:16]  # version and kind
    elif how == "fields":
        for name, index, width in draw(st.lists(st.sampled_from(HEADER_FIELDS), min_size=1,
                                                max_size=3)):
            value = draw(st.one_of(st.sampled_from(INTERESTING), st.integers(0, U64)))
            off = hdr[name] + (8 * index if index is not None else 0)
            if off + width <= size:
                buf[off:off + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
    elif how == "flips":
        limit = min(size, 512)
        if limit:
            for off, bit in draw(st.lists(st.tuples(st.integers(0, limit - 1), st.integers(0, 7)),
                                          min_size=1, max_size=6)):
                buf[off] ^= 1 << bit
    return size, bytes(buf)


@fuzz_settings(2000)
@given(header_buffers())
def test_fuzz_segment_check_and_open(sized):
    size, content = sized
    F, L = ffi(), lib()
    ok = codes()["check"]
    base = core().alloc(size)
    F.memmove(base, content, size)

    rc1 = L.pq_segment_check(base, size, 0)
    assert rc1 in ok, rc1
    event("check: %s" % (errno.errorcode.get(-rc1, rc1) if rc1 < 0 else "ok"))
    assert L.pq_segment_check(base, size, 0) == rc1
    kq = L.pq_segment_check(base, size, L.PQ_KIND_QUEUE)
    assert kq in ok, kq
    r = F.new("pq_ring *")
    ro = L.pq_ring_open(r, base, size)
    assert ro in ok, ro
    event("open: %s" % (errno.errorcode.get(-ro, ro) if ro < 0 else "ok"))
    if kq < 0:
        assert ro == kq
    # Validation only reads.
    assert bytes(F.buffer(base, size)) == content
    if ro == 0:
        cap = r.capacity
        assert cap >= L.PQ_RING_MIN_CAPACITY and cap & (cap - 1) == 0
        assert L.pq_ring_segment_size(cap) <= size
        assert addr(r.data) == addr(base) + L.PQ_RING_DATA_OFFSET
        assert r.mask == cap - 1
        assert L.pq_ring_record_size(r.max_payload) <= cap // 2
        # The control block may be garbage too (not the claim lock's
        # business here: a consumer never takes it).
        exercise_consumer(r)


# --------------------------------------------------------------------------
# (b), (c) a valid ring, then damage
# --------------------------------------------------------------------------

OPS = st.one_of(
    st.tuples(st.just("put"), st.lists(st.sampled_from([0, 1, 15, 16, 17, 100, 500, 1000, 2032]) |
                                       st.integers(0, 700), min_size=1, max_size=4)),
    st.tuples(st.just("get"), st.integers(1, 8)),
    st.tuples(st.just("claim_dead"), st.integers(0, 300)),
    st.tuples(st.just("repair"), st.just(0)),
)
START = st.one_of(
    st.sampled_from([0, 16, CAP - 16, CAP - 64, CAP - 256, 1 << 20, (1 << 20) - 16, U64 + 1 - 16,
                     U64 + 1 - 1024, U64 + 1 - CAP]),
    st.integers(0, (1 << 60) - 1).map(lambda x: x * 16),
)


class Ring:
    def __init__(self, maxsize):
        F, L = ffi(), lib()
        self.size = seg_size()
        self.base = core().alloc(self.size)
        assert L.pq_ring_create(self.base, self.size, CAP, maxsize, F.NULL, 0) == 0
        self.r = F.new("pq_ring *")
        self.reopen()

    def reopen(self):
        assert lib().pq_ring_open(self.r, self.base, self.size) == 0

    @property
    def ctl(self):
        return self.r.ctl

    def set_start(self, start):
        """An empty ring whose cursors start at `start` (any aligned value is
        a valid history)."""
        c = self.ctl
        c.head = c.tail = start & U64
        c.epochs[0].start = start & U64  # epoch 0 begins the history
        self.reopen()

    def put(self, lens, typ=1):
        F, L = ffi(), lib()
        pos = F.new("uint64_t[]", len(lens))
        rc = L.pq_ring_claim(self.r, F.new("uint32_t[]", lens), len(lens), pos)
        if rc == 0:
            for i, n in enumerate(lens):
                F.memmove(L.pq_ring_payload(self.r, pos[i]), bytes([i + 1]) * n, n)
                L.pq_ring_commit(self.r, pos[i], typ)
        return rc, [pos[i] for i in range(len(lens))]

    def claim_dead(self, n):
        """A record whose producer died mid-copy (owner pid 0 is dead)."""
        F, L = ffi(), lib()
        pos = F.new("uint64_t[]", 1)
        rc = L.pq_ring_claim(self.r, F.new("uint32_t[]", [n]), 1, pos)
        if rc == 0:
            hdr = F.cast("pq_record_header *", self.r.data + (pos[0] & self.r.mask))
            hdr.owner = 0
        return rc

    def get(self, n):
        F, L = ffi(), lib()
        recs = F.new("pq_ring_record[]", n)
        batch = F.new("pq_ring_batch *")
        rc = L.pq_ring_peek(self.r, recs, n, batch)
        if rc >= 0:
            assert L.pq_ring_consume(self.r, batch) == 0
        else:
            assert rc in (-errno.EAGAIN, -errno.EINPROGRESS), rc
        return rc

    def positions(self):
        """Positions of the records between head and tail (valid ring)."""
        out = []
        c = self.ctl
        p, t = c.head, c.tail
        while p != t and len(out) < CAP // 16:
            out.append(p)
            ctl = u64_at(self.r.data, p & self.r.mask)[0]
            p = (p + int(lib().pq_ring_record_size(ctl & 0xFFFFFFFF))) & U64
        return out


@st.composite
def valid_rings(draw):
    ring = Ring(draw(st.sampled_from([0, 0, 3, 10])))
    ring.set_start(draw(START))
    for op, arg in draw(st.lists(OPS, max_size=30)):
        if op == "put":
            rc, _ = ring.put(arg, typ=draw(st.integers(1, 5)))
            assert rc in (0, -errno.EAGAIN, -errno.EMSGSIZE), rc
        elif op == "get":
            ring.get(arg)
        elif op == "claim_dead":
            assert ring.claim_dead(arg) in (0, -errno.EAGAIN)
        else:
            assert lib().pq_ring_repair_head(ring.r) in (0, 1)
    # A record that does not fit at the end of the data area from here
    # makes a padding record (and a lap) more likely.
    if draw(st.booleans()):
        ring.put([CAP // 2 - 64])
    return ring


DELTAS = [0, 1, 8, 15, 16, 32, CAP - 16, CAP, CAP + 16, 2 * CAP, 4 * CAP, 1 << 20]


def cursor_values(ring):
    c = ring.ctl
    h, t = c.head, c.tail
    near = st.tuples(st.sampled_from([h, t]), st.sampled_from(DELTAS), st.sampled_from([1, -1])
                     ).map(lambda x: (x[0] + x[1] * x[2]) & U64)
    return st.one_of(near, st.sampled_from([0, CAP - 16, CAP, 1 << 63, U64, U64 - 15]),
                     st.integers(0, U64))


def count_values(ring):
    c = ring.ctl
    m, n = c.head_msgs, c.tail_msgs
    return st.one_of(
        st.tuples(st.sampled_from([m, n]), st.sampled_from([0, 1, 2, 3, 10, 11, 1 << 40]),
                  st.sampled_from([1, -1])).map(lambda x: (x[0] + x[1] * x[2]) & U64),
        st.sampled_from([0, U64]), st.integers(0, U64))


def record_ctl_values(pos):
    off = pos & (CAP - 1)
    lengths = st.one_of(
        st.sampled_from([0, 1, 15, 16, 17, CAP - 32 - off, CAP - 16 - off, CAP - 15 - off,
                         CAP - off, CAP - 16, CAP, CAP + 16, 1 << 31, (1 << 32) - 16,
                         (1 << 32) - 1]).map(lambda n: n & 0xFFFFFFFF),
        st.integers(0, (1 << 32) - 1))
    tags = st.one_of(st.just(pos), st.integers(0, U64))
    crafted = st.builds(lambda tag_pos, n, typ, state: core().record_ctl(tag_pos, n, typ, state),
                        tags, lengths, st.integers(0, 255),
                        st.one_of(st.integers(0, 6), st.just(255)))
    return st.one_of(crafted, st.integers(0, U64))


@st.composite
def corruptions(draw, ring):
    """(where, value) pairs to overwrite, chosen with the ring's state."""
    positions = ring.positions()
    lap = ring.ctl.head - (ring.ctl.head & (CAP - 1))
    slots = st.one_of(st.integers(0, CAP // 16 - 1).map(lambda s: lap + 16 * s),
                      st.sampled_from(positions) if positions else st.nothing(),
                      st.just(ring.ctl.tail))
    out = []
    for _ in range(draw(st.integers(1, 4))):
        target = draw(st.sampled_from(["head", "tail", "head", "tail", "head_msgs", "tail_msgs",
                                       "rec_ctl", "rec_ctl", "rec_owner", "head_cache",
                                       "tail_cache", "slot"]))
        if target == "slot":
            # A process slot: owner dead (pid 0, a gone pid), alive (ours)
            # or anything; any announcement.
            owner = draw(st.sampled_from([0, 1 << 32, 0x7FFFFFFF, os.getpid(), U64])
                         | st.integers(0, U64))
            words = (owner, draw(st.sampled_from([0, 1, 1 << 32, U64]) | st.integers(0, U64)),
                     draw(cursor_values(ring)), draw(cursor_values(ring)))
            out.append((target, draw(st.integers(0, lib().PQ_RING_SLOTS - 1)), words))
        elif target in ("head", "tail", "head_cache", "tail_cache"):
            out.append((target, None, draw(cursor_values(ring))))
        elif target in ("head_msgs", "tail_msgs"):
            out.append((target, None, draw(count_values(ring))))
        else:
            pos = draw(slots) & U64
            if target == "rec_ctl":
                out.append((target, pos, draw(record_ctl_values(pos))))
            else:
                out.append((target, pos, draw(st.sampled_from([0, os.getpid(), U64])
                                             | st.integers(0, U64))))
    return out


def apply(ring, damage, fresh_view):
    c = ring.ctl
    for target, pos, value in damage:
        if target in ("head", "tail", "head_msgs", "tail_msgs"):
            setattr(c, target, value)
    if fresh_view:
        # An opener that comes after the damage: its caches hold it too.
        ring.reopen()
    for target, pos, value in damage:
        if target in ("head_cache", "tail_cache"):
            setattr(ring.r, target, value)
        elif target == "rec_ctl":
            u64_at(ring.r.data, pos & ring.r.mask)[0] = value
        elif target == "rec_owner":
            u64_at(ring.r.data, (pos & ring.r.mask) + 8)[0] = value
        elif target == "slot":
            s = c.slots[pos]
            s.owner, s.taking, s.taking_head, s.taking_next = value


CLAIM_LENS = st.lists(st.sampled_from([0, 1, 16, 100, 1000, 2016]) | st.integers(0, 2100),
                      min_size=1, max_size=3)


@fuzz_settings(1500)
@given(st.data())
def test_fuzz_ring_cursors_and_headers(data):
    ring = data.draw(valid_rings(), label="ring")
    damage = data.draw(corruptions(ring), label="damage")
    apply(ring, damage, data.draw(st.booleans(), label="fresh_view"))
    exercise_consumer(ring.r, data.draw(st.integers(1, 64), label="max"))
    # Producers on the damaged ring (after the consumer's tail reloads).
    exercise_producer(ring.r, ring.base, data.draw(CLAIM_LENS, label="claim"))
    ring.reopen()
    exercise_producer(ring.r, ring.base, data.draw(CLAIM_LENS, label="claim2"))
    exercise_consumer(ring.r)


@fuzz_settings(1000)
@given(st.data())
def test_fuzz_ring_data_bytes(data):
    ring = data.draw(valid_rings(), label="ring")
    positions = ring.positions()
    offsets = st.integers(0, CAP - 1)
    if positions:
        # Often right on a record header (its length, state or tag bytes).
        offsets = offsets | st.sampled_from(positions).flatmap(
            lambda p: st.integers(0, 15).map(lambda k, p=p: ((p & (CAP - 1)) + k)))
    edits = data.draw(st.lists(st.tuples(offsets, st.binary(min_size=1, max_size=16)),
                               min_size=1, max_size=12), label="edits")
    F = ffi()
    for off, chunk in edits:
        chunk = chunk[:CAP - off]
        F.memmove(ring.r.data + off, chunk, len(chunk))
    if data.draw(st.booleans(), label="fresh_view"):
        ring.reopen()
    exercise_consumer(ring.r, data.draw(st.integers(1, 64), label="max"))
    exercise_producer(ring.r, ring.base, data.draw(CLAIM_LENS, label="claim"))
    exercise_consumer(ring.r)


# --------------------------------------------------------------------------
# scenarios found by the fuzz, kept as plain regression tests
# --------------------------------------------------------------------------

@pytest.mark.parametrize("tail_off", [CAP - 8, CAP - 4, CAP - 1, 8, 1])
def test_claim_on_a_misaligned_tail_is_refused(tail_off):
    """A tail that is not a multiple of 16 near the end of the data area
    made pq_ring_claim write a padding header across the end of the data
    area (past the segment); it must report corruption instead."""
    ring = Ring(0)
    ring.set_start(CAP)
    # head just below the tail, so that the record fits after the padding
    ring.ctl.head = (CAP + tail_off) & ~15
    ring.ctl.tail = CAP + tail_off
    ring.reopen()
    rc, _ = ring.put([64])
    assert rc == lib().PQ_ERR_CORRUPT


@pytest.mark.parametrize("case", ["tail_far_ahead", "head_after_tail", "counts"])
def test_claim_on_impossible_cursors_is_refused(case):
    """Cursors no history can produce made pq_ring_claim answer "full"
    forever (a producer blocked for good); they are corruption."""
    ring = Ring(5 if case == "counts" else 0)
    ring.set_start(3 * CAP)
    c = ring.ctl
    if case == "tail_far_ahead":
        c.tail = c.head + 4 * CAP
    elif case == "head_after_tail":
        c.head = c.tail + 256
    else:
        c.head_msgs = c.tail_msgs + 1  # more messages taken than ever put
    ring.reopen()  # a handle opened after the damage (no cached head)
    rc, _ = ring.put([16])
    assert rc == lib().PQ_ERR_CORRUPT
    if case == "counts":
        c.head_msgs = 0
        c.tail_msgs = 6  # more than maxsize in the queue
        rc, _ = ring.put([16])
        assert rc == lib().PQ_ERR_CORRUPT
