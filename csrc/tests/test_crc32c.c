/*
 * test_crc32c.c - pq_crc32c: the check value, the RFC 3720 (iSCSI) B.4
 * vectors, chaining (incremental == one-shot), and the SSE4.2 path against
 * the portable slice-by-8 path on random buffers of random lengths at
 * random alignments (exact-size heap copies, so ASan sees any over-read).
 */
#include "pq_test.h"

#include <pthread.h>

#include "../pq_crc32c.h"

typedef uint32_t (*crc_fn)(uint32_t, const void *, size_t);

static const struct {
    const char *name;
    crc_fn fn;
} impls[] = {
    {"pq_crc32c", pq_crc32c},
    {"pq_crc32c_sw", pq_crc32c_sw},
    {"pq_crc32c_hw", pq_crc32c_hw},
};
#define NIMPL (sizeof impls / sizeof impls[0])

/* A byte-at-a-time reference, straight from the definition. */
static uint32_t crc32c_bitwise(uint32_t crc, const uint8_t *p, size_t len)
{
    crc = ~crc;
    while (len--) {
        crc ^= *p++;
        for (int b = 0; b < 8; b++)
            crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return ~crc;
}

/* fn over a malloc'd copy of exactly len bytes at offset misalign. */
static uint32_t crc_copy(crc_fn fn, uint32_t crc, const uint8_t *data, size_t len,
                         size_t misalign)
{
    uint8_t *buf = malloc(len + misalign + 1);
    if (buf == NULL)
        abort();
    memcpy(buf + misalign, data, len);
    uint32_t r = fn(crc, buf + misalign, len);
    free(buf);
    return r;
}

static int check_all(const uint8_t *data, size_t len, uint32_t expected)
{
    CHECK_EQ(crc32c_bitwise(0, data, len), expected);
    for (size_t i = 0; i < NIMPL; i++) {
        for (size_t mis = 0; mis < 16; mis++) {
            uint32_t got = crc_copy(impls[i].fn, 0, data, len, mis);
            if (got != expected)
                fprintf(stderr, "%s misalign %zu: 0x%08x\n", impls[i].name, mis, got);
            CHECK_EQ(got, expected);
        }
    }
    return 0;
}

static int test_check_value(void)
{
    CHECK(check_all((const uint8_t *)"123456789", 9, 0xE3069283u) == 0);
    return 0;
}

static int test_rfc3720_vectors(void)
{
    uint8_t buf[32];

    memset(buf, 0x00, sizeof buf);
    CHECK(check_all(buf, sizeof buf, 0x8A9136AAu) == 0);
    memset(buf, 0xFF, sizeof buf);
    CHECK(check_all(buf, sizeof buf, 0x62A8AB43u) == 0);
    for (int i = 0; i < 32; i++)
        buf[i] = (uint8_t)i;
    CHECK(check_all(buf, sizeof buf, 0x46DD794Eu) == 0);
    for (int i = 0; i < 32; i++)
        buf[i] = (uint8_t)(31 - i);
    CHECK(check_all(buf, sizeof buf, 0x113FDB5Cu) == 0);
    return 0;
}

static int test_empty(void)
{
    for (size_t i = 0; i < NIMPL; i++) {
        CHECK_EQ(impls[i].fn(0, NULL, 0), 0);
        CHECK_EQ(impls[i].fn(0xE3069283u, NULL, 0), 0xE3069283u);
        CHECK_EQ(impls[i].fn(0xE3069283u, "x", 0), 0xE3069283u);
    }
    return 0;
}

static int test_incremental(void)
{
    uint64_t rng = pq_test_seed() ^ 0x1111;
    enum { N = 4099 };
    uint8_t *data = malloc(N);
    CHECK(data != NULL);
    for (size_t i = 0; i < N; i++)
        data[i] = (uint8_t)pq_test_rand(&rng);
    uint32_t whole = crc32c_bitwise(0, data, N);
    for (size_t i = 0; i < NIMPL; i++) {
        crc_fn fn = impls[i].fn;
        CHECK_EQ(fn(0, data, N), whole);
        /* Every split point of a shorter prefix, then random pieces. */
        for (size_t cut = 0; cut <= 200; cut++)
            CHECK_EQ(fn(fn(0, data, cut), data + cut, 200 - cut), crc32c_bitwise(0, data, 200));
        for (int round = 0; round < 200; round++) {
            uint32_t crc = 0;
            size_t off = 0;
            while (off < N) {
                size_t piece = (size_t)(pq_test_rand(&rng) % 70);
                if (piece > N - off)
                    piece = N - off;
                crc = fn(crc, data + off, piece);
                off += piece;
            }
            CHECK_EQ(crc, whole);
        }
    }
    free(data);
    return 0;
}

static int test_hw_matches_sw(void)
{
    printf("      sse4.2 crc32 path: %s\n", pq_crc32c_hw_available() ? "yes" : "no (sw only)");
    uint64_t rng = pq_test_seed() ^ 0x2222;
    enum { MAXLEN = 9000, ROUNDS = 3000 };
    uint8_t *src = malloc(MAXLEN);
    CHECK(src != NULL);
    for (int round = 0; round < ROUNDS; round++) {
        uint64_t r = pq_test_rand(&rng);
        /* Mostly short lengths (the tails and alignment loops), some long. */
        size_t len = (size_t)(round % 4 == 0 ? r % MAXLEN : r % 80);
        size_t mis = (size_t)((r >> 32) % 16);
        uint32_t seed_crc = (round % 3 == 0) ? 0 : (uint32_t)(r >> 17);
        for (size_t i = 0; i < len; i++)
            src[i] = (uint8_t)pq_test_rand(&rng);
        uint32_t sw = crc_copy(pq_crc32c_sw, seed_crc, src, len, mis);
        uint32_t hw = crc_copy(pq_crc32c_hw, seed_crc, src, len, mis);
        uint32_t dispatch = crc_copy(pq_crc32c, seed_crc, src, len, mis);
        if (sw != hw)
            fprintf(stderr, "len %zu misalign %zu: sw 0x%08x hw 0x%08x\n", len, mis, sw, hw);
        CHECK_EQ(sw, hw);
        CHECK_EQ(dispatch, sw);
        if (len < 300)
            CHECK_EQ(sw, crc32c_bitwise(seed_crc, src, len));
    }
    free(src);
    return 0;
}

/* First calls from many threads at once: the table build is pthread_once'd
 * (and the CPU check idempotent); every thread must see full tables. This
 * program has made no CRC call before this test runs first. */
static void *thread_crc(void *arg)
{
    uint32_t *out = arg;
    *out = pq_crc32c_sw(0, "123456789", 9) ^ pq_crc32c(0, "123456789", 9);
    return NULL;
}

static int test_first_use_threads(void)
{
    enum { T = 8 };
    pthread_t th[T];
    uint32_t out[T];
    for (int i = 0; i < T; i++)
        CHECK_EQ(pthread_create(&th[i], NULL, thread_crc, &out[i]), 0);
    for (int i = 0; i < T; i++) {
        CHECK_EQ(pthread_join(th[i], NULL), 0);
        CHECK_EQ(out[i], 0); /* sw == dispatched */
    }
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("test_crc32c (seed 0x%" PRIx64 ")\n", pq_test_seed());
    RUN(test_first_use_threads);
    RUN(test_check_value);
    RUN(test_rfc3720_vectors);
    RUN(test_empty);
    RUN(test_incremental);
    RUN(test_hw_matches_sw);
    return pq_test_result();
}
