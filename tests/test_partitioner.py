"""The Log's two C primitives through the test-only cffi binding
(tests/cffi_core.py): Kafka's murmur2 / default partitioner
(csrc/pq_murmur2.c) and CRC32C (csrc/pq_crc32c.c).

Each is checked against known vectors from their reference implementations
and, with hypothesis, against a small pure-Python implementation written
from the definition (Kafka's Utils.murmur2; the reflected Castagnoli CRC),
on random bytes at random alignments.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import cffi_core

MASK32 = 0xFFFFFFFF

# Kafka's own test: clients/src/test/java/org/apache/kafka/common/utils/
# UtilsTest.java, testMurmur2.
KAFKA_MURMUR2 = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]
# kafkajs src/producer/partitioners/defaultJava/murmur2.spec.js, generated
# with Kafka's Utils.murmur2.
KAFKAJS_MURMUR2 = [
    (b"0", 971027396), (b"1", -1993445489), (b"128", -326012175),
    (b"2187", -1508407203), (b"16384", -325739742), (b"78125", -1654490814),
    (b"279936", 1462227128), (b"823543", -2014198330), (b"2097152", 607668903),
    (b"4782969", -1182699775), (b"10000000", -1830336757),
    (b"19487171", -1603849305), (b"35831808", -857013643),
    (b"62748517", -1167431028), (b"105413504", -381294639),
    (b"170859375", -1658323481), (b"100:48069", 1009543857),
]
# librdkafka src/rdmurmur2.c: rd_murmur2 returns murmur2 & 0x7fffffff.
LIBRDKAFKA_POSITIVE = [(b"kafka", 1348980580), (b"amqp", 767747138),
                       (b"giberish123456789", 257239820)]
# kafka-python test/test_partitioner.py, test_murmur2_java_compatibility:
# partition out of 1000, "compare with output from Kafka's Partitioner".
KAFKA_PLACEMENTS_1000 = [(b"", 681), (b"a", 524), (b"ab", 434), (b"abc", 107),
                         (b"123456789", 566), (b"\x00 ", 742)]

CRC32C_VECTORS = [
    (b"123456789", 0xE3069283),          # the CRC catalogue's check value
    (bytes(32), 0x8A9136AA),             # RFC 3720 B.4
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"", 0),
]


# --- pure-Python references -------------------------------------------------

def py_murmur2(data):
    """Kafka's Utils.murmur2, line by line, in 32-bit unsigned arithmetic."""
    length = len(data)
    m, r = 0x5BD1E995, 24
    h = (0x9747B28C ^ length) & MASK32
    for i in range(length // 4):
        k = int.from_bytes(data[4 * i:4 * i + 4], "little")
        k = (k * m) & MASK32
        k ^= k >> r
        k = (k * m) & MASK32
        h = (h * m) & MASK32
        h ^= k
    tail = length & ~3
    rest = length % 4
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & MASK32
    h ^= h >> 13
    h = (h * m) & MASK32
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def py_crc32c(crc, data):
    crc ^= MASK32
    for b in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc ^ MASK32


# --- the binding -------------------------------------------------------------

_core = None


def core():
    global _core
    if _core is None:
        _core = cffi_core.require()
    return _core


@pytest.fixture(scope="module", autouse=True)
def _binding():
    core()


def _buf(data, offset=0):
    """data at `offset` bytes into a fresh buffer (offset 0..15 varies the
    alignment); the cdata keeps the buffer alive."""
    ffi = core().ffi
    raw = ffi.new("uint8_t[]", offset + len(data) + 1)
    ffi.memmove(raw + offset, data, len(data))
    return raw, raw + offset


def c_murmur2(data, offset=0):
    _keep, p = _buf(data, offset)
    return core().lib.pq_murmur2(p, len(data))


def c_partition(data, n, offset=0):
    _keep, p = _buf(data, offset)
    return core().lib.pq_kafka_partition(p, len(data), n)


def c_crc(fn_name, crc, data, offset=0):
    _keep, p = _buf(data, offset)
    return getattr(core().lib, fn_name)(crc, p, len(data))


CRC_FNS = ["pq_crc32c", "pq_crc32c_sw", "pq_crc32c_hw"]

PROPS = settings(max_examples=300, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- known vectors -------------------------------------------------------------

@pytest.mark.parametrize("key,expected", KAFKA_MURMUR2 + KAFKAJS_MURMUR2)
def test_murmur2_known_vectors(key, expected):
    assert py_murmur2(key) == expected  # the reference port itself
    for offset in range(8):
        assert c_murmur2(key, offset) == expected


@pytest.mark.parametrize("key,expected", LIBRDKAFKA_POSITIVE)
def test_murmur2_librdkafka_positive(key, expected):
    assert c_murmur2(key) & 0x7FFFFFFF == expected
    assert c_partition(key, 1 << 31) == expected


@pytest.mark.parametrize("key,expected", KAFKA_PLACEMENTS_1000)
def test_kafka_partition_placements(key, expected):
    assert c_partition(key, 1000) == expected


def test_empty_key_and_edge_counts():
    lib, ffi = core().lib, core().ffi
    assert lib.pq_murmur2(ffi.NULL, 0) == py_murmur2(b"") == c_murmur2(b"")
    assert lib.pq_kafka_partition(ffi.NULL, 0, 1000) == 681
    assert c_partition(b"21", 1) == 0
    assert c_partition(b"21", 0) == 0  # never divides by zero
    # "21" hashes negative: toPositive masks the sign bit (it is not abs()).
    assert c_partition(b"21", 1000) == (-973932308 & 0x7FFFFFFF) % 1000 == 340


@pytest.mark.parametrize("data,expected", CRC32C_VECTORS)
def test_crc32c_known_vectors(data, expected):
    assert py_crc32c(0, data) == expected
    for name in CRC_FNS:
        for offset in range(16):
            assert c_crc(name, 0, data, offset) == expected, (name, offset)


def test_crc32c_hw_reported():
    import platform

    available = core().lib.pq_crc32c_hw_available()
    assert available in (0, 1)
    if platform.machine() not in ("x86_64", "AMD64"):
        assert available == 0


# --- properties -----------------------------------------------------------------

@PROPS
@given(data=st.binary(max_size=300), offset=st.integers(0, 15))
def test_murmur2_matches_python(data, offset):
    assert c_murmur2(data, offset) == py_murmur2(data)


@PROPS
@given(data=st.binary(max_size=100), n=st.integers(1, MASK32))
def test_partition_matches_kafka_formula(data, n):
    p = c_partition(data, n)
    assert p == (py_murmur2(data) & 0x7FFFFFFF) % n
    assert 0 <= p < n


@PROPS
@given(data=st.binary(max_size=2000), crc=st.integers(0, MASK32),
       offset=st.integers(0, 15), name=st.sampled_from(CRC_FNS))
def test_crc32c_matches_python(data, crc, offset, name):
    assert c_crc(name, crc, data, offset) == py_crc32c(crc, data)


@PROPS
@given(a=st.binary(max_size=300), b=st.binary(max_size=300),
       name=st.sampled_from(CRC_FNS))
def test_crc32c_chains(a, b, name):
    assert c_crc(name, c_crc(name, 0, a), b) == c_crc(name, 0, a + b)


@PROPS
@given(data=st.binary(max_size=5000), crc=st.integers(0, MASK32), offset=st.integers(0, 15))
def test_crc32c_hw_equals_sw(data, crc, offset):
    assert c_crc("pq_crc32c_hw", crc, data, offset) == c_crc("pq_crc32c_sw", crc, data, offset)
