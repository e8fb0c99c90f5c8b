/*
 * test_murmur2.c - pq_murmur2 against known Kafka murmur2 values and
 * pq_kafka_partition against known Kafka default-partitioner placements.
 *
 * Sources of the vectors:
 *  - apache/kafka clients/src/test/.../common/utils/UtilsTest.java,
 *    testMurmur2 (the reference implementation's own test);
 *  - confluentinc/librdkafka src/rdmurmur2.c, unittest_murmurhashneutral2
 *    ("java_murmur2_results"): rd_murmur2 (rdmurmur2.h) returns the hash
 *    already & 0x7fffffff, i.e. Utils.toPositive(murmur2);
 *  - tulios/kafkajs src/producer/partitioners/defaultJava/murmur2.spec.js
 *    ("Generated with ... Test.java", i.e. by Kafka's Utils.murmur2);
 *  - dpkp/kafka-python test/test_partitioner.py,
 *    test_murmur2_java_compatibility: partitions out of 1000, "compare with
 *    output from Kafka's org.apache.kafka.clients.producer.Partitioner".
 */
#include "pq_test.h"

#include "../pq_murmur2.h"

struct murmur_vector {
    const char *key;
    size_t len;
    int32_t hash;
};

#define V(s, h) {s, sizeof(s) - 1, (int32_t)(h)}

static const struct murmur_vector vectors[] = {
    /* Kafka UtilsTest.testMurmur2 */
    V("21", -973932308),
    V("foobar", -790332482),
    V("a-little-bit-long-string", -985981536),
    V("a-little-bit-longer-string", -1486304829),
    V("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    V("abc", 479470107),
    /* kafkajs defaultJava/murmur2.spec.js */
    V("0", 971027396),
    V("1", -1993445489),
    V("128", -326012175),
    V("2187", -1508407203),
    V("16384", -325739742),
    V("78125", -1654490814),
    V("279936", 1462227128),
    V("823543", -2014198330),
    V("2097152", 607668903),
    V("4782969", -1182699775),
    V("10000000", -1830336757),
    V("19487171", -1603849305),
    V("35831808", -857013643),
    V("62748517", -1167431028),
    V("105413504", -381294639),
    V("170859375", -1658323481),
    V("100:48069", 1009543857),
};

/* librdkafka rdmurmur2.c: toPositive(murmur2(key)). */
static const struct murmur_vector positive_vectors[] = {
    V("kafka", 1348980580),
    V("amqp", 767747138),
    V("giberish123456789", 257239820),
};

struct placement {
    const char *key;
    size_t len;
    uint32_t partition;
};

/* kafka-python test_murmur2_java_compatibility, 1000 partitions. */
static const struct placement placements[] = {
    {"", 0, 681},    {"a", 1, 524},         {"ab", 2, 434},
    {"abc", 3, 107}, {"123456789", 9, 566}, {"\x00 ", 2, 742},
};

#define NVEC (sizeof vectors / sizeof vectors[0])
#define NPLACE (sizeof placements / sizeof placements[0])

/* The key copied into a malloc'd buffer of exactly its length (under ASan a
 * read past the key is reported) at a given misalignment. */
static int32_t hash_copy(const char *key, size_t len, size_t misalign)
{
    uint8_t *buf = malloc(len + misalign + 1);
    if (buf == NULL)
        abort();
    memcpy(buf + misalign, key, len);
    int32_t h = pq_murmur2(buf + misalign, len);
    free(buf);
    return h;
}

static int test_known_vectors(void)
{
    for (size_t i = 0; i < NVEC; i++) {
        const struct murmur_vector *v = &vectors[i];
        for (size_t mis = 0; mis < 8; mis++) {
            int32_t h = hash_copy(v->key, v->len, mis);
            if (h != v->hash)
                fprintf(stderr, "murmur2(\"%s\") misalign %zu\n", v->key, mis);
            CHECK_EQ(h, v->hash);
        }
    }
    return 0;
}

static int test_positive_vectors(void)
{
    for (size_t i = 0; i < sizeof positive_vectors / sizeof positive_vectors[0]; i++) {
        const struct murmur_vector *v = &positive_vectors[i];
        CHECK_EQ((uint32_t)pq_murmur2(v->key, v->len) & 0x7fffffffu, (uint32_t)v->hash);
        /* Partition count 2^31 leaves toPositive(murmur2) unchanged. */
        CHECK_EQ(pq_kafka_partition(v->key, v->len, 0x80000000u), (uint32_t)v->hash);
    }
    return 0;
}

static int test_exact_length_reads(void)
{
    /* Exact-size heap buffers: ASan catches any over-read in the tail. */
    for (size_t i = 0; i < NVEC; i++) {
        const struct murmur_vector *v = &vectors[i];
        uint8_t *buf = malloc(v->len ? v->len : 1);
        CHECK(buf != NULL);
        memcpy(buf, v->key, v->len);
        int32_t h = pq_murmur2(buf, v->len);
        free(buf);
        CHECK_EQ(h, v->hash);
    }
    return 0;
}

static int test_empty_key(void)
{
    int32_t h = pq_murmur2("", 0);
    CHECK_EQ(pq_murmur2(NULL, 0), h);
    /* murmur2 of nothing: seed ^ 0 mixed by the final rounds only. */
    uint32_t e = 0x9747b28cu;
    e ^= e >> 13;
    e *= 0x5bd1e995u;
    e ^= e >> 15;
    CHECK_EQ((uint32_t)h, e);
    CHECK_EQ(pq_kafka_partition(NULL, 0, 1000), 681);
    return 0;
}

static int test_partition_placements(void)
{
    for (size_t i = 0; i < NPLACE; i++) {
        const struct placement *pl = &placements[i];
        CHECK_EQ(pq_kafka_partition(pl->key, pl->len, 1000), pl->partition);
    }
    return 0;
}

static int test_partition_formula(void)
{
    static const uint32_t counts[] = {1, 2, 3, 6, 7, 12, 100, 1000, 4096, 65537, 0x7fffffffu,
                                      0x80000000u, 0xffffffffu};
    for (size_t i = 0; i < NVEC; i++) {
        const struct murmur_vector *v = &vectors[i];
        /* Utils.toPositive(h) == h & 0x7fffffff, never abs(h). */
        uint32_t positive = (uint32_t)v->hash & 0x7fffffffu;
        for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
            uint32_t p = pq_kafka_partition(v->key, v->len, counts[c]);
            CHECK_EQ(p, positive % counts[c]);
            CHECK(p < counts[c]);
        }
        CHECK_EQ(pq_kafka_partition(v->key, v->len, 1), 0);
        CHECK_EQ(pq_kafka_partition(v->key, v->len, 0), 0); /* no division by zero */
    }
    /* "21" hashes negative: toPositive clears the sign bit (not abs). */
    CHECK_EQ(pq_kafka_partition("21", 2, 1000), (uint32_t)(-973932308 & 0x7fffffff) % 1000);
    CHECK_EQ(pq_kafka_partition("21", 2, 1000), 340);
    return 0;
}

static int test_tail_bytes_matter(void)
{
    /* Flipping any byte, in a block or in a 1..3-byte tail, changes the
     * hash (every step of murmur2 is a bijection of h for fixed other
     * input, so this is exact, not probabilistic): a dropped fall-through
     * or a short tail read would not. */
    uint64_t rng = pq_test_seed();
    uint8_t buf[64];
    for (size_t len = 1; len <= sizeof buf; len++) {
        for (size_t i = 0; i < len; i++)
            buf[i] = (uint8_t)pq_test_rand(&rng);
        int32_t h = pq_murmur2(buf, len);
        for (size_t i = 0; i < len; i++) {
            buf[i] ^= 0x01;
            CHECK(pq_murmur2(buf, len) != h);
            buf[i] ^= 0x01;
        }
    }
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("test_murmur2 (seed 0x%" PRIx64 ")\n", pq_test_seed());
    RUN(test_known_vectors);
    RUN(test_positive_vectors);
    RUN(test_exact_length_reads);
    RUN(test_empty_key);
    RUN(test_partition_placements);
    RUN(test_partition_formula);
    RUN(test_tail_bytes_matter);
    return pq_test_result();
}
